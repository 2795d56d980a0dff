"""The validation split: which documents of a source validate, decided the same way on every run and machine.

A seeded choice of documents when their number is known, each document alone (a hash of its index) in a stream,
or a single document's tail.
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import datasets

SPLIT_SEED = 1337  # fixed, not the training seed: runs with different seeds validate on the same documents


def _hash_unit(index: int) -> float:
    """A uniform number in [0, 1) that depends only on `index` (and the split seed)."""
    digest = hashlib.blake2b(f"{SPLIT_SEED}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def stream_val(start: int, n: int, fraction: float) -> np.ndarray:
    """Which of a stream's rows `start` to `start + n - 1` validate.

    A stream has no known length to draw a permutation from, so each document decides alone, by its index. Called on
    the batches as they are read (not through `IterableDataset.map`, which turns every row into Python objects and
    back to arrow: that was most of the preparing process's time).
    """
    return np.array([_hash_unit(i) < fraction for i in range(start, start + n)], dtype=bool)


def choose_val(n: int, fraction: float) -> np.ndarray:
    """Which of n documents validate: a seeded choice of ceil(fraction * n), so even two give one of each."""
    val = np.zeros(n, dtype=bool)
    val[np.random.default_rng(SPLIT_SEED).permutation(n)[: math.ceil(n * fraction)]] = True
    return val


def flag_val(ds: datasets.Dataset, column: str, fraction: float) -> datasets.Dataset:
    """`ds` with a boolean `val` column saying which rows validate (a stream's rows: `stream_val`)."""
    import datasets

    if ds.num_rows == 1:
        # One document (Tiny Shakespeare): validate on its tail, cut at nanoGPT's int(n * 0.9).
        text = ds[0][column]
        cut = int(len(text) * (1 - fraction))
        return datasets.Dataset.from_dict({column: [text[:cut], text[cut:]], "val": [False, True]})
    # Only the text is kept: a column of the dataset's own named `val` (or `doc_end`) must not pass for ours.
    return ds.select_columns([column]).add_column("val", choose_val(ds.num_rows, fraction))
