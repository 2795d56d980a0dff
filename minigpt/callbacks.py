"""Training callbacks: a plain progress line for non-interactive logs, and a checkpoint on Ctrl-C."""

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only


class PrintProgress(L.Callback):
    """One line per validation (step, losses, throughput): the progress report when there is no progress bar."""

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        parts = [f"step {trainer.global_step}/{trainer.max_steps}"]
        for key, label in (("train/loss", "train loss"), ("val/loss", "val loss")):
            if key in metrics:
                parts.append(f"{label} {metrics[key].item():.4f}")
        if "train/tokens_per_sec" in metrics:
            parts.append(f"{metrics['train/tokens_per_sec'].item():,.0f} tok/s")
        print(" | ".join(parts), flush=True)


class SaveLastOnInterrupt(L.Callback):
    """Ctrl-C (SIGINT) during training writes last.ckpt before Lightning exits.

    Lightning catches KeyboardInterrupt, calls `on_exception` and exits; its checkpoint writes go through a
    temporary file and a rename, so an interrupted save never leaves a half-written last.ckpt.
    """

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt) and trainer.state.fn == "fit":
            trainer.save_checkpoint(self.path)
            print(f"interrupted at step {trainer.global_step}: saved {self.path}", flush=True)
