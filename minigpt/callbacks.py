"""Training callbacks: a plain progress line for non-interactive logs, a checkpoint on Ctrl-C, attention maps."""

from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from minigpt.errors import UserError
from minigpt.explorer import describe_model, token_texts, write_explorer
from minigpt.generate import encode_prompt
from minigpt.plots import (
    MAX_DRAWN_TOKENS,
    crop_to_block,
    layer_head_summaries,
    probe_attention,
    save_layer_maps,
    token_labels,
)
from minigpt.tokenizer import get_tokenizer


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
        # At step 0 there is nothing to keep: a fresh run interrupted then leaves no directory.
        if isinstance(exception, KeyboardInterrupt) and trainer.state.fn == "fit" and trainer.global_step > 0:
            trainer.save_checkpoint(self.path)
            print(f"interrupted at step {trainer.global_step}: saved {self.path}", flush=True)


class AttentionMaps(L.Callback):
    """Attention of the model on a fixed probe text, every few validation runs and at the end of training.

    Each time, the model reads the probe with its attention weights returned (in eval mode, without gradients;
    training itself keeps the fused attention kernel) and the callback writes:

    - one PNG per layer, `<run dir>/attention/step-<step>/layer-<L>.png`: a grid of its heads' heatmaps;
    - the explorer page beside them, `explorer.html`: every head, interactive (`minigpt.explorer`);
    - the same images to W&B under `attention_maps/layer<L>`, and the page under `attention_explorer`, when the
      logger is a `WandbLogger`;
    - per head, `attention/layer<L>.head<H>/{entropy,prev_token,first_token}` to the logger: the mean entropy of
      its attention (nats), and the shares of attention on the previous and on the first token.
    """

    def __init__(self, every_n_validations: int = 10, at_train_end: bool = True, probe: str | None = None):
        """
        Args:
            every_n_validations: Draw at every n-th validation run; 0 draws only at the end of training.
            at_train_end: Draw once more when training ends (unless the last validation run just drew).
            probe: Text the model reads; None takes the first 64 tokens of the validation split, so the probe
                is fixed for a dataset. A probe longer than the model's block_size is cropped to it.
        """
        if every_n_validations < 0:
            raise UserError(
                f"attention_maps.every_n_validations={every_n_validations} must be >= 0 (0: only at the end)"
            )
        self.every_n_validations = every_n_validations
        self.at_train_end = at_train_end
        self.probe = probe
        self.ids: list[int] = []  # the probe's tokens, set up when fitting starts
        self.labels: list[str] = []
        self.tokens: list[dict] = []  # the probe's tokens as the explorer shows them
        self.note = ""
        self._validations = 0
        self._drawn_step = -1

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        data = trainer.datamodule
        enc = get_tokenizer(pl_module.hparams.tokenizer)  # the model's, linked from the data's
        if self.probe is None:
            if data is None or "val" not in getattr(data, "data", {}):
                raise ValueError("attention_maps.probe is not set and there is no validation split to take it from")
            ids = data.data["val"][:MAX_DRAWN_TOKENS].tolist()  # the datamodule's setup has mapped the split
        else:
            try:
                ids = encode_prompt(enc, self.probe)
            except ValueError as e:  # name the setting: the message itself speaks of a prompt
                raise UserError(f"attention_maps.probe: {e}") from None
        ids, cropped = crop_to_block(ids, pl_module.model.config.block_size)
        if cropped:  # said once here, and in every figure's title
            self.note = f"probe {cropped}"
            if trainer.is_global_zero:
                print(f"attention maps: {self.note}", flush=True)
        if len(ids) < 2:
            raise UserError(f"attention_maps.probe={self.probe!r} is {len(ids)} token: give at least 2 tokens")
        self.ids, self.labels, self.tokens = ids, token_labels(enc, ids), token_texts(enc, ids)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self._validations += 1
        if self.every_n_validations and self._validations % self.every_n_validations == 0:
            self.draw(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_train_end and trainer.global_step != self._drawn_step:
            self.draw(trainer, pl_module)

    # Saved in checkpoints, so a resumed run draws at the same validation runs as an uninterrupted one.
    def state_dict(self) -> dict:
        return {"validations": self._validations}

    def load_state_dict(self, state_dict: dict) -> None:
        self._validations = state_dict["validations"]

    @rank_zero_only
    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[Path]:
        """Run the probe; save and log its maps and explorer page, and log its per-head scalars. The PNGs written."""
        step = trainer.global_step
        weights = probe_attention(pl_module.model, self.ids)
        out_dir = Path(trainer.default_root_dir) / "attention" / f"step-{step:06d}"
        note = ", ".join(filter(None, [f"step {step}", self.note]))
        paths = save_layer_maps(weights, self.labels, lambda layer: out_dir / f"layer-{layer}.png", note)
        scores = layer_head_summaries(weights)  # name -> (n_layer, n_head)
        model, source = describe_model(pl_module.model.config), trainer.default_root_dir
        header = {"model": model, "step": step, "source": source, "probe": self.note}
        explorer = write_explorer(out_dir / "explorer.html", weights, self.tokens, scores, header)
        scalars = {
            f"attention/layer{layer}.head{head}/{name}": value
            for name, values in scores.items()
            for layer, row in enumerate(values.tolist())
            for head, value in enumerate(row)
        }
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)
            if isinstance(logger, WandbLogger):
                import wandb  # here, not at the top: training with another logger runs without wandb installed

                for layer, path in enumerate(paths):
                    logger.log_image(f"attention_maps/layer{layer}", [str(path)], step=step, caption=[note])
                # inject=False: W&B would otherwise add a stylesheet link, a fetch the page must not make.
                logger.log_metrics({"attention_explorer": wandb.Html(str(explorer), inject=False)}, step=step)
        self._drawn_step = step
        return paths
