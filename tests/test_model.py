import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minigpt.attention import CausalSelfAttention
from minigpt.inspect import forward_with_attention
from minigpt.model import GPT, Block, GPTConfig

SMALL = dict(vocab_size=97, block_size=32, n_layer=3, n_head=4, n_embd=32)


def small_gpt(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**SMALL, **overrides}))


def test_gpt2_parameter_names_and_tied_head():
    model = small_gpt()
    names = set(model.state_dict())
    for i in range(3):
        for suffix in (
            "ln_1.weight",
            "ln_1.bias",
            "attn.c_attn.weight",
            "attn.c_attn.bias",
            "attn.c_proj.weight",
            "ln_2.weight",
            "mlp.c_fc.weight",
            "mlp.c_proj.weight",
            "mlp.c_proj.bias",
        ):
            assert f"transformer.h.{i}.{suffix}" in names
    for name in ("transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "lm_head.weight"):
        assert name in names
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.transformer.h[0].attn.c_attn.weight.shape == (3 * 32, 32)


def test_gpt2_small_parameter_count():
    """GPT-2 small: 124,439,808 parameters with the position table, 123,653,376 without (tied head counted once)."""
    model = GPT(GPTConfig())
    assert model.num_params(non_embedding=False) == 124_439_808
    assert model.num_params() == 124_439_808 - 1024 * 768


def test_gpt2_initialisation():
    model = GPT(GPTConfig(vocab_size=5000, block_size=256, n_layer=8, n_head=4, n_embd=256))
    assert model.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.transformer.h[0].mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
    residual_std = 0.02 / math.sqrt(2 * 8)
    for block in model.transformer.h:
        assert block.attn.c_proj.weight.std().item() == pytest.approx(residual_std, rel=0.05)
        assert block.mlp.c_proj.weight.std().item() == pytest.approx(residual_std, rel=0.05)
        assert torch.all(block.attn.c_attn.bias == 0)


def test_init_std_scales_every_initial_weight():
    model = GPT(GPTConfig(vocab_size=5000, block_size=256, n_layer=8, n_head=4, n_embd=256, init_std=0.1))
    assert model.transformer.wte.weight.std().item() == pytest.approx(0.1, rel=0.05)
    assert model.transformer.h[0].attn.c_attn.weight.std().item() == pytest.approx(0.1, rel=0.05)
    assert model.transformer.h[0].attn.c_proj.weight.std().item() == pytest.approx(0.1 / 4, rel=0.05)
    with pytest.raises(ValueError, match="init_std=0 must be > 0"):
        GPTConfig(init_std=0)


def test_attention_only_blocks_have_no_mlp_and_add_only_attention():
    model = small_gpt(mlp=False).eval()
    assert not any(".mlp." in name or ".ln_2." in name for name in model.state_dict())
    block, x = model.transformer.h[0], torch.randn(2, 5, 32)
    torch.testing.assert_close(block(x), x + block.attn(block.ln_1(x)))


def test_sinusoidal_positions_are_vaswanis_table_frozen():
    model = small_gpt(position_embedding="sinusoidal", init_std=0.05)
    table = model.transformer.wpe.weight
    assert not table.requires_grad
    scale = 0.05 * math.sqrt(2)  # the table's standard deviation is init_std, the token embeddings'

    pos, i = 7, 3  # column 2i holds sin(pos / 10000^(2i / C)), column 2i + 1 its cos
    angle = pos / 10000 ** (2 * i / 32)
    assert table[pos, 2 * i].item() == pytest.approx(scale * math.sin(angle), abs=1e-7)
    assert table[pos, 2 * i + 1].item() == pytest.approx(scale * math.cos(angle), abs=1e-7)
    # Training leaves it as it is: no gradient reaches it.
    idx = torch.randint(0, 97, (2, 16))
    _, loss = model(idx, idx)
    loss.backward()
    assert table.grad is None and model.transformer.wte.weight.grad is not None


def test_logits_loss_and_attention_shapes():
    model = small_gpt().eval()
    idx = torch.randint(0, 97, (2, 16))
    logits, loss = model(idx)
    assert logits.shape == (2, 16, 97) and loss is None
    logits_w, attentions = forward_with_attention(model, idx)
    assert len(attentions) == 3 and all(a.shape == (2, 4, 16, 16) for a in attentions)
    torch.testing.assert_close(logits_w, logits, atol=1e-5, rtol=1e-5)
    _, loss = model(idx, targets=idx)
    assert loss.ndim == 0
    torch.testing.assert_close(loss, F.cross_entropy(logits_w.reshape(-1, 97), idx.reshape(-1)), atol=1e-5, rtol=1e-5)


def test_every_linear_layer_is_torch_nn_linear():
    """The model is plain torch: every projection exactly nn.Linear (CPU speed-ups are a transform applied later,
    minigpt.cpu_layout), the LM head included."""
    model = small_gpt()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 3 * 4 + 1  # c_attn, attention c_proj, c_fc, MLP c_proj per block; lm_head
    assert all(type(m) is nn.Linear for m in linears)


def test_one_forward_with_no_return_flags():
    """forward takes the tokens and the targets; the layers' forwards return one tensor, whatever they are given."""
    assert list(inspect.signature(GPT.forward).parameters) == ["self", "idx", "targets"]
    for layer in (Block, CausalSelfAttention):
        assert list(inspect.signature(layer.forward).parameters) == ["self", "x", "input_pos", "mask", "n_keys"]
        assert inspect.signature(layer.forward).return_annotation is torch.Tensor


def test_fresh_model_loss_is_close_to_log_vocab():
    model = small_gpt(vocab_size=257).eval()
    torch.manual_seed(1)
    idx = torch.randint(0, 257, (8, 32))
    targets = torch.randint(0, 257, (8, 32))
    _, loss = model(idx, targets)
    assert loss.item() == pytest.approx(math.log(257), abs=0.1)


def test_loss_ignores_minus_one_targets():
    model = small_gpt().eval()
    idx = torch.randint(0, 97, (1, 8))
    targets = idx.clone()
    targets[:, 4:] = -1
    logits, loss = model(idx, targets)
    expected = torch.nn.functional.cross_entropy(logits[0, :4], targets[0, :4])
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("with_attention", [False, True])
def test_model_is_causal(with_attention):
    """Changing tokens after position t leaves the logits at positions <= t unchanged (the forward, and the
    layers run with the documents' attention)."""
    model = small_gpt().eval()
    torch.manual_seed(2)
    idx = torch.randint(0, 97, (2, 20))
    t = 7
    idx2 = idx.clone()
    idx2[:, t + 1 :] = (idx[:, t + 1 :] + 1) % 97
    run = (lambda idx: forward_with_attention(model, idx)) if with_attention else model
    with torch.no_grad():
        out1 = run(idx)
        out2 = run(idx2)
    torch.testing.assert_close(out1[0][:, : t + 1], out2[0][:, : t + 1], atol=1e-5, rtol=0)
    assert not torch.allclose(out1[0][:, t + 1 :], out2[0][:, t + 1 :])


def test_gradients_reach_every_parameter():
    model = small_gpt(dropout=0.1).train()
    idx = torch.randint(0, 97, (2, 32))
    _, loss = model(idx, torch.randint(0, 97, (2, 32)))
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_sequence_longer_than_block_size_names_both_lengths():
    model = small_gpt()
    with pytest.raises(ValueError, match=r"33.*block_size=32"):
        model(torch.zeros(1, 33, dtype=torch.long))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(n_embd=30, n_head=4), r"n_embd=30.*n_head=4"),
        (dict(n_layer=0), r"n_layer=0"),
        (dict(dropout=1.0), r"dropout=1.0"),
        (dict(pad_vocab_multiple=0), r"pad_vocab_multiple=0"),
    ],
)
def test_bad_config_is_a_clear_value_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**SMALL, **overrides})


