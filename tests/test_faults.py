"""`python train.py` killed with SIGKILL at chosen points, then run again.

Each kill point is deterministic: a callback loaded by class path (`tests.probes.KillAt`) kills its own process at
a given step and hook, and data preparation is killed from a `python -c` wrapper that patches the function it
stops in. After each kill the files on disk are checked (no checkpoint or cache that fails to load is trusted),
then the run is started again, in-process through `main(argv)`, with `--ckpt_path last` where a checkpoint
exists: it must resume from the last complete checkpoint (losing at most the steps since that save) or rebuild
the cache, and end as an uninterrupted run ends.

The killed runs are independent, so they run a few at a time, once for the module.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import datasets
import pytest
import torch

from minigpt.checkpoint import load_checkpoint
from minigpt.cli import main
from minigpt.data import TextDataModule
from minigpt.data import cache as cache_module
from tests.test_train import TINY

REPO = Path(__file__).resolve().parent.parent
SAVE_EVERY = 3  # TINY validates, and so saves, every 3 steps; it trains 6
BOOKS = ["--data.source", "text", "--data.path", "books", "--data.dataset_name", "books"]


def probe(hook: str, step: int) -> list[str]:
    spec = {"class_path": "tests.probes.KillAt", "init_args": {"hook": hook, "step": step}}
    return [f"--trainer.callbacks+={json.dumps(spec)}"]


def write_books(folder: Path, edited: bool = False) -> None:
    """Six small text files: with the data module's batches of two pieces, the cache is written in three batches."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(6):
        edit = "An edited line.\n" if edited else ""
        (folder / f"{i}.txt").write_text(f"Book {i}.\n{edit}" + "A line of prose to learn from.\n" * 60)


def old_cache_then_new_books(run_dir: Path) -> None:
    """A complete cache of the books, then one book edited: the next run prepares the cache again."""
    write_books(run_dir / "books")
    data_module(run_dir).prepare_data()
    write_books(run_dir / "books", edited=True)


def data_module(run_dir: Path) -> TextDataModule:
    """The data module that `BOOKS` with TINY configures, for a run in run_dir."""
    path, data_dir = str(run_dir / "books"), str(run_dir / "data")
    return TextDataModule(source="text", path=path, dataset_name="books", data_dir=data_dir, block_size=16)


# Shards of two batches of one book each: the six books make three shards. The `python -c` wrappers set the same
# sizes, then patch what they stop in: the fourth `np.repeat` splits the fourth batch's tokens, while the second shard
# holds the third batch (the first shard is whole); a rename of a shard's train file comes after its val file's;
# meta.json is renamed into place after every shard is whole.
SMALL_SHARDS = "import minigpt.data.cache as cache\ncache.SHARD_BATCHES, cache.TEXT_BATCH_ROWS = 2, 1\n"
KILL_IN_THE_FOURTH_BATCH = """
import numpy as np
real, calls = np.repeat, []
def repeat(*args, **kwargs):
    calls.append(1)
    if len(calls) == 4:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
np.repeat = repeat
"""
KILL_ON_RENAME_TO = """
real = os.replace
def replace(src, dst, *args, **kwargs):
    if str(dst).endswith({name!r}):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *args, **kwargs)
os.replace = replace
"""


@dataclass
class Scenario:
    args: list[str]
    patch: str = ""  # Python run before main() in a `python -c` wrapper
    setup: object = None  # called with the run's directory before it starts


SCENARIOS = {
    # Data preparation, before any checkpoint exists.
    "shard_write": Scenario(BOOKS, SMALL_SHARDS + KILL_IN_THE_FOURTH_BATCH, lambda d: write_books(d / "books")),
    "shard_rename": Scenario(
        BOOKS, SMALL_SHARDS + KILL_ON_RENAME_TO.format(name="train-00001.bin"), old_cache_then_new_books
    ),
    "meta_rename": Scenario(BOOKS, SMALL_SHARDS + KILL_ON_RENAME_TO.format(name="meta.json"), old_cache_then_new_books),
    # Training.
    "first_steps": Scenario(probe("on_train_batch_start", 1)),
    "mid_step": Scenario(probe("on_before_optimizer_step", 4)),  # after the backward pass of step 5
    "validation": Scenario(probe("on_validation_batch_start", 6)),
    # Checkpoint saves at step 6 (the one at step 3 is complete).
    "save_begun": Scenario(probe("on_save_checkpoint", 6)),
    "save_write": Scenario(probe("checkpoint_write", 6)),  # last.ckpt's temporary file half-written
    "save_rename": Scenario(probe("checkpoint_rename", 6)),  # complete, not yet renamed onto last.ckpt
    # No kill: what every resumed run must end with.
    "uninterrupted": Scenario([]),
}


@dataclass
class Killed:
    dir: Path
    returncode: int
    output: str


