"""What a training run prints: the data line, the model summary, one line per validation, then the report.

Lightning's own lines that say nothing about this run (device availability on a machine without GPUs, tips, the seed,
why `fit` stopped) are dropped here; its warnings stay.
"""

import logging
import os
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelSummary, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.utilities.model_summary import get_human_readable_count, summarize

from minigpt.generate import encode_prompt, generate

# Lightning's info lines (its rank-zero logger) that a run does not print.
_DROPPED_INFO = (
    "💡 Tip", "Seed set to", "GPU available:", "TPU available:", "HPU available:", "`Trainer.fit` stopped",
    "Trainer already configured with model summary callbacks",  # ModelSummaryTable replaces Lightning's
)  # fmt: skip


def quiet_lightning() -> None:
    """Drop Lightning's advertising, its device report and its warnings about its own internals from the output."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: not str(record.msg).lstrip().startswith(_DROPPED_INFO)
    )
    # seed_everything logs through its own logger ("[rank: R] Seed set to N" under DDP).
    logging.getLogger("lightning.fabric.utilities.seed").addFilter(lambda record: "Seed set to" not in str(record.msg))
    logging.getLogger("lightning.pytorch.accelerators.cuda").addFilter(
        lambda record: not str(record.msg).startswith("LOCAL_RANK:")
    )
    # main() always hands LightningCLI the argument list (it adds the default --config).
    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # Token-cache preparation: `datasets` draws its progress bars on a terminal only; a log gets the one line.
    if not sys.stderr.isatty() and "HF_DATASETS_DISABLE_PROGRESS_BARS" not in os.environ:
        os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"  # read when `datasets` is imported
        if sys.modules.get("datasets") is not None:  # imported already (main called in-process)
            sys.modules["datasets"].disable_progress_bars()


class ModelSummaryTable(ModelSummary):
    """Lightning's model summary without its Mode column (all "train") and FLOPs column (zeros without an example
    input): each top-level module and its parameters, the totals, and the training FLOPs per token that MFU counts."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        summary = summarize(pl_module, max_depth=1)
        modules = zip(summary.layer_names, summary.layer_types, summary.param_nums, strict=True)
        rows = [(str(i), name, kind, get_human_readable_count(n)) for i, (name, kind, n) in enumerate(modules)]
        header = ("", "Name", "Type", "Params")
        widths = [max(len(row[col]) for row in [header, *rows]) for col in range(len(header))]
        lines = [
            " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]
        ]
        rule = "-" * max(len(line) for line in lines)
        params = get_human_readable_count(summary.total_parameters)
        frozen = summary.total_parameters - summary.trainable_parameters
        totals = [
            (params, "Total params" + f" ({frozen:,} frozen)" * bool(frozen)),
            (f"{summary.model_size:,.3f}", "Total estimated model params size (MB)"),
        ]
        if hasattr(pl_module, "flops_per_token"):
            totals.append((get_human_readable_count(int(pl_module.flops_per_token)), "Training FLOPs per token"))
        print("\n".join([lines[0], rule, *lines[1:], rule, *(f"{value:<10}{label}" for value, label in totals)]))


class StepProgressBar(RichProgressBar):
    """Rich's progress bar, on a terminal, showing the training loss, the last validation loss and tokens per second.

    The values are read as numbers once per logging interval (and at validation), where the logger reads them
    anyway: reading a GPU tensor's value waits for the GPU, which the bar's refresh at every batch must not do.
    """

    SHOWN = {
        "train/loss": ("loss", "{:.4f}"),
        "val/loss": ("val loss", "{:.4f}"),
        "train/tokens_per_sec": ("tok/s", "{:,.0f}"),
    }

    def __init__(self):
        super().__init__()
        self._shown: dict[str, str] = {}
        self._shown_step = -1

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, str]:
        step = trainer.global_step
        if not trainer.training or (step != self._shown_step and step % trainer.log_every_n_steps == 0):
            metrics = trainer.callback_metrics
            shown = {
                label: form.format(float(metrics[key])) for key, (label, form) in self.SHOWN.items() if key in metrics
            }
            self._shown, self._shown_step = shown, step
        return self._shown


def report(run_dir: Path, trainer: L.Trainer, module: L.LightningModule, encoding, sample_tokens: int, prompt: str):
    """Where the run's files are, and a sample from the model just trained."""
    print(f"\nrun directory: {run_dir}")
    print(f"  config:      {run_dir / 'config.yaml'}")
    for path in sorted((run_dir / "checkpoints").glob("*.ckpt")):
        print(f"  checkpoint:  {path}")
    if isinstance(trainer.logger, WandbLogger):
        run = trainer.logger.experiment
        print(f"  W&B run:     {run_dir / 'wandb' if run.offline else run.url}")
    elif isinstance(trainer.logger, CSVLogger):
        print(f"  metrics:     {Path(trainer.logger.log_dir) / 'metrics.csv'}")
    if sample_tokens <= 0:
        return
    # Where training ran, at its precision: when `fit` returns, Lightning has moved the module to the CPU.
    device = trainer.strategy.root_device
    model = module.model.to(device).eval()
    idx = torch.tensor([encode_prompt(encoding, prompt)], device=device)  # (1, T)
    # Eager even when training compiled the model: a few hundred tokens cost less than compiling decoding's graphs.
    with trainer.precision_plugin.forward_context(), torch.compiler.set_stance("force_eager"):
        tokens = generate(model, idx, sample_tokens, temperature=0.8, top_k=200, seed=0)
    print(f"\nsample ({sample_tokens} tokens, temperature 0.8, on {device.type}):")
    print(encoding.decode(tokens[0, idx.size(1) :].tolist()))
