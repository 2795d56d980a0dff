"""`Linear`: `nn.Linear`, with a product of a few rows on the CPU computed weight first.

nn.Linear computes x Wᵀ for x (M, in) and its weight W (out, in). On the CPU, MKL's sgemm then packs W into its
own layout at every call, and with a handful of rows, as when decoding a batch of B sequences (M = B), packing
costs more than the product. (W xᵀ)ᵀ gives the same numbers up to rounding and packs the small x instead. Through
GPT-2 small's linears (`python benchmarks/bench_generate.py --linear-rows ...`, and benchmarks/NOTES.md, section
4), 7 to 32 rows went 1.2 to 1.5x faster that way on a 2-core Xeon; 1 to 3 rows went slower (x Wᵀ runs as
matrix-vector products there), and from 64 rows on the measurements disagree. Only inference takes the other
order: training (its backward was not measured), GPUs and compiled code (which chooses its own kernels) take
nn.Linear's path. Parameters and state_dict keys are nn.Linear's.
"""

import torch
import torch.nn.functional as F
from torch import nn

WEIGHT_FIRST_ROWS = range(7, 33)  # row counts where (W xᵀ)ᵀ was the faster product on the CPU


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Compiled code first: under dynamic shapes `rows` is symbolic, and a range cannot hold a symbol.
        if torch.compiler.is_compiling() or x.device.type != "cpu" or torch.is_grad_enabled():
            return F.linear(x, self.weight, self.bias)
        rows = x.numel() // self.in_features
        if rows not in WEIGHT_FIRST_ROWS:
            return F.linear(x, self.weight, self.bias)
        x_t = x.reshape(rows, self.in_features).t()  # (in, M)
        if self.bias is None:
            y_t = torch.mm(self.weight, x_t)  # (out, M)
        else:
            y_t = torch.addmm(self.bias[:, None], self.weight, x_t)  # (out, M)
        return y_t.t().reshape(*x.shape[:-1], self.out_features)  # (..., out)
