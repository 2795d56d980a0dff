import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import datasets
import huggingface_hub
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from jsonargparse import ArgumentParser
from torch.utils.data import DataLoader

from minigpt.data import TextDataModule, TokenWindows, embedded_corpus
from minigpt.data import cache as cache_module
from minigpt.data.sources import PRINTABLE, repeated_strings
from minigpt.errors import UserError
from tests.skips import gpt2_or_skip

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak. Ünïcödé 🙂\n" * 8


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch, tmp_path):
    """No test touches the network, and the `datasets` caches go to the test's own folder."""
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))


def module(tmp_path, **kwargs) -> TextDataModule:
    return TextDataModule(data_dir=str(tmp_path / "data"), **{"block_size": 8, "batch_size": 4, **kwargs})


def split_tokens(dm: TextDataModule) -> dict[str, np.ndarray]:
    return {split: dm.cache.tokens(split) for split in ("train", "val")}


def documents(dm: TextDataModule, tokens: np.ndarray) -> list[str]:
    """The documents of a token file: decoded, cut at each end-of-text."""
    enc = dm.encoding
    assert tokens[-1] == enc.eot_token
    return enc.decode(tokens.tolist()).split("<|endoftext|>")[:-1]


def write_parquet_hub(folder: Path, texts: list[str]) -> Path:
    """A local folder laid out like a hub dataset: data/train-00000-of-00001.parquet."""
    (folder / "data").mkdir(parents=True)
    table = pa.table({"content": texts, "id": list(range(len(texts)))})
    pq.write_table(table, folder / "data" / "train-00000-of-00001.parquet")
    return folder


# ---- preparation: the files hold exactly the source's tokens ------------------------------------------------


def test_embedded_default_holds_every_topic_once(tmp_path):
    dm = module(tmp_path)
    assert (dm.source, dm.tokenizer, dm.vocab_size) == ("embedded", "bytes", 257)
    dm.prepare_data()
    tokens = split_tokens(dm)
    train, val = documents(dm, tokens["train"]), documents(dm, tokens["val"])
    corpus = embedded_corpus()
    assert sorted(train + val) == sorted(corpus)
    assert len(val) == math.ceil(0.1 * len(corpus))


