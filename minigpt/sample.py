"""Generate text from a trained run's checkpoint or from OpenAI's GPT-2 weights, printed as it is made.

    minigpt sample                                   # the newest run under runs/: best.ckpt, else last.ckpt
    minigpt sample --ckpt runs/x/checkpoints/last.ckpt --prompt "ROMEO:" --num-samples 3
    minigpt sample --init-from gpt2 --prompt "Hello, I'm a language model," --top-p 0.9
    minigpt sample --prompt "def f(x):" --attention-map maps.png  # maps-layer0.png, ...: no text generated
    minigpt sample --prompt "def f(x):" --attention-map maps.html  # the interactive explorer page
    minigpt sample --prompt-file prompts.txt --each-line --temperature 0  # one prompt per line, in input order

(`python sample.py ...` in a checkout is the same command.)

The tokenizer and model shape come from the checkpoint. Prompts may not contain special tokens; an empty prompt
starts from <|endoftext|>.
"""

import argparse
import random
import sys
import time
from collections import Counter
from pathlib import Path

import tiktoken
import torch

from minigpt.checkpoint import GPT2_NAMES, find_checkpoint, load_checkpoint, load_gpt2
from minigpt.cpu_layout import INPUT_MAJOR_ROWS, for_cpu_decoding
from minigpt.errors import UserError, print_error
from minigpt.explorer import describe_model, head_labels, token_texts, write_explorer
from minigpt.generate import TokenDecoder, check_sampling, encode_prompt, generate_each, stream
from minigpt.inspect import pattern_scores, probe_attention
from minigpt.model import GPT
from minigpt.plots import crop_to_block, layer_head_summaries, save_layer_maps, token_labels
from minigpt.tokenizer import get_tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SEPARATOR = "\n" + "-" * 40


class OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"error: {message} (see --help)\n")


