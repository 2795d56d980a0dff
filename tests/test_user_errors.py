"""User mistakes vs bugs, through the entry points as a user meets them.

Each mistake below is one `error:` line on stderr and exit code 2, found before anything is prepared or written (no
run directory, no token cache). Every message in docs/troubleshooting.md's tables is checked here or in the tests
it names. A bug keeps its traceback: an internal error is not dressed up as a bad setting.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from minigpt.__main__ import main as minigpt
from minigpt.data import TextDataModule
from minigpt.errors import UserError
from tests.test_bad_input import error_line, snapshot
from tests.test_data import write_parquet_hub
from tests.test_sample import write_checkpoint
from tests.test_train import TINY

REPO = Path(__file__).resolve().parent.parent

# (arguments after TINY, the start of the message). Each fails before data preparation, W&B or a run directory.
TRAIN_MISTAKES = [
    (["--trainer.accelerator", "cuda"], "trainer settings: `CUDAAccelerator` can not run on your system"),
    (["--trainer.accelerator", "gpu"], "trainer settings: No supported gpu backend found"),
    (["--trainer.strategy", "deepspeed"], "trainer settings: To use the `DeepSpeedStrategy`, you must have DeepSpeed"),
    (["--trainer.strategy", "fsdp"], "trainer settings: The strategy `fsdp` requires a GPU accelerator"),
    (["--trainer.strategy", "nosuch"], "trainer settings: You selected an invalid strategy name"),
    (["--trainer.devices", "0"], "trainer settings: `Trainer(devices='0')` value is not a valid input"),
    (["--trainer.num_nodes", "0"], "trainer settings: `num_nodes` must be a positive integer"),
    (["--trainer.max_steps", "0"], "trainer.max_steps=0: give the number of steps to train"),
    (["--trainer.max_steps", "-1"], "trainer.max_steps=-1: give the number of steps to train"),
    (["--trainer.val_check_interval", "0"], "trainer.val_check_interval=0: give a number of steps >= 1"),
    (["--trainer.val_check_interval", "0.5"], "trainer settings: `val_check_interval` should be an integer"),
    (["--trainer.log_every_n_steps", "0"], "trainer.log_every_n_steps=0 must be >= 1"),
    (["--trainer.accumulate_grad_batches", "0"], "trainer.accumulate_grad_batches=0 must be >= 1"),
    (["--model.n_layer", "0"], "n_layer=0 must be a positive integer"),
    (["--model.block_size", "0"], "block_size=0 must be a positive integer"),
    (["--model.n_embd", "30", "--model.n_head", "4"], "n_embd=30 is not divisible by n_head=4"),
    (["--model.dropout", "1"], "dropout=1.0 must be in [0, 1)"),
    (["--model.learning_rate", "0"], "model.learning_rate=0.0 must be > 0"),
    (["--model.min_lr", "1"], "model.min_lr=1.0 must lie in [0, learning_rate=0.002]"),
    (["--model.warmup_steps", "-1"], "model.warmup_steps=-1 must be >= 0"),
    (["--model.decay_steps", "0"], "model.decay_steps=0 must be >= 1"),
    (["--model.weight_decay", "-0.1"], "model.weight_decay=-0.1 must be >= 0"),
    (["--model.beta2", "1"], "model.beta2=1.0 must lie in [0, 1)"),
    (["--model.pad_vocab_multiple", "0"], "pad_vocab_multiple=0 must be a positive integer"),
    (["--data.batch_size", "0"], "data.batch_size=0 must be >= 1"),
    (["--data.num_workers", "-1"], "data.num_workers=-1 must be >= 0"),
    (["--data.seed", "-1"], "data.seed=-1 must be >= 0"),
    (["--data.token_budget", "0"], "data.token_budget=0 must be >= 1, or unset"),
    (["--data.num_proc", "0"], "data.num_proc=0 must be >= 1, or unset"),
    (["--data.val_batches", "0"], "val_batches=0 must be at least 1"),
    (["--data.val_fraction", "1"], "val_fraction=1.0 must lie strictly between 0 and 1"),
    (["--data.tokenizer", "gpt5"], "unknown tokenizer 'gpt5'"),
    (["--data.source", "text"], "source 'text' needs a path"),
    (["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp", "--data.val_batches", "1"],
     "data.val_batches=1 is fewer than the 2 training processes"),
    (["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"],
     "the token cache data/python-reference/bytes is not ready (no cache yet)"),
    (["--data.data_dir", "a_file"], "data.data_dir='a_file' is a file"),
    (["--runs_dir", "a_file"], "runs_dir='a_file' is a file"),
    (["--sample_prompt", "<|endoftext|>"], "sample_prompt: the prompt contains the special token <|endoftext|>"),
    (["--attention_maps.every_n_validations", "-1"], "attention_maps.every_n_validations=-1 must be >= 0"),
    (["--ckpt_path", "last"], "no last.ckpt under runs to resume from"),
    (["--ckpt_path", "missing.ckpt"], "checkpoint missing.ckpt does not exist"),
    (["--config", "missing.yaml"], 'Parser key "config": File does not exist'),
    (["--model.n_layer", "two"], "Parser key \"model.n_layer\""),
    (["--model.no_such_key", "1"], "unrecognized arguments: --model.no_such_key 1"),
    (["--logger", "tensorboard"], "Parser key \"logger\""),
]  # fmt: skip


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("not a folder")
    return tmp_path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = minigpt(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("args,message", TRAIN_MISTAKES, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_train_mistake_is_one_line_exit_2_and_nothing_written(in_tmp, capsys, args, message):
    before = snapshot(in_tmp)
    code, out, err = run(capsys, "train", *TINY, *args)
    assert code == 2 and message in error_line(err) and err.count("\n") == 1, err
    assert out == "" and snapshot(in_tmp) == before  # no token cache, no run directory


def test_a_mistake_found_only_after_preparation_leaves_no_run_directory(in_tmp, capsys):
    """A block_size longer than the data: found once the cache is built, before W&B or a run directory."""
    code, out, err = run(capsys, "train", *TINY, "--model.block_size", "60000", "--logger", "wandb")
    assert code == 2 and "the val split of python-reference holds" in error_line(err)
    assert "block_size + 1 = 60001" in err and not (in_tmp / "runs").exists()


def test_a_probe_refused_at_setup_leaves_no_run_directory(in_tmp, capsys):
    """attention_maps.probe is read when training sets up, after W&B has started: the fresh run is removed."""
    code, out, err = run(capsys, "train", *TINY, "--attention_maps.probe", "a", "--logger", "wandb")
    assert code == 2 and "attention_maps.probe='a' is 1 token" in error_line(err)
    assert not (in_tmp / "runs").exists() or not any((in_tmp / "runs").iterdir())


def test_a_hub_dataset_without_the_name_or_split_is_one_line(tmp_path):
    folder = write_parquet_hub(tmp_path / "ds", ["a story"])
    data = TextDataModule(source="hub", path=str(folder), name="nope", data_dir=str(tmp_path / "data"))
    with pytest.raises(UserError, match="has no name='nope' or no split='train'") as info:
        data.prepare_data()
    assert "\n" not in str(info.value) and not (tmp_path / "data").exists()


def test_prepare_builds_the_cache_only_and_checks_the_window(in_tmp, capsys):
    code, out, err = run(capsys, "prepare", "--model.block_size", "16")
    assert code == 0 and out.startswith("prepared data/python-reference/bytes: ") and err == ""
    assert list((in_tmp / "data" / "python-reference" / "bytes").glob("shards-*/meta.json"))
    assert not (in_tmp / "runs").exists()
    code, out, err = run(capsys, "prepare", "--model.block_size", "60000")
    assert code == 2 and out == "" and "fewer than one window of block_size + 1 = 60001" in error_line(err)


SAMPLE_MISTAKES = [
    (["--num-samples", "0"], "--num-samples 0 must be >= 1"),
    (["--max-new-tokens", "-1"], "--max-new-tokens -1 >= 0"),
    (["--top-k", "-1"], "top_k=-1 must be a positive integer"),
    (["--seed", "-1"], "--seed -1 must lie in [0, 2**63)"),
    (["--device", "cuda"], "--device cuda: no CUDA device here; use --device cpu"),
    (["--device", "tpu"], "--device 'tpu' is not a torch device"),
    (["--device", "meta"], "--device meta: run on cpu, cuda or mps"),
    (["--prompt-file", "nowhere.txt"], "prompt file nowhere.txt cannot be read: No such file or directory"),
    (["--init-from", "gpt3"], "argument --init-from: invalid choice: 'gpt3'"),
    (["--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
    (["--attention-map", "maps.png"], "unrecognized arguments: --attention-map maps.png"),  # `minigpt attention`
]


@pytest.mark.parametrize("args,message", SAMPLE_MISTAKES, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_sample_mistake_is_one_line_and_exit_2(in_tmp, capsys, args, message):
    write_checkpoint(in_tmp / "model.ckpt")
    try:
        code, out, err = run(capsys, "sample", "--ckpt", "model.ckpt", *args)
    except SystemExit as e:  # argparse's errors exit from inside main
        code, (out, err) = e.code, capsys.readouterr()
    assert code == 2 and out == "" and message in error_line(err) and err.count("\n") == 1, err


# (arguments after --ckpt model.ckpt, the start of the message). a_file is a file in the folder the command runs in.
ATTENTION_MISTAKES = [
    (["--prompt", "ab", "--out", "maps.jpg"], "--out maps.jpg: name a .png file (layer L goes to maps-layer<L>.png)"),
    (["--prompt", "ab", "--out", "a_file/maps.png"], "--out a_file/maps.png: its folder a_file cannot be made"),
    (["--prompt", "ab", "--out", "a_file/maps/maps.html"], "a_file is a file: pick another path"),
    (["--prompt", "a", "--out", "maps.png"], "attention maps need a prompt of at least 2 tokens"),
    (["--prompt", "ab", "--out", "maps.png", "--device", "meta"], "--device meta: run on cpu, cuda or mps"),
    (["--prompt-file", "nowhere.txt", "--out", "maps.png"], "prompt file nowhere.txt cannot be read"),
    (["--prompt", "ab"], "the following arguments are required: --out"),
]


@pytest.mark.parametrize("args,message", ATTENTION_MISTAKES, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_attention_mistake_is_one_line_exit_2_and_nothing_written(in_tmp, capsys, args, message):
    write_checkpoint(in_tmp / "model.ckpt")
    before = sorted(in_tmp.rglob("*"))
    try:
        code, out, err = run(capsys, "attention", "--ckpt", "model.ckpt", *args)
    except SystemExit as e:  # argparse's errors exit from inside main
        code, (out, err) = e.code, capsys.readouterr()
    assert code == 2 and out == "" and message in error_line(err) and err.count("\n") == 1, err
    assert sorted(in_tmp.rglob("*")) == before  # no folder, no PNG, no page


def test_unknown_command_is_one_line_and_exit_2(capsys):
    assert minigpt(["fit"]) == 2
    assert (
        capsys.readouterr().err
        == "error: unknown command 'fit': use one of train, sample, attention, prepare, export, eval "
        "(see minigpt --help)\n"
    )


def troubleshooting_messages() -> list[str]:
    """The backticked message starts in the first column of the tables of docs/troubleshooting.md."""
    page = (REPO / "docs" / "troubleshooting.md").read_text()
    rows = [line.split(" | ")[0] for line in page.splitlines() if line.startswith("| `")]
    return [m.replace("\\|", "|") for row in rows for m in re.findall(r"`([^`]+)`", row)]


def test_every_troubleshooting_message_is_tested():
    """Each message the troubleshooting page lists is asserted by a test (here or in the test modules that own it)."""
    tests = "\n".join(p.read_text() for p in (REPO / "tests").glob("test_*.py"))
    untested = [m for m in troubleshooting_messages() if m.split("...")[0].strip() not in tests]
    assert troubleshooting_messages() and not untested, f"troubleshooting messages no test asserts: {untested}"


# --- a bug keeps its traceback ---------------------------------------------------------------------------------

FORCED = """
import sys
import numpy as np

def stack(*args, **kwargs):
    raise ValueError("need at least one array to stack")  # as numpy raises it, deep in the training loader

np.stack = stack
sys.argv[0] = "minigpt"
from minigpt.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_an_internal_error_shows_its_traceback_and_leaves_no_run_directory(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", FORCED, "train", *TINY, "--name", "bug"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1 and "Traceback (most recent call last)" in done.stderr
    assert done.stderr.rstrip().endswith("ValueError: need at least one array to stack")
    assert "error:" not in done.stderr and not (tmp_path / "runs" / "bug").exists()


def test_an_internal_error_in_sample_shows_its_traceback(tmp_path, monkeypatch):
    from minigpt import generate, sample

    write_checkpoint(tmp_path / "model.ckpt")

    def broken(*args, **kwargs):
        raise ValueError("a bug in sampling")

    monkeypatch.setattr(generate, "sample_next", broken)
    with pytest.raises(ValueError, match="a bug in sampling"):  # out of main, to the interpreter: a traceback
        sample.main(["--ckpt", str(tmp_path / "model.ckpt"), "--device", "cpu"])
