"""Bad input end to end through train.py's and sample.py's main(argv): one `error:` line naming the problem, exit
code 2, and nothing lost or half-written. Also: checkpoints never run code, and a text file of any size streams.

(The cases tests/test_train.py, tests/test_sample.py and tests/test_data.py already cover are not repeated.)
"""

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pyarrow as pa
import pytest
import torch
from huggingface_hub.errors import HFValidationError
from lightning.pytorch import Trainer
from lightning.pytorch.plugins.io import TorchCheckpointIO

from minigpt.cli import main
from minigpt.data import Source, TextDataModule
from minigpt.data import sources as data_sources
from minigpt.errors import UserError
from minigpt.model import GPTConfig
from minigpt.tokenizer import get_tokenizer
from tests.skips import gpt2_or_skip
from tests.test_data import write_parquet_hub
from tests.test_sample import run_main as run_sample
from tests.test_sample import write_checkpoint
from tests.test_train import TINY

REPO = Path(__file__).resolve().parent.parent
# The model TINY trains, so that a checkpoint written here resumes in a TINY run.
TINY_CONFIG = GPTConfig(vocab_size=257, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.0, bias=True)


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Every run writes runs/, data/ and its `datasets` cache under the test's own folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    return tmp_path


def train(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([*TINY, *args])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    """The one error line, last on stderr (progress bars of work done before the problem showed may precede it)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), err
    assert sum(line.startswith("error") for line in lines) == 1 and "Traceback" not in err, err
    return lines[-1]


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root (but the `datasets` cache) and a hash of its bytes."""
    files = (p for p in root.rglob("*") if p.is_file() and "hf" not in p.relative_to(root).parts)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


# --- checkpoints -------------------------------------------------------------------------------------------------


def truncated(path: Path) -> Path:
    write_checkpoint(path, TINY_CONFIG)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def weights_of_another_shape(path: Path) -> Path:
    """A checkpoint whose model_config says one shape and whose weights are of another."""
    write_checkpoint(path, TINY_CONFIG)
    ckpt = torch.load(path, weights_only=True)
    ckpt["minigpt"]["model_config"]["n_embd"] = 32
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize(
    "make,message",
    [(truncated, "is truncated or not a torch checkpoint"), (weights_of_another_shape, "do not fit its model_config")],
    ids=["truncated", "another_shape"],
)
@pytest.mark.parametrize("how", ["path", "last"])
def test_damaged_checkpoint_is_refused_by_train_and_sample(in_tmp, capsys, make, message, how):
    ckpt = make(in_tmp / "runs" / "old" / "checkpoints" / "last.ckpt")
    before = snapshot(in_tmp)
    ckpt_path = str(ckpt) if how == "path" else "last"
    code, out, err = train(capsys, "--ckpt_path", ckpt_path)
    assert code == 2 and f"checkpoint {ckpt.relative_to(in_tmp) if how == 'last' else ckpt}" in error_line(err)
    assert message in err and err.count("\n") == 1
    code, out, err = run_sample(capsys, "--ckpt", str(ckpt))
    assert code == 2 and out == "" and message in error_line(err) and err.count("\n") == 1
    assert snapshot(in_tmp) == before  # the damaged file is still there, untouched, and nothing was added


class CreatesAFile:
    """Unpickling this calls open(path, "w"): arbitrary code a checkpoint could run when loaded with pickle."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def malicious_checkpoint(path: Path, marker: Path) -> Path:
    """A checkpoint as training writes it, with one more entry that creates `marker` when unpickled."""
    write_checkpoint(path, TINY_CONFIG)
    ckpt = torch.load(path, weights_only=True)
    ckpt["callbacks"] = {"innocent-looking": CreatesAFile(marker)}
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("how", ["path", "last"])
def test_malicious_checkpoint_is_refused_and_runs_no_code(in_tmp, capsys, how):
    marker = in_tmp / "created-by-the-checkpoint"
    ckpt = malicious_checkpoint(in_tmp / "runs" / "evil" / "checkpoints" / "last.ckpt", marker)
    torch.load(ckpt, weights_only=False)  # the payload works: a plain pickle load runs it
    assert marker.exists()
    marker.unlink()
    before = snapshot(in_tmp)

    code, out, err = train(capsys, "--ckpt_path", str(ckpt) if how == "path" else "last")
    assert code == 2 and "holds Python objects that torch.load(weights_only=True) does not load" in error_line(err)
    assert "io.open" in err and err.count("\n") == 1
    code, out, err = run_sample(capsys, "--ckpt", str(ckpt))
    assert code == 2 and out == "" and "does not load (io.open)" in error_line(err)
    # Lightning's own loader, as train.py asks it to load a resumed checkpoint, refuses it too.
    with pytest.raises(Exception, match="Weights only load failed"):
        TorchCheckpointIO().load_checkpoint(ckpt, weights_only=True)
    assert not marker.exists() and snapshot(in_tmp) == before


def test_resume_asks_lightning_for_a_weights_only_load(in_tmp, capsys, monkeypatch):
    """Our check loads the checkpoint with weights_only=True first; Lightning's own load of it must be one too."""
    write_checkpoint(in_tmp / "runs" / "r" / "checkpoints" / "last.ckpt", TINY_CONFIG)
    calls = []
    monkeypatch.setattr(Trainer, "fit", lambda self, *args, **kwargs: calls.append(kwargs))
    code, out, err = train(capsys, "--name", "r", "--ckpt_path", "last", "--sample_tokens", "0")
    assert code == 0, err
    assert len(calls) == 1 and calls[0]["weights_only"] is True
    assert Path(calls[0]["ckpt_path"]) == Path("runs/r/checkpoints/last.ckpt")


def test_every_checkpoint_load_is_weights_only():
    """Every torch.load in the project, and every Trainer.fit that resumes, asks for weights_only=True."""
    loads, fits = [], []
    for source in [*(REPO / "minigpt").glob("*.py"), REPO / "train.py", REPO / "sample.py"]:
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Call):
                keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
                call = (f"{source.name}:{node.lineno}", keywords.get("weights_only"))
                if ast.unparse(node.func) == "torch.load":
                    loads.append(call)
                elif ast.unparse(node.func).endswith(".fit") and "ckpt_path" in keywords:
                    fits.append(call)
    assert loads and all(only == "True" for _, only in loads), loads
    assert fits and all(only == "True" for _, only in fits), fits


