"""Causal multi-head self-attention.

`causal_mask` and `scaled_dot_product_attention` are the reference documents' computation written plainly, so
the attention weights can be looked at (`minigpt.inspect` runs the model's layers through it);
`CausalSelfAttention` is the layer the model uses, which runs PyTorch's fused kernel. For generation the layer can
hold a `KVCache`: the prompt's keys and values are computed once, then each new token attends to them
(`cache_mask` says which slots it may see).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from minigpt.errors import UserError


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


def check_heads(n_embd: int, n_head: int) -> None:
    """UserError unless n_head heads split n_embd channels evenly (the model's config checks it before building)."""
    if n_embd % n_head != 0:
        raise UserError(f"n_embd={n_embd} is not divisible by n_head={n_head}: pick n_embd as a multiple of n_head")


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
        check_heads(n_embd, n_head)
        self.n_embd = n_embd
        self.n_head = n_head
        self.dropout = dropout
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)
        self.kv_cache: KVCache | None = None  # set for generation (GPT.setup_kv_cache)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values of x (B, T, C), each (B, nh, T, hs)."""
        B, T, C = x.shape
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head)  # (B, T, 3, nh, hs): q | k | v in heads
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, nh, T, hs)
        return q, k, v

    def project(self, y: torch.Tensor) -> torch.Tensor:
        """The heads' outputs y (B, nh, T, hs) side by side, through the output projection: (B, T, C)."""
        B, nh, T, hs = y.shape
        y = y.transpose(1, 2).contiguous().view(B, T, nh * hs)  # (B, T, C): heads side by side again
        y = self.c_proj(y)
        # Dropout is the identity in eval mode: the call is skipped there (a module call costs microseconds).
        return self.resid_dropout(y) if self.training else y

    def forward(
        self,
        x: torch.Tensor,
        input_pos: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        n_keys: int | None = None,
    ) -> torch.Tensor:
        """x: (B, T, C). Returns y (B, T, C), through PyTorch's fused kernel (`minigpt.inspect.layer_attention`
        computes the same with the documents' function, and returns the weights too).

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
                "input_pos goes with a KV cache: set one (GPT.setup_kv_cache) and decode (GPT.decode), or clear it "
                "(GPT.clear_kv_cache) for a pass without one"
            )
        q, k, v = self.heads(x)  # (B, nh, T, hs) each
        if self.kv_cache is not None:
            k_cache, v_cache = self.kv_cache.update(input_pos, k, v)  # (B, nh, max_len, hs) each
            if n_keys is not None:
                k, v = k_cache[:, :, :n_keys], v_cache[:, :, :n_keys]  # (B, nh, Tk, hs) each
        # Flash / memory-efficient kernels on GPU; the same scale 1/sqrt(hs) by default. When the keys are x's own
        # and no mask is given (training, a prefill from position 0), is_causal builds the causal structure into
        # the kernel.
        causal = mask is None and n_keys is None
        dropout_p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)
        return self.project(y)  # (B, T, C)
