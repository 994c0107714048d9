"""What the broker's operator commands share: who is acting, the data directory they work on,
and one connection to NATS for the length of a command.

The ``istmo`` parser loads every command module at start (``broker.cli.commands``), so
nothing here imports the server at import time: ``open_data_dir`` does, when a command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import importlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, TypeVar

from broker.config import Settings
from schemas.errors import ConfigError

if TYPE_CHECKING:
    from nats.js import JetStreamContext

    from broker.runtime.datadir import DataDir

__all__ = [
    "add_data_dir",
    "add_log_key_alone",
    "add_stack_dirs",
    "add_witness_trust",
    "on_bus",
    "open_data_dir",
    "operator_name",
    "running_nats_url",
    "server_parts",
]

T = TypeVar("T")


def operator_name() -> str:
    """The actor of an operator command in the audit log: ``local:<user>``, or
    ``local:uid-<n>`` where the uid has no name (a container without a passwd entry)."""
    try:
        return f"local:{getpass.getuser()}"[:200]
    except (OSError, KeyError):
        return f"local:uid-{os.getuid()}"


def server_parts(module: str) -> ModuleType:
    """``broker.<module>``, loaded only when a command runs (it needs ``istmo[server]``).

    Raises:
        ConfigError: the server's dependencies are not installed.
    """
    try:
        return importlib.import_module(f"broker.{module}")
    except ImportError as exc:
        raise ConfigError(
            f"this command needs the server parts ({exc.name} is missing)",
            hint="pip install -e '.[server]'",
        ) from exc


def add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("ISTMO_DATA_DIR", ".istmo")),
        help="the broker's data directory (default ./.istmo, or $ISTMO_DATA_DIR)",
    )


def add_witness_trust(c: argparse.ArgumentParser) -> None:
    """The options that say which witnesses' cosignatures a verifier requires."""
    c.add_argument(
        "--witness",
        action="append",
        default=[],
        metavar="NAME=KEY",
        help="a witness whose cosignature counts: its name and its verifier key "
        "(name+keyid+base64, as `istmo witness` prints) or base64 public key; "
        "repeat for each",
    )
    c.add_argument(
        "--witnesses",
        type=Path,
        metavar="FILE",
        help="a trust file of witnesses and quorum (JSON; docs/audit.md#witnesses)",
    )
    c.add_argument(
        "--quorum",
        type=int,
        metavar="K",
        help="how many of the witnesses must have cosigned (default: all given, "
        "or the trust file's)",
    )


def add_log_key_alone(c: argparse.ArgumentParser) -> None:
    """The explicit opt-out of the witness quorum (docs/audit.md#verifying-with-the-quorum)."""
    c.add_argument(
        "--trust-log-key-alone",
        action="store_true",
        help="check a log without witnesses on its own key alone (warns: this does not "
        "protect against whoever holds the log key, who can truncate and re-sign the log)",
    )


def add_stack_dirs(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("ISTMO_DATA_DIR", ".istmo")),
        help="where keys, JetStream and the database live (default ./.istmo, or $ISTMO_DATA_DIR)",
    )
    p.add_argument(
        "--policy-dir",
        type=Path,
        default=None,
        help="the policies/ directory to load (default: the checkout's)",
    )


def open_data_dir(args: argparse.Namespace) -> DataDir:
    """The data directory of ``args.data_dir`` (and ``args.policy_dir``), opened."""
    datadir = server_parts("runtime.datadir")
    settings = Settings.from_env(data_dir=args.data_dir, policy_dir=args.policy_dir)
    opened: DataDir = datadir.DataDir.open(settings, out=lambda _line: None)
    return opened


def running_nats_url(data: DataDir, given: str | None) -> str:
    """``--nats-url``, or the URL of the stack running for the data directory.

    Raises:
        ConfigError: neither is there.
    """
    from broker.runtime.stackfile import read_stack_file

    url = given or (read_stack_file(data.settings.data_dir) or {}).get("nats_url")
    if not isinstance(url, str):
        raise ConfigError(
            f"no stack running for {data.settings.data_dir}",
            hint="start `istmo up`, or pass --nats-url",
        )
    return url


def on_bus(
    data: DataDir,
    url: str | list[str],
    work: Callable[[JetStreamContext], Awaitable[T]],
    *,
    reconnects: int = -1,
) -> T:
    """Run ``work`` with a JetStream context on the broker's own connection to ``url``,
    closed afterwards: the shape of every operator command that acts on NATS."""

    async def run() -> T:
        nc = await data.connect(url, reconnects=reconnects)
        try:
            return await work(nc.jetstream(timeout=10))
        finally:
            await nc.close()

    return asyncio.run(run())
