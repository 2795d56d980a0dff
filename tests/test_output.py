"""What a default run prints, as a user sees it in a log (no terminal): W&B's offline line, the data line, the model
summary, one line per validation, where the files are, the sample. Nothing on stderr: no wandb or Lightning chatter."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_train import TINY

REPO = Path(__file__).resolve().parent.parent

EXPECTED = [
    r"W&B: not logged in, logging offline to runs/r/wandb; upload later with `wandb sync runs/r/wandb/offline-run-\*`",
    r"prepared data/python-reference/bytes: [\d,]+ train and [\d,]+ val tokens \(no cache yet\)",
    r"  \| Name      \| Type       \| Params",
    r"-+",
    r"0 \| model     \| GPT        \| [\d.]+ K",
    r"1 \| val_loss  \| MeanMetric \| 0",
    r"2 \| icl_score \| ICLScore   \| 0",
    r"-+",
    r"[\d.]+ K +Total params",
    r"[\d.]+ +Total estimated model params size \(MB\)",
    r"[\d.]+ K +Training FLOPs per token",
    r"step 3/6 \| train loss [\d.]+ \| val loss [\d.]+ \| [\d,]+ tok/s",
    r"step 6/6 \| train loss [\d.]+ \| val loss [\d.]+ \| [\d,]+ tok/s",
    r"",
    r"run directory: runs/r",
    r"  config:      runs/r/config.yaml",
    r"  checkpoint:  runs/r/checkpoints/best.ckpt",
    r"  checkpoint:  runs/r/checkpoints/last.ckpt",
    r"  W&B run:     runs/r/wandb",
    r"",
    r"sample \(20 tokens, temperature 0.8, on cpu\):",
]


@pytest.mark.slow
def test_a_default_run_prints_only_what_matters(tmp_path):
    (tmp_path / "home").mkdir()  # no W&B credentials: offline, as for a new user
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")} | {"HOME": str(tmp_path / "home")}
    args = [*TINY, "--model.block_size", "64", "--trainer.enable_model_summary", "true", "--logger", "wandb"]
    done = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args, "--name", "r"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr[-3000:]
    lines = done.stdout.splitlines()
    for pattern, line in zip(EXPECTED, lines, strict=False):
        assert re.fullmatch(pattern, line), f"{line!r} is not {pattern!r}:\n{done.stdout}"
    assert len(lines) >= len(EXPECTED) + 1  # and the sample's text