def test_repeats_are_random_printable_strings_each_shown_twice(tmp_path):
    dm = module(tmp_path, source="repeats", repeat_documents=200, repeat_max_length=9)
    dm.prepare_data()
    tokens = split_tokens(dm)
    docs = documents(dm, tokens["train"]) + documents(dm, tokens["val"])
    assert sorted(docs) == sorted(repeated_strings(200, 9))  # the same documents on every run
    assert len(documents(dm, tokens["val"])) == 20
    halves = [doc[: len(doc) // 2] for doc in docs]
    assert all(doc == half * 2 for doc, half in zip(docs, halves, strict=True))
    assert {len(half) for half in halves} == set(range(3, 10))
    assert set("".join(docs)) <= set(PRINTABLE) and len(set("".join(docs))) == 94
    # Other settings, other documents: another cache, beside the first one (not in its place).
    other = module(tmp_path, source="repeats", repeat_documents=200, repeat_max_length=12)
    assert other.cache.fingerprint() != dm.cache.fingerprint()
    other.prepare_data()
    assert dm.cache.problem(dm.cache.fingerprint()) is None


def test_single_file_validates_on_its_last_tenth_like_nanogpt(tmp_path):
    path = tmp_path / "play.txt"
    path.write_text(TEXT, encoding="utf-8")
    dm = module(tmp_path, source="text", path=str(path))
    dm.prepare_data()
    tokens, cut = split_tokens(dm), int(len(TEXT) * 0.9)
    assert tokens["train"].tolist() == list(TEXT[:cut].encode()) + [256]
    assert tokens["val"].tolist() == list(TEXT[cut:].encode()) + [256]


@pytest.mark.skipif(not SHAKESPEARE.exists(), reason=f"no Tiny Shakespeare at {SHAKESPEARE}")
def test_tiny_shakespeare_split_is_nanogpts(tmp_path):
    dm = module(tmp_path, source="text", path=str(SHAKESPEARE))
    dm.prepare_data()
    text, tokens = SHAKESPEARE.read_text(), split_tokens(dm)
    cut = int(len(text) * 0.9)
    assert (len(tokens["train"]), len(tokens["val"])) == (1003854 + 1, 111540 + 1)
    assert bytes(tokens["train"][:-1].astype(np.uint8)) == text[:cut].encode()
    assert bytes(tokens["val"][:-1].astype(np.uint8)) == text[cut:].encode()


def test_folder_of_text_files_is_one_document_per_file(tmp_path):
    books = tmp_path / "books"
    (books / "more").mkdir(parents=True)
    texts = [f"book {i}: " + TEXT[: 50 + 10 * i] for i in range(4)]
    for i, text in enumerate(texts):
        (books / ("more" if i % 2 else "") / f"{i}.txt").write_text(text)
    (books / "notes.md").write_text("not a .txt file")
    for path in (books, books / "**" / "*.txt"):
        dm = module(tmp_path, source="text", path=str(path), dataset_name="books")
        dm.prepare_data()
        tokens = split_tokens(dm)
        train, val = documents(dm, tokens["train"]), documents(dm, tokens["val"])
        assert sorted(train + val) == sorted(texts)
        assert len(val) == 1  # ceil(0.1 * 4): even a few files give a validation document


def test_local_parquet_folder_goes_through_the_hub_path(tmp_path):
    texts = [f"story {i}: once upon a time " * (1 + i % 3) for i in range(30)]
    folder = write_parquet_hub(tmp_path / "stories", texts)
    dm = module(tmp_path, source="hub", path=str(folder), text_column="content")
    assert dm.dataset_name.endswith("-stories")
    dm.prepare_data()
    tokens = split_tokens(dm)
    assert sorted(documents(dm, tokens["train"]) + documents(dm, tokens["val"])) == sorted(texts)


@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "downloaded"])
def test_a_dataset_with_val_and_doc_end_columns_of_its_own_validates_on_the_usual_documents(tmp_path, streaming):
    """Columns named like the ones the cache adds (`val`) or reads (`doc_end`) are the dataset's, not ours."""
    texts = [f"document number {i}, " * 5 for i in range(200)]
    caches = []
    own = {"val": [True] * len(texts), "doc_end": [False] * len(texts)}
    for name, columns in (("plain", {}), ("own-val", own)):
        (tmp_path / name / "data").mkdir(parents=True)
        table = pa.table({"content": texts, **columns})
        pq.write_table(table, tmp_path / name / "data" / "train-00000-of-00001.parquet")
        dm = module(
            tmp_path / name, source="hub", path=str(tmp_path / name), text_column="content", streaming=streaming
        )
        dm.prepare_data()
        caches.append(split_tokens(dm))
    plain, own_val = caches
    assert 0 < len(plain["val"]) < len(plain["train"]) / 5
    assert all(np.array_equal(plain[split], own_val[split]) for split in ("train", "val"))


def test_streaming_stops_at_the_token_budget(tmp_path):
    texts = [f"document number {i}, " * 5 for i in range(3000)]
    folder = write_parquet_hub(tmp_path / "web", texts)
    dm = module(tmp_path, source="hub", path=str(folder), text_column="content", streaming=True, token_budget=20_000)
    dm.prepare_data()
    tokens = split_tokens(dm)
    docs = documents(dm, tokens["train"]) + documents(dm, tokens["val"])
    total = sum(len(t) for t in tokens.values())
    last = len(docs[-1].encode()) + 1
    assert total - last < 20_000 <= total  # stopped on the document that reached the budget
    assert set(docs) <= set(texts) and 0 < len(documents(dm, tokens["val"])) < len(docs) / 5


def test_gpt2_tokens_decode_back(tmp_path):
    gpt2_or_skip()
    dm = module(tmp_path, tokenizer="gpt2")
    dm.prepare_data()
    tokens = split_tokens(dm)
    assert sorted(documents(dm, tokens["train"]) + documents(dm, tokens["val"])) == sorted(embedded_corpus())


# ---- the cache ----------------------------------------------------------------------------------------------


