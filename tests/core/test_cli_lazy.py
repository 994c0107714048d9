"""``istmo`` builds only the part of its parser a command line needs (clients/cli.py):
each command must parse and explain itself exactly as in the whole parser."""

from __future__ import annotations

import argparse

import pytest

from clients.cli import build_parser


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _shape(parser: argparse.ArgumentParser) -> list[str]:
    """A parser's help, then each of its subcommands' shapes, depth first."""
    out = [parser.format_help()]
    for name, child in sorted(_subparsers(parser).items()):
        out += [f"-- {name}", *_shape(child)]
    return out


FULL = _subparsers(build_parser())


@pytest.mark.parametrize("command", sorted(FULL))
def test_a_command_alone_parses_as_in_the_whole_parser(command: str) -> None:
    lazy = _subparsers(build_parser([command, "--help"]))
    assert command in lazy
    assert len(lazy) < len(FULL), "built the whole parser: add the command to _CLIENT_COMMANDS"
    assert _shape(lazy[command]) == _shape(FULL[command])


@pytest.mark.parametrize(
    ("argv", "whole"),
    [
        ([], True),
        (["--help"], True),
        (["-v", "publish", "--as", "gt-police"], False),
        (["no-such-command"], True),
        (["audit", "verify", "--from-url", "http://127.0.0.1:1"], False),
    ],
)
def test_which_parser_a_command_line_gets(argv: list[str], whole: bool) -> None:
    assert (len(_subparsers(build_parser(argv))) == len(FULL)) is whole
