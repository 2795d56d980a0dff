"""Reading the documentation's Markdown as tests/test_docs.py checks it: fenced blocks, the commands in shell
blocks, links, the anchors GitHub gives headings, and table rows."""

import re
import shlex
from dataclasses import dataclass

SHELL = {"bash", "sh", "shell", "console"}
RUNS_MARK = "# runs"  # the first line of a Python block that the tests execute
FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"`[^`\n]*`")
SEPARATORS = {"&&", "||", ";", "|"}


@dataclass(frozen=True)
class Block:
    lang: str
    line: int  # the 1-based line of the block's first code line
    code: str


def fenced_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a page, in order."""
    blocks, fence, lang, start, lines = [], None, "", 0, []
    for number, line in enumerate(text.splitlines(), 1):
        if fence is None:
            if match := FENCE.match(line):
                fence, lang, start, lines = match.group(1), match.group(2).lower(), number + 1, []
        elif line.startswith(fence):
            blocks.append(Block(lang, start, "\n".join(lines)))
            fence = None
        else:
            lines.append(line)
    return blocks


def outside_blocks(text: str) -> str:
    """The page without its fenced blocks."""
    kept, fence = [], None
    for line in text.splitlines():
        if fence is None and (match := FENCE.match(line)):
            fence = match.group(1)
        elif fence is not None and line.startswith(fence):
            fence = None
        elif fence is None:
            kept.append(line)
    return "\n".join(kept)


def prose(text: str) -> str:
    """The page without its fenced blocks and inline code: what is read as Markdown, not as code."""
    return INLINE_CODE.sub("", outside_blocks(text))


def shell_commands(code: str) -> list[list[str]]:
    """Each simple command of a shell block as its words: continuation lines joined, comments dropped, split at
    `&&`, `||`, `;` and `|`, leading VAR=value assignments dropped."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        command: list[str] = []
        for word in [*words, ";"]:
            if word not in SEPARATORS:
                command.append(word)
                continue
            while command and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", command[0]):
                command.pop(0)
            if command:
                commands.append(command)
            command = []
    return commands


def links(text: str) -> list[str]:
    """The targets of the page's links and images, outside code."""
    return LINK.findall(prose(text))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = INLINE_CODE.sub(lambda m: m.group(0)[1:-1], heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a page's headings (a repeated heading's gets -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    found = set()
    for line in outside_blocks(text).splitlines():
        if not (match := re.match(r"#{1,6} (.+)", line)):
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def table_rows(text: str) -> list[list[str]]:
    """The cells of every table row of the page (outside code), separator rows left out."""
    rows = []
    for line in outside_blocks(text).splitlines():
        if line.startswith("|") and not re.fullmatch(r"\|[-:| ]+\|", line.strip()):
            rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
    return rows
