"""The docs show what the code really does: settings tables and every command line in them."""

from __future__ import annotations

import logging
import os
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from worker.__main__ import main
from worker.cli import command_settings, flag_name
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_STOPS = frozenset({">", ">>", "|", ";", "&&", "||", "2>", "2>&1"})
SUBSTITUTION = re.compile(r"\$\([^)]*\)")
COMMAND_NAMES = frozenset(path.split()[0] for path in command_settings())


def test_every_setting_is_in_the_readme_with_its_env_and_flag() -> None:
    missing = [
        name
        for name in Settings.model_fields
        if f"`WORKER_{name.upper()}` | `{flag_name(name)}`" not in README
    ]
    assert missing == []


def test_the_readme_names_no_setting_that_does_not_exist() -> None:
    known = {f"WORKER_{name.upper()}" for name in Settings.model_fields}
    mentioned = {word.strip("`|$\"'=,.:()") for word in README.split() if "WORKER_" in word}
    mentioned = {w[w.index("WORKER_") :].split("=")[0] for w in mentioned}
    assert mentioned - known - {"WORKER_<NAME>"} == set()


class DocCommand(NamedTuple):
    where: str
    argv: list[str]
    env: dict[str, str]
    """`export WORKER_...` lines above it in the same code block."""


def shell_words(line: str) -> list[str]:
    """The words of one shell command, up to a redirection or pipe; `$(...)` as a value."""
    words = []
    for word in shlex.split(SUBSTITUTION.sub("value", line), comments=True):
        if word in SHELL_STOPS:
            break
        words.append(word)
    return words


def block_commands(where: str, lines: list[str], shell: bool) -> Iterator[DocCommand]:
    """In a ```sh block every line is a command; in other blocks only `$ ` lines are (the
    rest is output)."""
    env: dict[str, str] = {}
    joined = "\n".join(lines).replace("\\\n", " ")
    for raw in joined.splitlines():
        line = raw.strip()
        if not shell and not line.startswith("$ "):
            continue
        line = line.removeprefix("$ ")
        if line.startswith("export WORKER_"):
            name, _, value = " ".join(shell_words(line.removeprefix("export "))).partition("=")
            env[name] = value
        elif line.startswith("session-worker "):
            yield DocCommand(where, shell_words(line)[1:], dict(env))


def doc_commands() -> Iterator[DocCommand]:
    """Every `session-worker ...` line of a code block, and every inline `session-worker ...`
    that starts with a command (not a message such as `session-worker run: invalid ...`) and
    is not a synopsis (no `[optional]` parts). An inline one without options names a command
    (`session-worker replay`): its `--help` is run."""
    for path in DOCS:
        text = path.read_text()
        name = path.relative_to(ROOT)
        block: list[str] | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip().startswith("```"):
                if block is None:
                    block, start, shell = [], number, line.strip() == "```sh"
                else:
                    yield from block_commands(f"{name}:{start}", block, shell)
                    block = None
            elif block is not None:
                block.append(line)
        for match in re.finditer(r"`(session-worker [^`]+)`", text):
            argv = shell_words(match.group(1))[1:]
            synopsis = "[" in match.group(1) or "..." in match.group(1)
            if argv and argv[0] in COMMAND_NAMES and not synopsis:
                at = text.count("\n", 0, match.start()) + 1
                if not any(word.startswith("-") for word in argv):
                    argv.append("--help")
                yield DocCommand(f"{name}:{at}", argv, {})


COMMANDS = list(doc_commands())


def test_the_docs_have_command_lines_to_check() -> None:
    assert len(COMMANDS) >= 20
    assert any(c.env.get("WORKER_SECURITY_PROTOCOL") == "SASL_SSL" for c in COMMANDS)


@pytest.fixture(autouse=True)
def _clean_env_and_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("WORKER_"):
            monkeypatch.delenv(name)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize(
    "command", COMMANDS, ids=[f"{c.where} {' '.join(c.argv)}" for c in COMMANDS]
)
def test_every_command_line_in_the_docs_is_accepted(
    command: DocCommand, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Parse-only: `--check-config` validates flags and environment and connects to nothing."""
    for name, value in command.env.items():
        monkeypatch.setenv(name, value)
    argv = command.argv
    if not {"--help", "--version"} & set(argv):
        argv = [*argv, "--check-config"]
    try:
        code = main(argv)
    except SystemExit as exited:  # --help and --version exit from argparse
        code = int(exited.code or 0)
    assert code == 0, capsys.readouterr().err
