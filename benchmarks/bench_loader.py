"""Batches per second of the training loader: windows cut on the host and copied vs `data.tokens_on_device`.

Both give the same batches (tests/test_data.py checks it). Timed: from asking the DataLoader for a batch to having
x and y on the device, as Lightning's loop does it (pinned, non-blocking copies on a GPU), for the baby config's
64 windows of 256 tokens. The tokens are random, as many as Tiny Shakespeare has, in a token cache laid out as
`TextDataModule.prepare_data` writes it, so neither `datasets` nor the text is needed.

    python benchmarks/bench_loader.py                  # CPU
    python benchmarks/bench_loader.py --device cuda
    python benchmarks/bench_loader.py --quick          # fewer batches (a smoke test)
"""

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import Timing, header, print_table, time_interleaved

from minigpt.data import TextDataModule

TOKENS = 338_025  # Tiny Shakespeare's byte tokens, train and val together
LOADERS = {"host windows + copy": False, "tokens_on_device": True}  # name: data.tokens_on_device


def synthetic_cache(data_dir: Path, vocab: int = 257) -> None:
    """A token cache of random ids with a meta.json as prepare_data writes it, where the synthetic module looks."""
    cache = TextDataModule(data_dir=str(data_dir), dataset_name="synthetic").cache
    fingerprint = cache.fingerprint()
    folder = Path(cache.shard_dir(fingerprint))
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    counts = {"train": TOKENS * 9 // 10, "val": TOKENS - TOKENS * 9 // 10}
    for split, n in counts.items():
        rng.integers(0, vocab, n, dtype=np.uint16).tofile(folder / f"{split}-00000.bin")
    shards = {split: [n] for split, n in counts.items()}
    meta = {"dtype": "uint16", "tokens": counts, "shards": shards, "fingerprint": fingerprint, "vocab_size": vocab}
    (folder / "meta.json").write_text(json.dumps(meta))


def batches(dm: TextDataModule, device: torch.device, n: int):
    """A function that takes n training batches to `device` the way the training loop does."""
    pin = device.type == "cuda"

    def run() -> None:
        loader = iter(dm.train_dataloader())
        for _ in range(n):
            batch = next(loader)
            if dm.tokens_on_device:
                x, y = dm.cut_windows("train", batch.to(device, non_blocking=pin))
            else:
                x, y = (t.to(device, non_blocking=pin) for t in batch)

    return run


def time_loaders(
    data_dir: Path, batch_size: int, block_size: int, device: torch.device, n: int, repeats: int
) -> dict[str, Timing]:
    """Both loaders (LOADERS) over the synthetic cache in data_dir, n batches a round each, timed interleaved."""
    fns = {}
    for name, on_device in LOADERS.items():
        dm = TextDataModule(
            data_dir=str(data_dir), dataset_name="synthetic", block_size=block_size, batch_size=batch_size,
            tokens_on_device=on_device,
        )  # fmt: skip
        dm.setup("fit")  # the device copy of the tokens is made in the first (untimed) warm-up round
        fns[name] = batches(dm, device, n)
    return time_interleaved(fns, device, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=200, help="batches per timed round")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds; medians are reported")
    parser.add_argument("--quick", action="store_true", help="20 batches, 3 rounds")
    args = parser.parse_args()
    if args.quick:
        args.batches, args.repeats = 20, 3
    device = torch.device(args.device)
    print(header(device, "int64 batches"))

    with tempfile.TemporaryDirectory() as tmp:
        synthetic_cache(Path(tmp))
        times = time_loaders(Path(tmp), args.batch_size, args.block_size, device, args.batches, args.repeats)

    base = times["host windows + copy"].median
    rows = []
    for name, t in times.items():
        per_batch = t.median / args.batches
        speed_up = f"{base / t.median:.2f}x"
        rows.append([name, f"{per_batch * 1e6:.0f} µs", f"{1 / per_batch:,.0f}", f"±{t.spread:.0%}", speed_up])
    print(f"\n{args.batches} batches of {args.batch_size} x {args.block_size} per round, median of {args.repeats}")
    print_table(["loader", "per batch", "batches/s", "spread", "speed-up"], rows)
    ratio = base / times["tokens_on_device"].median
    print(f"summary: tokens_on_device {ratio:.2f}x the batches/s of the host loader ({device.type})")


if __name__ == "__main__":
    main()
