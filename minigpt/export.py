"""Write a training checkpoint as a HuggingFace GPT-2 directory (minigpt export).

The directory is for transformers, its pipelines and lm-evaluation-harness:

    minigpt export --ckpt runs/x/checkpoints/best.ckpt --out gpt-hf
    python -c "from transformers import pipeline; print(pipeline('text-generation', model='gpt-hf')('ROMEO:'))"

The directory holds `model.safetensors`, `config.json`, `generation_config.json` and the tokenizer (tokenizer.json,
tokenizer_config.json, and GPT-2's classic vocab.json and merges.txt), all made offline. It is written beside --out
under a temporary name and renamed into place when whole: an export that fails leaves nothing half-written.
"""

import argparse
import shutil
from pathlib import Path

import torch

from minigpt.checkpoint import load_checkpoint, no_progress_bars
from minigpt.errors import OneLineParseErrors, UserError, exit_code
from minigpt.hf_format import hf_from_gpt, hf_tokenizer, import_transformers
from minigpt.model import GPT
from minigpt.tokenizer import get_tokenizer


class OneLineErrorParser(OneLineParseErrors, argparse.ArgumentParser):
    pass


def parse_args(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    parser = OneLineErrorParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", required=True, help="the training checkpoint (.ckpt) to export")
    parser.add_argument("--out", required=True, help="the directory to write (created; must be empty or absent)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists and is not empty")
    return parser.parse_args(argv)


def check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: name a directory to write the model into")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"--out {out} exists and is not empty: pass --force to replace it, or name another directory")


def export(ckpt: str | Path, out: str | Path, force: bool = False) -> None:
    """Write the checkpoint's model and tokenizer to out as a HuggingFace GPT-2 directory."""
    out = Path(out)
    check_out(out, force)  # before the checkpoint is read: a refused --out costs nothing
    import_transformers()
    model, tokenizer_name = load_checkpoint(ckpt)
    enc = get_tokenizer(tokenizer_name)
    tokenizer = hf_tokenizer(enc, model.config.block_size)  # refuses an encoding it cannot express
    hf_model = hf_from_gpt(model, enc.eot_token)
    check_same_logits(model, hf_model)

    def write(folder: Path) -> None:
        hf_model.save_pretrained(folder)  # model.safetensors (the head tied: stored once), config, generation_config
        tokenizer.save_pretrained(folder)  # tokenizer.json, tokenizer_config.json
        # GPT-2's classic vocab.json and merges.txt, for tokenizers that read them (transformers 4's slow one).
        tokenizer.backend_tokenizer.model.save(str(folder))

    with no_progress_bars():
        write_directory(out, write)


def check_same_logits(model: GPT, hf_model) -> None:
    """The exported model's logits are ours on a few tokens (float32): a conversion that is not exact is a bug."""
    idx = torch.arange(min(8, model.config.block_size)).remainder(model.config.vocab_size)[None]  # (1, T)
    with torch.no_grad():
        ours, _ = model.float()(idx)
        theirs = hf_model(idx).logits
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)


def write_directory(out: Path, write) -> None:
    """write(folder) into a temporary folder beside out, then that folder renamed to out (an old out removed)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    old = out.with_name(f".{out.name}.old")
    for leftover in (tmp, old):  # of an export that was killed
        shutil.rmtree(leftover, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """`minigpt export`. A UserError is one line and exit code 2; anything else a traceback."""
    args = parse_args(argv, prog)

    def run() -> None:
        export(args.ckpt, args.out, args.force)
        print(f"exported {args.ckpt} to {args.out}/ (load it with transformers' from_pretrained)")

    return exit_code(run)
