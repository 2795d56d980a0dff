"""Sampling from a GPT: greedy, temperature, top-k and nucleus (top-p), with a KV cache, streamed token by token.

`stream` yields each step's new tokens as they are made; `generate` collects them. With the cache the prompt is
prefilled once, then each step feeds only the token just sampled, both through `GPT.decode`. The cache holds what
the prompt and the new tokens need, at most block_size positions; eager on the CPU, a step attends to the
positions written so far only; compiled or on a GPU, to all of them under a mask, so that its shapes never change
and no step waits for the GPU to say how many were written (`GPT._cache_keys`). Once a sequence fills block_size,
each step re-prefills the last block_size tokens: positions are absolute, so cached keys cannot be shifted along
the window. That costs what recomputing costs and gives the tokens recomputing gives. Speed transforms for one
kind of machine stay beside generation, applied to the loaded model: `minigpt.cpu_layout` for CPU decoding.

`encode_prompt` and `TokenDecoder` are the text on either side: a prompt's token ids, and text as tokens arrive.
"""

import codecs
from collections.abc import Callable, Iterator

import tiktoken
import torch
import torch.nn.functional as F

from minigpt.errors import UserError
from minigpt.model import GPT


def check_sampling(temperature: float, top_k: int | None = None, top_p: float | None = None) -> None:
    """UserError naming the value for settings sampling cannot use."""
    if not temperature >= 0:  # written so that NaN fails too
        raise UserError(f"temperature={temperature} must be >= 0 (0 means greedy)")
    if top_k is not None and top_k < 1:
        raise UserError(f"top_k={top_k} must be a positive integer, or None for no limit")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"top_p={top_p} must be in (0, 1]; 1 keeps every token")


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids (B,) from the last position's logits (B, vocab). temperature 0 takes the argmax."""
    # In float32 at least, whatever the model ran in: in bfloat16 (8 significant bits) dividing by the temperature
    # ties neighbouring logits, and the probabilities and their running sum for top-p are rounded to 8 bits too.
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1): the k-th largest logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, vocab) each
        sorted_probs = F.softmax(sorted_logits, dim=-1)
        # Keep the smallest prefix holding top_p of the mass: a token goes once those ranked above it hold
        # top_p already, so the most likely token always stays.
        drop_sorted = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    # No host sync on a GPU: for one sample, multinomial draws argmax(probs / Exponential(1)) itself and checks
    # probs with asynchronous device asserts (pytorch/pytorch#134818, 2024), not with the host reads it once made
    # and gpt-fast's own copy of the draw avoids.
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)  # (B,)


