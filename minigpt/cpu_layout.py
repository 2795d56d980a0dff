"""Inference-only speed transform for CPU decoding: every `nn.Linear` of a model becomes a `CPULinear`.

nn.Linear computes x Wᵀ for x (M, in) and its weight W (out, in), row-major, through MKL's sgemm on the CPU; these
are the products decoding runs, M being the batch. With a few rows sgemm's set-up, not the arithmetic, sets the
time: with x Wᵀ it packs the whole weight into its own layout at every call. Two ways round it, each faster at
some row counts only (measured speed-ups: benchmarks/RESULTS.md, section 4, `bench_generate.py --linear-rows`):

- (W xᵀ)ᵀ, for a row-major weight at WEIGHT_FIRST_ROWS rows;
- the weight stored (in, out) row-major, GPT-2's Conv1D layout: W is a transposed view of it, and x Wᵀ a product
  with a row-major right operand, which sgemm takes as it is. Faster at the batch sizes in INPUT_MAJOR_ROWS,
  slower at 2 and 3.

`for_cpu_decoding` applies it to a loaded model in place, the way gpt-fast's quantization swaps layers: the same
parameters (values, shapes, state_dict keys, the LM head tied to the token embedding), other products. sample.py
applies it on the CPU. Training (with gradients), GPUs and compiled code (which chooses its own kernels) take
nn.Linear's path.
"""

import torch
import torch.nn.functional as F
from torch import nn

WEIGHT_FIRST_ROWS = range(7, 33)  # row counts where (W xᵀ)ᵀ is the faster product of a row-major weight
INPUT_MAJOR_ROWS = (1, 4, 5, 6, 7, 8)  # decoding batch sizes that run faster on weights stored (in, out)


class CPULinear(nn.Linear):
    """nn.Linear with its CPU inference product chosen by row count and weight layout."""

    @classmethod
    def of(cls, linear: nn.Linear) -> "CPULinear":
        """A CPULinear holding linear's own parameters: shared, not copied, so a tie to an embedding stays."""
        layer = cls(linear.in_features, linear.out_features, bias=False, device="meta")  # no memory of its own
        layer.weight, layer.bias = linear.weight, linear.bias
        return layer.train(linear.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight  # once: a module attribute costs a dictionary lookup in Python at every read
        # Cheapest checks first; compiled code before the row count: under dynamic shapes `rows` is symbolic, and a
        # range cannot hold a symbol.
        if x.is_cpu and not torch.is_grad_enabled() and weight.is_contiguous() and not torch.compiler.is_compiling():
            rows = x.numel() // self.in_features
            if rows in WEIGHT_FIRST_ROWS:
                x_t = x.reshape(rows, self.in_features).t()  # (in, M)
                bias = self.bias
                y_t = torch.mm(weight, x_t) if bias is None else torch.addmm(bias[:, None], weight, x_t)  # (out, M)
                return y_t.t().reshape(*x.shape[:-1], self.out_features)  # (..., out)
        return F.linear(x, weight, self.bias)


@torch.no_grad()
def for_cpu_decoding(model: nn.Module, input_major: bool) -> nn.Module:
    """model, in place: each nn.Linear in it a CPULinear, its weight stored (in, out) row-major if input_major
    (sample.py: when every batch it will decode is in INPUT_MAJOR_ROWS). The same values, faster CPU decoding.

    For a model that only generates: training it still works, with each step's weight gradients in this layout
    too. A weight shared with an embedding (the tied LM head) moves with it; looking up a token then reads one
    column, which costs little next to the product.
    """
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:  # not a subclass, which has a product of its own
                setattr(parent, name, CPULinear.of(child))
    if input_major:
        for module in model.modules():
            if isinstance(module, CPULinear) and module.weight.is_contiguous():
                module.weight.data = module.weight.t().contiguous().t()  # (out, in) viewed on (in, out) storage
    return model