def test_cache_is_reused_and_rebuilt_when_stale(tmp_path, capsys):
    path = tmp_path / "play.txt"
    path.write_text(TEXT)
    dm = module(tmp_path, source="text", path=str(path))
    dm.prepare_data()
    assert "no cache yet" in capsys.readouterr().out
    train_bin = Path(dm.cache.shards("train")[0])
    before = train_bin.stat().st_mtime_ns
    dm.prepare_data()
    assert capsys.readouterr().out == "" and train_bin.stat().st_mtime_ns == before
    # Another setting writes a cache of its own beside this one; going back rebuilds nothing.
    other = module(tmp_path, source="text", path=str(path), val_fraction=0.2)
    other.prepare_data()
    assert "the source or the settings changed" in capsys.readouterr().out
    dm.prepare_data()
    assert capsys.readouterr().out == "" and train_bin.stat().st_mtime_ns == before
    with open(train_bin, "r+b") as f:
        f.truncate(10)
    dm.prepare_data()
    assert "train-00000.bin is missing or truncated" in capsys.readouterr().out
    Path(dm.cache.shards("val")[0]).unlink()
    dm.prepare_data()
    assert "val-00000.bin is missing or truncated" in capsys.readouterr().out
    other_folder = Path(other.cache.meta_path).parent
    path.write_text(TEXT + "more")
    dm.prepare_data()
    assert "changed" in capsys.readouterr().out
    assert not list(Path(dm.cache_dir).rglob("*.tmp"))
    # The cache of the text before the edit is superseded and gone; the other setting's stays.
    assert sorted(Path(dm.cache_dir).iterdir()) == sorted([Path(dm.cache.meta_path).parent, other_folder])


# ---- the cache in shards: written in parallel, read as one stream ------------------------------------------


def small_shards(monkeypatch, batch_rows: int = 3) -> None:
    """Shards of one batch of `batch_rows` documents (or text pieces): many shards from a small source."""
    monkeypatch.setattr(cache_module, "SHARD_BATCHES", 1)
    monkeypatch.setattr(cache_module, "DOC_BATCH_ROWS", batch_rows)
    monkeypatch.setattr(cache_module, "TEXT_BATCH_ROWS", batch_rows)


def cache_bytes(dm: TextDataModule) -> dict[str, bytes]:
    folder = Path(dm.cache_dir)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("streaming,budget", [(False, None), (True, None), (True, 5_000)], ids=str)
def test_any_number_of_processes_writes_the_same_cache(tmp_path, monkeypatch, streaming, budget):
    small_shards(monkeypatch)
    folder = write_parquet_hub(tmp_path / "hub", [f"{i}: {TEXT[: 40 + 37 * i]}" for i in range(24)])
    caches = []
    for num_proc in (1, 2, 3):
        dm = module(
            tmp_path / str(num_proc), source="hub", path=str(folder), text_column="content", streaming=streaming,
            token_budget=budget, num_proc=num_proc, dataset_name="hub",
        )  # fmt: skip
        dm.prepare_data()
        caches.append(cache_bytes(dm))
    assert len(caches[0]) > 4  # several shards, each a train and a val file
    assert caches[0] == caches[1] == caches[2]


def test_shards_read_as_one_stream_give_the_windows_of_one_file(tmp_path, monkeypatch):
    small_shards(monkeypatch, batch_rows=1)
    for i in range(12):
        (tmp_path / "books").mkdir(exist_ok=True)
        (tmp_path / "books" / f"{i:02d}.txt").write_text(TEXT[: 100 + 20 * i])
    dm = module(tmp_path, source="text", path=str(tmp_path / "books"), block_size=16)
    dm.prepare_data()
    dm.setup()
    for split in ("train", "val"):
        assert len(dm.shards[split]) == 12  # a window often spans two shards
        single = tmp_path / f"{split}.bin"
        dm.cache.tokens(split).tofile(single)
        for seed, rank in ((1337, 0), (1337, 1), (7, 0), (None, 0)):
            args = (dm.dtype, 16, 4, range(0, 8), seed, rank)
            assert same(take(TokenWindows(dm.shards[split], *args), 8), take(TokenWindows([str(single)], *args), 8))
            starts = [TokenWindows(paths, *args, starts_only=True) for paths in (dm.shards[split], [str(single)])]
            assert all(torch.equal(a, b) for a, b in zip(*starts, strict=True))


def test_a_single_file_cache_of_an_older_version_is_rebuilt_as_shards(tmp_path, capsys):
    dm = module(tmp_path)
    dm.prepare_data()
    meta = json.loads(Path(dm.cache.meta_path).read_text())
    # The layout before shards: train.bin and val.bin beside a meta.json with no shard list.
    for split in ("train", "val"):
        dm.cache.tokens(split).tofile(Path(dm.cache_dir) / f"{split}.bin")
    shutil.rmtree(Path(dm.cache.shards("train")[0]).parent)
    meta.pop("shards")
    (Path(dm.cache_dir) / "meta.json").write_text(json.dumps(meta))
    capsys.readouterr()
    dm.prepare_data()
    assert capsys.readouterr().out.endswith("val tokens (a single-file cache of an older version: rebuilt as shards)\n")
    assert sorted(p.name for p in Path(dm.cache_dir).iterdir()) == [Path(dm.cache.shards("train")[0]).parent.name]
    assert sorted(p.name for p in Path(dm.cache.meta_path).parent.iterdir())[-3:] == [
        "meta.json", "train-00000.bin", "val-00000.bin"
    ]  # fmt: skip


