"""A streamed preparation that stops resumes at the first row after its last whole shard, and ends as one that never
stopped; a stream of another revision is another cache.

The stream is a local folder of parquet files read as a hub dataset with `streaming: true`, as a hub id is read.
"""

import os
from pathlib import Path
from types import SimpleNamespace

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets.packaged_modules.parquet.parquet import Parquet

from minigpt.data import TextDataModule
from minigpt.data import cache as cache_module
from minigpt.data.sources import Source

FILES, FILE_ROWS = 6, 20
BATCH_ROWS, SHARD_BATCHES = 10, 2  # a shard: two batches of ten rows, one data file
STOP_IN_BATCH = 7  # the fourth shard's second batch: three shards are whole


def write_stream(folder: Path, edited: bool = False) -> Path:
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for k in range(FILES):
        rows = range(k * FILE_ROWS, (k + 1) * FILE_ROWS)
        texts = [f"doc {i}: {'an edited line ' if edited else ''}" + "words to tokenize " * (1 + i % 4) for i in rows]
        pq.write_table(pa.table({"content": texts}), folder / "data" / f"train-{k:05d}-of-{FILES:05d}.parquet")
    return folder


def data_module(tmp_path: Path, run: str, **kwargs) -> TextDataModule:
    return TextDataModule(
        source="hub", path=str(tmp_path / "web"), text_column="content", streaming=True, dataset_name="web",
        data_dir=str(tmp_path / run), block_size=8, num_proc=2, **kwargs,
    )  # fmt: skip


def cache_bytes(dm: TextDataModule) -> dict[str, bytes]:
    """The files of the cache of dm's current source and settings (other caches beside it left out)."""
    folder = Path(dm.cache.shard_dir(dm.cache.fingerprint()))
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class Stop(Exception):
    pass


@pytest.fixture
def small_shards(monkeypatch):
    monkeypatch.setattr(cache_module, "DOC_BATCH_ROWS", BATCH_ROWS)
    monkeypatch.setattr(cache_module, "SHARD_BATCHES", SHARD_BATCHES)


def record_reads(monkeypatch) -> tuple[list[str], list[str]]:
    """The texts of the rows the stream hands to the tokenizer, and the names of the data files the parquet reader
    opens, in order, from now on."""
    texts, names = [], []
    real_batches, real_tables = cache_module.encoded_batches, Parquet._generate_tables

    def encoded_batches(batches, *args):
        def recorded():
            for batch in batches:
                texts.extend(batch[0])
                yield batch

        return real_batches(recorded(), *args)

    def generate_tables(self, files, row_groups_list):
        names.extend(Path(f).name for f in files)
        yield from real_tables(self, files, row_groups_list)

    monkeypatch.setattr(cache_module, "encoded_batches", encoded_batches)
    monkeypatch.setattr(Parquet, "_generate_tables", generate_tables)
    return texts, names


def stopped_preparation(tmp_path, monkeypatch, stop: str = "tokens", **kwargs) -> TextDataModule:
    """A preparation that raises as it writes the tokens of batch STOP_IN_BATCH (stop="tokens"), or as it renames the
    train file of that batch's shard into place, after the stream's state and the val file (stop="rename"): either
    way the shards before it are whole."""
    dm = data_module(tmp_path, "resumed", **kwargs)
    shard = STOP_IN_BATCH // SHARD_BATCHES
    with monkeypatch.context() as patch:
        real_batches, real_replace = cache_module.encoded_batches, os.replace

        def encoded_batches(*args):
            for b, item in enumerate(real_batches(*args)):
                if b == STOP_IN_BATCH and stop == "tokens":
                    raise Stop
                yield item

        def replace(src, dst):
            if str(dst).endswith(f"train-{shard:05d}.bin") and stop == "rename":
                raise Stop
            real_replace(src, dst)

        patch.setattr(cache_module, "encoded_batches", encoded_batches)
        patch.setattr(os, "replace", replace)
        with pytest.raises(Stop):
            dm.prepare_data()
    folder = next(Path(dm.cache_dir).glob("shards-*"))
    assert sorted(p.name for p in folder.glob("train-*.bin")) == [f"train-{k:05d}.bin" for k in range(shard)]
    assert (folder / f"stream-{shard:05d}.json").exists() == (stop == "rename")
    return dm


