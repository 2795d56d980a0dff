"""The rows of gpu_check.py, each in a process of its own: `python benchmarks/gpu_rows.py ROW --result FILE ...`.

A row writes its numbers to FILE (JSON) as it measures them, so a row stopped at its time budget still reports what
it had. An exception ends the row with exit code 1 and its message in FILE; so does a failed check. At the top only
the standard library is imported, and bench_time_to_quality.py's helpers for train.py runs (the standard library
too): the rows import torch and the other benchmark modules they use when they run (the rows that start train.py and
sample.py only once those have exited). With --smoke every row runs at toy sizes on a CPU.
"""

import argparse
import json
import math
import os
import re
import shutil
import statistics
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from bench_time_to_quality import Run, first_and_best, logged, read_metrics
from bench_time_to_quality import run as run_timed

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(1, str(REPO))  # minigpt; this script's own folder (benchmarks/) is sys.path[0]

TARGET = 1.47  # val/loss of nanoGPT's baby GPT on Tiny Shakespeare: 1.4697
SHAKESPEARE = "configs/shakespeare_char.yaml"
# Lightning's EarlyStopping, added on train.py's command line: the run ends at the first validation below TARGET.
EARLY_STOP = [
    "--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor=val/loss", "--trainer.callbacks.mode=min",
    f"--trainer.callbacks.stopping_threshold={TARGET}", "--trainer.callbacks.patience=1000000",
]  # fmt: skip
TTQ_ARGS = {  # train.py arguments of each time-to-quality row, on top of the config
    "cold": [],
    "warm": [],
    "cudagraphs": ["--model.compile_mode", "reduce-overhead"],
    "host-loader": ["--data.tokens_on_device", "false"],
}
# --smoke: the same commands and code on a model and batches that a CPU runs in seconds. Training takes the GPU's
# optimizer path too: bf16-mixed and fused AdamW (what `fused: auto` picks on a GPU), with the config's clipping.
SMOKE_MODEL = {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 64}
SMOKE_TRAIN = [arg for key, value in SMOKE_MODEL.items() for arg in (f"--model.{key}", str(value))] + [
    "--data.batch_size", "4", "--data.val_batches", "1", "--trainer.num_sanity_val_steps", "0",
    "--trainer.log_every_n_steps", "1", "--trainer.precision", "bf16-mixed", "--model.fused", "true",
]  # fmt: skip
SAMPLED = re.compile(r"^(\d+) tokens in ([\d.]+) s \(([\d.]+) tokens/s\) from .* on (\S+), seed")  # sample.py
GIB = 2**30
# Datasheet memory bandwidth, bytes/s, by a word of the device name; the copy measured in the row sits beside it.
DATASHEET_BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12}


class RowError(Exception):
    """A row cannot go on: its message is the row's error."""


@dataclass
class Context:
    device: str  # "cuda", or "cpu" with --smoke
    smoke: bool
    work: Path  # this gpu_check run's scratch folder: runs, compile caches
    carry: Path  # the carried folder (device_carry.py): data/ holds the token cache

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"


