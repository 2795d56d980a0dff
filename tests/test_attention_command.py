"""`minigpt attention` through its main(argv), on checkpoints written here as training writes them."""

import os

import pytest
import torch

from minigpt import checkpoint, maps
from minigpt.__main__ import main as minigpt
from minigpt.inspect import ABLATION, SCORES, head_scores
from minigpt.model import GPT, GPTConfig
from minigpt.plots import token_labels
from tests.explorer_pages import page_data
from tests.skips import gpt2_or_skip
from tests.test_attention_maps import BYTES, SUMMARIES, expected_size, png_size
from tests.test_sample import run_command, write_checkpoint


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    return run_command(maps.main, capsys, *argv)


def test_writes_one_map_per_layer_for_a_prompt_and_prints_the_head_scores(tmp_path, capsys):
    ckpt = tmp_path / "runs" / "a" / "checkpoints" / "best.ckpt"
    model = write_checkpoint(ckpt)  # 2 layers, 2 heads, block_size 32, bytes
    out = tmp_path / "maps" / "attn.png"
    prompt = "def f(x):\n    return x"
    code, stdout, err = run_main(capsys, "--ckpt", str(ckpt), "--prompt", prompt, "--out", str(out))
    assert code == 0 and err.startswith(f"wrote {tmp_path}/maps/attn-layer0.png, ")
    size = expected_size(2, token_labels(BYTES, BYTES.encode_ordinary(prompt)))
    assert [png_size(tmp_path / "maps" / f"attn-layer{layer}.png") for layer in (0, 1)] == [size, size]
    table = stdout.splitlines()
    assert table[0].split() == ["layer", "head", *SUMMARIES, *SCORES, ABLATION] and len(table) == 1 + 2 * 2
    # Beside the summaries, the prompt's head scores, then the ablation on random tokens of the prompt shown twice.
    ids = BYTES.encode_ordinary(prompt)
    scores = head_scores(model, torch.tensor(ids)) | {ABLATION: maps.prompt_ablation(model, ids)}
    for line in table[1:]:
        layer, head, *values = line.split()
        printed = [float(value) for value in values[len(SUMMARIES) :]]
        expected = [scores[name][int(layer), int(head)].item() for name in (*SCORES, ABLATION)]
        assert printed == pytest.approx(expected, abs=5e-4)


def test_the_ablation_draws_the_prompts_tokens_and_is_left_out_for_too_few(tmp_path, capsys, monkeypatch):
    ckpt = tmp_path / "runs" / "a" / "checkpoints" / "best.ckpt"
    model = write_checkpoint(ckpt)  # block_size 32: probes up to 16 tokens
    drawn = []
    monkeypatch.setattr(maps.InductionProbes, "head_ablation", lambda probes, model: drawn.append(probes) or None)
    maps.prompt_ablation(model, BYTES.encode_ordinary("abcdefgh" * 3))
    assert drawn[0].lengths == (8, 6, 4)  # the prompt's 8 distinct tokens: the longest probe holds all
    assert {int(t) for tokens in drawn[0].sequences for t in tokens.flatten()} == set(b"abcdefgh")
    out = tmp_path / "m.html"
    code, stdout, err = run_main(capsys, "--ckpt", str(ckpt), "--prompt", "abab abab", "--out", str(out))
    assert code == 0 and ABLATION not in stdout.splitlines()[0]
    assert err.startswith(f"note: no {ABLATION} column: it needs 5 distinct tokens in the prompt")


def test_maps_gpt2_with_its_bpe_tokens(tmp_path, capsys, monkeypatch):
    gpt2 = gpt2_or_skip()
    config = GPTConfig(vocab_size=50257, block_size=8, n_layer=1, n_head=4, n_embd=16)
    monkeypatch.setattr(checkpoint, "load_gpt2", lambda name: (GPT(config).eval(), "gpt2"))  # no weights offline
    prompt = "Hello, I'm a language model, and I like attention"  # 12 GPT-2 tokens, block_size 8
    code, _, err = run_main(capsys, "--init-from", "gpt2", "--prompt", prompt, "--out", str(tmp_path / "g.png"))
    assert code == 0 and "cropped from 12 to block_size=8 tokens" in err
    labels = token_labels(gpt2, gpt2.encode_ordinary(prompt)[:8])
    assert labels[:3] == ["Hello", ",", "␣I"]
    assert png_size(tmp_path / "g-layer0.png") == expected_size(4, labels)


def test_writes_the_explorer_page_for_an_html_name(tmp_path, capsys):
    ckpt = tmp_path / "m.ckpt"
    write_checkpoint(ckpt)  # 2 layers, 2 heads, block_size 32, bytes
    out = tmp_path / "maps" / "attn.html"
    code, stdout, err = run_main(capsys, "--ckpt", str(ckpt), "--prompt", "def f(x):\n    return x", "--out", str(out))
    assert code == 0 and err == f"wrote {out}\n" and not list(tmp_path.glob("maps/*.png"))
    page = page_data(out.read_text())
    assert (page["n_layer"], page["n_head"], page["T"]) == (2, 2, 22)
    assert dict(page["header"]) == {
        "model": "2 layers × 2 heads, 32 wide, block 32, vocab 257",
        "source": str(ckpt),
        "tokens": "22",
    }
    assert [s["name"] for s in page["scores"]] == [*SCORES, ABLATION, "entropy", "first_token"]
    assert len(stdout.splitlines()) == 1 + 2 * 2  # the table of head summaries, and no generated text


