"""The ``istmo`` command line: its parser and its one way of reporting an error.

Agency commands come from ``clients`` (``bulletin_commands``: publish, preview, receive,
receipts, status; ``recall_commands``; ``conversation_commands``: reply, rfi;
``forward_commands``; ``key_commands``; ``inbox_commands``; ``taxii_commands``; ``enroll``;
``console_login``; ``audit_verify``).
Commands that run the broker (``up``, ``relay``, ``admin``, ...) come from the
``istmo[server]`` extra through the ``istmo.commands`` entry point group, so the client
never imports the broker.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Any, NoReturn

from schemas.errors import IstmoError

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """Says what was wrong in one line and where the usage is, instead of printing the
    whole usage (14 lines for ``istmo publish``) above the line that matters."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n  hint: `{self.prog} --help` shows every option\n")


# Where each of the client's commands is defined: (module, function, the commands it
# adds). A command line names one command, so ``istmo`` imports that module alone (an
# SDK command skips the desk, TAXII and audit code; a broker command skips the SDK):
# about 0.2-0.6 s of CPU less per run. The broker's commands come from the
# ``istmo.commands`` entry points, and ``audit`` is both the broker's and, for
# ``--from-url``, the client's. tests/core/test_cli_lazy.py checks that each command
# parses the same as in the whole parser (a command missing here still works: an
# unknown name builds the whole parser).
_CLIENT_COMMANDS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "clients.bulletin_commands",
        "add_bulletin_parsers",
        ("publish", "receive", "receipts", "status", "preview", "withheld"),
    ),
    ("clients.recall_commands", "add_recall_parser", ("recall",)),
    ("clients.group_commands", "add_groups_parser", ("groups",)),
    ("clients.inbox_commands", "add_inbox_parser", ("inbox",)),
    ("clients.taxii_commands", "add_taxii_parser", ("taxii",)),
    ("clients.desk_commands", "add_desk_parser", ("desk",)),
    ("clients.conversation_commands", "add_conversation_parsers", ("reply", "rfi", "acknowledge")),
    ("clients.forward_commands", "add_forward_parser", ("forward",)),
    ("clients.key_commands", "add_keys_parser", ("keys",)),
    ("clients.enroll", "add_enroll_parser", ("enroll",)),
    ("clients.partner_commands", "add_partner_parser", ("partner",)),
    ("clients.console_login", "add_console_parser", ("console",)),
)
_REMOTE_AUDIT = ("clients.audit_verify", "add_remote_audit_parsers")


def _add(sub: Any, module: str, function: str) -> None:
    getattr(importlib.import_module(module), function)(sub)


def _command_of(argv: Sequence[str]) -> str | None:
    """The command a command line names: its first word that is not an option (the
    only option before it, ``-v``, takes no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of ``istmo``: with ``argv``, only as much of it as ``argv``'s command
    needs (the whole parser when it names none, or one not known here)."""
    parser = _Parser(
        prog="istmo",
        description=(
            "Istmo: signed, end-to-end encrypted bulletins between the ministries of Central "
            "America and the Caribbean. Start a local stack with `istmo up`, then publish and "
            "receive as its demo agencies."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    command = None if argv is None else _command_of(argv)
    if command is not None:
        for module, function, commands in _CLIENT_COMMANDS:
            if command in commands:
                _add(sub, module, function)
                return parser
        for ep in entry_points(group="istmo.commands"):
            ep.load()(sub)
        if command in sub.choices:
            if command == "audit":
                _add(sub, *_REMOTE_AUDIT)
            return parser
        return build_parser()  # an unknown command: the whole list, to say what exists
    for module, function, _commands in _CLIENT_COMMANDS:
        _add(sub, module, function)
    for ep in entry_points(group="istmo.commands"):
        ep.load()(sub)
    _add(sub, *_REMOTE_AUDIT)  # after the broker's: `istmo audit ... --from-url`
    return parser


class _NotTlsEofNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received() has no effect when using ssl" not in record.getMessage()


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    # asyncio warns on every TLS connection nats-py closes (nats-io/nats.py#727); it
    # means nothing to a user and would bury the lines that do.
    logging.getLogger("asyncio").addFilter(_NotTlsEofNoise())
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        return int(result)
    except IstmoError as exc:
        print(f"istmo: {exc.diagnostics()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("istmo: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`); stop quietly like other Unix tools.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as exc:
        closed = _connection_closed(exc)
        if closed is None:
            raise
        print(f"istmo: {closed.diagnostics()}", file=sys.stderr)
        return 1


def _connection_closed(exc: Exception) -> IstmoError | None:
    """The error to say for nats-py's "connection closed" raised out of a command (NATS
    refused the agency just after letting it in, or went away): which, in one line
    instead of a traceback; None for any other exception. nats-py is looked at only if
    the command loaded it."""
    errors = sys.modules.get("nats.errors")
    if errors is None or not isinstance(exc, errors.ConnectionClosedError):
        return None
    from clients.connection import connection_closed

    return connection_closed()


if __name__ == "__main__":
    sys.exit(main())
