"""Every owed GPU row in one command: at most 8 minutes on one H100/H200, most valuable rows first, a table last.

    python benchmarks/gpu_check.py --prepare     # here, once: wheels + token cache into benchmarks/device-carry/
    python3 benchmarks/gpu_check.py              # on the GPU machine (the call in benchmarks/README.md)
    python3 benchmarks/gpu_check.py --rows generate memory-124m --budget 150
    python benchmarks/gpu_check.py --cpu-smoke   # the same rows at toy sizes on a CPU, without datasets and wandb
    python benchmarks/gpu_check.py --list        # the rows, their budgets and what each measures

Each row runs in a process of its own (benchmarks/gpu_rows.py ROW, or an existing benchmark's command) and has a
time budget, at which it is stopped (SIGINT, then SIGKILL): what it measured until then is kept. A row that fails (an
error, a CUDA-only bug, an out-of-memory) is reported with its error and the next row starts. A row whose time no
longer fits in the total budget is skipped, and the table says how to run it alone. This process imports neither
torch nor CUDA: nothing a row does can take it down. What the GPU machine lacks comes from the carried folder
(device_carry.py): train.py's jsonargparse as wheels, installed from those files alone, and the Tiny Shakespeare token
cache, so `datasets` is never needed there; the runs log to CSV, so `wandb` is not needed either. --cpu-smoke
proves that here: its rows run with datasets, pyarrow and wandb unimportable (and jsonargparse too, for the rows
that do not start train.py).

With $OUT set (the GPU machine's folder of files to bring back: at most 8), the full numbers go there:
gpu_check.json (every row's items, checks and errors), gpu_check.csv (one line per number), gpu_check.log (all
output), and the files the rows name (the quality runs' metrics.csv, attention maps).
"""

import argparse
import contextlib
import csv
import datetime
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import device_carry

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
BUDGET_S = 480  # 8 minutes on one H100/H200, for all the rows together
MIN_START_S = 45  # a row is started only with at least this long left (or its whole budget, when shorter)
# --cpu-smoke checks that every row runs, not how fast: its toy rows get this many times their GPU budgets, so a
# loaded CI machine (two rows side by side on two cores) does not stop one that works.
SMOKE_BUDGET_SCALE = 4
GRACE_S = 15  # after SIGINT at a row's budget, before SIGKILL: time for train.py to save last.ckpt and exit
OUT_FILES = 8  # what comes back from the GPU machine's $OUT
LOG_LIMIT = 15 * 2**20  # bytes of gpu_check.log: each file that comes back is at most 16 MiB
# Not installed on the GPU machine and never carried (datasets, wandb), or there but only datasets' (pyarrow): the
# smoke run makes them unimportable, so the rows prove they never need them.
MISSING_THERE = ["datasets", "pyarrow", "wandb"]
CLI_PACKAGES = ["jsonargparse", "docstring_parser", "typeshed_client"]  # carried as wheels, for train.py only


@dataclass(frozen=True)
class Row:
    name: str
    budget_s: int  # on one H100/H200; the row is stopped there
    measures: str  # and which RESULTS.md rows it fills
    command: tuple[str, ...] = ()  # an existing benchmark's command, run as it is; else `gpu_rows.py name`
    smoke: bool = True  # also run, at toy sizes, by --cpu-smoke
    trains: bool = False  # starts train.py, so needs jsonargparse (carried) and the token cache


