"""Preparation speed: tokens/s of `TextDataModule.prepare_data` on Tiny Shakespeare, per tokenizer.

Each run starts cold (empty token cache and empty `datasets` cache, in a temporary folder), so it times the
whole path: reading the file, splitting, tokenizing, writing the memmaps. tiktoken's own encode speed on the
same text is printed beside it, to show how much of the time is tokenizing.

    python benchmarks/bench_prepare.py [PATH] [--tokenizers bytes gpt2] [--num-proc N] [--repeats 3]
"""

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import datasets

from minigpt.data import TextDataModule
from minigpt.tokenizer import get_tokenizer

# ../shared/data/tinyshakespeare/input.txt relative to the repository root
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"


def prepare_seconds(path: str, tokenizer: str, num_proc: int | None) -> tuple[float, int]:
    """Seconds of one cold `prepare_data`, and the tokens it wrote."""
    with tempfile.TemporaryDirectory() as tmp:
        datasets.config.HF_DATASETS_CACHE = str(Path(tmp) / "hf")  # the text builder's Arrow cache starts empty too
        dm = TextDataModule(source="text", path=path, tokenizer=tokenizer, num_proc=num_proc, data_dir=tmp)
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # keep the table readable
            dm.prepare_data()
        seconds = time.perf_counter() - start
        meta = json.loads((Path(dm.cache_dir) / "meta.json").read_text())
    return seconds, sum(meta["tokens"].values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=str(DEFAULT_PATH), help="a text file (default: Tiny Shakespeare)")
    parser.add_argument("--tokenizers", nargs="+", default=["bytes", "gpt2"])
    parser.add_argument("--num-proc", type=int, default=None, help="tokenizing processes (default: this one)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per tokenizer; the fastest counts")
    args = parser.parse_args()
    datasets.disable_progress_bars()
    text = Path(args.path).read_text(encoding="utf-8")
    print(f"{args.path}: {len(text):,} characters, num_proc={args.num_proc}, best of {args.repeats}")

    rows = []
    for name in args.tokenizers:
        try:
            enc = get_tokenizer(name)
        except ValueError as e:
            print(f"{name}: skipped: {e}")
            continue
        start = time.perf_counter()
        n_encoded = len(enc.encode_ordinary(text))
        encode_rate = n_encoded / (time.perf_counter() - start)
        seconds, tokens = min(prepare_seconds(args.path, name, args.num_proc) for _ in range(args.repeats))
        rows.append((name, tokens, seconds, tokens / seconds, encode_rate))
        print(f"{name}: {tokens:,} tokens in {seconds:.3f} s")

    print(f"\n{'tokenizer':<10} {'tokens':>10} {'prepare s':>10} {'prepare tok/s':>14} {'encode tok/s':>13}")
    for name, tokens, seconds, rate, encode_rate in rows:
        print(f"{name:<10} {tokens:>10,} {seconds:>10.3f} {rate:>14,.0f} {encode_rate:>13,.0f}")


if __name__ == "__main__":
    main()
