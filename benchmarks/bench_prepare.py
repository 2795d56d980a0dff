"""Preparation speed: tokens/s of `TextDataModule.prepare_data` at 1 and 2 processes, beside llm.c's approach.

The benchmark writes a local folder of parquet files laid out like a hub dataset (documents cut from Tiny
Shakespeare, or from the embedded Python reference when that file is absent), then times, cold and side by side:

- minigpt: `prepare_data` of that folder as a stream (`source: hub`, `streaming: true`), the whole path from
  reading the parquet files to the shards on disk, with `num_proc` 1 and 2;
- llm.c's approach (its `fineweb.py`): a `multiprocessing.Pool` mapping `encode_ordinary` over single documents,
  `<|endoftext|>` before each, written as uint16 shards. Written here from its description, reading the same files
  with pyarrow, with the same 1 and 2 processes.

The rows run interleaved, `--repeats` times, the fastest of each counting. Each also reports the CPU time it took
in all its processes per million tokens: on cores that others share, that is what shows whether a second process
adds work, when its wall time cannot show the speed-up.

    python benchmarks/bench_prepare.py [--mb 300] [--tokenizer gpt2] [--repeats 3] [--quick]
"""

import argparse
import contextlib
import io
import multiprocessing
import os
import resource
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from minigpt.data import TextDataModule, embedded_corpus
from minigpt.tokenizer import get_tokenizer

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"
FILES = 8  # parquet files in the folder
LLMC_SHARD_TOKENS = 10**8  # llm.c's shard size


