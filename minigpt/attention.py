"""Causal multi-head self-attention.

`causal_mask` and `scaled_dot_product_attention` are the reference documents' computation written plainly, so
the attention weights can be looked at; `CausalSelfAttention` is the layer the model uses, which runs PyTorch's
fused kernel unless the weights are asked for. For generation the layer can hold a `KVCache`: the prompt's keys
and values are computed once, then each new token attends to them (`cache_mask` says which slots it may see).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from minigpt.linear import Linear


def causal_mask(T: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(T, T) bool mask, True where query i may attend to key j, i.e. j <= i (diagonal included)."""
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def cache_mask(input_pos: torch.Tensor, n_slots: int) -> torch.Tensor:
    """(T, n_slots) bool mask, True where the query at position input_pos[i] may attend to cache slot j (j <= pos).

    Slots after a query's position are not yet written for this sequence (or hold a previous window's keys), so
    they are masked out. `cache_mask(torch.arange(T), T)` equals `causal_mask(T)`.
    """
    return input_pos[:, None] >= torch.arange(n_slots, device=input_pos.device)  # (T, 1) vs (n_slots,)


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


class KVCache(nn.Module):
    """Keys and values of the positions seen so far, preallocated to max_len positions.

    The buffers never change shape, so a compiled decoding step sees the same shapes at every position. They are
    not persistent: a model's state_dict is the same with or without a cache.
    """

    def __init__(
        self,
        batch_size: int,
        n_head: int,
        max_len: int,
        head_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        shape = (batch_size, n_head, max_len, head_size)
        self.register_buffer("k_cache", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, nh, T, hs) at positions input_pos (T,); return the whole caches (B, nh, max_len, hs)."""
        # Cast: under autocast k and v may come in a lower precision than the cache's.
        self.k_cache.index_copy_(2, input_pos, k.to(self.k_cache.dtype))
        self.v_cache.index_copy_(2, input_pos, v.to(self.v_cache.dtype))
        return self.k_cache, self.v_cache

    @property
    def max_len(self) -> int:
        return self.k_cache.size(2)


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
        self.c_attn = Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = Linear(n_embd, n_embd, bias=bias)
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)
        self.kv_cache: KVCache | None = None  # set for generation (GPT.setup_kv_cache)

    def forward(
        self,
        x: torch.Tensor,
        return_weights: bool = False,
        input_pos: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        n_keys: int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T, C). Returns y (B, T, C), plus the attention weights (B, nh, T, Tk) when return_weights.

        Without a cache the keys are x's own (Tk = T), causal unless mask (T, T) says otherwise. With `kv_cache`
        set, input_pos (T,) are the consecutive positions of x's tokens: their keys and values are written there.
        Then n_keys = Tk makes the keys the cache's first Tk slots: all max_len of them (one shape for every step,
        as compiled code wants), or only those written so far (less to read); mask (T, Tk), True = may attend
        (`cache_mask`), says which of them each query sees, and None lets every query see all Tk (one query at
        the last written position). n_keys None with a cache means x's tokens are positions 0..T-1, a prefill from
        the start: its keys are its own, causal, as without a cache. The model works these out once for all its
        layers (`GPT._cache_keys`).
        """
        if (self.kv_cache is None) != (input_pos is None):
            raise ValueError(
                "input_pos goes with a KV cache: set one (GPT.setup_kv_cache) and pass input_pos, or neither"
            )
        B, T, C = x.shape
        hs = C // self.n_head
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, hs)  # (B, T, 3, nh, hs): q | k | v, each in heads
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, nh, T, hs)
        if self.kv_cache is not None:
            k_cache, v_cache = self.kv_cache.update(input_pos, k, v)  # (B, nh, max_len, hs) each
            if n_keys is not None:
                k, v = k_cache[:, :, :n_keys], v_cache[:, :, :n_keys]  # (B, nh, Tk, hs) each
        causal = mask is None and n_keys is None  # the keys are x's own
        if causal and return_weights:
            mask = causal_mask(T, device=x.device)

        if return_weights:
            y, weights = scaled_dot_product_attention(q, k, v, mask=mask)
            if self.training and self.dropout > 0:
                # Drop attention weights as the fused kernel does; the returned weights stay undropped.
                y = self.attn_dropout(weights) @ v  # (B, nh, T, hs)
        else:
            # Flash / memory-efficient kernels on GPU; the same scale 1/sqrt(hs) by default. With no mask (training)
            # is_causal builds the causal structure into the kernel.
            dropout_p = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)

        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side again
        y = self.c_proj(y)
        if self.training:
            y = self.resid_dropout(y)
        return (y, weights) if return_weights else y
