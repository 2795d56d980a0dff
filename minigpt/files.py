"""Files written whole or not at all: under a temporary name beside the target, then renamed onto it.

A reader (a later run, a resumed run, a browser) never sees half a file: a write interrupted by an error, Ctrl-C or
a kill leaves the old file, or none, and at most a `<name>.tmp` that nothing reads and the next write replaces.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_write(
    path: str | Path, mode: str = "wb", *, encoding: str | None = None, fsync: bool = False
) -> Iterator[IO]:
    """The file `<path>.tmp`, open for the block; renamed to path when the block ends, removed if it raises.

    fsync puts the bytes on disk before the name points at them (for files a crash must not truncate).
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
