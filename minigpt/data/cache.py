"""The token cache: a source tokenized once into `<data_dir>/<dataset>/<tokenizer>/`, reused while it matches.

`train.bin` and `val.bin` hold the token ids (uint16, or uint32 for vocabularies over 65,536), each document followed
by `<|endoftext|>`; `meta.json` holds the settings, the token counts and a fingerprint of the source and settings.
Files are written to a temporary name and renamed, so an interrupted preparation never leaves a file that a later
run trusts. The validation split is decided here: a seeded choice of documents, or a single document's tail.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import TYPE_CHECKING

import numpy as np

from minigpt.data.sources import TEXT_BATCH_ROWS, Source
from minigpt.errors import UserError
from minigpt.tokenizer import get_tokenizer

if TYPE_CHECKING:
    import datasets

SPLIT_SEED = 1337  # fixed, not the training seed: runs with different seeds validate on the same documents
CACHE_VERSION = 1  # part of the fingerprint: bump it when the cache layout changes
SPLITS = ("train", "val")


def _hash_unit(index: int) -> float:
    """A uniform number in [0, 1) that depends only on `index` (and the split seed)."""
    digest = hashlib.blake2b(f"{SPLIT_SEED}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _flag_val_streaming(batch: dict, indices: list[int], fraction: float) -> dict:
    # A stream has no known length to draw a permutation from, so each document decides alone.
    return {"val": [_hash_unit(i) < fraction for i in indices]}


def choose_val(n: int, fraction: float) -> np.ndarray:
    """Which of n documents validate: a seeded choice of ceil(fraction * n), so even two give one of each."""
    val = np.zeros(n, dtype=bool)
    val[np.random.default_rng(SPLIT_SEED).permutation(n)[: math.ceil(n * fraction)]] = True
    return val


def flag_val(
    ds: datasets.Dataset | datasets.IterableDataset, column: str, fraction: float
) -> datasets.Dataset | datasets.IterableDataset:
    """`ds` with a boolean `val` column saying which rows validate."""
    import datasets

    if isinstance(ds, datasets.IterableDataset):
        return ds.map(_flag_val_streaming, batched=True, with_indices=True, fn_kwargs={"fraction": fraction})
    if ds.num_rows == 1:
        # One document (Tiny Shakespeare): validate on its tail, cut at nanoGPT's int(n * 0.9).
        text = ds[0][column]
        cut = int(len(text) * (1 - fraction))
        return datasets.Dataset.from_dict({column: [text[:cut], text[cut:]], "val": [False, True]})
    return ds.add_column("val", choose_val(ds.num_rows, fraction))


def _encode(batch: dict, column: str, tokenizer: str, dtype: str) -> dict:
    # `<|endoftext|>` after each document, so the model sees where one ends and the next begins; a document read in
    # pieces (a local text file) gets it after its last piece only.
    enc = get_tokenizer(tokenizer)
    ends = batch["doc_end"] if "doc_end" in batch else [True] * len(batch[column])
    pieces = [np.array(ids, dtype=dtype) for ids in enc.encode_ordinary_batch(batch[column])]
    eot = np.array([enc.eot_token], dtype=dtype)
    ids = [np.concatenate([piece, eot]) if end else piece for piece, end in zip(pieces, ends, strict=True)]
    return {"ids": ids, "doc_end": ends}


class TokenCache:
    """The token files of one source, tokenizer and split setting, in `cache_dir`."""

    def __init__(
        self,
        source: Source,
        tokenizer: str,
        val_fraction: float,
        token_budget: int | None,
        num_proc: int | None,
        cache_dir: str,
    ):
        self.source, self.tokenizer, self.val_fraction = source, tokenizer, val_fraction
        self.token_budget, self.num_proc, self.cache_dir = token_budget, num_proc, cache_dir

    def bin(self, split: str) -> str:
        return os.path.join(self.cache_dir, f"{split}.bin")

    def fingerprint(self) -> str:
        """A hash of the settings and of what identifies the source's content without loading it."""
        src = self.source
        settings = {"source": src.source, "path": src.path, "name": src.name, "split": src.split}
        settings |= {"text_column": src.text_column, "streaming": src.streaming, "token_budget": self.token_budget}
        settings |= {"version": CACHE_VERSION, "val_fraction": self.val_fraction, "tokenizer": self.tokenizer}
        settings |= src.identity()
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()

    def read_meta(self) -> dict | None:
        """The cache's meta.json; None when there is none or it is not one this code wrote (damaged, edited)."""
        try:
            with open(os.path.join(self.cache_dir, "meta.json"), encoding="utf-8") as f:
                meta = json.load(f)
        except (FileNotFoundError, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            return None
        tokens = meta.get("tokens") if isinstance(meta, dict) else None
        if not (
            isinstance(tokens, dict)
            and all(isinstance(tokens.get(split), int) and tokens[split] >= 0 for split in SPLITS)
            and meta.get("dtype") in ("uint16", "uint32")
            and isinstance(meta.get("fingerprint"), str)
        ):
            return None
        return meta

    def problem(self, fingerprint: str) -> str | None:
        """Why the cache cannot be reused, or None when it can."""
        meta = self.read_meta()
        if meta is None:
            exists = os.path.exists(os.path.join(self.cache_dir, "meta.json"))
            return "meta.json is damaged" if exists else "no cache yet"
        if meta["fingerprint"] != fingerprint:
            return "the source or the settings changed"
        for split in SPLITS:
            size = meta["tokens"][split] * np.dtype(meta["dtype"]).itemsize
            if not os.path.exists(self.bin(split)):
                return f"{split}.bin is missing or truncated"
            if os.path.getsize(self.bin(split)) != size:
                return (
                    f"{split}.bin is missing or truncated: {os.path.getsize(self.bin(split)):,} bytes, "
                    f"meta.json says {meta['tokens'][split]:,} {meta['dtype']} tokens"
                )
        return None

    def _load(self) -> datasets.Dataset | datasets.IterableDataset:
        """The source's rows with a boolean `val` column (and `doc_end` for text read in pieces)."""
        if self.source.source == "text":
            files = self.source.fetch_text_files()
            return self.source.read_text(files, choose_val(len(files), self.val_fraction), self.val_fraction)
        return flag_val(self.source.read(), self.source.column, self.val_fraction)

    def _write(
        self, tokens: datasets.Dataset | datasets.IterableDataset, dtype: str, batch_rows: int
    ) -> tuple[dict, int]:
        """Append each batch of rows to its split's temporary file; the token counts and the number of documents."""
        import pyarrow.compute as pc

        counts, docs = dict.fromkeys(SPLITS, 0), 0
        files = {split: open(self.bin(split) + ".tmp", "wb") for split in SPLITS}
        with files["train"], files["val"]:
            for table in tokens.with_format("arrow").iter(batch_size=batch_rows):
                ends = table["doc_end"].to_numpy()
                stop = None
                if self.token_budget is not None:
                    # Keep the documents up to the one that reaches the budget.
                    total = np.cumsum(pc.list_value_length(table["ids"]).to_numpy()) + sum(counts.values())
                    stops = np.flatnonzero(ends & (total >= self.token_budget))
                    if len(stops):
                        stop = int(stops[0]) + 1
                        table, ends = table.slice(0, stop), ends[:stop]
                for split, mask in (("train", pc.invert(table["val"])), ("val", table["val"])):
                    ids = pc.list_flatten(table.filter(mask)["ids"]).to_numpy()  # this split's tokens, in order
                    ids.astype(dtype, copy=False).tofile(files[split])
                    counts[split] += len(ids)
                docs += int(ends.sum())
                if stop is not None:
                    break
        return counts, docs

    def build(self) -> None:
        """Tokenize the source into the cache, unless the cache on disk already matches."""
        fingerprint = self.fingerprint()
        problem = self.problem(fingerprint)
        if problem is None:
            return
        import datasets

        ds, column = self._load(), self.source.column
        enc = get_tokenizer(self.tokenizer)
        dtype = "uint16" if enc.n_vocab <= 2**16 else "uint32"
        streamed = isinstance(ds, datasets.IterableDataset)  # a stream maps lazily, in this process
        # Local text comes in pieces of up to TEXT_CHUNK_CHARS characters: a few of them at a time.
        pieces = self.source.source == "text"
        batch_rows = TEXT_BATCH_ROWS if pieces else 1000
        map_kwargs = {"num_proc": self.num_proc, "desc": f"tokenizing ({self.tokenizer})"}
        map_kwargs = {} if streamed else map_kwargs | {"batch_size": batch_rows, "writer_batch_size": batch_rows}
        tokens = ds.select_columns([column, "val", "doc_end"] if pieces else [column, "val"]).map(
            _encode,
            batched=True,
            remove_columns=[column],
            fn_kwargs={"column": column, "tokenizer": self.tokenizer, "dtype": dtype},
            **map_kwargs,
        )
        os.makedirs(self.cache_dir, exist_ok=True)
        try:
            counts, docs = self._write(tokens, dtype, batch_rows)
            if sum(counts.values()) == docs:  # nothing but the end-of-text tokens
                raise UserError(
                    f"source {self.source.path or self.source.source!r} holds no text; give a non-empty source"
                )
        except BaseException:
            # Leave nothing half-written behind (Ctrl-C included); the old cache, if any, stays as it was.
            for split in SPLITS:
                if os.path.exists(self.bin(split) + ".tmp"):
                    os.remove(self.bin(split) + ".tmp")
            raise
        # Old meta first: a crash between the renames below must never leave a meta describing other files.
        meta_path = os.path.join(self.cache_dir, "meta.json")
        if os.path.exists(meta_path):
            os.remove(meta_path)
        for split in SPLITS:
            os.replace(self.bin(split) + ".tmp", self.bin(split))
        src = self.source
        meta = {"source": src.source, "path": src.path, "name": src.name, "split": src.split}
        meta |= {"text_column": src.text_column, "streaming": src.streaming}
        meta |= {"token_budget": self.token_budget, "val_fraction": self.val_fraction, "tokenizer": self.tokenizer}
        meta |= {"vocab_size": enc.n_vocab, "dtype": dtype, "tokens": counts, "fingerprint": fingerprint}
        with open(meta_path + ".tmp", "w") as f:
            json.dump(meta, f, indent=2)
        os.replace(meta_path + ".tmp", meta_path)
        print(f"prepared {self.cache_dir}: {counts['train']:,} train and {counts['val']:,} val tokens ({problem})")
