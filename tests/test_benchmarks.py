"""The benchmark suite runs end to end at its small sizes (no assertion on any time: CI machines vary)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_run_all_quick_completes_and_prints_its_table():
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run_all.py"), "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    lines = proc.stdout.rstrip().splitlines()
    table = lines[-7:]  # the header and one row per benchmark, printed last
    assert table[0].split()[:3] == ["benchmark", "status", "seconds"], proc.stdout[-2000:]
    scripts = [
        "bench_attention.py", "bench_train_step.py", "bench_memory.py", "bench_loader.py", "bench_time_to_quality.py",
        "bench_prepare.py",
    ]  # fmt: skip
    for row, script in zip(table[1:], scripts, strict=True):
        assert row.split()[:2] == [script, "ok"], row
    assert "weights path / sdpa path" in table[1]
    assert "tok/s" in table[2]
    assert "GiB estimated" in table[3]
    assert "tokens_on_device" in table[4]
    assert "val/loss <= 1.47" in table[5]
    assert "x llm.c per process" in table[6] and "from 1 to 2 processes" in table[6]
    # The memory estimate on fake tensors equals the same tracker's count on real ones.
    (check,) = [line for line in lines if line.startswith("check: fake-tensor estimate")]
    estimate, real = (int(word.replace(",", "")) for word in check.split() if word.replace(",", "").isdigit())
    assert estimate == real, check
