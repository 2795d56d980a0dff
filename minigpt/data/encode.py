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


def encoded_batches(batches: Iterator[tuple], processes: int, tokenizer: str, dtype: str) -> Iterator[tuple]:
    """(val flags, ends, ids, lengths) of each batch of (texts, ends, val flags), in order, tokenized by `processes`.

    With more than one process, a pool (forked, as `datasets.map(num_proc=...)` forks) tokenizes up to two batches
    per process ahead of the one being written; `Pool.imap` would read the whole source ahead instead.
    """
    head = list(itertools.islice(batches, 2))  # a source of one batch is not worth starting a pool for
    batches = itertools.chain(head, batches)
    if processes == 1 or len(head) < 2:
        for texts, ends, val in batches:
            yield val, ends, *encode(texts, ends, tokenizer, dtype)
        return
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        pending = collections.deque()
        for texts, ends, val in batches:
            pending.append((val, ends, pool.apply_async(encode, (texts, ends, tokenizer, dtype))))
            if len(pending) > 2 * processes:
                val, ends, result = pending.popleft()
                yield val, ends, *result.get()
        while pending:
            val, ends, result = pending.popleft()
            yield val, ends, *result.get()


def all_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
