"""Training step throughput: tokens/s and MFU of forward + backward + AdamW, eager vs torch.compile variants.

The step is the one `train.py` runs, without Lightning's loop around it: the model and optimizer settings of a
config file, `GPTModule`'s GPT, its AdamW (two parameter groups, fused on GPU) and warmup-cosine schedule from
`configure_optimizers`, gradient clipping, bf16 autocast on GPU (Lightning's bf16-mixed), float32 on CPU. Batches
are random tokens in pinned host memory, copied with non_blocking=True per micro-batch as Lightning does with the
DataLoader's pinned batches. Nothing in the step waits for the device (except in the `sync-per-step` variant).
The variants live side by side and are timed interleaved, a round of optimizer steps each in turn.

    python benchmarks/bench_train_step.py                           # CPU: both configs, small micro-batches
    python benchmarks/bench_train_step.py --device cuda             # the configs' batch and accumulation
    python benchmarks/bench_train_step.py --device cuda --configs 124m --micro-batch 8 --accum 1   # 24 GB fit
    python benchmarks/bench_train_step.py --quick                   # baby, tiny shapes, eager (a smoke test)

MFU uses nanoGPT's FLOP count (6N + 12·L·C·T per token, of the unpadded model) over the GPU's dense peak at the
precision run (`minigpt.peak_flops`: 989 TFLOP/s bf16 on H100 SXM/H200; --peak-tflops for a GPU not in its table).
"first step" is the first optimizer step's time, compilation included; the throughput is measured after --warmup
steps. Each compiled variant compiles its own static graphs, as a fresh run at its shapes does (`build_step`).
"""

import argparse
import contextlib
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import torch
import yaml
from common import CONFIGS, VOCAB_SIZES, Timing, header, mfu_peak, print_table, synchronize, time_interleaved
from torch.nn.attention import SDPBackend, sdpa_kernel

from minigpt.module import ModelOptions
from minigpt.module import flops_per_token as module_flops_per_token

CPU_MICRO_BATCH = {"baby": 8, "124m": 1}  # on CPU a step of the configs' batch takes minutes
VARIANTS = {
    "eager": {},
    "eager-math-sdpa": {"sdpa": SDPBackend.MATH},  # attention without a fused kernel: what flash buys
    "eager-cudnn-sdpa": {"sdpa": SDPBackend.CUDNN_ATTENTION},  # cuDNN's fused attention (GPU only)
    "compile": {"mode": "default"},
    "compile-cudagraphs": {"mode": "reduce-overhead"},  # CUDA graphs for forward and backward
    "compile-autotune": {"mode": "max-autotune-no-cudagraphs"},
    "compile-max": {"mode": "max-autotune"},  # autotuned kernels and CUDA graphs
    "padded-vocab": {"mode": "default", "pad_vocab": 128},  # vocab rounded up to a multiple of 128
    "unpadded-vocab": {"mode": "default", "pad_vocab": 1},  # the exact vocab, whatever the config pads
    "foreach-adamw": {"mode": "default", "fused": False},  # AdamW's multi-tensor path instead of the fused kernel
    "pageable-copy": {"mode": "default", "pinned": False},  # batches copied from pageable host memory
    "sync-per-step": {"mode": "default", "sync": True},  # loss.item() after every step, as a progress bar would
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, help="default: both (baby alone with --quick)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, help="default: eager compile (eager with --quick)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["bf16-mixed", "32"], help="default: bf16-mixed on GPU, 32 on CPU")
    parser.add_argument("--tf32", action="store_true", help="TF32 for float32 matmuls (torch.backends)")
    parser.add_argument("--micro-batch", type=int, help="sequences per micro-batch (default: the config's on GPU)")
    parser.add_argument("--accum", type=int, help="micro-batches per optimizer step (default: the config's on GPU)")
    parser.add_argument("--block-size", type=int, help="sequence length T (default: the config's)")
    parser.add_argument("--steps", type=int, help="optimizer steps per round (default: ~1M tokens on GPU, 1 on CPU)")
    parser.add_argument("--rounds", type=int, help="timed rounds per variant (default: 5 on GPU, 3 on CPU)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (compilation, CUDA graphs); 3 on GPU, 2 on CPU")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's; 1 with --quick)")
    parser.add_argument("--peak-tflops", type=float, help="peak TFLOP/s for MFU (default: minigpt.peak_flops)")
    parser.add_argument("--quick", action="store_true", help="baby, T=64, micro-batch 2, eager, 1 thread (smoke test)")
    args = parser.parse_args()
    gpu = args.device.startswith("cuda")
    if args.quick:
        args.configs, args.variants = args.configs or ["baby"], args.variants or ["eager"]
        args.block_size, args.micro_batch, args.accum, args.steps, args.rounds, args.warmup = 64, 2, 1, 1, 3, 1
        args.threads = args.threads or 1  # a busy machine stalls two threads at every barrier, not one
    args.configs, args.variants = args.configs or list(CONFIGS), args.variants or ["eager", "compile"]
    args.precision = args.precision or ("bf16-mixed" if gpu else "32")
    args.rounds = args.rounds or (5 if gpu else 3)
    args.warmup = args.warmup or (3 if gpu else 2)
    return args


