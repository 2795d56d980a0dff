"""Attention maps: the drawing function's checks and sizes, the training callback (W&B offline, CSV).

(`minigpt attention`, which draws them for a prompt, is tested in tests/test_attention_command.py.)
"""

import csv
import json
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from minigpt.callbacks import AttentionMaps
from minigpt.checkpoint import load_checkpoint
from minigpt.data import TextDataModule
from minigpt.explorer import token_texts
from minigpt.inspect import SCORES
from minigpt.model import GPT
from minigpt.module import ModelOptions
from minigpt.plots import MAX_DRAWN_TOKENS, draw_layer, figure_pixels, head_summaries, token_labels
from minigpt.tokenizer import get_tokenizer
from tests.explorer_pages import page_data
from tests.test_train import one_error_line, train
from tests.wandb_records import config_and_history

BYTES = get_tokenizer("bytes")
SUMMARIES = ("entropy", "prev_token", "first_token")
ABLATION = "induction_ablation"


def causal_softmax(n_head: int, T: int, seed: int = 0) -> torch.Tensor:
    scores = torch.randn(n_head, T, T, generator=torch.Generator().manual_seed(seed))  # (nh, T, T)
    return scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf")).softmax(dim=-1)


def png_size(path) -> tuple[int, int]:
    """(width, height) in pixels."""
    height, width = imread(path).shape[:2]
    return width, height


def expected_size(n_head: int, labels: list[str]) -> tuple[int, int]:
    shown = labels[:MAX_DRAWN_TOKENS]
    return figure_pixels(n_head, len(shown), max(map(len, shown)))


# --- drawing and summaries -------------------------------------------------------------------------------
def test_rows_must_sum_to_one_before_anything_is_drawn():
    weights = causal_softmax(2, 8)
    labels = token_labels(BYTES, list(range(97, 105)))
    draw_layer(weights, labels, layer=0)  # softmax rows: drawn
    draw_layer(weights.bfloat16(), labels, layer=0)  # rounded to bfloat16: still rows of 1, within its precision
    for wrong in (weights.transpose(1, 2), torch.rand(2, 8, 8), weights * 1.01):  # swapped axes, no softmax, ...
        with pytest.raises(ValueError, match="rows must sum to 1"):
            draw_layer(wrong, labels, layer=0)
    with pytest.raises(ValueError, match="negative, NaN"):
        draw_layer(weights.masked_fill(weights == 0, float("nan")), labels, layer=0)
    with pytest.raises(ValueError, match=r"\(n_head, T, T\)"):
        draw_layer(weights[None], labels, layer=0)


def test_summaries_of_heads_whose_pattern_is_known():
    T = 6
    previous = torch.diag(torch.ones(T - 1), diagonal=-1)  # (T, T): each token on the one before it
    previous[0, 0] = 1
    first = torch.zeros(T, T)
    first[:, 0] = 1
    uniform = torch.ones(T, T).tril() / torch.arange(1, T + 1)[:, None]  # query t spreads over t + 1 keys
    summary = head_summaries(torch.stack([previous, first, uniform]))  # name -> (3,)
    torch.testing.assert_close(
        summary["prev_token"], torch.tensor([1.0, 0.2, sum(1 / (t + 1) for t in range(1, T)) / 5])
    )
    torch.testing.assert_close(summary["first_token"], summary["prev_token"][[1, 0, 2]])
    torch.testing.assert_close(summary["entropy"][:2], torch.zeros(2))
    assert summary["entropy"][2].item() == pytest.approx(sum(math.log(t + 1) for t in range(1, T)) / (T - 1))