# --- the token cache ---------------------------------------------------------------------------------------------


def test_only_a_name_or_split_the_dataset_lacks_is_called_so(tmp_path, monkeypatch):
    """datasets refuses a name or split with a plain ValueError; a corrupt file (pyarrow's ArrowInvalid) or a
    malformed repo id (huggingface_hub's HFValidationError) is a ValueError too, and must not read as one."""
    folder = write_parquet_hub(tmp_path / "good", ["a story", "another story"])
    for name, split in (("nope", "train"), (None, "nope")):
        with pytest.raises(UserError, match=f"has no name={name!r} or no split={split!r}") as info:
            Source("hub", str(folder), name, split).read()
        assert "\n" not in str(info.value)
    corrupt = tmp_path / "corrupt"
    (corrupt / "data").mkdir(parents=True)
    (corrupt / "data" / "train-00000-of-00001.parquet").write_bytes(b"PAR1 this is not a parquet file")
    with pytest.raises(pa.ArrowInvalid):
        Source("hub", str(corrupt)).read()

    def malformed(*args, **kwargs):
        raise HFValidationError("Repo id must use alphanumeric chars, '-', '_' or '.'")

    monkeypatch.setattr(datasets, "load_dataset", malformed)
    with pytest.raises(HFValidationError):
        Source("hub", "a/b/c").read()


def lie_about_the_length(meta: dict) -> str:
    meta["tokens"]["train"] += 1000
    meta["shards"]["train"][0] += 1000
    return json.dumps(meta)


@pytest.mark.parametrize(
    "edit,problem",
    [
        (lie_about_the_length, "train-00000.bin is missing or truncated"),
        (lambda meta: '{"tokens": ', "meta.json is damaged"),
        (lambda meta: "{}", "meta.json is damaged"),
        (lambda meta: json.dumps(meta | {"tokens": {"train": "many", "val": 3}}), "meta.json is damaged"),
    ],
    ids=["lies_about_length", "not_json", "empty_object", "wrong_types"],
)
def test_token_cache_with_a_wrong_meta_is_named_and_rebuilt(in_tmp, capsys, edit, problem):
    """A cache is derived data: one that meta.json does not vouch for is rebuilt, never trusted, never a crash."""
    dm = TextDataModule(block_size=16)
    dm.prepare_data()
    cache = in_tmp / dm.cache_dir
    good = snapshot(cache)
    meta_path = in_tmp / dm.cache.meta_path
    meta_path.write_text(edit(json.loads(meta_path.read_text())))
    code, out, err = train(capsys, "--trainer.max_steps", "1", "--sample_tokens", "0")
    assert code == 0, err
    assert "prepared data/python-reference/bytes: " in out and f" val tokens ({problem}" in out
    assert snapshot(cache) == good  # rebuilt as it was