# The rows that start train.py first, most valuable first: they run the path fixed for CUDA (fused AdamW under
# bf16-mixed with gradient clipping, which stopped every train.py run at its first optimizer step), so what they
# report is new. Then the 124M step, generation, memory and the loader; the levers last.
ROWS = [
    Row("ttq-cold", 150, "3: shakespeare_char to val/loss <= 1.47 through train.py (bf16-mixed, fused AdamW, "
        "clipping, compile, tokens on the device), stopped there: step, wall time, tokens/s, MFU; from empty compile "
        "caches", trains=True),
    Row("train-sample", 90, "CUDA check: train.py (bf16-mixed, fused AdamW, clipping, compile, attention maps at "
        "every validation, a sample on the training device), resume from last.ckpt, sample.py bf16 eager / "
        "--compile, minigpt attention: exit codes, finite losses", trains=True),
    Row("ttq-warm", 90, "3: ttq-cold again, with the compile caches it left (warm compile)", trains=True),
    Row("step-124m", 150, "2: GPT-2 124M step, T=1024, micro-batch 16 x 32, bf16: eager, eager with the vocabulary "
        "unpadded and with micro-batch 32 x 16, then compile: tokens/s, MFU, first step (compile), peak memory"),
    Row("generate", 80, "4: GPT-2 124M generating in bf16, batch 1 and 16, eager and compiled, against the "
        "memory-bandwidth bound (every weight read once per step)"),
    Row("memory-124m", 40, "2a: peak memory of the 124M step at micro-batch 8 and 16, measured beside the estimate"),
    Row("loader", 20, "2b: host windows + copy vs tokens_on_device, at the baby's and the 124M's batch shapes"),
    Row("levers-124m", 210, "2: compile against each lever, pair by pair: CUDA graphs (compile mode "
        "reduce-overhead), the vocabulary unpadded (pad_vocab_multiple), micro-batch 32 x 16"),
    Row("induction", 240, "induction recipe (docs/induction.md) for 20,000 steps: when val/induction_loss leaves the "
        "ln(94) plateau, how low it gets, the best previous-token and induction heads", smoke=False, trains=True),
    Row("ttq-host-loader", 100, "3: ttq with --data.tokens_on_device false (what the lever is worth)", smoke=False,
        trains=True),
    Row("ttq-cudagraphs", 120, "3: ttq with --model.compile_mode reduce-overhead (CUDA graphs in Lightning's loop)",
        smoke=False, trains=True),
    Row("attention", 60, "1: attention layer forward + backward, bf16", smoke=False,
        command=("benchmarks/bench_attention.py", "--device", "cuda")),
    Row("step-baby", 150, "2: the baby config's step variants", smoke=False, command=(
        "benchmarks/bench_train_step.py", "--device", "cuda", "--configs", "baby", "--variants", "eager", "compile",
        "compile-cudagraphs", "pageable-copy", "sync-per-step", "eager-math-sdpa")),
    Row("step-124m-more", 240, "2: 124M autotuning, cuDNN attention, foreach AdamW, a sync per step", smoke=False,
        command=("benchmarks/bench_train_step.py", "--device", "cuda", "--configs", "124m", "--variants", "compile",
                 "compile-autotune", "compile-max", "eager-cudnn-sdpa", "foreach-adamw", "sync-per-step")),
    Row("step-baby-fp32", 120, "2: the baby config in float32, TF32 on", smoke=False, command=(
        "benchmarks/bench_train_step.py", "--device", "cuda", "--configs", "baby", "--precision", "32", "--tf32",
        "--variants", "eager", "compile")),
    Row("hellaswag", 90, "HellaSwag during training: a 124M step beside the scoring of 256 stand-in examples in bf16, "
        "priced over configs/gpt2_124m.yaml's run", smoke=False,
        command=("benchmarks/bench_hellaswag.py", "--device", "cuda")),
]  # fmt: skip
BY_NAME = {row.name: row for row in ROWS}


class Log:
    """Everything printed, to stdout and to gpu_check.log (cut at LOG_LIMIT)."""

    def __init__(self, path: Path):
        self.path, self.file, self.written = path, path.open("w", encoding="utf-8"), 0
        self.lock = threading.Lock()

    def __call__(self, text: str = "") -> None:
        with self.lock:
            print(text, flush=True)
            if self.written < LOG_LIMIT:
                self.written += self.file.write(text + "\n")
                self.file.flush()


@dataclass
class Outcome:
    status: str  # ok, failed, stopped (its budget), skipped
    seconds: float
    record: dict