def load_config(
    name: str, device: str, block_size: int | None = None, micro_batch: int | None = None, accum: int | None = None
) -> tuple[dict, int, int, float]:
    """The `--model.*` options (ModelOptions), the micro-batch, the accumulation and the clipping of a config file;
    the micro-batch and accumulation are the config's on a GPU, small on a CPU, unless given."""
    cfg = yaml.safe_load(CONFIGS[name].read_text())
    trainer, data = cfg["trainer"], cfg["data"]
    hparams = {**cfg["model"], "vocab_size": VOCAB_SIZES[data["tokenizer"]], "compile": False}
    hparams["decay_steps"] = trainer["max_steps"]  # so configure_optimizers needs no Trainer
    if block_size:
        hparams["block_size"] = block_size
    gpu = device.startswith("cuda")
    micro_batch = micro_batch or (data["batch_size"] if gpu else CPU_MICRO_BATCH[name])
    accum = accum or (trainer.get("accumulate_grad_batches", 1) if gpu else 1)
    return hparams, micro_batch, accum, trainer.get("gradient_clip_val") or 0.0


def flops_per_token(hparams: dict) -> float:
    """nanoGPT's FLOPs per token of the model these `--model.*` options build, without vocabulary padding."""
    return module_flops_per_token(ModelOptions(**hparams), hparams["block_size"])


