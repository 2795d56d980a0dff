"""The head scores and the induction loss measure something: a model trained on repeating text grows a head that
attends where an induction head does, and its induction loss falls far below ln(vocab)."""

import csv
import random

import pytest
import torch

from minigpt.checkpoint import load_checkpoint
from minigpt.cli import main
from minigpt.inspect import head_scores, repeated_random_tokens
from minigpt.model import GPT

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
def test_training_on_repeating_text_grows_an_induction_head(tmp_path, monkeypatch, one_thread):
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

    # Guessing among the 26 letters costs ln(26) = 3.26 nats; knowing nothing of them, ln(257) = 5.55 (the sequences
    # are 8 x 3 random letters twice, the letters drawn from the validation text).
    losses = [float(row["val/induction_loss"]) for row in rows if row["val/induction_loss"]]
    assert len(losses) == 4 and losses[-1] < min(1.0, losses[0]), losses
    # On the logged probe only its second half can attend to induction keys: a perfect head scores 0.5 there.
    heads = [f"attention/layer{layer}.head{head}/induction" for layer in (0, 1) for head in (0, 1)]
    drawn = [max(float(row[key]) for key in heads) for row in rows if row[heads[0]]]
    assert len(drawn) == 4 and drawn[-1] >= 0.3, drawn

    # Three letters said five times: every query after the first three has induction keys (a perfect head scores
    # 12/15 = 0.8; attention spread evenly over the keys, about 0.27).
    probe = repeated_random_tokens(torch.tensor(list(LETTERS.encode())), 3, seed=1)[0, :3].repeat(5)  # (15,)
    trained, _ = load_checkpoint(run / "checkpoints" / "last.ckpt")
    torch.manual_seed(0)
    untrained = GPT(trained.config)
    before, after = head_scores(untrained, probe), head_scores(trained, probe)
    assert before["induction"].max() < 0.35
    best = divmod(after["induction"].argmax().item(), trained.config.n_head)  # (layer, head)
    assert after["induction"][best] >= 0.5, after["induction"]
    # What that head does is induction: its attention on the previous or on a duplicate token is far smaller.
    assert after["induction"][best] > 2 * max(after["previous_token"][best], after["duplicate_token"][best])
