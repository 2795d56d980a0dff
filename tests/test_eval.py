"""`minigpt eval --task hellaswag` and HellaSwag during training: scores worked out by hand, agreement with a plain
one-ending-at-a-time scorer, bf16 autocast forced on the CPU, a trained model far above chance, DDP's summed counts,
and bad input as one line with exit code 2."""

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from minigpt import evaluate, hellaswag
from minigpt.hellaswag import Counts, Example, parse_example, score
from minigpt.model import GPT, GPTConfig
from minigpt.tokenizer import get_tokenizer
from tests.skips import gpt2_or_skip
from tests.test_gpu_paths import torchrun
from tests.test_sample import run_command, write_checkpoint
from tests.test_train import REPO, TINY, one_error_line

CONFIG = GPTConfig(vocab_size=257, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.0, bias=True)
CHEAP = ord("a")  # the byte the unigram model below predicts


def run_eval(capsys, *argv: str) -> tuple[int, str, str]:
    return run_command(evaluate.main, capsys, *argv)


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def unigram_model(config: GPTConfig = CONFIG) -> GPT:
    """A GPT that ignores its input and predicts byte 'a' with logit 20, every other id with logit 0: each 'a' of an
    ending costs ~0 (257 e^-20 = 5e-7 nats), each other token (the space before the ending included) ~20 nats.

    Every weight is zero except the final LayerNorm's bias (20 in channel 0) and channel 0 of 'a''s embedding row
    (1): the blocks add nothing to the residual stream (their LayerNorms output zeros), ln_f outputs its bias at
    every position, and the tied LM head reads 20 for 'a' only.
    """
    model = GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.transformer.ln_f.bias[0] = 20.0
        model.transformer.wte.weight[CHEAP, 0] = 1.0
    return model.eval()


# Worked by hand for the unigram model: an ending's loss is ~20 x its costly tokens (its leading space and every
# byte that is not 'a'); mean = that / its tokens. block_size 16 scores at most the last 15 tokens of an ending.
HAND_MADE = [
    # " aaaa": 20/5 = 4 | " b": 40/2 = 20 | " aab": 40/4 = 10 | " aaaaaaaaab": 40/11 = 3.6
    # lowest sum: 0 (20); lowest mean: 3 (3.6). Label 3: acc wrong, acc_norm right.
    {"ctx": "One", "endings": ["aaaa", "b", "aab", "aaaaaaaaab"], "label": 3},
    # " bb": 60/3 = 20 | " aaaab": 40/6 = 6.7 | " bbbbbbbb": 180/9 = 20 | " bbb": 80/4 = 20
    # lowest sum: 1 (40); lowest mean: 1. Label 1: both right.
    {"ctx": "Two", "endings": ["bb", "aaaab", "bbbbbbbb", "bbb"], "label": 1, "ind": 7, "activity_label": "x"},
    # A context of 40 tokens, cut to its last ones. " " + 20 x 'a' + "b" is 22 tokens: the row is cut to its last 16,
    # of which the last 15 are scored: 14 'a' and "b" = 20/15 = 1.3; " ab": 40/3 = 13.3; " bab": 60/4 = 15;
    # " cc": 60/3 = 20. Lowest sum and mean: 0. Label 2: both wrong.
    {"ctx": "x" * 40, "endings": ["a" * 20 + "b", "ab", "bab", "cc"], "label": 2},
    # " aaa": 20/4 = 5 | " b": 40/2 = 20 | " bb": 60/3 = 20 | " aaaab": 40/6 = 6.7
    # Lowest sum and mean: 0. The label as the hub writes it, a string: "0", both right.
    {"ctx": "Four", "endings": ["aaa", "b", "bb", "aaaab"], "label": "0"},
]
HAND_ACC, HAND_ACC_NORM = 2 / 4, 3 / 4  # right: acc examples 2 and 4; acc_norm examples 1, 2 and 4


