"""``istmo keys protect | rotate | revoke | monitor``: an agency's own keystore and keys."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any

from clients.agency_flags import add_agency_args, add_data_dir_arg, connect, nats_url
from clients.key_log import load_key_log_trust, monitor_own_keys, trust_from_env
from clients.keystore import (
    ask_passphrase,
    load_keystore,
    on_a_terminal,
    resolve_keystore_path,
    save_keystore,
)
from clients.sdk import IstmoClient
from schemas.errors import ConfigError
from schemas.keystore import ProtectedKeystore, parse_any_keystore

__all__ = ["ALARM_EXIT", "MIN_PASSPHRASE_CHARS", "add_keys_parser"]

MIN_PASSPHRASE_CHARS = 12
ALARM_EXIT = 3  # as `istmo audit monitor`


async def _rotate(args: argparse.Namespace) -> int:
    path = resolve_keystore_path(args.who, args.data_dir)
    protected = isinstance(parse_any_keystore(path.read_bytes()), ProtectedKeystore)
    secret = ask_passphrase(path, args.passphrase_file)() if protected else None
    client = await IstmoClient.connect(
        path, nats_url(args, path, lambda: secret or ""), passphrase=secret
    )
    async with client:
        signing, encryption = await client.rotate_keys(passphrase=secret)
    print(f"{args.who}: new signing key {signing}, new encryption key {encryption}")
    return 0


async def _revoke_key(args: argparse.Namespace) -> int:
    async with await connect(args) as client:
        await client.revoke_key(args.kid, force=args.force)
    print(f"{args.who}: signing key {args.kid} revoked; what it signs from now on is refused")
    return 0


async def _monitor(args: argparse.Namespace) -> int:
    trust = load_key_log_trust(args.key_log) if args.key_log else trust_from_env()
    async with await connect(args) as client:
        reply = await client.key_log_entries()
        report = monitor_own_keys(client.keystore, reply, trust)
    where = f"size {report.size}" if report.size else "no verified head"
    print(
        f"{report.agency}: {len(reply.entries)} key entries in the audit log "
        f"({report.mode}, {where}); {report.proven} proven"
    )
    for line in report.unproven:
        print(f"  {line}")
    for alarm in report.alarms:
        print(f"istmo: ALARM: {alarm}", file=sys.stderr)
    if report.alarms:
        return ALARM_EXIT
    print(f"{report.agency}: every key registered to you is one this keystore holds")
    return 0


def _protect(args: argparse.Namespace) -> int:
    path = resolve_keystore_path(args.who, args.data_dir)
    keystore = load_keystore(path, ask_passphrase(path))
    if args.passphrase_file:
        try:
            secret = Path(args.passphrase_file).read_text(encoding="utf-8").splitlines()[0]
        except (OSError, IndexError) as exc:
            raise ConfigError(f"cannot read a passphrase from {args.passphrase_file}") from exc
    elif on_a_terminal():
        secret = getpass.getpass("new passphrase: ")
        if secret != getpass.getpass("again: "):
            raise ConfigError("the two passphrases differ; nothing changed")
    else:
        raise ConfigError("give --passphrase-file, or run interactively")
    if len(secret) < MIN_PASSPHRASE_CHARS:
        raise ConfigError(f"use a passphrase of at least {MIN_PASSPHRASE_CHARS} characters")
    save_keystore(path, keystore, passphrase=secret)
    print(f"{path}: protected with a passphrase (scrypt, AES-256-GCM)")
    return 0


def add_keys_parser(sub: Any) -> None:
    """Add ``keys protect | rotate | revoke`` to the ``istmo`` sub-command parser."""
    p = sub.add_parser("keys", help="manage your keystore")
    keys = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    c = keys.add_parser(
        "protect",
        help="encrypt a keystore with a passphrase",
        description=(
            "Encrypt the keystore of --as with a passphrase (scrypt, then AES-256-GCM). "
            "Commands then ask for it, or read it from the file named by $ISTMO_PASSPHRASE_FILE."
        ),
    )
    add_data_dir_arg(c)
    c.add_argument("--as", dest="who", required=True, metavar="AGENCY")
    c.add_argument(
        "--passphrase-file",
        help="read the new passphrase from this file (the current one, if the keystore is "
        "protected already: $ISTMO_PASSPHRASE_FILE or the terminal)",
    )
    c.set_defaults(func=_protect)

    c = keys.add_parser(
        "rotate",
        help="register new keys, vouched for by the current ones",
        description=(
            "Generate new signing and encryption keys, register them signed by the current "
            "signing key, and keep the old ones in the keystore so old bulletins still open. "
            "From now on the broker refuses what the old signing key signs."
        ),
    )
    add_agency_args(c)
    c.set_defaults(func=_rotate)

    c = keys.add_parser(
        "revoke",
        help="revoke one of your signing keys (after a leak)",
        description=(
            "Revoke one of your own signing keys from now on: the broker refuses what it "
            "signs from now on; what it signed before still verifies. `istmo keys rotate` "
            "revokes the old key itself; this is for a key that leaked. Revoking your only "
            "valid key needs --force: you can then neither publish nor rotate until your "
            "broker's administrator re-enrols you (`istmo admin agency reenrol`)."
        ),
    )
    add_agency_args(c)
    c.add_argument("kid", help="the key id (sig-...), as in the keystore or the directory")
    c.add_argument(
        "--force", action="store_true", help="revoke it even if it is your only valid key"
    )
    c.set_defaults(func=_revoke_key)

    c = keys.add_parser(
        "monitor",
        help="check every key registered to you in the audit log is yours (exit 3 if not)",
        description=(
            "Ask the broker for your key entries in the audit log, check each is included "
            "in the checkpoint your witnesses cosigned (--key-log FILE or $ISTMO_KEY_LOG: "
            "the log key and witnesses), and alarm (exit 3) on any key registered to you "
            "that this keystore does not hold: a key someone substituted for yours."
        ),
    )
    add_agency_args(c)
    c.add_argument(
        "--key-log",
        type=Path,
        metavar="FILE",
        help="the log key and witnesses to check against (default $ISTMO_KEY_LOG)",
    )
    c.set_defaults(func=_monitor)
