"""benchmarks/gpu_check.py, the one command that measures every owed GPU row: its CPU smoke run (every row at toy
sizes, with what the GPU machine lacks made unimportable), and how it keeps rows apart (a row that fails or overruns
its budget is reported, and the next row runs). No assertion on any time: CI machines vary."""

import json
import math
import os
import re
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check  # noqa: E402  (the standard library only: no torch)

SMOKE_ROWS = [row.name for row in gpu_check.ROWS if row.smoke]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("out")
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--cpu-smoke"],
        cwd=REPO,
        env={**os.environ, "OUT": str(out)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    return proc, out


def table_statuses(stdout: str) -> dict[str, str]:
    """{row: status} from the table gpu_check.py prints last."""
    lines = stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line.split()[:5] == ["row", "status", "s", "item", "result"])
    statuses = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        if not line.startswith(" "):
            name, status = line.split()[:2]
            statuses[name] = status
    return statuses


@pytest.mark.slow
def test_cpu_smoke_runs_every_row_and_prints_the_table_last(smoke):
    proc, _ = smoke
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert table_statuses(proc.stdout) == dict.fromkeys(SMOKE_ROWS, "ok"), proc.stdout[-4000:]
    assert re.search(rf"gpu_check: {len(SMOKE_ROWS)} ok in \d+ s", proc.stdout)


@pytest.mark.slow
def test_cpu_smoke_writes_every_number_to_out(smoke):
    proc, out = smoke
    assert proc.returncode == 0, proc.stdout[-6000:]
    names = sorted(path.name for path in out.iterdir())
    # What the GPU machine brings back: at most 8 plain files, named in letters, digits, '.', '_' and '-'.
    assert len(names) <= gpu_check.OUT_FILES and all(re.fullmatch(r"[A-Za-z0-9._-]+", name) for name in names)
    assert {"gpu_check.json", "gpu_check.csv", "gpu_check.log", "ttq-cold-metrics.csv"} <= set(names), names
    assert any(name.startswith("train-sample-") and name.endswith(".png") for name in names), names

    report = json.loads((out / "gpu_check.json").read_text())
    rows = {row["row"]: row for row in report["rows"]}
    assert list(rows) == SMOKE_ROWS
    for name, row in rows.items():
        assert row["status"] == "ok" and row["error"] is None, (name, row)
        assert row["items"] and all(check["ok"] for check in row["checks"]), (name, row)
        numbers = [v for item in row["items"] for v in item.values() if isinstance(v, float)]
        assert all(math.isfinite(v) for v in numbers), (name, row["items"])
    items = {name: {item["item"]: item for item in row["items"]} for name, row in rows.items()}

    assert items["ttq-cold"]["training steps"]["tokens_per_s"] > 0
    assert items["ttq-cold"]["to val/loss <= 1.47"]["best_val"] > 1.47  # 4 steps of a toy model: not reached
    assert set(items["step-124m"]) == {"eager", "eager, vocab unpadded", "eager, micro-batch 4 x 1", "compile"}
    levers = {"compile, CUDA graphs", "compile, vocab unpadded", "compile, micro-batch 4 x 1"}
    assert set(items["levers-124m"]) == levers
    assert all(item["tokens_per_s"] > 0 for row in ("step-124m", "levers-124m") for item in items[row].values())
    cases = {f"{how}, batch {batch}" for how in ("eager", "compiled") for batch in (1, 16)}
    assert cases < set(items["generate"]) and all(items["generate"][case]["fraction_of_bound"] > 0 for case in cases)
    memory = items["memory-124m"]["micro-batch 8"]  # on a CPU: the tracker on real tensors, to the byte
    assert memory["measured_bytes"] == memory["estimate_bytes"] > 0
    checks = {check["check"] for check in rows["train-sample"]["checks"]}
    # The smoke run trains as a GPU does: bf16-mixed, fused AdamW, clipping, compiled (through AOTAutograd).
    for expected in ("resumed from last.ckpt", "attention maps drawn at every validation", "compile on",
                     "precision bf16-mixed", "AdamW fused", "gradient clipping on",
                     "sample.py bf16 --compile: exit 0, tokens made on cpu",
                     "minigpt attention: exit 0, PNGs, finite head scores"):  # fmt: skip
        assert expected in checks, checks
    assert (out / "gpu_check.csv").read_text().count("\n") > 20


def smoke_args() -> Namespace:
    return Namespace(cpu_smoke=True, carry=REPO / "benchmarks" / "device-carry", device="cpu")


IMPORTS = """
import importlib
for name in ("datasets", "pyarrow", "wandb", "jsonargparse"):
    try:
        importlib.import_module(name)
        print(name, "imported")
    except ImportError:
        print(name, "blocked")
"""


@pytest.mark.parametrize("row, jsonargparse", [("generate", "blocked"), ("ttq-cold", "imported")])
def test_smoke_rows_cannot_import_what_the_gpu_machine_lacks(tmp_path, row, jsonargparse):
    env = gpu_check.child_env(smoke_args(), tmp_path, None, gpu_check.BY_NAME[row])
    proc = subprocess.run([sys.executable, "-c", IMPORTS], env=env, capture_output=True, text=True, check=True)
    said = dict(line.split() for line in proc.stdout.splitlines())
    assert env["PYTHONPATH"].split(os.pathsep)[:2] == [str(REPO / "benchmarks" / "cpu_smoke"), str(REPO)]
    # train.py's rows have jsonargparse (carried as wheels there); the others must run without it.
    assert said == {"datasets": "blocked", "pyarrow": "blocked", "wandb": "blocked", "jsonargparse": jsonargparse}


