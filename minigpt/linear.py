"""`Linear`: `nn.Linear`, with its CPU inference products chosen by row count and weight layout.

nn.Linear computes x Wᵀ for x (M, in) and its weight W (out, in), row-major, through MKL's sgemm on the CPU; these
are the products decoding runs, M being the batch. With a few rows sgemm's set-up, not the arithmetic, sets the
time: with x Wᵀ it packs the whole weight into its own layout at every call. Two ways round it, measured through
one decoding step's products of GPT-2 small, each block its own weights, on a 2-core Xeon with 1 and 2 threads
(`python benchmarks/bench_generate.py --linear-rows ...`; benchmarks/RESULTS.md, section 4), speed-ups over x Wᵀ:

    rows                     1     2     3     4     5     6     7     8     16    32    64
    (W xᵀ)ᵀ      2 threads   0.96  0.56  0.60  0.94  0.96  0.99  1.25  1.27  1.02  1.05  1.02
                 1 thread    0.97  0.52  0.55  1.06  0.93  0.97  1.28  1.33  1.05  1.01  1.04
    W (in, out)  2 threads   1.06  0.79  0.73  1.20  1.14  1.24  1.41  1.65  1.07  1.06  1.05
                 1 thread    1.04  0.92  0.97  1.59  1.32  1.32  1.52  1.56  1.02  1.08  1.21

The second is GPT-2's Conv1D layout: W is a transposed view of it, and x Wᵀ a product with a row-major right
operand, which sgemm takes as it is. `store_input_major` stores a model's weights so (values, shapes and
state_dict keys stay nn.Linear's); sample.py does it for the batch sizes in INPUT_MAJOR_ROWS. A row-major weight
takes (W xᵀ)ᵀ for WEIGHT_FIRST_ROWS. Training (with gradients), GPUs and compiled code (which chooses its own
kernels) take nn.Linear's path.
"""

import torch
import torch.nn.functional as F
from torch import nn

WEIGHT_FIRST_ROWS = range(7, 33)  # row counts where (W xᵀ)ᵀ is the faster product of a row-major weight
INPUT_MAJOR_ROWS = (1, 4, 5, 6, 7, 8)  # decoding batch sizes that run faster on weights stored (in, out)


class Linear(nn.Linear):
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
def store_input_major(model: nn.Module) -> nn.Module:
    """model, each `Linear` weight stored (in, out) row-major in place: the same values, faster CPU decoding.

    For a model that only generates: training it still works, with each step's weight gradients in this layout
    too. A weight shared with an embedding (the tied LM head) moves with it; looking up a token then reads one
    column, which costs little next to the product.
    """
    for module in model.modules():
        if isinstance(module, Linear) and module.weight.is_contiguous():
            module.weight.data = module.weight.t().contiguous().t()  # (out, in) viewed on (in, out) storage
    return model
