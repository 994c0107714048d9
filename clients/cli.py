"""The ``istmo`` command line: its parser and its one way of reporting an error.

Agency commands come from ``clients`` (``bulletin_commands``: publish, preview, receive,
receipts, status; ``recall_commands``; ``key_commands``; ``enroll``; ``console_login``;
``audit_verify``).
Commands that run the broker (``up``, ``relay``, ``admin``, ...) come from the
``istmo[server]`` extra through the ``istmo.commands`` entry point group, so the client
never imports the broker.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import NoReturn

from clients.audit_verify import add_remote_audit_parsers
from clients.bulletin_commands import add_bulletin_parsers
from clients.console_login import add_console_parser
from clients.enroll import add_enroll_parser
from clients.key_commands import add_keys_parser
from clients.recall_commands import add_recall_parser
from schemas.errors import IstmoError

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """Says what was wrong in one line and where the usage is, instead of printing the
    whole usage (14 lines for ``istmo publish``) above the line that matters."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n  hint: `{self.prog} --help` shows every option\n")


def build_parser() -> argparse.ArgumentParser:
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
    add_bulletin_parsers(sub)
    add_recall_parser(sub)
    add_keys_parser(sub)
    add_enroll_parser(sub)
    add_console_parser(sub)
    for ep in entry_points(group="istmo.commands"):
        ep.load()(sub)
    add_remote_audit_parsers(sub)  # after the broker's: `istmo audit ... --from-url`
    return parser


class _NotTlsEofNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received() has no effect when using ssl" not in record.getMessage()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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


if __name__ == "__main__":
    sys.exit(main())
