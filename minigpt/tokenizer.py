"""Tokenizers by name, all `tiktoken.Encoding`s: `bytes` (byte-level, offline), `gpt2`, any tiktoken name."""

import functools

import tiktoken

from minigpt.errors import UserError

EOT = "<|endoftext|>"


@functools.cache
def _bytes_encoding() -> tiktoken.Encoding:
    # One token per byte and no merges, so any text (and any byte string) round-trips; the pattern only cuts
    # the text into pieces for tiktoken and must cover every character, since tiktoken drops unmatched text.
    return tiktoken.Encoding(
        name="bytes",
        pat_str=r"[\s\S]{1,256}",
        mergeable_ranks={bytes([i]): i for i in range(256)},
        special_tokens={EOT: 256},
        explicit_n_vocab=257,
    )


def available() -> list[str]:
    """Every name `get_tokenizer` accepts (tiktoken lists `gpt2` too: keep the first of each)."""
    return list(dict.fromkeys(["bytes", "gpt2", *tiktoken.list_encoding_names()]))


def get_tokenizer(name: str) -> tiktoken.Encoding:
    """The encoding called `name`; its end-of-text id is `enc.eot_token`.

    `bytes` is built here (vocab 257, no download). `gpt2` is tiktoken's `r50k_base`, which has GPT-2's ranks,
    pattern and `<|endoftext|>` = 50256. Other names go to `tiktoken.get_encoding`, which downloads the ranks
    once into `TIKTOKEN_CACHE_DIR`.
    """
    if name == "bytes":
        return _bytes_encoding()
    if name not in available():
        raise UserError(f"unknown tokenizer {name!r}; available: {', '.join(available())}")
    try:
        return tiktoken.get_encoding("r50k_base" if name == "gpt2" else name)
    except OSError as e:  # requests' ConnectionError is an OSError, so is an unreadable cache
        raise UserError(
            f"cannot load tokenizer {name!r}: its ranks are neither in TIKTOKEN_CACHE_DIR nor downloadable "
            f"({type(e).__name__}); set TIKTOKEN_CACHE_DIR to a folder holding them, or use tokenizer 'bytes'"
        ) from None
