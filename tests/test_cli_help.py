"""The command line explains itself: `ldfa --help` lists every command, every command's
`--help` shows its defaults, and docs/cli.md's synopsis names exactly the options `--help` has.
Every `ldfa` example in README.md and docs/ uses only options its command has."""

import argparse
import re
from pathlib import Path

import pytest

from ldfa.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings if s.startswith("--")} - {"--help"}


def _synopsis() -> dict[str, set[str]]:
    """docs/cli.md's synopsis block: `ldfa COMMAND ...` lines and their indented continuations."""
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    block = text.split("## Synopsis", 1)[1].split("```", 2)[1]
    entries, current = {}, None
    for line in block.splitlines():
        if line.startswith("ldfa "):
            current = line.split()[1]
            entries[current] = set()
        if current:
            entries[current] |= set(FLAG.findall(line))
    return entries


def test_top_level_help_lists_every_command_with_one_line(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    for name in _commands():
        line = next((row for row in out.splitlines() if row.strip().split(" ")[0] == name), None)
        assert line and len(line.split()) > 2, f"`ldfa --help` has no line for {name}"


@pytest.mark.parametrize("name", list(_commands()))
def test_every_default_is_shown(name, capsys):
    parser = _commands()[name]
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for action in parser._actions:
        if not action.option_strings or action.default in (None, False, argparse.SUPPRESS):
            continue
        if isinstance(action.default, bool):
            continue
        shown = ",".join(map(str, action.default)) if isinstance(action.default, (tuple, list)) \
            else str(action.default)
        assert f"default: {shown}" in help_text or "default" in (action.help or "").lower(), \
            f"ldfa {name} --help: {action.option_strings[0]} does not show its default {shown}"


def test_synopsis_matches_help():
    synopsis, commands = _synopsis(), _commands()
    assert set(synopsis) == set(commands), "docs/cli.md's synopsis and `ldfa --help` list other commands"
    for name, parser in commands.items():
        options = _options(parser)
        assert synopsis[name] == options, (
            f"ldfa {name}: only in --help: {sorted(options - synopsis[name])}; "
            f"only in docs/cli.md: {sorted(synopsis[name] - options)}")


@pytest.mark.parametrize("path", [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))],
                         ids=lambda p: p.name)
def test_examples_use_existing_options(path):
    commands = _commands()
    wrong = []
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.search(r"(?:^|\$ |`)(?:ldfa|python -m ldfa\.cli) ([a-z]+)\b(.*)", line)
        if not match or match.group(1) not in commands:
            continue
        args = match.group(2).split("#", 1)[0].split("`", 1)[0]
        wrong += [f"ldfa {match.group(1)} {flag}" for flag in FLAG.findall(args)
                  if flag not in _options(commands[match.group(1)]) | {"--help"}]
    assert not wrong, f"{path.name}: options that do not exist: {wrong}"
