"""Generation: the KV cache against recomputing, the sampling controls, streaming, and the prompt text helpers."""

import copy
import math
import sys
from pathlib import Path

import pytest
import tiktoken
import torch
from torch._dynamo.testing import CompileCounterWithBackend
from torch.profiler import ProfilerActivity, profile

import minigpt.generate
import minigpt.model
from minigpt.attention import CausalSelfAttention, KVCache, cache_mask, causal_mask
from minigpt.generate import (
    TokenDecoder,
    check_sampling,
    encode_prompt,
    generate,
    generate_each,
    sample_next,
    stream,
)
from minigpt.model import GPT, GPTConfig

VOCAB, BLOCK = 97, 16


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32)).eval()


def greedy_by_recomputing(model: GPT, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """The reference: the whole context (its last block_size tokens) through the model at every step."""
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits, _ = model(idx[:, -model.config.block_size :])
            idx = torch.cat([idx, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    return idx


# --- the KV cache ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("B,T", [(1, 1), (3, 5), (2, BLOCK), (2, BLOCK + 4)])
def test_greedy_with_cache_equals_recomputing_across_the_window(model, B, T):
    """40 new tokens cross block_size=16 from every prompt length, so the window slides (re-prefills) too."""
    idx = torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(T))
    expected = greedy_by_recomputing(model, idx, 40)
    assert torch.equal(generate(model, idx, 40, temperature=0), expected)
    assert torch.equal(generate(model, idx, 40, temperature=0, use_cache=False), expected)


@pytest.fixture
def as_on_a_gpu(monkeypatch):
    """Decoding as with the model on a GPU: `GPT._cache_keys` takes the path that never reads input_pos."""
    monkeypatch.setattr(minigpt.model, "free_to_read", lambda t: False)


@pytest.mark.parametrize("gpu_path", [False, True], ids=["positions read", "positions not read"])
def test_cached_logits_equal_full_forward_at_every_position(model, request, gpu_path):
    if gpu_path:
        request.getfixturevalue("as_on_a_gpu")
    idx = torch.randint(0, VOCAB, (2, BLOCK), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, _ = model(idx)  # (2, BLOCK, vocab)
        model.setup_kv_cache(2)
        # Each call's logits after its last token: the prefill's at position 5, then one step's at each position.
        logits = [model.decode(idx[:, :6], torch.arange(6))]
        logits += [model.decode(idx[:, t : t + 1], torch.tensor([t])) for t in range(6, BLOCK)]
        model.clear_kv_cache()
    torch.testing.assert_close(torch.stack(logits, dim=1), full[:, 5:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "all_slots, masked",
    [(True, True), (False, True), (False, False)],
    ids=["all slots, masked", "written slots, masked", "written slots, no mask"],
)
def test_decode_step_never_sees_unwritten_or_stale_cache_slots(all_slots, masked):
    """Slots after the query's position hold garbage here (a previous window's keys, in generation). A step attends
    to all max_len slots under a mask (compiled), or to the slots written so far (eager), which one query at the
    last of them may see without a mask."""
    torch.manual_seed(0)
    layer = CausalSelfAttention(32, 4).eval()
    x = torch.randn(2, 8, 32)
    with torch.no_grad():
        expected = layer(x)
        layer.kv_cache = KVCache(2, 4, 12, 8)
        layer.kv_cache.k_cache.fill_(1e4)
        layer.kv_cache.v_cache.fill_(-1e4)
        prefill = layer(x[:, :5], input_pos=torch.arange(5))  # no mask: positions 0..4 attend causally
        steps = []
        for t in range(5, 8):
            pos = torch.tensor([t])
            n_keys = 12 if all_slots else t + 1
            mask = cache_mask(pos, n_keys) if masked else None
            steps.append(layer(x[:, t : t + 1], input_pos=pos, mask=mask, n_keys=n_keys))
    torch.testing.assert_close(torch.cat([prefill, *steps], dim=1), expected, atol=1e-5, rtol=1e-5)


def test_cache_mask_generalises_causal_mask():
    assert torch.equal(cache_mask(torch.arange(6), 6), causal_mask(6))
    row = cache_mask(torch.tensor([3]), 8)  # the decode step at position 3 of an 8-slot cache
    assert row.tolist() == [[True] * 4 + [False] * 4]


def test_decoding_attends_to_the_written_slots(model, monkeypatch):
    """The keys each query of `GPT.decode` sees: a prefill from position 0, its own, causally (the fused kernel's
    causal path); a step at position 3 after it, the 4 slots written, every one (no mask); on the path that never
    reads the positions, all max_len slots with only those 4 allowed."""
    model.setup_kv_cache(1)
    try:
        assert model._cache_keys(torch.arange(3)) == (None, None)
        assert model._cache_keys(torch.tensor([3])) == (4, None)
        monkeypatch.setattr(minigpt.model, "free_to_read", lambda t: False)
        n_keys, mask = model._cache_keys(torch.tensor([3]))
        assert n_keys == BLOCK and mask.tolist() == [[True] * 4 + [False] * (BLOCK - 4)]
        n_keys, mask = model._cache_keys(torch.arange(3))
        assert n_keys == BLOCK and torch.equal(mask[:, :3], causal_mask(3)) and not mask[:, 3:].any()
    finally:
        model.clear_kv_cache()


def test_generation_sizes_the_cache_to_what_it_needs(model):
    """The prompt's positions and every new token's but the last, capped at block_size."""
    for T, new, expected in [(3, 5, 7), (1, 1, 1), (10, 7, BLOCK), (BLOCK + 5, 2, BLOCK)]:
        steps = stream(model, torch.zeros(2, T, dtype=torch.long), new)
        next(steps)
        cache = model.transformer.h[0].attn.kv_cache
        assert cache.k_cache.shape == cache.v_cache.shape == (2, 2, expected, 16)  # (B, nh, max_len, hs)
        steps.close()
    model.setup_kv_cache(1, max_len=4)
    try:
        with pytest.raises(ValueError, match="position 4 is past the KV cache's 4 slots"):
            model.decode(torch.zeros(1, 5, dtype=torch.long), torch.arange(5))
    finally:
        model.clear_kv_cache()
    with pytest.raises(ValueError, match=rf"max_len=17 must be in \[1, block_size={BLOCK}\]"):
        model.setup_kv_cache(1, max_len=BLOCK + 1)


def test_the_gpu_path_gives_the_cpu_paths_tokens(model, monkeypatch):
    """Greedy and sampled, for 20 tokens after 5: past block_size=16, so the window re-prefills too."""
    idx = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(3))
    samplings = [dict(temperature=0), dict(seed=4, top_k=20, top_p=0.9)]
    on_cpu_path = [generate(model, idx, 20, **sampling) for sampling in samplings]
    monkeypatch.setattr(minigpt.model, "free_to_read", lambda t: False)
    for sampling, expected in zip(samplings, on_cpu_path, strict=True):
        assert torch.equal(generate(model, idx, 20, **sampling), expected)


HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")
MINIGPT = str(Path(minigpt.model.__file__).parent)


def host_reads_while_generating(model: GPT, monkeypatch, max_new_tokens: int, **sampling) -> list[str]:
    """The calls reading a tensor's value on the host (a wait for the GPU, for a GPU tensor) made from minigpt's
    code, directly or through torch's Python, in a generation of max_new_tokens without a stop token."""
    calls = []

    def counting(name):
        method = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            frame = sys._getframe(1)
            while frame is not None and not frame.f_code.co_filename.startswith(MINIGPT):
                frame = frame.f_back
            if frame is not None:
                calls.append(f"{name} at {frame.f_code.co_filename}:{frame.f_lineno}")
            return method(self, *args, **kwargs)

        return wrapper

    with monkeypatch.context() as patched:
        for name in HOST_READS:
            patched.setattr(torch.Tensor, name, counting(name))
        generate(model, torch.zeros(2, 3, dtype=torch.long), max_new_tokens, **sampling)
    return calls


@pytest.mark.parametrize("sampling", [dict(temperature=0), dict(seed=0, top_k=5, top_p=0.9)], ids=["greedy", "sampled"])
def test_decoding_on_the_gpu_path_reads_nothing_on_the_host(model, monkeypatch, sampling):
    """The CPU path reads the last position at every step, which the counting sees; the GPU path reads nothing."""
    assert len(host_reads_while_generating(model, monkeypatch, 30, **sampling)) == 30
    assert len(host_reads_while_generating(model, monkeypatch, 10, **sampling)) == 10
    monkeypatch.setattr(minigpt.model, "free_to_read", lambda t: False)
    assert host_reads_while_generating(model, monkeypatch, 30, **sampling) == []


def test_sampling_reads_on_the_host_only_in_multinomials_device_asserts(model, as_on_a_gpu):
    """Below Python: of the ops a sampled generation runs, only torch.multinomial's checks of the probabilities
    read a value (`_local_scalar_dense`); they are `_assert_async`, which on a GPU asserts there without waiting."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        generate(model, torch.zeros(2, 3, dtype=torch.long), 10, seed=0, top_k=5, top_p=0.9)
    for event in [event for event in prof.events() if event.name == "aten::_local_scalar_dense"]:
        callers = []
        while (event := event.cpu_parent) is not None:
            callers.append(event.name)
        assert "aten::_assert_async" in callers, callers


def test_compiled_generation_keeps_one_shape_per_step(model):
    """Under torch.compile every decoding step attends to all cache slots under a mask, so the steps share one graph:
    the prefill and the one-token step are all that is compiled (dynamic=False would recompile on any new shape).
    Compiling the model in place compiles its forward, training's graph: decoding compiles `GPT.decode`."""
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    decode = torch.compile(model.decode, backend=counting_backend, dynamic=False, fullgraph=True)
    idx = torch.randint(0, VOCAB, (2, 3), generator=torch.Generator().manual_seed(2))
    assert torch.equal(generate(model, idx, 10, temperature=0, decode=decode), greedy_by_recomputing(model, idx, 10))
    assert len(graphs) == 2
    torch._dynamo.reset()


def test_generation_compiled_through_aot_autograd(model):
    """aot_eager runs AOTAutograd, the front end of the default backend (Inductor) on a GPU too, without Inductor's
    code generation: the KV cache's in-place index_copy_ under inference_mode and the attention's boolean mask go
    through its functionalization. Compiled as sample.py compiles (`torch.compile(model.decode)`, default settings),
    greedy and sampled tokens are eager's, from two graphs (prefill, step): no recompiling per token."""
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    decode = torch.compile(model.decode, backend=counter)
    idx = torch.randint(0, VOCAB, (2, 3), generator=torch.Generator().manual_seed(2))
    for sampling in (dict(temperature=0), dict(seed=1, top_k=20, top_p=0.9)):
        assert torch.equal(generate(model, idx, 10, decode=decode, **sampling), generate(model, idx, 10, **sampling))
    assert counter.frame_count == 2
    torch._dynamo.reset()


def test_cache_leaves_state_dict_alone_and_clears(model):
    keys = set(model.state_dict())
    model.setup_kv_cache(2)
    assert set(model.state_dict()) == keys
    assert model.transformer.h[0].attn.kv_cache.k_cache.shape == (2, 2, BLOCK, 16)  # (B, nh, block_size, hs)
    with pytest.raises(ValueError, match="input_pos"):
        model(torch.zeros(2, 3, dtype=torch.long))  # a cache is set: training-style calls are refused
    model.clear_kv_cache()
    with pytest.raises(ValueError, match="setup_kv_cache"):
        model.decode(torch.zeros(2, 3, dtype=torch.long), torch.arange(3))
    logits, _ = model(torch.zeros(2, 3, dtype=torch.long))
    assert logits.shape == (2, 3, VOCAB)


def test_decode_gives_the_last_positions_logits(model):
    """A prefill through decode: the logits after the last token only, those of the forward's last position."""
    idx = torch.randint(0, VOCAB, (2, 7))
    with torch.no_grad():
        full, loss = model(idx)
        model.setup_kv_cache(2)
        try:
            last = model.decode(idx, torch.arange(7))
        finally:
            model.clear_kv_cache()
    assert last.shape == (2, VOCAB) and loss is None
    torch.testing.assert_close(last, full[:, -1], atol=1e-6, rtol=0)


# --- sampling -----------------------------------------------------------------------------------------------
PROBS = torch.tensor([0.05, 0.5, 0.15, 0.3])  # ranked: 1, 3, 2, 0


def support(draws: torch.Tensor) -> set[int]:
    return set(draws.unique().tolist())


@pytest.mark.parametrize(
    "top_k,top_p,expected",
    [
        (None, None, {0, 1, 2, 3}),
        (2, None, {1, 3}),
        (1, None, {1}),
        (None, 0.4, {1}),  # the most likely token alone holds 0.5
        (None, 0.7, {1, 3}),  # 0.5 < 0.7 <= 0.8
        (None, 0.9, {1, 3, 2}),
        (None, 1.0, {0, 1, 2, 3}),
        (2, 0.4, {1}),
    ],
)
def test_top_k_and_top_p_restrict_the_support(top_k, top_p, expected):
    logits = PROBS.log().expand(4000, 4)  # 4000 draws in one batch
    draws = sample_next(logits, 1.0, top_k, top_p, torch.Generator().manual_seed(0))
    assert support(draws) == expected


def test_temperature_sharpens_and_zero_is_argmax():
    logits = PROBS.log().expand(4000, 4)
    gen = torch.Generator().manual_seed(0)
    hot = (sample_next(logits, 1.0, generator=gen) == 1).float().mean()
    cold = (sample_next(logits, 0.25, generator=gen) == 1).float().mean()
    assert hot == pytest.approx(0.5, abs=0.04)
    assert cold == pytest.approx(0.5**4 / (PROBS**4).sum().item(), abs=0.03)  # p^(1/T) renormalised: 0.88
    assert torch.equal(sample_next(logits[:3], 0.0), torch.tensor([1, 1, 1]))


def test_bfloat16_logits_sample_as_their_float32_values(model):
    """A bfloat16 model's logits give the tokens their exact float32 values give, for the same seed."""
    idx = torch.randint(0, VOCAB, (64, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = copy.deepcopy(model).to(torch.bfloat16)(idx)[0][:, -1]  # (64, vocab)
    assert logits.dtype == torch.bfloat16
    for sampling in (dict(), dict(temperature=0.7, top_k=20), dict(top_p=0.9)):
        tokens = sample_next(logits, generator=torch.Generator().manual_seed(1), **sampling)
        assert torch.equal(tokens, sample_next(logits.float(), generator=torch.Generator().manual_seed(1), **sampling))


def test_temperature_is_applied_in_float32():
    """3.984375 > 3.96875, neighbours in bfloat16: divided by 0.8 in bfloat16 both round to 4.96875, a tie that
    top_k=1 would keep both sides of. In float32 the larger alone is the top token."""
    logits = torch.tensor([3.984375, 3.96875], dtype=torch.bfloat16).expand(1000, 2)
    assert torch.equal((logits[0] / 0.8)[0], (logits[0] / 0.8)[1])  # the tie, in bfloat16
    draws = sample_next(logits, 0.8, top_k=1, generator=torch.Generator().manual_seed(0))
    assert support(draws) == {0}


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(temperature=-0.5), r"temperature=-0.5"),
        (dict(temperature=math.nan), r"temperature=nan"),
        (dict(temperature=1.0, top_p=0.0), r"top_p=0.0 must be in \(0, 1\]"),
        (dict(temperature=1.0, top_p=1.5), r"top_p=1.5"),
        (dict(temperature=1.0, top_k=0), r"top_k=0"),
    ],
)
def test_bad_sampling_settings_are_value_errors(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_sampling(**kwargs)
    with pytest.raises(ValueError, match=message):
        generate(model, torch.zeros(1, 1, dtype=torch.long), 3, **kwargs)


def test_same_seed_same_tokens_and_a_batch_of_different_samples(model):
    idx = torch.zeros(4, 1, dtype=torch.long)
    a = generate(model, idx, 30, seed=7, top_p=0.95)
    assert torch.equal(a, generate(model, idx, 30, seed=7, top_p=0.95))
    assert not torch.equal(a, generate(model, idx, 30, seed=8, top_p=0.95))
    assert len({tuple(row) for row in a.tolist()}) == 4  # several samples in one batch, each its own


def test_top_k_one_is_greedy(model):
    idx = torch.randint(0, VOCAB, (2, 3))
    assert torch.equal(generate(model, idx, 20, top_k=1, seed=3), generate(model, idx, 20, temperature=0))


def test_stop_token_ends_each_sequence_and_then_the_stream(model):
    idx = torch.randint(0, VOCAB, (2, 4), generator=torch.Generator().manual_seed(5))
    free = generate(model, idx, 30, temperature=0)[:, 4:].tolist()
    stop = free[0][3]
    stopped = generate(model, idx, 30, temperature=0, stop_token=stop)[:, 4:].tolist()
    ends = [row.index(stop) if stop in row else None for row in free]
    for row, free_row, end in zip(stopped, free, ends, strict=True):
        if end is None:
            assert row == free_row
        else:
            assert row[: end + 1] == free_row[: end + 1] and set(row[end:]) == {stop}
    assert len(stopped[0]) == (30 if None in ends else max(ends) + 1)


def test_stream_yields_step_by_step_and_clears_the_cache_when_closed(model):
    steps = stream(model, torch.zeros(3, 2, dtype=torch.long), 50, seed=0)
    first = next(steps)
    assert first.shape == (3,) and first.dtype == torch.long
    assert model.transformer.h[0].attn.kv_cache is not None  # generating
    steps.close()
    assert model.transformer.h[0].attn.kv_cache is None
    assert torch.equal(generate(model, torch.zeros(1, 2, dtype=torch.long), 0), torch.zeros(1, 2, dtype=torch.long))


def test_streamed_tokens_are_ordinary_tensors(model):
    """The model runs under inference_mode, but what the caller gets may be changed in place and fed to autograd."""
    tokens = generate(model, torch.zeros(2, 3, dtype=torch.long), 5, seed=0)
    assert not tokens.is_inference()
    tokens[:, 0] = 1  # in place
    _, loss = model(tokens[:, :-1], targets=tokens[:, 1:])
    loss.backward()  # the embedding saves the ids for backward
    assert model.transformer.wte.weight.grad is not None
    model.zero_grad(set_to_none=True)


def test_generate_each_batches_by_length_and_keeps_the_input_order(model, monkeypatch):
    prompts = [[1, 2, 3], [4], [5, 6, 7], [8] * (BLOCK + 2), [9]]  # lengths 3, 1, 3, 18 (past block_size), 1
    alone = [generate(model, torch.tensor([ids]), 12, temperature=0)[0, len(ids) :].tolist() for ids in prompts]
    batches, real_stream = [], minigpt.generate.stream

    def spy(model, idx, *args, **kwargs):
        batches.append(idx.tolist())
        return real_stream(model, idx, *args, **kwargs)

    monkeypatch.setattr(minigpt.generate, "stream", spy)
    assert generate_each(model, prompts, 12, temperature=0) == alone
    assert batches == [[[1, 2, 3], [5, 6, 7]], [[4], [9]], [[8] * (BLOCK + 2)]]  # in the order of their first prompt

    stop = alone[0][4]
    stopped = generate_each(model, prompts, 12, temperature=0, stop_token=stop)
    for tokens, free in zip(stopped, alone, strict=True):  # each up to its stop token, which is left out
        assert tokens == (free[: free.index(stop)] if stop in free else free)
    sampled = generate_each(model, prompts, 12, seed=5, top_p=0.9)
    assert sampled == generate_each(model, prompts, 12, seed=5, top_p=0.9)
    assert sampled[1:2] == [generate(model, torch.tensor([[4], [9]]), 12, seed=6, top_p=0.9)[0, 1:].tolist()]


# --- text on either side -------------------------------------------------------------------------------
BYTES = tiktoken.Encoding(
    name="bytes",
    pat_str=r"[\s\S]{1,256}",
    mergeable_ranks={bytes([i]): i for i in range(256)},
    special_tokens={"<|endoftext|>": 256},
)
ASCII = tiktoken.Encoding(  # a restricted vocabulary: printable ASCII only
    name="ascii",
    pat_str=r"[\s\S]{1,256}",
    mergeable_ranks={bytes([i]): i - 32 for i in range(32, 127)},
    special_tokens={"<|endoftext|>": 95},
)


def test_encode_prompt():
    assert encode_prompt(BYTES, "") == [256]  # an empty prompt starts a new document
    assert encode_prompt(BYTES, "hé") == [104, 0xC3, 0xA9]
    with pytest.raises(ValueError, match=r"special token <\|endoftext\|>"):
        encode_prompt(BYTES, "one<|endoftext|>two")
    with pytest.raises(ValueError, match=r"tokenizer 'ascii' cannot encode: 'é€'"):
        encode_prompt(ASCII, "café €5")


def test_token_decoder_waits_for_whole_characters():
    decoder = TokenDecoder(BYTES)
    pieces = [decoder.decode(t) for t in "a€".encode()]  # € is three byte tokens
    assert pieces == ["a", "", "", "€"]
    assert decoder.decode(0xE2) == "" and decoder.flush() == "\ufffd"
    assert TokenDecoder(BYTES).decode(256) == "<|endoftext|>"
