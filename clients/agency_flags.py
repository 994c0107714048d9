"""``--data-dir``, ``--as`` and ``--nats-url``: the keystore an agency command acts with, and
the NATS it reaches (the one ``istmo up`` runs for the data directory, unless told)."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path

from clients.keystore import ask_passphrase, load_keystore, resolve_keystore_path
from clients.sdk import IstmoClient
from schemas.errors import ConfigError

__all__ = [
    "DEFAULT_DATA_DIR",
    "add_agency_args",
    "add_data_dir_arg",
    "add_no_push_arg",
    "add_passphrase_file_arg",
    "connect",
    "nats_url",
]

DEFAULT_DATA_DIR = Path(".istmo")


def add_data_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("ISTMO_DATA_DIR", DEFAULT_DATA_DIR)),
        help="the local stack's data directory (default: ./.istmo, or $ISTMO_DATA_DIR)",
    )


def add_no_push_arg(p: argparse.ArgumentParser) -> None:
    """``--no-push``, for a command that receives (ADR 38)."""
    p.add_argument(
        "--no-push",
        action="store_true",
        help="take FLASH and IMMEDIATE bulletins from the queue only, not pushed ahead of "
        "it: for a second receiver of the same agency (the broker pushes to one)",
    )


def add_agency_args(p: argparse.ArgumentParser) -> None:
    add_data_dir_arg(p)
    p.add_argument(
        "--as",
        dest="who",
        required=True,
        metavar="AGENCY",
        help="an agency id (its keystore in DATA_DIR/keys) or the path of a keystore file",
    )
    add_passphrase_file_arg(p)
    p.add_argument(
        "--nats-url",
        default=os.environ.get("ISTMO_NATS_URL"),
        help="NATS to connect to (default: the one `istmo up` runs for --data-dir)",
    )


def add_passphrase_file_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--passphrase-file",
        type=Path,
        metavar="FILE",
        help="a protected keystore's passphrase: the first line of FILE (default: "
        "$ISTMO_PASSPHRASE_FILE, else asked on the terminal)",
    )


def leaf_url_of(info: object, agency: object) -> str | None:
    """The client URL of ``agency``'s state node in a stack's ``stack.json`` (ADR 0030:
    ``istmo up --leaves``), or None when its state has none."""
    leaves = info.get("leaves") if isinstance(info, dict) else None
    if not isinstance(leaves, dict) or not isinstance(agency, str):
        return None
    for node in leaves.values():
        if not isinstance(node, dict):
            continue
        agencies = node.get("agencies")
        url = node.get("nats_url")
        if isinstance(agencies, list) and agency in agencies and isinstance(url, str):
            return url
    return None


def nats_url(args: argparse.Namespace, keystore_path: Path, ask: Callable[[], str]) -> str:
    """``--nats-url``, else the stack's for ``--data-dir`` (the agency's state node, if the
    stack runs one), else the keystore's.

    Raises:
        ConfigError: none of them names one.
    """
    if args.nats_url:
        return str(args.nats_url)
    stack = args.data_dir / "stack.json"
    try:
        info = json.loads(stack.read_text())
        url = leaf_url_of(info, getattr(args, "who", None)) or info.get("nats_url")
        if isinstance(url, str):
            return url
    except (OSError, ValueError, AttributeError):
        pass
    ks_url = load_keystore(keystore_path, ask).nats_url
    if ks_url:
        return ks_url
    raise ConfigError(
        f"broker not running: no {stack}", hint="start it with `istmo up`, or pass --nats-url"
    )


async def connect(args: argparse.Namespace) -> IstmoClient:
    """The SDK client of ``--as``, connected to NATS."""
    path = resolve_keystore_path(args.who, args.data_dir)
    ask = ask_passphrase(path, args.passphrase_file)
    return await IstmoClient.connect(path, nats_url(args, path, ask), passphrase=ask)
