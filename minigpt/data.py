"""Text sources -> token memmaps in data/<dataset>/<tokenizer>/ -> batches of (x, y) windows.

Sources: the Python Language Reference shipped with CPython (offline default), local text files, and
HuggingFace hub datasets. `prepare_data` tokenizes a source once into `train.bin`/`val.bin` + `meta.json`;
`setup` maps those read-only; the loaders cut windows of `block_size + 1` tokens out of them.

`datasets` (and its pyarrow) are imported only where a cache is built: training from a prepared cache needs neither.
"""

from __future__ import annotations

import collections
import functools
import glob
import hashlib
import json
import math
import os
import re
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

import lightning as L
import numpy as np
import tiktoken
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from minigpt.errors import UserError
from minigpt.tokenizer import available, get_tokenizer

if TYPE_CHECKING:
    import datasets

SPLIT_SEED = 1337  # fixed, not the training seed: runs with different seeds validate on the same documents
CACHE_VERSION = 1  # part of the fingerprint: bump it when the cache layout changes
SPLITS = ("train", "val")
# Local text files are read and tokenized in pieces of at most this many characters, so a file of any size (one
# line of 100 MB included) never sits in memory whole. TEXT_BATCH_ROWS pieces are tokenized at a time: their token
# lists take ~8 bytes per character (bytes tokenizer), so that is what bounds the memory used.
TEXT_CHUNK_CHARS = 1 << 20
TEXT_BATCH_ROWS = 2


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
    # `<|endoftext|>` after each document, so the model sees where one ends and the next begins; a document read in
    # pieces (a local text file) gets it after its last piece only.
    enc = get_tokenizer(tokenizer)
    ends = batch["doc_end"] if "doc_end" in batch else [True] * len(batch[column])
    pieces = [np.array(ids, dtype=dtype) for ids in enc.encode_ordinary_batch(batch[column])]
    eot = np.array([enc.eot_token], dtype=dtype)
    ids = [np.concatenate([piece, eot]) if end else piece for piece, end in zip(pieces, ends, strict=True)]
    return {"ids": ids, "doc_end": ends}


# A letter or digit followed by whitespace. No tiktoken pattern (gpt2's, cl100k's, o200k's) puts that letter and
# that whitespace in one pre-token, so text cut between them tokenizes as the whole text does.
_CUT_BEFORE = re.compile(r"[^\W_](?=\s)")


def _piece_end(text: str, limit: int) -> int:
    """Where a piece of `text` at most `limit` characters long ends: before the last whitespace that follows a letter
    or digit in its last 64K characters, else at `limit` (one place where BPE may differ; bytes never do)."""
    last = collections.deque(_CUT_BEFORE.finditer(text, max(0, limit - 65536), limit), maxlen=1)
    return last[0].end() if last else limit


def _read_pieces(path: str, chunk_chars: int, cut_at: int | None = None) -> Iterator[tuple[int, str]]:
    """(position, text) of the pieces of a text file, in order; one piece ends at character `cut_at`.

    The file is read as `open(path).read()` would read it (UTF-8, universal newlines), bytes that are not UTF-8
    becoming U+FFFD, but `chunk_chars` characters at a time.
    """
    with open(path, encoding="utf-8", errors="replace") as f:
        text, pos = "", 0
        while True:
            block = f.read(chunk_chars)
            text += block
            while len(text) > chunk_chars or (text and not block):
                end = _piece_end(text, chunk_chars) if len(text) > chunk_chars else len(text)
                if cut_at is not None and pos < cut_at < pos + end:
                    end = cut_at - pos
                yield pos, text[:end]
                text, pos = text[end:], pos + end
            if not block:
                return


def _count_chars(path: str, chunk_chars: int) -> int:
    with open(path, encoding="utf-8", errors="replace") as f:
        return sum(len(block) for block in iter(functools.partial(f.read, chunk_chars), ""))


