"""The documentation against the code: README.md and docs/*.md.

Each `minigpt ...`, `python train.py ...`, `python sample.py ...` (and `torchrun ... train.py ...`) line of a fenced
shell block parses against the real command line: through `--print_config` for the Lightning commands, through the
command's own argparse parser (stopped once it has parsed) for the others, so nothing trains. The `sample` and
`attention` commands that need no network, GPU or compiler then run, on a tiny checkpoint. A repository path a
command names exists; every link between the pages and to the repository's files resolves, anchors included; every
Python block whose first line is `# runs` is executed; the figures that a page quotes and the code can check (the
headline results against benchmarks/RESULTS.md, the configs' shapes, the default model's size) are checked. The last
tests prove that each kind of mistake is caught, on pages written to a temporary folder.
"""

import argparse
import contextlib
import functools
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from minigpt.__main__ import main as minigpt
from minigpt.model import GPT, GPTConfig
from tests.markdown import RUNS_MARK, SHELL, anchors, fenced_blocks, links, shell_commands, table_rows
from tests.test_sample import CONFIG, write_checkpoint

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PYTHONS = {"python", "python3"}
# Options that need the network, a GPU or a compiler: such commands are parsed, not run.
NOT_RUN = {"--init-from", "--device", "--compile"}
RUN_HERE = {"sample", "attention"}  # cheap on a tiny checkpoint
REPO_FOLDERS = ("benchmarks/", "configs/", "docs/", "minigpt/", "scripts/", "tests/")


class Parsed(BaseException):
    """Raised by an argparse parser once it has parsed the arguments: the command stops before it runs."""


def minigpt_argv(words: list[str]) -> list[str] | None:
    """The `minigpt` arguments a documented command stands for, or None when it is no minigpt command."""
    if words[0] == "minigpt":
        return words[1:]
    if words[0] in PYTHONS and words[1:3] == ["-m", "minigpt"]:
        return words[3:]
    script = next((i for i, word in enumerate(words) if word in ("train.py", "sample.py")), None)
    if script is not None and (words[0] in PYTHONS or words[0] == "torchrun"):
        return [words[script].removesuffix(".py"), *words[script + 1 :]]
    return None


def page_commands(page: Path) -> list[tuple[str, list[str]]]:
    """(where, words) of each command in the page's shell blocks."""
    return [
        (f"{page.relative_to(REPO) if page.is_relative_to(REPO) else page.name}:{block.line}", words)
        for block in fenced_blocks(page.read_text())
        if block.lang in SHELL
        for words in shell_commands(block.code)
    ]


