"""Draw a prompt's attention in a trained run's checkpoint or in GPT-2, and print each head's scores on it.

    minigpt attention --prompt "def f(x):" --out maps.html    # the newest run under runs/: the explorer page
    minigpt attention --ckpt runs/x/checkpoints/best.ckpt --prompt-file f.py --out maps.png  # maps-layer0.png, ...
    minigpt attention --init-from gpt2 --prompt "The cat sat on the mat because it" --out gpt2.html

The table printed has one row per head: its entropy, its shares of attention on the previous and the first token,
and its previous-token, duplicate-token and induction scores, all on the prompt; then its induction ablation, how
much the loss on random tokens of the prompt shown twice rises when the head's output is zeroed. The tokenizer and
model shape come from the checkpoint; a prompt longer than the model's block_size is cropped to it.
"""

import argparse
import os
import sys
from pathlib import Path

import tiktoken
import torch

from minigpt.checkpoint import load_model
from minigpt.errors import UserError, exit_code
from minigpt.explorer import describe_model, head_labels, token_texts, write_explorer
from minigpt.inspect import (
    ABLATION,
    INDUCTION_SEQUENCES,
    MIN_LONGEST_PROBE,
    REPEATS_SEED,
    SCORE_PROBE_TOKENS,
    InductionProbes,
    pattern_scores,
    probe_attention,
)
from minigpt.model import GPT
from minigpt.plots import crop_to_block, layer_head_summaries, save_layer_maps, token_labels
from minigpt.sample import (
    OneLineErrorParser,
    add_device_options,
    add_model_options,
    pick_device_and_dtype,
    prompt_ids,
    read_prompt,
)
from minigpt.tokenizer import get_tokenizer


def parse_args(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    parser = OneLineErrorParser(prog=prog, description=__doc__.split("\n")[0])
    add_model_options(parser)
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="the text whose attention is drawn (at least 2 tokens)")
    prompt.add_argument("--prompt-file", help="read the prompt from this UTF-8 file")
    parser.add_argument(
        "--out",
        required=True,
        metavar="OUT.html|OUT.png",
        help="OUT.html: the interactive explorer page; OUT.png: one PNG per layer, OUT-layer0.png, OUT-layer1.png, "
        "... (a grid of the layer's heads)",
    )
    add_device_options(parser)
    return parser.parse_args(argv)


def check_out(out: Path) -> None:
    """Refuse an --out that cannot be written before anything is loaded: the writers make its folder, and a file
    standing where a folder of its path should be would stop them with a traceback after the work is done."""
    if out.suffix.lower() not in (".html", ".png"):
        raise UserError(
            f"--out {out}: name a .png file (layer L goes to {out.stem}-layer<L>.png) "
            "or an .html file (the explorer page)"
        )
    folder = out.parent
    existing = next(path for path in (folder, *folder.parents) if path.exists())  # "." or "/" at the latest
    if not existing.is_dir():
        raise UserError(f"--out {out}: its folder {folder} cannot be made, {existing} is a file: pick another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: the folder {existing} is not writable: pick another path")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder: name a file in it")


def write_attention_maps(model: GPT, enc: tiktoken.Encoding, ids: list[int], out: Path, source: str) -> None:
    """The prompt's attention figures, out-layer<L>.png, or its explorer page (out.html), and a table of per-head
    summaries and scores."""
    if len(ids) < 2:
        raise UserError("attention maps need a prompt of at least 2 tokens: pass a longer --prompt")
    ids, cropped = crop_to_block(ids, model.config.block_size)
    if cropped:
        print(f"note: the prompt is {cropped}", file=sys.stderr)
    note = ", ".join(filter(None, [source, cropped and f"prompt {cropped}"]))
    weights = probe_attention(model, ids)
    summaries = layer_head_summaries(weights)  # entropy, prev_token, first_token: (n_layer, nh) each
    scores = pattern_scores(weights, torch.tensor(ids))  # previous_token, duplicate_token, induction: (n_layer, nh)
    ablation = prompt_ablation(model, ids)
    if ablation is None:
        print(
            f"note: no {ABLATION} column: it needs {MIN_LONGEST_PROBE} distinct tokens in the prompt and a block_size "
            f"of at least {2 * MIN_LONGEST_PROBE}",
            file=sys.stderr,
        )
    else:
        scores[ABLATION] = ablation
    if out.suffix.lower() == ".html":
        header = {"model": describe_model(model.config), "source": note}
        paths = [write_explorer(out, weights, token_texts(enc, ids), head_labels(scores, summaries), header)]
    else:
        paths = save_layer_maps(
            weights, token_labels(enc, ids), lambda layer: out.with_name(f"{out.stem}-layer{layer}.png"), note
        )
    columns = {**summaries, **scores}
    print(f"{'layer':>5} {'head':>4}", *(f"{name:>15}" for name in columns))
    table = torch.stack([values.cpu() for values in columns.values()], dim=-1)  # (n_layer, nh, columns)
    for layer, heads in enumerate(table.tolist()):
        for head, values in enumerate(heads):
            print(f"{layer:>5} {head:>4}", *(f"{value:>15.3f}" for value in values))
    print(f"wrote {', '.join(map(str, paths))}", file=sys.stderr)


def prompt_ablation(model: GPT, ids: list[int]) -> torch.Tensor | None:
    """`head_ablation` (n_layer, nh) on random tokens of the prompt shown twice, at three lengths up to 32 tokens
    (`InductionProbes`), drawn by how often the prompt holds them: the tokens the model is shown, in its
    proportions. None where the prompt or block_size is too short for three lengths."""
    counts = torch.bincount(torch.tensor(ids))  # (max id + 1,)
    candidates = counts.nonzero().flatten()  # the prompt's distinct tokens
    longest = min(SCORE_PROBE_TOKENS, model.config.block_size // 2, candidates.numel())
    if longest < MIN_LONGEST_PROBE:
        return None
    probes = InductionProbes.draw(candidates, longest, INDUCTION_SEQUENCES, REPEATS_SEED, counts[candidates])
    return probes.head_ablation(model)


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    check_out(out)
    text = read_prompt(args)
    device, dtype = pick_device_and_dtype(args)
    model, tokenizer_name, source = load_model(args.ckpt, args.init_from, args.runs_dir)
    enc = get_tokenizer(tokenizer_name)
    ids = prompt_ids(enc, text, None, model.config.vocab_size)
    model.to(device=device, dtype=dtype)
    write_attention_maps(model, enc, ids, out, source)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """`minigpt attention`. A UserError is one line and exit code 2; anything else a traceback."""
    return exit_code(run, parse_args(argv, prog))