class _BadLines:
    """Counts the lines holding U+FFFD (bytes that were not UTF-8) in text fed piece by piece."""

    def __init__(self):
        self.open_line_bad = False  # the line still open at the end of the pieces so far

    def add(self, piece: str) -> int:
        """How many bad lines end in `piece` (at a newline)."""
        if "\ufffd" not in piece:  # the usual case, with no splitting
            ended = self.open_line_bad and "\n" in piece
            self.open_line_bad = self.open_line_bad and "\n" not in piece
            return int(ended)
        lines = piece.split("\n")
        first_bad = self.open_line_bad or "\ufffd" in lines[0]
        self.open_line_bad = "\ufffd" in lines[-1] if len(lines) > 1 else first_bad
        return (int(first_bad) if len(lines) > 1 else 0) + sum("\ufffd" in line for line in lines[1:-1])

    def close(self) -> int:
        return int(self.open_line_bad)


def _text_rows(files: tuple, val: tuple, val_fraction: float, chunk_chars: int) -> Iterator[dict]:
    """The rows of local text files, each file read piece by piece (the generator of `Dataset.from_generator`).

    files: (path, size, mtime) of each; the size and time are there for `datasets`, which caches the rows under a
    hash of these arguments. Each file is one document and validates when `val[i]`; a single file is two: its
    first characters train and its last `val_fraction` validate, cut where nanoGPT cuts, at int(n * 0.9) of n.
    Rows: `text`, `val`, `doc_end` (the last piece of a document), `bad_lines` (lines ending in it with U+FFFD).
    """
    single = len(files) == 1
    for (path, *_), is_val in zip(files, val, strict=True):
        split_at = int(_count_chars(path, chunk_chars) * (1 - val_fraction)) if single else None
        bad = _BadLines()
        # A row is yielded once the next one shows whether it ends its document; an empty document is one "" row.
        held = {"text": "", "val": False, "bad_lines": 0} if split_at == 0 else None
        for pos, piece in _read_pieces(path, chunk_chars, split_at):
            piece_val = pos >= split_at if single else is_val
            if held is not None:
                yield held | {"doc_end": held["val"] != piece_val}
            held = {"text": piece, "val": piece_val, "bad_lines": bad.add(piece)}
        if held is None:
            held = {"text": "", "val": is_val, "bad_lines": 0}
        held["bad_lines"] += bad.close()
        yield held | {"doc_end": True}
        if single and not held["val"]:  # an empty file: its validation document is empty too
            yield {"text": "", "val": True, "bad_lines": 0, "doc_end": True}