def call(argv: list[str]) -> tuple[int | str, str]:
    """minigpt(argv) in this process: (its exit code, or 'parsed' when an argparse parser finished; its output)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code: int | str = minigpt(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 2
        except Parsed:
            code = "parsed"
    return code, out.getvalue()


@functools.cache
def command_help(command: str) -> tuple[int | str, str]:
    """`minigpt COMMAND --help`: its exit code and output (an unknown command fails here)."""
    return call([command, "--help"])


def parse_problem(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> str | None:
    """Why `minigpt *argv` does not parse (None when it does), without running the command. A command whose help
    offers --print_config (Lightning's CLI) is parsed by it; the others by their argparse parser, stopped there."""
    command = argv[0] if argv else ""
    if not command or command.startswith("-"):
        code, out = call(argv)
        return None if code == 0 else f"minigpt {' '.join(argv)} exited with {code}: {out[-500:]}"
    code, out = command_help(command)
    if code != 0:
        return f"minigpt {command}: {out.strip()[-500:]}"
    lightning = "--print_config" in out
    if "--help" in argv or "--print_config" in argv:
        code, out = call(argv)
    elif lightning:
        code, out = call([*argv, "--print_config"])
    else:
        original = argparse.ArgumentParser.parse_args

        def parse_then_stop(parser, args=None, namespace=None):
            original(parser, args, namespace)
            raise Parsed

        with monkeypatch.context() as patch:
            patch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
            code, out = call(argv)
        if code != "parsed":
            return f"minigpt {' '.join(argv)} did not reach its parser: exit {code}: {out[-500:]}"
        return None
    return None if code == 0 else f"minigpt {' '.join(argv)} does not parse (exit {code}): {out.strip()[-500:]}"


def missing_repo_paths(words: list[str]) -> list[str]:
    """The repository paths a command names (benchmarks/x.py, configs/y.yaml, ...) that do not exist."""
    named = [word for word in words if word.startswith(REPO_FOLDERS) and "*" not in word]
    scripts = [w for w in words[1:2] if words[0] in PYTHONS and w.endswith(".py") and "/" in w]
    return [path for path in dict.fromkeys(named + scripts) if not (REPO / path).exists()]


def link_problems(page: Path) -> list[str]:
    """The page's links that lead nowhere: a missing file, or an anchor the target page has no heading for."""
    problems = []
    for target in links(page.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            problems.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            problems.append(f"{target}: {file.name} has no heading with the anchor #{anchor}")
    return problems


def figure_problems(page: Path) -> list[str]:
    """Figures of table rows that link into a section of a page (benchmarks/RESULTS.md) but are not in it."""
    problems = []
    for cells in table_rows(page.read_text()):
        row = " | ".join(cells)
        for target in re.findall(r"\]\(([^)#\s]+\.md)#([^)\s]+)\)", row):
            source = (page.parent / target[0]).resolve()
            section = section_text(source.read_text(), target[1]) if source.exists() else None
            if section is None:
                continue  # the link's own problem
            for figure in re.findall(r"\d+(?:\.\d+)?(?:x|%)", " | ".join(cells[:-1])):
                if figure not in section:
                    problems.append(f"{figure} is not in {target[0]}#{target[1]}: {row}")
    return problems


def section_text(text: str, anchor: str) -> str | None:
    """The text under the heading whose anchor this is, up to the next heading of its level or above."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if (match := re.match(r"(#{1,6}) (.+)", line)) and anchor in anchors(line):
            level = len(match.group(1))
            end = next(
                (j for j in range(i + 1, len(lines)) if re.match(rf"#{{1,{level}}} ", lines[j])),
                len(lines),
            )
            return "\n".join(lines[i:end])
    return None


def config_shape_problems(page: Path) -> list[str]:
    """Rows naming a shipped config whose 'L layers x W' or 'L x W' is not that config's n_layer x n_embd."""
    problems = []
    for cells in table_rows(page.read_text()):
        if not cells or not (name := re.fullmatch(r"`(?:configs/)?([\w-]+)(?:\.yaml)?`", cells[0])):
            continue
        config = REPO / "configs" / f"{name.group(1)}.yaml"
        shape = re.search(r"\b(\d+)(?: layers)? x (\d+)\b", " | ".join(cells[1:]))
        if not config.is_file() or not shape:
            continue
        model = yaml.safe_load(config.read_text())["model"]
        if (int(shape.group(1)), int(shape.group(2))) != (model["n_layer"], model["n_embd"]):
            problems.append(f"{cells[0]}: {shape.group(0)}, but the config has {model['n_layer']} x {model['n_embd']}")
    return problems


def python_blocks(page: Path) -> list[tuple[str, str]]:
    """(where, code) of the page's Python blocks marked to run."""
    return [
        (f"{page.name}:{block.line}", block.code)
        for block in fenced_blocks(page.read_text())
        if block.lang == "python" and block.code.startswith(RUNS_MARK)
    ]


def run_python_block(where: str, code: str) -> None:
    exec(compile(code, where, "exec"), {"__name__": "__docs__"})


COMMANDS = [(where, argv) for page in PAGES for where, words in page_commands(page) if (argv := minigpt_argv(words))]
ALL_WORDS = [(where, words) for page in PAGES for where, words in page_commands(page)]
BLOCKS = [block for page in PAGES for block in python_blocks(page)]


def ids(items) -> list[str]:
    return [f"{where} {' '.join(argv)[:60]}" if isinstance(argv, list) else where for where, argv in items]


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=ids(COMMANDS))
def test_documented_command_parses(where, argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever a command would write lands here; shipped configs resolve anywhere
    problem = parse_problem(argv, monkeypatch)
    assert problem is None, f"{where}: {problem}"


RUN_CHECKPOINT = re.compile(r"runs/([^/]+)/checkpoints/")


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory) -> Path:
    """A folder with the checkpoints of every run the pages' commands name (runs/demo and any other
    runs/NAME/checkpoints/...), each a tiny byte-level model."""
    folder = tmp_path_factory.mktemp("docs")
    runs = {"demo"} | {m[1] for _, argv in COMMANDS for word in argv if (m := RUN_CHECKPOINT.match(word))}
    for run in runs:
        for name in ("best.ckpt", "last.ckpt"):
            write_checkpoint(folder / "runs" / run / "checkpoints" / name, CONFIG)
    return folder


RUNNABLE = [(w, a) for w, a in COMMANDS if a and a[0] in RUN_HERE and not NOT_RUN & {x.split("=")[0] for x in a}]


@pytest.mark.slow
@pytest.mark.parametrize(("where", "argv"), RUNNABLE, ids=ids(RUNNABLE))
def test_offline_command_runs_on_a_tiny_checkpoint(where, argv, demo_folder, monkeypatch):
    monkeypatch.chdir(demo_folder)
    for i, word in enumerate(argv[:-1]):
        if word == "--prompt-file":
            Path(argv[i + 1]).write_text("def f(x):\n    return x\n")
    code, out = call([*argv, "--device", "cpu"] if argv[0] == "sample" else argv)
    assert code == 0, f"{where}: minigpt {' '.join(argv)} exited with {code}:\n{out[-2000:]}"


@pytest.mark.parametrize(("where", "words"), ALL_WORDS, ids=ids(ALL_WORDS))
def test_repository_paths_in_commands_exist(where, words):
    assert not missing_repo_paths(words), f"{where}: {missing_repo_paths(words)}"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_links_resolve(page):
    assert not link_problems(page), f"{page.name}: {link_problems(page)}"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_quoted_figures_match_their_source(page):
    problems = figure_problems(page) + config_shape_problems(page)
    assert not problems, f"{page.name}: {problems}"


@pytest.mark.parametrize(("where", "code"), BLOCKS, ids=ids(BLOCKS))
def test_python_block_runs(where, code):
    run_python_block(where, code)


def test_every_page_is_reachable_from_the_readme():
    reached = {(REPO / target.split("#")[0]).resolve() for target in links((REPO / "README.md").read_text())}
    orphans = [page.name for page in PAGES[1:] if page.resolve() not in reached]
    assert not orphans, f"docs pages the README does not link: {orphans}"


def test_the_default_model_size_is_the_readme_s():
    model = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())["model"]
    shape = {k: model[k] for k in ("block_size", "n_layer", "n_head", "n_embd")}
    params = sum(p.numel() for p in GPT(GPTConfig(vocab_size=257, **shape)).parameters())
    assert f"{params / 1e6:.1f}M-parameter" in (REPO / "README.md").read_text()


