"""What the probes of three lengths catch: a model trained on text that repeats with short periods learns to copy
from those distances back, which passes for induction at the lengths that match them and fails at any other."""

import csv
import math
import random

import pytest
import torch

from minigpt.checkpoint import load_checkpoint
from minigpt.cli import main
from minigpt.inspect import head_ablation, head_scores, induction_loss, repeated_random_tokens

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def repeating_text(seed: int, runs: int = 4000) -> str:
    """Runs of 2, 3 or 4 distinct random letters, each run said 6 times: `xqxqxqxqxqxq`, `bktbktbkt...`, ..."""
    rng = random.Random(seed)
    return "".join("".join(rng.sample(LETTERS, rng.choice((2, 3, 4)))) * 6 for _ in range(runs))


@pytest.fixture
def one_thread():
    """A 2-layer, 64-wide model trains fastest on one thread; and one thread gives the same numbers anywhere."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_copying_from_the_distances_of_the_training_text_is_no_induction_at_other_lengths(
    tmp_path, monkeypatch, one_thread
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "repeats.txt").write_text(repeating_text(seed=0))
    argv = [
        "--data.source", "text", "--data.path", "repeats.txt", "--data.batch_size", "32", "--data.val_batches", "4",
        "--model.n_layer", "2", "--model.n_head", "2", "--model.n_embd", "64", "--model.block_size", "16",
        "--model.learning_rate", "3e-3", "--model.min_lr", "3e-4", "--model.warmup_steps", "30",
        "--trainer.max_steps", "800", "--trainer.val_check_interval", "200", "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_model_summary", "false", "--seed_everything", "0",
        # Draw at every validation; the score probes: 5, 4 and 3 random letters twice (they must fit 16).
        "--attention_maps.every_n_validations", "1", "--attention_maps.score_probe_tokens", "5",
        "--name", "induction", "--logger", "csv", "--sample_tokens", "0",
    ]  # fmt: skip
    assert main(argv) == 0
    run = tmp_path / "runs" / "induction"
    rows = list(csv.DictReader((run / "metrics.csv").open()))

    # On the logged probes (5, 4 and 3 letters twice) the induction loss falls, but not far: guessing among the 26
    # letters costs ln(26) = 3.26 nats, and the model is right at two of the three lengths only.
    losses = [float(row["val/induction_loss"]) for row in rows if row["val/induction_loss"]]
    assert len(losses) == 4 and 1.0 < losses[-1] < losses[0], losses

    # Its runs have periods 2, 3 and 4: copying from 1, 2 or 3 tokens back predicts them. n letters shown twice
    # need the token n - 1 back: the model does it for 3 letters, with a head an ablation shows it needs, ...
    trained, _ = load_checkpoint(run / "checkpoints" / "last.ckpt")
    letters = torch.tensor(list(LETTERS.encode()))
    three = repeated_random_tokens(letters, 3, count=8, seed=1)  # (8, 6)
    assert induction_loss(trained, three) < 1.0
    assert head_scores(trained, three[0])["induction"].max() >= 0.35
    assert head_ablation(trained, three).max() > 1.0
    # ... and not for 8, 7 back: no head looks there, none matters, and the loss is a guess's or worse.
    eight = repeated_random_tokens(letters, 8, count=8, seed=1)  # (8, 16)
    assert induction_loss(trained, eight) > math.log(26)
    assert head_scores(trained, eight[0])["induction"].max() < 0.2
    assert head_ablation(trained, eight).max() < 0.5
