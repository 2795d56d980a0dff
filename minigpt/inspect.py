"""What attention does, as numbers: a probe's attention weights, head-behaviour scores and the induction loss.

Pure torch, shared by the training callback, `minigpt attention` and the benchmarks. The weights come from running
a GPT's layers with the reference documents' `scaled_dot_product_attention` in place of the fused kernel
(`layer_attention`, `forward_with_attention`): the same outputs, and the weights the kernel never materialises.

The head scores are those of TransformerLens's head detector with its default "mul" measure: for each head, the
share of its whole attention over a sequence (every query, the first included) that falls on the cells of a
pattern of (query, key) pairs:

- `previous_token`: the key just before the query (key = query - 1);
- `duplicate_token`: an earlier key holding the query's token;
- `induction`: the key just after an earlier occurrence of the query's token (the token that followed it then).

On random tokens shown twice (`repeated_random_tokens`), where duplicates and induction are well defined, only
the second half's queries have a duplicate or an induction key: a perfect duplicate-token or induction head
scores 0.5 there, a perfect previous-token head (T - 1) / T.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from minigpt.attention import CausalSelfAttention, causal_mask, scaled_dot_product_attention

SCORES = ("previous_token", "duplicate_token", "induction")
# Random tokens shown twice need at least 3 for the three patterns to fall on different cells: with 1 the
# duplicate key is the previous one, with 2 the induction key is.
MIN_REPEATED_TOKENS = 3


@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) without gradients; the model goes back to the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def layer_attention(
    layer: CausalSelfAttention, x: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's output y (B, T, C) on x (B, T, C) and its attention weights (B, nh, T, T), through the documents'
    `scaled_dot_product_attention`: what the layer computes in eval mode. mask (T, T), True = may attend; causal
    by default. The weights are never dropped out."""
    q, k, v = layer.heads(x)  # (B, nh, T, hs) each
    if mask is None:
        mask = causal_mask(x.size(1), device=x.device)
    y, weights = scaled_dot_product_attention(q, k, v, mask=mask)
    return layer.project(y), weights


def forward_with_attention(model, idx: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """`model` (a GPT) on idx (B, T), each layer's attention through `layer_attention`: the logits (B, T, vocab_size)
    that its forward computes in eval mode, and every layer's attention weights, (B, nh, T, T) each."""
    x = model.embed(idx, torch.arange(idx.size(1), device=idx.device))  # (B, T, C)
    attentions = []
    for block in model.transformer.h:  # Block.forward, its attention computed here
        y, weights = layer_attention(block.attn, block.ln_1(x))
        attentions.append(weights)
        x = block.feed_forward(x + y)
    logits = model.lm_head(model.transformer.ln_f(x))  # (B, T, padded vocab)
    return logits[..., : model.config.vocab_size], attentions


def probe_attention(model, ids: list[int]) -> list[torch.Tensor]:
    """Per-layer attention weights (nh, T, T) of `model` (a GPT) reading `ids` (at most block_size of them)."""
    idx = torch.tensor([ids], device=model.lm_head.weight.device)  # (1, T)
    with evaluating(model):
        # The layers one by one, not the model's __call__: a model compiled in place compiles nothing here.
        _, attentions = forward_with_attention(model, idx)
    return [w[0] for w in attentions]  # per layer (nh, T, T)


def detection_patterns(ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The (query, key) cells of each score's pattern for the token ids (T,): name -> (T, T) bool, causal."""
    T = ids.numel()
    previous = torch.ones(T, T, dtype=torch.bool).tril(-1).triu(-1)  # (T, T): only key = query - 1
    same = ids.view(T, 1).cpu() == ids.view(1, T).cpu()  # (T, T): query's token == key's token
    duplicate = same.tril(-1)  # earlier keys only: a token is not its own duplicate
    induction = torch.zeros_like(duplicate)
    # The key after each duplicate: cell (q, k) when key k - 1 holds q's token; k <= q keeps it causal.
    induction[:, 1:] = duplicate[:, :-1]
    return {"previous_token": previous, "duplicate_token": duplicate, "induction": induction.tril()}


def pattern_scores(attentions: list[torch.Tensor], ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each score of every head: attentions per layer (nh, T, T) over the tokens ids (T,); name -> (n_layer, nh)."""
    weights = torch.stack([w.detach().float().cpu() for w in attentions])  # (n_layer, nh, T, T)
    if weights.shape[-2:] != (ids.numel(), ids.numel()):
        raise ValueError(f"attention over {weights.size(-1)} tokens, but {ids.numel()} token ids")
    total = weights.sum(dim=(-2, -1))  # (n_layer, nh): T for softmax rows
    return {
        name: (weights * pattern).sum(dim=(-2, -1)) / total  # (n_layer, nh)
        for name, pattern in detection_patterns(ids).items()
    }


def head_scores(model, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Previous-token, duplicate-token and induction scores of every head of `model` (a GPT) reading ids (T,).

    Returns name -> (n_layer, n_head) float tensor (on the CPU), each score in [0, 1].
    """
    if ids.ndim != 1 or ids.numel() < 2:
        raise ValueError(f"head scores need a 1-D tensor of at least 2 token ids, got shape {tuple(ids.shape)}")
    return pattern_scores(probe_attention(model, ids.tolist()), ids)


def repeated_random_tokens(candidates: torch.Tensor, n_tokens: int, count: int = 1, seed: int = 0) -> torch.Tensor:
    """count sequences of n_tokens distinct ids drawn from candidates (V,), each followed by itself: (count, 2n).

    Seeded with its own generator: the same sequences every call, and the global random state is left alone.
    """
    if not MIN_REPEATED_TOKENS <= n_tokens <= candidates.numel():
        raise ValueError(
            f"n_tokens={n_tokens} must lie in [{MIN_REPEATED_TOKENS}, {candidates.numel()}] (the candidate ids)"
        )
    generator = torch.Generator().manual_seed(seed)
    picks = torch.stack([torch.randperm(candidates.numel(), generator=generator)[:n_tokens] for _ in range(count)])
    half = candidates.cpu()[picks]  # (count, n)
    return torch.cat([half, half], dim=1)  # (count, 2n)


def induction_loss(model, tokens: torch.Tensor) -> torch.Tensor:
    """Mean loss of `model` (a GPT) on the second halves of tokens (B, 2n), random halves shown twice.

    The second half's first token is left out: nothing before it says what it is. Every later one is the token
    that followed the previous one in the first half, so a model that does induction predicts it. Without, it
    can do no better than guess among the tokens it has seen.
    """
    n = tokens.size(1) // 2
    tokens = tokens.to(model.lm_head.weight.device)
    x, y = tokens[:, :-1], tokens[:, 1:].clone()  # (B, 2n - 1) each: y[:, j] is token j + 1
    y[:, :n] = -1  # ignored: the first half's tokens and the second half's first
    with evaluating(model):
        # forward, not __call__: training compiles the model in place (GPTModule), and __call__ would run the
        # compiled graph, which these shapes, not training's, would make compile a second time.
        _, loss = model.forward(x, y)
    return loss
