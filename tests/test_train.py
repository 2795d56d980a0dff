"""train.py end to end on tiny models: run directory, checkpoints, W&B offline, resume, faults and bad input."""

import math
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from minigpt.checkpoint_io import AtomicCheckpointIO
from minigpt.cli import MiniGPTCLI, main, prepare
from minigpt.data import TextDataModule
from minigpt.memory import parameter_count
from minigpt.model import GPT, GPTConfig
from minigpt.module import ModelOptions, flops_per_token, warmup_cosine
from tests.probes import digest
from tests.wandb_records import config_and_history

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))

# A model and run small enough for a few seconds on a CPU; every run below starts from these.
TINY = [
    "--model.n_layer", "1", "--model.n_head", "2", "--model.n_embd", "16", "--model.block_size", "16",
    "--model.warmup_steps", "2", "--data.batch_size", "4", "--data.val_batches", "2",
    "--trainer.max_steps", "6", "--trainer.val_check_interval", "3", "--trainer.log_every_n_steps", "1",
    "--trainer.enable_model_summary", "false", "--trainer.num_sanity_val_steps", "0",
    "--logger", "false", "--sample_tokens", "20",
]  # fmt: skip


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Runs write runs/ and data/ under a fresh temporary directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def train(*args: str) -> int:
    return main([*TINY, *args])


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


