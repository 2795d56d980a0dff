"""A decoder-only transformer in GPT-2's layout and parameter names, in plain torch.

The names (`transformer.wte`, `transformer.h.{i}.attn.c_attn`, `lm_head`, ...) are GPT-2's, so its weights map
onto this model one to one (its Conv1D weights transposed). `forward` is training's and evaluation's: logits and
the loss. Generation has its own entry: `setup_kv_cache` gives every attention layer a key/value cache and `decode`
feeds tokens at their positions, returning the last position's logits.
"""

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from minigpt.attention import CausalSelfAttention, KVCache, cache_mask, check_heads
from minigpt.errors import UserError


def free_to_read(t: torch.Tensor) -> bool:
    """Whether reading t's values on the host costs nothing: a CPU tensor's are there; reading a GPU tensor's waits
    for the GPU to finish all the work queued before (a sync), which idles it while the host queues no more."""
    return t.is_cpu


@dataclass
class GPTConfig:
    """Shape of a GPT. The defaults are GPT-2 small (124M parameters)."""

    vocab_size: int = 50257
    """Number of token ids the embedding and the LM head cover."""
    block_size: int = 1024
    """Longest sequence the model sees (size of the position table)."""
    n_layer: int = 12
    """Number of transformer blocks."""
    n_head: int = 12
    """Attention heads per block; must divide n_embd."""
    n_embd: int = 768
    """Width of the residual stream."""
    dropout: float = 0.0
    """Dropout on attention weights, residual branches and embeddings (0 for pretraining, ~0.2 for small data)."""
    bias: bool = True
    """Biases in the linear layers and LayerNorms, as GPT-2 has them."""
    pad_vocab_multiple: int = 1
    """Round the embedding and LM-head rows up to a multiple of this (64 or 128: GPT-2's 50257 becomes 50304, as
    in nanoGPT, so the LM head's matmuls get aligned shapes and faster GPU kernels). The extra ids never appear in
    the data; the model's logits stop at vocab_size, so they are never sampled either."""
    mlp: bool = True
    """Each block has an MLP after its attention, as GPT-2's do; false: attention-only blocks, the toy models in which
    induction heads were first studied (Elhage et al. 2021), which form them within minutes on a CPU."""
    init_std: float = 0.02
    """Standard deviation of the initial weights and embeddings (GPT-2's 0.02; the residual projections get it
    divided by sqrt(2 * n_layer)). Tiny models learn attention patterns sooner from larger ones, about
    1/sqrt(n_embd)."""
    position_embedding: Literal["learned", "sinusoidal"] = "learned"
    """The position table: `learned` (GPT-2's) or `sinusoidal`, the fixed table of Vaswani et al. (2017), never
    trained, at the scale of the token embeddings (init_std)."""

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "pad_vocab_multiple"):
            if getattr(self, name) < 1:
                raise UserError(f"{name}={getattr(self, name)} must be a positive integer")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"dropout={self.dropout} must be in [0, 1)")
        check_heads(self.n_embd, self.n_head)
        if not self.init_std > 0:
            raise UserError(f"init_std={self.init_std} must be > 0")
        if self.position_embedding not in ("learned", "sinusoidal"):
            raise UserError(f"position_embedding={self.position_embedding!r} must be learned or sinusoidal")

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding and the LM head: vocab_size rounded up to a multiple of pad_vocab_multiple."""
        return math.ceil(self.vocab_size / self.pad_vocab_multiple) * self.pad_vocab_multiple


class MLP(nn.Module):
    """Position-wise feed-forward: C -> 4C -> GELU -> C."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's GELU
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c_proj(self.gelu(self.c_fc(x)))
        # Dropout is the identity in eval mode: the call is skipped there, as in the attention and the embeddings.
        # Module calls cost microseconds each, and the model's 13 dropouts were 7% of a default-model decoding step.
        return self.dropout(y) if self.training else y


