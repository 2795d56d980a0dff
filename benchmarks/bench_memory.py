"""Peak memory of one training step (forward, backward, AdamW), estimated without running it, and measured on a GPU.

The estimate runs the step on fake tensors (`FakeTensorMode`: shapes and dtypes, no data, no arithmetic) under
torch's `MemTracker`, which adds up every tensor alive at each moment by kind: parameters, gradients, optimizer
state, activations kept for backward, temporaries. It takes seconds on a CPU for any model size. The step is
train.py's eager step: bf16 autocast (`--precision 32` for float32), PyTorch's SDPA kernel, AdamW. On a CPU the
attention kernel is the CPU flash kernel, which keeps what the GPU's flash kernel keeps (the output and one
log-sum-exp per row), except with dropout (the baby config): then the CPU falls back to the unfused path, which
keeps the attention matrices, so the baby's estimate is high. AdamW is the multi-tensor one (fused on a GPU,
which needs fewer temporaries).

With `--device cuda` the same step also runs for real and `torch.cuda.max_memory_allocated` is printed beside the
estimate. Neither counts the CUDA context, cuBLAS workspaces or the caching allocator's unused reserve (~1 to 2 GB
more in `nvidia-smi`).

    python benchmarks/bench_memory.py                      # baby at 64, 124M at 8, 16 and 32 (CPU, estimates)
    python benchmarks/bench_memory.py --device cuda        # estimates and measurements
    python benchmarks/bench_memory.py --quick              # the self-check and the baby only
"""

import argparse
import contextlib
import dataclasses

import torch
import yaml
from common import CONFIGS, VOCAB_SIZES, header, print_table
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker

from minigpt.model import GPT, GPTConfig

RUNS = [("baby", 64), ("124m", 8), ("124m", 16), ("124m", 32)]  # (config, micro-batch); the configs use 64 and 16
CONSUMER_GPU_GIB = 24
GIB = 2**30


def config_of(name: str) -> GPTConfig:
    cfg = yaml.safe_load(CONFIGS[name].read_text())
    fields = {field.name for field in dataclasses.fields(GPTConfig)}
    model = {key: value for key, value in cfg["model"].items() if key in fields}
    return GPTConfig(**model, vocab_size=VOCAB_SIZES[cfg["data"]["tokenizer"]])


def one_step(config: GPTConfig, micro_batch: int, device: torch.device, bf16: bool):
    """A fresh model and optimizer (their state made by a first step), and the function that runs one more step.

    AdamW as training builds it (GPTModule.configure_optimizers), less its two weight-decay groups, which change
    no memory; GPTModule itself is not built, as its metrics do not run on fake tensors.
    """
    with device:  # built there: moving fake tensors between devices is not supported
        model = GPT(config)
    optimizer = torch.optim.AdamW(model.parameters(), fused=device.type == "cuda")
    x = torch.randint(0, config.vocab_size, (micro_batch, config.block_size), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            _, loss = model(x, x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # AdamW's state exists from the first step on
    return model, optimizer, step


def tracked_peak(config: GPTConfig, micro_batch: int, bf16: bool, fake: bool) -> dict[str, int]:
    """Bytes alive at the step's peak, by kind, from MemTracker; on fake CPU tensors, or real ones (the check)."""
    with FakeTensorMode() if fake else contextlib.nullcontext():
        model, optimizer, step = one_step(config, micro_batch, torch.device("cpu"), bf16)
        tracker = MemTracker()
        tracker.track_external(model, optimizer)
        with tracker:
            step()
    peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]
    return {getattr(kind, "value", kind): n for kind, n in peak.items()}


def measured_peak(config: GPTConfig, micro_batch: int, device: torch.device, bf16: bool) -> int:
    """torch.cuda.max_memory_allocated over one step, everything the step needs included (model and state too)."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    model, optimizer, step = one_step(config, micro_batch, device, bf16)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del model, optimizer, step
    return peak


def self_check() -> tuple[int, int]:
    """The fake-tensor estimate against the same tracker on real tensors, for a model small enough to run."""
    small = GPTConfig(vocab_size=257, block_size=128, n_layer=2, n_head=4, n_embd=128)
    return tracked_peak(small, 8, True, fake=True)["Total"], tracked_peak(small, 8, True, fake=False)["Total"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["bf16-mixed", "32"], default="bf16-mixed")
    parser.add_argument("--quick", action="store_true", help="the self-check and the baby config only")
    args = parser.parse_args()
    device = torch.device(args.device)
    bf16 = args.precision == "bf16-mixed"
    print(header(device, "bf16 autocast" if bf16 else torch.float32))

    fake, real = self_check()
    print(f"check: fake-tensor estimate {fake:,} bytes, real tensors {real:,} bytes (small model, CPU)")

    rows, summary = [], []
    for name, micro_batch in RUNS[:1] if args.quick else RUNS:
        config = config_of(name)
        peak = tracked_peak(config, micro_batch, bf16, fake=True)
        parts = ["Parameter", "Gradient", "Optstate", "Activation", "Temp", "Total"]
        row = [name, micro_batch, *(f"{peak.get(kind, 0) / GIB:.2f}" for kind in parts)]
        measured = measured_peak(config, micro_batch, device, bf16) if device.type == "cuda" else None
        row.append(f"{measured / GIB:.2f}" if measured is not None else "-")
        fits = (measured or peak["Total"]) / GIB < CONSUMER_GPU_GIB
        row.append("yes" if fits else "no")
        rows.append(row)
        summary.append(f"{name} x{micro_batch} {peak['Total'] / GIB:.1f} GiB estimated")

    print("\npeak GiB of one step, T=block_size (256 baby, 1024 124M); estimate by kind, then measured (GPU only)")
    headers = ["config", "micro-batch", "params", "grads", "AdamW", "activations", "temporaries", "estimate"]
    print_table([*headers, "measured", f"< {CONSUMER_GPU_GIB} GiB"], rows)
    print("summary: " + "; ".join(summary))


if __name__ == "__main__":
    main()
