"""`minigpt export`: checkpoints as HuggingFace GPT-2 directories that transformers loads offline, with our logits
and our token ids; and the export's refusals, one line each, nothing written."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import tiktoken
import torch

from minigpt.__main__ import main as minigpt
from minigpt.generate import generate
from minigpt.model import GPTConfig
from minigpt.tokenizer import get_tokenizer
from tests.skips import gpt2_or_skip
from tests.test_sample import run_main, write_checkpoint
from tests.test_train import one_error_line

transformers = pytest.importorskip("transformers")

TEXT = "ROMEO:\nBut, soft! what light through yonder window breaks?\n\n  It is the east 42 times, naïve 🤖 café.\t"
GPT2_TINY = GPTConfig(vocab_size=50257, block_size=32, n_layer=2, n_head=2, n_embd=16)


def export(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = minigpt(["export", *map(str, argv)])
    except SystemExit as e:  # argparse's errors exit from inside main
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def exported(tmp_path, capsys, config: GPTConfig, tokenizer: str):
    """(our model, HF's model, HF's tokenizer) of a random checkpoint exported and loaded back."""
    ckpt, out = tmp_path / "last.ckpt", tmp_path / "hf"
    model = write_checkpoint(ckpt, config, tokenizer).eval()
    code, stdout, err = export(capsys, "--ckpt", ckpt, "--out", out)
    assert code == 0, err
    assert "exported" in stdout
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    return model, hf_model, hf_tok


def assert_same_logits(model, hf_model, idx: torch.Tensor) -> None:
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf_model(idx).logits
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "bias, pad", [(True, 1), (False, 64)], ids=["gpt2-layout", "no-bias-padded-vocab"]
)  # fmt: skip
def test_bytes_model_loads_in_transformers_with_our_ids_and_logits(tmp_path, capsys, bias, pad):
    config = GPTConfig(vocab_size=257, block_size=32, n_layer=2, n_head=2, n_embd=32, bias=bias, pad_vocab_multiple=pad)
    model, hf_model, hf_tok = exported(tmp_path, capsys, config, "bytes")
    assert type(hf_model).__name__ == "GPT2LMHeadModel" and hf_model.config.vocab_size == 257
    assert hf_model.lm_head.weight.data_ptr() == hf_model.transformer.wte.weight.data_ptr()  # tied
    ids = hf_tok(TEXT)["input_ids"]
    assert ids == list(TEXT.encode()) == get_tokenizer("bytes").encode(TEXT)  # byte b is id b
    assert hf_tok("<|endoftext|>")["input_ids"] == [256] and hf_tok.eos_token_id == 256
    assert hf_tok.decode(ids) == TEXT
    assert_same_logits(model, hf_model, torch.tensor([ids[:32], ids[-32:]]))


def test_gpt2_model_exports_gpt2s_files_and_tokenizer_offline(tmp_path, capsys):
    gpt2_or_skip()  # GPT-2's BPE: its cache or the network
    model, hf_model, hf_tok = exported(tmp_path, capsys, GPT2_TINY, "gpt2")
    out = tmp_path / "hf"
    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "vocab.json", "merges.txt"} <= files
    assert "tokenizer.json" in files and not (tmp_path / ".hf.tmp").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["activation_function"] == "gelu_new" and config["vocab_size"] == 50257
    assert config["n_positions"] == 32 and config.get("tie_word_embeddings", True)
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 50256
    enc = get_tokenizer("gpt2")
    vocab = json.loads((out / "vocab.json").read_text())
    assert len(vocab) == 50257 and vocab["<|endoftext|>"] == 50256 and [vocab["ĠROM"]] == enc.encode(" ROM")
    shakespeare = Path("/work/shared/data/tinyshakespeare/input.txt")
    text = (shakespeare.read_text()[:20000] if shakespeare.is_file() else "") + TEXT
    assert hf_tok(text)["input_ids"] == enc.encode(text)
    classic = tmp_path / "classic"  # GPT-2's two classic files alone give the same ids
    classic.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(out / name, classic)
    assert transformers.GPT2Tokenizer.from_pretrained(classic)(text)["input_ids"] == enc.encode(text)
    assert hf_tok.decode(enc.encode(TEXT)) == TEXT
    assert_same_logits(model, hf_model, torch.tensor([enc.encode(TEXT)[:32]]))


def test_hf_greedy_generate_equals_minigpt_sample_at_temperature_0(tmp_path, capsys):
    gpt2_or_skip()  # GPT-2's BPE: its cache or the network
    ckpt = tmp_path / "last.ckpt"
    _, hf_model, hf_tok = exported(tmp_path, capsys, GPT2_TINY, "gpt2")
    prompt, n = "The meaning of life is", 20
    prompt_ids = hf_tok(prompt, return_tensors="pt")["input_ids"]  # (1, T)
    with torch.no_grad():
        hf_ids = hf_model.generate(prompt_ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    new = hf_ids[0, prompt_ids.size(1) :].tolist()
    model = write_checkpoint(tmp_path / "again.ckpt", GPT2_TINY, "gpt2").eval()
    assert generate(model, prompt_ids, n, temperature=0)[0, prompt_ids.size(1) :].tolist() == new
    args = ("--ckpt", str(ckpt), "--prompt", prompt, "--max-new-tokens", str(n), "--temperature", "0")
    code, out, err = run_main(capsys, *args, "--no-stop-at-eot")
    assert code == 0, err
    assert out == prompt + hf_tok.decode(new) + "\n"


def no_export_written(tmp_path: Path) -> bool:
    return not any(p.name.startswith((".hf", "hf")) for p in tmp_path.iterdir())


def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "hf"
    code, _, err = export(capsys, "--ckpt", tmp_path / "missing.ckpt", "--out", out)
    assert code == 2 and "missing.ckpt does not exist" in one_error_line(err)
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    code, _, err = export(capsys, "--ckpt", tmp_path / "notes.ckpt", "--out", out)
    assert code == 2 and "not a torch checkpoint" in one_error_line(err)
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    code, _, err = export(capsys, "--ckpt", tmp_path / "foreign.ckpt", "--out", out)
    assert code == 2 and "not a minigpt checkpoint" in one_error_line(err)
    assert no_export_written(tmp_path)
    code, _, err = export(capsys, "--ckpt", tmp_path / "missing.ckpt")
    assert code == 2 and "--out" in one_error_line(err)


def test_an_existing_out_is_replaced_only_with_force(tmp_path, capsys):
    ckpt, out = tmp_path / "last.ckpt", tmp_path / "hf"
    write_checkpoint(ckpt)
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    code, _, err = export(capsys, "--ckpt", ckpt, "--out", out)
    assert code == 2 and "pass --force" in one_error_line(err)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    code, _, err = export(capsys, "--ckpt", ckpt, "--out", out, "--force")
    assert code == 0, err
    assert not (out / "mine.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "last.ckpt"]  # no temporary folder left
    (tmp_path / "file").write_text("")
    code, _, err = export(capsys, "--ckpt", ckpt, "--out", tmp_path / "file", "--force")
    assert code == 2 and "is a file" in one_error_line(err)


def test_a_failed_write_leaves_no_directory(tmp_path, capsys, monkeypatch):
    ckpt = tmp_path / "last.ckpt"
    write_checkpoint(ckpt)

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(transformers.GPT2Tokenizer, "save_pretrained", disk_full)
    with pytest.raises(OSError, match="No space left"):  # not the user's: a traceback
        minigpt(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "hf")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_tokenizer_gpt2s_class_cannot_express_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    ckpt = tmp_path / "last.ckpt"
    write_checkpoint(ckpt, tokenizer="digits")
    digits = tiktoken.Encoding(
        name="digits",
        pat_str=r"\d{1,3}|\D+",  # not GPT-2's pattern, and with a merge: GPT2Tokenizer would cut text otherwise
        mergeable_ranks={**{bytes([i]): i for i in range(256)}, b"12": 256},
        special_tokens={"<|endoftext|>": 257},
    )
    monkeypatch.setattr("minigpt.export.get_tokenizer", lambda name: digits)
    code, _, err = export(capsys, "--ckpt", ckpt, "--out", tmp_path / "hf")
    assert code == 2 and "tokenizer 'digits' cannot be exported yet" in one_error_line(err)
    assert no_export_written(tmp_path)


def test_missing_transformers_names_the_extra(tmp_path, capsys, monkeypatch):
    ckpt = tmp_path / "last.ckpt"
    write_checkpoint(ckpt)
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    code, _, err = export(capsys, "--ckpt", ckpt, "--out", tmp_path / "hf")
    assert code == 2 and "needs the transformers package: pip install 'minigpt[hf]'" in one_error_line(err)
    assert no_export_written(tmp_path)