# --- configs -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [
        ("model:\n  n_layer: two\n", "key \"model.n_layer\": Expected a <class 'int'>. Got value: two"),
        ("trainer:\n  max_steps: 1.5\n", "\"trainer.max_steps\": Expected a <class 'int'>"),
        ("data:\n  val_fraction: 1.5\n", "val_fraction=1.5 must lie strictly between 0 and 1"),
        ("data:\n  tokenizer: gpt5\n", "unknown tokenizer 'gpt5'"),
        ("model:\n  n_layer: [\n", "config bad.yaml is not valid YAML: expected the node content"),
        ("model:\n\tn_layer: 2\n", "config bad.yaml is not valid YAML: found character '\\t'"),
    ],
    ids=["int_as_word", "int_as_float", "fraction_out_of_range", "unknown_tokenizer", "yaml_syntax", "yaml_tab"],
)
def test_bad_config_file_is_one_line_naming_the_key_or_the_file(in_tmp, capsys, text, expected):
    (in_tmp / "bad.yaml").write_text(text)
    before = snapshot(in_tmp)
    code, out, err = train(capsys, "--config", "bad.yaml")
    assert code == 2 and expected in error_line(err) and err.count("\n") == 1
    assert snapshot(in_tmp) == before


@pytest.mark.slow
def test_a_refusal_is_the_only_line_on_stderr_of_train_py(tmp_path):
    """Lightning logs its seed and devices on stderr; a problem found before training shows alone."""
    ckpt = truncated(tmp_path / "bad.ckpt")
    done = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *TINY, "--ckpt_path", str(ckpt)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"error: checkpoint {ckpt} is truncated or not a torch checkpoint (no complete zip archive)\n"


# --- prompts -----------------------------------------------------------------------------------------------------


def test_latin1_prompt_file_is_named(in_tmp, capsys):
    write_checkpoint(in_tmp / "model.ckpt")
    (in_tmp / "prompt.txt").write_bytes("Un café, s'il vous plaît\n".encode("latin-1"))
    code, out, err = run_sample(capsys, "--ckpt", "model.ckpt", "--prompt-file", "prompt.txt")
    assert code == 2 and out == ""
    assert err == "error: prompt file prompt.txt is not UTF-8 text (invalid continuation byte at byte 6)\n"


# --- datasets ----------------------------------------------------------------------------------------------------


def make_empty_file(root: Path) -> str:
    (root / "empty.txt").write_text("")
    return "empty.txt"


def make_empty_folder(root: Path) -> str:
    (root / "corpus").mkdir()
    (root / "corpus" / "notes.md").write_text("not a .txt file")
    return "corpus"


@pytest.mark.parametrize(
    "make,expected",
    [
        (make_empty_file, "source 'empty.txt' holds no text; give a non-empty source"),
        (make_empty_folder, "no text file at path='corpus'; give a .txt file, a folder of them or a glob"),
    ],
    ids=["empty_file", "folder_without_text_files"],
)
def test_empty_dataset_is_one_line_and_leaves_the_caches_alone(in_tmp, capsys, make, expected):
    TextDataModule(block_size=16).prepare_data()  # another dataset's cache, which must survive
    path = make(in_tmp)
    before = snapshot(in_tmp)
    code, out, err = train(capsys, "--data.source", "text", "--data.path", path, "--data.dataset_name", "mine")
    assert code == 2 and expected in error_line(err)
    assert snapshot(in_tmp) == before  # no token file, temporary or not, no meta.json, no checkpoint


# --- a text file of any size streams -----------------------------------------------------------------------------

MIXED = (
    "First Citizen:\r\nBefore we proceed any further, hear me speak.\n\n  All:\tSpeak, speak. "
    "It's 1234567 o'clock; ünïcödé 🙂 words_with_underscores x.\ny\n" * 6
)
NO_WHITESPACE = "a-run-of-text-with-no-whitespace-to-cut-at;" * 4  # cut where it must: byte tokens stay the same


def prepare_in_pieces(tmp_path: Path, monkeypatch, tokenizer: str, files: dict[str, bytes]) -> TextDataModule:
    """The files prepared with pieces of 40 characters: many cuts, a few per line, one in a long run."""
    monkeypatch.setattr(data_sources, "TEXT_CHUNK_CHARS", 40)
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name, content in files.items():
        (folder / name).write_bytes(content)
    path = folder / next(iter(files)) if len(files) == 1 else folder
    dm = TextDataModule(source="text", path=str(path), tokenizer=tokenizer, data_dir=str(tmp_path / "data"))
    dm.prepare_data()
    return dm


