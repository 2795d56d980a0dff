"""Token caches keyed by what they hold: caches of other settings live side by side in one dataset/tokenizer folder,
and preparing (or failing to prepare) one never costs another. Local text files stand in for FineWeb's presets,
which share `dataset_name: fineweb-edu-10BT` with budgets of 1B and 10B tokens."""

import json
from pathlib import Path

import datasets
import pytest

from minigpt.cli import prepare
from minigpt.data import TextDataModule
from minigpt.data import cache as cache_module
from minigpt.errors import UserError
from tests.test_data import TEXT
from tests.test_faults import tokenized_batches

BOOK = TEXT * 20  # 2,700 characters: a single document, its last 10% validating


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Prepared in the test's folder, its `datasets` cache there too; the text file `book.txt`."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    (tmp_path / "book.txt").write_text(BOOK)
    return tmp_path


def run_prepare(capsys, *options: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = prepare(["--data.source", "text", "--data.path", "book.txt", "--data.dataset_name", "book", *options])
    out, err = capsys.readouterr()
    return code, out, err


def folders(root: Path) -> dict[str, dict[str, int]]:
    """Each cache folder of data/book/bytes: its files and their modification times."""
    cache = root / "data" / "book" / "bytes"
    return {d.name: {f.name: f.stat().st_mtime_ns for f in d.iterdir()} for d in sorted(cache.iterdir())}


# A budget reached inside the book's first 90%: the validation split comes out empty, and preparing says so.
EMPTY_VAL = ["--data.token_budget", "1000"]


@pytest.mark.parametrize(
    "other,fails",
    [(EMPTY_VAL, True), (["--data.val_fraction", "0.2"], False)],
    ids=["budget_with_no_validation", "val_fraction"],
)
def test_preparing_other_settings_and_going_back_rebuilds_nothing(in_tmp, capsys, monkeypatch, other, fails):
    """A, then B (finished, or failing on its empty validation split), then A again: A is used as it was."""
    code, out, err = run_prepare(capsys)
    assert code == 0 and "tokens (no cache yet)" in out, err
    a = folders(in_tmp)
    code, out, err = run_prepare(capsys, *other)
    if fails:
        assert code == 2 and err.startswith("error: the val split of book holds 0 tokens") and err.count("\n") == 1
    else:
        assert code == 0, err
    assert "tokens (the source or the settings changed)" in out  # B tokenized into a folder of its own
    both = folders(in_tmp)
    assert len(both) == 2 and {name: both[name] for name in a} == a  # A's folder untouched
    counted = tokenized_batches(monkeypatch)
    code, out, err = run_prepare(capsys)
    assert (code, out, err) == (0, "", "") and counted == []
    code, out, err = run_prepare(capsys, *other)  # and B, back again, is used as it was too
    assert code == (2 if fails else 0) and "prepared" not in out and counted == []
    assert folders(in_tmp) == both


def test_a_preparation_that_stops_leaves_the_other_caches_and_continues_beside_them(in_tmp, capsys, monkeypatch):
    """B stopped in its second shard (an error mid-way, as a kill): A's cache is used as it was, and B continues
    after its whole shard."""
    monkeypatch.setattr(cache_module, "SHARD_BATCHES", 1)
    monkeypatch.setattr(cache_module, "TEXT_BATCH_ROWS", 1)
    monkeypatch.setattr("minigpt.data.sources.TEXT_CHUNK_CHARS", 500)  # the book in pieces, one a shard
    assert run_prepare(capsys)[0] == 0
    a = folders(in_tmp)
    real = cache_module.encoded_batches

    def stops_in_the_second(*args, **kwargs):  # the first shard is whole once the second is begun
        batches = real(*args, **kwargs)
        yield next(batches)
        yield next(batches)
        batches.close()
        raise RuntimeError("stopped")

    monkeypatch.setattr(cache_module, "encoded_batches", stops_in_the_second)
    with pytest.raises(RuntimeError, match="stopped"):
        run_prepare(capsys, "--data.val_fraction", "0.2")
    (b,) = set(folders(in_tmp)) - set(a)
    assert "meta.json" not in folders(in_tmp)[b] and "train-00000.bin" in folders(in_tmp)[b]  # half-built
    monkeypatch.setattr(cache_module, "encoded_batches", real)
    counted = tokenized_batches(monkeypatch)
    assert run_prepare(capsys) == (0, "", "") and counted == []
    assert {name: folders(in_tmp)[name] for name in a} == a
    code, out, err = run_prepare(capsys, "--data.val_fraction", "0.2")
    assert code == 0 and "tokens (the source or the settings changed)" in out, err
    shards = json.loads((in_tmp / "data/book/bytes" / b / "meta.json").read_text())["shards"]["train"]
    assert len(shards) > 2 and len(counted) == len(shards) - 1  # all but the whole shard's one batch


def test_clean_removes_the_other_caches_and_says_what_it_freed(in_tmp, capsys):
    assert run_prepare(capsys)[0] == 0
    a = folders(in_tmp)
    assert run_prepare(capsys, "--data.val_fraction", "0.2")[0] == 0
    assert run_prepare(capsys, *EMPTY_VAL)[0] == 2
    cache = in_tmp / "data" / "book" / "bytes"
    others = {d: sum(f.stat().st_size for f in d.iterdir()) for d in cache.iterdir() if d.name not in a}
    assert len(others) == 2
    code, out, err = run_prepare(capsys, "--clean", "true")
    assert code == 0, err
    removed = {f"removed {Path('data/book/bytes') / d.name} ({size:,} bytes)" for d, size in others.items()}
    lines = out.splitlines()
    assert set(lines[:-1]) == removed and lines[-1] == f"freed {sum(others.values()):,} bytes in data/book/bytes"
    assert folders(in_tmp) == a  # this cache kept as it was, not rebuilt


def test_a_cache_of_edited_files_supersedes_the_old_one_and_no_other(in_tmp, capsys):
    """The same settings over local files since edited: the old cache can never be used again and goes once the
    new one is whole. Another setting's cache stays (only --clean removes it)."""
    assert run_prepare(capsys)[0] == 0
    assert run_prepare(capsys, "--data.val_fraction", "0.2")[0] == 0
    before = folders(in_tmp)
    (in_tmp / "book.txt").write_text(BOOK + "An edited line.\n")
    code, out, err = run_prepare(capsys)
    assert code == 0 and "tokens (the source or the settings changed)" in out, err
    after = folders(in_tmp)
    assert len(after) == 2 and len(set(after) & set(before)) == 1  # the old cache of these settings replaced
    (kept,) = set(after) & set(before)
    assert after[kept] == before[kept]
    assert json.loads((in_tmp / "data/book/bytes" / kept / "meta.json").read_text())["val_fraction"] == 0.2


def test_a_cache_of_the_layout_with_one_meta_json_is_taken_over_without_tokenizing(in_tmp, capsys, monkeypatch):
    """Before a meta.json per cache, one meta.json beside the shard folders vouched for one of them: that folder's
    shards are the same bytes, and the next preparation of its settings takes them over."""
    assert run_prepare(capsys)[0] == 0
    dm = TextDataModule(source="text", path="book.txt", dataset_name="book")
    meta_path = Path(dm.cache.meta_path)
    meta_path.rename(dm.cache_dir + "/meta.json")  # the old layout
    assert dm.cache.read_meta() is None  # not vouched for where the meta of a cache is now
    counted = tokenized_batches(monkeypatch)
    code, out, err = run_prepare(capsys)
    assert code == 0 and counted == [], err
    assert out.endswith("val tokens (a cache whose meta.json lay outside its shards folder: taken over)\n")
    assert dm.cache.read_meta() is not None and sorted(Path(dm.cache_dir).iterdir()) == [meta_path.parent]


def test_every_cache_of_a_folder_is_ready_for_a_run_of_several_processes(in_tmp, capsys):
    """check_prepared, what DDP starts from, finds each setting's own cache among the others."""
    assert run_prepare(capsys)[0] == 0
    assert run_prepare(capsys, "--data.val_fraction", "0.2")[0] == 0
    for val_fraction in (0.1, 0.2):
        TextDataModule(source="text", path="book.txt", dataset_name="book", val_fraction=val_fraction).check_prepared()
    (in_tmp / "book.txt").write_text(BOOK + "An edited line.\n")
    with pytest.raises(UserError, match=r"is not ready \(the source or the settings changed\)"):
        TextDataModule(source="text", path="book.txt", dataset_name="book").check_prepared()
