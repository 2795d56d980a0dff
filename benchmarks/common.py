"""Helpers the benchmarks share: a header naming the machine, interleaved timing with medians, MFU, a table."""

import datetime
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from minigpt.peak_flops import peak_flops

REPO = Path(__file__).resolve().parents[1]
# The configs the training-step and memory benchmarks take by short name.
CONFIGS = {"baby": REPO / "configs" / "shakespeare_char.yaml", "124m": REPO / "configs" / "gpt2_124m.yaml"}
# The tokenizers' sizes, without loading them (gpt2's BPE may need a download).
VOCAB_SIZES = {"bytes": 257, "gpt2": 50257}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {torch.get_num_threads()} threads"


def header(device: torch.device, dtype: torch.dtype | str) -> str:
    """One line that says where and how the numbers were taken, for RESULTS.md."""
    dtype = str(dtype).removeprefix("torch.")
    return f"{datetime.date.today()}  torch {torch.__version__}  {device_name(device)}  {dtype}"


def mfu_peak(
    device: torch.device,
    precision: str,
    override_tflops: float | None = None,
    float32_matmul_precision: str | None = None,
) -> float | None:
    """Peak FLOP/s for MFU: the override, else the dense peak of a GPU `minigpt.peak_flops` knows at the Lightning
    precision the benchmark runs ("bf16-mixed", "32"; float32 matmuls at float32_matmul_precision, default this
    process's), else None (MFU not shown). The training command's `train/mfu` divides by the same table."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    return peak_flops(torch.cuda.get_device_name(device), precision, float32_matmul_precision)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timing:
    """Seconds of repeated runs of one thing: the median, and the spread (half the interquartile range)."""

    def __init__(self, seconds: list[float]):
        self.seconds = seconds
        self.median = statistics.median(seconds)
        if len(seconds) >= 4:
            q1, _, q3 = statistics.quantiles(seconds, n=4)
        else:
            q1, q3 = min(seconds), max(seconds)
        self.spread = (q3 - q1) / 2 / self.median  # relative; a ratio inside it is noise

    def __str__(self) -> str:
        return f"{self.median * 1e3:.2f} ms ±{self.spread:.0%}"


def interleaved(
    fns: dict[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int = 2
) -> dict[str, list]:
    """Call each function `repeats` times, one call of each per round, so load changes hit all of them alike; what
    the calls returned, in order.

    The order rotates every round (no function always runs first). Warm-up calls (compilation, allocator growth,
    caches) come first and are not returned.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    names = list(fns)
    returned: dict[str, list] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            returned[name].append(fns[name]())
    return returned


def time_interleaved(
    fns: dict[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int = 2
) -> dict[str, Timing]:
    """Time each function `repeats` times, interleaved (`interleaved`), after `warmup` untimed calls of each.

    The device is synchronized around every call, so a call's time is its whole work; what a call returns is
    dropped at once, as it would be without the clock.
    """

    def timed(fn: Callable[[], object]) -> float:
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        return time.perf_counter() - start

    seconds = interleaved({name: partial(timed, fn) for name, fn in fns.items()}, device, repeats, warmup)
    return {name: Timing(s) for name, s in seconds.items()}


def print_table(headers: list[str], rows: list[list[object]]) -> None:
    """A plain text table: columns of numbers right-aligned, columns with words left-aligned."""
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    words = [any(row[i][:1].isalpha() for row in cells[1:]) for i in range(len(headers))]
    for row in cells:
        line = "  ".join(c.ljust(w) if left else c.rjust(w) for c, w, left in zip(row, widths, words, strict=True))
        print(line.rstrip())
