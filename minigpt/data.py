"""Text sources -> token memmaps in data/<dataset>/<tokenizer>/ -> batches of (x, y) windows.

Sources: the Python Language Reference shipped with CPython (offline default), local text files, and
HuggingFace hub datasets. `prepare_data` tokenizes a source once into `train.bin`/`val.bin` + `meta.json`;
`setup` maps those read-only; the loaders cut windows of `block_size + 1` tokens out of them.
"""

import glob
import hashlib
import json
import math
import os
import re
import sys
from typing import Literal

import datasets
import lightning as L
import numpy as np
import pyarrow.compute as pc
import tiktoken
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from minigpt.tokenizer import available, get_tokenizer

SPLIT_SEED = 1337  # fixed, not the training seed: runs with different seeds validate on the same documents
CACHE_VERSION = 1  # part of the fingerprint: bump it when the cache layout changes
SPLITS = ("train", "val")


def embedded_corpus() -> list[str]:
    """The Python Language Reference that ships inside every CPython, one document per topic."""
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


def _hash_unit(index: int) -> float:
    """A uniform number in [0, 1) that depends only on `index` (and the split seed)."""
    digest = hashlib.blake2b(f"{SPLIT_SEED}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _flag_val_streaming(batch: dict, indices: list[int], fraction: float) -> dict:
    # A stream has no known length to draw a permutation from, so each document decides alone.
    return {"val": [_hash_unit(i) < fraction for i in indices]}


def _encode(batch: dict, column: str, tokenizer: str, dtype: str) -> dict:
    # `<|endoftext|>` after each document, so the model sees where one ends and the next begins.
    enc = get_tokenizer(tokenizer)
    docs = enc.encode_ordinary_batch(batch[column])
    return {"ids": [np.array([*ids, enc.eot_token], dtype=dtype) for ids in docs]}


class TokenWindows(IterableDataset):
    """Batches (x, y) of windows cut from a token file; batch `b` is a pure function of (seed, rank, b).

    x = window[:-1] and y = window[1:], both int64 (batch_size, block_size). With a seed the window starts are
    random; with `seed=None` they are evenly spaced through the file (a fixed validation set). Worker w of n
    takes batches[w::n]; DataLoader reads its workers round-robin, so the order is the same with any n.
    """

    def __init__(
        self,
        path: str,
        dtype: str,
        block_size: int,
        batch_size: int,
        batches: range,
        seed: int | None = None,
        rank: int = 0,
    ):
        self.path, self.dtype, self.block_size, self.batch_size = path, dtype, block_size, batch_size
        self.batches, self.seed, self.rank = batches, seed, rank

    def offsets(self, b: int, n_tokens: int) -> np.ndarray:
        """Where the windows of batch `b` start, in a file of `n_tokens`."""
        last = n_tokens - self.block_size - 1  # the last start that leaves room for block_size + 1 tokens
        if self.seed is None:
            k = b * self.batch_size + np.arange(self.batch_size)  # window numbers of this batch
            return k * last // max(len(self.batches) * self.batch_size - 1, 1)
        return np.random.default_rng([self.seed, self.rank, b]).integers(0, last + 1, self.batch_size)

    def __iter__(self):
        worker = get_worker_info()
        batches = self.batches if worker is None else self.batches[worker.id :: worker.num_workers]
        for b in batches:
            # Mapped anew per batch (cheap), as nanoGPT does, so pages already read do not pile up.
            data = np.memmap(self.path, dtype=self.dtype, mode="r")
            starts = self.offsets(b, len(data))
            windows = np.stack([data[s : s + self.block_size + 1] for s in starts])  # (B, T + 1)
            windows = torch.from_numpy(windows.astype(np.int64))
            yield windows[:, :-1].contiguous(), windows[:, 1:].contiguous()  # x, y: (B, T) each


class TextDataModule(L.LightningDataModule):
    """A text dataset as token memmaps and batches of (x, y) windows of `block_size` tokens.

    Args:
        source: Where the text comes from: `embedded` (the Python Language Reference that ships with CPython,
            works offline), `text` (local .txt files or a URL, each file one document) or `hub` (a HuggingFace
            hub dataset, or a local folder laid out like one).
        path: For `text`, a .txt file, a folder of them, a glob or a URL; for `hub`, the dataset id or folder.
        name: The hub dataset's configuration (subset), e.g. `sample-10BT`.
        split: The hub split to read; validation documents are taken out of it.
        text_column: The hub column that holds the text.
        streaming: Read the hub dataset as a stream (with `token_budget`, for sets too big to download).
        token_budget: Stop reading after the document that brings the token count to this many.
        val_fraction: The share of documents that validates; a single document (one text file) validates on
            the last `val_fraction` of its characters, as nanoGPT does.
        tokenizer: `bytes` (257 byte-level tokens, offline), `gpt2`, or another tiktoken encoding name.
        block_size: Tokens per training window (the model's context length).
        batch_size: Windows per batch.
        seed: Seeds the training windows, together with the DDP rank and the batch number.
        val_batches: How many fixed batches form the validation set.
        num_workers: DataLoader worker processes.
        num_proc: Processes that tokenize (`datasets.Dataset.map`); None tokenizes in this process.
        data_dir: Root of the token caches, written to `<data_dir>/<dataset_name>/<tokenizer>/`.
        dataset_name: The cache folder's name; None derives it from the source.
    """

    def __init__(
        self,
        source: Literal["embedded", "text", "hub"] = "embedded",
        path: str | None = None,
        name: str | None = None,
        split: str = "train",
        text_column: str = "text",
        streaming: bool = False,
        token_budget: int | None = None,
        val_fraction: float = 0.1,
        tokenizer: str = "bytes",
        block_size: int = 256,
        batch_size: int = 32,
        seed: int = 1337,
        val_batches: int = 20,
        num_workers: int = 0,
        num_proc: int | None = None,
        data_dir: str = "data",
        dataset_name: str | None = None,
    ):
        super().__init__()
        # Fail on arguments now, before any download; the tokenizer itself loads only when first needed.
        if source not in ("embedded", "text", "hub"):
            raise ValueError(f"unknown source {source!r}; use embedded, text or hub")
        if source != "embedded" and not path:
            raise ValueError(f"source {source!r} needs a path (a file, folder, glob, URL or hub dataset id)")
        if tokenizer not in available():
            raise ValueError(f"unknown tokenizer {tokenizer!r}; available: {', '.join(available())}")
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction={val_fraction} must lie strictly between 0 and 1")
        self.save_hyperparameters()
        self.source, self.path, self.name, self.split = source, path, name, split
        self.text_column, self.streaming, self.token_budget = text_column, streaming, token_budget
        self.val_fraction, self.tokenizer, self.block_size = val_fraction, tokenizer, block_size
        self.batch_size, self.seed, self.val_batches = batch_size, seed, val_batches
        self.num_workers, self.num_proc, self.data_dir = num_workers, num_proc, data_dir
        self.dataset_name = dataset_name or self._default_name()
        self.cache_dir = os.path.join(data_dir, self.dataset_name, tokenizer)

    @property
    def encoding(self) -> tiktoken.Encoding:
        """The tokenizer as a `tiktoken.Encoding`, e.g. to decode samples."""
        return get_tokenizer(self.tokenizer)

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary size, which the model's embedding must match."""
        return self.encoding.n_vocab

    def _default_name(self) -> str:
        if self.source == "embedded":
            return "python-reference"
        # The last two parts of the path (absolute when it exists locally, without a file extension) and the
        # subset: readable, and rarely the same for two sources.
        path = os.path.abspath(self.path) if os.path.exists(self.path) else self.path
        stem = os.path.splitext(path.rstrip("/\\"))[0] if self.source == "text" else path
        parts = re.split(r"[/\\]+", stem)[-2:] + [self.name or ""]
        return re.sub(r"[^\w.]+", "-", "-".join(parts)).strip("-.") or "dataset"

    # ---- preparation -------------------------------------------------------------------------------------

    def _text_files(self) -> list[str]:
        """The local .txt files behind `path` (a file, a folder searched recursively, or a glob)."""
        pattern = os.path.join(self.path, "**", "*.txt") if os.path.isdir(self.path) else self.path
        files = sorted(glob.glob(pattern, recursive=True))
        if not files:
            raise FileNotFoundError(
                f"no text file at path={self.path!r}; give a .txt file, a folder of them or a glob like 'books/*.txt'"
            )
        return files

    def _is_url(self) -> bool:
        return "://" in (self.path or "")

    def _bin(self, split: str) -> str:
        return os.path.join(self.cache_dir, f"{split}.bin")

    def _fingerprint(self) -> str:
        """A hash of the settings and of what identifies the source's content without loading it."""
        settings = {key: getattr(self, key) for key in ("source", "path", "name", "split", "text_column")}
        settings |= {"streaming": self.streaming, "token_budget": self.token_budget, "version": CACHE_VERSION}
        settings |= {"val_fraction": self.val_fraction, "tokenizer": self.tokenizer}
        if self.source == "embedded":  # changes with the Python version
            settings["corpus"] = hashlib.sha256("\0".join(embedded_corpus()).encode()).hexdigest()
        elif self.source == "text" and not self._is_url():  # local files: their names, sizes and times
            stats = [(f, os.stat(f)) for f in map(os.path.abspath, self._text_files())]
            settings["files"] = [(f, st.st_size, st.st_mtime_ns) for f, st in stats]
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()

    def _read_meta(self) -> dict | None:
        try:
            with open(os.path.join(self.cache_dir, "meta.json")) as f:
                return json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _cache_problem(self, fingerprint: str) -> str | None:
        """Why the cache cannot be reused, or None when it can."""
        meta = self._read_meta()
        if meta is None:
            return "no cache yet"
        if meta["fingerprint"] != fingerprint:
            return "the source or the settings changed"
        for split in SPLITS:
            size = meta["tokens"][split] * np.dtype(meta["dtype"]).itemsize
            if not os.path.exists(self._bin(split)) or os.path.getsize(self._bin(split)) != size:
                return f"{split}.bin is missing or truncated"
        return None

    def _load(self) -> tuple[datasets.Dataset | datasets.IterableDataset, str]:
        """The source as a `datasets` dataset, and the name of its text column."""
        if self.source == "embedded":
            return datasets.Dataset.from_dict({"text": embedded_corpus()}), "text"
        if self.source == "text":
            return self._load_text(), "text"
        return self._load_hub(), self.text_column

    def _load_text(self) -> datasets.Dataset:
        files = self.path if self._is_url() else self._text_files()  # a missing local file fails here, plainly
        try:
            # One row per file: the `text` builder's default of one row per line would lose the documents.
            ds = datasets.load_dataset(
                "text", data_files=files, split="train", sample_by="document", encoding_errors="replace"
            )
        except (ConnectionError, FileNotFoundError) as e:  # the local files exist: a URL that cannot be fetched
            raise self._offline_error(e) from None
        self._report_replacements(ds)
        return ds

    def _load_hub(self) -> datasets.Dataset | datasets.IterableDataset:
        try:
            ds = datasets.load_dataset(self.path, self.name, split=self.split, streaming=self.streaming)
        except ConnectionError as e:  # datasets' OfflineModeIsEnabled included
            raise self._offline_error(e) from None
        except FileNotFoundError as e:
            first_line = str(e).splitlines()[0]
            raise FileNotFoundError(f"no dataset {self.path!r} on the hub or on disk ({first_line})") from None
        # A stream may not know its columns before the first row; then a wrong column fails on that row.
        if ds.column_names is not None and self.text_column not in ds.column_names:
            raise ValueError(
                f"text_column={self.text_column!r} is not a column of {self.path!r} (columns: "
                f"{', '.join(ds.column_names)}); set text_column to the one that holds the text"
            )
        return ds

    def _offline_error(self, e: Exception) -> ValueError:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        return ValueError(
            f"cannot download {self.path!r} ({reason}); with no network or HF_HUB_OFFLINE=1 only cached data "
            f"loads: run once online to cache it, or use local files (source: text, path: your.txt) "
            f"or the embedded default (source: embedded)"
        )

    def _report_replacements(self, ds: datasets.Dataset) -> None:
        # The builder decoded with errors="replace": every U+FFFD marks bytes that were not UTF-8.
        bad = sum("\ufffd" in line for doc in ds["text"] if "\ufffd" in doc for line in doc.split("\n"))
        if bad:
            print(f"{self.path}: {bad} lines held bytes that are not UTF-8, replaced by U+FFFD")

    def _flag_val(
        self, ds: datasets.Dataset | datasets.IterableDataset, column: str
    ) -> datasets.Dataset | datasets.IterableDataset:
        """`ds` with a boolean `val` column saying which rows validate."""
        if isinstance(ds, datasets.IterableDataset):
            fraction = {"fraction": self.val_fraction}
            return ds.map(_flag_val_streaming, batched=True, with_indices=True, fn_kwargs=fraction)
        if ds.num_rows == 1:
            # One document (Tiny Shakespeare): validate on its tail, cut at nanoGPT's int(n * 0.9).
            text = ds[0][column]
            cut = int(len(text) * (1 - self.val_fraction))
            return datasets.Dataset.from_dict({column: [text[:cut], text[cut:]], "val": [False, True]})
        # Several documents: a seeded choice of ceil(fraction * n) of them, so even two files give one of each.
        n_val = math.ceil(ds.num_rows * self.val_fraction)
        val = np.zeros(ds.num_rows, dtype=bool)
        val[np.random.default_rng(SPLIT_SEED).permutation(ds.num_rows)[:n_val]] = True
        return ds.add_column("val", val)

    def _write(self, tokens: datasets.Dataset | datasets.IterableDataset, dtype: str) -> tuple[dict, int]:
        """Append each batch of rows to its split's temporary file; the token counts and the number of rows."""
        counts, rows = dict.fromkeys(SPLITS, 0), 0
        files = {split: open(self._bin(split) + ".tmp", "wb") for split in SPLITS}
        with files["train"], files["val"]:
            for table in tokens.with_format("arrow").iter(batch_size=1000):
                if self.token_budget is not None:
                    # Keep the documents up to the one that reaches the budget.
                    total = np.cumsum(pc.list_value_length(table["ids"]).to_numpy()) + sum(counts.values())
                    table = table.slice(0, int(np.searchsorted(total, self.token_budget)) + 1)
                for split, mask in (("train", pc.invert(table["val"])), ("val", table["val"])):
                    ids = pc.list_flatten(table.filter(mask)["ids"]).to_numpy()  # this split's tokens, in order
                    ids.astype(dtype, copy=False).tofile(files[split])
                    counts[split] += len(ids)
                rows += table.num_rows
                if self.token_budget is not None and sum(counts.values()) >= self.token_budget:
                    break
        return counts, rows

    def prepare_data(self) -> None:
        """Tokenize the source into the cache once; reuse the cache when its meta matches."""
        fingerprint = self._fingerprint()
        problem = self._cache_problem(fingerprint)
        if problem is None:
            return
        print(f"preparing {self.cache_dir}: {problem}")
        ds, column = self._load()
        ds = self._flag_val(ds, column)
        enc = self.encoding
        dtype = "uint16" if enc.n_vocab <= 2**16 else "uint32"
        streamed = isinstance(ds, datasets.IterableDataset)  # a stream maps lazily, in this process
        map_kwargs = {} if streamed else {"num_proc": self.num_proc, "desc": f"tokenizing ({self.tokenizer})"}
        tokens = ds.select_columns([column, "val"]).map(
            _encode,
            batched=True,
            remove_columns=[column],
            fn_kwargs={"column": column, "tokenizer": self.tokenizer, "dtype": dtype},
            **map_kwargs,
        )
        os.makedirs(self.cache_dir, exist_ok=True)
        try:
            counts, rows = self._write(tokens, dtype)
            if sum(counts.values()) == rows:  # nothing but the end-of-text tokens
                raise ValueError(f"source {self.path or self.source!r} holds no text; give a non-empty source")
        except BaseException:
            # Leave nothing half-written behind (Ctrl-C included); the old cache, if any, stays as it was.
            for split in SPLITS:
                if os.path.exists(self._bin(split) + ".tmp"):
                    os.remove(self._bin(split) + ".tmp")
            raise
        # Old meta first: a crash between the renames below must never leave a meta describing other files.
        meta_path = os.path.join(self.cache_dir, "meta.json")
        if os.path.exists(meta_path):
            os.remove(meta_path)
        for split in SPLITS:
            os.replace(self._bin(split) + ".tmp", self._bin(split))
        meta = {key: getattr(self, key) for key in ("source", "path", "name", "split", "text_column", "streaming")}
        meta |= {"token_budget": self.token_budget, "val_fraction": self.val_fraction, "tokenizer": self.tokenizer}
        meta |= {"vocab_size": enc.n_vocab, "dtype": dtype, "tokens": counts, "fingerprint": fingerprint}
        with open(meta_path + ".tmp", "w") as f:
            json.dump(meta, f, indent=2)
        os.replace(meta_path + ".tmp", meta_path)
        print(f"wrote {counts['train']:,} train and {counts['val']:,} val tokens to {self.cache_dir}")

    # ---- loading -----------------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Map the prepared token files read-only and check each holds at least one window."""
        meta = self._read_meta()
        if meta is None:
            raise FileNotFoundError(f"no token cache in {self.cache_dir}; call prepare_data() first")
        self.dtype = meta["dtype"]
        self.data = {split: np.memmap(self._bin(split), dtype=self.dtype, mode="r") for split in SPLITS}
        for split, data in self.data.items():
            if len(data) < self.block_size + 1:
                raise ValueError(
                    f"the {split} split of {self.dataset_name} holds {len(data)} tokens, fewer than one window of "
                    f"block_size + 1 = {self.block_size + 1}; use a smaller block_size or more text"
                )

    def _loader(self, windows: TokenWindows) -> DataLoader:
        # Batches come whole from the dataset (batch_size=None). Lightning copies pinned batches non-blocking.
        return DataLoader(
            windows,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """An endless stream of random windows, different per DDP rank, resuming where a checkpoint left off."""
        trainer = self.trainer
        # Lightning restores global_step before asking for this loader, so a resumed run sees the same batches.
        start = trainer.global_step * trainer.accumulate_grad_batches if trainer else 0
        rank = trainer.global_rank if trainer else 0
        batches = range(start, sys.maxsize)
        return self._loader(
            TokenWindows(self._bin("train"), self.dtype, self.block_size, self.batch_size, batches, self.seed, rank)
        )

    def val_dataloader(self) -> DataLoader:
        """The same `val_batches` batches of evenly spaced windows, every epoch and every run, on every rank."""
        batches = range(self.val_batches)
        return self._loader(TokenWindows(self._bin("val"), self.dtype, self.block_size, self.batch_size, batches))
