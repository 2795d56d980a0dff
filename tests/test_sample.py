"""sample.py through its main(argv), on checkpoints written here as training writes them."""

import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from minigpt import sample
from minigpt.checkpoint import find_checkpoint, load_checkpoint
from minigpt.model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]

CONFIG = GPTConfig(vocab_size=257, block_size=32, n_layer=2, n_head=2, n_embd=32)


def write_checkpoint(path: Path, config: GPTConfig = CONFIG, tokenizer: str = "bytes", seed: int = 0) -> GPT:
    """A checkpoint as training writes it: Lightning's keys, `model.`-prefixed weights and the `minigpt` entry."""
    torch.manual_seed(seed)
    model = GPT(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "epoch": 0,
        "global_step": 10,
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "minigpt": {"model_config": asdict(config), "tokenizer": tokenizer},
    }
    torch.save(ckpt, path)
    return model


def run_command(main, capsys, *argv: str) -> tuple[int, str, str]:
    """A command's main on the CPU: its exit code, stdout and stderr."""
    try:
        code = main(["--device", "cpu", *argv])
    except SystemExit as e:  # argparse's errors exit from inside main
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    return run_command(sample.main, capsys, *argv)


@pytest.fixture
def ckpt(tmp_path) -> Path:
    path = tmp_path / "runs" / "a" / "checkpoints" / "last.ckpt"
    write_checkpoint(path)
    return path


def test_newest_run_best_then_last(tmp_path):
    runs = tmp_path / "runs"
    write_checkpoint(runs / "old" / "checkpoints" / "best.ckpt")
    write_checkpoint(runs / "new" / "checkpoints" / "last.ckpt")
    os.utime(runs / "old" / "checkpoints" / "best.ckpt", (1e9, 1e9))
    assert find_checkpoint(runs) == runs / "new" / "checkpoints" / "last.ckpt"  # the newest run has no best
    write_checkpoint(runs / "new" / "checkpoints" / "best.ckpt")
    os.utime(runs / "new" / "checkpoints" / "best.ckpt", (1e9, 1e9))  # best is older than last: still preferred
    assert find_checkpoint(runs) == runs / "new" / "checkpoints" / "best.ckpt"


def test_load_checkpoint_gives_the_trained_weights(ckpt):
    model, tokenizer = load_checkpoint(ckpt)
    expected = write_checkpoint(ckpt.parent / "again.ckpt")
    assert tokenizer == "bytes" and not model.training
    for (name, value), (_, want) in zip(model.state_dict().items(), expected.state_dict().items(), strict=True):
        assert torch.equal(value, want), name
    assert model.lm_head.weight is model.transformer.wte.weight