def test_padded_vocabulary_rounds_the_tables_up_and_returns_only_real_ids():
    model = small_gpt(pad_vocab_multiple=64)  # 97 ids -> 128 rows
    assert model.config.padded_vocab_size == 128
    assert model.transformer.wte.weight.shape == (128, 32)
    assert model.lm_head.weight is model.transformer.wte.weight
    head_outputs = []
    model.lm_head.register_forward_hook(lambda module, args, out: head_outputs.append(out))
    idx = torch.randint(0, 97, (2, 16))
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 16, 97)
    full = head_outputs[0]  # (2, 16, 128)
    assert torch.equal(logits, full[..., :97])
    # The loss is the cross-entropy over all 128 logits: the padding ids take part in the softmax, unsampled.
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(full.view(32, -1), idx.view(32)).item())


def test_padding_ids_are_never_generated_even_when_their_logits_are_largest():
    from minigpt.generate import generate

    model = small_gpt(pad_vocab_multiple=64).eval()
    with torch.no_grad():
        model.transformer.wte.weight[97:] = 100 * model.transformer.ln_f.weight  # padding logits dominate
    out = generate(model, torch.zeros(4, 1, dtype=torch.long), 20, temperature=1.0, seed=0)
    assert out.max().item() < 97


def test_unpadded_and_padded_models_agree_on_the_real_ids():
    torch.manual_seed(0)
    plain = small_gpt()
    padded = small_gpt(pad_vocab_multiple=128)
    with torch.no_grad():
        state = plain.state_dict()
        for key in ("transformer.wte.weight", "lm_head.weight"):
            state[key] = torch.cat([state[key], torch.full((128 - 97, 32), 0.0)])
        padded.load_state_dict(state)
    idx = torch.randint(0, 97, (2, 16))
    assert torch.allclose(plain(idx)[0], padded(idx)[0], atol=1e-6)