class TokenWindows(IterableDataset):
    """Batches (x, y) of windows cut from a token file; batch `b` is a pure function of (seed, rank, b).

    x = window[:-1] and y = window[1:], both int64 (batch_size, block_size). With a seed the window starts are
    random; with `seed=None` they are evenly spaced through the file (a fixed validation set). Worker w of n
    takes batches[w::n]; DataLoader reads its workers round-robin, so the order is the same with any n.
    With `starts_only` a batch is just where its windows start, (batch_size,) int64, for `cut_windows` to cut
    them out of a copy of the tokens that lives on the GPU.
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
        starts_only: bool = False,
    ):
        self.path, self.dtype, self.block_size, self.batch_size = path, dtype, block_size, batch_size
        self.batches, self.seed, self.rank, self.starts_only = batches, seed, rank, starts_only

    def offsets(self, b: int, n_tokens: int) -> np.ndarray:
        """Where the windows of batch `b` start, in a file of `n_tokens`."""
        last = n_tokens - self.block_size - 1  # the last start that leaves room for block_size + 1 tokens
        if self.seed is None:
            # Window numbers of this batch, out of the whole set's (a rank's share is every world-size-th batch).
            k = b * self.batch_size + np.arange(self.batch_size)
            return k * last // max(self.batches.stop * self.batch_size - 1, 1)
        return np.random.default_rng([self.seed, self.rank, b]).integers(0, last + 1, self.batch_size)

    def __iter__(self):
        worker = get_worker_info()
        batches = self.batches if worker is None else self.batches[worker.id :: worker.num_workers]
        for b in batches:
            # Mapped anew per batch (cheap), as nanoGPT does, so pages already read do not pile up.
            data = np.memmap(self.path, dtype=self.dtype, mode="r")
            starts = self.offsets(b, len(data))
            if self.starts_only:
                yield torch.from_numpy(starts)  # (B,)
                continue
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
        val_batches: How many fixed batches form the validation set (shared out among DDP processes).
        num_workers: DataLoader worker processes.
        num_proc: Processes that tokenize (`datasets.Dataset.map`); None tokenizes in this process.
        data_dir: Root of the token caches, written to `<data_dir>/<dataset_name>/<tokenizer>/`.
        dataset_name: The cache folder's name; None derives it from the source.
        tokens_on_device: Copy all the tokens to the training device once and cut the windows there: the loader
            then passes only where each window starts, so there is no host work or host-to-GPU copy per batch.
            The batches are the same as without it. For token sets that fit in GPU memory (4 bytes per token),
            such as Tiny Shakespeare's 1 MB.
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
        tokens_on_device: bool = False,
    ):
        super().__init__()
        # Fail on arguments now, before any download; the tokenizer itself loads only when first needed.
        if source not in ("embedded", "text", "hub"):
            raise UserError(f"unknown source {source!r}; use embedded, text or hub")
        if source != "embedded" and not path:
            raise UserError(f"source {source!r} needs a path (a file, folder, glob, URL or hub dataset id)")
        if tokenizer not in available():
            raise UserError(f"unknown tokenizer {tokenizer!r}; available: {', '.join(available())}")
        if not 0 < val_fraction < 1:
            raise UserError(f"val_fraction={val_fraction} must lie strictly between 0 and 1")
        if val_batches < 1:
            raise UserError(f"val_batches={val_batches} must be at least 1: the validation set needs a batch")
        least_values = (("batch_size", batch_size, 1), ("num_workers", num_workers, 0), ("seed", seed, 0))
        for setting, value, least in least_values:
            if value < least:
                raise UserError(f"data.{setting}={value} must be >= {least}")
        for setting, value in (("token_budget", token_budget), ("num_proc", num_proc)):
            if value is not None and value < 1:
                raise UserError(f"data.{setting}={value} must be >= 1, or unset")
        if os.path.exists(data_dir) and not os.path.isdir(data_dir):
            raise UserError(f"data.data_dir={data_dir!r} is a file: name a folder for the token caches")
        self.save_hyperparameters()
        self.source, self.path, self.name, self.split = source, path, name, split
        self.text_column, self.streaming, self.token_budget = text_column, streaming, token_budget
        self.val_fraction, self.tokenizer, self.block_size = val_fraction, tokenizer, block_size
        self.batch_size, self.seed, self.val_batches = batch_size, seed, val_batches
        self.num_workers, self.num_proc, self.data_dir = num_workers, num_proc, data_dir
        self.tokens_on_device = tokens_on_device
        self._device_tokens: dict[str, torch.Tensor] = {}  # split -> its tokens on the device, with tokens_on_device
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
            raise UserError(
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

    def _cache_problem(self, fingerprint: str) -> str | None:
        """Why the cache cannot be reused, or None when it can."""
        meta = self._read_meta()
        if meta is None:
            exists = os.path.exists(os.path.join(self.cache_dir, "meta.json"))
            return "meta.json is damaged" if exists else "no cache yet"
        if meta["fingerprint"] != fingerprint:
            return "the source or the settings changed"
        for split in SPLITS:
            size = meta["tokens"][split] * np.dtype(meta["dtype"]).itemsize
            if not os.path.exists(self._bin(split)):
                return f"{split}.bin is missing or truncated"
            if os.path.getsize(self._bin(split)) != size:
                return (
                    f"{split}.bin is missing or truncated: {os.path.getsize(self._bin(split)):,} bytes, "
                    f"meta.json says {meta['tokens'][split]:,} {meta['dtype']} tokens"
                )
        return None

    def _load(self) -> tuple[datasets.Dataset | datasets.IterableDataset, str]:
        """The source as a `datasets` dataset with a boolean `val` column, and the name of its text column."""
        import datasets

        if self.source == "text":
            return self._load_text(), "text"
        if self.source == "embedded":
            ds, column = datasets.Dataset.from_dict({"text": embedded_corpus()}), "text"
        else:
            ds, column = self._load_hub(), self.text_column
        return self._flag_val(ds, column), column

    def _load_text(self) -> datasets.Dataset:
        """Text files (a URL downloaded first) as rows of pieces of at most TEXT_CHUNK_CHARS characters."""
        import datasets
        import pyarrow.compute as pc

        if self._is_url():
            try:
                files = [datasets.DownloadManager().download(self.path)]
            except (ConnectionError, FileNotFoundError) as e:  # datasets' OfflineModeIsEnabled included
                raise self._offline_error(e) from None
        else:
            files = self._text_files()  # a missing local file fails here, plainly
        # Several files: a seeded choice of ceil(fraction * n) of them validates, so even two give one of each.
        n_val = math.ceil(len(files) * self.val_fraction)
        val = np.zeros(len(files), dtype=bool)
        val[np.random.default_rng(SPLIT_SEED).permutation(len(files))[:n_val]] = True
        stats = [(f, os.stat(f)) for f in map(os.path.abspath, files)]
        features = {"text": "string", "val": "bool", "doc_end": "bool", "bad_lines": "int64"}
        ds = datasets.Dataset.from_generator(
            _text_rows,
            features=datasets.Features({name: datasets.Value(kind) for name, kind in features.items()}),
            gen_kwargs={  # tuples: `datasets` would shard lists, one generator call per file
                "files": tuple((f, st.st_size, st.st_mtime_ns) for f, st in stats),
                "val": tuple(val.tolist()),
                "val_fraction": self.val_fraction,
                "chunk_chars": TEXT_CHUNK_CHARS,
            },
            writer_batch_size=TEXT_BATCH_ROWS,
        )
        # Read with errors="replace": every U+FFFD marks bytes that were not UTF-8.
        if bad := pc.sum(ds.data.column("bad_lines")).as_py():
            print(f"{self.path}: {bad} lines held bytes that are not UTF-8, replaced by U+FFFD")
        return ds

    def _load_hub(self) -> datasets.Dataset | datasets.IterableDataset:
        import datasets

        try:
            ds = datasets.load_dataset(self.path, self.name, split=self.split, streaming=self.streaming)
        except ConnectionError as e:  # datasets' OfflineModeIsEnabled included
            raise self._offline_error(e) from None
        except FileNotFoundError as e:
            first_line = str(e).splitlines()[0]
            raise UserError(f"no dataset {self.path!r} on the hub or on disk ({first_line})") from None
        except ValueError as e:  # datasets refusing the name or split it was given, before reading anything
            first_line = str(e).splitlines()[0]
            raise UserError(
                f"dataset {self.path!r} has no name={self.name!r} or no split={self.split!r} ({first_line}); "
                "set data.name and data.split to ones it has"
            ) from None
        # A stream may not know its columns before the first row; then a wrong column fails on that row.
        if ds.column_names is not None and self.text_column not in ds.column_names:
            raise UserError(
                f"text_column={self.text_column!r} is not a column of {self.path!r} (columns: "
                f"{', '.join(ds.column_names)}); set text_column to the one that holds the text"
            )
        return ds

    def _offline_error(self, e: Exception) -> UserError:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        return UserError(
            f"cannot download {self.path!r} ({reason}); with no network or HF_HUB_OFFLINE=1 only cached data "
            f"loads: run once online to cache it, or use local files (source: text, path: your.txt) "
            f"or the embedded default (source: embedded)"
        )

    def _flag_val(
        self, ds: datasets.Dataset | datasets.IterableDataset, column: str
    ) -> datasets.Dataset | datasets.IterableDataset:
        """`ds` with a boolean `val` column saying which rows validate."""
        import datasets

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

    def _write(
        self, tokens: datasets.Dataset | datasets.IterableDataset, dtype: str, batch_rows: int
    ) -> tuple[dict, int]:
        """Append each batch of rows to its split's temporary file; the token counts and the number of documents."""
        import pyarrow.compute as pc

        counts, docs = dict.fromkeys(SPLITS, 0), 0
        files = {split: open(self._bin(split) + ".tmp", "wb") for split in SPLITS}
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

    def prepare_data(self) -> None:
        """Tokenize the source into the cache once; reuse the cache when its meta matches.

        Run by a Trainer, it also checks that each split holds a window: before training starts a logger or writes
        a run directory.
        """
        self._build_cache()
        if self.trainer is not None:
            self.check_windows()

    def _build_cache(self) -> None:
        fingerprint = self._fingerprint()
        problem = self._cache_problem(fingerprint)
        if problem is None:
            return
        import datasets

        ds, column = self._load()
        enc = self.encoding
        dtype = "uint16" if enc.n_vocab <= 2**16 else "uint32"
        streamed = isinstance(ds, datasets.IterableDataset)  # a stream maps lazily, in this process
        # Local text comes in pieces of up to TEXT_CHUNK_CHARS characters: a few of them at a time.
        pieces = self.source == "text"
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
                raise UserError(f"source {self.path or self.source!r} holds no text; give a non-empty source")
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
        print(f"prepared {self.cache_dir}: {counts['train']:,} train and {counts['val']:,} val tokens ({problem})")

    # ---- loading -----------------------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Map the prepared token files read-only and check each holds at least one window."""
        meta = self._read_meta()
        if meta is None:
            raise FileNotFoundError(f"no token cache in {self.cache_dir}; call prepare_data() first")
        self.dtype = meta["dtype"]
        self.data = {split: np.memmap(self._bin(split), dtype=self.dtype, mode="r") for split in SPLITS}
        self.check_windows({split: len(data) for split, data in self.data.items()})

    def check_windows(self, tokens: dict[str, int] | None = None) -> None:
        """UserError unless each split holds one window of block_size + 1 tokens; counts: the prepared cache's."""
        tokens = tokens or self._read_meta()["tokens"]
        for split in SPLITS:
            if tokens[split] < self.block_size + 1:
                raise UserError(
                    f"the {split} split of {self.dataset_name} holds {tokens[split]} tokens, fewer than one window "
                    f"of block_size + 1 = {self.block_size + 1}; use a smaller block_size or more text"
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
        return self._loader(self._windows("train", batches, self.seed, rank))

    def val_dataloader(self) -> DataLoader:
        """The same `val_batches` batches of evenly spaced windows, every epoch and every run; under DDP each rank
        validates every world-size-th of them (the validation loss is averaged over all of them)."""
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        if self.val_batches < world:
            raise UserError(
                f"val_batches={self.val_batches} is fewer than the {world} training processes, which share them: "
                f"set data.val_batches to at least {world}"
            )
        return self._loader(self._windows("val", range(rank, self.val_batches, world)))

    def _windows(self, split: str, batches: range, seed: int | None = None, rank: int = 0) -> TokenWindows:
        return TokenWindows(
            self._bin(split), self.dtype, self.block_size, self.batch_size, batches, seed, rank, self.tokens_on_device
        )

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """With tokens_on_device, the batch arrives as window starts (B,) and leaves as (x, y) windows."""
        if not self.tokens_on_device:
            return batch
        return self.cut_windows("train" if self.trainer.training else "val", batch)

    def cut_windows(self, split: str, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y (B, T) int64: the windows of `split` at `starts` (B,), cut from its tokens on starts' device."""
        tokens = self._device_tokens.get(split)
        if tokens is None or tokens.device != starts.device:
            # int32: every tokenizer's ids fit, at half the memory of int64.
            tokens = torch.from_numpy(self.data[split].astype(np.int32)).to(starts.device)
            self._device_tokens[split] = tokens
        index = starts[:, None] + torch.arange(self.block_size + 1, device=starts.device)  # (B, T + 1)
        windows = tokens[index].long()  # (B, T + 1)
        return windows[:, :-1], windows[:, 1:]  # x, y: (B, T) each

    def teardown(self, stage: str) -> None:
        self._device_tokens.clear()
