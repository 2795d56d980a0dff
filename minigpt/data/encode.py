"""Tokenizing a source's rows: one batch at a time in this process, or by a forked pool of processes, in order.

The token cache (`cache`) writes what comes out; the output is the same for any number of processes.
"""

import collections
import itertools
import multiprocessing
import os
from collections.abc import Iterator

import numpy as np

from minigpt.tokenizer import get_tokenizer


def encode(texts: list[str], ends: list[bool], tokenizer: str, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """The token ids of a batch of rows, concatenated, and each row's count of them.

    `<|endoftext|>` follows each document, so the model sees where one ends and the next begins; a document read in
    pieces (a local text file) gets it after its last piece only. One row at a time, in this process: the pool of
    `prepare` processes is what runs batches in parallel.
    """
    enc = get_tokenizer(tokenizer)
    rows = [
        enc.encode_ordinary(text) + [enc.eot_token] if end else enc.encode_ordinary(text)
        for text, end in zip(texts, ends, strict=True)
    ]
    lengths = np.array([len(row) for row in rows], dtype=np.int64)
    return np.fromiter(itertools.chain.from_iterable(rows), dtype, int(lengths.sum())), lengths


# Each batch goes to the pool in this many parts: with whole batches (a million tokens of FineWeb-like documents)
# one process could still be tokenizing the source's last batch long after the others ran out of work.
BATCH_PARTS = 4


def encoded_batches(batches: Iterator[tuple], processes: int, tokenizer: str, dtype: str) -> Iterator[tuple]:
    """(val flags, ends, ids, lengths) of each batch of (texts, ends, val flags), in order, tokenized by `processes`.

    With more than one process, a pool (forked, as `datasets.map(num_proc=...)` forks) tokenizes up to two batches
    per process ahead of the one being written, each in BATCH_PARTS parts whose tokens are joined again in order;
    `Pool.imap` would read the whole source ahead instead.
    """
    head = list(itertools.islice(batches, 2))  # a source of one batch is not worth starting a pool for
    batches = itertools.chain(head, batches)
    if processes == 1 or len(head) < 2:
        for texts, ends, val in batches:
            yield val, ends, *encode(texts, ends, tokenizer, dtype)
        return

    def joined(parts: list) -> tuple[np.ndarray, np.ndarray]:
        ids, lengths = zip(*(part.get() for part in parts), strict=True)
        return np.concatenate(ids), np.concatenate(lengths)

    with multiprocessing.get_context("fork").Pool(processes) as pool:
        pending = collections.deque()
        for texts, ends, val in batches:
            step = max(1, -(-len(texts) // BATCH_PARTS))  # ceil: at most BATCH_PARTS parts
            parts = [
                pool.apply_async(encode, (texts[i : i + step], ends[i : i + step], tokenizer, dtype))
                for i in range(0, len(texts), step)
            ]
            pending.append((val, ends, parts))
            if len(pending) > 2 * processes:
                val, ends, parts = pending.popleft()
                yield val, ends, *joined(parts)
        while pending:
            val, ends, parts = pending.popleft()
            yield val, ends, *joined(parts)


def all_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
