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
import csv
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, print_table

DEFAULT_DATA = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
# A few seconds on a CPU: 2 layers, T=64, batch 4, validation after steps 2 and 4, no compile.
QUICK_ARGS = [
    "--model.n_layer", "2", "--model.block_size", "64", "--model.compile", "false", "--data.batch_size", "4",
    "--data.val_batches", "1", "--trainer.val_check_interval", "2", "--trainer.num_sanity_val_steps", "0",
]  # fmt: skip
PROGRESS = re.compile(r"^step (\d+)/\d+ .*val loss")  # minigpt.callbacks.PrintProgress, after each validation


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


def run_training(command: list[str], env: dict) -> tuple[int, float, dict[int, float]]:
    """Run train.py, echoing its output; its exit code, wall seconds, and when each validation step was printed."""
    start = time.perf_counter()
    printed_at = {}
    with subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        for line in proc.stdout:
            print("  | " + line, end="", flush=True)
            if match := PROGRESS.match(line):
                printed_at[int(match.group(1))] = time.perf_counter() - start
    return proc.returncode, time.perf_counter() - start, printed_at


def val_losses(metrics_csv: Path) -> list[tuple[int, float]]:
    """(optimizer steps done, val/loss) per validation. Lightning logs validation at the last batch's index: +1."""
    with metrics_csv.open() as f:
        return [(int(row["step"]) + 1, float(row["val/loss"])) for row in csv.DictReader(f) if row.get("val/loss")]


def main() -> None:
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
        returncode, wall, printed_at = run_training(command, env)
        if returncode != 0:
            sys.exit(f"train.py exited with code {returncode}")
        losses = val_losses(runs_dir / name / "metrics.csv")

    reached = next(((step, loss) for step, loss in losses if loss <= args.target), None)
    best_step, best = min(losses, key=lambda s_l: s_l[1])
    rows = [["whole run", f"{losses[-1][0]}", f"{wall:.1f}", f"{losses[-1][1]:.4f}"]]
    rows.append(["best val/loss", f"{best_step}", f"{printed_at.get(best_step, float('nan')):.1f}", f"{best:.4f}"])
    if reached:
        at = printed_at.get(reached[0])
        rows.append([f"val/loss <= {args.target}", f"{reached[0]}", f"{at:.1f}" if at else "-", f"{reached[1]:.4f}"])
        summary = f"val/loss <= {args.target} at step {reached[0]}" + (f", {at:.1f} s" if at else "")
    else:
        summary = f"val/loss <= {args.target} not reached (best {best:.4f} at step {best_step})"
    print(f"\nwall time from the start of train.py, compilation included ({len(losses)} validations)")
    print_table(["", "step", "wall s", "val/loss"], rows)
    print(f"summary: {summary}; whole run {wall:.1f} s")


if __name__ == "__main__":
    main()