def run_row(row: Row, args: argparse.Namespace, work: Path, env: dict, timeout: float, log) -> Outcome:
    """Run one row in its own process group; stop it at `timeout` seconds; its record (gpu_rows.py's JSON).

    `log` takes each line of output as it comes.
    """
    result = work / "results" / f"{row.name}.json"
    result.unlink(missing_ok=True)  # a record from an earlier run in the same --work folder is not this one's
    if row.command:
        command = [sys.executable, *row.command]
    else:
        command = [sys.executable, str(BENCH / "gpu_rows.py"), row.name, "--result", str(result), "--work",
                   str(work), "--carry", str(args.carry), "--device", args.device]  # fmt: skip
        command += ["--smoke"] if args.cpu_smoke else []
    log(f"$ {' '.join(command)}")
    lines: list[str] = []
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, errors="replace", start_new_session=True)  # fmt: skip

    def echo() -> None:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            log(line.rstrip("\n"))

    reader = threading.Thread(target=echo, daemon=True)
    reader.start()
    stopped = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stopped = True
        log(f"-- {row.name}: its {timeout:.0f} s are up: SIGINT, then SIGKILL after {GRACE_S} s")
        stop(proc, signal.SIGINT)
        try:
            proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            stop(proc, signal.SIGKILL)
            proc.wait()
    stop(proc, signal.SIGKILL)  # whatever the row left running in its group (compile workers, a train.py)
    reader.join(timeout=5)
    seconds = time.perf_counter() - start

    record = json.loads(result.read_text()) if result.is_file() else {"items": [], "checks": [], "files": []}
    if row.command:  # an existing benchmark: its table (after the last blank line) and its summary line
        tail = lines[len(lines) - lines[::-1].index("") :] if "" in lines else lines[-30:]
        record["output"] = [line for line in tail if not line.startswith("summary: ")]
        record["items"] = [{"item": "summary", "text": line.removeprefix("summary: ")} for line in lines
                           if line.startswith("summary: ")]  # fmt: skip
    if stopped:
        record["error"] = record.get("error") or "stopped at its time budget"
        return Outcome("stopped", seconds, record)
    if proc.returncode != 0:
        if not record.get("error"):
            last = [line for line in lines if line.strip()][-3:]
            record["error"] = f"exit {proc.returncode}: " + " / ".join(last)
        return Outcome("failed", seconds, record)
    return Outcome("ok", seconds, record)


def stop(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def child_env(args: argparse.Namespace, work: Path, site: Path | None, row: Row) -> dict:
    """The environment of a row: unbuffered output, the repository and the carried wheels on the path (nothing is
    installed there), the shared compile caches; on a CPU smoke run, the packages the GPU machine lacks made
    unimportable and compilation through AOTAutograd without code generation."""
    paths = [str(REPO)] + ([str(site)] if site else [])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["TORCHINDUCTOR_CACHE_DIR"] = str(work / "compile-cache" / "inductor")
    env["TRITON_CACHE_DIR"] = str(work / "compile-cache" / "triton")
    if args.cpu_smoke:
        paths.insert(0, str(BENCH / "cpu_smoke"))
        env["GPU_CHECK_BLOCK"] = ",".join(MISSING_THERE + ([] if row.trains else CLI_PACKAGES))
        # AOTAutograd, as inductor on the GPU gets it (joint forward and backward graphs, functionalized, the
        # partitioner), run as ATen ops; inductor itself needs a C++ compiler and minutes per graph on a small CPU.
        env["GPU_CHECK_COMPILE_BACKEND"] = "aot_eager"
        env["OMP_NUM_THREADS"] = "1"  # a busy machine stalls two threads at every barrier, not one
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def cli_site(carry: Path, work: Path, log: Log) -> Path | None:
    """Where train.py's jsonargparse comes from: None when installed here, else the carried wheels' folder."""
    if importlib.util.find_spec("jsonargparse") is not None:
        return None
    site = work / "site"
    device_carry.install_wheels(carry / "wheels", site)
    log(f"installed the carried wheels into {site}: {', '.join(p.name for p in sorted(site.glob('*.dist-info')))}")
    return site


def machine() -> dict:
    """The device and versions, read without importing torch."""
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip()  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        smi = ""
    versions = {}
    for package in ("torch", "lightning", "jsonargparse"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {"gpu": smi or None, "python": sys.version.split()[0], **versions}


def table(outcomes: dict[str, Outcome]) -> list[str]:
    """The short table: one line per item of each row (the row's name, status and seconds on its first)."""
    rows = [["row", "status", "s", "item", "result"]]
    for name, outcome in outcomes.items():
        items = outcome.record.get("items") or []
        failed = [c["check"] for c in outcome.record.get("checks", []) if not c["ok"]]
        lines = [[item["item"], item["text"]] for item in items]
        if outcome.record.get("error"):
            lines.append(["error", outcome.record["error"]])
        elif failed:
            lines.append(["failed checks", "; ".join(failed)])
        lines = lines or [["", ""]]
        seconds = f"{outcome.seconds:.0f}" if outcome.status != "skipped" else "-"
        rows.append([name, outcome.status, seconds, *lines[0]])
        rows += [["", "", "", *line] for line in lines[1:]]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths + [0], strict=False)).rstrip() for row in rows
    ]


