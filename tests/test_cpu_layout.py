"""`minigpt.cpu_layout`: nn.Linear's results and parameters, whichever order it multiplies in and however its weight
is stored; the transform keeps a model's values, state_dict and tied head."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minigpt.cpu_layout import WEIGHT_FIRST_ROWS, CPULinear, for_cpu_decoding
from minigpt.generate import generate
from minigpt.model import GPT, GPTConfig


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 1), (7, 1), (2, 16), (33, 1), (3, 40), (2, 200)])  # rows: 1, 7, 32, 33, 120, 400
def test_equals_nn_linear_for_any_rows(shape, bias):
    torch.manual_seed(0)
    layer = CPULinear(48, 80, bias=bias)
    x = torch.randn(*shape, 48)
    with torch.no_grad():
        y = layer(x)
    assert y.shape == (*shape, 80)
    torch.testing.assert_close(y, F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)


def test_weight_first_only_for_inference_on_the_cpu(monkeypatch):
    """With gradients on, the product is nn.Linear's own, to the bit; without, a few rows go weight first."""
    torch.manual_seed(0)
    layer = CPULinear(48, 80)
    x = torch.randn(WEIGHT_FIRST_ROWS.start, 48)
    real_addmm, left_operands = torch.addmm, []

    def spy(bias, a, b):
        left_operands.append(tuple(a.shape))
        return real_addmm(bias, a, b)

    monkeypatch.setattr(torch, "addmm", spy)
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias)) and left_operands == []
    with torch.no_grad():
        layer(x)
    assert left_operands == [(80, 48)]  # the weight
    assert set(layer.state_dict()) == {"weight", "bias"}


def test_compiles_with_dynamic_rows():
    """Under torch.compile with dynamic shapes the row count is a symbol: the layer still traces (nn.Linear's path)."""
    torch.manual_seed(0)
    layer = CPULinear(48, 80)
    compiled = torch.compile(layer, backend="eager", dynamic=True)  # TorchDynamo's tracing, no code generation
    with torch.no_grad():
        for rows in (8, 16):  # inside WEIGHT_FIRST_ROWS, where eager takes the other order
            x = torch.randn(rows, 48)
            torch.testing.assert_close(compiled(x), F.linear(x, layer.weight, layer.bias))


def test_input_major_weight_multiplies_as_stored():
    """A weight stored (in, out) row-major keeps its values and state_dict, and the products at any row count."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(48, 80))
    expected_state = {k.removeprefix("0."): v.clone() for k, v in model.state_dict().items()}
    for_cpu_decoding(model, input_major=True)
    layer = model[0]
    assert type(layer) is CPULinear
    assert layer.weight.shape == (80, 48) and layer.weight.stride() == (1, 80)
    assert layer.weight.t().is_contiguous()
    assert all(torch.equal(layer.state_dict()[k], v) for k, v in expected_state.items())
    with torch.no_grad():
        for rows in (1, WEIGHT_FIRST_ROWS.start, 64):
            x = torch.randn(rows, 48)
            torch.testing.assert_close(layer(x), x @ expected_state["weight"].t() + expected_state["bias"])


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()


@pytest.mark.parametrize("input_major", [False, True])
def test_the_transform_swaps_every_linear_and_keeps_the_parameters(model, input_major):
    """Every nn.Linear becomes a CPULinear on the same parameters: state_dict keys and values, the tied head, the
    parameter count; the weights' layout is the only change."""
    transformed = for_cpu_decoding(copy.deepcopy(model), input_major=input_major)
    linears = [name for name, m in model.named_modules() if type(m) is nn.Linear]
    assert linears and [name for name, m in transformed.named_modules() if type(m) is CPULinear] == linears
    assert not any(type(m) is nn.Linear for m in transformed.modules())
    assert transformed.lm_head.weight is transformed.transformer.wte.weight
    assert transformed.num_params() == model.num_params()
    for (name, before), after in zip(model.state_dict().items(), transformed.state_dict().values(), strict=True):
        assert torch.equal(before, after), name
    fc = transformed.transformer.h[0].mlp.c_fc.weight
    assert fc.stride() == ((1, 4 * 32) if input_major else (32, 1))  # (in, out) row-major underneath, or (out, in)
    assert for_cpu_decoding(transformed, input_major=input_major) is transformed  # again: nothing left to swap


@pytest.mark.parametrize("input_major", [False, True])
def test_the_transformed_model_gives_the_same_tokens(model, input_major):
    """for_cpu_decoding (sample.py's CPU layout) keeps values, parameters and ties; the tokens do not change."""
    idx = torch.randint(0, 97, (8, 5), generator=torch.Generator().manual_seed(2))  # 8 rows: weight first if row-major
    expected = generate(model, idx, 30, temperature=0)
    relaid = for_cpu_decoding(copy.deepcopy(model), input_major=input_major)
    assert relaid.transformer.h[0].mlp.c_fc.weight.stride() == ((1, 4 * 32) if input_major else (32, 1))
    assert relaid.lm_head.weight is relaid.transformer.wte.weight
    for (name, before), after in zip(model.state_dict().items(), relaid.state_dict().values(), strict=True):
        assert torch.equal(before, after), name
    for batch in (idx[:1], idx):
        assert torch.equal(generate(relaid, batch, 30, temperature=0), expected[: batch.size(0)])