def reference_losses(model: GPT, enc, record: dict) -> list[tuple[float, float]]:
    """(summed, mean) loss of each ending, the plain way: one ending at a time, no batch, no padding, no mask, in
    float64; the context's tokens, then " " + ending's, cut to their last block_size; every ending token scored that
    has a token before it."""
    losses = []
    for ending in record["endings"]:
        ending_tokens = enc.encode_ordinary(" " + ending)
        tokens = (enc.encode_ordinary(record["ctx"]) + ending_tokens)[-model.config.block_size :]
        logits, _ = model(torch.tensor([tokens]))
        log_probs = torch.log_softmax(logits[0].double(), dim=-1)
        first = max(len(tokens) - len(ending_tokens), 1)
        nll = [-log_probs[t - 1, tokens[t]].item() for t in range(first, len(tokens))]
        losses.append((sum(nll), sum(nll) / len(nll)))
    return losses


def reference_counts(model: GPT, enc, records: list[dict]) -> Counts:
    counts = Counts()
    for record in records:
        sums, means = zip(*reference_losses(model, enc, record), strict=True)
        label = int(record["label"])
        counts += Counts(int(sums.index(min(sums)) == label), int(means.index(min(means)) == label), 1)
    return counts


def random_records(n: int, seed: int = 0) -> list[dict]:
    """HellaSwag-like records of varied lengths: contexts from 1 to 60 bytes (block_size 16 cuts most), endings
    from 0 to 30."""
    rng = random.Random(seed)

    def text(longest: int) -> str:
        return "".join(rng.choice("abcdefgh .,") for _ in range(rng.randint(0, longest)))

    return [
        {"ctx": rng.choice("ABC") + text(59), "endings": [text(30) for _ in range(4)], "label": rng.randrange(4)}
        for _ in range(n)
    ]


def test_the_hand_made_file_scores_as_worked_out_by_hand(tmp_path, capsys):
    ckpt = tmp_path / "unigram.ckpt"
    write_checkpoint(ckpt, CONFIG)  # then its weights are replaced by the unigram model's
    saved = torch.load(ckpt, weights_only=True)
    saved["state_dict"] = {f"model.{k}": v for k, v in unigram_model().state_dict().items()}
    torch.save(saved, ckpt)
    data = write_jsonl(tmp_path / "hand.jsonl", HAND_MADE)

    code, out, err = run_eval(capsys, "--ckpt", str(ckpt), "--task", "hellaswag", "--data", str(data))
    assert code == 0, err
    assert out.startswith(f"hellaswag: acc {HAND_ACC:.4f}  acc_norm {HAND_ACC_NORM:.4f}  (4 examples, ")
    assert out.endswith(" s)\n") and out.count("\n") == 1  # the summary line alone: no progress bar off a terminal
    assert reference_counts(unigram_model(), get_tokenizer("bytes"), HAND_MADE) == Counts(2, 3, 4)


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_batched_scores_agree_with_the_plain_scorer(batch_size):
    torch.manual_seed(0)
    model, enc = GPT(CONFIG).eval(), get_tokenizer("bytes")
    records = random_records(23)
    examples = [parse_example(record, "test") for record in records]
    for record, example in zip(records, examples, strict=True):  # each example's picks, not only the totals
        assert score(model, enc, [example]) == reference_counts(model, enc, [record])
    assert score(model, enc, examples, batch_size=batch_size) == reference_counts(model, enc, records)


def test_bf16_autocast_is_forced_on_the_cpu(tmp_path, capsys, monkeypatch):
    """--dtype bfloat16 runs each forward under bf16 autocast (what a GPU gets by default), float32 weights."""
    ckpt = tmp_path / "a.ckpt"
    write_checkpoint(ckpt, CONFIG)
    seen = []
    forward = GPT.forward

    def recording_forward(self, idx, targets=None):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), self.lm_head.weight.dtype))
        return forward(self, idx, targets)

    monkeypatch.setattr(GPT, "forward", recording_forward)
    data = write_jsonl(tmp_path / "r.jsonl", random_records(5))
    args = ["--ckpt", str(ckpt), "--task", "hellaswag", "--data", str(data), "--batch-size", "2"]
    assert run_eval(capsys, *args, "--dtype", "bfloat16")[0] == 0
    assert seen == [(True, torch.bfloat16, torch.float32)] * 3  # 5 examples, 2 per forward
    seen.clear()
    assert run_eval(capsys, *args)[0] == 0  # the CPU's default: float32, no autocast
    assert {enabled for enabled, _, _ in seen} == {False}