def tokens(dm: TextDataModule, split: str) -> list[int]:
    return dm.cache.tokens(split).tolist()


@pytest.mark.parametrize("tokenizer", ["bytes", "gpt2"])
def test_a_file_read_in_pieces_tokenizes_as_the_whole_file(tmp_path, monkeypatch, capsys, tokenizer):
    enc = gpt2_or_skip() if tokenizer == "gpt2" else get_tokenizer(tokenizer)
    raw = MIXED.encode() + b"\xff not UTF-8 \xfe\n" + MIXED.encode()
    if tokenizer == "bytes":
        raw += NO_WHITESPACE.encode()
    dm = prepare_in_pieces(tmp_path, monkeypatch, tokenizer, {"book.txt": raw})
    text = (tmp_path / "corpus" / "book.txt").open(encoding="utf-8", errors="replace").read()  # as nanoGPT reads it
    cut = int(len(text) * 0.9)
    assert tokens(dm, "train") == enc.encode_ordinary(text[:cut]) + [enc.eot_token]
    assert tokens(dm, "val") == enc.encode_ordinary(text[cut:]) + [enc.eot_token]
    assert "1 lines held bytes that are not UTF-8" in capsys.readouterr().out


def test_files_read_in_pieces_stay_one_document_each(tmp_path, monkeypatch):
    files = {f"{i}.txt": (f"Book {i}. " + MIXED[: 30 * i] + NO_WHITESPACE).encode() for i in range(5)}
    files["5.txt"] = b""  # an empty document
    dm = prepare_in_pieces(tmp_path, monkeypatch, "bytes", files)
    docs, doc = [], []
    for token in tokens(dm, "train") + tokens(dm, "val"):
        if token == dm.encoding.eot_token:
            docs.append(bytes(doc))
            doc = []
        else:
            doc.append(token)
    assert doc == [] and sorted(docs) == sorted(content.replace(b"\r\n", b"\n") for content in files.values())


LONG_LINE_MB = 30
# The peak is this process's own high-water mark (VmHWM): Linux keeps ru_maxrss across exec, so getrusage would
# report the RSS of the pytest process that forked it whenever that is larger.
MEASURE = """
import os, re, sys
import datasets  # imported by preparation itself; loaded here so the baseline below holds the libraries
from minigpt.cli import main
rss = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
code = main(sys.argv[1:])
peak_kb = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read())[1])
print(f"rss_before={rss} peak={peak_kb * 1024}")
sys.exit(code)
"""


@pytest.mark.slow
def test_one_very_long_line_streams_in_bounded_memory(tmp_path):
    """A 30 MB file of one line trains; preparing it holds pieces, not the file. Reading the whole file into one
    string and one list of ints peaked ~670 MB above the process's start; streaming peaks ~175 MB above it, most
    of that the pages of `datasets`' memory-mapped Arrow files (the text and its tokens), which the kernel may drop.
    """
    words = b"lorem ipsum dolor sit amet, consectetur adipiscing elit " * 1024
    with open(tmp_path / "long.txt", "wb") as f:
        for _ in range(LONG_LINE_MB * 2**20 // len(words)):
            f.write(words)
    n = (tmp_path / "long.txt").stat().st_size
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_DATASETS_CACHE": str(tmp_path / "hf")}
    data = ["--data.source", "text", "--data.path", "long.txt", "--data.dataset_name", "long"]
    argv = [*TINY, *data, "--trainer.max_steps", "1", "--sample_tokens", "0"]
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    fields = dict(item.split("=") for item in done.stdout.split("\n")[-2].split())
    grown_mb = (int(fields["peak"]) - int(fields["rss_before"])) / 2**20
    assert grown_mb < 250, f"preparing a {LONG_LINE_MB} MB line grew the process by {grown_mb:.0f} MB"
    (meta_path,) = (tmp_path / "data" / "long" / "bytes").glob("shards-*/meta.json")
    meta = json.loads(meta_path.read_text())
    assert meta["tokens"] == {"train": int(n * 0.9) + 1, "val": n - int(n * 0.9) + 1}  # nanoGPT's split, exact
    for big in ("hf", "data", "long.txt"):  # ~200 MB that pytest would otherwise keep among its last runs
        shutil.rmtree(tmp_path / big) if (tmp_path / big).is_dir() else (tmp_path / big).unlink()
