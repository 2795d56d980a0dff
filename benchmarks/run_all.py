"""Run the benchmark suite one benchmark after another, then print a table of their summaries.

    python benchmarks/run_all.py --quick            # small sizes, well under a minute on a CPU (what CI runs)
    python benchmarks/run_all.py                    # CPU defaults (long: the 124M config and torch.compile)
    python benchmarks/run_all.py --device cuda      # the GPU rows of RESULTS.md

The full time-to-quality run is left out on a CPU (5000 steps of the baby GPT take hours there).

Each benchmark prints its own table and ends with a `summary:` line, which goes into the table printed last.
bench_attention_maps.py is run on its own (see README.md).
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

from common import print_table

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    "bench_attention.py", "bench_train_step.py", "bench_memory.py", "bench_loader.py", "bench_time_to_quality.py",
    "bench_generate.py",
    "bench_prepare.py",
]  # fmt: skip
TAKES_DEVICE = set(BENCHMARKS) - {"bench_time_to_quality.py", "bench_prepare.py"}  # train.py picks the GPU by itself


def run(script: str, args: list[str]) -> tuple[int, float, list[str]]:
    """Run one benchmark, echoing its output; its exit code, wall seconds and summary lines."""
    command = [sys.executable, str(HERE / script), *args]
    print(f"\n$ {' '.join(command)}", flush=True)
    start = time.perf_counter()
    summaries = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.startswith("summary: "):
                summaries.append(line.removeprefix("summary: ").strip())
    return proc.returncode, time.perf_counter() - start, summaries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="each benchmark's --quick: small sizes, a smoke test")
    parser.add_argument("--device", default="cpu", help="for every benchmark but time to quality")
    args = parser.parse_args()

    rows, failed = [], 0
    for script in BENCHMARKS:
        if script == "bench_time_to_quality.py" and not args.quick and args.device == "cpu":
            rows.append([script, "skipped", "-", "5000 steps take hours on a CPU: run it with --device cuda"])
            continue
        script_args = ["--quick"] if args.quick else []
        if script in TAKES_DEVICE:
            script_args += ["--device", args.device]
        returncode, seconds, summaries = run(script, script_args)
        failed += returncode != 0
        status = "ok" if returncode == 0 else f"exit {returncode}"
        rows.append([script, status, f"{seconds:.1f}", " | ".join(summaries) or "-"])

    print()
    print_table(["benchmark", "status", "seconds", "summary"], rows)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
