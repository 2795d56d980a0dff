"""The benchmark suite runs end to end at its small sizes (no assertion on any time: CI machines vary)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def quick_run(script: str) -> list[str]:
    """The lines `benchmarks/<script> --quick` prints, once it has exited with code 0."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout.rstrip().splitlines()


def test_run_all_quick_completes_and_prints_its_table():
    lines = quick_run("run_all.py")
    table = lines[-8:]  # the header and one row per benchmark, printed last
    assert table[0].split()[:3] == ["benchmark", "status", "seconds"], "\n".join(lines[-40:])
    scripts = [
        "bench_attention.py", "bench_train_step.py", "bench_memory.py", "bench_loader.py", "bench_time_to_quality.py",
        "bench_generate.py", "bench_prepare.py",
    ]  # fmt: skip
    for row, script in zip(table[1:], scripts, strict=True):
        assert row.split()[:2] == [script, "ok"], row
    assert "weights path / sdpa path" in table[1]
    assert "tok/s" in table[2]
    assert "GiB estimated" in table[3]
    assert "tokens_on_device" in table[4]
    assert "val/loss <= 1.47" in table[5]
    assert "minigpt tokens/s vs HF generate" in table[6]
    assert "x llm.c per process" in table[7] and "from 1 to 2 processes" in table[7]
    # The memory estimate on fake tensors equals the same tracker's count on real ones.
    (check,) = [line for line in lines if line.startswith("check: fake-tensor estimate")]
    estimate, real = (int(word.replace(",", "")) for word in check.split() if word.replace(",", "").isdigit())
    assert estimate == real, check


def test_attention_maps_benchmark_quick_prints_every_part_and_the_share():
    lines = quick_run("bench_attention_maps.py")
    assert lines[-9].split() == ["median", "per", "run", "seconds", "per", "run", "of", "training"]
    rows = [line.strip().split("  ")[0] for line in lines[-8:-1]]
    parts = ["of which probe and PNGs", "of which head scores", "of which head ablation", "of which explorer page"]
    assert rows == ["training step", "drawing", *parts, "induction loss"]
    assert lines[-1].startswith("summary: attention maps cost ") and "induction loss at 3 validations" in lines[-1]


def test_interleaved_rotates_the_order_every_round_and_returns_what_the_timed_calls_returned():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import common
    import torch

    calls = []
    fns = {name: (lambda name=name: calls.append(name) or f"{name}{len(calls)}") for name in "abc"}
    returned = common.interleaved(fns, torch.device("cpu"), repeats=3, warmup=1)
    assert "".join(calls) == "abc" + "abc" + "bca" + "cab"  # the warm-up, then rounds 1 to 3
    assert returned == {"a": ["a4", "a9", "a11"], "b": ["b5", "b7", "b12"], "c": ["c6", "c8", "c10"]}


def test_hellaswag_benchmark_quick_prints_the_share_of_training():
    lines = quick_run("bench_hellaswag.py")
    assert [line.split()[0] for line in lines[-3:-1]] == ["training", "8"]  # the step, the 8 examples scored
    assert lines[-1].startswith("summary: HellaSwag costs ") and "76 evaluations of 10042 examples" in lines[-1]
