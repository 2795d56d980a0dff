"""lm-evaluation-harness on `minigpt export`'s directory, offline, on a local HellaSwag-format task: the harness's
log-likelihood of each ending is minus our summed loss of it, and its acc is `minigpt eval`'s.

The harness builds its multiple-choice requests its own way (the context and " " + choice encoded together, then
split), so the examples here have no trailing spaces, where that way and build-nanogpt's would cut tokens apart
differently; its acc_norm divides by characters, not tokens, and is not compared (docs/evaluation.md).
"""

import json
import random
from pathlib import Path

import pytest
import torch

from minigpt import evaluate
from minigpt.export import export
from minigpt.hellaswag import ending_losses, parse_example, render
from minigpt.model import GPTConfig
from tests.skips import gpt2_or_skip
from tests.test_eval import shuffled_endings, write_jsonl
from tests.test_sample import run_command, write_checkpoint

CONFIG = GPTConfig(vocab_size=50257, block_size=64, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True)


def task_yaml(folder: Path, data: Path) -> None:
    """A harness task reading the jsonl with the `json` dataset builder: HellaSwag's fields as they are."""
    folder.mkdir()
    (folder / "hellaswag_local.yaml").write_text(
        "task: hellaswag_local\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    validation: {json.dumps(str(data))}\n"
        "validation_split: validation\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{ctx}}"\n'
        'doc_to_target: "{{label}}"\n'
        'doc_to_choice: "{{endings}}"\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )


@pytest.mark.slow
def test_the_harness_scores_the_export_as_minigpt_eval_does(tmp_path, monkeypatch, capsys):
    import lm_eval
    from lm_eval.tasks import TaskManager

    enc = gpt2_or_skip()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    ckpt = tmp_path / "a.ckpt"
    model = write_checkpoint(ckpt, CONFIG, tokenizer="gpt2", seed=3).eval()
    records = shuffled_endings(random.Random(5), 12)
    data = write_jsonl(tmp_path / "local.jsonl", records)
    export(ckpt, tmp_path / "hf")
    task_yaml(tmp_path / "tasks", data)

    results = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={tmp_path / 'hf'}", tasks=["hellaswag_local"], device="cpu",
        batch_size=4, task_manager=TaskManager(include_path=str(tmp_path / "tasks")), log_samples=True,
    )  # fmt: skip
    samples = sorted(results["samples"]["hellaswag_local"], key=lambda sample: sample["doc_id"])
    assert len(samples) == len(records)
    with torch.no_grad():
        for record, sample in zip(records, samples, strict=True):
            rows = render(enc, parse_example(record, "test"), CONFIG.block_size)
            ours, _ = ending_losses(model, rows, torch.device("cpu"))  # (4,) summed losses
            theirs = torch.tensor([float(log_likelihood) for log_likelihood, _ in sample["filtered_resps"]])
            torch.testing.assert_close(-theirs, ours, atol=1e-3, rtol=1e-4)

    out = tmp_path / "scores.json"
    argv = ["--ckpt", str(ckpt), "--task", "hellaswag", "--data", str(data), "--out", str(out)]
    code, _, err = run_command(evaluate.main, capsys, *argv)
    assert code == 0, err
    ours = json.loads(out.read_text())["hellaswag"]
    assert results["results"]["hellaswag_local"]["acc,none"] == pytest.approx(ours["acc"])
    assert ours["n"] == len(records)
