"""`Linear`: nn.Linear's results and parameters, whichever order it multiplies in and however its weight is stored."""

import pytest
import torch
import torch.nn.functional as F

from minigpt.linear import WEIGHT_FIRST_ROWS, Linear, store_input_major


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 1), (7, 1), (2, 16), (33, 1), (3, 40), (2, 200)])  # rows: 1, 7, 32, 33, 120, 400
def test_equals_nn_linear_for_any_rows(shape, bias):
    torch.manual_seed(0)
    layer = Linear(48, 80, bias=bias)
    x = torch.randn(*shape, 48)
    with torch.no_grad():
        y = layer(x)
    assert y.shape == (*shape, 80)
    torch.testing.assert_close(y, F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)


def test_weight_first_only_for_inference_on_the_cpu(monkeypatch):
    """With gradients on, the product is nn.Linear's own, to the bit; without, a few rows go weight first."""
    torch.manual_seed(0)
    layer = Linear(48, 80)
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
    layer = Linear(48, 80)
    compiled = torch.compile(layer, backend="eager", dynamic=True)  # TorchDynamo's tracing, no code generation
    with torch.no_grad():
        for rows in (8, 16):  # inside WEIGHT_FIRST_ROWS, where eager takes the other order
            x = torch.randn(rows, 48)
            torch.testing.assert_close(compiled(x), F.linear(x, layer.weight, layer.bias))


def test_input_major_weight_multiplies_as_stored():
    """A weight stored (in, out) row-major keeps its values and state_dict, and the products at any row count."""
    torch.manual_seed(0)
    layer = Linear(48, 80)
    expected_state = {k: v.clone() for k, v in layer.state_dict().items()}
    store_input_major(layer)
    assert layer.weight.shape == (80, 48) and layer.weight.stride() == (1, 80)
    assert layer.weight.t().is_contiguous()
    assert all(torch.equal(layer.state_dict()[k], v) for k, v in expected_state.items())
    with torch.no_grad():
        for rows in (1, WEIGHT_FIRST_ROWS.start, 64):
            x = torch.randn(rows, 48)
            torch.testing.assert_close(layer(x), x @ expected_state["weight"].t() + expected_state["bias"])