def test_samples_the_newest_run_with_a_prompt_same_seed_same_text(tmp_path, ckpt, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ("--prompt", "To be", "--max-new-tokens", "20", "--top-p", "0.9")
    code, out, err = run_main(capsys, *args, "--seed", "3")
    assert code == 0 and out.startswith("To be") and "runs/a/checkpoints/last.ckpt" in err
    assert run_main(capsys, *args, "--seed", "3")[1] == out
    assert run_main(capsys, *args, "--seed", "4")[1] != out


def test_several_samples_in_one_batch(ckpt, capsys):
    code, out, _ = run_main(capsys, "--ckpt", str(ckpt), "--num-samples", "3", "--max-new-tokens", "8")
    samples = out.split(sample.SEPARATOR)
    assert code == 0 and len(samples) == 4 and samples[-1] == "\n"  # three samples, each followed by the line


@pytest.mark.parametrize(
    "argv, input_major",
    [
        ([], True),  # one sequence
        (["--num-samples", "4"], True),
        (["--num-samples", "2"], False),  # 2 and 3 rows run faster on nn.Linear's layout (minigpt/cpu_layout.py)
        (["--prompt-file", "{prompts}", "--each-line"], True),  # batches of 1 and 4 prompts
        (["--prompt-file", "{prompts}", "--each-line", "--num-samples", "2"], False),  # batches of 2 and 8
    ],
)
def test_weights_are_laid_out_for_the_batch_sizes_generation_runs(
    tmp_path, ckpt, capsys, monkeypatch, argv, input_major
):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("To be\nabcd\nefgh\nijkl\nmnop\n", encoding="utf-8")
    laid_out, transform = [], sample.for_cpu_decoding

    def spy(model, input_major):
        laid_out.append(input_major)
        return transform(model, input_major=input_major)

    monkeypatch.setattr(sample, "for_cpu_decoding", spy)
    argv = [arg.format(prompts=prompts) for arg in argv]
    greedy = ("--ckpt", str(ckpt), "--temperature", "0", "--max-new-tokens", "4")
    assert run_main(capsys, *greedy, *argv)[0] == 0
    assert laid_out == [input_major]  # on the CPU, once; weights input-major for these batch sizes only


def test_prompt_file_longer_than_block_size_slides_the_window(tmp_path, ckpt, capsys):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("long prompt, " * 10, encoding="utf-8")  # 130 tokens, block_size 32
    code, out, err = run_main(capsys, "--ckpt", str(ckpt), "--prompt-file", str(prompt), "--max-new-tokens", "5")
    assert code == 0 and out.startswith("long prompt, " * 10) and err.startswith("5 tokens in")


def test_each_line_generates_every_prompt_and_prints_them_in_input_order(tmp_path, ckpt, capsys):
    """Lines of several lengths, one past block_size, blank lines and CRLF endings: each line's text is what that
    prompt alone gives (greedy), in the file's order."""
    lines = ["To be", "or not", "to be,", "long prompt, " * 4, "that"]
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(("\r\n".join(lines[:2]) + "\n\n  \n" + "\n".join(lines[2:]) + "\n").encode())
    greedy = ("--ckpt", str(ckpt), "--temperature", "0", "--max-new-tokens", "6", "--no-stop-at-eot")
    code, out, err = run_main(capsys, *greedy, "--prompt-file", str(prompts), "--each-line")
    assert code == 0 and err.startswith("30 tokens in")
    texts = out.split(sample.SEPARATOR + "\n")
    assert texts[-1] == "" and len(texts) == len(lines) + 1
    for line, text in zip(lines, texts, strict=False):
        assert text == run_main(capsys, *greedy, "--prompt", line)[1].removesuffix("\n")
    code, out, _ = run_main(capsys, *greedy, "--prompt-file", str(prompts), "--each-line", "--num-samples", "2")
    assert code == 0 and out.split(sample.SEPARATOR + "\n")[:-1] == [text for text in texts[:-1] for _ in range(2)]


@pytest.mark.parametrize(
    "lines,extra,message",
    [
        (["a", "b<|endoftext|>"], [], "line 2 of {file}: the prompt contains the special token <|endoftext|>"),
        (["", " ", ""], [], "prompt file {file} is empty"),
        (None, ["--prompt", "a"], "--each-line takes one prompt per line of --prompt-file FILE"),
    ],
)
def test_each_line_bad_input_is_one_line_and_exit_code_2(tmp_path, ckpt, capsys, lines, extra, message):
    file = tmp_path / "prompts.txt"
    source = ["--prompt-file", str(file)] if lines is not None else []
    if lines is not None:
        file.write_text("\n".join(lines), encoding="utf-8")
    argv = ["--ckpt", str(ckpt), "--each-line", *source, *(a.format(tmp=tmp_path) for a in extra)]
    code, out, err = run_main(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message.format(file=file, tmp=tmp_path) in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--ckpt", "{tmp}/missing.ckpt"], "checkpoint {tmp}/missing.ckpt does not exist"),
        (["--ckpt", "{tmp}/garbage.ckpt"], "checkpoint {tmp}/garbage.ckpt is truncated or not a torch checkpoint"),
        (["--ckpt", "{tmp}/foreign.ckpt"], "checkpoint {tmp}/foreign.ckpt is not a minigpt checkpoint"),
        (["--ckpt", "{tmp}/small_vocab.ckpt", "--prompt", "é"], "token id 195, beyond the model's vocab_size=128"),
        (["--runs-dir", "{tmp}/nothing"], "no checkpoint under {tmp}/nothing/: train one with `minigpt train`"),
        (["--prompt-file", "{tmp}/empty.txt"], "prompt file {tmp}/empty.txt is empty"),
        (["--prompt", "a<|endoftext|>"], "the prompt contains the special token <|endoftext|>"),
        (["--top-p", "0"], "top_p=0.0 must be in (0, 1]"),
        (["--top-p", "1.01"], "top_p=1.01 must be in (0, 1]"),
        (["--temperature", "-0.1"], "temperature=-0.1 must be >= 0"),
        (["--top-p", "x"], "argument --top-p: invalid float value: 'x'"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, ckpt, capsys, argv, message):
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    write_checkpoint(
        tmp_path / "small_vocab.ckpt", GPTConfig(vocab_size=128, block_size=8, n_layer=1, n_head=1, n_embd=8)
    )
    (tmp_path / "empty.txt").write_text("\n", encoding="utf-8")
    argv = [a.format(tmp=tmp_path) for a in argv]
    if "--ckpt" not in argv and "--runs-dir" not in argv:
        argv += ["--ckpt", str(ckpt)]
    code, out, err = run_main(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message.format(tmp=tmp_path) in err and err.count("\n") == 1


def test_command_line_error_has_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "sample.py"), "--ckpt", str(tmp_path / "none.ckpt"), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert (
        result.stderr == f"error: checkpoint {tmp_path / 'none.ckpt'} does not exist: pass the path of a .ckpt file\n"
    )


def test_a_sample_that_ends_at_endoftext_says_so(tmp_path, capsys):
    """A young model's first token can be <|endoftext|>: the sample is empty, and stderr says why."""
    path = tmp_path / "eot.ckpt"
    write_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    weights = ckpt["state_dict"]
    direction = torch.zeros(CONFIG.n_embd)
    direction[0] = 10.0
    weights["model.transformer.ln_f.weight"].zero_()  # every position's final state is `direction`
    weights["model.transformer.ln_f.bias"].copy_(direction)
    weights["model.transformer.wte.weight"][256] = direction  # and its largest logit is <|endoftext|>'s (256)
    torch.save(ckpt, path)
    code, out, err = run_main(capsys, "--ckpt", str(path), "--prompt", "ab", "--temperature", "0")
    assert code == 0 and out == "ab\n"
    assert "stopped at <|endoftext|> after 0 tokens" in err.splitlines()
    code, out, err = run_main(capsys, "--ckpt", str(path), "--prompt", "ab", "--temperature", "0", "--num-samples", "2")
    assert code == 0 and [line for line in err.splitlines() if "stopped" in line] == [
        "sample 1: stopped at <|endoftext|> after 0 tokens",
        "sample 2: stopped at <|endoftext|> after 0 tokens",
    ]
    (tmp_path / "prompts.txt").write_text("ab\nxyz\n")
    code, out, err = run_main(capsys, "--ckpt", str(path), "--prompt-file", str(tmp_path / "prompts.txt"),
                              "--each-line", "--temperature", "0")  # fmt: skip
    assert code == 0 and sum("stopped at <|endoftext|> after 0 tokens" in line for line in err.splitlines()) == 2
    code, out, err = run_main(capsys, "--ckpt", str(path), "--prompt", "ab", "--temperature", "0", "--no-stop-at-eot")
    assert code == 0 and "stopped" not in err


def test_more_samples_than_memory_holds_is_one_line_before_the_cache_is_allocated(ckpt, capsys):
    code, out, err = run_main(capsys, "--ckpt", str(ckpt), "--num-samples", str(10**9), "--max-new-tokens", "5")
    assert code == 2 and out == ""
    assert err.startswith("error: the key/value cache of 1,000,000,000 sequences of 6 tokens needs ")
    assert "generate fewer samples at once (--num-samples" in err and len(err.splitlines()) == 1