def write_parquet_folder(folder: Path, megabytes: float) -> int:
    """`megabytes` of documents of about 4 KB in FILES parquet files under folder/data; the documents' count."""
    text = SHAKESPEARE.read_text(encoding="utf-8") if SHAKESPEARE.exists() else "\n".join(embedded_corpus())
    rng = np.random.default_rng(0)
    starts = rng.integers(0, len(text) - 8192, int(megabytes * 2**20) // 4096 + 1)
    docs = [text[s : s + 2048 + s % 4096] for s in starts]  # 2-6 KB each, all different
    (folder / "data").mkdir(parents=True)
    for i, part in enumerate(np.array_split(np.arange(len(docs)), FILES)):
        table = pa.table({"text": [docs[j] for j in part]})
        pq.write_table(table, folder / "data" / f"train-{i:05d}-of-{FILES:05d}.parquet")
    return len(docs)


def minigpt_prepare(folder: Path, tokenizer: str, processes: int) -> tuple[float, int]:
    """Seconds of one cold `prepare_data` of the folder as a stream, and the tokens it wrote."""
    with tempfile.TemporaryDirectory() as tmp:
        datasets.config.HF_DATASETS_CACHE = str(Path(tmp) / "hf")
        dm = TextDataModule(
            source="hub", path=str(folder), streaming=True, tokenizer=tokenizer, num_proc=processes, data_dir=tmp
        )
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # keep the table readable
            dm.prepare_data()
        seconds = time.perf_counter() - start
        return seconds, sum(dm.cache.read_meta()["tokens"].values())


def llmc_tokenize(doc: str) -> np.ndarray:
    enc = get_tokenizer(LLMC_TOKENIZER)
    return np.array([enc.eot_token, *enc.encode_ordinary(doc)], dtype=np.uint16)


def llmc_prepare(folder: Path, tokenizer: str, processes: int) -> tuple[float, int]:
    """Seconds and tokens of llm.c's approach: a pool over documents, uint16 shards of LLMC_SHARD_TOKENS."""
    global LLMC_TOKENIZER
    LLMC_TOKENIZER = tokenizer  # the forked workers inherit it
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        docs = (
            text
            for path in sorted((folder / "data").glob("*.parquet"))
            for batch in pq.ParquetFile(path).iter_batches(columns=["text"])
            for text in batch.column(0).to_pylist()
        )
        shard, buffer, filled, total = 0, np.empty(LLMC_SHARD_TOKENS, np.uint16), 0, 0
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            for tokens in pool.imap(llmc_tokenize, docs, chunksize=16):
                total += len(tokens)
                while len(tokens):
                    take = min(len(tokens), LLMC_SHARD_TOKENS - filled)
                    buffer[filled : filled + take], filled, tokens = tokens[:take], filled + take, tokens[take:]
                    if filled == LLMC_SHARD_TOKENS:
                        buffer.tofile(os.path.join(tmp, f"shard_{shard:06d}.bin"))
                        shard, filled = shard + 1, 0
        buffer[:filled].tofile(os.path.join(tmp, f"shard_{shard:06d}.bin"))
        return time.perf_counter() - start, total


LLMC_TOKENIZER = "gpt2"


def cpu_seconds() -> tuple[float, float]:
    """User and system CPU time of this process, and of its children that have ended (the pools' processes)."""
    usages = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return tuple(usage.ru_utime + usage.ru_stime for usage in usages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=300, help="megabytes of text in the parquet folder")
    parser.add_argument("--tokenizer", default="gpt2", help="gpt2 (falls back to bytes when its BPE is absent)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per row; the fastest counts")
    parser.add_argument("--quick", action="store_true", help="2 MB of text: a smoke test")
    args = parser.parse_args()
    megabytes = 2 if args.quick else args.mb
    try:
        get_tokenizer(args.tokenizer)
        tokenizer = args.tokenizer
    except ValueError as e:
        print(f"{args.tokenizer}: {e}; using bytes")
        tokenizer = "bytes"
    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "corpus"
        n_docs = write_parquet_folder(folder, megabytes)
        print(f"{folder}: {megabytes} MB, {n_docs:,} documents in {FILES} parquet files; tokenizer {tokenizer}")
        print(f"cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.2f} (shared cores make every rate noisy)")
        # Rows interleaved and repeated, the fastest of each counting: load from others sharing the cores then
        # falls on every row alike rather than on whichever ran during it.
        rates, cpu_per_token = {}, {}
        for repeat in range(args.repeats):
            for processes in (1, 2):
                for name, run in (("minigpt prepare", minigpt_prepare), ("llm.c fineweb.py approach", llmc_prepare)):
                    before = cpu_seconds()
                    seconds, tokens = run(folder, tokenizer, processes)
                    main_cpu, pool_cpu = np.subtract(cpu_seconds(), before)
                    cpu = main_cpu + pool_cpu
                    rates[name, processes] = max(rates.get((name, processes), 0), tokens / seconds)
                    cpu_per_token[name, processes] = min(cpu_per_token.get((name, processes), 1e9), cpu / tokens)
                    print(f"{name}, {processes} process(es), run {repeat + 1}: {tokens:,} tokens in {seconds:.2f} s, "
                          f"{cpu:.2f} CPU s, {main_cpu:.2f} of them in the reading process "
                          f"(load average {os.getloadavg()[0]:.2f})", flush=True)  # fmt: skip

    print(f"\n{'row':<28} {'processes':>9} {'tokens/s':>12} {'CPU s/M tokens':>15}")
    for (name, processes), rate in rates.items():
        print(f"{name:<28} {processes:>9} {rate:>12,.0f} {cpu_per_token[name, processes] * 1e6:>15.2f}")
    per_process = [rates["minigpt prepare", p] / rates["llm.c fineweb.py approach", p] for p in (1, 2)]
    scaling = rates["minigpt prepare", 2] / rates["minigpt prepare", 1]
    print(
        f"\nminigpt / llm.c approach: {per_process[0]:.2f}x at 1 process, {per_process[1]:.2f}x at 2 (target >= 1.0x)"
    )
    print(f"minigpt 2 processes / 1: {scaling:.2f}x (target >= 1.8x; needs 2 idle cores)")
    # What the cores' load cannot hide: the CPU time a token costs in all the processes together. When the second
    # process adds no work per token, two idle cores run the preparation in half the time of one.
    extra = cpu_per_token["minigpt prepare", 2] / cpu_per_token["minigpt prepare", 1]
    print(f"minigpt CPU time per token, 2 processes / 1: {extra:.2f} (1.00: no work added by the second process)")
    print(f"summary: {per_process[0]:.2f}x llm.c per process, {scaling:.2f}x from 1 to 2 processes ({tokenizer})")


if __name__ == "__main__":
    main()
