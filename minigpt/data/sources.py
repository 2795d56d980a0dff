"""Where text comes from: the embedded Python Language Reference, random strings shown twice, local text files and
URLs, and hub datasets.

Each source becomes a `datasets` dataset of rows of text; local text files are read in pieces of at most
TEXT_CHUNK_CHARS characters, so a file of any size never sits in memory whole. `datasets` (and its pyarrow) are
imported only when a source is read: training from a prepared cache needs neither.
"""

import collections
import functools
import glob
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from minigpt import net
from minigpt.errors import UserError, one_line

if TYPE_CHECKING:
    import datasets

# Local text files are read and tokenized in pieces of at most this many characters, so a file of any size (one
# line of 100 MB included) never sits in memory whole. TEXT_BATCH_ROWS pieces are tokenized at a time: their token
# lists take ~8 bytes per character (bytes tokenizer), so that is what bounds the memory used.
TEXT_CHUNK_CHARS = 1 << 20
TEXT_BATCH_ROWS = 2
# How datasets (5.x) begins the ValueError it raises for a config name or split a dataset does not have: it has no
# exception type of its own for them.
NAME_OR_SPLIT_REFUSALS = ("BuilderConfig ", "Config name is missing", "Unknown split ", "Bad split: ")


def embedded_corpus() -> list[str]:
    """The Python Language Reference that ships inside every CPython, one document per topic."""
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


# The characters of the `repeats` source: the 94 printable ASCII characters but the space (bytes 33 to 126), one
# token each with the `bytes` tokenizer.
PRINTABLE = "".join(map(chr, range(33, 127)))
REPEATS_SEED = 1337  # fixed: the same documents on every run and machine, as the cache's fingerprint assumes
MIN_REPEAT = 3  # shown twice, a shorter string has no token that only induction predicts


def repeated_strings(documents: int, max_length: int, seed: int = REPEATS_SEED) -> list[str]:
    """`documents` random strings of PRINTABLE characters, each written twice in a row ("xQ!xQ!"), their lengths
    drawn uniformly in [MIN_REPEAT, max_length].

    In the second copy every character but the first is the one that followed the same character in the first:
    predictable by induction only, since the length varies and no fixed distance back finds it.
    """
    rng = np.random.default_rng(seed)
    lengths = rng.integers(MIN_REPEAT, max_length + 1, documents)  # (documents,)
    alphabet = np.array(list(PRINTABLE))
    return ["".join(alphabet[rng.integers(0, len(PRINTABLE), n)]) * 2 for n in lengths]


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