def test_a_failing_row_and_an_overrunning_row_are_reported_and_the_next_rows_run(tmp_path, monkeypatch, capsys):
    row = gpu_check.Row
    rows = [
        row("boom", 5, "fails", command=("-c", "import sys; sys.exit('CUDA error: an illegal memory access')")),
        row("sleepy", 2, "overruns", command=("-c", "print('summary: started', flush=True)\nwhile True: pass")),
        row("fine", 5, "works", command=("-c", "print('a table'); print(); print('ok'); print('summary: 1x')")),
        row("late", 60, "does not fit in what is left", command=("-c", "pass")),
    ]
    monkeypatch.setattr(gpu_check, "ROWS", rows)
    monkeypatch.setattr(gpu_check, "BY_NAME", {row.name: row for row in rows})
    monkeypatch.setattr(gpu_check, "machine", lambda: {"gpu": "a GPU", "torch": "2.x"})  # the rows need none
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--rows", "boom", "sleepy", "fine", "late", "--budget", "30"])
    monkeypatch.setenv("OUT", str(tmp_path))

    assert gpu_check.main() == 1
    stdout = capsys.readouterr().out
    assert table_statuses(stdout) == {"boom": "failed", "sleepy": "stopped", "fine": "ok", "late": "skipped"}
    assert "skipped, to run next: python3 benchmarks/gpu_check.py --rows late" in stdout
    report = {row["row"]: row for row in json.loads((tmp_path / "gpu_check.json").read_text())["rows"]}
    assert "illegal memory access" in report["boom"]["error"]
    assert report["sleepy"]["error"] == "stopped at its time budget"
    assert report["sleepy"]["seconds"] < 2 + gpu_check.GRACE_S
    assert report["fine"]["items"] == [{"item": "summary", "text": "1x"}] and report["fine"]["output"] == ["ok"]


def test_rows_side_by_side_only_on_a_cpu():
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--jobs", "2"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "--jobs above 1 is for --cpu-smoke" in proc.stderr


@pytest.mark.skipif(Path("/dev/nvidiactl").exists(), reason="a GPU machine: the GPU rows would run")
def test_without_a_gpu_the_gpu_rows_are_refused_in_one_line():
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == "error: no NVIDIA GPU here (nvidia-smi lists none): on a CPU run --cpu-smoke\n"


def test_time_to_quality_mfu_counts_the_baby_configs_flops_over_minigpts_peak_table(monkeypatch, tmp_path):
    import gpu_rows
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")  # as an H200 names itself
    on_gpu = gpu_rows.Context("cuda", smoke=False, work=tmp_path, carry=tmp_path)
    # 71.4 MFLOP per token (benchmarks/NOTES.md): 1M tokens/s is 7.2% of the H200's dense bf16 989.4 TFLOP/s; a
    # 32-true run's matmuls are TF32 (train.py sets "high"), half that peak.
    assert gpu_rows.ttq_mfu(on_gpu, 1e6) == pytest.approx(71.4e6 * 1e6 / 989.4e12, rel=1e-3)
    assert gpu_rows.ttq_mfu(on_gpu, 1e6, "32-true") == pytest.approx(71.4e6 * 1e6 / 494.7e12, rel=1e-3)
    assert gpu_rows.ttq_mfu(gpu_rows.Context("cpu", smoke=True, work=tmp_path, carry=tmp_path), 1e6) is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA L40S")  # not in the table
    assert gpu_rows.ttq_mfu(on_gpu, 1e6) is None


@pytest.fixture
def graph_sizes(monkeypatch) -> list[bool]:
    """torch.compile in this process records, for each graph dynamo makes, whether any of its sizes is symbolic."""
    import torch

    made: list[bool] = []
    compile_ = torch.compile

    def backend(gm, example_inputs):
        sizes = [s for x in example_inputs for s in (x.shape if isinstance(x, torch.Tensor) else [x])]
        made.append(any(isinstance(size, torch.SymInt) for size in sizes))
        return gm.forward

    def recording(model=None, **kwargs):
        kwargs.pop("mode", None)  # inductor's
        return compile_(model, **{**kwargs, "backend": backend})

    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", recording)
    yield made
    torch._dynamo.reset()


def test_rows_that_compile_several_shapes_in_one_process_compile_each_static(graph_sizes, tmp_path):
    """generate (batch 1, then 16) and levers-124m (the vocabulary, the micro-batch) compile new shapes in one
    process: each must get the static graphs a fresh run at that shape gets, not automatic dynamic shapes'."""
    import gpu_rows

    ctx = gpu_rows.Context("cpu", smoke=True, work=tmp_path, carry=tmp_path)
    result = gpu_rows.Result(tmp_path / "row.json", "row")
    gpu_rows.row_generate(ctx, result)
    generation = len(graph_sizes)
    gpu_rows.step_rows(ctx, result, compiled_levers=True)
    assert all(check["ok"] for check in result.checks), result.checks
    assert generation >= 4 and len(graph_sizes) > generation  # prefill and step at two batch sizes; the levers
    assert not any(graph_sizes), graph_sizes