def token_batches(
    vocab: int, B: int, T: int, device: torch.device, pin: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (x, y) batches of random tokens, cycled from a few host buffers, copied without blocking."""
    host = [torch.randint(0, vocab, (2, B, T)) for _ in range(4)]  # x and y of 4 batches
    host = [h.pin_memory() if pin else h for h in host]
    for xy in itertools.cycle(host):
        yield xy[0].to(device, non_blocking=True), xy[1].to(device, non_blocking=True)  # (B, T) each


def build_step(
    variant: str, hparams: dict, micro_batch: int, accum: int, clip: float, *, device: str, precision: str
) -> Callable[[], None]:
    """A fresh GPT, optimizer and schedule for one variant, and the function that runs one optimizer step."""
    spec = VARIANTS[variant]
    device = torch.device(device)
    vocab = hparams["vocab_size"]
    padding = {"pad_vocab_multiple": spec["pad_vocab"]} if "pad_vocab" in spec else {}
    torch.manual_seed(0)
    module = ModelOptions(**{**hparams, **padding}).build().to(device)  # the variant's padding over the config's
    model = module.model
    if "mode" in spec:
        # In place, as GPTModule(compile=True) does, but static (dynamic=False): the variants of one process share
        # the code objects dynamo caches graphs on, so a variant at a new shape (micro-batch, vocabulary, block
        # size, another config) would otherwise be recompiled by automatic dynamic shapes with symbolic sizes: a
        # slower graph and a longer compile than a fresh train.py run at that shape gets, which compiles it static.
        # Earlier variants stay compiled (they are timed interleaved after all are built), so no dynamo reset here;
        # each variant's entries stay in the cache, hence the raised limit (at the limit dynamo runs eagerly).
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        model.compile(mode=spec["mode"], dynamic=False)
    optimizers = module.configure_optimizers()
    optimizer, scheduler = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    if not spec.get("fused", True):
        for group in optimizer.param_groups:  # read by every step(), before any optimizer state exists
            group["fused"], group["foreach"] = False, True
    # Targets stay in the real vocabulary. Pinned as the DataLoader pins on GPU: from pageable memory the copy may
    # wait for the work queued before it.
    pin = device.type == "cuda" and spec.get("pinned", True)
    batches = token_batches(vocab, micro_batch, hparams["block_size"], device, pin)
    bf16 = precision == "bf16-mixed"
    # The backward runs the kernel its forward picked, so the forward alone needs the choice.
    attention = partial(sdpa_kernel, spec["sdpa"]) if "sdpa" in spec else contextlib.nullcontext

    def step() -> None:
        for _ in range(accum):
            x, y = next(batches)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16), attention():
                _, loss = model(x, y)
            (loss / accum).backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if spec.get("sync"):
            loss.item()

    return step


@dataclass
class Built:
    """One variant's optimizer step, built and warmed up."""

    step: Callable[[], None]
    micro_batch: int
    accum: int
    tokens: int  # per optimizer step
    first_s: float  # the first optimizer step, compilation included
    peak_gib: float | None  # GPU memory at its peak beyond what was allocated before it was built; None on a CPU


def warmed_step(
    variant: str, hparams: dict, micro_batch: int, accum: int, clip: float, *, device: str, precision: str,
    warmup: int, label: str | None = None,
) -> Built:  # fmt: skip
    """build_step, its first step timed, then warmup - 1 more steps; prints the first step's time under `label`."""
    on = torch.device(device)
    synchronize(on)
    cuda = on.type == "cuda"
    baseline = torch.cuda.memory_allocated(on) if cuda else 0
    if cuda:
        torch.cuda.reset_peak_memory_stats(on)
    step = build_step(variant, hparams, micro_batch, accum, clip, device=device, precision=precision)
    first = time_interleaved({variant: step}, on, repeats=1, warmup=0)[variant].median
    for _ in range(warmup - 1):
        step()
    synchronize(on)
    # This variant's own peak: the earlier variants' memory is held constant.
    peak = (torch.cuda.max_memory_allocated(on) - baseline) / 2**30 if cuda else None
    print(f"  {label or variant}: first step {first:.1f} s", flush=True)
    return Built(step, micro_batch, accum, micro_batch * accum * hparams["block_size"], first, peak)


def time_steps(built: dict[str, Built], device: torch.device, rounds: int, steps: int) -> dict[str, Timing]:
    """Time the built variants interleaved, a round of `steps` optimizer steps each (no warm-up: they had theirs)."""
    fns = {label: (lambda b=b: [b.step() for _ in range(steps)]) for label, b in built.items()}
    return time_interleaved(fns, device, rounds, warmup=0)


def measure(name: str, args: argparse.Namespace, peak: float | None) -> tuple[list[list[str]], list[str]]:
    """Build every variant of one config, warm each up, time them interleaved: table rows and summary parts."""
    device = torch.device(args.device)
    hparams, micro_batch, accum, clip = load_config(name, args.device, args.block_size, args.micro_batch, args.accum)
    flops = flops_per_token(hparams)
    T = hparams["block_size"]
    tokens_per_step = accum * micro_batch * T
    # A round long enough to time with a host clock: about 2**20 tokens on a GPU (a few to a hundred steps).
    n_steps = args.steps or (math.ceil(2**20 / tokens_per_step) if device.type == "cuda" else 1)
    print(
        f"\n{name}: T={T}, micro-batch {micro_batch} x {accum}, {flops / 1e6:.1f} MFLOP/token, "
        f"{n_steps} steps per round"
    )
    built = {
        variant: warmed_step(variant, hparams, micro_batch, accum, clip, device=args.device, precision=args.precision,
                             warmup=args.warmup)
        for variant in args.variants
    }  # fmt: skip
    times = time_steps(built, device, args.rounds, n_steps)
    base = times[args.variants[0]].median
    rows, summary = [], []
    for variant, t in times.items():
        rate = n_steps * tokens_per_step / t.median
        mfu = f"{rate * flops / peak:.1%}" if peak else "-"
        mem = f"{built[variant].peak_gib:.1f}" if built[variant].peak_gib is not None else "-"
        rows.append(
            [name, variant, f"{rate:,.0f}", f"±{t.spread:.0%}", mfu, f"{base / t.median:.2f}x",
             f"{built[variant].first_s:.1f}", mem]
        )  # fmt: skip
        summary.append(f"{name} {variant} {rate:,.0f} tok/s" + (f" {mfu} MFU" if peak else ""))
    return rows, summary


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tf32:
        torch.set_float32_matmul_precision("high")
    print(header(device, args.precision) + f"  tf32 {'on' if args.tf32 else 'off'}")
    peak = mfu_peak(device, args.precision, args.peak_tflops)  # after --tf32: it sets the float32 column
    rows, summary = [], []
    for name in args.configs:
        config_rows, config_summary = measure(name, args, peak)
        rows += config_rows
        summary += config_summary

    print(f"\nmedian of {args.rounds} interleaved rounds; speed-up vs {args.variants[0]}")
    print_table(["config", "variant", "tokens/s", "spread", "MFU", "speed-up", "first step s", "peak GiB"], rows)
    print("summary: " + "; ".join(summary))


if __name__ == "__main__":
    main()
