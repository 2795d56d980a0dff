"""minigpt as an installed tool: its wheel in a fresh virtual environment, run from a folder outside the checkout.

The fresh environment gets its dependencies (torch, lightning, ...) from this one's site-packages through a .pth
file, so nothing is downloaded; minigpt itself comes only from the wheel (this environment's editable install is not
visible there). Also: every package minigpt imports is declared in pyproject.toml.
"""

import ast
import os
import re
import shutil
import site
import subprocess
import sys
import zipfile
from importlib.metadata import packages_distributions, requires
from pathlib import Path

import pytest

from tests.test_train import TINY

REPO = Path(__file__).resolve().parent.parent
# What a checkout holds that is not the project's source (caches, environments, outputs).
NOT_SOURCE = {".git", ".venv", "build", "dist", "runs", "data", "wandb", "lightning_logs"}


def copy_source(dest: Path) -> Path:
    """The checkout's source files, so that building writes nothing into the checkout."""

    def ignore(folder: str, names: list[str]) -> set[str]:
        top = Path(folder) == REPO
        return {n for n in names if (top and n in NOT_SOURCE) or n == "__pycache__" or n.endswith(".egg-info")}

    shutil.copytree(REPO, dest, ignore=ignore)
    (dest / "data").mkdir()
    shutil.copy(REPO / "data" / "README.md", dest / "data" / "README.md")
    return dest


def run(cmd: list[str], cwd: Path, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(the wheel, the fresh environment's bin folder, an environment for running it outside the checkout)."""
    tmp = tmp_path_factory.mktemp("install")
    src = copy_source(tmp / "src")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"WANDB_MODE": "offline", "HF_DATASETS_CACHE": str(tmp / "hf")}
    # No build isolation: setuptools comes from this environment (the dev extra), not from the network.
    build = ["pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)]
    run([sys.executable, "-m", *build], cwd=tmp, env=env)
    (wheel,) = (tmp / "dist").glob("minigpt-*.whl")
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp, env=env)
    python = venv / "bin" / "python"
    fresh_site = run([str(python), "-c", "import site; print(site.getsitepackages()[0])"], cwd=tmp, env=env).stdout
    # Plain paths: this environment's packages become importable there, but its .pth files (minigpt's editable
    # install among them) are not run.
    Path(fresh_site.strip(), "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-index", "--no-deps", str(wheel)],
        cwd=tmp, env=env)  # fmt: skip
    return wheel, venv / "bin", env


def test_the_wheel_holds_the_package_its_configs_its_license_and_py_typed(installed):
    wheel, _, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {Path(p).relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.yaml")}
    assert {f"minigpt/{p}" for p in shipped} <= set(names)
    assert "minigpt/py.typed" in names and "minigpt/__main__.py" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "License-Expression: MIT" in metadata


@pytest.mark.slow
def test_installed_command_trains_samples_draws_and_prepares_outside_the_checkout(installed, tmp_path):
    _, bin_dir, env = installed
    code = (
        "import minigpt, importlib.resources as r; print(minigpt.__file__, r.files('minigpt.configs') / 'default.yaml')"
    )
    where = run([str(bin_dir / "python"), "-c", code], tmp_path, env)
    package, default = where.stdout.split()
    assert package.startswith(str(bin_dir.parent)) and Path(default).is_file()  # the wheel's, not the checkout's

    args = [a for a in TINY if a not in ("--sample_tokens", "20")]
    trained = run([str(bin_dir / "minigpt"), "train", *args, "--name", "t", "--trainer.max_steps", "3",
                   "--trainer.val_check_interval", "3", "--sample_tokens", "10"], tmp_path, env)  # fmt: skip
    assert "step 3/3" in trained.stdout and "sample (10 tokens" in trained.stdout
    ckpt = tmp_path / "runs" / "t" / "checkpoints" / "last.ckpt"
    sampled = run([str(bin_dir / "minigpt"), "sample", "--ckpt", str(ckpt), "--prompt", "def", "--max-new-tokens", "8",
                   "--seed", "0"], tmp_path, env)  # fmt: skip
    assert sampled.stdout.startswith("def") and "8 tokens in" in sampled.stderr
    # The explorer page is built from its template, style and script, read from the installed package.
    drawn = run([str(bin_dir / "minigpt"), "attention", "--ckpt", str(ckpt), "--prompt", "def f", "--out",
                 "maps/page.html"], tmp_path, env)  # fmt: skip
    page = (tmp_path / "maps" / "page.html").read_text()
    assert "wrote maps/page.html" in drawn.stderr and "<h1>attention explorer</h1>" in page

    # python -m minigpt, and a shipped config named without a path (the default one's data, prepared elsewhere).
    prepared = run([str(bin_dir / "python"), "-m", "minigpt", "prepare", "--config", "default", "--data.data_dir",
                    "elsewhere"], tmp_path, env)  # fmt: skip
    assert prepared.stdout.startswith("prepared elsewhere/python-reference/bytes: ")
    shown = run([str(bin_dir / "minigpt"), "train", "--config", "configs/shakespeare_char.yaml", "--print_config"],
                tmp_path, env)  # fmt: skip
    assert "n_embd: 384" in shown.stdout


def declared_distributions() -> set[str]:
    """The distributions minigpt's metadata requires, its extras' included (pyproject.toml, as installed)."""
    return {re.split(r"[\[<>=!~ ;(]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requires("minigpt")}


def test_every_imported_package_is_declared():
    """Each third-party module the package imports belongs to a distribution pyproject.toml names."""
    imported = set()
    for source in (REPO / "minigpt").glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"minigpt"}
    owners = packages_distributions()
    undeclared = {
        m for m in third_party if not {d.lower().replace("_", "-") for d in owners[m]} & declared_distributions()
    }
    assert third_party and not undeclared, f"imported but not declared in pyproject.toml: {sorted(undeclared)}"
