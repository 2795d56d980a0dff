"""val/icl_score: the validation loss late in the windows minus early, from the validation batches already run."""

import math

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from minigpt.model import GPTConfig
from minigpt.module import GPTModule, icl_positions

V, T, SHARPNESS = 10, 40, 0.25


class SurerLater(nn.Module):
    """A stand-in for the GPT that predicts the current token again, the surer the later it stands: at position p
    its logit is SHARPNESS * p, every other token's 0. On windows of one token repeated it is right everywhere,
    and its loss at p is ln(1 + (V - 1) exp(-SHARPNESS * p)): better late than early."""

    def __init__(self):
        super().__init__()
        self.forwards = 0

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        self.forwards += 1
        confidence = SHARPNESS * torch.arange(idx.size(1), dtype=torch.float)  # (T,)
        logits = nn.functional.one_hot(idx, V).float() * confidence[:, None]  # (B, T, V)
        return logits, None


def loss_at(p: int) -> float:
    return math.log(1 + (V - 1) * math.exp(-SHARPNESS * p))


def test_the_icl_score_is_the_late_loss_minus_the_early_one_with_no_extra_forward():
    module = GPTModule(GPTConfig(vocab_size=V, block_size=T, n_layer=1, n_head=1, n_embd=8))
    module.model = SurerLater()
    windows = torch.arange(V).repeat_interleave(3)[:, None].expand(-1, T + 1)  # (30, T + 1): one token each
    batches = [(w[:, :-1], w[:, 1:]) for w in windows.split(8)]  # 4 batches, the last of 6
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    (metrics,) = trainer.validate(module, DataLoader(batches, batch_size=None), verbose=False)
    early, late = icl_positions(T)
    assert (early, late) == (4, 39)
    assert metrics["val/icl_score"] == pytest.approx(loss_at(late) - loss_at(early), rel=1e-5)
    assert metrics["val/icl_score"] < -1  # 1.3 nats better at the end
    assert metrics["val/loss"] == pytest.approx(sum(map(loss_at, range(T))) / T, rel=1e-5)
    assert module.model.forwards == len(batches)  # one forward per validation batch, the loss's own


def test_icl_positions_are_olsson_et_als_tokens_50_and_500_where_a_window_holds_them():
    assert icl_positions(1024) == icl_positions(500) == (49, 499)
    assert icl_positions(499) == (49, 498)
    assert icl_positions(128) == (12, 127)