@dataclass
class Result:
    """A row's record, rewritten to its JSON file after every change."""

    path: Path
    row: str
    items: list[dict] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # what gpu_check.py copies to $OUT
    error: str | None = None

    def item(self, item: str, text: str, **numbers) -> None:
        """One measurement: a label, a short text for the table, and its numbers for the JSON."""
        self.items.append({"item": item, "text": text, **numbers})
        print(f"  = {item}: {text}", flush=True)
        self.save()

    def keep(self, path: Path) -> None:
        """A file for gpu_check.py to bring back in $OUT."""
        self.files.append(str(path))
        self.save()

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append({"check": name, "ok": bool(ok), "detail": detail})
        print(f"  {'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
        self.save()
        return bool(ok)

    def save(self) -> None:
        record = {"row": self.row, "items": self.items, "checks": self.checks, "files": self.files, "error": self.error}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(self.path)


def run(command: list[str], env: dict | None = None) -> Run:
    """bench_time_to_quality's run of a command, echoed first. At the row's time budget gpu_check.py sends SIGINT to
    the row's processes, this command's included: what it printed until then comes back, marked interrupted."""
    print("  $ " + " ".join(command), flush=True)
    return run_timed(command, env)


def stop_if_interrupted(done: Run) -> None:
    if done.interrupted:
        raise KeyboardInterrupt


def exited(result: Result, what: str, done: Run) -> None:
    """Check a command's exit code; the row cannot go on without it."""
    ok = done.returncode == 0
    if not result.check(f"{what}: exit code 0", ok, "" if ok else f"exit {done.returncode}: {done.tail()}"):
        raise RowError(f"{what} exited with code {done.returncode}: {done.tail()}")


def one_line(e: Exception, limit: int = 200) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fmt_rate(rate: float) -> str:
    return f"{rate / 1e6:.2f}M" if rate >= 1e6 else f"{rate:,.0f}"


def fmt_bytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def fmt_mfu(mfu: float | None) -> str:
    return f", {mfu:.1%} MFU" if mfu is not None else ""


# ---- train.py and sample.py ------------------------------------------------------------------------------------


def train_command(ctx: Context, name: str, *extra: str) -> list[str]:
    """train.py on configs/shakespeare_char.yaml from the carried token cache, logging to CSV."""
    command = [
        sys.executable, "train.py", "--config", SHAKESPEARE, "--data.data_dir", str(ctx.carry / "data"),
        "--logger", "csv", "--runs_dir", str(ctx.work / "runs"), "--name", name,
    ]  # fmt: skip
    return command + (SMOKE_TRAIN if ctx.smoke else []) + list(extra)


def require_cache(ctx: Context) -> None:
    """Without the carried cache train.py would build it, which needs `datasets`: say what to do instead."""
    if not any((ctx.carry / "data" / "tinyshakespeare" / "bytes").glob("shards-*/meta.json")):
        raise RowError(
            f"no Tiny Shakespeare token cache in {ctx.carry / 'data'}: run `python benchmarks/gpu_check.py "
            "--prepare` where `datasets` is installed, and carry benchmarks/device-carry"
        )


def compile_cache_env(folder: Path) -> dict:
    """The environment with torch.compile's caches (inductor's and Triton's) in `folder`."""
    return {
        **os.environ,
        "TORCHINDUCTOR_CACHE_DIR": str(folder / "inductor"),
        "TRITON_CACHE_DIR": str(folder / "triton"),
    }


def run_config(run_dir: Path) -> dict:
    """The settings a train.py run ran with (its config.yaml)."""
    import yaml

    return yaml.safe_load((run_dir / "config.yaml").read_text())


def run_precision(run_dir: Path) -> str:
    return str(run_config(run_dir)["trainer"]["precision"])


def check_losses(result: Result, metrics: list[dict], label: str) -> None:
    losses = [v for key in ("train/loss", "val/loss") for _, v in logged(metrics, key)]
    result.check(f"{label}: losses logged and finite", bool(losses) and all(map(math.isfinite, losses)),
                 f"{len(losses)} values, last {losses[-1]:.4f}" if losses else "none logged")  # fmt: skip


def baby_flops_per_token() -> float:
    """nanoGPT's FLOPs per token of the shakespeare_char model (bench_train_step.py's count)."""
    from bench_train_step import flops_per_token, load_config

    hparams, *_ = load_config("baby", "cuda")
    return flops_per_token(hparams)


def ttq_mfu(ctx: Context, rate: float, precision: str = "bf16-mixed") -> float | None:
    """MFU of the shakespeare_char model at `rate` tokens/s, trained at `precision`; None without a known peak (a
    CPU, an unknown GPU)."""
    if not ctx.cuda:  # no peak to divide by: spare the smoke run the imports
        return None
    import torch
    from common import mfu_peak

    # train.py sets float32 matmuls to "high" (TF32): the column a 32-true run's matmuls get.
    peak = mfu_peak(torch.device(ctx.device), precision, float32_matmul_precision="high")
    return rate * baby_flops_per_token() / peak if peak else None


def row_ttq(ctx: Context, result: Result, variant: str) -> None:
    """train.py on the shakespeare_char config until val/loss <= 1.47: when, how fast, and at what MFU.

    The run is the config's, as a user starts it (bf16-mixed and compile on a GPU, tokens on the device), with
    Lightning's EarlyStopping ending it at the first validation under the target, no sample at the end, and CSV
    logs. ttq-cold starts from empty compile caches; the other variants use the caches the runs before left.
    """
    require_cache(ctx)
    cache = ctx.work / "compile-cache-ttq"  # the quality runs' own: ttq-cold's is empty whatever ran before
    if variant == "cold":
        shutil.rmtree(cache, ignore_errors=True)
    cached = sum(1 for path in cache.rglob("*") if path.is_file()) if cache.exists() else 0
    name = f"ttq-{variant}"
    shutil.rmtree(ctx.work / "runs" / name, ignore_errors=True)  # a run of that name from an earlier call
    extra = ["--sample_tokens", "0", *EARLY_STOP, *TTQ_ARGS[variant]]
    if ctx.smoke:
        extra += ["--trainer.max_steps", "4", "--trainer.val_check_interval", "2"]
    done = run(train_command(ctx, name, *extra), env=compile_cache_env(cache))
    if done.interrupted:
        if progress := done.progress():
            t, step, val = progress[-1]
            result.item("stopped at its budget", f"last validation at {t:.1f} s: step {step}, val {val}")
        raise KeyboardInterrupt
    exited(result, "train.py", done)
    run_dir = ctx.work / "runs" / name
    result.keep(run_dir / "metrics.csv")
    metrics = read_metrics(run_dir)
    check_losses(result, metrics, "train.py")
    precision = run_precision(run_dir)

    printed_at = {step: t for t, step, _ in done.progress()}
    vals = logged(metrics, "val/loss")
    if not vals:
        raise RowError("no val/loss in metrics.csv")
    reached, (best_step, best) = first_and_best(vals, TARGET)
    last_step = max(step for step, _ in logged(metrics, "train/loss") + vals)
    if reached:
        at = printed_at.get(reached[0])
        text = f"step {reached[0]} at {at:.1f} s (val {reached[1]:.4f})" if at else f"step {reached[0]}"
    else:
        at, text = None, f"not reached: best {best:.4f} at step {best_step}"
    result.item(f"to val/loss <= {TARGET}", text, reached_step=reached and reached[0], reached_s=at,
                reached_val=reached and reached[1], best_val=best, best_step=best_step)  # fmt: skip

    rates = [value for _, value in logged(metrics, "train/tokens_per_sec")]
    tokens = logged(metrics, "train/tokens")
    tokens_per_step = tokens[-1][1] / tokens[-1][0] if tokens and tokens[-1][0] else None
    rate = statistics.median(rates) if rates else None
    mfu = ttq_mfu(ctx, rate, precision) if rate else None
    # What is not training steps: start-up, compilation, validation, checkpoints, attention maps.
    steps_s = last_step * tokens_per_step / rate if rate and tokens_per_step else None
    overhead = f"; {done.seconds - steps_s:.1f} s of it not training steps" if steps_s else ""
    whole_mfu = ttq_mfu(ctx, last_step * tokens_per_step / done.seconds, precision) if tokens_per_step else None
    result.item("whole run", f"{done.seconds:.1f} s, {last_step} steps{overhead}{fmt_mfu(whole_mfu)} over it all",
                wall_s=done.seconds, steps=last_step, steps_s=steps_s, mfu_whole_run=whole_mfu,
                compile_cache_files_at_start=cached)  # fmt: skip
    if rate:
        result.item("training steps", f"{fmt_rate(rate)} tok/s{fmt_mfu(mfu)} (median of {len(rates)} logs)",
                    tokens_per_s=rate, mfu=mfu)  # fmt: skip


def checkpoint_facts(path: Path) -> dict:
    """From a Lightning checkpoint: the device type its weights were saved from (torch.load keeps it) and whether
    its AdamW ran fused (the optimizer's param groups); empty without the file."""
    import torch

    if not path.is_file():
        return {}
    state = torch.load(path, weights_only=True)
    groups = [group for optimizer in state["optimizer_states"] for group in optimizer["param_groups"]]
    return {
        "device": next(iter(state["state_dict"].values())).device.type,
        "fused": bool(groups) and all(group.get("fused") for group in groups),
    }


def row_train_sample(ctx: Context, result: Result) -> None:
    """A short real train.py run, its resume from last.ckpt, sample.py and `minigpt attention` on its checkpoint: do
    they work here?

    train.py: the shakespeare_char config as a GPU runs it (bf16-mixed, fused AdamW, gradient clipping at 1.0,
    compile; the smoke run asks for the first two on the CPU), attention maps drawn at every validation (on the
    compiled model), a 32-token sample at the end on the training device. Resumed from last.ckpt for more steps.
    sample.py in bf16, eager and --compile; `minigpt attention` in bf16.
    """
    require_cache(ctx)
    steps, every = (4, 2) if ctx.smoke else (60, 30)
    name = "check"
    run_dir = ctx.work / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    env = compile_cache_env(ctx.work / "compile-cache-ttq")  # the quality runs' graphs are these
    common = ["--trainer.val_check_interval", str(every), "--attention_maps.every_n_validations", "1"]
    if not ctx.smoke:
        common += ["--data.val_batches", "4", "--trainer.log_every_n_steps", "10"]

    first = run(train_command(ctx, name, *common, "--trainer.max_steps", str(steps), "--sample_tokens", "32"), env)
    stop_if_interrupted(first)
    exited(result, "train.py", first)
    text = "\n".join(line for _, line in first.lines)
    config = run_config(run_dir)
    trainer, model = config["trainer"], config["model"]
    result.check("precision bf16-mixed", trainer["precision"] == "bf16-mixed", f"config.yaml: {trainer['precision']}")
    result.check("compile on", model["compile"] is True, f"config.yaml: {model['compile']}")
    clip = trainer["gradient_clip_val"]
    result.check("gradient clipping on", bool(clip), f"gradient_clip_val {clip}")
    facts = checkpoint_facts(run_dir / "checkpoints" / "last.ckpt")
    result.check(f"trained on {ctx.device}", facts.get("device") == ctx.device,
                 f"last.ckpt's weights are on {facts.get('device')}")  # fmt: skip
    result.check("AdamW fused", facts.get("fused") is True, f"last.ckpt's AdamW: fused {facts.get('fused')}")
    metrics = read_metrics(run_dir)
    check_losses(result, metrics, "train.py")
    maps = sorted((run_dir / "attention").glob("step-*/layer-*.png"))
    validations = steps // every
    drawn = {path.parent.name for path in maps}
    result.check(
        "attention maps drawn at every validation", len(drawn) >= validations, f"{len(maps)} PNGs in {sorted(drawn)}"
    )
    if maps:
        result.keep(maps[-1])
    result.check("sample printed after training", "sample (32 tokens" in text)
    # Where that sample ran (the training device, since fit moves the module back to the CPU), if the line says.
    where = re.search(r"^sample \(32 tokens.*\bon (cuda|cpu|mps)\b", text, re.M)
    if where:
        result.check(f"sample after training on {ctx.device}", where[1] == ctx.device, f"printed: on {where[1]}")
    result.item("train.py", f"{steps} steps in {first.seconds:.1f} s, exit 0", seconds=first.seconds)
    norms = [value for _, value in logged(metrics, "train/grad_norm")]
    if norms:  # the norm before clipping, as the module logs it
        clipped = sum(norm > clip for norm in norms)
        result.item("gradient clipping", f"at {clip}: norm {norms[0]:.2f} first, {norms[-1]:.2f} last; {clipped} of "
                    f"{len(norms)} logged steps clipped", grad_norms=norms, clip=clip)  # fmt: skip
    result.item("sample after training", f"32 tokens on {where[1]}" if where else "32 tokens (its device not printed)",
                device=where and where[1])  # fmt: skip

    resumed = steps + every
    second = run(train_command(ctx, name, *common, "--trainer.max_steps", str(resumed), "--ckpt_path", "last",
                               "--sample_tokens", "0"), env)  # fmt: skip
    stop_if_interrupted(second)
    exited(result, "train.py --ckpt_path last", second)
    text = "\n".join(line for _, line in second.lines)
    result.check("resumed from last.ckpt", "Restored all states from the checkpoint" in text)
    result.check(f"resumed run reaches step {resumed}", f"step {resumed}/{resumed} |" in text)
    metrics = read_metrics(run_dir)
    first_logged = min((step for step, _ in logged(metrics, "train/loss")), default=None)
    result.check("resumed run continues (no step logged before the checkpoint's)",
                 first_logged is not None and first_logged >= steps, f"first logged step {first_logged}")  # fmt: skip
    check_losses(result, metrics, "resumed train.py")
    result.item("resume", f"steps {steps} -> {resumed} in {second.seconds:.1f} s, exit 0", seconds=second.seconds)

    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    sample = [sys.executable, "sample.py", "--ckpt", ckpt, "--device", ctx.device, "--dtype", "bfloat16"]
    for label, flags in (("sample.py bf16", []), ("sample.py bf16 --compile", ["--compile"])):
        done = run(sample + ["--prompt", "ROMEO:", "--max-new-tokens", "64", "--seed", "0", *flags])
        stop_if_interrupted(done)
        said = next((m for _, line in done.lines if (m := SAMPLED.match(line))), None)
        ok = done.returncode == 0 and said is not None and int(said[1]) > 0 and said[4].startswith(ctx.device)
        result.check(f"{label}: exit 0, tokens made on {ctx.device}", ok, f"exit {done.returncode}: {done.tail(1)}")
        if said:
            result.item(label, f"{said[1]} tokens, {float(said[3]):,.0f} tokens/s ({done.seconds:.1f} s in all)",
                        tokens=int(said[1]), tokens_per_s=float(said[3]), seconds=done.seconds)  # fmt: skip

    out = ctx.work / "attention-maps.png"
    attention = [sys.executable, "-m", "minigpt", "attention", *sample[2:]]  # sample's checkpoint, device and dtype
    done = run(attention + ["--prompt", "ROMEO: But soft, what light", "--out", str(out)])
    stop_if_interrupted(done)
    pngs = sorted(out.parent.glob("attention-maps-layer*.png"))
    rows = [line.split() for _, line in done.lines if re.match(r"^\s*\d+\s+\d+(\s+\S+)+$", line)]
    scores = [float(value) for row in rows for value in row[2:]]
    ok = done.returncode == 0 and pngs and scores and all(map(math.isfinite, scores))
    result.check("minigpt attention: exit 0, PNGs, finite head scores", ok,
                 f"exit {done.returncode}, {len(pngs)} PNGs, {len(rows)} heads")  # fmt: skip
    if pngs:
        result.keep(pngs[0])


# ---- measurements in this process ------------------------------------------------------------------------------


def step_rows(ctx: Context, result: Result, compiled_levers: bool) -> None:
    """GPT-2 124M training steps at T=1024 (bench_train_step.py's step): tokens/s, MFU, compile time, memory.

    The config's step is micro-batch 16 x 32 with the vocabulary padded to 50304. step-124m: eager, and two levers
    on it (cheap to build: no compilation), the vocabulary unpadded (pad_vocab_multiple 1) and micro-batch 32 x 16
    (the same tokens per optimizer step), timed interleaved; then compile against eager. levers-124m: compile
    against one lever at a time, each pair timed interleaved and kept as soon as it is done: CUDA graphs (compile
    mode reduce-overhead), the vocabulary unpadded, micro-batch 32 x 16.
    """
    import bench_train_step as bts
    import torch
    from common import mfu_peak

    device = torch.device(ctx.device)
    precision = "bf16-mixed" if ctx.cuda else "32"
    small = 2 if ctx.smoke else None
    hparams, micro_batch, accum, clip = bts.load_config("124m", ctx.device, micro_batch=small, accum=small)
    if ctx.smoke:
        hparams |= SMOKE_MODEL
    T = hparams["block_size"]
    flops_per_token = bts.flops_per_token(hparams)
    peak = mfu_peak(device, precision)
    rounds, warmup = (2, 1) if ctx.smoke else (3, 2)
    unpadded = {"pad_vocab_multiple": 1}
    wider = {"micro_batch": micro_batch * 2, "accum": max(1, accum // 2)}

    def build(label: str, variant: str, hp: dict | None = None, micro: int = micro_batch, acc: int = accum):
        """A variant's step, compiled and warmed up (bench_train_step.py's); None (and a failed check) if that fails."""
        try:
            return bts.warmed_step(variant, {**hparams, **(hp or {})}, micro, acc, clip, device=ctx.device,
                                   precision=precision, warmup=warmup, label=label)  # fmt: skip
        except Exception as e:  # an OOM or a compile error fails this variant, and the row, but not the others
            traceback.print_exc()
            result.check(f"{label} runs", False, f"{type(e).__name__}: {one_line(e)}")
            return None

    def timed(group: dict, base: str, record: list[str]) -> None:
        """Time the group interleaved; record the named variants, each against the base."""
        group = {label: built for label, built in group.items() if built is not None}
        if base not in group or len(group) < 2:
            return
        n = 1 if ctx.smoke else max(1, math.ceil(2**19 / group[base].tokens))  # a round of ~0.5M tokens
        times = bts.time_steps(group, device, rounds, n)
        for label in record:
            if label not in group:
                continue
            built, t = group[label], times[label]
            rate = n * built.tokens / t.median
            mfu = rate * flops_per_token / peak if peak else None
            memory = f", {built.peak_gib:.1f} GiB" if built.peak_gib is not None else ""
            speedup = times[base].median / t.median
            versus = f", {speedup:.2f}x {base}" if label != base else ""
            result.item(
                label,
                f"{fmt_rate(rate)} tok/s ±{t.spread:.0%}{fmt_mfu(mfu)}{versus}, first step {built.first_s:.1f} s"
                f"{memory}",
                tokens_per_s=rate, spread=t.spread, mfu=mfu, first_step_s=built.first_s, peak_gib=built.peak_gib,
                micro_batch=built.micro_batch, accum=built.accum, block_size=T, versus=base, speedup=speedup,
            )  # fmt: skip

    if not compiled_levers:
        eager = {
            "eager": build("eager", "eager"),
            "eager, vocab unpadded": build("eager, vocab unpadded", "eager", unpadded),
            "eager, micro-batch {micro_batch} x {accum}".format(**wider): build(
                "eager, micro-batch {micro_batch} x {accum}".format(**wider), "eager", micro=wider["micro_batch"],
                acc=wider["accum"]),
        }  # fmt: skip
        timed(eager, "eager", list(eager))
        timed({"eager": eager["eager"], "compile": build("compile", "compile")}, "eager", ["compile"])
        return

    base = {"compile": build("compile", "compile")}
    if base["compile"] is None:
        raise RowError("the compile baseline could not be built")
    for label, lever in (
        ("compile, CUDA graphs", lambda: build("compile, CUDA graphs", "compile-cudagraphs")),
        ("compile, vocab unpadded", lambda: build("compile, vocab unpadded", "compile", unpadded)),
        ("compile, micro-batch {micro_batch} x {accum}".format(**wider), lambda: build(
            "compile, micro-batch {micro_batch} x {accum}".format(**wider), "compile", micro=wider["micro_batch"],
            acc=wider["accum"])),
    ):  # fmt: skip
        timed({**base, label: lever()}, "compile", [label])
        if ctx.cuda:
            torch.cuda.empty_cache()


def copy_bandwidth(device) -> float:
    """Bytes read plus written per second by a device-to-device copy of 1 GiB (64 MiB on a CPU)."""
    import torch
    from common import time_interleaved

    n = (64 if device.type == "cpu" else 1024) * 2**20
    src = torch.empty(n, dtype=torch.uint8, device=device).random_()  # not zeros: they can copy faster
    dst = torch.empty_like(src)
    return 2 * n / time_interleaved({"copy": lambda: dst.copy_(src)}, device, repeats=5, warmup=1)["copy"].median


def row_generate(ctx: Context, result: Result) -> None:
    """GPT-2 124M generating in bf16 (random weights), batch 1 and 16, eager and compiled, against the bound.

    Each step of a decode reads every weight once, whatever the batch: at B sequences the memory-bandwidth bound is
    bandwidth / weight bytes x B tokens/s (the KV cache's reads come on top). The bound is given for the datasheet
    bandwidth and for a copy measured here. sample.py's sampling (temperature 0.8, top-k 200); the prefill of the
    prompt is included; decoding is compiled as sample.py --compile compiles it.
    """
    import torch
    from common import time_interleaved

    from minigpt.generate import stream
    from minigpt.model import GPT, GPTConfig

    device = torch.device(ctx.device)
    if ctx.smoke:
        config = GPTConfig(vocab_size=257, **SMOKE_MODEL)
        prompt, new = 16, 32
    else:
        config, prompt, new = GPTConfig(), 256, 256
    measured = copy_bandwidth(device)
    name = torch.cuda.get_device_name(device) if ctx.cuda else "cpu"
    datasheet = next((bw for key, bw in DATASHEET_BANDWIDTH.items() if key in name), None)
    sheet = f" (datasheet {datasheet / 1e9:,.0f})" if datasheet else ""
    result.item("copy bandwidth", f"{measured / 1e9:,.0f} GB/s read + written{sheet}",
                measured_bytes_per_s=measured, datasheet_bytes_per_s=datasheet)  # fmt: skip

    def generate(model, idx, decode) -> None:
        for _ in stream(model, idx, new, temperature=0.8, top_k=200, seed=0, decode=decode):
            pass

    for compiled in (False, True):
        torch.manual_seed(0)
        model = GPT(config).to(device=device, dtype=torch.bfloat16).eval()
        decode = torch.compile(model.decode) if compiled else model.decode  # as sample.py --compile
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        for batch in (1, 16):
            label = f"{'compiled' if compiled else 'eager'}, batch {batch}"
            idx = torch.randint(0, config.vocab_size, (batch, prompt), device=device)
            if compiled:
                # Each batch size compiles in a fresh dynamo, as in its own sample.py --compile process: after the
                # graphs of batch 1, automatic dynamic shapes would recompile batch 16's with a symbolic batch size
                # (a graph and a compile time no fresh run gets). decode stays wrapped by torch.compile.
                torch._dynamo.reset()
            try:
                # The first call includes compilation, for the compiled model; then the faster of two.
                generation = partial(generate, model, idx, decode)
                first, *then = time_interleaved({label: generation}, device, 3, 0)[label].seconds
            except Exception as e:  # fails this case and the row, not the other cases
                traceback.print_exc()
                result.check(f"{label} runs", False, f"{type(e).__name__}: {one_line(e)}")
                continue
            rate = batch * new / min(then)
            bound = (datasheet or measured) * batch / weight_bytes
            which = "datasheet" if datasheet else "copy measured"
            result.item(
                label,
                f"{rate:,.0f} tok/s, {rate / bound:.0%} of the {bound:,.0f} tok/s bound ({which}; "
                f"{fmt_bytes(weight_bytes)} of weights per step); first call {first:.1f} s",
                tokens_per_s=rate, first_call_s=first, weight_bytes=weight_bytes, batch=batch, prompt=prompt,
                new_tokens=new, bound_datasheet=datasheet and datasheet * batch / weight_bytes,
                bound_measured=measured * batch / weight_bytes, fraction_of_bound=rate / bound,
            )  # fmt: skip


def row_memory(ctx: Context, result: Result) -> None:
    """Peak memory of the 124M step (bench_memory.py): measured on the GPU beside the fake-tensor estimate."""
    import dataclasses

    import torch
    from bench_memory import CONSUMER_GPU_GIB, config_of, measured_peak, tracked_peak

    config = config_of("124m")
    sizes = (8, 16)
    if ctx.smoke:
        config, sizes = dataclasses.replace(config, **SMOKE_MODEL), (8,)
    for micro_batch in sizes:
        estimate = tracked_peak(config, micro_batch, True, fake=True)
        if ctx.cuda:
            measured, how = measured_peak(config, micro_batch, torch.device("cuda"), True), "max_memory_allocated"
        else:  # no allocator to ask on a CPU: the same tracker on real tensors
            measured, how = tracked_peak(config, micro_batch, True, fake=False)["Total"], "MemTracker, real tensors"
        fits = measured / GIB < CONSUMER_GPU_GIB
        result.item(
            f"micro-batch {micro_batch}",
            f"{measured / GIB:.2f} GiB measured ({how}) vs {estimate['Total'] / GIB:.2f} estimated "
            f"({measured / estimate['Total']:.2f}x); {'fits' if fits else 'does not fit'} {CONSUMER_GPU_GIB} GB",
            measured_bytes=measured, estimate_bytes=estimate["Total"], estimate_by_kind=estimate, measured_by=how,
            micro_batch=micro_batch, block_size=config.block_size,
        )  # fmt: skip


def row_loader(ctx: Context, result: Result) -> None:
    """Host windows + copy vs tokens_on_device (bench_loader.py), at the baby's and the 124M's batch shapes."""
    import tempfile

    import torch
    from bench_loader import LOADERS, synthetic_cache, time_loaders

    device = torch.device(ctx.device)
    shapes = [("baby", 64, 256), ("124m", 16, 1024)]
    n, repeats = (5, 2) if ctx.smoke else (200, 5)
    with tempfile.TemporaryDirectory() as tmp:
        synthetic_cache(Path(tmp))
        for label, batch_size, block_size in shapes:
            times = time_loaders(Path(tmp), batch_size, block_size, device, n, repeats)
            host, on_device = (times[name].median / n for name in LOADERS)
            result.item(
                f"{label} batches {batch_size} x {block_size}",
                f"host {host * 1e6:.0f} µs, tokens_on_device {on_device * 1e6:.0f} µs per batch: "
                f"{host / on_device:.2f}x",
                host_s=host, tokens_on_device_s=on_device, speedup=host / on_device,
            )  # fmt: skip


INDUCTION = "configs/induction.yaml"
INDUCTION_STEPS = 20000  # what public two-layer runs on strings of varied lengths needed (docs/induction.md)


def row_induction(ctx: Context, result: Result) -> None:
    """The induction recipe given the steps a GPU affords (docs/induction.md): where val/induction_loss leaves the
    ln(94) = 4.54 plateau and how low it gets, the best previous-token (layer 0) and induction (layer 1) scores at
    the last drawing, and the run's wall time. Its token cache (data.source repeats) comes carried."""
    if not any((ctx.carry / "data" / "repeats" / "bytes").glob("shards-*/meta.json")):
        fix = "run `python benchmarks/gpu_check.py --prepare`"
        raise RowError(f"no induction token cache in {ctx.carry / 'data'}: {fix}")
    name = "induction"
    shutil.rmtree(ctx.work / "runs" / name, ignore_errors=True)
    steps, every = (4, 2) if ctx.smoke else (INDUCTION_STEPS, 500)
    command = [
        sys.executable, "train.py", "--config", INDUCTION, "--data.data_dir", str(ctx.carry / "data"),
        "--logger", "csv", "--runs_dir", str(ctx.work / "runs"), "--name", name,
        "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(every),
    ]  # fmt: skip
    done = run(command)
    if done.interrupted:
        raise KeyboardInterrupt
    exited(result, "train.py", done)
    metrics = read_metrics(ctx.work / "runs" / name)
    check_losses(result, metrics, "train.py")
    losses = logged(metrics, "val/induction_loss")  # (step, nats)
    if not losses:
        raise RowError("no val/induction_loss in metrics.csv")
    below = next((step for step, value in losses if value < 1.0), None)
    curve = ", ".join(f"{step}: {value:.2f}" for step, value in losses[:: max(1, len(losses) // 8)])
    result.item("val/induction_loss", f"{losses[0][1]:.2f} -> {losses[-1][1]:.2f}; under 1 nat from step {below}"
                f" ({curve})", first=losses[0][1], last=losses[-1][1], under_1_nat_step=below,
                steps=[step for step, _ in losses], values=[value for _, value in losses])  # fmt: skip
    last = metrics[-1] | {key: value for row in metrics for key, value in row.items() if value != ""}
    for layer, score in ((0, "previous_token"), (1, "induction")):
        keys = [key for key in last if re.fullmatch(rf"attention/layer{layer}\.head\d+/{score}", key)]
        best = max((float(last[key]) for key in keys), default=math.nan)
        result.item(f"best layer-{layer} {score}", f"{best:.2f}", best=best)
    result.item("whole run", f"{done.seconds:.1f} s for {steps} steps", wall_s=done.seconds)


ROWS: dict[str, Callable[[Context, Result], None]] = {
    "ttq-cold": partial(row_ttq, variant="cold"),
    "ttq-warm": partial(row_ttq, variant="warm"),
    "ttq-cudagraphs": partial(row_ttq, variant="cudagraphs"),
    "ttq-host-loader": partial(row_ttq, variant="host-loader"),
    "train-sample": row_train_sample,
    "step-124m": partial(step_rows, compiled_levers=False),
    "levers-124m": partial(step_rows, compiled_levers=True),
    "generate": row_generate,
    "memory-124m": row_memory,
    "loader": row_loader,
    "induction": row_induction,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("row", choices=ROWS)
    parser.add_argument("--result", type=Path, required=True, help="the row's JSON record")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder of the gpu_check run")
    parser.add_argument("--carry", type=Path, required=True, help="the carried folder (token cache)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--smoke", action="store_true", help="toy sizes")
    args = parser.parse_args()
    ctx = Context(args.device, args.smoke, args.work, args.carry)
    result = Result(args.result, args.row)
    result.save()
    try:
        ROWS[args.row](ctx, result)
    except KeyboardInterrupt:  # gpu_check.py's time budget: what was measured is saved already
        result.error = "stopped at its time budget"
        result.save()
        return 1
    except Exception as e:
        traceback.print_exc()
        result.error = f"{type(e).__name__}: {one_line(e, 500)}" if not isinstance(e, RowError) else str(e)
        result.save()
        return 1
    failed = [check["check"] for check in result.checks if not check["ok"]]
    if failed:
        result.error = "failed checks: " + "; ".join(failed)
        result.save()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
