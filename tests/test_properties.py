"""Properties over random model shapes, sequence lengths and masks (hypothesis): the fused SDPA path and the plain
weights path agree, attention is causal, and generation with the KV cache equals generation without it."""

from unittest import mock

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from minigpt.attention import CausalSelfAttention, KVCache, cache_mask, scaled_dot_product_attention
from minigpt.generate import generate
from minigpt.inspect import forward_with_attention, layer_attention
from minigpt.model import GPT, GPTConfig

# Few examples each (the file runs in seconds), no deadline (CPU timings vary), reproducible runs, and no example
# database written into the working tree.
FEW = settings(max_examples=25, deadline=None, derandomize=True, database=None)
SEEDS = st.integers(0, 2**31 - 1)


@st.composite
def configs(draw, max_block: int = 12) -> GPTConfig:
    n_head = draw(st.integers(1, 4))
    return GPTConfig(
        vocab_size=draw(st.integers(2, 60)),
        block_size=draw(st.integers(1, max_block)),
        n_layer=draw(st.integers(1, 2)),
        n_head=n_head,
        n_embd=n_head * draw(st.integers(1, 8)),  # head sizes 1..8
        dropout=0.0,
        bias=draw(st.booleans()),
    )


def random_model(config: GPTConfig, seed: int, dtype: torch.dtype = torch.float32) -> GPT:
    torch.manual_seed(seed)
    model = GPT(config).to(dtype).eval()
    with torch.no_grad():  # larger weights than GPT-2's init: attention far from uniform, logits far apart
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model


def random_mask(generator: torch.Generator, Tq: int, Tk: int) -> torch.Tensor:
    """(Tq, Tk) bool, True = may attend; every query sees at least one key (else softmax has nothing to weigh)."""
    mask = torch.rand(Tq, Tk, generator=generator) < 0.6
    mask[torch.arange(Tq), torch.randint(0, Tk, (Tq,), generator=generator)] = True
    return mask


# --- the two attention paths -------------------------------------------------------------------------------------


@FEW
@given(
    lead=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    Tq=st.integers(1, 10),
    Tk=st.integers(1, 10),
    d=st.integers(1, 16),
    masked=st.booleans(),
    seed=SEEDS,
)
def test_reference_function_equals_torch_sdpa_under_any_mask(lead, Tq, Tk, d, masked, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(*lead, T, d, generator=g) for T in (Tq, Tk, Tk))
    mask = random_mask(g, Tq, Tk) if masked else None
    out, weights = scaled_dot_product_attention(q, k, v, mask=mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(*lead, Tq))
    if masked:
        assert torch.all(weights[..., ~mask] == 0)


@FEW
@given(config=configs(), B=st.integers(1, 3), T=st.integers(1, 12), masked=st.booleans(), seed=SEEDS)
def test_layer_sdpa_path_equals_weights_path(config, B, T, masked, seed):
    torch.manual_seed(seed)
    layer = CausalSelfAttention(config.n_embd, config.n_head, bias=config.bias).eval()
    x = torch.randn(B, T, config.n_embd)  # (B, T, C)
    mask = random_mask(torch.Generator().manual_seed(seed), T, T) if masked else None
    with torch.no_grad():
        fast = layer(x, mask=mask)
        plain, weights = layer_attention(layer, x, mask=mask)
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
    assert weights.shape == (B, config.n_head, T, T)


@FEW
@given(config=configs(), B=st.integers(1, 2), data=st.data(), seed=SEEDS)
def test_model_paths_agree_and_are_causal(config, B, data, seed):
    """Logits are the same through either attention path, and changing the tokens after position t changes
    nothing at positions <= t (and the attention weights above the diagonal are zero)."""
    T = data.draw(st.integers(1, config.block_size), label="T")
    t = data.draw(st.integers(0, T - 1), label="t")
    model = random_model(config, seed)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, config.vocab_size, (B, T), generator=g)  # (B, T)
    changed = idx.clone()
    changed[:, t + 1 :] = torch.randint(0, config.vocab_size, (B, T - t - 1), generator=g)
    with torch.no_grad():
        fast, _ = model(idx)
        plain, attentions = forward_with_attention(model, idx)
        fast_changed, _ = model(changed)
        plain_changed, _ = forward_with_attention(model, changed)
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_changed[:, : t + 1], fast[:, : t + 1], atol=1e-6, rtol=0)
    torch.testing.assert_close(plain_changed[:, : t + 1], plain[:, : t + 1], atol=1e-6, rtol=0)
    for weights in attentions:  # (B, nh, T, T)
        assert torch.all(weights.triu(diagonal=1) == 0)