def test_a_long_probe_is_drawn_cut_to_its_first_64_tokens_with_a_note(tmp_path):
    ids = BYTES.encode_ordinary("for item in items:\n    total += price(item)  # $ and é\n" * 2)  # 100+ tokens
    labels = token_labels(BYTES, ids)
    assert "␣" in labels and "↵" in labels and r"\$" in labels and r"\xc3" in labels  # visible, no mathtext
    fig = draw_layer(causal_softmax(3, len(ids)), labels, layer=2, note="step 7")
    assert fig._suptitle.get_text() == f"step 7, first 64 of {len(ids)} tokens drawn"
    titles = [ax.get_title() for ax in fig.axes[:-1]]  # the last axes is the colour bar
    assert titles == ["layer 2 head 0", "layer 2 head 1", "layer 2 head 2"]
    fig.savefig(tmp_path / "map.png", format="png")
    width, height = png_size(tmp_path / "map.png")
    assert (width, height) == expected_size(3, labels)
    assert width > 2 * 64 * 10 and height > 2 * 64 * 10  # 2 x 2 panels: at least 10 pixels per token drawn


def test_the_probe_runs_in_eval_mode_without_gradients_and_training_mode_comes_back(tmp_path, monkeypatch):
    module = ModelOptions(vocab_size=257, n_layer=2, n_head=2, n_embd=16, block_size=16, dropout=0.5).build()
    seen = []
    embed = GPT.embed  # the first step of every pass through the model: its forward, and inspect's with weights

    def spy(self, idx, *args, **kwargs):
        seen.append((self.training, torch.is_grad_enabled()))
        return embed(self, idx, *args, **kwargs)

    monkeypatch.setattr(GPT, "embed", spy)
    callback = AttentionMaps()
    ids = list(range(97, 107))
    callback.ids, callback.labels, callback.tokens = ids, token_labels(BYTES, ids), token_texts(BYTES, ids)
    callback.probes = callback.induction_probes(None, module.config, BYTES.eot_token)
    trainer = SimpleNamespace(global_step=4, default_root_dir=str(tmp_path), loggers=[])
    module.train()
    paths = callback.draw(trainer, module)
    # The text probe, the three score probes, then each length's ablation: its clean loss, its layers' copies.
    assert seen == [(False, False)] * (1 + 3 + 3 * 2) and module.model.training
    assert paths == [tmp_path / "attention" / "step-000004" / f"layer-{layer}.png" for layer in (0, 1)]
    assert (tmp_path / "attention" / "step-000004" / "explorer.html").is_file()


@pytest.mark.parametrize(
    "probe,message",
    [
        ("a", "attention_maps.probe='a' is 1 token: give at least 2 tokens"),
        ("a<|endoftext|>", "attention_maps.probe: the prompt contains the special token <|endoftext|>"),
        (None, "attention_maps.probe is not set and there is no validation split"),
    ],
)
def test_an_unusable_probe_is_a_value_error_that_names_the_setting(probe, message):
    trainer = SimpleNamespace(datamodule=None, is_global_zero=True)
    with pytest.raises(ValueError, match=re.escape(message)):
        AttentionMaps(probe=probe).setup(
            trainer, ModelOptions(vocab_size=257, n_layer=1, n_head=1, n_embd=8, block_size=16).build(), "fit"
        )
    with pytest.raises(ValueError, match="every_n_validations=-1 must be >= 0"):
        AttentionMaps(every_n_validations=-1)


@pytest.mark.parametrize(
    "setting,message",
    [
        ("4", "attention_maps.score_probe_tokens=4 is too short for the head scores: give at least 5"),
        ("9", "attention_maps.score_probe_tokens=9: the head-score probe reads that many random tokens twice, which "
         "needs 5 <= score_probe_tokens <= block_size / 2 = 8: set it in that range"),
    ],
)  # fmt: skip
def test_a_score_probe_that_does_not_fit_is_one_line_before_anything_is_written(
    setting, message, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert train("--attention_maps.score_probe_tokens", setting, "--logger", "csv") == 2  # block_size 16
    assert message in one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []  # no data prepared, no run directory


def test_a_validation_text_of_too_few_distinct_tokens_for_the_score_probe_is_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "a.txt").write_text("a" * 4000)
    monkeypatch.chdir(tmp_path)
    assert train("--data.source", "text", "--data.path", "a.txt") == 2
    err = capsys.readouterr().err  # after the data preparation's progress
    assert "Traceback" not in err and err.splitlines()[-1] == (
        "error: attention_maps: the head-score probe needs 5 distinct tokens, and the validation split holds 1 "
        "besides <|endoftext|>: train on a text of more"
    )
    assert not list(tmp_path.glob("runs/*/checkpoints/*"))


