"""Checkpoint files written so that a run killed at any moment leaves the previous checkpoint whole."""

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from minigpt.files import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's `TorchCheckpointIO`, but each checkpoint is written to `<name>.tmp` beside it, then renamed.

    Lightning's own writer stages the file in the system's temporary folder and moves it into place. When that
    folder is on another filesystem (a tmpfs /tmp), the move is a copy onto the checkpoint, and a run killed during
    the copy leaves a half-written checkpoint where the previous good one was. A rename within one folder is atomic:
    a reader finds the old file or the new one, never a part of one. A save killed midway leaves only a stale
    `.tmp`, which nothing reads and the next save of that name overwrites.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options; got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with ctrl_c_after_the_write(), atomic_write(path, "wb", fsync=True) as f:
            torch.save(checkpoint, f)


@contextmanager
def ctrl_c_after_the_write() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) that arrives during a checkpoint write and deliver it once the write is done.

    torch.save interrupted midway does not raise KeyboardInterrupt but a RuntimeError from its zip writer, which
    Lightning then treats as a crash: no save-on-interrupt, a traceback. Held back, the interrupt reaches Lightning
    as Ctrl-C right after this complete checkpoint.
    """
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield
        return
    held = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held and callable(previous):  # e.g. Python's default handler, which raises KeyboardInterrupt
            previous(signal.SIGINT, None)
