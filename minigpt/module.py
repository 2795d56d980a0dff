"""The LightningModule around `GPT`: loss, AdamW with a warmup + cosine schedule, and training metrics."""

import math
import time
from dataclasses import asdict, dataclass, fields
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch.distributed.fsdp import FullyShardedDataParallel
from torchmetrics import MeanMetric

from minigpt.errors import LossNotFinite, UserError
from minigpt.memory import parameter_count
from minigpt.model import GPT, GPTConfig
from minigpt.peak_flops import peak_flops


@dataclass
class OptimizerConfig:
    """AdamW and its learning-rate schedule: linear warmup to learning_rate, cosine decay to min_lr."""

    learning_rate: float = 1e-3
    """Peak learning rate, reached after the warmup."""
    min_lr: float = 1e-4
    """Learning rate at the end of the cosine decay (and after it)."""
    warmup_steps: int = 100
    """Optimizer steps of linear warmup from 0 to learning_rate."""
    decay_steps: int | None = None
    """Optimizer step where the cosine decay reaches min_lr; defaults to trainer.max_steps."""
    weight_decay: float = 0.1
    """AdamW weight decay, applied to matrices and embeddings only."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2 (0.99 for small models trained briefly, 0.95 for GPT-2 sizes)."""
    fused: bool | Literal["auto"] = "auto"
    """AdamW's fused implementation (one kernel for all parameters): auto takes it on GPUs."""

    def __post_init__(self):
        """UserError naming the setting, for settings that cannot train (checked before any data is read)."""
        if not self.learning_rate > 0:  # written so that NaN fails too
            raise UserError(f"model.learning_rate={self.learning_rate} must be > 0")
        if not 0 <= self.min_lr <= self.learning_rate:
            raise UserError(f"model.min_lr={self.min_lr} must lie in [0, learning_rate={self.learning_rate}]")
        if self.warmup_steps < 0:
            raise UserError(f"model.warmup_steps={self.warmup_steps} must be >= 0")
        if self.decay_steps is not None and self.decay_steps < 1:
            raise UserError(
                f"model.decay_steps={self.decay_steps} must be >= 1, or unset to decay until trainer.max_steps"
            )
        if not self.weight_decay >= 0:
            raise UserError(f"model.weight_decay={self.weight_decay} must be >= 0")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"model.{name}={getattr(self, name)} must lie in [0, 1)")


@dataclass
class CompileConfig:
    """Whether and how the GPT is compiled for training."""

    compile: bool = False
    """Compile the GPT with torch.compile (the Lightning module itself stays eager)."""
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    """torch.compile's mode: `reduce-overhead` adds CUDA graphs (fewer kernel launches, for small models),
    `max-autotune` also tunes matmul kernels per shape (a much longer compile)."""


@dataclass
class ModelOptions(CompileConfig, OptimizerConfig, GPTConfig):
    """The `--model.*` options: the GPT's shape, its optimizer and its compilation in one flat group, as the command
    line and the YAML configs name them. Each field is declared once, in its own dataclass; `build` splits them."""

    def __post_init__(self):
        # Each part's checks, now: the options are refused before anything is built from them.
        GPTConfig.__post_init__(self)
        OptimizerConfig.__post_init__(self)

    def build(self, tokenizer: str = "bytes") -> "GPTModule":
        def part(cls):
            return cls(**{f.name: getattr(self, f.name) for f in fields(cls)})

        return GPTModule(part(GPTConfig), part(OptimizerConfig), part(CompileConfig), tokenizer)