# --- during training -------------------------------------------------------------------------------------
@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Runs write runs/ and data/ under a fresh temporary directory, W&B offline."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return tmp_path


def test_training_logs_maps_and_head_scalars_to_wandb_offline_and_saves_pngs(in_tmp, capsys):
    assert (
        train("--name", "w", "--logger", "wandb", "--model.n_layer", "2", "--attention_maps.every_n_validations", "1")
        == 0
    )
    assert "attention maps: probe cropped from 64 to block_size=16 tokens" in capsys.readouterr().out
    run = in_tmp / "runs" / "w"
    # The default probe: the start of the validation split, labelled token by token.
    probe = TextDataModule(data_dir=str(in_tmp / "data")).cache.tokens("val")[:16]
    size = expected_size(2, token_labels(BYTES, probe.tolist()))
    for step in ("000003", "000006"):  # validations at steps 3 and 6; training ends at 6, already drawn
        for layer in (0, 1):
            assert png_size(run / "attention" / f"step-{step}" / f"layer-{layer}.png") == size
    assert len(list((run / "attention").iterdir())) == 2

    (offline_run,) = (run / "wandb").glob("offline-run-*")
    config, history = config_and_history(offline_run)
    assert config["config"]["attention_maps"]["every_n_validations"] == 1  # the callback's settings, from the CLI
    # Each layer's image under its own key; W&B stores a logged list of images as "images/separated".
    logged = [(row["trainer/global_step"], key) for row in history for key in row if key.endswith("/_type")]
    images = [(s, f"attention_maps/layer{layer}/_type") for s in (3, 6) for layer in (0, 1)]
    pages_and_tables = [(s, f"{key}/_type") for s in (3, 6) for key in ("attention_explorer", "attention_scores")]
    assert sorted(logged) == sorted(images + pages_and_tables)
    for row in history:
        for layer in (0, 1):
            if f"attention_maps/layer{layer}/filenames" in row:
                (media,) = row[f"attention_maps/layer{layer}/filenames"]  # the PNG W&B copied into the run's files
                assert png_size(offline_run / "files" / media) == size
    scalars = [row for row in history if "attention/layer0.head0/entropy" in row]
    assert [row["trainer/global_step"] for row in scalars] == [3, 6]
    # The explorer page beside the PNGs, and the same file in W&B under attention_explorer at each draw.
    pages = [row for row in history if "attention_explorer/_type" in row]
    assert [(row["trainer/global_step"], row["attention_explorer/_type"]) for row in pages] == [(3, "html-file")] + [
        (6, "html-file")
    ]
    for row in pages:
        page = run / "attention" / f"step-{row['trainer/global_step']:06d}" / "explorer.html"
        assert (offline_run / "files" / row["attention_explorer/path"]).read_bytes() == page.read_bytes()
        header = dict(page_data(page.read_text())["header"])
        assert header["step"] == str(row["trainer/global_step"]) and header["source"] == "runs/w"
        assert header["model"].startswith("2 layers × 2 heads") and header["tokens"] == "16"
    for row in scalars:
        for layer, head, name in np.ndindex(2, 2, len(SUMMARIES + SCORES)):
            value = row[f"attention/layer{layer}.head{head}/{(SUMMARIES + SCORES)[name]}"]
            assert 0 <= value <= (math.log(16) if name == 0 else 1)
        # After 6 steps no head matters much yet: the loss moves by less than a nat either way.
        assert all(abs(row[f"attention/layer{layer}.head{head}/{ABLATION}"]) < 1 for layer, head in np.ndindex(2, 2))
    # One table of head scores per drawing, holding the scalars logged with it.
    tables = [row for row in history if "attention_scores/path" in row]
    assert [row["trainer/global_step"] for row in tables] == [3, 6]
    for table, row in zip(tables, scalars, strict=True):
        saved = json.loads((offline_run / "files" / table["attention_scores/path"]).read_text())
        assert saved["columns"] == ["layer", "head", *SCORES, ABLATION]
        assert saved["data"] == [
            [layer, head, *(row[f"attention/layer{layer}.head{head}/{name}"] for name in (*SCORES, ABLATION))]
            for layer, head in np.ndindex(2, 2)
        ]
    # The last drawing's scores are those of the last checkpoint's model on the probes the callback built.
    model, _ = load_checkpoint(run / "checkpoints" / "last.ckpt")
    data = TextDataModule(block_size=16)
    data.setup("fit")
    probes = AttentionMaps().induction_probes(data, model.config, BYTES.eot_token)
    assert probes.lengths == (8, 6, 4)  # the longest fills block_size 16
    in_text = set(data.data["val"][:].tolist())
    for tokens, n in zip(probes.sequences, probes.lengths, strict=True):  # (8, 2n): n bytes of the text, twice
        assert tokens.shape == (8, 2 * n) and torch.equal(tokens[:, :n], tokens[:, n:])
        assert all(len(set(row.tolist())) == n and set(row.tolist()) <= in_text for row in tokens)
    logged = probes.head_scores(model) | {ABLATION: probes.head_ablation(model)}
    for name, values in logged.items():
        for layer, head in np.ndindex(2, 2):
            assert scalars[-1][f"attention/layer{layer}.head{head}/{name}"] == pytest.approx(
                values[layer, head].item(), abs=1e-6
            )
    # The induction loss beside val/loss at every validation: about ln(vocab) in 6 steps, too few to learn induction.
    validations = [row for row in history if "val/loss" in row]
    assert len(validations) == 2
    assert all(0.5 * math.log(257) < row["val/induction_loss"] < 1.5 * math.log(257) for row in validations)