@pytest.mark.parametrize(
    "stop,budget", [("tokens", None), ("tokens", 5_000), ("rename", None)], ids=["tokens", "token-budget", "rename"]
)
def test_a_stopped_stream_resumes_after_its_whole_shards(tmp_path, monkeypatch, small_shards, stop, budget):
    write_stream(tmp_path / "web")
    dm = stopped_preparation(tmp_path, monkeypatch, stop, token_budget=budget)
    with monkeypatch.context() as patch:
        texts, files = record_reads(patch)
        dm.prepare_data()
    whole_rows = STOP_IN_BATCH // SHARD_BATCHES * SHARD_BATCHES * BATCH_ROWS
    assert texts[0].startswith(f"doc {whole_rows}:")  # the first row after the whole shards, read once
    assert len(texts) == len(set(texts))
    if budget is None:
        assert texts[-1].startswith(f"doc {FILES * FILE_ROWS - 1}:")
    # `datasets` resumes from its state before the table it was cutting batches from: it opens the data file before
    # the one it stood in again (and skips its rows), never the files before those.
    assert files[0] == f"train-{whole_rows // FILE_ROWS - 2:05d}-of-{FILES:05d}.parquet"
    assert len(files) == len(set(files))

    uninterrupted = data_module(tmp_path, "uninterrupted", token_budget=budget)
    uninterrupted.prepare_data()
    assert cache_bytes(dm) == cache_bytes(uninterrupted)
    assert len(cache_bytes(dm)) > 2 * 4  # several shards' train and val files, meta.json


def prepared_again_as_uninterrupted(tmp_path, monkeypatch, dm) -> list[str]:
    """The texts dm's preparation reads when run again, in order; its cache is then checked byte for byte against
    that of a preparation never stopped."""
    with monkeypatch.context() as patch:
        texts, _ = record_reads(patch)
        dm.prepare_data()
    uninterrupted = data_module(tmp_path, "uninterrupted")
    uninterrupted.prepare_data()
    assert cache_bytes(dm) == cache_bytes(uninterrupted)
    return texts


def test_a_stream_of_another_revision_starts_a_new_cache(tmp_path, monkeypatch, small_shards):
    write_stream(tmp_path / "web")
    dm = stopped_preparation(tmp_path, monkeypatch)
    write_stream(tmp_path / "web", edited=True)  # the files change: the dataset's revision is another
    texts = prepared_again_as_uninterrupted(tmp_path, monkeypatch, dm)
    assert texts[0].startswith("doc 0: an edited line")
    assert dm.cache.read_meta()["revision"] == datasets.load_dataset_builder(str(tmp_path / "web")).hash
    assert len(list(Path(dm.cache_dir).glob("shards-*"))) == 2  # the old revision's half-built folder is left alone


def test_a_prepared_stream_is_used_when_its_revision_cannot_be_resolved(tmp_path, monkeypatch):
    write_stream(tmp_path / "web")
    dm = data_module(tmp_path, "offline")
    dm.prepare_data()
    monkeypatch.setattr(Source, "revision", lambda self: None)  # as when the hub cannot be reached
    assert dm.cache.problem(dm.cache.fingerprint()) is None
    write_stream(tmp_path / "web", edited=True)
    monkeypatch.undo()
    assert dm.cache.problem(dm.cache.fingerprint()) == "the source or the settings changed"


def test_a_hub_id_is_read_at_the_revision_its_cache_records(tmp_path, monkeypatch):
    commits, reads = ["a" * 40], []
    monkeypatch.setattr(datasets, "load_dataset_builder", lambda path, name: SimpleNamespace(hash=commits[-1]))

    def load_dataset(path, name, split, streaming, revision):
        reads.append(revision)
        return datasets.Dataset.from_dict({"text": [f"a page at {revision}"] * 40}).to_iterable_dataset()

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    dm = TextDataModule(source="hub", path="someone/web", streaming=True, data_dir=str(tmp_path), block_size=8)
    dm.prepare_data()
    assert reads == ["a" * 40] and dm.cache.read_meta()["revision"] == "a" * 40
    dm.prepare_data()  # the same commit: the cache is reused, nothing is read
    assert reads == ["a" * 40]
    commits.append("b" * 40)  # a new commit on the hub: another cache, read at that commit
    dm.prepare_data()
    assert reads == ["a" * 40, "b" * 40] and dm.cache.read_meta()["revision"] == "b" * 40


def test_whole_shards_without_the_streams_state_are_written_again(tmp_path, monkeypatch, small_shards):
    write_stream(tmp_path / "web")
    dm = stopped_preparation(tmp_path, monkeypatch)
    for state in Path(dm.cache_dir).glob("shards-*/stream-*.json"):  # as a preparation that kept none left them
        state.unlink()
    texts = prepared_again_as_uninterrupted(tmp_path, monkeypatch, dm)
    assert texts[0].startswith("doc 0:")