def test_limit_and_out(tmp_path, capsys):
    ckpt = tmp_path / "a.ckpt"
    model = write_checkpoint(ckpt, CONFIG)
    records = random_records(9, seed=1)
    data = write_jsonl(tmp_path / "r.jsonl", records)
    out = tmp_path / "scores.json"
    args = ["--ckpt", str(ckpt), "--task", "hellaswag", "--data", str(data), "--limit", "5", "--out", str(out)]
    code, stdout, err = run_eval(capsys, *args)
    assert code == 0, err
    expected = reference_counts(model.eval(), get_tokenizer("bytes"), records[:5])
    assert json.loads(out.read_text()) == {"hellaswag": {"acc": expected.acc, "acc_norm": expected.acc_norm, "n": 5}}
    assert "(5 examples, " in stdout


def story_sentence(rng: random.Random) -> str:
    """A sentence of a small made-up language: a template with six slots."""
    names, places = ["Anna", "Boris", "Clara", "David", "Emma", "Felix"], ["market", "river", "garden", "station"]
    things, verbs = ["apples", "letters", "flowers", "candles", "books"], ["bought", "carried", "painted", "sold"]
    return (
        f"{rng.choice(names)} walked to the {rng.choice(places)} in the morning, and there {rng.choice(names)} "
        f"{rng.choice(verbs)} seven {rng.choice(things)} for the old {rng.choice(places)}."
    )


def shuffled_endings(rng: random.Random, n: int) -> list[dict]:
    """Examples whose right ending is a sentence's real last 8 words and the wrong ones those words shuffled."""
    records = []
    for k in range(n):
        words = story_sentence(rng).split()
        right = " ".join(words[-8:])
        endings = [right]
        while len(endings) < 4:
            shuffled = rng.sample(words[-8:], 8)
            if " ".join(shuffled) not in endings:
                endings.append(" ".join(shuffled))
        label = k % 4
        endings[0], endings[label] = endings[label], endings[0]
        records.append({"ctx": " ".join(words[:-8]), "endings": endings, "label": label})
    return records


def logged(run: Path, name: str) -> list[float]:
    with open(run / "metrics.csv", newline="") as f:
        return [float(row[name]) for row in csv.DictReader(f) if row.get(name)]


def eval_checkpoint(capsys, ckpt: Path, data: Path) -> dict:
    out = ckpt.parent / "scores.json"
    code, _, err = run_eval(capsys, "--ckpt", str(ckpt), "--task", "hellaswag", "--data", str(data), "--out", str(out))
    assert code == 0, err
    return json.loads(out.read_text())["hellaswag"]


@pytest.mark.slow
def test_a_trained_model_tells_real_endings_from_shuffled_ones_and_training_logs_it(tmp_path, monkeypatch, capsys):
    from minigpt.cli import main

    monkeypatch.chdir(tmp_path)
    rng = random.Random(0)
    Path("story.txt").write_text("\n".join(story_sentence(rng) for _ in range(3000)) + "\n")
    data = write_jsonl(tmp_path / "shuffled.jsonl", shuffled_endings(rng, 40))
    args = [
        "--data.source", "text", "--data.path", "story.txt", "--model.n_layer", "2", "--model.n_embd", "32",
        "--model.block_size", "64", "--model.warmup_steps", "10", "--model.learning_rate", "3e-3",
        "--data.batch_size", "16", "--trainer.max_steps", "60", "--trainer.val_check_interval", "60",
        "--eval.hellaswag_every", "1", "--eval.hellaswag_data", str(data), "--name", "story", "--logger", "csv",
    ]  # fmt: skip
    assert main([*TINY, *args]) == 0
    run = tmp_path / "runs" / "story"
    acc, acc_norm = logged(run, "eval/hellaswag_acc"), logged(run, "eval/hellaswag_acc_norm")
    assert len(acc) == len(acc_norm) == 1
    assert acc[0] >= 0.6  # chance is 0.25: 24 of 40 by chance has probability 2e-8
    # The last validation ran on the final weights: minigpt eval on last.ckpt scores what training logged.
    scores = eval_checkpoint(capsys, run / "checkpoints" / "last.ckpt", data)
    assert scores["acc"] == pytest.approx(acc[0]) and scores["acc_norm"] == pytest.approx(acc_norm[0])