# ---- batches ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> TextDataModule:
    dm = TextDataModule(data_dir=str(tmp_path_factory.mktemp("cache")), block_size=16, batch_size=4)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def take(windows, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [batch for batch, _ in zip(windows, range(n), strict=False)]


def same(a: list, b: list) -> bool:
    """Whether two lists of (x, y) batches are equal."""
    return len(a) == len(b) and all(torch.equal(torch.stack(p), torch.stack(q)) for p, q in zip(a, b, strict=True))


def windows(dm: TextDataModule, start: int = 0, rank: int = 0, seed: int = 1337) -> TokenWindows:
    batches = range(start, 10**9)
    return TokenWindows(dm.shards["train"], dm.dtype, dm.block_size, dm.batch_size, batches, seed, rank)


def test_y_is_x_shifted_by_one(prepared):
    x, y = next(iter(prepared.train_dataloader()))
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    train = prepared.data["train"]
    for row, start in zip(x, windows(prepared).offsets(0, len(train)), strict=True):
        assert row.tolist() == train[start : start + 16].tolist()


def test_training_batches_are_a_function_of_seed_rank_and_index(prepared):
    first = take(windows(prepared), 6)
    assert same(first, take(windows(prepared), 6))
    assert not any(torch.equal(a[0], b[0]) for a, b in zip(first, take(windows(prepared, rank=1), 6), strict=True))
    assert not torch.equal(first[0][0], take(windows(prepared, seed=1), 1)[0][0])
    # Resuming at batch 3 continues the same stream.
    assert same(first[3:], take(windows(prepared, start=3), 3))


def test_workers_split_the_batches_without_changing_them(prepared):
    loader = DataLoader(windows(prepared), batch_size=None, num_workers=2)
    assert same(take(loader, 6), take(windows(prepared), 6))


def test_train_loader_starts_where_the_trainer_left_off(prepared):
    prepared.trainer = SimpleNamespace(global_step=3, accumulate_grad_batches=2, global_rank=1)
    try:
        loader = prepared.train_dataloader()
    finally:
        prepared.trainer = None
    assert (loader.dataset.batches.start, loader.dataset.rank) == (6, 1)
    assert same(take(loader, 2), take(windows(prepared, start=6, rank=1), 2))


def test_validation_batches_are_fixed(prepared):
    first, again = list(prepared.val_dataloader()), list(prepared.val_dataloader())
    assert len(first) == prepared.val_batches and same(first, again)
    val = prepared.val_dataloader().dataset
    starts = np.concatenate([val.offsets(b, len(prepared.data["val"])) for b in range(prepared.val_batches)])
    # Evenly spaced from the first window to the last one that fits.
    assert starts[0] == 0 and starts[-1] == len(prepared.data["val"]) - 17 and np.all(np.diff(starts) > 0)


def test_ddp_ranks_share_out_the_validation_batches(prepared):
    whole = list(prepared.val_dataloader())
    shares = []
    for rank in range(3):  # 20 batches over 3 ranks: 7, 7 and 6
        prepared.trainer = SimpleNamespace(global_rank=rank, world_size=3)
        try:
            shares.append(list(prepared.val_dataloader()))
        finally:
            prepared.trainer = None
    assert [len(share) for share in shares] == [7, 7, 6]
    assert same([batch for b in range(20) for batch in [shares[b % 3][b // 3]]], whole)


def test_fewer_validation_batches_than_ranks_is_a_clear_error(prepared):
    prepared.trainer = SimpleNamespace(global_rank=0, world_size=32)
    try:
        with pytest.raises(ValueError, match="val_batches=20 is fewer than the 32 training processes"):
            prepared.val_dataloader()
    finally:
        prepared.trainer = None


def test_tokens_on_device_gives_the_same_batches(tmp_path, prepared):
    on_device = TextDataModule(data_dir=prepared.data_dir, block_size=16, batch_size=4, tokens_on_device=True)
    on_device.setup("fit")
    for split, loaders in (
        ("train", (prepared.train_dataloader(), on_device.train_dataloader())),
        ("val", (prepared.val_dataloader(), on_device.val_dataloader())),
    ):
        starts = take(loaders[1], 5)
        assert all(s.shape == (4,) and s.dtype == torch.int64 for s in starts)  # only the starts leave the loader
        assert same(take(loaders[0], 5), [on_device.cut_windows(split, s) for s in starts])
    # The hook picks the split from the trainer's state.
    on_device.trainer = SimpleNamespace(training=False)
    assert same(take(prepared.val_dataloader(), 1), [on_device.on_after_batch_transfer(starts[0], 0)])
    on_device.trainer = None


# ---- what a user can get wrong: one line that names the value and the fix -----------------------------------


def one_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


def test_empty_input(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="holds no text") as info:
        module(tmp_path, source="text", path=str(tmp_path / "empty.txt")).prepare_data()
    one_line(info)
    assert not list((tmp_path / "data").rglob("*.tmp")), "a failed preparation left a temporary file"


def test_missing_local_file(tmp_path):
    with pytest.raises(UserError, match="no text file at path='nowhere/\\*.txt'") as info:
        module(tmp_path, source="text", path="nowhere/*.txt").prepare_data()
    one_line(info)


def test_missing_text_column(tmp_path):
    folder = write_parquet_hub(tmp_path / "ds", ["a story"])
    with pytest.raises(ValueError, match="text_column='text' is not a column.*content, id") as info:
        module(tmp_path, source="hub", path=str(folder)).prepare_data()
    one_line(info)


def test_corpus_shorter_than_a_window(tmp_path):
    (tmp_path / "short.txt").write_text("a few words, " * 10)
    dm = module(tmp_path, source="text", path=str(tmp_path / "short.txt"), block_size=64)
    dm.prepare_data()  # a valid cache, for a smaller block_size
    message = "val split .* fewer than one window of block_size \\+ 1 = 65"
    with pytest.raises(UserError, match=message) as info:
        dm.check_windows()  # what prepare_data checks when a Trainer runs it, before training starts anything else
    one_line(info)
    with pytest.raises(UserError, match=message):
        dm.setup()


@pytest.mark.parametrize("path", ["minigpt-tests/no-such-dataset", "https://example.com/corpus.txt"])
def test_unreachable_hub_says_what_to_do_offline(tmp_path, path):
    source = "text" if "://" in path else "hub"
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE") as info:
        module(tmp_path, source=source, path=path).prepare_data()
    assert "source: text, path:" in one_line(info) and "source: embedded" in one_line(info)


def test_bad_arguments_fail_at_construction(tmp_path):
    with pytest.raises(ValueError, match="unknown tokenizer 'gpt5'"):
        module(tmp_path, tokenizer="gpt5")
    with pytest.raises(ValueError, match="source 'hub' needs a path"):
        module(tmp_path, source="hub")
    with pytest.raises(ValueError, match="val_batches=0 must be at least 1"):
        module(tmp_path, val_batches=0)
    with pytest.raises(ValueError, match="data.repeat_max_length=2 must be >= 3"):
        module(tmp_path, source="repeats", repeat_max_length=2)


def test_non_utf8_bytes_are_replaced_and_counted(tmp_path, capsys):
    path = tmp_path / "latin1.txt"
    path.write_bytes(TEXT.encode() + "café\nnaïve\nplain\n".encode("latin-1") + TEXT.encode())
    dm = module(tmp_path, source="text", path=str(path))
    dm.prepare_data()
    assert "2 lines held bytes that are not UTF-8" in capsys.readouterr().out
    tokens = split_tokens(dm)
    text = "".join(documents(dm, tokens["train"]) + documents(dm, tokens["val"]))
    assert "caf\ufffd\nna\ufffdve\nplain" in text


# ---- the shipped presets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted((ROOT / "configs" / "data").glob("*.yaml")), ids=lambda p: p.name)
def test_data_presets_build_the_datamodule(preset):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(TextDataModule, "data")
    dm = parser.instantiate(parser.parse_args(["--data", str(preset)])).data
    assert isinstance(dm, TextDataModule) and dm.source in ("text", "hub") and dm.path


def test_presets_for_the_issue_datasets_exist():
    names = {p.stem for p in (ROOT / "configs" / "data").glob("*.yaml")}
    assert {"tinyshakespeare", "tinystories", "fineweb-edu"} <= names
