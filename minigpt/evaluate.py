"""The `minigpt eval` command: a benchmark score for a training checkpoint or OpenAI's GPT-2 weights.

    minigpt eval --ckpt runs/x/checkpoints/best.ckpt --task hellaswag --data hellaswag_val.jsonl
    minigpt eval --init-from gpt2 --task hellaswag --out gpt2.json   # the hub's validation split (network once)

HellaSwag in completion style (`minigpt.hellaswag`); lm-evaluation-harness runs on `minigpt export`'s directory.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from rich.progress import Progress

from minigpt.checkpoint import load_model
from minigpt.errors import UserError, exit_code
from minigpt.files import atomic_write
from minigpt.hellaswag import Counts, load_examples, score_batches
from minigpt.sample import OneLineErrorParser, add_device_options, add_model_options, pick_device_and_dtype
from minigpt.tokenizer import get_tokenizer

TASKS = ("hellaswag",)


def parse_args(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    parser = OneLineErrorParser(prog=prog, description=__doc__.split("\n")[0])
    add_model_options(parser)
    parser.add_argument("--task", required=True, choices=TASKS, help="the benchmark")
    parser.add_argument(
        "--data", help="a HellaSwag jsonl file (default: the hub's Rowan/hellaswag validation split, 10,042 examples)"
    )
    parser.add_argument("--limit", type=int, help="score only the first N examples")
    parser.add_argument("--out", help='write {"hellaswag": {"acc", "acc_norm", "n"}} to this JSON file')
    parser.add_argument("--batch-size", type=int, default=8, help="examples per forward (4 endings each)")
    add_device_options(parser)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    if args.out is not None and not Path(args.out).resolve().parent.is_dir():
        raise UserError(f"--out {args.out}: its folder does not exist; create it or write elsewhere")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: give a number of examples per forward >= 1")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit}: give a number of examples >= 1")
    examples = load_examples(args.data, args.limit)
    device, dtype = pick_device_and_dtype(args)
    model, tokenizer_name, source = load_model(args.ckpt, args.init_from, args.runs_dir)
    enc = get_tokenizer(tokenizer_name)
    model.to(device)

    def autocast():  # bf16 (or fp16) autocast over float32 weights, as training's mixed precision runs the model
        return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    t0 = time.perf_counter()
    counts = Counts()
    with Progress(disable=not sys.stderr.isatty(), transient=True) as progress:
        bar = progress.add_task(args.task, total=len(examples))
        for batch in score_batches(model, enc, examples, args.batch_size, autocast):
            counts += batch
            progress.update(bar, advance=batch.n)
    seconds = time.perf_counter() - t0
    print(f"{args.task}: acc {counts.acc:.4f}  acc_norm {counts.acc_norm:.4f}  ({counts.n} examples, {seconds:.0f} s)")
    print(f"{source} on {device}, {str(dtype).removeprefix('torch.')}", file=sys.stderr)
    if args.out is not None:
        with atomic_write(args.out, "w", encoding="utf-8") as f:
            json.dump({args.task: {"acc": counts.acc, "acc_norm": counts.acc_norm, "n": counts.n}}, f, indent=2)
            f.write("\n")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """`minigpt eval`. A UserError is one line and exit code 2; anything else a traceback."""
    return exit_code(run, parse_args(argv, prog))