def write_out(out: Path, report: dict, outcomes: dict[str, Outcome], log: Log) -> list[str]:
    """gpu_check.json, .csv and .log into out, then the rows' files while fewer than OUT_FILES: the names written."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    with (out / "gpu_check.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "status", "item", "key", "value"])
        for name, outcome in outcomes.items():
            for item in outcome.record.get("items", []):
                for key, value in item.items():
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        writer.writerow([name, outcome.status, item["item"], key, value])
    written = ["gpu_check.json", "gpu_check.csv", "gpu_check.log"]
    for name, outcome in outcomes.items():
        for path in map(Path, outcome.record.get("files", [])):
            target = f"{name}-{path.name}"
            if len(written) < OUT_FILES and path.is_file() and path.stat().st_size < 16 * 2**20:
                shutil.copyfile(path, out / target)
                written.append(target)
    log.file.close()
    shutil.copyfile(log.path, out / "gpu_check.log")
    return written


def prepare(args: argparse.Namespace) -> None:
    """--prepare: the carried folder, and what the device call will send."""
    carry = args.carry
    wheels = device_carry.download_wheels(carry / "wheels")
    print(f"wheels: {', '.join(p.name for p in wheels)}")
    text = args.text
    if not text.is_file():
        sys.exit(f"error: no Tiny Shakespeare at {text}: pass --text PATH to its input.txt")
    chars = len(text.read_text(encoding="utf-8"))
    if chars != device_carry.SHAKESPEARE_CHARS:
        print(f"warning: {text} holds {chars:,} characters, not Tiny Shakespeare's {device_carry.SHAKESPEARE_CHARS:,}")
    subprocess.run([sys.executable, str(BENCH / "device_carry.py"), "cache", "--text", str(text), "--data-dir",
                    str(carry / "data")], cwd=REPO, check=True)  # fmt: skip
    carried, tree = device_carry.folder_bytes(carry), device_carry.travelling_bytes()
    print(f"{carry}: {carried / 2**20:.1f} MiB; with the working tree {(carried + tree) / 2**20:.1f} MiB of 64")


def smoke_carry(work: Path, log: Log) -> Path:
    """--cpu-smoke's carried folder: the token cache, prepared as --prepare prepares it, from a small text."""
    text = work / "input.txt"
    source = device_carry.SHAKESPEARE_TEXT
    if source.is_file():
        text.write_text(source.read_text(encoding="utf-8")[:100_000], encoding="utf-8")
    else:  # a clean clone without the shared data: any English text makes a cache to smoke-test with
        from pydoc_data.topics import topics

        text.write_text("\n".join(topics.values())[:100_000], encoding="utf-8")
    carry = work / "carry"
    done = subprocess.run([sys.executable, str(BENCH / "device_carry.py"), "cache", "--text", str(text), "--data-dir",
                           str(carry / "data")], cwd=REPO, capture_output=True, text=True)  # fmt: skip
    log(done.stdout.rstrip())
    if done.returncode != 0:
        log(done.stderr)
        sys.exit("error: the smoke run's token cache could not be prepared")
    return carry


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", nargs="+", choices=BY_NAME, metavar="ROW",
                        help="these rows, in this order (default: all; --list names them)")  # fmt: skip
    parser.add_argument("--budget", type=float, help=f"seconds for all the rows together (default {BUDGET_S})")
    parser.add_argument("--cpu-smoke", action="store_true", help="the rows at toy sizes on the CPU")
    parser.add_argument("--carry", type=Path, help="the carried folder (default: benchmarks/device-carry; "
                        "with --cpu-smoke one made in a temporary folder)")  # fmt: skip
    parser.add_argument("--prepare", action="store_true", help="make the carried folder (wheels, token cache)")
    parser.add_argument("--text", type=Path, default=device_carry.SHAKESPEARE_TEXT, help="for --prepare")
    parser.add_argument("--list", action="store_true", help="the rows, their budgets and what each measures")
    parser.add_argument("--jobs", type=int, help="rows at a time (default 1; 2 with --cpu-smoke)")
    parser.add_argument("--work", type=Path, help="scratch folder (runs, compile caches), kept for the next call "
                        "(default: a temporary folder, removed at the end)")  # fmt: skip
    args = parser.parse_args()
    args.device = "cpu" if args.cpu_smoke else "cuda"
    args.budget = args.budget or BUDGET_S * (SMOKE_BUDGET_SCALE if args.cpu_smoke else 1)
    args.jobs = args.jobs or (2 if args.cpu_smoke else 1)
    if args.jobs > 1 and not args.cpu_smoke:
        parser.error("--jobs above 1 is for --cpu-smoke: on a GPU the rows time it, one at a time")
    return args


