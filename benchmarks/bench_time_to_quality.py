"""Time to quality: `train.py` on configs/shakespeare_char.yaml to val/loss <= 1.47, its wall time and steps.

The training runs as a subprocess, exactly as a user starts it (start-up, data preparation, compilation, every
validation and checkpoint included), with the CSV logger. val/loss per validation comes from the run's
metrics.csv; the progress line the run prints after each validation is timestamped as it arrives, which gives the
wall time at which the target was first reached. Arguments this script does not know go to train.py.

    python benchmarks/bench_time_to_quality.py                         # the full 5000-step run (a GPU's job)
    python benchmarks/bench_time_to_quality.py --max-steps 500 --data.val_batches 10
    python benchmarks/bench_time_to_quality.py --quick                 # 4 steps of a tiny model (a smoke test)
"""

import argparse
import contextlib
import csv
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# The standard library only at import (common imports torch): gpu_rows.py runs train.py with these helpers before
# its process imports torch.
REPO = Path(__file__).resolve().parents[1]

DEFAULT_DATA = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
# A few seconds on a CPU: 2 layers, T=64, batch 4, validation after steps 2 and 4, no compile.
QUICK_ARGS = [
    "--model.n_layer", "2", "--model.block_size", "64", "--model.compile", "false", "--data.batch_size", "4",
    "--data.val_batches", "1", "--trainer.val_check_interval", "2", "--trainer.num_sanity_val_steps", "0",
]  # fmt: skip
# minigpt.callbacks.PrintProgress, after each validation: the step, max_steps and the val loss.
PROGRESS = re.compile(r"^step (\d+)/(\d+) \|.* val loss (\S+)")


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog="Other arguments go to train.py.")
    parser.add_argument("--config", default=str(REPO / "configs" / "shakespeare_char.yaml"))
    parser.add_argument("--data-path", default=str(DEFAULT_DATA), help="Tiny Shakespeare's input.txt")
    parser.add_argument("--target", type=float, default=1.47, help="the val/loss to reach")
    parser.add_argument("--max-steps", type=int, help="override trainer.max_steps (a shorter run)")
    parser.add_argument("--runs-dir", default=str(REPO / "runs"), help="where the run's directory goes")
    parser.add_argument("--quick", action="store_true", help="4 steps of a tiny model, 1 thread, in a temporary folder")
    args, train_args = parser.parse_known_args()
    if args.quick:
        args.max_steps = args.max_steps or 4
        train_args = QUICK_ARGS + train_args
    return args, train_args


@dataclass
class Run:
    returncode: int
    seconds: float
    lines: list[tuple[float, str]]  # (seconds since the start, line) of stdout and stderr together
    interrupted: bool = False  # stopped by SIGINT (Ctrl-C, or gpu_check.py at a row's time budget)

    def tail(self, n: int = 3) -> str:
        return " / ".join(line for _, line in self.lines[-n:])

    def progress(self) -> list[tuple[float, int, str]]:
        """(seconds, optimizer steps done, val loss as printed) of each validation's progress line."""
        return [(t, int(m[1]), m[3]) for t, line in self.lines if (m := PROGRESS.match(line))]


def run(command: list[str], env: dict | None = None) -> Run:
    """Run a command in the repository root, echoing its output, each line timed from the start.

    At a SIGINT (which reaches the command too: train.py then saves last.ckpt and exits) what it printed until then
    is returned, marked interrupted.
    """
    start = time.perf_counter()
    lines = []
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        errors="replace",
    )  # fmt: skip
    try:
        for line in proc.stdout:
            lines.append((time.perf_counter() - start, line.rstrip("\n")))
            print("  | " + line, end="", flush=True)
        proc.wait()
    except KeyboardInterrupt:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        return Run(proc.returncode or -2, time.perf_counter() - start, lines, interrupted=True)
    return Run(proc.returncode, time.perf_counter() - start, lines)


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of a train.py run's metrics.csv (the CSV logger's)."""
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def logged(metrics: list[dict], key: str) -> list[tuple[int, float]]:
    """(step, value) of a metric in metrics.csv. Lightning logs a validation at its last batch's index: the
    optimizer steps done are step + 1, as the progress line prints them."""
    shift = 1 if key.startswith("val/") else 0
    return [(int(row["step"]) + shift, float(row[key])) for row in metrics if row.get(key)]


def first_and_best(
    losses: list[tuple[int, float]], target: float
) -> tuple[tuple[int, float] | None, tuple[int, float]]:
    """The first (step, val/loss) at or under the target (None if none), and the best."""
    first = next(((step, loss) for step, loss in losses if loss <= target), None)
    return first, min(losses, key=lambda step_loss: step_loss[1])


def main() -> None:
    from common import print_table

    args, train_args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = Path(tmp if args.quick else args.runs_dir)
        name = time.strftime("ttq-%Y%m%d-%H%M%S")
        data_args = ["--data.path", args.data_path]
        if args.quick and not Path(args.data_path).exists():
            # The smoke test checks the pipeline, not the quality: with no local Tiny Shakespeare, the embedded text.
            data_args = ["--data.source", "embedded"]
        command = [
            sys.executable, "train.py", "--config", args.config, *data_args, "--logger", "csv",
            "--runs_dir", str(runs_dir), "--name", name, "--sample_tokens", "0",
        ]  # fmt: skip
        if args.quick:
            command += ["--data.data_dir", str(Path(tmp) / "data")]
        if args.max_steps:
            command += ["--trainer.max_steps", str(args.max_steps)]
        command += train_args
        print(" ".join(command))
        # One thread for the smoke test: a busy machine stalls two threads at every barrier, not one.
        env = {**os.environ, "OMP_NUM_THREADS": "1"} if args.quick else None
        done = run(command, env)
        if done.interrupted:
            raise KeyboardInterrupt
        if done.returncode != 0:
            sys.exit(f"train.py exited with code {done.returncode}")
        losses = logged(read_metrics(runs_dir / name), "val/loss")

    wall, printed_at = done.seconds, {step: t for t, step, _ in done.progress()}
    reached_at, (best_step, best) = first_and_best(losses, args.target)
    rows = [["whole run", f"{losses[-1][0]}", f"{wall:.1f}", f"{losses[-1][1]:.4f}"]]
    rows.append(["best val/loss", f"{best_step}", f"{printed_at.get(best_step, float('nan')):.1f}", f"{best:.4f}"])
    if reached_at:
        step, loss = reached_at
        at = printed_at.get(step)
        rows.append([f"val/loss <= {args.target}", f"{step}", f"{at:.1f}" if at else "-", f"{loss:.4f}"])
        summary = f"val/loss <= {args.target} at step {step}" + (f", {at:.1f} s" if at else "")
    else:
        summary = f"val/loss <= {args.target} not reached (best {best:.4f} at step {best_step})"
    print(f"\nwall time from the start of train.py, compilation included ({len(losses)} validations)")
    print_table(["", "step", "wall s", "val/loss"], rows)
    print(f"summary: {summary}; whole run {wall:.1f} s")


if __name__ == "__main__":
    main()
