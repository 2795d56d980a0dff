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
    table = lines[-5:]  # the header and one row per benchmark, printed last
    assert table[0].split()[:3] == ["benchmark", "status", "seconds"], proc.stdout[-2000:]
    scripts = ["bench_attention.py", "bench_train_step.py", "bench_loader.py", "bench_time_to_quality.py"]
    for row, script in zip(table[1:], scripts, strict=True):
        assert row.split()[:2] == [script, "ok"], row
    assert "weights path / sdpa path" in table[1]
    assert "tok/s" in table[2]
    assert "tokens_on_device" in table[3]
    assert "val/loss <= 1.47" in table[4]