def parse_args(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    parser = OneLineErrorParser(prog=prog, description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--ckpt", help="checkpoint file (default: the newest run's best.ckpt, else last.ckpt)")
    source.add_argument("--init-from", choices=GPT2_NAMES, help="OpenAI's GPT-2 weights (needs transformers)")
    parser.add_argument("--runs-dir", default="runs", help="where training writes its runs (default: runs)")
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default="", help="text to continue (default: empty, start a new document)")
    prompt.add_argument("--prompt-file", help="read the prompt from this UTF-8 file")
    parser.add_argument(
        "--each-line",
        action="store_true",
        help="with --prompt-file: one prompt per line (blank lines are skipped), generated together (prompts of "
        "equal token length share a batch), printed in input order",
    )
    parser.add_argument("--num-samples", type=int, default=1, help="samples, generated in one batch")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 is greedy; higher is more random")
    parser.add_argument("--top-k", type=int, default=200, help="sample among the k likeliest tokens; 0: no limit")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus: the likeliest tokens holding this mass")
    parser.add_argument("--seed", type=int, help="same seed, same text (default: a random seed, reported)")
    parser.add_argument(
        "--stop-at-eot",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="end a sample at <|endoftext|> (default: yes)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, help="default: bfloat16 on a GPU that has it, else float32")
    parser.add_argument("--compile", action="store_true", help="torch.compile decoding (slow start, fast steps)")
    parser.add_argument(
        "--attention-map",
        metavar="OUT.png|OUT.html",
        help="instead of generating, draw the prompt's attention: one PNG per layer, OUT-layer0.png, "
        "OUT-layer1.png, ... (a grid of the layer's heads), or, for OUT.html, the interactive explorer page; "
        "and print each head's entropy, shares of attention on the previous and first token, and previous-token, "
        "duplicate-token and induction scores",
    )
    return parser.parse_args(argv)


def read_prompt(args: argparse.Namespace) -> str:
    if args.prompt_file is None:
        return args.prompt
    try:
        with open(args.prompt_file, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise UserError(f"prompt file {args.prompt_file} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise UserError(f"prompt file {args.prompt_file} cannot be read: {e.strerror}") from None
    if not text.strip():
        raise UserError(f"prompt file {args.prompt_file} is empty: write a prompt in it, or pass --prompt ''")
    return text


def read_prompts(args: argparse.Namespace) -> list[tuple[str | None, str]]:
    """(where, prompt) pairs: the one prompt, or with --each-line each line of the prompt file that is not blank."""
    text = read_prompt(args)
    if not args.each_line:
        return [(None, text)]
    if args.prompt_file is None or args.attention_map is not None:
        raise UserError("--each-line takes one prompt per line of --prompt-file FILE, and no --attention-map")
    lines = enumerate(text.split("\n"), start=1)
    return [(f"line {n} of {args.prompt_file}", line.removesuffix("\r")) for n, line in lines if line.strip()]


def prompt_ids(enc: tiktoken.Encoding, prompt: str, where: str | None, vocab_size: int) -> list[int]:
    """The prompt's token ids; an error names where the prompt is (a line of the prompt file) when it is given."""
    try:
        ids = encode_prompt(enc, prompt)
    except UserError as e:
        raise UserError(f"{where}: {e}" if where else str(e)) from None
    if max(ids) >= vocab_size:
        raise UserError(
            f"tokenizer {enc.name!r} gives token id {max(ids)}, beyond the model's vocab_size={vocab_size}: "
            "the checkpoint's tokenizer and model do not match"
        )
    return ids


def pick_device_and_dtype(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UserError(f"--device {args.device!r} is not a torch device: try cpu or cuda") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if device.type not in available:
        raise UserError(f"--device {args.device}: sample on cpu, cuda or mps")
    if not available[device.type]:
        raise UserError(f"--device {args.device}: no {device.type.upper()} device here; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {args.device}: this machine has {torch.cuda.device_count()} CUDA devices")
    if args.dtype is not None:
        return device, DTYPES[args.dtype]
    gpu_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return device, torch.bfloat16 if gpu_bf16 else torch.float32


def load_model(args: argparse.Namespace) -> tuple[GPT, str, str]:
    """(model, tokenizer name, where it came from)."""
    if args.init_from is not None:
        return *load_gpt2(args.init_from), args.init_from
    path = args.ckpt or find_checkpoint(args.runs_dir)
    return *load_checkpoint(path), str(path)


def run(args: argparse.Namespace) -> None:
    top_k = args.top_k or None
    check_sampling(args.temperature, top_k, args.top_p)
    if args.num_samples < 1 or args.max_new_tokens < 0:
        raise UserError(
            f"--num-samples {args.num_samples} must be >= 1 and --max-new-tokens {args.max_new_tokens} >= 0"
        )
    if args.seed is not None and not 0 <= args.seed < 2**63:
        raise UserError(f"--seed {args.seed} must lie in [0, 2**63)")
    prompts = read_prompts(args)
    device, dtype = pick_device_and_dtype(args)
    model, tokenizer_name, source = load_model(args)
    enc = get_tokenizer(tokenizer_name)
    all_ids = [prompt_ids(enc, text, where, model.config.vocab_size) for where, text in prompts]
    prompt, ids = prompts[0][1], all_ids[0]  # the prompt, when there is one
    model.to(device=device, dtype=dtype)
    if args.attention_map is not None:
        write_attention_maps(model, enc, ids, Path(args.attention_map), source)
        return
    rows = [ids for ids in all_ids for _ in range(args.num_samples)]  # each prompt num_samples times
    # The batches generation will run: one of all the rows, or with --each-line one per prompt length.
    batch_sizes = Counter(map(len, rows)).values() if args.each_line else [args.num_samples]
    if device.type == "cpu":
        # Faster products, the same values (minigpt/cpu_layout.py); weights input-major at the batch sizes it helps.
        for_cpu_decoding(model, input_major=all(size in INPUT_MAJOR_ROWS for size in batch_sizes))
    # Compiled: decoding's step, in two graphs (prefill, one token); the model's forward is training's.
    decode = torch.compile(model.decode) if args.compile else model.decode

    seed = random.randrange(2**31) if args.seed is None else args.seed
    stop_token = enc.eot_token if args.stop_at_eot else None
    if args.each_line:
        t0 = time.perf_counter()
        samples = generate_each(
            model, rows, args.max_new_tokens, temperature=args.temperature, top_k=top_k, top_p=args.top_p,
            seed=seed, stop_token=stop_token, decode=decode,
        )  # fmt: skip
        for row, sample in enumerate(samples):  # in input order, once all are made
            print(prompts[row // args.num_samples][1] + enc.decode(sample) + SEPARATOR)
        report_speed(sum(map(len, samples)), time.perf_counter() - t0, source, device, seed)
        return
    idx = torch.tensor(rows, device=device)  # (num_samples, T): the one prompt num_samples times
    samples: list[list[int]] = [[] for _ in range(args.num_samples)]
    live = TokenDecoder(enc) if args.num_samples == 1 else None  # one sample is printed as it is made

    if live is not None:
        print(prompt, end="", flush=True)
    t0 = time.perf_counter()
    steps = stream(
        model, idx, args.max_new_tokens, temperature=args.temperature, top_k=top_k, top_p=args.top_p,
        seed=seed, stop_token=stop_token, decode=decode,
    )  # fmt: skip
    for new in steps:
        for sample, token in zip(samples, new.tolist(), strict=True):
            if not sample or sample[-1] != stop_token:  # after its stop token a sample only repeats it
                sample.append(token)
                if live is not None and token != stop_token:
                    print(live.decode(token), end="", flush=True)
    seconds = time.perf_counter() - t0
    if live is not None:
        print(live.flush())
    else:
        for sample in samples:
            print(prompt + enc.decode([t for t in sample if t != stop_token]) + SEPARATOR)

    report_speed(sum(len(sample) for sample in samples), seconds, source, device, seed)


def report_speed(n_new: int, seconds: float, source: str, device: torch.device, seed: int) -> None:
    print(
        f"{n_new} tokens in {seconds:.2f} s ({n_new / seconds:.1f} tokens/s) from {source} on {device}, seed {seed}",
        file=sys.stderr,
    )


def write_attention_maps(model: GPT, enc: tiktoken.Encoding, ids: list[int], out: Path, source: str) -> None:
    """--attention-map: the prompt's attention figures, out-layer<L>.png, or its explorer page (out.html), and a
    table of per-head summaries."""
    if out.suffix.lower() not in (".png", ".html"):
        raise UserError(
            f"--attention-map {out}: name a .png file (layer L goes to {out.stem}-layer<L>.png) "
            "or an .html file (the explorer page)"
        )
    if len(ids) < 2:
        raise UserError("--attention-map needs a prompt of at least 2 tokens: pass --prompt TEXT")
    ids, cropped = crop_to_block(ids, model.config.block_size)
    if cropped:
        print(f"note: the prompt is {cropped}", file=sys.stderr)
    note = ", ".join(filter(None, [source, cropped and f"prompt {cropped}"]))
    weights = probe_attention(model, ids)
    summaries = layer_head_summaries(weights)  # entropy, prev_token, first_token: (n_layer, nh) each
    scores = pattern_scores(weights, torch.tensor(ids))  # previous_token, duplicate_token, induction: (n_layer, nh)
    if out.suffix.lower() == ".html":
        header = {"model": describe_model(model.config), "source": note}
        paths = [write_explorer(out, weights, token_texts(enc, ids), head_labels(scores, summaries), header)]
    else:
        paths = save_layer_maps(
            weights, token_labels(enc, ids), lambda layer: out.with_name(f"{out.stem}-layer{layer}.png"), note
        )
    columns = {**summaries, **scores}
    print(f"{'layer':>5} {'head':>4}", *(f"{name:>15}" for name in columns))
    table = torch.stack([values.cpu() for values in columns.values()], dim=-1)  # (n_layer, nh, 6)
    for layer, heads in enumerate(table.tolist()):
        for head, values in enumerate(heads):
            print(f"{layer:>5} {head:>4}", *(f"{value:>15.3f}" for value in values))
    print(f"wrote {', '.join(map(str, paths))}", file=sys.stderr)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """`minigpt sample` (and `python sample.py`). A UserError is one line and exit code 2; anything else a traceback."""
    args = parse_args(argv, prog)
    try:
        run(args)
    except UserError as e:
        return print_error(e)
    return 0
