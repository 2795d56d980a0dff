"""Generate text from a trained run's checkpoint or from OpenAI's GPT-2 weights, printed as it is made.

    minigpt sample                                   # the newest run under runs/: best.ckpt, else last.ckpt
    minigpt sample --ckpt runs/x/checkpoints/last.ckpt --prompt "ROMEO:" --num-samples 3
    minigpt sample --init-from gpt2 --prompt "Hello, I'm a language model," --top-p 0.9
    minigpt sample --prompt-file prompts.txt --each-line --temperature 0  # one prompt per line, in input order

(`python sample.py ...` in a checkout is the same command.)

The tokenizer and model shape come from the checkpoint. Prompts may not contain special tokens; an empty prompt
starts from <|endoftext|>. (`minigpt attention` draws a prompt's attention instead.)
"""

import argparse
import random
import sys
import time
from collections import Counter

import tiktoken
import torch

from minigpt.checkpoint import GPT2_NAMES, load_model
from minigpt.cpu_layout import INPUT_MAJOR_ROWS, for_cpu_decoding
from minigpt.errors import OneLineParseErrors, UserError, exit_code
from minigpt.generate import TokenDecoder, check_sampling, encode_prompt, generate_each, stream
from minigpt.memory import check_generation_fits
from minigpt.tokenizer import get_tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SEPARATOR = "\n" + "-" * 40


class OneLineErrorParser(OneLineParseErrors, argparse.ArgumentParser):
    pass


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Where the model comes from: --ckpt, --init-from, or the newest run under --runs-dir (`load_model`)."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--ckpt", help="checkpoint file (default: the newest run's best.ckpt, else last.ckpt)")
    source.add_argument("--init-from", choices=GPT2_NAMES, help="OpenAI's GPT-2 weights (needs transformers)")
    parser.add_argument("--runs-dir", default="runs", help="where training writes its runs (default: runs)")


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """Where the model runs, and in which dtype (`pick_device_and_dtype`)."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, help="default: bfloat16 on a GPU that has it, else float32")


def parse_args(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    parser = OneLineErrorParser(prog=prog, description=__doc__.split("\n")[0])
    add_model_options(parser)
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
    add_device_options(parser)
    parser.add_argument("--compile", action="store_true", help="torch.compile decoding (slow start, fast steps)")
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
    if args.prompt_file is None:
        raise UserError("--each-line takes one prompt per line of --prompt-file FILE")
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
        raise UserError(f"--device {args.device}: run on cpu, cuda or mps")
    if not available[device.type]:
        raise UserError(f"--device {args.device}: no {device.type.upper()} device here; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {args.device}: this machine has {torch.cuda.device_count()} CUDA devices")
    if args.dtype is not None:
        return device, DTYPES[args.dtype]
    gpu_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return device, torch.bfloat16 if gpu_bf16 else torch.float32


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
    model, tokenizer_name, source = load_model(args.ckpt, args.init_from, args.runs_dir)
    enc = get_tokenizer(tokenizer_name)
    all_ids = [prompt_ids(enc, text, where, model.config.vocab_size) for where, text in prompts]
    prompt = prompts[0][1]  # the prompt, when there is one
    # The batches generation will run: each prompt num_samples times, with --each-line one batch per prompt length.
    prompts_of_length = Counter(map(len, all_ids)).values() if args.each_line else [1]
    batch_sizes = [n * args.num_samples for n in prompts_of_length]
    longest = max(map(len, all_ids)) + args.max_new_tokens
    check_generation_fits(model.config, max(batch_sizes), longest, dtype, device)
    rows = [ids for ids in all_ids for _ in range(args.num_samples)]
    model.to(device=device, dtype=dtype)
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
        if stop_token is not None:  # generate_each leaves the stop token out: a shorter sample met it
            report_stops(enc, [len(sample) if len(sample) < args.max_new_tokens else None for sample in samples])
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
    if stop_token is not None:
        report_stops(enc, [sample.index(stop_token) if stop_token in sample else None for sample in samples])
    report_speed(sum(len(sample) for sample in samples), seconds, source, device, seed)


def report_stops(enc: tiktoken.Encoding, stopped_after: list[int | None]) -> None:
    """On stderr, for each sample that ended at <|endoftext|>, after how many tokens: a young model's sample may end
    at once, and print nothing else."""
    eot = enc.decode([enc.eot_token])
    for i, n in enumerate(stopped_after):
        if n is not None:
            which = f"sample {i + 1}: " if len(stopped_after) > 1 else ""
            print(f"{which}stopped at {eot} after {n} tokens", file=sys.stderr)


def report_speed(n_new: int, seconds: float, source: str, device: torch.device, seed: int) -> None:
    print(
        f"{n_new} tokens in {seconds:.2f} s ({n_new / seconds:.1f} tokens/s) from {source} on {device}, seed {seed}",
        file=sys.stderr,
    )


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """`minigpt sample` (and `python sample.py`). A UserError is one line and exit code 2; anything else a traceback."""
    return exit_code(run, parse_args(argv, prog))
