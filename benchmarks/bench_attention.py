"""Attention layer, forward + backward: CausalSelfAttention's SDPA path vs its weights path vs nn.MultiheadAttention.

The three compute the same function: the MultiheadAttention gets the layer's own weights (its in_proj is GPT-2's
c_attn, q|k|v stacked), and each output is checked against the weights path in float64 before timing. Timed: the
output and the gradients of the input and of every weight, the three variants interleaved round by round.

    python benchmarks/bench_attention.py                    # CPU, float32, both sizes
    python benchmarks/bench_attention.py --device cuda      # bf16
    python benchmarks/bench_attention.py --quick            # batch 2 at T=256, few repeats (a smoke test)
"""

import argparse
import copy
from collections.abc import Callable

import torch
from common import header, print_table, time_interleaved
from torch import nn

from minigpt.attention import CausalSelfAttention, causal_mask
from minigpt.inspect import layer_attention

SIZES = [(8, 256, 384, 6), (8, 1024, 768, 12)]  # (B, T, C, nh)
QUICK_SIZE = (2, 256, 384, 6)
TARGET = 1.5  # CPU target at SIZES[0]: the SDPA path at least this much faster than the weights path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: float32 on CPU, bfloat16 on GPU")
    parser.add_argument("--sizes", nargs="+", help="B,T,C,nh each (default: 8,256,384,6 8,1024,768,12)")
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds; medians are reported")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="one small size (2,256,384,6), 5 rounds, 1 thread")
    args = parser.parse_args()
    args.sizes = [tuple(int(n) for n in s.split(",")) for s in args.sizes] if args.sizes else SIZES
    if args.quick:
        args.sizes, args.repeats = [QUICK_SIZE], 5
        args.threads = args.threads or 1  # a busy machine stalls two threads at every barrier, not one
    return args


def layer_flops(B: int, T: int, C: int) -> int:
    """Forward + backward FLOPs: projections 2·B·T·C·4C, q·kᵀ and weights·v 2·2·B·T·T·C (full square), x3."""
    return 3 * (8 * B * T * C * C + 4 * B * T * T * C)


Forward = Callable[[torch.Tensor], torch.Tensor]


def variants(layer: CausalSelfAttention, T: int) -> dict[str, tuple[nn.Module, Forward]]:
    """name -> (module, forward of x), each computing the same y (B, T, C)."""
    C, nh = layer.n_embd, layer.n_head
    mha = nn.MultiheadAttention(C, nh, batch_first=True).to(layer.c_attn.weight)
    with torch.no_grad():
        mha.in_proj_weight.copy_(layer.c_attn.weight)  # (3C, C), q|k|v as in c_attn
        mha.in_proj_bias.copy_(layer.c_attn.bias)
        mha.out_proj.weight.copy_(layer.c_proj.weight)
        mha.out_proj.bias.copy_(layer.c_proj.bias)
    # MultiheadAttention's boolean mask means the opposite of ours: True = may NOT attend.
    blocked = ~causal_mask(T, device=layer.c_attn.weight.device)
    return {
        "sdpa": (layer, lambda x: layer(x)),
        "weights": (layer, lambda x: layer_attention(layer, x)[0]),
        "nn.MHA": (mha, lambda x: mha(x, x, x, attn_mask=blocked, need_weights=False, is_causal=True)[0]),
    }


def projections_only(layer: CausalSelfAttention) -> tuple[nn.Module, Forward]:
    """The layer's two projections with no attention between them (q + k + v, a cheap stand-in): the part both
    paths share. Not the layer's function; timed to split each path's time into projections and attention core."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        q, k, v = layer.c_attn(x).split(layer.n_embd, dim=2)  # 3 x (B, T, C)
        return layer.c_proj(q + k + v)

    return layer, forward


def fwd_bwd(module: nn.Module, forward: Forward, x: torch.Tensor, grad_y: torch.Tensor) -> Callable[[], object]:
    """One forward and backward: the output, then the gradients of x and of every weight."""
    inputs = [x, *module.parameters()]
    return lambda: torch.autograd.grad(forward(x), inputs, grad_y)


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    print(header(device, dtype))
    rows, medians = [], {}
    for B, T, C, nh in args.sizes:
        torch.manual_seed(0)
        layer = CausalSelfAttention(C, nh).to(device=device, dtype=dtype)  # dropout 0: every path is deterministic
        x = torch.randn(B, T, C, device=device, dtype=dtype, requires_grad=True)
        grad_y = torch.randn(B, T, C, device=device, dtype=dtype)
        runs = variants(layer, T)

        # Correct first: each output against the weights path in float64 on upcast inputs.
        ref_layer = copy.deepcopy(layer).double()
        with torch.no_grad():
            ref = layer_attention(ref_layer, x.double())[0]
            errors = {name: ((f(x).double() - ref).norm() / ref.norm()).item() for name, (_, f) in runs.items()}

        fns = {name: fwd_bwd(module, forward, x, grad_y) for name, (module, forward) in runs.items()}
        fns["projections"] = fwd_bwd(*projections_only(layer), x, grad_y)
        times = time_interleaved(fns, device, args.repeats)
        flops = layer_flops(B, T, C)
        size = f"{B},{T},{C},{nh}"
        for name, t in times.items():
            ratio = t.median / times["sdpa"].median
            gflops = flops / t.median / 1e9
            error = f"{errors[name]:.1e}" if name in errors else "-"
            rows.append([size, name, str(t), f"{gflops:.0f}" if name in runs else "-", error, f"{ratio:.2f}x"])
        medians[(B, T, C, nh)] = {name: t.median for name, t in times.items()}

    print("\nforward + backward, median of", args.repeats, "interleaved rounds; time relative to sdpa")
    print_table(["B,T,C,nh", "variant", "time", "GFLOP/s", "rel err", "vs sdpa"], rows)
    for size, t in medians.items():
        name = ",".join(map(str, size))
        ratio = t["weights"] / t["sdpa"]
        # Each path's time beyond the shared projections is its attention core (layout copies included).
        sdpa_core, weights_core = t["sdpa"] - t["projections"], t["weights"] - t["projections"]
        print(
            f"{name}: projections {t['projections'] * 1e3:.1f} ms; attention core {sdpa_core * 1e3:.1f} ms (sdpa) vs "
            f"{weights_core * 1e3:.1f} ms (weights), {weights_core / sdpa_core:.2f}x; {TARGET}x for the layer needs an "
            f"sdpa core of at most {(t['weights'] / TARGET - t['projections']) * 1e3:.1f} ms"
        )
        verdict = ""
        if device.type == "cpu" and size == SIZES[0]:
            verdict = f" (CPU target >= {TARGET}x: {'met' if ratio >= TARGET else 'NOT met'})"
        print(f"summary: {name}: weights path / sdpa path = {ratio:.2f}x{verdict}")


if __name__ == "__main__":
    main()
