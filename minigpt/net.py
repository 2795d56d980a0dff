"""Network failures told apart from bugs, and downloads that give up on a stalled connection.

A download that stops because the network failed is an environment failure: running again once the network is
back fixes it, so the entry points print it as one line. Which exceptions mean that is listed once, here, as each
library we download through raises them; anything else (a bug) keeps its traceback.
"""

import hashlib
import os
import re
import sys
from collections.abc import Callable, Iterator
from operator import attrgetter
from urllib.parse import urlsplit

from minigpt.errors import UserError, one_line
from minigpt.files import atomic_write

# Seconds to wait for a connection, and then for each next piece of a response: a stalled connection fails after
# this long instead of hanging the run; a slow download that keeps sending never does.
TIMEOUT_S = 60.0
CHUNK_BYTES = 1 << 20

# What each library raises when the network fails, by module: `builtins` holds the ConnectionError that `datasets`
# raises once its retries of a stream are spent and what hf_xet raises, and the ConnectionError and TimeoutError of
# `fetch` and `download` below. HTTP errors are left out: a 404 or 401 is the user's to fix, and not by running
# again.
_NETWORK_ERRORS = {
    "builtins": ("ConnectionError", "TimeoutError"),
    "requests": ("ConnectionError", "Timeout", "exceptions.ChunkedEncodingError"),
    "httpx": ("TransportError",),
    "httpx2": ("TransportError",),  # huggingface_hub's httpx
    "aiohttp": ("ClientConnectionError", "ClientPayloadError"),  # fsspec's HTTP file system, under `datasets`
}


def network_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean the network failed, for an `except` clause.

    Only libraries already imported are asked: one that was never imported cannot have raised anything, and
    importing aiohttp alone takes a second.
    """
    return tuple(
        attrgetter(name)(sys.modules[module])
        for module, names in _NETWORK_ERRORS.items()
        if module in sys.modules
        for name in names
    )


def offline_mode(e: BaseException) -> bool:
    """Whether `e` (one of `network_errors()`) is huggingface_hub's refusal to download under HF_HUB_OFFLINE=1, a
    ConnectionError that running again does not fix."""
    errors = sys.modules.get("huggingface_hub.errors")
    return errors is not None and isinstance(e, errors.OfflineModeIsEnabled)


def describe(e: BaseException) -> str:
    """A network failure as a short phrase for a one-line message: its type and its text."""
    return f"{type(e).__name__}: {one_line(e, limit=200)}"


def fetch(url: str) -> bytes:
    """The body of `url`, whole; ConnectionError or TimeoutError when the network fails (see `_get`)."""
    chunks = []
    _get(url, chunks.append)
    return b"".join(chunks)


def download(url: str, path: str) -> None:
    """Save the body of `url` as `path`, written whole (via `<path>.tmp`) or not at all."""
    with atomic_write(path) as f:
        _get(url, f.write)


def download_name(url: str) -> str:
    """A file name for `url`'s download: a hash of the whole URL (two URLs never share one), then its last part."""
    last = re.sub(r"[^\w.-]", "_", os.path.basename(urlsplit(url).path)) or "download"
    return f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{last}"


def _get(url: str, write: Callable[[bytes], object]) -> None:
    """Stream `url`'s body to `write`, piece by piece.

    The failures come out worded by their cause: TimeoutError (nothing for TIMEOUT_S seconds), ConnectionError (no
    connection, a body cut short, a server error: all worth trying again); an HTTP 4xx answer is a UserError.
    """
    import requests

    try:
        response = requests.get(url, stream=True, timeout=TIMEOUT_S)
        with response:
            if response.status_code >= 500 or response.status_code == 429:  # the server's trouble, or too busy
                raise ConnectionError(f"{url} answered HTTP {response.status_code} {response.reason}")
            if not response.ok:
                raise UserError(f"cannot download {url}: it answered HTTP {response.status_code} {response.reason}")
            for chunk in response.iter_content(CHUNK_BYTES):
                write(chunk)
    except requests.exceptions.ChunkedEncodingError as e:  # urllib3 checks the length the server announced
        length = response.headers.get("Content-Length", "")
        of = f" of {int(length):,}" if length.isdigit() else ""
        raise ConnectionError(f"the connection to {url} broke off after {response.raw.tell():,}{of} bytes") from e
    except requests.ConnectionError as e:  # also a timeout while the body is read (requests' ConnectionError)
        if any(isinstance(cause, TimeoutError) for cause in _causes(e)):  # the socket's own timeout
            raise TimeoutError(f"{url} sent nothing for {TIMEOUT_S:g} s") from e
        reason = next((c.strerror for c in _causes(e) if isinstance(c, OSError) and c.strerror), one_line(e))
        raise ConnectionError(f"cannot reach {urlsplit(url).netloc} ({reason})") from e
    except requests.Timeout as e:  # nothing before the answer's headers
        raise TimeoutError(f"{url} sent nothing for {TIMEOUT_S:g} s") from e


def _causes(e: BaseException) -> Iterator[BaseException]:
    """e and the exceptions it was raised from or while handling, down to the socket's own."""
    while e is not None:
        yield e
        e = e.__cause__ or e.__context__
