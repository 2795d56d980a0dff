"""One W&B run per run directory: every resume logs into the run that its directory started, offline too.

Offline, wandb writes each start into an `offline-run-*` folder of its own; the folders of one run share its id, and
`wandb sync` uploads the folders of one id into that run, one after the other in the order they were started.
"""

from pathlib import Path

import pytest

from minigpt.logger import RUN_ID_FILE
from tests.test_train import train
from tests.wandb_records import config_and_history, records

SHORT = ["--logger", "wandb", "--trainer.val_check_interval", "2"]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Runs write runs/ and data/ under a fresh temporary directory, W&B offline."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return tmp_path


def starts(wandb_dir: Path) -> list[tuple[str, list[int]]]:
    """Each offline start under wandb_dir, in the order they started: its run id and the training steps it logged."""
    found = []
    for folder in wandb_dir.glob("offline-run-*"):
        _, history = config_and_history(folder)  # waits for the finished run file
        (run,) = [
            r.run for path in folder.glob("*.wandb") for r in records(path) if r.WhichOneof("record_type") == "run"
        ]
        steps = [row["trainer/global_step"] for row in history if "train/loss" in row]
        found.append((run.start_time.ToNanoseconds(), run.run_id, steps))
    return [(run_id, steps) for _, run_id, steps in sorted(found)]


@pytest.mark.slow
def test_resumes_log_into_the_run_the_directory_started(in_tmp):
    assert train("--name", "w", *SHORT, "--trainer.max_steps", "4") == 0
    wandb_dir = in_tmp / "runs" / "w" / "wandb"
    run_id = (wandb_dir / RUN_ID_FILE).read_text()
    for max_steps in ("8", "12"):
        assert train("--name", "w", *SHORT, "--ckpt_path", "last", "--trainer.max_steps", max_steps) == 0
        assert (wandb_dir / RUN_ID_FILE).read_text() == run_id

    logged = starts(wandb_dir)
    assert [run for run, _ in logged] == [run_id] * 3  # three starts, one run
    assert {path.name.split("-")[-1] for path in wandb_dir.glob("offline-run-*")} <= {run_id, "1", "2"}
    assert [steps for _, steps in logged] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]  # the steps continue


def test_a_fresh_run_is_a_new_wandb_run_in_a_new_or_a_reused_directory(in_tmp):
    assert train("--name", "a", *SHORT, "--trainer.max_steps", "2") == 0
    assert train("--name", "b", *SHORT, "--trainer.max_steps", "2") == 0
    first_a = (in_tmp / "runs/a/wandb" / RUN_ID_FILE).read_text()
    assert first_a != (in_tmp / "runs/b/wandb" / RUN_ID_FILE).read_text()

    # The same name without --ckpt_path trains from step 0 again: a run of its own, not a second pass over the first.
    assert train("--name", "a", *SHORT, "--trainer.max_steps", "2") == 0
    second_a = (in_tmp / "runs/a/wandb" / RUN_ID_FILE).read_text()
    assert second_a != first_a
    assert sorted(run for run, _ in starts(in_tmp / "runs/a/wandb")) == sorted([first_a, second_a])