def test_without_wandb_a_text_probe_is_cropped_and_drawn_at_the_end_with_csv_scalars(in_tmp, capsys):
    probe = "class Point:\n    def __init__(self, x, y):"  # 42 byte tokens, block_size 16
    argv = ["--name", "c", "--logger", "csv", "--attention_maps.every_n_validations", "0", "--attention_maps.probe"]
    assert train(*argv, probe) == 0
    assert "attention maps: probe cropped from 42 to block_size=16 tokens" in capsys.readouterr().out
    run = in_tmp / "runs" / "c"
    assert [p.name for p in (run / "attention").iterdir()] == ["step-000006"]  # only at the end of training
    page = page_data((run / "attention" / "step-000006" / "explorer.html").read_text())
    assert page["T"] == 16 and dict(page["header"])["probe"] == "probe cropped from 42 to block_size=16 tokens"
    assert png_size(run / "attention" / "step-000006" / "layer-0.png") == expected_size(
        2, token_labels(BYTES, BYTES.encode_ordinary(probe)[:16])
    )
    # The scalars with the maps: once, at the end of training.
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    drawn = [row for row in rows if row["attention/layer0.head1/prev_token"]]
    assert [row["step"] for row in drawn] == ["6"]
    names = (*SUMMARIES, *SCORES, ABLATION)
    assert all(drawn[0][f"attention/layer0.head{h}/{name}"] for h in (0, 1) for name in names)
    # At every validation, beside the loss: the induction loss and the ICL score.
    validations = [row for row in rows if row["val/loss"]]
    assert [row["step"] for row in validations] == ["2", "5"]
    for row in validations:
        assert 0 < float(row["val/induction_loss"]) and abs(float(row["val/icl_score"])) < math.log(257)