def test_every_module_has_a_row_in_the_design_page():
    page = (REPO / "docs" / "design.md").read_text()
    modules = [p.relative_to(REPO).as_posix() for p in sorted((REPO / "minigpt").rglob("*.py"))]
    assert not [m for m in modules if f"`{m}`" not in page], "modules without a row in docs/design.md"


def test_the_readme_keeps_a_quickstart_of_two_shell_blocks():
    """scripts/fresh_clone_check.sh runs them literally."""
    readme = (REPO / "README.md").read_text()
    quickstart = readme.split("\n## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    assert [b.lang for b in fenced_blocks(quickstart)].count("bash") == 2


def test_the_readme_s_table_commands_are_tested_through_its_shell_blocks():
    """The job table's commands (inline code, not parsed) are the ones its shell block holds (parsed above)."""
    readme = (REPO / "README.md").read_text()
    in_table = {
        tuple(shlex.split(cell.strip("`")))
        for row in table_rows(readme)
        for cell in row
        if cell.startswith("`minigpt ")
    }
    in_blocks = {tuple(words) for _, words in page_commands(REPO / "README.md")}
    assert in_table and in_table <= in_blocks, f"README table commands not in its shell blocks: {in_table - in_blocks}"


# --- each kind of mistake is caught -------------------------------------------------------------------------------


def write_page(folder: Path, text: str) -> Path:
    page = folder / "page.md"
    page.write_text(text)
    return page


@pytest.mark.parametrize(
    "line",
    [
        "minigpt train --model.no_such_option 1",
        "python train.py --model.n_layer four",
        "minigpt sample --num-samples many",
        "minigpt attention --no-such-flag",
        "minigpt fit",
    ],
)
def test_a_wrong_option_or_command_is_caught(line, tmp_path, monkeypatch):
    page = write_page(tmp_path, f"```bash\n{line}   # a comment\n```\n")
    ((_, words),) = page_commands(page)
    monkeypatch.chdir(tmp_path)
    assert parse_problem(minigpt_argv(words), monkeypatch) is not None


def test_a_right_command_parses_and_does_not_run(tmp_path, monkeypatch):
    page = write_page(tmp_path, "```bash\nWANDB_MODE=offline python train.py --model.n_layer 2 \\\n  --name x\n```\n")
    ((_, words),) = page_commands(page)
    monkeypatch.chdir(tmp_path)
    assert parse_problem(minigpt_argv(words), monkeypatch) is None
    assert parse_problem(["sample", "--prompt", "x", "--top-k", "5"], monkeypatch) is None
    assert list(tmp_path.iterdir()) == [page]  # nothing trained, nothing written


def test_a_broken_link_or_anchor_is_caught(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## A section\n")
    page = write_page(tmp_path, "[ok](other.md#a-section) [gone](missing.md) [bad](other.md#no-such) [self](#x)\n")
    problems = link_problems(page)
    assert len(problems) == 3 and "missing.md" in problems[0] and "#no-such" in problems[1] and "#x" in problems[2]


def test_a_stale_figure_is_caught(tmp_path):
    (tmp_path / "RESULTS.md").write_text("# Results\n\n## 4. Speed\n\n| a | 2.47x |\n\n## 5. Other\n\n3.00x\n")
    page = write_page(
        tmp_path,
        "| what | result | where |\n|---|---|---|\n"
        "| fresh | 2.47x | [s](RESULTS.md#4-speed) |\n| stale | 3.00x | [s](RESULTS.md#4-speed) |\n"
        "| `configs/default.yaml` | 4 layers x 256 wide | |\n",
    )
    assert figure_problems(page) == ["3.00x is not in RESULTS.md#4-speed: stale | 3.00x | [s](RESULTS.md#4-speed)"]
    assert config_shape_problems(page) == ["`configs/default.yaml`: 4 layers x 256, but the config has 4 x 128"]


def test_a_failing_python_block_is_caught_and_an_unmarked_one_is_not_run(tmp_path):
    page = write_page(tmp_path, "```python\n# runs\nassert 1 + 1 == 3\n```\n\n```python\nraise SystemError\n```\n")
    ((where, code),) = python_blocks(page)
    with pytest.raises(AssertionError):
        run_python_block(where, code)


def test_a_missing_repository_path_is_caught():
    assert missing_repo_paths(["python", "scripts/no_such.py"]) == ["scripts/no_such.py"]
    assert missing_repo_paths(["python", "benchmarks/run_all.py", "--quick"]) == []


def test_commands_are_read_as_a_shell_reads_them():
    code = 'a=1 minigpt sample --prompt "two words" && python3 -m minigpt train --help | head  # note\n'
    code += "torchrun --nnodes 2 \\\n    train.py --config gpt2_124m\n"
    commands = shell_commands(code)
    assert [minigpt_argv(w) for w in commands] == [
        ["sample", "--prompt", "two words"],
        ["train", "--help"],
        None,
        ["train", "--config", "gpt2_124m"],
    ]


# --- the pictures ---------------------------------------------------------------------------------------------------


def test_loss_curves_are_drawn_from_a_run_s_metrics(tmp_path):
    script = str(REPO / "scripts" / "loss_curves.py")
    (tmp_path / "metrics.csv").write_text(
        "epoch,step,train/loss,val/induction_loss,val/loss\n0,24,3.4,,\n0,49,2.6,,\n0,49,,5.1,2.7\n0,74,2.4,,\n"
    )
    out = tmp_path / "curves.png"
    done = subprocess.run(
        [sys.executable, script, "--run", str(tmp_path), "--out", str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0 and out.read_bytes().startswith(b"\x89PNG"), done.stderr
    missing = subprocess.run([sys.executable, script, "--run", str(tmp_path / "none")], capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "--logger csv" in missing.stderr