@pytest.mark.slow
def test_the_gpt2_124m_config_logs_hellaswag_as_it_trains_cpu_sized(tmp_path, monkeypatch):
    """configs/gpt2_124m.yaml with a CPU-sized model and data, its eval settings and bf16-mixed precision kept: the
    scoring runs under bf16 autocast, as on a GPU, and is logged at the validation."""
    from minigpt.cli import main

    gpt2_or_skip()
    monkeypatch.chdir(tmp_path)
    data = write_jsonl(tmp_path / "r.jsonl", random_records(6, seed=4))
    scored = []
    ending_losses = hellaswag.ending_losses

    def recording_ending_losses(*args, **kwargs):  # one call per forward of the HellaSwag callback
        scored.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return ending_losses(*args, **kwargs)

    monkeypatch.setattr(hellaswag, "ending_losses", recording_ending_losses)
    cpu_sized = [
        "--config", str(REPO / "configs" / "gpt2_124m.yaml"), "--model.n_layer", "1", "--model.n_head", "2",
        "--model.n_embd", "16", "--model.block_size", "32", "--model.compile", "false", "--model.warmup_steps", "1",
        "--trainer.max_steps", "2", "--trainer.accumulate_grad_batches", "1", "--trainer.val_check_interval", "2",
        "--trainer.num_sanity_val_steps", "0", "--trainer.enable_model_summary", "false",
        "--data.source", "embedded", "--data.path", "null", "--data.name", "null", "--data.streaming", "false",
        "--data.token_budget", "null", "--data.dataset_name", "null", "--data.batch_size", "2",
        "--data.num_workers", "0", "--data.val_batches", "1", "--attention_maps.every_n_validations", "0",
        "--attention_maps.at_train_end", "false", "--eval.hellaswag_data", str(data), "--logger", "csv",
        "--sample_tokens", "0", "--name", "small",
    ]  # fmt: skip
    assert main(cpu_sized) == 0
    run = tmp_path / "runs" / "small"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["eval"]["hellaswag_every"] == 1 and config["trainer"]["precision"] == "bf16-mixed"
    assert len(logged(run, "eval/hellaswag_acc")) == len(logged(run, "eval/hellaswag_acc_norm")) == 1
    assert scored == [(True, torch.bfloat16)]  # 6 examples, the config's 16 per forward: one forward