def stream(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_token: int | None = None,
    use_cache: bool = True,
    decode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token of each sequence of idx (B, T), as a (B,) tensor per step, for max_new_tokens steps.

    Put the model in eval mode first. seed draws from a torch.Generator of its own: the same seed gives the same
    tokens. With stop_token, a sequence ends at its first stop token (its later steps repeat it) and the stream
    ends once every sequence has ended. use_cache=False recomputes the whole context (the last block_size tokens)
    through the model's forward at every step. decode runs the cached steps: `model.decode` unless given;
    `torch.compile(model.decode)` decodes compiled, from two graphs (the prefill and the one-token step).
    """
    # The model runs under torch.inference_mode, which skips autograd's version counters and view tracking (5% of
    # a small model's step); each token is cloned out of it, an ordinary tensor the caller may change in place or
    # feed to autograd.
    decode = model.decode if decode is None else decode
    steps = _steps(model, idx, max_new_tokens, temperature, top_k, top_p, seed, stop_token, use_cache, decode)
    try:
        for new in steps:
            yield new.clone()
    finally:
        steps.close()  # now, not when collected: it removes the KV cache


@torch.inference_mode()
def _steps(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    seed: int | None,
    stop_token: int | None,
    use_cache: bool,
    decode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> Iterator[torch.Tensor]:
    """`stream`'s tokens, as inference tensors."""
    check_sampling(temperature, top_k, top_p)
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
    if idx.ndim != 2 or idx.size(1) == 0:
        raise ValueError(
            f"idx of shape {tuple(idx.shape)} must be (B, T) with T >= 1: start an empty prompt from <|endoftext|>"
        )
    if max_new_tokens == 0:
        return
    block_size = model.config.block_size
    generator = None if seed is None else torch.Generator(idx.device).manual_seed(seed)
    ended = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)  # (B,)

    def window_logits(tokens: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Logits (B, vocab) after the last block_size tokens, fed from position 0; and how many were fed."""
        window = tokens[:, -block_size:]  # (B, <= block_size)
        if not use_cache:
            return model(window)[0][:, -1], window.size(1)  # (B, vocab)
        return decode(window, torch.arange(window.size(1), device=idx.device)), window.size(1)  # (B, vocab)

    if use_cache:
        # Every position fed: the prompt's, then each new token's but the last (it is never fed), or a window.
        max_len = min(block_size, idx.size(1) + max_new_tokens - 1)
        model.setup_kv_cache(idx.size(0), device=idx.device, max_len=max_len)
    try:
        tokens = idx
        logits, n_cached = window_logits(tokens)
        for step in range(max_new_tokens):
            new = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
            if stop_token is not None:
                new = new.masked_fill(ended, stop_token)
                ended |= new == stop_token
            yield new
            tokens = torch.cat([tokens, new[:, None]], dim=1)  # (B, T + step + 1)
            if step + 1 == max_new_tokens or (stop_token is not None and bool(ended.all())):
                return
            if use_cache and n_cached < block_size:
                # A fill on the device, not a host-to-device copy, so the step does not wait for the GPU.
                input_pos = torch.full((1,), n_cached, device=idx.device)  # (1,)
                logits = decode(new[:, None], input_pos)  # (B, vocab)
                n_cached += 1
            else:
                logits, n_cached = window_logits(tokens)
    finally:
        if use_cache:
            model.clear_kv_cache()


def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, **sampling) -> torch.Tensor:
    """idx (B, T) followed by its new tokens: (B, T + n), n <= max_new_tokens. `sampling`: stream's keywords."""
    new = list(stream(model, idx, max_new_tokens, **sampling))
    return torch.cat([idx, torch.stack(new, dim=1)], dim=1) if new else idx  # (B, T + n)


def generate_each(
    model: GPT, prompts: list[list[int]], max_new_tokens: int, *, seed: int | None = None, **sampling
) -> list[list[int]]:
    """Each prompt's new tokens, in the prompts' order, up to its stop token (left out). `sampling`: stream's keywords.

    Prompts of the same length are one batch through `stream`, one batch after another; the i-th batch (in the
    order of its first prompt) draws with seed + i. Batched by length rather than left-padded into one batch: a
    batch of equal lengths needs no padding mask and no per-row positions, so each prompt runs the model's own
    computation, with its fast paths (the causal kernel for the prefill, no padding slots to read or mask at each
    step) and the window that slides past block_size, and a prompt's tokens do not change when a prompt of another
    length joins or leaves the set. It costs one batch per distinct length.
    """
    rows_of_length: dict[int, list[int]] = {}
    for row, ids in enumerate(prompts):
        rows_of_length.setdefault(len(ids), []).append(row)
    device = model.lm_head.weight.device
    stop_token = sampling.get("stop_token")
    new_tokens: list[list[int]] = [[] for _ in prompts]
    for i, rows in enumerate(rows_of_length.values()):
        idx = torch.tensor([prompts[row] for row in rows], device=device)  # (rows, T)
        batch_seed = None if seed is None else seed + i
        new = generate(model, idx, max_new_tokens, seed=batch_seed, **sampling)[:, idx.size(1) :]  # (rows, n)
        for row, tokens in zip(rows, new.tolist(), strict=True):
            new_tokens[row] = tokens[: tokens.index(stop_token)] if stop_token in tokens else tokens
    return new_tokens


def encode_prompt(enc: tiktoken.Encoding, text: str) -> list[int]:
    """A prompt's token ids; an empty prompt starts from <|endoftext|>, as a new document does.

    Special tokens are not read from prompt text: one written in it is an error, not silently one token (or
    thirteen). So is a character the encoding has no bytes for.
    """
    if not text:
        return [enc.eot_token]
    if written := sorted(s for s in enc.special_tokens_set if s in text):
        raise UserError(
            f"the prompt contains the special token {written[0]}: remove it (an empty prompt starts from it)"
        )
    # tiktoken aborts with a Rust panic, not an exception, on a byte outside the encoding: check first.
    if missing := sorted(ch for ch in set(text) if not all(_is_token(enc, bytes([b])) for b in ch.encode())):
        raise UserError(
            f"the prompt has characters tokenizer {enc.name!r} cannot encode: {''.join(missing)!r}; remove them"
        )
    return enc.encode_ordinary(text)


def _is_token(enc: tiktoken.Encoding, piece: bytes) -> bool:
    try:
        enc.encode_single_token(piece)
    except KeyError:
        return False
    return True


class TokenDecoder:
    """Text of tokens fed one at a time: a character whose bytes span several tokens comes out once complete."""

    def __init__(self, enc: tiktoken.Encoding):
        self.enc = enc
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def decode(self, token: int) -> str:
        return self.utf8.decode(self.enc.decode_single_token_bytes(token))

    def flush(self) -> str:
        """What is left: an incomplete character at the end becomes U+FFFD."""
        return self.utf8.decode(b"", final=True)
