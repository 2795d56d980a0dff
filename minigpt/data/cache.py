"""The token caches: a source tokenized once into `<data_dir>/<dataset>/<tokenizer>/shards-<fingerprint>/`, reused
while it matches.

Each cache is one folder named by a fingerprint of the source and settings, so caches of other settings (another
token_budget, val_fraction) live side by side and never touch each other's files. Its shards hold the token ids
(uint16, or uint32 for vocabularies over 65,536), each document followed by `<|endoftext|>`; its `meta.json` holds
the settings, the token counts and the fingerprint. Files are written to a temporary name and renamed, so an
interrupted preparation never leaves a file that a later run trusts. Which documents validate is decided by
`split`; the tokens come from `encode`.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from minigpt import net
from minigpt.data.encode import all_cores, encoded_batches
from minigpt.data.sources import TEXT_BATCH_ROWS, Source
from minigpt.data.split import choose_val, flag_val, stream_val
from minigpt.data.windows import TokenStream
from minigpt.errors import UserError
from minigpt.files import atomic_write
from minigpt.tokenizer import get_tokenizer

if TYPE_CHECKING:
    import datasets

# Part of the fingerprint: bump it when what a shard holds changes. Still 2 since meta.json moved into the shard
# folder: the shards are the same bytes, so a whole folder of before is taken over without tokenizing again.
CACHE_VERSION = 2
SPLITS = ("train", "val")
DOC_BATCH_ROWS = 1000  # documents tokenized as one batch (local text: TEXT_BATCH_ROWS pieces)
# Batches of rows per shard: with FineWeb-like documents (~1,000 tokens) about 64M tokens, 128 MB of uint16.
SHARD_BATCHES = 64
# What a cache folder held before the caches were kept in folders of their own, beside them.
LEGACY_FILES = ("meta.json", "train.bin", "val.bin")


def remove(path: str) -> None:
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def disk_bytes(path: str) -> int:
    """The bytes of the files under `path` (or of the file `path`)."""
    if not os.path.isdir(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


class TokenCache:
    """The token shards of one source, tokenizer and split setting, in `cache_dir`.

    A shard holds the tokens of SHARD_BATCHES batches of source rows, as `train-NNNNN.bin` and `val-NNNNN.bin` in
    the folder `shards-<fingerprint>`; each is written to a temporary name and renamed, val first, so a train shard
    on disk is a whole shard. A preparation that stops is continued by the next one after its last whole shard.
    `meta.json`, written last in the same folder, lists the shards and their token counts: only a cache it vouches
    for is used. A build writes and removes only its own folder, and, once it is whole, the folders it supersedes
    (`superseded`); `clean` removes the others when asked.
    """

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
        self.revision = None  # the hub dataset's, as `fingerprint` resolved it

    def settings(self) -> dict:
        """The settings that decide what a cache holds, as its meta.json records them. A local path is made absolute:
        the same files named from another folder, or relatively and absolutely, are the same source."""
        src = self.source
        path = os.path.abspath(src.path) if src.path and not src.is_url and os.path.exists(src.path) else src.path
        settings = {"source": src.source, "path": path, "name": src.name, "split": src.split}
        settings |= {"text_column": src.text_column, "streaming": src.streaming}
        if src.source == "repeats":  # what it generates; other sources keep the keys (and fingerprints) they had
            settings |= {"repeat_documents": src.repeat_documents, "repeat_max_length": src.repeat_max_length}
        return settings | {
            "token_budget": self.token_budget,
            "val_fraction": self.val_fraction,
            "tokenizer": self.tokenizer,
        }

    def fingerprint(self) -> str:
        """A hash of the settings and of what identifies the source's content without loading it."""
        identity = self.source.identity()
        if "revision" in identity and identity["revision"] is None:
            # Offline: the revision a whole cache of these settings was prepared from, so it still trains offline.
            identity["revision"] = self.prepared_revision()
        self.revision = identity.get("revision")
        settings = self.settings() | {"version": CACHE_VERSION} | identity
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()

    @property
    def meta_path(self) -> str:
        """The meta.json of the cache of the current source and settings."""
        return os.path.join(self.shard_dir(self.fingerprint()), "meta.json")

    def shard_dir(self, fingerprint: str) -> str:
        return os.path.join(self.cache_dir, f"shards-{fingerprint[:16]}")

    def shards(self, split: str, meta: dict | None = None) -> list[str]:
        """The paths of a split's shards, in order, as the cache's meta.json lists them."""
        meta = meta or self.read_meta()
        return self._paths(self.shard_dir(meta["fingerprint"]), split, meta["shards"])

    def tokens(self, split: str) -> np.ndarray:
        """All the tokens of a prepared split, in order, in memory (for tests and small sets)."""
        meta = self.read_meta()
        return TokenStream(self.shards(split, meta), meta["dtype"])[:]

    @staticmethod
    def _paths(folder: str, split: str, counts: dict[str, list[int]]) -> list[str]:
        return [os.path.join(folder, f"{split}-{k:05d}.bin") for k in range(len(counts[split]))]

    def read_meta(self, fingerprint: str | None = None) -> dict | None:
        """The meta.json of the cache of `fingerprint` (by default the current source and settings'); None when there
        is none or it is not one this code wrote (damaged, edited)."""
        return self._read_meta(os.path.join(self.shard_dir(fingerprint or self.fingerprint()), "meta.json"))

    @staticmethod
    def _read_meta(path: str) -> dict | None:
        try:
            with open(path, encoding="utf-8") as f:
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

    def others(self, fingerprint: str) -> list[str]:
        """The folders of `cache_dir` that hold other caches (whole or half-built), and the files of older layouts."""
        if not os.path.isdir(self.cache_dir):
            return []
        own = os.path.basename(self.shard_dir(fingerprint))
        names = sorted(os.listdir(self.cache_dir))
        kept = [n for n in names if n != own and (n.startswith("shards-") or n in LEGACY_FILES)]
        return [os.path.join(self.cache_dir, n) for n in kept]

    def problem(self, fingerprint: str) -> str | None:
        """Why the cache cannot be reused, or None when it can."""
        meta = self.read_meta(fingerprint)
        if meta is None:
            if os.path.exists(os.path.join(self.shard_dir(fingerprint), "meta.json")):
                return "meta.json is damaged"
            legacy = self._read_meta(os.path.join(self.cache_dir, "meta.json"))
            if legacy is not None and "shards" not in legacy:
                return "a single-file cache of an older version: rebuilt as shards"
            if legacy is not None and legacy["fingerprint"] == fingerprint:
                return "a cache whose meta.json lay outside its shards folder: taken over"
            if any(self._read_meta(os.path.join(p, "meta.json")) for p in self.others(fingerprint) if os.path.isdir(p)):
                return "the source or the settings changed"
            return "no cache yet"
        if meta["fingerprint"] != fingerprint:
            return "the source or the settings changed"
        for split in SPLITS:
            shards = meta.get("shards")  # absent or edited in a meta.json this code did not write
            counts = shards.get(split) if isinstance(shards, dict) else None
            if not (isinstance(counts, list) and sum(counts) == meta["tokens"][split]):
                return "meta.json is damaged"
            for path, count in zip(self.shards(split, meta), counts, strict=True):
                size = os.path.getsize(path) if os.path.exists(path) else None
                if size != count * np.dtype(meta["dtype"]).itemsize:
                    return f"{os.path.basename(path)} is missing or truncated"
        return None

    def build(self) -> None:
        """Tokenize the source into the cache, unless the cache on disk already matches; continue a stopped one.

        A network failure (mid-stream, mid-download) is a UserError: the shards written whole stay, and running the
        same command again continues after them.
        """
        try:
            self._build()
        except net.network_errors() as e:
            if net.offline_mode(e):
                raise self.source.offline_error(e) from None
            whole = len(glob.glob(os.path.join(self.shard_dir(self.fingerprint()), "train-*.bin")))
            raise UserError(
                f"download interrupted after {whole} whole shard{'' if whole == 1 else 's'} ({net.describe(e)}): "
                "run the same command again to continue"
            ) from None

    def _build(self) -> None:
        fingerprint = self.fingerprint()
        problem = self.problem(fingerprint)
        if problem is None:
            return
        enc = get_tokenizer(self.tokenizer)
        dtype = "uint16" if enc.n_vocab <= 2**16 else "uint32"
        folder = self.shard_dir(fingerprint)
        if (meta := self.read_meta(fingerprint)) is not None and meta.get("fingerprint") == fingerprint:
            shutil.rmtree(folder, ignore_errors=True)  # the meta of these very settings did not vouch for them
        ds = self._load()  # a source that cannot be read fails here, before anything is written
        os.makedirs(folder, exist_ok=True)
        try:
            counts = self._write_shards(ds, folder, dtype)
            paths = [p for split in SPLITS for p in self._paths(folder, split, counts) if os.path.getsize(p)]
            if not any(np.any(np.memmap(p, dtype, mode="r") != enc.eot_token) for p in paths):  # only end-of-texts
                raise UserError(
                    f"source {self.source.path or self.source.source!r} holds no text; give a non-empty source"
                )
        except UserError:
            shutil.rmtree(folder)  # nothing worth continuing; the other caches stay as they were
            raise
        meta = self.settings() | {"vocab_size": enc.n_vocab, "dtype": dtype}
        meta |= {
            "tokens": {split: sum(counts[split]) for split in SPLITS},
            "shards": counts,
            "revision": self.revision,
            "fingerprint": fingerprint,
        }
        with atomic_write(os.path.join(folder, "meta.json"), "w") as f:  # its rename makes the folder a cache
            json.dump(meta, f, indent=2)
        for path in self.superseded(fingerprint):
            remove(path)
        tokens = meta["tokens"]
        print(f"prepared {self.cache_dir}: {tokens['train']:,} train and {tokens['val']:,} val tokens ({problem})")

    @property
    def download_dir(self) -> str:
        """Where a URL source's download is kept: `<data_dir>/<dataset>/downloads/`, beside each tokenizer's cache."""
        return os.path.join(os.path.dirname(self.cache_dir), "downloads")

    def superseded(self, fingerprint: str) -> list[str]:
        """What the whole cache of `fingerprint` makes useless: the whole caches of the same settings (the
        same source, read the same way, with the same token_budget, val_fraction and tokenizer) but another
        fingerprint, that is of an older content of the source (local files since edited, another Python's embedded
        corpus) or an older CACHE_VERSION, which nothing would read again; and the files of the single-file layout.
        A half-built folder is kept, its settings unknown until its meta.json is written: its build may continue."""
        found, settings = [], self.settings()
        for path in self.others(fingerprint):
            if not os.path.isdir(path):  # a file of an older layout
                # The meta.json of the layout before a meta per cache vouches for one shards folder; it stays until
                # that cache is prepared again, which then continues the folder (whole: just writes its meta.json).
                meta = self._read_meta(path) if path.endswith(".json") else None
                if meta is None or "shards" not in meta or meta["fingerprint"] == fingerprint:
                    found.append(path)
                continue
            meta = self._read_meta(os.path.join(path, "meta.json"))
            if meta is not None and all(meta.get(key) == value for key, value in settings.items()):
                found.append(path)
        return found

    def clean(self) -> None:
        """Remove every other cache of `cache_dir` (whole or half-built) and the files of older layouts, saying what
        went and how much disk that freed."""
        freed = 0
        for path in self.others(self.fingerprint()):
            size = disk_bytes(path)
            remove(path)
            freed += size
            print(f"removed {path} ({size:,} bytes)")
        print(f"freed {freed:,} bytes in {self.cache_dir}")

    def prepared_revision(self) -> str | None:
        """The revision recorded by the newest whole cache of these settings, if any."""
        settings, newest = self.settings(), (0, None)
        for path in self.others(""):
            meta = self._read_meta(os.path.join(path, "meta.json")) if os.path.isdir(path) else None
            if meta is not None and meta.get("revision") and all(meta.get(k) == v for k, v in settings.items()):
                newest = max(newest, (os.path.getmtime(os.path.join(path, "meta.json")), meta["revision"]))
        return newest[1]

    def _load(self) -> datasets.Dataset | datasets.IterableDataset:
        """The source's rows with a boolean `val` column (and `doc_end` for text read in pieces); a stream's rows
        without one, flagged as they are read."""
        import datasets

        if self.source.source == "text":
            files = self.source.fetch_text_files(self.download_dir)
            return self.source.read_text(files, choose_val(len(files), self.val_fraction), self.val_fraction)
        ds = self.source.read(self.revision)
        return ds if isinstance(ds, datasets.IterableDataset) else flag_val(ds, self.source.column, self.val_fraction)

    def _write_shards(
        self, ds: datasets.Dataset | datasets.IterableDataset, folder: str, dtype: str
    ) -> dict[str, list[int]]:
        """Write the shards not already whole in `folder`; each split's token count per shard."""
        column = self.source.column
        batch_rows = TEXT_BATCH_ROWS if self.source.source == "text" else DOC_BATCH_ROWS
        counts, itemsize = {split: [] for split in SPLITS}, np.dtype(dtype).itemsize

        def path(split: str, k: int) -> str:
            return os.path.join(folder, f"{split}-{k:05d}.bin")

        while os.path.exists(path("train", len(counts["train"]))):  # whole shards of a preparation that stopped
            for split in SPLITS:
                counts[split].append(os.path.getsize(path(split, len(counts[split]))) // itemsize)
        if os.path.exists(os.path.join(folder, "complete")):  # only meta.json was left to write
            return counts

        import datasets

        streamed = isinstance(ds, datasets.IterableDataset)
        if streamed and counts["train"] and not os.path.exists(_state_path(folder, len(counts["train"]) - 1)):
            # Whole shards that say nothing of where the stream stood after them: the stream starts over.
            shutil.rmtree(folder)
            os.makedirs(folder)
            counts = {split: [] for split in SPLITS}
        done_batches = len(counts["train"]) * SHARD_BATCHES
        if streamed:
            resume = _read_state(folder, len(counts["train"]) - 1) if counts["train"] else None
            tables = _stream_tables(ds, batch_rows, self.val_fraction, resume)
        else:
            tables = _dataset_tables(ds, batch_rows, done_batches)
        handed_out = {}  # the stream's state after each batch handed to the tokenizer, until that batch is written

        def batches() -> Iterator[tuple]:
            for b, (table, val, state) in enumerate(tables, start=done_batches):
                handed_out[b] = state
                ends = (  # a hub dataset's own `doc_end` column is not ours
                    table["doc_end"].to_numpy(zero_copy_only=False)
                    if self.source.source == "text"
                    else np.ones(len(table), bool)
                )
                yield table[column].to_pylist(), ends, val

        total, shard, state = sum(map(sum, counts.values())), None, None
        shard_files = contextlib.ExitStack()  # the open shard's files, each renamed into place when it closes
        tokenized = encoded_batches(batches(), self.num_proc or all_cores(), self.tokenizer, dtype)
        try:
            for b, (val, ends, ids, lengths) in enumerate(tokenized, start=done_batches):
                if b // SHARD_BATCHES != shard:
                    if state is not None:  # saved before the shard is renamed into place: a whole shard has one
                        _write_state(folder, shard, state)
                    shard_files.close()
                    shard = b // SHARD_BATCHES
                    # Opened train then val, so closed val first: a train shard on disk means a whole shard.
                    files = {split: shard_files.enter_context(atomic_write(path(split, shard))) for split in SPLITS}
                    for split in SPLITS:
                        counts[split].append(0)
                stop = None
                if self.token_budget is not None:  # keep the rows up to the document that reaches the budget
                    stops = np.flatnonzero(ends & (total + np.cumsum(lengths) >= self.token_budget))
                    if len(stops):
                        stop = int(stops[0]) + 1
                        val, ends, ids, lengths = val[:stop], ends[:stop], ids[: lengths[:stop].sum()], lengths[:stop]
                is_val = np.repeat(val, lengths)  # (tokens,) which split each token goes to
                for split, mask in (("train", ~is_val), ("val", is_val)):
                    ids[mask].tofile(files[split])
                    counts[split][-1] += int(mask.sum())
                total += len(ids)
                state = handed_out.pop(b)
                if stop is not None:
                    break
            if state is not None:  # nothing is left to read after the last shard: the budget is spent or the stream
                _write_state(folder, shard, state | {"end": True})
            shard_files.close()
        except BaseException as e:
            # The shard being written is removed, not renamed into place: a later preparation writes it again.
            shard_files.__exit__(type(e), e, e.__traceback__)
            raise
        finally:
            tokenized.close()  # stops the pool
        open(os.path.join(folder, "complete"), "w").close()
        for k in range(len(counts["train"])):  # a complete cache resumes nothing
            with contextlib.suppress(FileNotFoundError):
                os.remove(_state_path(folder, k))
        return counts


def _dataset_tables(ds: datasets.Dataset, batch_rows: int, done_batches: int) -> Iterator[tuple]:
    """(rows, val flags, None) of each batch of a dataset with a `val` column, after the first `done_batches`."""
    for table in ds.skip(done_batches * batch_rows).with_format("arrow").iter(batch_size=batch_rows):
        yield table, table["val"].to_numpy(zero_copy_only=False), None


def _stream_tables(
    ds: datasets.IterableDataset, batch_rows: int, val_fraction: float, resume: dict | None
) -> Iterator[tuple]:
    """(rows, val flags, state) of each batch of a stream, from where the `state` of an earlier batch left it.

    The state is the stream's after the batch, taken as the batch is handed out: the tokenizing pool reads batches
    ahead of the one being written, so the stream's state when a shard closes is already past the shard's rows. It
    holds how many rows were read, for the validation flags of the rows after them. A hub dataset's stream resumes
    from the data file before the one it stood in (`datasets` opens both again and skips their rows read before), not
    from the first.
    """
    stream, rows = ds.with_format("arrow"), 0  # flagged by index: a `val` column of its own is not ours
    if resume is not None:
        if resume["end"]:
            return
        stream.load_state_dict(resume["stream"])
        rows = resume["rows"]
    for table in stream.iter(batch_size=batch_rows):
        val = stream_val(rows, len(table), val_fraction)
        rows += len(table)
        yield table, val, {"rows": rows, "stream": stream.state_dict(), "end": False}


def _state_path(folder: str, shard: int) -> str:
    return os.path.join(folder, f"stream-{shard:05d}.json")


def _write_state(folder: str, shard: int, state: dict) -> None:
    """Save where the stream stands after shard `shard`'s rows, for a preparation that stops after it."""
    with atomic_write(_state_path(folder, shard), "w") as f:
        json.dump(state, f)


def _read_state(folder: str, shard: int) -> dict:
    with open(_state_path(folder, shard), encoding="utf-8") as f:
        return json.load(f)
