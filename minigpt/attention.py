"""Causal multi-head self-attention.

`causal_mask` and `scaled_dot_product_attention` are the reference documents' computation written plainly, so
the attention weights can be looked at; `CausalSelfAttention` is the layer the model uses, which runs PyTorch's
fused kernel unless the weights are asked for.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def causal_mask(T: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(T, T) bool mask, True where query i may attend to key j, i.e. j <= i (diagonal included)."""
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q @ kᵀ · scale) @ v over the last two axes; any leading batch dims.

    q: (..., Tq, d_k), k: (..., Tk, d_k), v: (..., Tk, d_v); mask broadcasts to (..., Tq, Tk), True = may
    attend. Returns (out (..., Tq, d_v), weights (..., Tq, Tk)).
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.size(-1))
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused q|k|v projection (GPT-2's `c_attn`, `c_proj`)."""

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if n_embd % n_head != 0:
            raise ValueError(
                f"n_embd={n_embd} is not divisible by n_head={n_head}: pick n_embd as a multiple of n_head"
            )
        self.n_embd = n_embd
        self.n_head = n_head
        self.dropout = dropout
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, return_weights: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)

        if return_weights:
            y, weights = scaled_dot_product_attention(q, k, v, mask=causal_mask(T, device=x.device))
            if self.training and self.dropout > 0:
                # Drop attention weights as the fused kernel does; the returned weights stay undropped.
                y = self.attn_dropout(weights) @ v  # (B, nh, T, hs)
        else:
            # Flash / memory-efficient kernels on GPU; the same scale 1/sqrt(hs) by default.
            dropout_p = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)

        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side again
        y = self.resid_dropout(self.c_proj(y))
        return (y, weights) if return_weights else y
