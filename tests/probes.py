"""Callbacks that tests load by class path into train.py subprocesses (PYTHONPATH = the repository root)."""

import builtins
import hashlib
import os
import signal
import sys
from pathlib import Path

import lightning as L


def digest(batch) -> str:
    """A short hash of a batch's inputs."""
    return hashlib.sha1(batch[0].cpu().numpy().tobytes()).hexdigest()[:16]


class RecordBatches(L.Callback):
    """Writes a hash of every training (validation) batch's inputs to batches-rank{global_rank}.txt
    (val-batches-rank{global_rank}.txt) in the working directory."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        with Path(f"batches-rank{trainer.global_rank}.txt").open("a") as f:
            f.write(digest(batch) + "\n")

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        with Path(f"val-batches-rank{trainer.global_rank}.txt").open("a") as f:
            f.write(digest(batch) + "\n")


def _kill_self() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class _KillMidWrite:
    """A file opened for writing that SIGKILLs its process once `limit` bytes are written to it."""

    def __init__(self, file, limit: int):
        self.file, self.limit, self.written = file, limit, 0

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        if self.written + len(data) >= self.limit:
            self.file.write(data[: self.limit - self.written])
            self.file.flush()
            _kill_self()
        self.written += len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


class KillAt(L.Callback):
    """SIGKILLs its own process at one point of the training step where `trainer.global_step == step`.

    `hook` says where:
      - `on_train_batch_start`: before the step's forward pass;
      - `on_before_optimizer_step`: in the middle of the step, after the backward pass;
      - `on_validation_batch_start`: during the validation that follows the step;
      - `on_save_checkpoint`: during a checkpoint save, while Lightning assembles the checkpoint;
      - `checkpoint_write`: during the save of `file`, once half as many bytes as its previous version holds
        are written to the first file opened for binary writing whose name starts with `file` (it or its
        temporary file);
      - `checkpoint_rename`: during the save of `file`, when the complete file is about to be renamed onto it.
    """

    HOOKS = (
        "on_train_batch_start",
        "on_before_optimizer_step",
        "on_validation_batch_start",
        "on_save_checkpoint",
        "checkpoint_write",
        "checkpoint_rename",
    )

    def __init__(self, hook: str, step: int, file: str = "last.ckpt"):
        if hook not in self.HOOKS:
            raise ValueError(f"hook={hook!r}: one of {', '.join(self.HOOKS)}")
        self.hook, self.step, self.file = hook, step, file

    def _now(self, trainer, hook: str) -> bool:
        return self.hook == hook and trainer.global_step == self.step and not trainer.sanity_checking

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._now(trainer, "on_train_batch_start"):
            _kill_self()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self._now(trainer, "on_before_optimizer_step"):
            _kill_self()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if self._now(trainer, "on_validation_batch_start"):
            _kill_self()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if self._now(trainer, "on_save_checkpoint"):
            _kill_self()
        elif self._now(trainer, "checkpoint_write"):
            previous = Path(trainer.checkpoint_callback.dirpath) / self.file
            limit = max(previous.stat().st_size // 2, 1) if previous.exists() else 1
            real_open = builtins.open

            def open_(path, mode="r", *args, **kwargs):
                f = real_open(path, mode, *args, **kwargs)
                if "w" in mode and "b" in mode and Path(path).name.startswith(self.file):
                    builtins.open = real_open
                    return _KillMidWrite(f, limit)
                return f

            builtins.open = open_
        elif self._now(trainer, "checkpoint_rename"):
            for name in ("replace", "rename"):
                real = getattr(os, name)

                def rename(src, dst, *args, _real=real, **kwargs):
                    if Path(dst).name == self.file:
                        _kill_self()
                    return _real(src, dst, *args, **kwargs)

                setattr(os, name, rename)