# --- configs ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads_through_the_cli_parser(config, capsys):
    assert main(["--config", str(config), "--print_config"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["model"]["n_embd"] % resolved["model"]["n_head"] == 0
    assert resolved["data"]["tokenizer"] in ("bytes", "gpt2")
    assert resolved["trainer"]["max_steps"] > 0


def test_vocab_size_and_tokenizer_flow_from_data_to_model(in_tmp):
    cli = MiniGPTCLI([*TINY, "--data.tokenizer", "bytes", "--model.block_size", "24"])
    assert cli.model.config.vocab_size == cli.datamodule.vocab_size == 257
    assert cli.model.hparams.tokenizer == "bytes"
    assert cli.datamodule.block_size == 24


# --- a whole run -----------------------------------------------------------------------------------------
def test_train_writes_run_directory_checkpoints_metrics_and_sample(in_tmp, capsys):
    assert train("--name", "r", "--logger", "csv") == 0
    out = capsys.readouterr().out
    run = in_tmp / "runs" / "r"
    assert "run directory: runs/r" in out and "sample (20 tokens" in out
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["n_embd"] == 16

    for name in ("last.ckpt", "best.ckpt"):
        ckpt = load(run / "checkpoints" / name)  # plain types only: loads with weights_only=True
        assert ckpt["minigpt"]["tokenizer"] == "bytes"
        assert ckpt["minigpt"]["model_config"]["vocab_size"] == 257
        assert all(key.startswith("model.") and "_orig_mod" not in key for key in ckpt["state_dict"])
    assert load(run / "checkpoints" / "last.ckpt")["global_step"] == 6

    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    for metric in ("train/loss", "val/loss", "val/ppl", "train/lr", "train/tokens", "train/tokens_per_sec"):
        assert metric in header


def test_wandb_offline_run_holds_hyperparameters_config_and_metrics(in_tmp, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert train("--name", "w", "--logger", "wandb") == 0
    assert "wandb sync runs/w/wandb/offline-run-" in capsys.readouterr().out
    (offline_run,) = (in_tmp / "runs" / "w" / "wandb").glob("offline-run-*")
    config, history = config_and_history(offline_run)
    assert config["model"]["n_embd"] == 16 and config["tokenizer"] == "bytes"  # the module's hyperparameters
    assert config["config"]["model"]["n_layer"] == 1  # the resolved CLI config
    assert config["config"]["trainer"]["max_steps"] == 6
    logged = {key for row in history for key in row}
    assert {"train/loss", "val/loss", "val/ppl", "train/lr", "train/tokens", "train/tokens_per_sec"} <= logged
    assert all(math.isfinite(row["val/loss"]) for row in history if "val/loss" in row)


# --- resume ----------------------------------------------------------------------------------------------
def test_resume_continues_like_an_uninterrupted_run(in_tmp):
    """8 steps in one go vs 4 steps, stop, resume to 8: same step, schedule position, data and weights."""
    schedule = ["--model.decay_steps", "8", "--model.warmup_steps", "2"]
    assert train("--name", "whole", "--trainer.max_steps", "8", "--trainer.val_check_interval", "4", *schedule) == 0
    assert train("--name", "split", "--trainer.max_steps", "4", "--trainer.val_check_interval", "4", *schedule) == 0
    assert load(in_tmp / "runs/split/checkpoints/last.ckpt")["global_step"] == 4
    assert (
        train("--name", "split", "--ckpt_path", "last", "--trainer.max_steps", "8", "--trainer.val_check_interval", "4",
              *schedule) == 0
    )  # fmt: skip

    whole, split = (load(in_tmp / f"runs/{name}/checkpoints/last.ckpt") for name in ("whole", "split"))
    assert whole["global_step"] == split["global_step"] == 8
    assert whole["lr_schedulers"][0]["last_epoch"] == split["lr_schedulers"][0]["last_epoch"] == 8
    assert whole["lr_schedulers"][0]["_last_lr"] == pytest.approx(split["lr_schedulers"][0]["_last_lr"])
    for key, value in whole["state_dict"].items():
        torch.testing.assert_close(split["state_dict"][key], value, atol=1e-5, rtol=1e-4)


def test_resume_last_without_name_picks_the_newest_run(in_tmp):
    assert train("--name", "old") == 0
    assert train("--name", "new") == 0
    os.utime(in_tmp / "runs/old/checkpoints/last.ckpt", (1, 1))  # make "new" unambiguously the newest
    assert train("--ckpt_path", "last", "--trainer.max_steps", "9") == 0
    assert load(in_tmp / "runs/new/checkpoints/last.ckpt")["global_step"] == 9


def test_tokens_on_device_trains_exactly_as_the_host_loader(in_tmp):
    assert train("--name", "host") == 0
    assert train("--name", "device", "--data.tokens_on_device", "true") == 0
    host, device = (load(in_tmp / f"runs/{name}/checkpoints/last.ckpt") for name in ("host", "device"))
    assert host["global_step"] == device["global_step"] == 6
    for key, value in host["state_dict"].items():  # the same batches, so the same weights
        torch.testing.assert_close(device["state_dict"][key], value, atol=1e-6, rtol=1e-5)


def test_padded_vocabulary_trains_and_its_checkpoint_samples(in_tmp):
    from minigpt.checkpoint import load_checkpoint
    from minigpt.generate import generate

    assert train("--name", "padded", "--model.pad_vocab_multiple", "64") == 0
    model, _ = load_checkpoint(in_tmp / "runs/padded/checkpoints/last.ckpt")
    assert model.transformer.wte.weight.size(0) == 320 and model.config.vocab_size == 257  # 5 x 64 rows
    assert generate(model, torch.zeros(2, 1, dtype=torch.long), 30, seed=0).max().item() < 257


@pytest.mark.slow
def test_a_prepared_cache_trains_without_datasets_installed(in_tmp):
    assert train("--name", "prepares", "--trainer.max_steps", "1", "--sample_tokens", "0") == 0
    # A machine without `datasets` (or pyarrow): importing either fails, as it would there.
    code = (
        "import sys; sys.modules['datasets'] = sys.modules['pyarrow'] = None; from minigpt.cli import main; "
        f"sys.exit(main({[*TINY, '--name', 'without']!r}))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert load(in_tmp / "runs/without/checkpoints/last.ckpt")["global_step"] == 6


# --- faults ----------------------------------------------------------------------------------------------
def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(in_tmp, capsys, monkeypatch):
    forward = GPT.forward
    calls = {"train": 0}

    def poisoned_after_four_steps(self, idx, targets=None, **kwargs):
        logits, loss = forward(self, idx, targets, **kwargs)
        if self.training:
            calls["train"] += 1
            if calls["train"] > 4:
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(GPT, "forward", poisoned_after_four_steps)
    assert train("--name", "nan", "--trainer.max_steps", "20") == 1
    assert "NaN or infinite" in capsys.readouterr().err
    last = load(in_tmp / "runs/nan/checkpoints/last.ckpt")
    assert last["global_step"] == 3  # the validation before the NaN; nothing written after it
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_sigint_saves_last_checkpoint_before_exiting(tmp_path):
    args = [*TINY, "--name", "int", "--trainer.max_steps", "100000", "--trainer.val_check_interval", "3"]
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = []
    for line in proc.stdout:  # wait until training is under way
        output.append(line)
        if line.startswith("step 6/"):
            break
    proc.send_signal(signal.SIGINT)
    output.append(proc.stdout.read())
    proc.wait(timeout=60)
    text = "".join(output)
    assert "interrupted at step" in text, text
    step = load(tmp_path / "runs/int/checkpoints/last.ckpt")["global_step"]
    assert step >= 6 and f"interrupted at step {step}" in text


def test_ctrl_c_during_a_checkpoint_write_arrives_after_a_complete_file(tmp_path, monkeypatch):
    """torch.save cut by KeyboardInterrupt raises a RuntimeError; the writer holds Ctrl-C until the file is whole."""
    save = torch.save

    def save_hit_by_ctrl_c(obj, f):
        os.kill(os.getpid(), signal.SIGINT)
        save(obj, f)

    monkeypatch.setattr(torch, "save", save_hit_by_ctrl_c)
    path = tmp_path / "last.ckpt"
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"weights": torch.arange(10_000)}, path)
    assert torch.equal(load(path)["weights"], torch.arange(10_000))
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left


# --- bad input: one line on stderr, exit code 2 --------------------------------------------------------------
@pytest.mark.parametrize(
    "args,expected",
    [
        (["--model.n_layer", "two"], "model.n_layer"),
        (["--model.no_such_key", "1"], "no_such_key"),
        (["--config", "missing.yaml"], "missing.yaml"),
        (["--ckpt_path", "missing.ckpt"], "missing.ckpt"),
        (["--ckpt_path", "last"], "no last.ckpt"),
        (["--model.n_embd", "30", "--model.n_head", "4"], "n_embd=30"),
        (["--model.compile_mode", "fastest"], "model.compile_mode"),
        (["--model.pad_vocab_multiple", "0"], "pad_vocab_multiple=0"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(in_tmp, capsys, args, expected):
    assert train(*args) == 2
    assert expected in one_error_line(capsys.readouterr().err)
    assert not (in_tmp / "runs").exists() or not list((in_tmp / "runs").glob("*/checkpoints/*.ckpt"))


def test_yaml_syntax_error_and_unknown_config_key(in_tmp, capsys):
    (in_tmp / "broken.yaml").write_text("model:\n  n_layer: [\n")
    (in_tmp / "unknown.yaml").write_text("model:\n  n_layerz: 3\n")
    assert train("--config", "broken.yaml") == 2
    one_error_line(capsys.readouterr().err)
    assert train("--config", "unknown.yaml") == 2
    assert "n_layerz" in one_error_line(capsys.readouterr().err)


def test_resume_from_another_model_shape_is_refused(in_tmp, capsys):
    assert train("--name", "small") == 0
    capsys.readouterr()
    assert train("--name", "small", "--ckpt_path", "last", "--model.n_embd", "32") == 2
    assert "n_embd=16 (this run: 32)" in one_error_line(capsys.readouterr().err)


# --- DDP -------------------------------------------------------------------------------------------------
def test_ddp_two_cpu_processes_see_different_batches_and_share_the_validation_set(tmp_path):
    args = [
        *TINY, "--trainer.accelerator", "cpu", "--trainer.devices", "2",
        "--trainer.strategy", "ddp", "--trainer.callbacks+=tests.probes.RecordBatches",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    TextDataModule(data_dir=str(tmp_path / "data")).prepare_data()  # DDP trains from a cache prepared ahead
    done = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = ((tmp_path / f"batches-rank{r}.txt").read_text().split() for r in (0, 1))
    assert len(rank0) == len(rank1) == 6
    assert not set(rank0) & set(rank1)
    # Without --name every process names the run for itself, from the clock; only rank 0 writes, so one directory.
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert load(run_dir / "checkpoints/last.ckpt")["global_step"] == 6
    # Validation (2 runs of val_batches=2): each rank takes one batch of the set a single process validates on.
    val0, val1 = ((tmp_path / f"val-batches-rank{r}.txt").read_text().split() for r in (0, 1))
    dm = TextDataModule(data_dir=str(tmp_path / "data"), block_size=16, batch_size=4, val_batches=2)
    dm.setup("fit")
    single = [digest(batch) for batch in dm.val_dataloader()]
    assert val0 == [single[0]] * 2 and val1 == [single[1]] * 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_two_nodes(cwd: Path, *args: str) -> list[subprocess.CompletedProcess]:
    """`train.py` as two torchrun "nodes" of one CPU process each on this machine (gloo), sharing `cwd`."""
    port, env = free_port(), {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
             "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", str(port),
             str(REPO / "train.py"), *TINY, "--trainer.accelerator", "cpu", "--trainer.num_nodes", "2",
             "--trainer.devices", "1", "--trainer.strategy", "ddp", *args],
            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for rank in (0, 1)
    ]  # fmt: skip
    return [subprocess.CompletedProcess(node.args, node.wait(timeout=300), *node.communicate()) for node in nodes]


def test_two_nodes_ask_for_the_cache_to_be_prepared_then_train_from_it(tmp_path, monkeypatch):
    """Under DDP a missing cache is not prepared (on each node, at once) but asked for, in one line on every node."""
    for node in torchrun_two_nodes(tmp_path, "--name", "two-nodes"):
        assert node.returncode != 0
        assert "error: the token cache data/python-reference/bytes is not ready (no cache yet)" in node.stderr
        assert "minigpt prepare --config" in node.stderr
        # The process exits with 2 and no traceback of its own; torchrun then reports the failure with its own.
        assert re.search(r"exitcode\s*:\s*2\b", node.stderr) and "minigpt/cli.py" not in node.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()  # nothing prepared, no run
    monkeypatch.chdir(tmp_path)  # prepare as the user would, in the same folder
    assert prepare([*TINY[:8], "--data.batch_size", "4"]) == 0
    (meta_path,) = (tmp_path / "data/python-reference/bytes").glob("shards-*/meta.json")
    meta = meta_path.stat()
    for node in torchrun_two_nodes(tmp_path, "--name", "two-nodes"):
        assert node.returncode == 0, node.stderr[-3000:]
    assert meta_path.stat().st_mtime_ns == meta.st_mtime_ns  # reused
    assert load(tmp_path / "runs/two-nodes/checkpoints/last.ckpt")["global_step"] == 6


# --- the module's parts ----------------------------------------------------------------------------------
def test_compiled_and_eager_modules_share_checkpoint_keys():
    small = dict(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=8)
    eager, compiled = ModelOptions(**small).build(), ModelOptions(**small, compile=True).build()
    assert set(eager.state_dict()) == set(compiled.state_dict())
    assert not any("_orig_mod" in key for key in compiled.state_dict())
    compiled.load_state_dict(eager.state_dict())
    eager.load_state_dict(compiled.state_dict())


def test_adamw_groups_decay_matrices_only():
    module = ModelOptions(vocab_size=50, block_size=8, n_layer=2, n_head=2, n_embd=8, decay_steps=10).build()
    optimizer = module.configure_optimizers()["optimizer"]
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    grouped = {id(p) for group in (decay, no_decay) for p in group["params"]}
    assert grouped == {id(p) for p in module.model.parameters()}  # each parameter once (tied head included)


def test_a_frozen_sinusoidal_table_is_not_optimized():
    shape = dict(vocab_size=50, block_size=8, n_layer=2, n_head=2, n_embd=8, decay_steps=10)
    module = ModelOptions(**shape, position_embedding="sinusoidal").build()
    grouped = {id(p) for group in module.configure_optimizers()["optimizer"].param_groups for p in group["params"]}
    assert id(module.model.transformer.wpe.weight) not in grouped


def test_warmup_then_cosine_to_min_lr():
    multiplier = warmup_cosine(warmup_steps=10, decay_steps=110, min_ratio=0.1)
    assert multiplier(0) == pytest.approx(1 / 11)
    assert [multiplier(s) for s in range(10)] == sorted(multiplier(s) for s in range(10))
    assert multiplier(10) == pytest.approx(1.0)
    assert multiplier(60) == pytest.approx(0.55)
    assert multiplier(110) == multiplier(500) == pytest.approx(0.1)
    after = [multiplier(s) for s in range(10, 111)]
    assert after == sorted(after, reverse=True)


def test_flops_per_token_matches_nanogpt_numbers():
    """DESIGN.md: GPT-2 124M at T=1024 is 854.8 MFLOP/token (6N + 12·L·C·T)."""
    gpt2 = ModelOptions(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768).build()
    assert flops_per_token(gpt2.config, 1024) / 1e6 == pytest.approx(854.8, rel=1e-3)


def test_compile_mode_reaches_torch_compile(monkeypatch):
    modes = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: modes.append(kwargs["mode"]) or fn)
    ModelOptions(
        vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=8, compile=True, compile_mode="reduce-overhead"
    ).build()
    ModelOptions(
        vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=8, compile=False, compile_mode="max-autotune"
    ).build()
    assert modes == ["reduce-overhead"]


def test_mfu_counts_no_padding_flops():
    small = dict(vocab_size=97, block_size=8, n_layer=1, n_head=2, n_embd=8)
    plain, padded = ModelOptions(**small).build(), ModelOptions(**small, pad_vocab_multiple=64).build()
    assert padded.model.num_params() == plain.model.num_params() + (128 - 97) * 8
    assert padded.flops_per_token == plain.flops_per_token


# --- sizes checked before anything is allocated ----------------------------------------------------------------
@pytest.mark.parametrize(
    "bias, pad, mlp", [(True, 1, True), (False, 1, True), (True, 64, True), (True, 1, False), (False, 1, False)]
)
def test_parameter_count_from_the_shape_is_the_models(bias, pad, mlp):
    shape = dict(vocab_size=100, block_size=12, n_layer=3, n_head=2, n_embd=8)
    config = GPTConfig(**shape, bias=bias, pad_vocab_multiple=pad, mlp=mlp)
    assert parameter_count(config) == GPT(config).num_params(non_embedding=False)


def test_a_model_too_large_for_this_machine_is_one_line_before_anything_is_allocated(in_tmp, capsys):
    assert train("--model.n_embd", "65536", "--model.n_head", "64", "--model.n_layer", "64") == 2
    line = one_error_line(capsys.readouterr().err)
    assert re.search(r"of 3,29\d,\d{3}M parameters \(its weights\) needs 12,288.\d GiB, more than this machine", line)
    assert not (in_tmp / "runs").exists() and not (in_tmp / "data").exists()


def test_training_needs_are_checked_on_the_training_device(in_tmp, capsys, monkeypatch):
    """The weights fit where the model is built, but not with their gradients and AdamW state where it trains."""
    n = parameter_count(GPTConfig(vocab_size=257, block_size=16, n_layer=1, n_head=2, n_embd=16))
    monkeypatch.setattr("minigpt.memory.device_memory", lambda device: 8 * n)  # 2x the weights, half the training
    assert train() == 2
    line = one_error_line(capsys.readouterr().err)
    assert "(weights, gradients, AdamW state) needs" in line and "choose a smaller model.n_layer" in line
    assert not (in_tmp / "runs").exists() and not (in_tmp / "data").exists()
