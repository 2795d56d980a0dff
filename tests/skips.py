import pytest
import tiktoken

from minigpt.tokenizer import get_tokenizer


def gpt2_or_skip() -> tiktoken.Encoding:
    """GPT-2's BPE; the calling test is skipped, with the reason, where neither its cache nor the network has it."""
    try:
        return get_tokenizer("gpt2")
    except ValueError as e:
        pytest.skip(f"GPT-2 BPE not loadable (set TIKTOKEN_CACHE_DIR, e.g. to ../shared/tiktoken-cache): {e}")
