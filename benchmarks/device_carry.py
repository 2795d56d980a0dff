"""What a GPU machine without `datasets`, `wandb` or `jsonargparse` needs for gpu_check.py, prepared on this side.

    python benchmarks/gpu_check.py --prepare      # wheels + token cache into benchmarks/device-carry/ (git-ignored)

The folder travels with the call that runs gpu_check.py there (a few MB):

- `wheels/`: `jsonargparse[signatures]` (jsonargparse, docstring_parser, typeshed_client; pure Python), at the
  versions installed here, which the tests run train.py's LightningCLI with. There, gpu_check.py installs them from
  these files alone (`pip install --no-index`) into a folder of its own; nothing comes from a network.
- `data/repeats/bytes/`: the token cache of `configs/induction.yaml` (its random strings, generated here).
- `data/tinyshakespeare/bytes/`: the token cache of `configs/shakespeare_char.yaml`, made by
  `TextDataModule.prepare_data` from the config's own data settings, so its fingerprint is the one train.py computes
  there: train.py reuses it and never imports `datasets`. The config reads Tiny Shakespeare from a URL; this side
  may be offline, so the download is served from a local copy of the same file.

`wandb` is not carried: the runs there log to CSV (`--logger csv`). `datasets` (with pyarrow, tens of MB) is not
carried either: only building a token cache needs it, and the cache travels built.
"""

import argparse
import importlib.metadata
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CARRY = REPO / "benchmarks" / "device-carry"
SHAKESPEARE_CONFIG = REPO / "configs" / "shakespeare_char.yaml"
INDUCTION_CONFIG = REPO / "configs" / "induction.yaml"
SHAKESPEARE_TEXT = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
SHAKESPEARE_CHARS = 1_115_394  # the size of the file at the config's URL
# train.py's LightningCLI needs jsonargparse[signatures]; these are it, without what the GPU machine has (PyYAML,
# typing-extensions). All pure Python.
WHEELS = ("jsonargparse", "docstring_parser", "typeshed_client")
DEVICE_PYTHON = "3.12"  # the GPU machine's python3
MANYLINUX = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]


def download_wheels(dest: Path) -> list[Path]:
    """pip-download the wheels at the versions installed here (the combination the tests run) into dest."""
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in WHEELS]
    platforms = [arg for platform in MANYLINUX for arg in ("--platform", platform)]
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):  # one version of each: two would stop the install there
        old.unlink()
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         "--python-version", DEVICE_PYTHON, "--implementation", "cp", *platforms, "--dest", str(dest), *pins],
        check=True,
    )  # fmt: skip
    return sorted(dest.glob("*.whl"))


def install_wheels(wheel_dir: Path, target: Path) -> None:
    """Install the carried wheels into target from the files alone (no index, no network)."""
    wheels = sorted(str(path) for path in wheel_dir.glob("*.whl"))
    if not wheels:
        raise FileNotFoundError(f"no wheels in {wheel_dir}: run `python benchmarks/gpu_check.py --prepare` first")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
         "--no-cache-dir", "--disable-pip-version-check", "--target", str(target), *wheels],
        check=True,
    )  # fmt: skip


def prepare_cache(text: Path, data_dir: Path) -> Path:
    """The shakespeare_char config's token cache under data_dir, built from `text` served for the config's URL."""
    import shutil

    import yaml

    from minigpt import net
    from minigpt.data import TextDataModule

    settings = yaml.safe_load(SHAKESPEARE_CONFIG.read_text())["data"]
    if "://" not in settings["path"]:
        raise ValueError(f"{SHAKESPEARE_CONFIG} reads {settings['path']}, not a URL: nothing to serve from a copy")
    data = TextDataModule(**{**settings, "data_dir": str(data_dir)})
    # The one thing stood in for: the download of that URL, the local copy put where a download is kept. Everything
    # else is prepare_data as train.py runs it, so the cache's meta.json vouches for the config's own source.
    download = Path(data.cache.download_dir) / net.download_name(settings["path"])
    download.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(text, download)
    data.prepare_data()
    return Path(data.cache_dir)


def prepare_induction_cache(data_dir: Path) -> Path:
    """The induction config's token cache under data_dir (data.source repeats: generated, nothing to download)."""
    import yaml

    from minigpt.data import TextDataModule

    settings = yaml.safe_load(INDUCTION_CONFIG.read_text())["data"]
    data = TextDataModule(**{**settings, "data_dir": str(data_dir)})
    data.prepare_data()
    return Path(data.cache_dir)


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def travelling_bytes() -> int:
    """Bytes of the working tree a device call sends: tracked and untracked files git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    paths = (REPO / name for name in listed.split("\0") if name)
    return sum(path.stat().st_size for path in paths if path.is_file())


def main() -> None:
    """`cache`: build the token cache in this process (gpu_check.py runs it as a child, which may import datasets)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["cache"])
    parser.add_argument("--text", type=Path, default=SHAKESPEARE_TEXT, help="Tiny Shakespeare's input.txt")
    parser.add_argument("--data-dir", type=Path, default=CARRY / "data")
    args = parser.parse_args()
    if not args.text.is_file():
        sys.exit(f"error: no text at {args.text}: pass --text PATH to Tiny Shakespeare's input.txt")
    print(f"token cache: {prepare_cache(args.text, args.data_dir)}")
    print(f"token cache: {prepare_induction_cache(args.data_dir)}")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
