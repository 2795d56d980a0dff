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

On random tokens of one length n shown twice, a head that looks n - 1 tokens back lands on every induction key
and copies the right token, without doing induction. `InductionProbes` holds such sequences at three lengths and
averages the scores, the induction loss and the head ablation over them: a head keyed on one distance is right at
one length only, and scores a third of what an induction head does.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from minigpt.attention import CausalSelfAttention, causal_mask, scaled_dot_product_attention

SCORES = ("previous_token", "duplicate_token", "induction")
# Random tokens shown twice need at least 3 for the three patterns to fall on different cells: with 1 the
# duplicate key is the previous one, with 2 the induction key is.
MIN_REPEATED_TOKENS = 3
# The longest of three probe lengths, spaced from about half of it up: 5 is the least with three distinct (5, 4, 3).
MIN_LONGEST_PROBE = 5
SCORE_PROBE_TOKENS = 32  # the longest probe by default, where block_size and the text allow
INDUCTION_SEQUENCES = 8  # per length: the loss at a length is a mean over 8 x (length - 1) predictions
REPEATS_SEED = 1234  # the random tokens of the score probes and the induction sequences
ABLATION = "induction_ablation"  # the head ablation's name beside the head scores


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


def repeated_random_tokens(
    candidates: torch.Tensor, n_tokens: int, count: int = 1, seed: int = 0, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """count sequences of n_tokens distinct ids drawn from candidates (V,), each followed by itself: (count, 2n).

    weights (V,): how often each candidate is drawn relative to the others (e.g. its count in a text), None for
    evenly; the ids of one sequence are drawn one after another without replacement. Seeded with its own
    generator: the same sequences every call, and the global random state is left alone.
    """
    if not MIN_REPEATED_TOKENS <= n_tokens <= candidates.numel():
        raise ValueError(
            f"n_tokens={n_tokens} must lie in [{MIN_REPEATED_TOKENS}, {candidates.numel()}] (the candidate ids)"
        )
    weights = torch.ones(candidates.numel()) if weights is None else weights.double().cpu()
    generator = torch.Generator().manual_seed(seed)
    picks = torch.stack(
        [torch.multinomial(weights, n_tokens, replacement=False, generator=generator) for _ in range(count)]
    )  # (count, n): indices into candidates
    half = candidates.cpu()[picks]  # (count, n)
    return torch.cat([half, half], dim=1)  # (count, 2n)


def probe_lengths(longest: int) -> tuple[int, int, int]:
    """Three lengths of random halves, longest first: longest, about half of it (at least MIN_REPEATED_TOKENS) and
    the one midway. 32 gives (32, 24, 16)."""
    if longest < MIN_LONGEST_PROBE:
        raise ValueError(f"the longest probe must hold at least {MIN_LONGEST_PROBE} tokens, got {longest}")
    shortest = max(MIN_REPEATED_TOKENS, (longest + 1) // 2)
    return longest, (longest + shortest) // 2, shortest


@dataclass(frozen=True)
class InductionProbes:
    """Random tokens shown twice at the three `probe_lengths`, for measures no fixed distance can fake.

    Each measure is the mean over the lengths of its value at each length: head scores on the first sequence of a
    length, the induction loss and the head ablation on all of them.
    """

    sequences: tuple[torch.Tensor, ...]  # per length, longest first: (count, 2n)

    @classmethod
    def draw(
        cls, candidates: torch.Tensor, longest: int, count: int, seed: int, weights: torch.Tensor | None = None
    ) -> "InductionProbes":
        """count sequences of each length drawn by `repeated_random_tokens` (a seed of its own per length)."""
        return cls(
            tuple(
                repeated_random_tokens(candidates, n, count, seed + i, weights)
                for i, n in enumerate(probe_lengths(longest))
            )
        )

    @property
    def lengths(self) -> tuple[int, ...]:
        return tuple(tokens.size(1) // 2 for tokens in self.sequences)

    def head_scores(self, model) -> dict[str, torch.Tensor]:
        """`head_scores` of `model` (a GPT), name -> (n_layer, n_head), averaged over the lengths."""
        per_length = [head_scores(model, tokens[0]) for tokens in self.sequences]
        return {name: torch.stack([scores[name] for scores in per_length]).mean(dim=0) for name in SCORES}

    def induction_loss(self, model) -> torch.Tensor:
        """`induction_loss` of `model` (a GPT), averaged over the lengths."""
        return torch.stack([induction_loss(model, tokens) for tokens in self.sequences]).mean()

    def head_ablation(self, model) -> torch.Tensor:
        """`head_ablation` of `model` (a GPT), (n_layer, n_head), averaged over the lengths."""
        return torch.stack([head_ablation(model, tokens) for tokens in self.sequences]).mean(dim=0)


def induction_targets(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets (B, 2n - 1) each for tokens (B, 2n), random halves shown twice: the targets are the
    second halves' tokens but their first, every other target -1 (ignored by the loss).

    The second half's first token is left out: nothing before it says what it is. Every later one is the token
    that followed the previous one in the first half, so a model that does induction predicts it. Without, it
    can do no better than guess among the tokens it has seen.
    """
    n = tokens.size(1) // 2
    x, y = tokens[:, :-1], tokens[:, 1:].clone()  # (B, 2n - 1) each: y[:, j] is token j + 1
    y[:, :n] = -1  # ignored: the first half's tokens and the second half's first
    return x, y


def induction_loss(model, tokens: torch.Tensor) -> torch.Tensor:
    """Mean loss of `model` (a GPT) on the second halves of tokens (B, 2n), random halves shown twice (the targets
    of `induction_targets`)."""
    x, y = induction_targets(tokens.to(model.lm_head.weight.device))
    with evaluating(model):
        # forward, not __call__: training compiles the model in place (GPTModule), and __call__ would run the
        # compiled graph, which these shapes, not training's, would make compile a second time.
        _, loss = model.forward(x, y)
    return loss


def head_ablation(model, tokens: torch.Tensor) -> torch.Tensor:
    """How much `induction_loss(model, tokens)` rises when each head's output is zeroed: (n_layer, n_head), CPU.

    A head is zeroed as TransformerLens's zero-ablation of `hook_z` does: its slice of the heads' outputs, side by
    side before the output projection `c_proj`, is set to 0 (the projection's bias stays). The rest of the model
    runs as it is, so the rise is the head's whole effect on the loss, through every later layer. Positive: the
    model needs the head to do induction; about 0: it does not use it there; negative: the head hurts.

    Each layer runs its blocks once for all its heads: the residual stream before layer L is computed once, then
    the layer and those above it run on n_head copies of it, copy h with head h zeroed (the copies side by side in
    the batch). That is n_head * (n_layer - L) block passes for layer L, about half of n_layer * n_head forwards.
    """
    x, y = induction_targets(tokens.to(model.lm_head.weight.device))  # (B, T) each
    B, T = x.shape
    n_layer, n_head = model.config.n_layer, model.config.n_head
    blocks = model.transformer.h
    rises = torch.zeros(n_layer, n_head)
    with evaluating(model):
        _, clean = model.forward(x, y)
        residual = model.embed(x, torch.arange(T, device=x.device))  # (B, T, C): the stream entering layer 0
        for layer, block in enumerate(blocks):
            keep = 1 - torch.eye(n_head, dtype=residual.dtype, device=residual.device)  # (copy, head): copy h drops h
            handle = block.attn.c_proj.register_forward_pre_hook(zero_heads_hook(keep, n_head))
            try:
                stream = block(residual.repeat(n_head, 1, 1))  # (n_head * B, T, C), copy h first
            finally:
                handle.remove()
            for above in blocks[layer + 1 :]:
                stream = above(stream)
            logits = model.lm_head(model.transformer.ln_f(stream))  # (n_head * B, T, padded vocab)
            losses = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1).float(), y.repeat(n_head, 1).flatten(), ignore_index=-1, reduction="none"
            ).view(n_head, -1)  # (copy, B * T): 0 at ignored targets
            counted = (y != -1).sum()
            rises[layer] = (losses.sum(dim=1) / counted - clean).float().cpu()
            residual = block(residual)  # (B, T, C): the clean stream entering the next layer
    return rises


def zero_heads_hook(keep: torch.Tensor, n_head: int):
    """A forward pre-hook for `c_proj` that multiplies its input, the heads' outputs side by side, (copies * B, T,
    C), head by head by keep (copies, n_head): 0 zeroes a head's slice in that copy, 1 keeps it."""

    def hook(module: torch.nn.Module, args: tuple[torch.Tensor]) -> tuple[torch.Tensor]:
        (z,) = args
        copies = keep.size(0)
        N, T, C = z.shape
        heads = z.view(copies, N // copies, T, n_head, C // n_head)  # (copies, B, T, nh, hs)
        return ((heads * keep[:, None, None, :, None]).view(N, T, C),)

    return hook