class GPTModule(L.LightningModule):
    def __init__(
        self,
        config: GPTConfig,
        optimizer: OptimizerConfig | None = None,
        compile: CompileConfig | None = None,
        tokenizer: str = "bytes",
    ):
        """A GPT of shape config, how it is optimised and compiled, and the name of its tokenizer (stored in
        checkpoints for sampling). `ModelOptions` builds one from the command line's flat `--model.*` options."""
        super().__init__()
        self.config = config
        self.optimizer_config = optimizer or OptimizerConfig()
        compile = compile or CompileConfig()
        self.tokenizer = tokenizer
        # Plain types: checkpoints load with torch.load(weights_only=True); the logger gets them as nested dicts.
        self.save_hyperparameters(
            {"model": asdict(config), "optimizer": asdict(self.optimizer_config), "compile": asdict(compile),
             "tokenizer": tokenizer}
        )  # fmt: skip
        self.model = GPT(config)
        if compile.compile:
            # Module.compile() compiles in place: parameter names (and checkpoint keys) stay those of GPT,
            # with no `_orig_mod.` prefix, so checkpoints load with or without compile.
            self.model.compile(mode=compile.compile_mode)
        self.flops_per_token = flops_per_token(config, config.block_size)
        self.val_loss = MeanMetric()
        self.val_early_loss = MeanMetric()  # at icl_positions' early position of each validation window
        self.val_late_loss = MeanMetric()  # at its late position
        # A device-side flag set when a loss is NaN/inf; read only where Lightning syncs anyway (logging, saving),
        # so the training step itself never waits on the GPU.
        self.register_buffer("_nonfinite_loss", torch.zeros((), dtype=torch.bool), persistent=False)
        self._throughput_t0: float | None = None
        self._throughput_step0 = -1
        self._grad_norm: torch.Tensor | None = None  # before clipping, of the last optimizer step that clipped

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        return self.model(idx, targets)

    # --- steps --------------------------------------------------------------------------------------------
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch  # (B, T) each
        _, loss = self.model(x, y)
        self._nonfinite_loss |= ~torch.isfinite(loss.detach())
        # Not on the progress bar: Lightning turns progress-bar values into numbers (a wait for the GPU) at every
        # batch; logged values stay on the device until the logging interval. StepProgressBar shows them from there.
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch  # (B, T) each
        logits, _ = self.model(x)  # (B, T, vocab_size)
        # Per position, for the ICL score; their mean is the loss (no target is ignored in validation). Over the
        # vocabulary's logits: padding ids (pad_vocab_multiple), never sampled, are not among the predictions.
        losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(y)  # (B, T)
        self.val_loss.update(losses.mean())
        early, late = icl_positions(y.size(1))
        self.val_early_loss.update(losses[:, early].mean())
        self.val_late_loss.update(losses[:, late].mean())

    def on_validation_epoch_end(self) -> None:
        val_loss = self.val_loss.compute()  # synced across ranks by torchmetrics, as the two below
        icl_score = self.val_late_loss.compute() - self.val_early_loss.compute()
        for metric in (self.val_loss, self.val_early_loss, self.val_late_loss):
            metric.reset()
        self.log("val/loss", val_loss, prog_bar=True)
        self.log("val/ppl", torch.exp(val_loss))
        self.log("val/icl_score", icl_score)

    # --- throughput and health, once per logging interval ---------------------------------------------------
    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        step = self.trainer.global_step  # optimizer steps; the same for every micro-batch of one step
        if step % self.trainer.log_every_n_steps != 0 or step == self._throughput_step0:
            return
        self._check_loss_is_finite()
        tokens_per_step = batch[0].numel() * self.trainer.accumulate_grad_batches * self.trainer.world_size
        self.log("train/tokens", float(step * tokens_per_step))
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        if self._grad_norm is not None:
            self.log("train/grad_norm", self._grad_norm)
        now = time.perf_counter()
        if self._throughput_t0 is not None:
            # Wall time over a whole logging interval: no per-step device sync, queued GPU work evens out.
            tokens_per_sec = (step - self._throughput_step0) * tokens_per_step / (now - self._throughput_t0)
            self.log("train/tokens_per_sec", tokens_per_sec)
            peak = self._peak_flops_per_device()
            if peak:
                self.log("train/mfu", tokens_per_sec * self.flops_per_token / (peak * self.trainer.world_size))
        self._throughput_t0, self._throughput_step0 = now, step

    def _peak_flops_per_device(self) -> float | None:
        """Dense peak FLOP/s of one device at the training precision, for the GPUs `minigpt.peak_flops` names."""
        name = device_name(self.device)
        return None if name is None else peak_flops(name, str(self.trainer.precision))

    def _check_loss_is_finite(self) -> None:
        if self._nonfinite_loss.item():
            raise LossNotFinite(
                f"the training loss became NaN or infinite by step {self.trainer.global_step}: lower "
                "model.learning_rate or raise model.warmup_steps; the last good checkpoint is kept"
            )

    def on_validation_start(self) -> None:
        self._check_loss_is_finite()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Never write a checkpoint of weights a non-finite loss has touched.
        self._check_loss_is_finite()
        # What sample.py needs, in plain types (loadable with torch.load(weights_only=True)).
        checkpoint["minigpt"] = {"model_config": asdict(self.config), "tokenizer": self.tokenizer}

    # --- optimisation -------------------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.optimizer_config
        # nanoGPT's rule: every matrix decays (attention/MLP weights and both embedding tables, the token table
        # being also the LM head); biases and LayerNorm gains do not, as decaying them only hurts.
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": hp.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(
            groups,
            lr=hp.learning_rate,
            betas=(hp.beta1, hp.beta2),
            fused=self.device.type == "cuda" if hp.fused == "auto" else hp.fused,
        )
        decay_steps = hp.decay_steps or self.trainer.max_steps
        if decay_steps is None or decay_steps < 1:
            raise UserError("set trainer.max_steps (or model.decay_steps) so the learning-rate schedule has an end")
        schedule = warmup_cosine(hp.warmup_steps, decay_steps, hp.min_lr / hp.learning_rate)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """trainer.gradient_clip_val, clipped here with torch rather than by Lightning's precision plugin.

        Lightning's mixed-precision plugin refuses to clip for an optimizer that unscales gradients in its own step
        (fused AdamW, our choice on GPUs), and its FSDP plugin refuses clipping by norm. Neither reason holds for us:
        bf16 has no loss scale, an fp16 loss scale is taken off first below, and FSDP's root module computes the norm
        of the whole sharded model. The norm stays on the device (clipping needs no host sync) and is logged with
        the other metrics of the logging interval.
        """
        if not gradient_clip_val:
            return
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)  # 16-mixed only
        if scaler is not None and getattr(optimizer, "_step_supports_amp_scaling", False):
            scaler.unscale_(optimizer)  # the fused step would unscale later: the norm must be of the true gradients
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(self.parameters(), gradient_clip_val)
            return
        root = self.trainer.strategy.model
        if isinstance(root, FullyShardedDataParallel):  # each rank holds a shard: torch's function would see one
            self._grad_norm = root.clip_grad_norm_(gradient_clip_val)
        else:
            self._grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val, foreach=True)


