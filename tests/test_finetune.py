"""Training from pretrained weights (`--model.init_from`), offline: a GPT-2-shaped HuggingFace model with random
weights, saved to a temporary folder, stands in for OpenAI's; our own checkpoints too."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from minigpt.cli import MiniGPTCLI, main
from minigpt.export import export
from tests.skips import gpt2_or_skip
from tests.test_sample import CONFIG, write_checkpoint
from tests.test_train import REPO, load, one_error_line

transformers = pytest.importorskip("transformers")

# A run without a shape: the weights give it. Two steps at a learning rate that cannot move float32 weights.
FINETUNE = [
    "--data.source", "text", "--data.path", "text.txt", "--data.batch_size", "2", "--data.val_batches", "1",
    "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.log_every_n_steps", "1",
    "--trainer.enable_model_summary", "false", "--trainer.num_sanity_val_steps", "0",
    "--model.learning_rate", "1e-9", "--model.min_lr", "1e-9", "--model.warmup_steps", "0",
    "--logger", "false", "--sample_tokens", "5",
]  # fmt: skip


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """A fresh working directory with a small text to train on."""
    monkeypatch.chdir(tmp_path)
    words = ["thou", "art", "the", "king", "of", "Denmark", "and", "I", "thy", "loyal", "servant", "\n"]
    (tmp_path / "text.txt").write_text(" ".join(words[(i * 7) % len(words)] for i in range(6000)))
    return tmp_path


def save_random_gpt2(folder: Path, safetensors: bool = True):
    """A GPT-2-shaped HF model (GPT-2's vocabulary, 64 positions) with random weights, saved as save_pretrained does."""
    config = transformers.GPT2Config(vocab_size=50257, n_positions=64, n_embd=16, n_layer=2, n_head=2)
    torch.manual_seed(0)
    hf_model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # GPT-2's init leaves biases at 0 and LayerNorms at 1: make every number count
        for param in hf_model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    if safetensors:
        hf_model.save_pretrained(folder)
    else:  # the older layout: pytorch_model.bin
        config.save_pretrained(folder)
        torch.save(hf_model.state_dict(), folder / "pytorch_model.bin")
    return hf_model


def logits(model, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(idx)
    return out.logits if hasattr(out, "logits") else out[0]


IDS = torch.randint(0, 50257, (2, 32), generator=torch.Generator().manual_seed(1))  # (B, T)


@pytest.mark.parametrize("safetensors", [True, False], ids=["safetensors", "bin"])
def test_a_run_from_a_hf_directory_starts_from_its_weights_with_their_shape(in_tmp, safetensors):
    gpt2_or_skip()  # GPT-2's BPE: its cache or the network
    hf_model = save_random_gpt2(in_tmp / "gpt2-dir", safetensors)
    cli = MiniGPTCLI([*FINETUNE, "--model.init_from", "gpt2-dir", "--model.block_size", "32"])
    config = cli.model.config
    assert (config.n_layer, config.n_head, config.n_embd, config.vocab_size) == (2, 2, 16, 50257)
    assert config.block_size == cli.datamodule.block_size == 32  # the position table cropped from 64
    assert cli.datamodule.tokenizer == cli.model.tokenizer == "gpt2"  # the weights' own
    torch.testing.assert_close(logits(cli.model.model.eval(), IDS), logits(hf_model, IDS), atol=1e-5, rtol=0)
    # Fine-tuning starts at the weights' loss (transformers shifts the labels itself).
    with torch.no_grad():
        _, loss = cli.model.model(IDS[:, :-1], IDS[:, 1:])
        torch.testing.assert_close(loss, hf_model(IDS, labels=IDS).loss, atol=1e-5, rtol=0)


def test_two_steps_at_lr_1e_9_export_to_the_directorys_logits(in_tmp):
    gpt2_or_skip()  # GPT-2's BPE: its cache or the network
    hf_model = save_random_gpt2(in_tmp / "gpt2-dir")
    args = ("--model.init_from", "gpt2-dir", "--model.block_size", "32", "--model.dropout", "0.1", "--name", "ft")
    assert main([*FINETUNE, *args]) == 0
    ckpt = in_tmp / "runs" / "ft" / "checkpoints" / "last.ckpt"
    assert load(ckpt)["global_step"] == 2
    resolved = yaml.safe_load((in_tmp / "runs" / "ft" / "config.yaml").read_text())
    model = resolved["model"]
    assert (model["n_layer"], model["n_embd"], model["block_size"], model["dropout"]) == (2, 16, 32, 0.1)
    assert resolved["data"]["tokenizer"] == "gpt2"  # the shape and tokenizer actually trained
    export(ckpt, in_tmp / "exported")
    exported = transformers.AutoModelForCausalLM.from_pretrained(in_tmp / "exported", local_files_only=True)
    torch.testing.assert_close(logits(exported.eval(), IDS), logits(hf_model, IDS), atol=1e-4, rtol=0)


def test_a_run_from_a_minigpt_checkpoint_is_a_new_run_from_its_weights(in_tmp):
    source = write_checkpoint(in_tmp / "old" / "last.ckpt")  # bytes, 2 layers, 32 wide, block 32, at step 10
    args = ["--model.init_from", "old/last.ckpt", "--model.block_size", "16", "--model.pad_vocab_multiple", "64"]
    cli = MiniGPTCLI([*FINETUNE, *args])
    model = cli.model.model
    assert (model.config.n_layer, model.config.n_embd, cli.datamodule.tokenizer) == (2, 32, "bytes")
    ours, theirs = model.state_dict(), source.state_dict()
    assert torch.equal(ours["transformer.wpe.weight"], theirs["transformer.wpe.weight"][:16])  # cropped
    assert torch.equal(ours["transformer.wte.weight"][:257], theirs["transformer.wte.weight"])  # padded to 320
    assert model.lm_head.weight is model.transformer.wte.weight
    for name, value in theirs.items():
        if not name.endswith(("wpe.weight", "wte.weight", "lm_head.weight")):
            assert torch.equal(ours[name], value), name
    assert main([*FINETUNE, *args, "--name", "ft"]) == 0
    assert load(in_tmp / "runs" / "ft" / "checkpoints" / "last.ckpt")["global_step"] == 2  # from 0, not from 10
    # A fine-tuning run resumes like any other: from its checkpoint, not from the weights it started with.
    resume = ["--config", "runs/ft/config.yaml", "--ckpt_path", "last", "--trainer.max_steps", "3"]
    assert main(resume) == 0
    assert load(in_tmp / "runs" / "ft" / "checkpoints" / "last.ckpt")["global_step"] == 3


GPT2_DIR = ["--model.init_from", "gpt2-dir"]


def write_foreign_directories(root: Path) -> None:
    (root / "empty-dir").mkdir()
    (root / "llama-dir").mkdir()
    (root / "llama-dir" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (root / "no-weights").mkdir()
    transformers.GPT2Config(n_layer=1).save_pretrained(root / "no-weights")
    (root / "notes.ckpt").write_text("not a checkpoint")


@pytest.mark.parametrize(
    "args, expected",
    [
        ([*GPT2_DIR, "--model.n_layer", "3"], "model.n_layer=3 contradicts the weights of gpt2-dir (n_layer=2)"),
        ([*GPT2_DIR, "--model.bias", "false"], "model.bias=False contradicts the weights of gpt2-dir (bias=True)"),
        ([*GPT2_DIR, "--model.block_size", "128"], "128 is longer than the position table of gpt2-dir (block_size=64)"),
        ([*GPT2_DIR, "--data.tokenizer", "r50k_base"], "r50k_base contradicts the weights of gpt2-dir (tokenizer gpt2"),
        (["--model.init_from", "missing"], "model.init_from='missing' is neither a GPT-2 name"),
        (["--model.init_from", "empty-dir"], "empty-dir is not a HuggingFace model directory: it has no config.json"),
        (["--model.init_from", "llama-dir"], "llama-dir holds a 'llama' model, not GPT-2"),
        (["--model.init_from", "no-weights"], "no-weights: transformers cannot load its GPT-2 weights"),
        (["--model.init_from", "notes.ckpt"], "checkpoint notes.ckpt is truncated or not a torch checkpoint"),
    ],
    ids=["n_layer", "bias", "block_size", "tokenizer", "missing", "empty-dir", "foreign-dir", "no-weights", "not-ckpt"],
)  # fmt: skip
def test_bad_sources_and_contradictions_are_one_line_exit_2_and_write_nothing(in_tmp, capsys, args, expected):
    save_random_gpt2(in_tmp / "gpt2-dir")
    write_foreign_directories(in_tmp)
    capsys.readouterr()  # the stand-ins' saving
    assert main([*FINETUNE, *args]) == 2
    assert expected in one_error_line(capsys.readouterr().err)
    assert not (in_tmp / "runs").exists() and not (in_tmp / "data").exists()


def test_a_checkpoints_tokenizer_is_kept(in_tmp, capsys):
    write_checkpoint(in_tmp / "old.ckpt", CONFIG, tokenizer="bytes")
    assert main([*FINETUNE, "--model.init_from", "old.ckpt", "--data.tokenizer", "gpt2"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "data.tokenizer=gpt2 contradicts the weights of old.ckpt (tokenizer bytes)" in line


def test_the_shipped_small_recipe_fine_tunes_a_stand_in_for_gpt2(in_tmp):
    gpt2_or_skip()  # GPT-2's BPE: its cache or the network
    save_random_gpt2(in_tmp / "gpt2-dir")
    cpu_sized = [
        "--model.init_from", "gpt2-dir", "--data.path", "text.txt", "--trainer.precision", "32-true",
        "--model.compile", "false", "--trainer.max_steps", "2", "--trainer.accumulate_grad_batches", "2",
        "--data.batch_size", "1", "--data.val_batches", "1", "--logger", "false", "--sample_tokens", "0",
        "--trainer.enable_model_summary", "false", "--trainer.num_sanity_val_steps", "0", "--name", "small",
    ]  # fmt: skip
    assert main(["--config", str(REPO / "configs" / "finetune_shakespeare_small.yaml"), *cpu_sized]) == 0
    resolved = yaml.safe_load((in_tmp / "runs" / "small" / "config.yaml").read_text())
    assert resolved["model"]["block_size"] == 64  # the stand-in's position table: the config leaves it to the weights
    assert resolved["model"]["learning_rate"] == resolved["model"]["min_lr"] == 3e-5  # constant
    assert load(in_tmp / "runs" / "small" / "checkpoints" / "last.ckpt")["global_step"] == 2


def test_gpt2_weights_not_cached_offline_are_one_line_and_no_run(in_tmp):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(in_tmp / "hf")}  # an empty cache
    result = subprocess.run(
        [sys.executable, "-m", "minigpt", "train", *FINETUNE, "--model.init_from", "gpt2-medium"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2 and result.stdout == ""
    assert "GPT-2 weights 'gpt2-medium' are not in the HuggingFace cache" in one_error_line(result.stderr)
    assert not (in_tmp / "runs").exists()