@pytest.mark.slow
def test_two_ddp_processes_sum_their_shares_to_one_process_counts(tmp_path, monkeypatch, capsys):
    """Two CPU processes (gloo) each score every other example of 7; the logged score is that of all 7, as one
    process scores the final checkpoint."""
    from minigpt.cli import prepare

    monkeypatch.chdir(tmp_path)
    data = write_jsonl(tmp_path / "r.jsonl", random_records(7, seed=2))
    assert prepare([*TINY[:8], "--data.batch_size", "4"]) == 0
    args = [*TINY, "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
            "--name", "two", "--logger", "csv", "--sample_tokens", "0", "--eval.hellaswag_every", "1",
            "--eval.hellaswag_data", str(data), "--eval.batch_size", "2"]  # fmt: skip
    done = torchrun(tmp_path, 2, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "runs" / "two"
    acc, acc_norm = logged(run, "eval/hellaswag_acc"), logged(run, "eval/hellaswag_acc_norm")
    assert len(acc) == 2  # validations at steps 3 and 6
    scores = eval_checkpoint(capsys, run / "checkpoints" / "last.ckpt", data)
    assert scores["n"] == 7
    assert scores["acc"] == pytest.approx(acc[-1]) and scores["acc_norm"] == pytest.approx(acc_norm[-1])


@pytest.fixture
def ckpt(tmp_path) -> Path:
    write_checkpoint(tmp_path / "a.ckpt", CONFIG)
    return tmp_path / "a.ckpt"


GOOD = {"ctx": "A man is sitting on a roof. he", "endings": ["a", "b", "c", "d"], "label": 1}


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([json.dumps(GOOD), "ctx,endings,label"], "line 2 is not JSON"),
        ([json.dumps(GOOD), json.dumps({"ctx": "x", "label": 0})], "line 2 is not a HellaSwag example"),
        ([json.dumps({**GOOD, "endings": ["a", "b", "c"]})], "line 1: endings is not a list of 4 texts"),
        ([json.dumps({**GOOD, "label": 4})], "line 1: label 4 is out of range"),
        ([json.dumps({**GOOD, "label": -1})], "line 1: label -1 is out of range"),
        ([json.dumps({**GOOD, "label": "second"})], "line 1: label 'second' is not a number"),
        ([""], "holds no HellaSwag example"),
    ],
)
def test_bad_files_are_one_line_naming_the_line(tmp_path, capsys, ckpt, lines, message):
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "scores.json"
    out.write_text("kept")
    code, _, err = run_eval(capsys, "--ckpt", str(ckpt), "--task", "hellaswag", "--data", str(data), "--out", str(out))
    assert code == 2 and message in one_error_line(err) and str(data) in err
    assert out.read_text() == "kept"  # nothing half-written


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "hellaswg"], "invalid choice: 'hellaswg'"),
        ([], "the following arguments are required: --task"),
        (["--task", "hellaswag", "--data", "missing.jsonl"], "missing.jsonl cannot be read"),
        (["--task", "hellaswag", "--limit", "0"], "--limit 0: give a number of examples >= 1"),
        (["--task", "hellaswag", "--batch-size", "0"], "--batch-size 0"),
        (["--task", "hellaswag", "--out", "no/such/dir/r.json"], "its folder does not exist"),
    ],
)
def test_bad_options_are_one_line(capsys, ckpt, args, message):
    code, _, err = run_eval(capsys, "--ckpt", str(ckpt), *args)
    assert code == 2 and message in one_error_line(err)


def test_the_hub_set_with_no_network_says_to_pass_data(tmp_path, ckpt):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf")}  # fmt: skip
    command = [sys.executable, "-m", "minigpt", "eval", "--ckpt", str(ckpt), "--task", "hellaswag"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    line = one_error_line(done.stderr)
    assert "cannot download HellaSwag (Rowan/hellaswag)" in line and "pass a HellaSwag jsonl file with --data" in line


def test_bad_training_settings_are_refused_before_the_run(tmp_path, monkeypatch, capsys):
    from minigpt.cli import main

    monkeypatch.chdir(tmp_path)
    assert main([*TINY, "--eval.hellaswag_every", "1", "--eval.hellaswag_data", "none.jsonl"]) == 2
    assert "none.jsonl cannot be read" in one_error_line(capsys.readouterr().err)
    assert main([*TINY, "--eval.hellaswag_every", "-1"]) == 2
    assert "eval.hellaswag_every=-1 must be >= 0" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()


def test_counts_add_and_hellaswag_records_parse():
    assert Counts(1, 2, 3) + Counts(1, 0, 2) == Counts(2, 2, 5)
    assert Counts().acc == 0.0
    assert parse_example({**GOOD, "label": "3"}, "x") == Example(GOOD["ctx"], tuple(GOOD["endings"]), 3)