# --- the KV cache ------------------------------------------------------------------------------------------------


@FEW
@given(config=configs(), B=st.integers(1, 3), data=st.data(), seed=SEEDS)
def test_cached_attention_equals_attention_over_the_prefix(config, B, data, seed):
    """Feeding a sequence to a layer with a cache, in chunks of any sizes, gives the outputs of one pass."""
    T = data.draw(st.integers(1, config.block_size), label="T")
    cuts = sorted(data.draw(st.sets(st.integers(1, T - 1), max_size=3), label="cuts")) if T > 1 else []
    torch.manual_seed(seed)
    layer = CausalSelfAttention(config.n_embd, config.n_head, bias=config.bias).eval()
    x = torch.randn(B, T, config.n_embd)
    hs = config.n_embd // config.n_head
    with torch.no_grad():
        whole = layer(x)
        layer.kv_cache = KVCache(B, config.n_head, config.block_size, hs)
        chunks = []
        for start, end in zip([0, *cuts], [*cuts, T], strict=True):
            pos = torch.arange(start, end)
            mask = cache_mask(pos, config.block_size)
            chunks.append(layer(x[:, start:end], input_pos=pos, mask=mask, n_keys=config.block_size))
        layer.kv_cache = None
    torch.testing.assert_close(torch.cat(chunks, dim=1), whole, atol=1e-5, rtol=1e-5)


@FEW
@given(config=configs(max_block=8), B=st.integers(1, 3), data=st.data(), seed=SEEDS)
def test_greedy_generation_with_the_cache_equals_without(config, B, data, seed):
    """Greedy tokens with the KV cache are those of recomputing the context at every step, also once the
    sequence outgrows block_size and the window slides. In float64, so that no near-tie of two logits flips."""
    T = data.draw(st.integers(1, config.block_size + 3), label="prompt length")
    new = data.draw(st.integers(1, 2 * config.block_size + 2), label="new tokens")
    model = random_model(config, seed, torch.float64)
    idx = torch.randint(0, config.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))
    cached = generate(model, idx, new, temperature=0)
    recomputed = generate(model, idx, new, temperature=0, use_cache=False)
    assert cached.shape == (B, T + new)
    assert torch.equal(cached, recomputed)


@settings(FEW, max_examples=15)  # three generations per example
@given(config=configs(max_block=8), B=st.integers(1, 4), data=st.data(), seed=SEEDS)
def test_generation_with_the_cache_equals_recomputing_on_either_cache_path(config, B, data, seed):
    """Tokens with the KV cache are those of recomputing the whole context at every step, greedy and sampled
    (top-k, top-p, one seed), for random shapes, batch sizes, prompt lengths and lengths past block_size; on both
    cache paths: eager (a step's keys are the slots written so far) and compiled (every slot, the unwritten ones
    masked; taken here without compiling). In float64, so that no near-tie of two logits flips a token."""
    T = data.draw(st.integers(1, config.block_size + 3), label="prompt length")
    new = data.draw(st.integers(1, 2 * config.block_size + 2), label="new tokens")
    sampling = data.draw(
        st.sampled_from(
            [{"temperature": 0}, {"top_k": 3, "seed": seed}, {"temperature": 0.7, "top_p": 0.8, "seed": seed}]
        ),
        label="sampling",
    )
    model = random_model(config, seed, torch.float64)
    idx = torch.randint(0, config.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))
    recomputed = generate(model, idx, new, use_cache=False, **sampling)
    assert recomputed.shape == (B, T + new)
    assert torch.equal(generate(model, idx, new, **sampling), recomputed)
    with mock.patch.object(torch.compiler, "is_compiling", return_value=True):  # GPT._cache_keys' compiled path
        assert torch.equal(generate(model, idx, new, **sampling), recomputed)