def test_without_ckpt_reads_the_newest_run_under_runs_dir_and_a_prompt_file(tmp_path, capsys):
    runs = tmp_path / "elsewhere"
    write_checkpoint(runs / "old" / "checkpoints" / "best.ckpt")
    write_checkpoint(runs / "new" / "checkpoints" / "last.ckpt", seed=1)
    os.utime(runs / "old" / "checkpoints" / "best.ckpt", (1e9, 1e9))
    prompt = tmp_path / "prompt.py"
    prompt.write_text("def f(x):\n    return x\n", encoding="utf-8")
    out = tmp_path / "attn.html"
    code, _, _ = run_main(capsys, "--runs-dir", str(runs), "--prompt-file", str(prompt), "--out", str(out))
    header = dict(page_data(out.read_text())["header"])
    assert (
        code == 0 and header["source"] == str(runs / "new" / "checkpoints" / "last.ckpt") and header["tokens"] == "23"
    )


def test_writes_a_gpt2_small_shaped_explorer_within_its_size(tmp_path, capsys, monkeypatch):
    gpt2 = gpt2_or_skip()
    config = GPTConfig(vocab_size=50257, block_size=96, n_layer=12, n_head=12, n_embd=12)  # GPT-2 small's heads
    monkeypatch.setattr(checkpoint, "load_gpt2", lambda name: (GPT(config).eval(), "gpt2"))  # no weights offline
    prompt = "The cat sat on the mat because it was tired. " * 8  # 89 GPT-2 tokens: the page shows 64
    out = tmp_path / "gpt2.html"
    assert run_main(capsys, "--init-from", "gpt2", "--prompt", prompt, "--out", str(out))[0] == 0
    page = page_data(out.read_text())
    assert (page["n_layer"], page["n_head"], page["T"]) == (12, 12, 64)
    assert [t["text"] for t in page["tokens"][:3]] == ["The", " cat", " sat"]
    assert dict(page["header"])["tokens"] == f"the first 64 of {len(gpt2.encode_ordinary(prompt))}"
    assert out.stat().st_size <= 1_500_000


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--prompt", "", "--out", "{tmp}/map.png"], "attention maps need a prompt of at least 2 tokens"),
        (["--prompt", "a", "--out", "{tmp}/map.png"], "attention maps need a prompt of at least 2 tokens"),
        (
            ["--prompt", "ab", "--out", "{tmp}/map.jpg"],
            "name a .png file (layer L goes to map-layer<L>.png) or an .html file (the explorer page)",
        ),
        (["--prompt", "ab", "--out", "{tmp}/a_file/map.png"], "its folder {tmp}/a_file cannot be made"),
        (["--prompt", "ab", "--out", "{tmp}/a_file/x/map.html"], "{tmp}/a_file is a file: pick another path"),
        (["--prompt", "ab", "--out", "{tmp}/page.html"], "--out {tmp}/page.html is a folder: name a file in it"),
        (["--out", "{tmp}/map.png"], "one of the arguments --prompt --prompt-file is required"),
        (["--prompt", "ab"], "the following arguments are required: --out"),
    ],
)
def test_bad_map_input_is_one_line_exit_code_2_and_nothing_written(tmp_path, capsys, argv, message):
    write_checkpoint(tmp_path / "m.ckpt")
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "page.html").mkdir()
    before = sorted(tmp_path.rglob("*"))
    argv = [a.format(tmp=tmp_path) for a in argv]
    code, out, err = run_main(capsys, "--ckpt", str(tmp_path / "m.ckpt"), *argv)
    assert code == 2 and out == "" and err.startswith("error: ") and message.format(tmp=tmp_path) in err
    assert err.count("\n") == 1 and sorted(tmp_path.rglob("*")) == before


def test_an_out_folder_it_may_not_write_in_is_one_line_and_exit_code_2(tmp_path, capsys, monkeypatch):
    write_checkpoint(tmp_path / "m.ckpt")
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as for a user without write permission there
    code, out, err = run_main(
        capsys, "--ckpt", str(tmp_path / "m.ckpt"), "--prompt", "ab", "--out", str(tmp_path / "m/a.png")
    )
    assert (
        code == 2
        and out == ""
        and err == f"error: --out {tmp_path}/m/a.png: the folder {tmp_path} is not writable: pick another path\n"
    )
    assert not (tmp_path / "m").exists()


def test_is_a_command_of_its_own_and_sample_draws_no_maps(capsys):
    with pytest.raises(SystemExit) as done:
        minigpt(["attention", "--help"])
    usage = capsys.readouterr().out
    assert (
        done.value.code == 0 and usage.startswith("usage: minigpt attention [-h]") and "--out OUT.html|OUT.png" in usage
    )
    with pytest.raises(SystemExit):
        minigpt(["sample", "--help"])
    assert "attention" not in capsys.readouterr().out
