import pytest
import tiktoken

from minigpt import net
from minigpt.tokenizer import get_tokenizer
from tests.skips import gpt2_or_skip

TEXT = "Hello, world! Ünïcödé, 漢字 and 🙂; a literal <|endoftext|> stays text.\r\n\ttabs\n"


@pytest.fixture(scope="module")
def gpt2() -> tiktoken.Encoding:
    return gpt2_or_skip()


def test_bytes_is_one_token_per_byte():
    enc = get_tokenizer("bytes")
    assert (enc.n_vocab, enc.eot_token) == (257, 256)
    assert enc.encode_ordinary(TEXT) == list(TEXT.encode())
    assert enc.decode(enc.encode_ordinary(TEXT)) == TEXT
    # Any byte string survives, even ones that are not UTF-8.
    assert enc.decode_bytes(list(range(256))) == bytes(range(256))
    assert enc.encode(TEXT + "<|endoftext|>", allowed_special="all")[-1] == 256
    assert get_tokenizer("bytes") is enc


def test_gpt2_round_trip(gpt2):
    assert (gpt2.n_vocab, gpt2.eot_token) == (50257, 50256)
    assert gpt2.encode_ordinary("Hello world") == [15496, 995]
    assert gpt2.decode(gpt2.encode_ordinary(TEXT)) == TEXT


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(ValueError, match="unknown tokenizer 'gpt5'.*bytes, gpt2, .*cl100k_base"):
        get_tokenizer("gpt5")


@pytest.mark.parametrize("name", ["gpt2", "cl100k_base"])
def test_no_cache_and_no_network_names_tiktoken_cache_dir(name, monkeypatch, tmp_path):
    def offline(url):
        raise ConnectionError(f"cannot reach {url}")

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # forget encodings loaded earlier in this process
    monkeypatch.setattr(net, "fetch", offline)
    with pytest.raises(ValueError, match="TIKTOKEN_CACHE_DIR") as info:
        get_tokenizer(name)
    assert "\n" not in str(info.value)
