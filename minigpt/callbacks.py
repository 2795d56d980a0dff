"""Training callbacks: a plain progress line for non-interactive logs, a checkpoint on Ctrl-C, attention maps."""

from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from minigpt.errors import UserError
from minigpt.explorer import describe_model, head_labels, token_texts, write_explorer
from minigpt.generate import encode_prompt
from minigpt.inspect import (
    ABLATION,
    INDUCTION_SEQUENCES,
    MIN_LONGEST_PROBE,
    REPEATS_SEED,
    SCORE_PROBE_TOKENS,
    SCORES,
    InductionProbes,
    probe_attention,
)
from minigpt.plots import MAX_DRAWN_TOKENS, crop_to_block, layer_head_summaries, save_layer_maps, token_labels
from minigpt.tokenizer import get_tokenizer

VAL_SCAN = 1 << 22  # validation tokens looked at for the ids to draw them from: enough to meet every common one


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
      its attention (nats), and the shares of attention on the previous and on the first token;
    - per head, `attention/layer<L>.head<H>/{previous_token,duplicate_token,induction}`: the head-behaviour scores
      of `minigpt.inspect` on the score probes, seeded random tokens shown twice at three lengths
      (`InductionProbes`), averaged over the lengths;
    - per head, `attention/layer<L>.head<H>/induction_ablation`: how much the induction loss rises when the head's
      output is zeroed (`minigpt.inspect.head_ablation`): whether the model needs the head, not only where it
      looks. To W&B the scores and the ablation go also as one table, `attention_scores` (columns layer, head,
      each score, induction_ablation).

    At every validation it also logs `val/induction_loss`: the model's mean loss on the second halves of a few
    seeded random sequences shown twice at each of the three lengths, which drops sharply once the model has
    induction heads. Their tokens are drawn by their frequency in the validation split, so that a model of the
    text reads familiar tokens in familiar proportions: only the repetition is new.
    """

    def __init__(
        self,
        every_n_validations: int = 10,
        at_train_end: bool = True,
        probe: str | None = None,
        score_probe_tokens: int | None = None,
    ):
        """
        Args:
            every_n_validations: Draw at every n-th validation run; 0 draws only at the end of training.
            at_train_end: Draw once more when training ends (unless the last validation run just drew).
            probe: Text the model reads; None takes the first 64 tokens of the validation split, so the probe
                is fixed for a dataset. A probe longer than the model's block_size is cropped to it.
            score_probe_tokens: Random tokens in the longest head-score probe, which reads them twice (2 x this
                many tokens, at most block_size); the other two lengths are spaced down to about half of it
                (`probe_lengths`: 32 gives 32, 24 and 16). The induction-loss sequences have the same lengths. At
                least 5. None: 32, or fewer where block_size or the validation text's distinct tokens allow fewer.
        """
        if every_n_validations < 0:
            raise UserError(
                f"attention_maps.every_n_validations={every_n_validations} must be >= 0 (0: only at the end)"
            )
        if score_probe_tokens is not None and score_probe_tokens < MIN_LONGEST_PROBE:
            raise UserError(
                f"attention_maps.score_probe_tokens={score_probe_tokens} is too short for the head scores: give at "
                f"least {MIN_LONGEST_PROBE} (the probes have three lengths from about half of it up, each at least 3)"
            )
        self.score_probe_tokens = score_probe_tokens
        self.every_n_validations = every_n_validations
        self.at_train_end = at_train_end
        self.probe = probe
        self.ids: list[int] = []  # the probe's tokens, set up when fitting starts
        self.probes = InductionProbes(())  # the score probes and induction sequences, set up when fitting starts
        self.labels: list[str] = []
        self.tokens: list[dict] = []  # the probe's tokens as the explorer shows them
        self.note = ""
        self._validations = 0
        self._drawn_step = -1

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        data = trainer.datamodule
        enc = get_tokenizer(pl_module.tokenizer)  # the model's, the data's
        self.probes = self.induction_probes(data, pl_module.model.config, enc.eot_token)
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

    def check_block_size(self, block_size: int) -> None:
        """Refuse a score probe the model cannot read; train.py calls this before the run writes anything."""
        n = self.score_probe_tokens or min(SCORE_PROBE_TOKENS, block_size // 2)
        if n < MIN_LONGEST_PROBE or 2 * n > block_size:
            fix = "set it in that range" if block_size >= 2 * MIN_LONGEST_PROBE else "train with a larger block_size"
            raise UserError(
                f"attention_maps.score_probe_tokens={n}: the head-score probe reads that many random tokens twice, "
                f"which needs {MIN_LONGEST_PROBE} <= score_probe_tokens <= block_size / 2 = {block_size // 2}: {fix}"
            )

    def induction_probes(self, data, config, eot_token: int) -> InductionProbes:
        """The score probes and the induction sequences: INDUCTION_SEQUENCES at each of three lengths.

        Their tokens are drawn by their frequency in the validation split (its first VAL_SCAN tokens), when there
        is one: a model never trains the embeddings of ids its text lacks (most of the 257 byte ids in English
        text), and on those it could not show the induction it has learnt; drawn evenly, rare tokens would make
        most of each sequence, which a model of the text has learnt never to expect. Never <|endoftext|>: a model
        learns to forget what came before it.
        """
        self.check_block_size(config.block_size)
        if data is not None and "val" in getattr(data, "data", {}):
            counts = np.bincount(data.data["val"][:VAL_SCAN], minlength=config.vocab_size)  # (vocab,)
            source = "the validation split holds"
        else:
            counts, source = np.ones(config.vocab_size), "the vocabulary has"
        counts[eot_token] = 0
        candidates = torch.from_numpy(np.flatnonzero(counts))  # the token ids to draw from
        if candidates.numel() < MIN_LONGEST_PROBE:
            raise UserError(
                f"attention_maps: the head-score probe needs {MIN_LONGEST_PROBE} distinct tokens, and {source} "
                f"{candidates.numel()} besides <|endoftext|>: train on a text of more"
            )
        n = self.score_probe_tokens or min(SCORE_PROBE_TOKENS, config.block_size // 2, candidates.numel())
        if n > candidates.numel():
            raise UserError(
                f"attention_maps.score_probe_tokens={n}: the head-score probe needs that many distinct tokens, and "
                f"{source} {candidates.numel()}: set score_probe_tokens <= {candidates.numel()}"
            )
        weights = torch.from_numpy(counts[candidates.numpy()])  # (candidates,): how often the split holds each
        return InductionProbes.draw(candidates, n, INDUCTION_SEQUENCES, REPEATS_SEED, weights)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """val/induction_loss, at every validation.

        Here rather than in the LightningModule: its sequences come from the validation split's tokens, which this
        callback reads for its probes anyway, and the module stays ignorant of the data. Every rank computes it
        (a forward pass over a few short sequences); the same weights and sequences give the same value on each,
        and sync_dist keeps Lightning's epoch-level logging in step across DDP ranks.
        """
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        pl_module.log("val/induction_loss", self.probes.induction_loss(pl_module.model), sync_dist=True)

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
        summaries = layer_head_summaries(weights)  # name -> (n_layer, nh), on the probe text
        # name -> (n_layer, nh), on the score probes; then the ablation beside them
        scores = self.probes.head_scores(pl_module.model) | {ABLATION: self.probes.head_ablation(pl_module.model)}
        labels = head_labels(scores, summaries)  # the text's previous-token share goes to the scalars only
        model, source = describe_model(pl_module.model.config), trainer.default_root_dir
        lengths = ", ".join(map(str, self.probes.lengths))
        header = {"model": model, "step": step, "source": source, "probe": self.note,
                  "scores": f"{', '.join([*SCORES, ABLATION])} on seeded random tokens shown twice, "
                            f"{lengths} long"}  # fmt: skip
        explorer = write_explorer(out_dir / "explorer.html", weights, self.tokens, labels, header)
        scalars = score_scalars(summaries) | score_scalars(scores)
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)
            if isinstance(logger, WandbLogger):
                import wandb  # here, not at the top: training with another logger runs without wandb installed

                for layer, path in enumerate(paths):
                    logger.log_image(f"attention_maps/layer{layer}", [str(path)], step=step, caption=[note])
                columns = [*SCORES, ABLATION]
                logger.log_table(
                    "attention_scores", ["layer", "head", *columns], score_rows(scores, columns), step=step
                )
                # inject=False: W&B would otherwise add a stylesheet link, a fetch the page must not make.
                logger.log_metrics({"attention_explorer": wandb.Html(str(explorer), inject=False)}, step=step)
        self._drawn_step = step
        return paths


def score_scalars(scores: dict[str, torch.Tensor]) -> dict[str, float]:
    """Head scores (name -> (n_layer, nh)) as logger scalars `attention/layer<L>.head<H>/<name>`."""
    return {
        f"attention/layer{layer}.head{head}/{name}": value
        for name, values in scores.items()
        for layer, row in enumerate(values.tolist())
        for head, value in enumerate(row)
    }


def score_rows(scores: dict[str, torch.Tensor], columns: list[str]) -> list[list]:
    """Head scores (name -> (n_layer, nh)) as table rows: layer, head, then the scores named in columns."""
    table = torch.stack([scores[name] for name in columns], dim=-1)  # (n_layer, nh, len(columns))
    return [[layer, head, *values] for layer, heads in enumerate(table.tolist()) for head, values in enumerate(heads)]