def sinusoidal_table(block_size: int, n_embd: int, std: float) -> torch.Tensor:
    """Vaswani et al.'s position table (block_size, n_embd): sin and cos of position / 10000^(2i / n_embd),
    interleaved (even columns sin, odd cos), scaled to the standard deviation std (that of the token embeddings at
    initialisation: at its own scale of 1 the table drowns the tokens)."""
    position = torch.arange(block_size, dtype=torch.float32)[:, None]  # (T, 1)
    frequency = torch.exp(torch.arange(0, n_embd, 2, dtype=torch.float32) * (-math.log(10000.0) / n_embd))
    angles = position * frequency  # (T, ceil(C / 2))
    table = torch.zeros(block_size, n_embd)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : n_embd // 2])
    return table * (std * math.sqrt(2))  # sin and cos have a standard deviation of 1/sqrt(2)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)) (no MLP with config.mlp false)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config.n_embd, config.n_head, config.dropout, config.bias)
        if config.mlp:
            self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
            self.mlp = MLP(config)
        else:
            self.ln_2 = self.mlp = None

    def forward(
        self,
        x: torch.Tensor,
        input_pos: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        n_keys: int | None = None,
    ) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C). input_pos, mask, n_keys: for decoding with a KV cache (CausalSelfAttention)."""
        x = x + self.attn(self.ln_1(x), input_pos, mask, n_keys)
        return self.feed_forward(x)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """x + mlp(ln_2(x)), (B, T, C); x itself in an attention-only block."""
        return x if self.mlp is None else x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        # Weight tying: the LM head reads out with the token embedding matrix (GPT-2, Press & Wolf 2017).
        self.lm_head.weight = self.transformer.wte.weight

        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer), one per residual add (attention and MLP).
        residual_std = config.init_std / math.sqrt(2 * config.n_layer)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=residual_std)
        if config.position_embedding == "sinusoidal":
            # Kept as wpe's weight, frozen: checkpoints hold it like a learned table, and the optimizer skips it.
            table = sinusoidal_table(config.block_size, config.n_embd, config.init_std)
            self.transformer.wpe.weight.data.copy_(table)
            self.transformer.wpe.weight.requires_grad_(False)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; by default without the position table, as GPT-2 papers count.

        The token table is counted once (it is also the LM head's weight), with its padding rows if any.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def setup_kv_cache(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        max_len: int | None = None,
    ) -> None:
        """Give every attention layer a KV cache for batch_size sequences of up to max_len tokens (<= block_size).

        max_len defaults to block_size; generation asks for what its prompt and new tokens need. device and dtype
        default to the model's. While it is set, `decode` feeds it and `forward` is refused; `clear_kv_cache`
        removes it (before training again).
        """
        max_len = self.config.block_size if max_len is None else max_len
        if not 1 <= max_len <= self.config.block_size:
            raise ValueError(f"max_len={max_len} must be in [1, block_size={self.config.block_size}]")
        weight = self.lm_head.weight
        head_size = self.config.n_embd // self.config.n_head
        for block in self.transformer.h:
            block.attn.kv_cache = KVCache(
                batch_size,
                self.config.n_head,
                max_len,
                head_size,
                device=weight.device if device is None else device,
                dtype=weight.dtype if dtype is None else dtype,
            )

    def clear_kv_cache(self) -> None:
        for block in self.transformer.h:
            block.attn.kv_cache = None

    def _cache_keys(self, input_pos: torch.Tensor) -> tuple[int | None, torch.Tensor | None]:
        """For all layers: how many cache slots are the keys of the tokens at input_pos (Tk), and which of them
        each may attend to, (T, Tk) (None: all); (None, None): their own keys, causal.

        Compiled, or with input_pos on a GPU, Tk is the cache's whole length, the slots not yet written masked out:
        every decoding step has the same shapes (it compiles once and can be replayed as a CUDA graph), and
        input_pos is never read on the host, which would wait for the GPU at every step. On the CPU, where reading
        it costs nothing, Tk is the number of slots written so far, input_pos[-1] + 1: a step reads only the keys
        it attends to, with no mask at all for one token, and a prefill from position 0 gets the fused kernel's
        causal path. Only that path can say that a position is past the cache (a GPU's indexing asserts).
        """
        cache = self.transformer.h[0].attn.kv_cache
        if cache is None:
            raise ValueError("decoding needs a KV cache: set one first (GPT.setup_kv_cache)")
        max_len = cache.max_len
        if torch.compiler.is_compiling() or not free_to_read(input_pos):
            return max_len, cache_mask(input_pos, max_len)  # (T, max_len)
        written = int(input_pos[-1]) + 1
        if written > max_len:
            raise ValueError(
                f"position {written - 1} is past the KV cache's {max_len} slots: set it up with a larger max_len"
            )
        T = input_pos.size(0)
        if written == T:
            return None, None
        return written, None if T == 1 else cache_mask(input_pos, written)  # (T, written)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx, targets: (B, T) token ids. Returns (logits (B, T, vocab_size), loss or None); targets equal to -1
        are ignored by the loss."""
        B, T = idx.shape
        x = self.embed(idx, torch.arange(T, device=idx.device))  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, padded vocab)

        loss = None
        if targets is not None:
            # Over the padded logits, as nanoGPT does: slicing them first would copy the largest tensor of the step.
            # Targets never name a padding id, so training only pushes those logits down.
            loss = F.cross_entropy(
                logits.view(B * T, -1), targets.reshape(B * T), ignore_index=-1
            )  # logits viewed as (B*T, padded vocab)
        return logits[..., : self.config.vocab_size], loss  # a view: padding ids are never returned, never sampled

    def decode(self, idx: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """Generation's step, with a KV cache set (`setup_kv_cache`): the tokens idx (B, T) at the consecutive
        positions input_pos (T,) (a prompt at arange(T), then one token per call at its position) go into the
        cache; returns the logits (B, vocab_size) after the last of them.

        The LM head runs at the last position only: all that sampling needs, and for a large vocabulary the head
        is the biggest matmul of a long prefill. For compiled decoding, compile this method, not the model (whose
        forward is training's): `torch.compile(model.decode)`.
        """
        n_keys, mask = self._cache_keys(input_pos)  # once for all layers, not in each
        x = self.embed(idx, input_pos)  # (B, T, C)
        for block in self.transformer.h:
            x = block(x, input_pos, mask, n_keys)
        logits = self.lm_head(self.transformer.ln_f(x[:, -1]))  # (B, padded vocab): the last position only
        return logits[:, : self.config.vocab_size]  # a view: padding ids are never sampled

    def embed(self, idx: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Token plus position embeddings of idx (B, T) at positions pos (T,): (B, T, C), dropped out in training."""
        if idx.size(1) > self.config.block_size:
            raise ValueError(
                f"sequence length {idx.size(1)} is longer than block_size={self.config.block_size}: "
                "crop the input to the last block_size tokens or train with a larger block_size"
            )
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C)
        # Dropout is the identity in eval mode: the call is skipped there, as in the MLP and the attention.
        return self.transformer.drop(x) if self.training else x
