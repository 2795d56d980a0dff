"""Network failures, offline, on a local HTTP server (127.0.0.1 only): a download cut short, a stalled one, a page
that is not the file asked for, a stream that breaks mid-way, and a URL downloaded once read with no network."""

import hashlib
import http.server
import os
import threading
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import datasets
import huggingface_hub
import pytest
import tiktoken
import tiktoken.load
import tiktoken.registry
import tiktoken_ext.openai_public

from minigpt import cli, net
from minigpt.data import TextDataModule
from minigpt.data import cache as cache_module
from minigpt.data.sources import Source
from minigpt.errors import UserError
from minigpt.tokenizer import get_tokenizer

TEXT = "".join(f"Line {i}: to be, or not to be, that is the question.\n" for i in range(80))  # ~4 KB of ASCII
PAGE = b"<!DOCTYPE html>\n<html><head><title>Log in to Airport Wi-Fi</title></head><body>...</body></html>\n"
R50K_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
R50K = (
    Path(os.environ.get("TIKTOKEN_CACHE_DIR", "")) / hashlib.sha1(R50K_URL.encode()).hexdigest()
)  # as tiktoken caches
# A small run's data settings; every `minigpt prepare` below starts from these.
SMALL = ["--model.block_size", "16", "--data.batch_size", "4", "--data.val_batches", "2"]


