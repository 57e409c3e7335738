"""The README's fenced blocks, read as the commands, snippets and outputs tests/test_readme.py checks.

What counts as what:
- ```bash / ```sh: shell commands, one per line (`\\` continues a line, `#` starts a comment, a
  trailing `&` runs it in the background); JSON in the comment lines right under a command
  (`# {"probability": 0.97, ...}`, one line or several) is that command's answer, compared in shape;
  an answer with an `"error"` key is a refusal (an HTTP error status: the command exits non-zero).
- ```python: a snippet, run as written.
- ```yaml: an experiment-file fragment.
- an unlabelled block whose first line starts with `$ `: a console excerpt, the command then lines of
  what it prints (a selection, in order), compared in shape.
- ```text, or an unlabelled block without a prompt: shown as it is (a folder layout, an answer), not run.
- `<!-- readme-test: illustrative -->` on the line right before a fence: the block is skipped (and
  counted as skipped). Use it rarely: for a block that cannot run or be parsed anywhere.

Shape: numbers, `…`, `<placeholders>`, `YYYYmmdd-HHMMSS` and `0.xxx` in an expected line match any
value; spaces match any run of spaces; the rest must be printed as written.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
ILLUSTRATIVE = "<!-- readme-test: illustrative -->"
SHELL = ("bash", "sh", "shell", "console")
FENCE = re.compile(r"^(\s*)```([\w+-]*)\s*$")
PROMPT = "$ "


@dataclass(frozen=True)
class Block:
    file: Path  # the markdown file
    line: int  # 1-based line of the opening fence
    language: str  # bash, python, yaml, console (an unlabelled block starting with `$ `), or "" (text)
    text: str  # the block's content, without the fences
    illustrative: bool  # marked with ILLUSTRATIVE: skipped

    @property
    def name(self) -> str:
        """The markdown file as the reader finds it: README.md, bench/README.md."""
        path = Path(self.file).resolve()
        return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name

    @property
    def where(self) -> str:
        return f"{self.name}:{self.line}"


@dataclass(frozen=True)
class Command:
    block: Block
    line: int  # 1-based line in the markdown file where the command starts
    text: str  # the command as a shell reads it: continuations joined, comment and trailing `&` removed
    argv: tuple[str, ...]  # shlex split of `text`
    background: bool = False  # ended with `&`
    expected_json: Any = None  # the JSON answer shown in a comment under it, or None
    expected_output: tuple[str, ...] = field(default=())  # console excerpt lines it prints

    @property
    def where(self) -> str:
        return f"{self.block.name}:{self.line}"

    @property
    def program(self) -> str:
        return self.argv[0] if self.argv else ""


def read_blocks(path: Path) -> list[Block]:
    """Every fenced block of a markdown file, with its language and illustrative mark."""
    lines = Path(path).read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        text = "\n".join(lines[index + 1 : end])
        language = opening.group(2).lower()
        if not language and text.startswith(PROMPT):
            language = "console"
        marked = index > 0 and lines[index - 1].strip() == ILLUSTRATIVE
        blocks.append(Block(Path(path), index + 1, language, text, marked))
        index = end + 1
    return blocks


def _comment(line: str) -> Optional[str]:
    """The text of a comment line, or None for another line."""
    stripped = line.strip()
    return stripped.lstrip("#").strip() if stripped.startswith("#") else None


def _json_or_none(text: str) -> Optional[Any]:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _logical_lines(block: Block) -> list[tuple[int, str]]:
    """(file line, text) per shell line, `\\` continuations joined."""
    joined, start, pending = [], None, ""
    for offset, raw in enumerate(block.text.splitlines()):
        if start is None:
            start = block.line + 1 + offset
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        joined.append((start, pending + raw))
        start, pending = None, ""
    if pending:
        joined.append((start, pending))
    return joined


def _command(block: Block, line: int, text: str, **extra) -> Optional[Command]:
    argv = shlex.split(text, comments=True)
    if not argv:
        return None
    background = argv[-1] == "&"
    if background:
        argv = argv[:-1]
    text = _strip_comment(text)
    return Command(block, line, text[:-1].rstrip() if background else text, tuple(argv), background, **extra)


def _strip_comment(text: str) -> str:
    """The line without its trailing comment (a `#` outside quotes that starts a word)."""
    quote, previous = None, " "
    for position, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and previous.isspace():
            return text[:position].rstrip()
        previous = char
    return text.rstrip()


def commands(block: Block) -> list[Command]:
    """The commands of a shell or console block, with the answers and outputs shown for them."""
    if block.language == "console":
        lines = block.text.splitlines()
        command = _command(block, block.line + 1, lines[0][len(PROMPT) :])
        if command is None:
            return []
        output = tuple(line for line in lines[1:] if line.strip())
        return [
            Command(command.block, command.line, command.text, command.argv, command.background, expected_output=output)
        ]
    if block.language not in SHELL:
        return []
    found: list[Command] = []
    answer = ""  # the JSON answer shown in comment lines under the last command, as read so far
    for line, text in _logical_lines(block):
        comment = _comment(text)
        if comment is not None and found and (answer or comment.startswith(("{", "["))):
            answer += " " + comment
            parsed = _json_or_none(answer)
            if parsed is not None:
                last = found[-1]
                found[-1] = Command(last.block, last.line, last.text, last.argv, last.background, parsed)
                answer = ""
            continue
        answer = ""
        command = _command(block, line, text)
        if command is not None:
            found.append(command)
    return found


WILDCARDS = [  # expected-line tokens that stand for any value
    (re.compile(r"…+|\.\.\.+"), r".*"),
    (re.compile(r"<[^<>\s][^<>]*>"), r"\S+"),
    (re.compile(r"YYYYmmdd-HHMMSS"), r"\d{8}-\d{6}"),
    (re.compile(r"0\.x+"), r"[\d.]+"),
    (re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?"), r"[-+]?[\d.,]+(?:e[-+]?\d+)?"),
]


def shape_pattern(expected: str) -> re.Pattern:
    """A regex that matches lines of the same shape as `expected` (see the module docstring)."""
    pieces, position = [], 0
    text = expected.strip()
    while position < len(text):
        if text[position].isspace():
            end = position
            while end < len(text) and text[end].isspace():
                end += 1
            pieces.append(r"\s+")
            position = end
            continue
        for token, replacement in WILDCARDS:
            hit = token.match(text, position)
            if hit:
                pieces.append(replacement)
                position = hit.end()
                break
        else:
            pieces.append(re.escape(text[position]))
            position += 1
    return re.compile("".join(pieces))


def missing_lines(expected: tuple[str, ...], printed: str) -> list[str]:
    """Expected lines not found, in order, among the printed lines (an empty list: the shapes agree)."""
    lines = [line.strip() for line in printed.splitlines()]
    missing, cursor = [], 0
    for want in expected:
        pattern = shape_pattern(want)
        found = next((i for i in range(cursor, len(lines)) if pattern.fullmatch(lines[i])), None)
        if found is None:
            missing.append(want)
        else:
            cursor = found + 1
    return missing


def json_shape(value: Any) -> Any:
    """The shape of a JSON value: keys and value kinds (numbers alike), not the values."""
    if isinstance(value, dict):
        return {key: json_shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_shape(value[0])] if value else []
    if isinstance(value, bool) or value is None:
        return type(value).__name__
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__