def run_rows(rows: list[Row], args: argparse.Namespace, work: Path, deadline: float, log: Log) -> dict[str, Outcome]:
    """Each row in order (side by side with --jobs), skipped when too little time is left before the deadline."""
    site, site_error = None, None
    if any(row.trains for row in rows):
        try:
            site = cli_site(args.carry, work, log)
        except (OSError, subprocess.CalledProcessError) as e:
            site_error = f"train.py's jsonargparse could not be installed from {args.carry / 'wheels'}: {e}"
            log(f"error: {site_error}")

    def attempt(row: Row) -> Outcome:
        left = deadline - time.perf_counter()
        budget = row.budget_s * (SMOKE_BUDGET_SCALE if args.cpu_smoke else 1)
        if left < min(budget, MIN_START_S):
            return Outcome("skipped", 0, {"error": f"{left:.0f} s left of the {args.budget:.0f}"})
        block: list[str] = []  # rows side by side: each row's output in one piece
        say = log if args.jobs == 1 else block.append
        say(f"\n== {row.name} (budget {budget} s, {left:.0f} s left): {row.measures}")
        outcome = run_row(row, args, work, child_env(args, work, site, row), min(budget, left), say)
        if row.trains and site_error and outcome.status != "ok":
            outcome.record["error"] = f"{site_error}; {outcome.record.get('error')}"
        say(f"-- {row.name}: {outcome.status} in {outcome.seconds:.0f} s")
        if block:
            log("\n".join(block))
        return outcome

    with ThreadPoolExecutor(args.jobs) as pool:  # started in the rows' order
        futures = {row.name: pool.submit(attempt, row) for row in rows}
    return {name: future.result() for name, future in futures.items()}


def main() -> int:
    args = parse_args()
    if args.list:
        for row in ROWS:
            how = " ".join(row.command) if row.command else f"gpu_rows.py {row.name}"
            print(f"{row.name:<16} {row.budget_s:>4} s  {'smoke ' if row.smoke else 'GPU   '} {row.measures}  [{how}]")
        return 0
    if args.prepare:
        args.carry = args.carry or device_carry.CARRY
        prepare(args)
        return 0

    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        work = args.work.resolve() if args.work else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        (work / "results").mkdir(parents=True, exist_ok=True)
        log = Log(work / "gpu_check.log")
        info = machine()
        log(f"gpu_check {datetime.datetime.now().isoformat(timespec='seconds')}: {info}")
        if not args.cpu_smoke and not (info["gpu"] or Path("/dev/nvidiactl").exists()):
            print("error: no NVIDIA GPU here (nvidia-smi lists none): on a CPU run --cpu-smoke", file=sys.stderr)
            return 2
        if args.cpu_smoke:
            args.carry = args.carry or smoke_carry(work, log)
        args.carry = (args.carry or device_carry.CARRY).resolve()
        rows = (
            [BY_NAME[name] for name in args.rows]
            if args.rows
            else [r for r in ROWS if r.smoke or args.device == "cuda"]
        )
        outcomes = run_rows(rows, args, work, started + args.budget, log)

        elapsed = time.perf_counter() - started
        log()
        for line in table(outcomes):
            log(line)
        counts = {s: sum(o.status == s for o in outcomes.values()) for s in ("ok", "failed", "stopped", "skipped")}
        summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        log(f"\ngpu_check: {summary} in {elapsed:.0f} s of {args.budget:.0f}; {info['gpu'] or 'no GPU'}, "
            f"torch {info['torch']}")  # fmt: skip
        if skipped := [name for name, o in outcomes.items() if o.status == "skipped"]:
            log(f"skipped, to run next: python3 benchmarks/gpu_check.py --rows {' '.join(skipped)}")
        if os.environ.get("OUT"):
            report = {
                "date": datetime.date.today().isoformat(), "machine": info, "budget_s": args.budget,
                "seconds": elapsed, "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "smoke": args.cpu_smoke,
                "rows": [{"row": name, "status": o.status, "seconds": o.seconds, "budget_s": BY_NAME[name].budget_s,
                          "measures": BY_NAME[name].measures, **o.record} for name, o in outcomes.items()],
            }  # fmt: skip
            written = write_out(Path(os.environ["OUT"]), report, outcomes, log)
            print(f"full numbers in $OUT: {', '.join(written)}")
        else:
            print("(set OUT to keep the full numbers: gpu_check.json, gpu_check.csv, gpu_check.log)")
    return 1 if counts["failed"] or counts["stopped"] else 0


if __name__ == "__main__":
    sys.exit(main())