@pytest.fixture(autouse=True)
def hub_online(monkeypatch, tmp_path):
    """Downloads allowed (to 127.0.0.1, the only server there is), whatever HF_HUB_OFFLINE says; `datasets`' caches
    in the test's own folder."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))


@pytest.fixture
def server():
    """An HTTP server on 127.0.0.1 whose answer to every GET the test sets as `server.answer`:

    `full` (`server.body`, whole), `short` (the body, announced 1,000 bytes longer, then the connection closed),
    `stall` (nothing, until the test ends), `page` (an HTML page, as a captive portal answers) or `missing` (404).
    """
    state = SimpleNamespace(answer="full", body=TEXT.encode(), requests=[])
    ended = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = 10  # a connection the client leaves open does not keep the server

        def do_GET(self):
            state.requests.append(self.path)
            if state.answer == "stall":
                ended.wait(10)
                return
            body = PAGE if state.answer in ("page", "missing") else state.body
            self.send_response(404 if state.answer == "missing" else 200)
            self.send_header("Content-Length", str(len(body) + (1000 if state.answer == "short" else 0)))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    def stop():
        """Stop answering: connections to the port are refused from now on."""
        if thread.is_alive():
            ended.set()
            httpd.shutdown()
            httpd.server_close()
            thread.join(10)

    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    state.stop = stop
    yield state
    stop()


def prepare(data_dir: Path, url: str, *args: str) -> int:
    return cli.prepare([*SMALL, "--data.source", "text", "--data.path", url, "--data.data_dir", str(data_dir), *args])


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def text_of_cache(data_dir: Path, url: str, **settings) -> str:
    """The text a prepared cache holds, its end-of-texts dropped."""
    dm = TextDataModule(source="text", path=url, data_dir=str(data_dir), block_size=16, **settings)
    tokens = [int(t) for split in ("train", "val") for t in dm.cache.tokens(split)]
    return dm.encoding.decode([t for t in tokens if t != dm.encoding.eot_token])


# ---- a URL's download --------------------------------------------------------------------------------------


def test_a_download_cut_short_is_one_line_and_the_same_command_then_prepares(tmp_path, server, capsys):
    data, url = tmp_path / "data", f"{server.url}/input.txt"
    server.answer = "short"
    assert prepare(data, url) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "download interrupted after 0 whole shards" in line
    assert f"the connection to {url} broke off after {len(TEXT):,} of {len(TEXT) + 1000:,} bytes" in line
    assert line.endswith("run the same command again to continue")
    assert [p for p in data.rglob("*") if p.is_file()] == []  # no half download, no cache

    server.answer = "full"
    assert prepare(data, url) == 0
    assert "downloaded " in capsys.readouterr().out
    assert text_of_cache(data, url) == TEXT


def test_a_download_that_stalls_times_out_in_one_line(tmp_path, server, capsys, monkeypatch):
    monkeypatch.setattr(net, "TIMEOUT_S", 0.3)
    server.answer = "stall"
    assert prepare(tmp_path / "data", f"{server.url}/input.txt") == 2
    line = one_error_line(capsys.readouterr().err)
    assert (
        f"download interrupted after 0 whole shards (TimeoutError: {server.url}/input.txt sent nothing for 0.3 s)"
        in line
    )


@pytest.mark.parametrize(
    "args,settings",
    [(["--data.tokenizer", "gpt2"], {"tokenizer": "gpt2"}), (["--data.val_fraction", "0.2"], {"val_fraction": 0.2})],
    ids=["another tokenizer", "another split"],
)
def test_a_url_downloaded_once_is_prepared_again_with_no_network(tmp_path, server, capsys, args, settings):
    if "tokenizer" in settings:
        try:
            get_tokenizer("gpt2")
        except UserError as e:
            pytest.skip(f"GPT-2 BPE not loadable (set TIKTOKEN_CACHE_DIR, e.g. to ../shared/tiktoken-cache): {e}")
    data, url = tmp_path / "data", f"{server.url}/input.txt"
    assert prepare(data, url) == 0
    server.stop()  # any request from now on is refused
    assert prepare(data, url, *args) == 0, capsys.readouterr().err
    assert server.requests == ["/input.txt"]
    assert text_of_cache(data, url, **settings) == TEXT
    (download,) = data.glob("*/downloads/*")  # one download, read by both caches
    assert download.read_text() == TEXT


def test_a_url_not_yet_downloaded_with_hf_hub_offline_names_what_to_do(tmp_path, server, capsys, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert prepare(tmp_path / "data", f"{server.url}/input.txt") == 2
    line = one_error_line(capsys.readouterr().err)
    assert "HF_HUB_OFFLINE is set" in line and "run once online" in line
    assert server.requests == []


def test_an_http_client_error_is_the_users_to_fix_and_no_answer_is_a_network_failure(server):
    server.answer = "missing"
    with pytest.raises(UserError, match=r"cannot download http://127\.0\.0\.1:\d+/x: it answered HTTP 404 Not Found"):
        net.fetch(f"{server.url}/x")
    server.stop()
    with pytest.raises(ConnectionError, match=r"cannot reach 127\.0\.0\.1:\d+ \(Connection refused\)") as info:
        net.fetch(f"{server.url}/x")
    assert isinstance(info.value, net.network_errors())


# ---- a stream that breaks mid-way ------------------------------------------------------------------------------


def stream_failures() -> list[Exception]:
    """What each library raises when the network fails mid-stream."""
    import aiohttp
    from huggingface_hub.utils import httpx  # the httpx huggingface_hub uses (httpx2 in its 2.x)

    return [
        ConnectionError("Server Disconnected"),  # `datasets`, once its retries are spent
        TimeoutError("timed out"),  # hf_xet
        httpx.RemoteProtocolError("peer closed connection without sending complete message body"),
        aiohttp.ClientPayloadError("Response payload is not completed"),  # fsspec's HTTP files
    ]


def rows(fail_at: int | None, error: Exception | None):
    for i in range(24):
        if i == fail_at:
            raise error
        yield {"text": f"{i}: {TEXT[: 40 + 37 * i]}"}


@pytest.fixture
def stream(monkeypatch):
    """A hub stream of 24 documents, in shards of one batch of 3, that raises `stream.error` at row `stream.fail_at`."""
    state = SimpleNamespace(fail_at=None, error=None)
    monkeypatch.setattr(cache_module, "SHARD_BATCHES", 1)
    monkeypatch.setattr(cache_module, "DOC_BATCH_ROWS", 3)

    def read(source: Source, revision: str | None = None) -> datasets.IterableDataset:
        return datasets.IterableDataset.from_generator(rows, gen_kwargs=vars(state).copy())

    monkeypatch.setattr(Source, "read", read)
    return state


def stream_module(data_dir: Path) -> TextDataModule:
    return TextDataModule(
        source="hub", path="minigpt-tests/stream", streaming=True, num_proc=1, data_dir=str(data_dir), block_size=16
    )


def shard_files(dm: TextDataModule) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in Path(dm.cache_dir).rglob("*.bin")}


@pytest.mark.parametrize("error", stream_failures(), ids=lambda e: type(e).__name__)
def test_a_stream_broken_mid_way_keeps_its_whole_shards_and_the_same_command_continues(tmp_path, stream, error):
    whole = stream_module(tmp_path / "whole")
    whole.prepare_data()
    stream.fail_at, stream.error = 10, error  # in the 4th batch: the 3rd, read but its shard still open, is lost
    dm = stream_module(tmp_path / "broken")
    with pytest.raises(UserError) as info:
        dm.prepare_data()
    assert str(info.value) == (
        f"download interrupted after 2 whole shards ({type(error).__name__}: {error}): "
        "run the same command again to continue"
    )
    kept = shard_files(dm)
    assert sorted(kept) == ["train-00000.bin", "train-00001.bin", "val-00000.bin", "val-00001.bin"]

    stream.fail_at = None
    dm.prepare_data()
    shards = shard_files(dm)
    assert {name: shards[name] for name in kept} == kept  # continued after them: not written again
    assert len(shards) == 16
    for split in ("train", "val"):
        assert (dm.cache.tokens(split) == whole.cache.tokens(split)).all()


def test_a_stream_refused_by_hf_hub_offline_says_what_to_do_offline(tmp_path, stream):
    stream.fail_at, stream.error = 10, huggingface_hub.errors.OfflineModeIsEnabled("HF_HUB_OFFLINE=1 is set")
    with pytest.raises(UserError, match="run once online to cache it") as info:
        stream_module(tmp_path / "data").prepare_data()
    assert "run the same command again" not in str(info.value)


def test_a_bug_mid_stream_keeps_its_traceback(tmp_path, stream):
    stream.fail_at, stream.error = 10, RuntimeError("a bug")
    with pytest.raises(RuntimeError, match="a bug"):
        stream_module(tmp_path / "data").prepare_data()


# ---- tiktoken's BPE -----------------------------------------------------------------------------------------


@pytest.fixture
def bpe_from_server(server, monkeypatch, tmp_path):
    """tiktoken loads GPT-2's ranks (r50k_base) its own way, hash check included, from the server: the URL's path
    kept, its host ours. TIKTOKEN_CACHE_DIR is an empty folder and no encoding loaded earlier is reused."""
    load = tiktoken_ext.openai_public.load_tiktoken_bpe

    def from_server(blobpath: str, expected_hash: str | None = None) -> dict[bytes, int]:
        return load(server.url + urlsplit(blobpath).path, expected_hash)

    monkeypatch.setattr(tiktoken_ext.openai_public, "load_tiktoken_bpe", from_server)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    return server


def test_a_page_instead_of_the_bpe_is_one_line_naming_the_file(bpe_from_server, tmp_path, capsys):
    bpe_from_server.answer = "page"
    read_file = tiktoken.load.read_file
    assert cli.prepare([*SMALL, "--data.tokenizer", "gpt2", "--data.data_dir", str(tmp_path / "data")]) == 2
    line = one_error_line(capsys.readouterr().err)
    url = f"{bpe_from_server.url}/encodings/r50k_base.tiktoken"
    assert f"the file downloaded from {url} is not the BPE ranks of tokenizer 'gpt2'" in line
    assert "it fails tiktoken's hash check and begins '<!DOCTYPE html> <html><head><title>Log in" in line
    assert "captive portal" in line and "TIKTOKEN_CACHE_DIR" in line
    assert tiktoken.load.read_file is read_file  # tiktoken's own, once the loading ended
    assert not (tmp_path / "tiktoken").exists()  # the page was not cached as the ranks


def test_a_stalled_bpe_download_times_out_in_one_line(bpe_from_server, monkeypatch):
    monkeypatch.setattr(net, "TIMEOUT_S", 0.3)
    bpe_from_server.answer = "stall"
    with pytest.raises(UserError, match="downloading the BPE ranks of tokenizer 'gpt2' timed out") as info:
        get_tokenizer("gpt2")
    assert "r50k_base.tiktoken sent nothing for 0.3 s" in str(info.value) and "\n" not in str(info.value)


def test_no_network_for_the_bpe_is_one_line(bpe_from_server):
    bpe_from_server.stop()
    with pytest.raises(UserError, match=r"\(cannot reach 127\.0\.0\.1:\d+ \(Connection") as info:
        get_tokenizer("gpt2")
    assert "cannot download the BPE ranks of tokenizer 'gpt2', no network?" in str(info.value)


def test_the_bpe_downloaded_once_loads_with_no_network(bpe_from_server, tmp_path):
    if not R50K.is_file():
        pytest.skip(f"GPT-2 BPE not in TIKTOKEN_CACHE_DIR (set it, e.g. to ../shared/tiktoken-cache): no {R50K}")
    bpe_from_server.body = R50K.read_bytes()
    assert get_tokenizer("gpt2").encode_ordinary("Hello world") == [15496, 995]
    url = f"{bpe_from_server.url}/encodings/r50k_base.tiktoken"
    assert (tmp_path / "tiktoken" / hashlib.sha1(url.encode()).hexdigest()).is_file()  # in TIKTOKEN_CACHE_DIR

    bpe_from_server.stop()
    tiktoken.registry.ENCODINGS.clear()  # loaded again, from the cache
    assert get_tokenizer("gpt2").encode_ordinary("Hello world") == [15496, 995]
    assert bpe_from_server.requests == ["/encodings/r50k_base.tiktoken"]