@dataclass(frozen=True)
class Source:
    """A text source and the settings that say how to read it (the first `--data.*` settings: `DataConfig`)."""

    source: Literal["embedded", "repeats", "text", "hub"] = "embedded"
    """Where the text comes from: `embedded` (the Python Language Reference that ships with CPython, works
    offline), `repeats` (random strings of printable ASCII, each shown twice: generated, offline; for watching
    induction heads form), `text` (local .txt files or a URL, each file one document) or `hub` (a HuggingFace hub
    dataset, or a local folder laid out like one)."""
    path: str | None = None
    """For `text`, a .txt file, a folder of them, a glob or a URL; for `hub`, the dataset id or folder."""
    name: str | None = None
    """The hub dataset's configuration (subset), e.g. `sample-10BT`."""
    split: str = "train"
    """The hub split to read; validation documents are taken out of it."""
    text_column: str = "text"
    """The hub column that holds the text."""
    streaming: bool = False
    """Read the hub dataset as a stream (with `token_budget`, for sets too big to download)."""
    repeat_documents: int = 40000
    """For `repeats`: how many random strings shown twice to generate (one document each)."""
    repeat_max_length: int = 32
    """For `repeats`: the longest random string; each one's length is drawn uniformly from 3 to this."""

    @property
    def is_url(self) -> bool:
        return "://" in (self.path or "")

    @property
    def column(self) -> str:
        """The column of the rows `read` returns that holds the text."""
        return self.text_column if self.source == "hub" else "text"

    def default_name(self) -> str:
        """A cache folder name for this source."""
        if self.source == "embedded":
            return "python-reference"
        if self.source == "repeats":
            return "repeats"
        # The last two parts of the path (absolute when it exists locally, without a file extension) and the
        # subset: readable, and rarely the same for two sources.
        path = os.path.abspath(self.path) if os.path.exists(self.path) else self.path
        stem = os.path.splitext(path.rstrip("/\\"))[0] if self.source == "text" else path
        parts = re.split(r"[/\\]+", stem)[-2:] + [self.name or ""]
        return re.sub(r"[^\w.]+", "-", "-".join(parts)).strip("-.") or "dataset"

    def identity(self) -> dict:
        """What identifies the source's content without reading it, for the cache's fingerprint."""
        if self.source == "embedded":  # changes with the Python version
            return {"corpus": hashlib.sha256("\0".join(embedded_corpus()).encode()).hexdigest()}
        if self.source == "repeats":  # generated from a fixed seed, by settings the cache's own settings() name
            return {"repeats": [REPEATS_SEED, MIN_REPEAT]}
        if self.source == "text" and not self.is_url:  # local files: their names, sizes and times
            stats = [(f, os.stat(f)) for f in map(os.path.abspath, self.text_files())]
            return {"files": [(f, st.st_size, st.st_mtime_ns) for f, st in stats]}
        if self.source == "hub":  # the rows of another revision are another cache, not more rows of this one
            return {"revision": self.revision()}
        return {}

    def revision(self) -> str | None:
        """The hub dataset's revision as `datasets` resolves it when it loads the dataset: the commit sha of a hub id,
        a hash of the data files (names, times) of a local folder; None when the hub cannot be reached or the dataset
        cannot be found, which reading it then reports."""
        import datasets

        try:
            return datasets.load_dataset_builder(self.path, self.name).hash
        except (ConnectionError, FileNotFoundError, ValueError):
            return None

    def text_files(self) -> list[str]:
        """The local .txt files behind `path` (a file, a folder searched recursively, or a glob)."""
        pattern = os.path.join(self.path, "**", "*.txt") if os.path.isdir(self.path) else self.path
        files = sorted(glob.glob(pattern, recursive=True))
        if not files:
            raise UserError(
                f"no text file at path={self.path!r}; give a .txt file, a folder of them or a glob like 'books/*.txt'"
            )
        return files

    def fetch_text_files(self, download_dir: str) -> list[str]:
        """The local text files to read: a URL downloaded first, once, into `download_dir`.

        A URL downloaded once is read from there ever after, with no network and for any tokenizer (`datasets`'
        download manager asks the server for the ETag before it looks in its cache, so it cannot work offline). To
        fetch a URL's newer content, delete its file there. With HF_HUB_OFFLINE=1, as in `datasets`, nothing is
        downloaded: only what is already there is read.
        """
        from huggingface_hub import constants

        if not self.is_url:
            return self.text_files()  # a missing local file fails here, plainly
        path = os.path.join(download_dir, net.download_name(self.path))
        if not os.path.exists(path):
            if constants.HF_HUB_OFFLINE:
                raise self.offline_error(f"HF_HUB_OFFLINE is set and it is not in {download_dir}")
            os.makedirs(download_dir, exist_ok=True)
            net.download(self.path, path)  # a network failure here is the token cache's to report
            print(f"downloaded {self.path} to {path}")
        return [path]

    def read_text(self, files: list[str], val: np.ndarray, val_fraction: float) -> "datasets.Dataset":
        """Text files as rows of pieces of at most TEXT_CHUNK_CHARS characters; file i validates when val[i]."""
        import datasets
        import pyarrow.compute as pc

        stats = [(f, os.stat(f)) for f in map(os.path.abspath, files)]
        features = {"text": "string", "val": "bool", "doc_end": "bool", "bad_lines": "int64"}
        ds = datasets.Dataset.from_generator(
            _text_rows,
            features=datasets.Features({name: datasets.Value(kind) for name, kind in features.items()}),
            gen_kwargs={  # tuples: `datasets` would shard lists, one generator call per file
                "files": tuple((f, st.st_size, st.st_mtime_ns) for f, st in stats),
                "val": tuple(val.tolist()),
                "val_fraction": val_fraction,
                "chunk_chars": TEXT_CHUNK_CHARS,
            },
            writer_batch_size=TEXT_BATCH_ROWS,
        )
        # Read with errors="replace": every U+FFFD marks bytes that were not UTF-8.
        if bad := pc.sum(ds.data.column("bad_lines")).as_py():
            print(f"{self.path}: {bad} lines held bytes that are not UTF-8, replaced by U+FFFD")
        return ds

    def read(self, revision: str | None = None) -> "datasets.Dataset | datasets.IterableDataset":
        """The embedded corpus or the hub dataset, one row per document; a hub id at the commit `revision` (what
        `revision()` resolved, so the rows are those of the revision a cache records)."""
        import datasets

        if self.source == "embedded":
            return datasets.Dataset.from_dict({"text": embedded_corpus()})
        if self.source == "repeats":
            return datasets.Dataset.from_dict({"text": repeated_strings(self.repeat_documents, self.repeat_max_length)})
        pin = None if os.path.isdir(self.path) else revision  # a local folder's revision is a hash, not a commit
        try:
            ds = datasets.load_dataset(self.path, self.name, split=self.split, streaming=self.streaming, revision=pin)
        except ConnectionError as e:  # datasets' OfflineModeIsEnabled included
            raise self.offline_error(e) from None
        except FileNotFoundError as e:
            raise UserError(f"no dataset {self.path!r} on the hub or on disk ({one_line(e, limit=200)})") from None
        except ValueError as e:
            # Only datasets refusing the name or split it was given; a corrupt file (pyarrow's ArrowInvalid), a
            # malformed repo id (HFValidationError) and the like are ValueErrors too, and keep their traceback.
            if type(e) is not ValueError or not str(e).startswith(NAME_OR_SPLIT_REFUSALS):
                raise
            reason = one_line(e, limit=200)
            raise UserError(
                f"dataset {self.path!r} has no name={self.name!r} or no split={self.split!r} ({reason}); "
                "set data.name and data.split to ones it has"
            ) from None
        # A stream may not know its columns before the first row; then a wrong column fails on that row.
        if ds.column_names is not None and self.text_column not in ds.column_names:
            raise UserError(
                f"text_column={self.text_column!r} is not a column of {self.path!r} (columns: "
                f"{', '.join(ds.column_names)}); set text_column to the one that holds the text"
            )
        return ds

    def offline_error(self, e: Exception | str) -> UserError:
        return UserError(
            f"cannot download {self.path!r} ({one_line(e, limit=200)}); with no network or HF_HUB_OFFLINE=1 only "
            f"cached data loads: run once online to cache it, or use local files (source: text, path: your.txt) "
            f"or the embedded default (source: embedded)"
        )