def run_scenario(run_dir: Path, scenario: Scenario) -> Killed:
    argv = [*TINY, "--name", "r", *scenario.args]
    if scenario.patch:
        wrapper = f"import os, signal, sys\n{scenario.patch}\nfrom minigpt.cli import main\nsys.exit(main({argv!r}))"
        command = [sys.executable, "-c", wrapper]
    else:
        command = [sys.executable, str(REPO / "train.py"), *argv]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_DATASETS_CACHE": str(run_dir / "hf"), "WANDB_MODE": "offline"}
    done = subprocess.run(command, cwd=run_dir, env=env, capture_output=True, text=True, timeout=300)
    return Killed(run_dir, done.returncode, done.stdout + done.stderr)


def small_shards(monkeypatch) -> None:
    """The shard sizes of SMALL_SHARDS."""
    monkeypatch.setattr(cache_module, "SHARD_BATCHES", 2)
    monkeypatch.setattr(cache_module, "TEXT_BATCH_ROWS", 1)


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """In-process data preparation caches its `datasets` files in the test's folder, not the user's cache, and
    writes shards of the killed runs' size."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    small_shards(monkeypatch)


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> dict[str, Killed]:
    root = tmp_path_factory.mktemp("killed")
    for name, scenario in SCENARIOS.items():
        (root / name).mkdir()
        if scenario.setup:
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(root / name / "hf"))
                small_shards(mp)
                scenario.setup(root / name)
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(run_scenario, root / name, s) for name, s in SCENARIOS.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.fixture
def rerun(monkeypatch, capsys):
    """main(argv) in a killed run's directory: (exit code, stdout, stderr)."""

    def run(run_dir: Path, *args: str) -> tuple[int, str, str]:
        monkeypatch.chdir(run_dir)
        monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(run_dir / "hf"))
        capsys.readouterr()
        code = main([*TINY, "--name", "r", *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def was_killed(result: Killed) -> None:
    assert result.returncode == -signal.SIGKILL, f"exit code {result.returncode}, not SIGKILL:\n{result.output}"


def checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(run_dir: Path, uninterrupted: Killed) -> None:
    assert uninterrupted.returncode == 0, uninterrupted.output
    resumed = checkpoint(run_dir / "runs/r/checkpoints/last.ckpt")
    whole = checkpoint(uninterrupted.dir / "runs/r/checkpoints/last.ckpt")
    assert resumed["global_step"] == whole["global_step"] == 6
    for key, value in whole["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, atol=1e-5, rtol=1e-4)


# --- training: resume from the last complete checkpoint ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["mid_step", "validation", "save_begun", "save_write", "save_rename"], ids=lambda name: name
)
def test_killed_training_resumes_from_the_last_complete_checkpoint(killed, rerun, name):
    result = killed[name]
    was_killed(result)
    ckpts = result.dir / "runs/r/checkpoints"
    # On disk: the save of step 3, whole; whatever step 6 began is not trusted.
    assert load_checkpoint(ckpts / "last.ckpt")[0] is not None
    assert checkpoint(ckpts / "last.ckpt")["global_step"] == SAVE_EVERY  # only steps 4-6 are lost
    assert checkpoint(ckpts / "best.ckpt")["global_step"] in (SAVE_EVERY, 6)
    if name == "save_write":
        # The kill came half-way through writing last.ckpt's bytes, to a file beside it.
        assert 0 < (ckpts / "last.ckpt.tmp").stat().st_size < (ckpts / "last.ckpt").stat().st_size
    if name == "save_rename":
        assert checkpoint(ckpts / "last.ckpt.tmp")["global_step"] == 6  # complete, but never renamed

    code, out, err = rerun(result.dir, "--ckpt_path", "last")
    assert code == 0, err
    assert "step 6/6" in out and "prepared" not in out  # the complete token cache is reused
    assert not list(ckpts.glob("*.tmp"))
    assert_same_weights(result.dir, killed["uninterrupted"])


@pytest.mark.slow
def test_killed_before_the_first_checkpoint_starts_again(killed, rerun):
    result = killed["first_steps"]
    was_killed(result)
    assert not list(result.dir.glob("runs/r/checkpoints/*.ckpt"))
    code, out, err = rerun(result.dir, "--ckpt_path", "last")
    assert code == 2 and out == "" and err.startswith("error: no last.ckpt under runs") and err.count("\n") == 1
    code, out, err = rerun(result.dir)  # started again, as the message says
    assert code == 0, err
    assert "step 6/6" in out and "prepared" not in out  # the cache was complete before training began
    assert_same_weights(result.dir, killed["uninterrupted"])


# --- data preparation: continued after the last whole shard, never trusted half-written ---------------------------


def reference_cache(tmp_path: Path, books: Path) -> Path:
    """The token cache a clean preparation of these books writes."""
    shutil.copytree(books, tmp_path / "books")
    data_module(tmp_path).prepare_data()
    return tmp_path / "data" / "books" / "bytes"


def assert_same_cache(cache: Path, reference: Path) -> None:
    """The same files, the same bytes (meta.json but the path, which the run gives relative, and the fingerprint).
    The old books' cache, superseded by the edited books', is gone."""
    assert len(list(cache.iterdir())) == len(list(reference.iterdir())) == 1  # one shard folder, its meta.json inside
    shards, reference_shards = shards_dir(cache), shards_dir(reference)
    assert sorted(p.name for p in shards.iterdir()) == sorted(p.name for p in reference_shards.iterdir())
    for path in reference_shards.iterdir():
        if path.name != "meta.json":
            assert (shards / path.name).read_bytes() == path.read_bytes(), path.name
    meta, reference_meta = (json.loads((d / "meta.json").read_text()) for d in (shards, reference_shards))
    for key in ("path", "fingerprint"):
        meta.pop(key), reference_meta.pop(key)
    assert meta == reference_meta


def tokenized_batches(monkeypatch) -> list:
    """Counts the batches the next preparation tokenizes."""
    counted, real = [], cache_module.encoded_batches

    def encoded_batches(*args, **kwargs):
        for batch in real(*args, **kwargs):
            counted.append(1)
            yield batch

    monkeypatch.setattr(cache_module, "encoded_batches", encoded_batches)
    return counted


def shards_dir(cache: Path) -> Path:
    """The newest shard folder (the new books', when the old cache's is still there)."""
    return max(cache.glob("shards-*"), key=lambda d: d.stat().st_mtime_ns)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,whole,redone",
    [("shard_write", 1, 4), ("shard_rename", 1, 4), ("meta_rename", 3, 0)],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_killed_preparation_continues_after_its_last_whole_shard(
    killed, rerun, tmp_path, monkeypatch, name, whole, redone
):
    """Killed anywhere, the next preparation keeps the whole shards, redoes at most the one being written, and ends
    with the bytes of an uninterrupted preparation. Until the new meta.json is in place, the old cache (if any)
    is still whole and still vouched for: old and new never mix."""
    result = killed[name]
    was_killed(result)
    cache = result.dir / "data" / "books" / "bytes"
    shards = shards_dir(cache)
    assert len(list(shards.glob("train-*.bin"))) == whole
    assert data_module(result.dir).cache.read_meta() is None  # the new books' cache is not vouched for
    if name == "shard_write":
        assert (shards / "train-00001.bin.tmp").stat().st_size > 0  # half a shard
    else:  # the old books' cache, in its own folder, whole and vouched for
        (old,) = set(cache.glob("shards-*")) - {shards}
        meta = json.loads((old / "meta.json").read_text())
        assert data_module(result.dir).cache.problem(meta["fingerprint"]) is None
    if name == "shard_rename":
        assert (shards / "val-00001.bin").exists() and (shards / "train-00001.bin.tmp").exists()
    before = {p.name: p.stat().st_mtime_ns for p in shards.glob("*.bin") if int(p.stem[-5:]) < whole}

    counted = tokenized_batches(monkeypatch)
    code, out, err = rerun(result.dir, *BOOKS)
    assert code == 0, err
    assert "prepared data/books/bytes: " in out and "step 6/6" in out
    assert len(counted) == redone  # the batches of the shards that were not whole: two per shard
    new = "tokens (no cache yet)" if name == "shard_write" else "tokens (the source or the settings changed)"
    assert new in out
    assert {p.name: p.stat().st_mtime_ns for p in shards.glob("*.bin") if p.name in before} == before
    assert_same_cache(cache, reference_cache(tmp_path, result.dir / "books"))


# --- Lightning's own checkpoint writer ---------------------------------------------------------------------------


def test_checkpoints_are_renamed_into_place_never_copied(tmp_path, monkeypatch, capsys):
    """With the system's temporary folder on another filesystem (a tmpfs /tmp), Lightning's own writer moves each
    checkpoint into place by copying it onto the old one, which a kill during the copy leaves half-written. Ours
    writes beside the checkpoint and renames; here every rename across folders fails as it does across
    filesystems, and no checkpoint may be copied."""
    copied = []
    real_copyfile, real_rename, real_replace = shutil.copyfile, os.rename, os.replace

    def across_filesystems(real):
        def rename(src, dst, *args, **kwargs):
            if Path(src).resolve().parent != Path(dst).resolve().parent:
                raise OSError(errno.EXDEV, "Invalid cross-device link", str(src))
            return real(src, dst, *args, **kwargs)

        return rename

    def copyfile(src, dst, *args, **kwargs):
        copied.append(str(dst))
        return real_copyfile(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", across_filesystems(real_rename))
    monkeypatch.setattr(os, "replace", across_filesystems(real_replace))
    monkeypatch.setattr(shutil, "copyfile", copyfile)
    monkeypatch.chdir(tmp_path)
    assert main([*TINY, "--name", "r", "--trainer.max_steps", "3", "--sample_tokens", "0"]) == 0
    assert checkpoint(tmp_path / "runs/r/checkpoints/last.ckpt")["global_step"] == 3
    assert not [dst for dst in copied if dst.endswith(".ckpt")], copied
