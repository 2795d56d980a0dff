"""Tokenizers by name, all `tiktoken.Encoding`s: `bytes` (byte-level, offline), `gpt2`, any tiktoken name."""

import functools
import threading

import tiktoken
import tiktoken.load

from minigpt import net
from minigpt.errors import UserError, one_line

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
    once into `TIKTOKEN_CACHE_DIR` (here with a timeout: `_get_encoding`).
    """
    if name == "bytes":
        return _bytes_encoding()
    if name not in available():
        raise UserError(f"unknown tokenizer {name!r}; available: {', '.join(available())}")
    try:
        return _get_encoding("r50k_base" if name == "gpt2" else name)
    except _NotTheFile as e:
        raise UserError(
            f"the file downloaded from {e.url} is not the BPE ranks of tokenizer {name!r} (it fails tiktoken's hash "
            f"check and begins {e.start!r}): a captive portal's or a proxy's page? Log in to the network and run "
            "again, or set TIKTOKEN_CACHE_DIR to a folder holding the ranks, or use tokenizer 'bytes'"
        ) from None
    except TimeoutError as e:  # net.fetch's: the connection stalled
        raise UserError(
            f"downloading the BPE ranks of tokenizer {name!r} timed out ({one_line(e)}): run again, or set "
            "TIKTOKEN_CACHE_DIR to a folder holding them, or use tokenizer 'bytes'"
        ) from None
    except ConnectionError as e:  # net.fetch's: no network, a download cut short, a server error
        raise UserError(
            f"cannot download the BPE ranks of tokenizer {name!r}, no network? ({one_line(e)}): run again once "
            "online, or set TIKTOKEN_CACHE_DIR to a folder holding them, or use tokenizer 'bytes'"
        ) from None
    except OSError as e:  # the cache folder: unreadable, or not writable for the ranks just downloaded
        raise UserError(
            f"cannot load tokenizer {name!r}: its ranks' cache in TIKTOKEN_CACHE_DIR cannot be used ({one_line(e)}); "
            "set TIKTOKEN_CACHE_DIR to a folder holding them or one this user may write, or use tokenizer 'bytes'"
        ) from None


class _NotTheFile(Exception):
    """tiktoken refused a file it downloaded: not the ranks it expected (their hash, or lines that are not ranks)."""

    def __init__(self, url: str, data: bytes):
        super().__init__(url)
        self.url, self.start = url, " ".join(data[:60].decode("utf-8", "replace").split())


# tiktoken.load.read_file is swapped only for the time of one tiktoken.get_encoding call; one call at a time.
_read_file_swap = threading.Lock()


def _get_encoding(name: str) -> tiktoken.Encoding:
    """tiktoken.get_encoding(name), its downloads made by `net.fetch`.

    tiktoken 0.14 downloads with `requests.get` and no timeout, so a stalled connection would hang the run, and it
    has no setting for one: its `tiktoken.load.read_file` (which `read_file_cached` calls on a cache miss only, so
    TIKTOKEN_CACHE_DIR still works offline) is swapped for one with a timeout while the encoding loads.
    """
    downloaded: list[tuple[str, bytes]] = []

    def read_file(blobpath: str) -> bytes:
        if not blobpath.startswith(("http://", "https://")):
            return tiktoken_read_file(blobpath)
        data = net.fetch(blobpath)
        downloaded.append((blobpath, data))
        return data

    with _read_file_swap:
        tiktoken_read_file, tiktoken.load.read_file = tiktoken.load.read_file, read_file
        try:
            return tiktoken.get_encoding(name)
        except UserError:  # net.fetch's: an HTTP 4xx answer
            raise
        except ValueError:
            # tiktoken checks what it downloaded right away, so a ValueError after a download is about that file.
            if downloaded:
                raise _NotTheFile(*downloaded[-1]) from None
            raise
        finally:
            tiktoken.load.read_file = tiktoken_read_file
