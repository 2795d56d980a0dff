"""GPT-2 weights from `transformers`: conversion parity on a small random model, and the failures, offline."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from minigpt.checkpoint import gpt_from_hf, load_gpt2
from minigpt.errors import UserError
from minigpt.generate import generate

ROOT = Path(__file__).resolve().parents[1]


def small_hf_gpt2(**overrides):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        vocab_size=100, n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=99, eos_token_id=99, **overrides
    )
    torch.manual_seed(0)
    hf_model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # GPT-2's init leaves biases at 0 and LayerNorms at 1: make every number count
        for param in hf_model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return hf_model


def test_converted_gpt2_gives_identical_logits():
    hf_model = small_hf_gpt2()
    model = gpt_from_hf(hf_model)
    assert model.config.block_size == 64 and model.config.vocab_size == 100
    idx = torch.randint(0, 100, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf_model(idx).logits
        logits, _ = model(idx)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    # The cache path too: greedy tokens equal to recomputing with transformers' model.
    tokens = generate(model, idx[:1, :8], 12, temperature=0)
    with torch.no_grad():
        for t in range(8, 20):
            assert hf_model(tokens[:, :t]).logits[0, -1].argmax().item() == tokens[0, t].item()


def test_a_layout_we_do_not_have_is_refused():
    with pytest.raises(ValueError, match="activation_function"):
        gpt_from_hf(small_hf_gpt2(activation_function="relu"))


def test_unknown_gpt2_name_is_a_value_error():
    with pytest.raises(ValueError, match="gpt2-tiny.*gpt2-medium"):
        load_gpt2("gpt2-tiny")


def test_missing_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(UserError, match=r"needs the transformers package: pip install 'minigpt\[hf\]'"):
        load_gpt2("gpt2")


def test_init_from_gpt2_offline_fails_fast_in_one_line(tmp_path):
    pytest.importorskip("transformers")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}  # an empty cache
    t0 = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(ROOT / "sample.py"), "--init-from", "gpt2", "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert time.perf_counter() - t0 < 60
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: GPT-2 weights 'gpt2' are not in the HuggingFace cache")
    assert "HF_HUB_OFFLINE" in result.stderr and result.stderr.count("\n") == 1
