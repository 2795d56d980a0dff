"""W&B online or offline, decided as wandb decides: its credential lookup for the host it would talk to, its mode.

Each case runs in a fresh process (wandb reads its settings once per process) with a home folder of its own, and
with the network cut off inside that process: the decision must not try to connect anywhere.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_train import TINY

REPO = Path(__file__).resolve().parent.parent
KEY = "local-" + "0123456789abcdef" * 3  # the shape of a key for a self-hosted server
SELF_HOSTED = "https://wandb.example.internal"

DECIDE = """
import socket
attempts, connect = [], socket.socket.connect
def refuse(*args, **kwargs):
    attempts.append(args)
    raise OSError("no network in this test")
def connect_locally(sock, address):  # a Unix socket (wandb's own service) is no network
    return connect(sock, address) if sock.family == socket.AF_UNIX else refuse(address)
socket.socket.connect = connect_locally
socket.socket.connect_ex = socket.create_connection = socket.getaddrinfo = refuse
from minigpt.logger import wandb_mode
print(wandb_mode(), len(attempts))
"""


def decide(tmp_path: Path, netrc_hosts: list[str] = (), settings: str | None = None, **env: str) -> str:
    home = tmp_path / "home"
    (home / ".config" / "wandb").mkdir(parents=True)
    (home / ".netrc").write_text("".join(f"machine {host}\n  login user\n  password {KEY}\n" for host in netrc_hosts))
    (home / ".netrc").chmod(0o600)
    if settings is not None:
        (home / ".config" / "wandb" / "settings").write_text(settings)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k not in ("NETRC", "HOME")}
    done = subprocess.run(
        [sys.executable, "-c", DECIDE],
        cwd=tmp_path,
        env=clean | {"HOME": str(home), "PYTHONPATH": str(REPO)} | env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    mode, attempts = done.stdout.split()
    assert attempts == "0", f"the decision tried to connect {attempts} times"
    return mode


@pytest.mark.parametrize(
    "hosts,env,expected",
    [
        ([SELF_HOSTED.removeprefix("https://")], {"WANDB_BASE_URL": SELF_HOSTED}, "online"),
        (["api.wandb.ai"], {"WANDB_BASE_URL": SELF_HOSTED}, "offline"),  # a key for another host is no key
        ([SELF_HOSTED.removeprefix("https://")], {}, "offline"),  # not wandb's default host
        (["api.wandb.ai"], {}, "online"),
        ([], {}, "offline"),
        ([], {"WANDB_API_KEY": KEY}, "online"),
        (["api.wandb.ai"], {"WANDB_MODE": "offline"}, "offline"),
        (["api.wandb.ai"], {"WANDB_MODE": "disabled"}, "disabled"),
    ],
    ids=["self_hosted", "key_for_another_host", "self_hosted_key_default_host", "wandb_ai", "no_credentials",
         "api_key_variable", "mode_offline", "mode_disabled"],
)  # fmt: skip
def test_online_exactly_when_wandb_finds_credentials_for_its_host(tmp_path, hosts, env, expected):
    assert decide(tmp_path, hosts, **env) == expected


def test_the_host_from_wandb_login_host_settings_counts(tmp_path):
    """`wandb login --host URL` saves the host in wandb's settings file: its netrc entry is then the one used."""
    settings = f"[default]\nbase_url = {SELF_HOSTED}\n"
    assert decide(tmp_path, [SELF_HOSTED.removeprefix("https://")], settings=settings) == "online"


def test_a_malformed_key_is_one_line_naming_the_fix(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    done = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *TINY, "--logger", "wandb"],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
        | {"HOME": str(home), "WANDB_API_KEY": "short"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: W&B credentials for https://") and done.stderr.count("\n") == 1
    assert "WANDB_API_KEY invalid" in done.stderr
    assert "set WANDB_MODE=offline" in done.stderr and not (tmp_path / "runs").exists()