def device_name(device: torch.device) -> str | None:
    """The GPU's name, e.g. "NVIDIA H100 80GB HBM3"; None on other devices."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


def flops_per_token(config: GPTConfig, T: int) -> float:
    """Training FLOPs per token of a GPT of shape config, nanoGPT's estimate: 6N (matmuls, forward + backward) +
    12·L·C·T (attention), counted from the shape (no model needs building).

    N leaves out the position table, as GPT-2 papers count, and the vocabulary's padding rows: their FLOPs are spent
    but compute nothing, so MFU does not count them.
    """
    position_table = config.block_size * config.n_embd
    padding = (config.padded_vocab_size - config.vocab_size) * config.n_embd
    n = parameter_count(config) - position_table - padding
    return 6 * n + 12 * config.n_layer * config.n_embd * T


def icl_positions(T: int) -> tuple[int, int]:
    """The early and the late position (0-based, in windows of T tokens) of the in-context-learning score.

    Olsson et al. (2022) take the loss at the 500th token of a context minus that at the 50th: positions 499 and
    49, where a window holds 500 tokens. A shorter window takes its last position and the one a tenth of the way
    in, T // 10. The late token has seen more context: the more the model uses it, the more negative the score.
    """
    return (49, 499) if T >= 500 else (T // 10, T - 1)


def warmup_cosine(warmup_steps: int, decay_steps: int, min_ratio: float):
    """Multiplier of the peak learning rate at optimizer step `step`: linear warmup, cosine decay, then flat."""

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if step >= decay_steps:
            return min_ratio
        progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
        return min_ratio + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - min_ratio)

    return multiplier
