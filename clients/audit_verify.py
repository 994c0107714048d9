"""Verify and monitor an Istmo audit log from its HTTP API alone, on the auditor's machine.

``istmo audit verify --from-url URL --as AUDITOR`` trusts nothing the server says without a
check: the log key (compared with a pinned ``log.pub`` when ``--log-key`` is given), every
signed tree head (signature under that key, for the log's origin), every entry (its leaf hash
is the hash of the bytes served, and those bytes are a canonical audit event), the root of
the tree rebuilt from the entries at every signed size, inclusion proofs of a sample of
entries, and consistency proofs from a sample of earlier heads to the latest one. Then
the witness quorum (``clients.log_witnesses``): the log's checkpoint must carry the
cosignatures of the witnesses the auditor trusts (``--witnesses FILE``, ``--witness
NAME=KEY``, or ``$ISTMO_AUDIT_WITNESSES``). Without them verify refuses, unless told
``--trust-log-key-alone``, which warns: the log key alone does not stop its holder from
truncating the log and re-signing its heads.

When a signed root does not match the entries, consistency proofs from the log's own store
place the change: the first entry whose prefix no longer extends to the signed root. An
entry edited in the database is named by its index; a careful attacker who also recomputed
the stored nodes is caught at the start of the first head range that no longer matches.

``istmo audit monitor --from-url URL --as AUDITOR --state FILE`` does what the local monitor
does, over HTTP: pin the key and the latest head on the first run; afterwards verify the
new head's signature, refuse a rollback or a split view (``check_monotonic``), and check a
consistency proof from the head seen last. Like verify it requires the witness quorum:
only a head the witnesses cosigned becomes its state; a later one is reported, not adopted.
An alarm keeps the signed heads as evidence in the state file (the same format as the local
monitor's) and exits 3 on every run after.

Exit codes: 0 fine; 1 an error, or ``verify`` found the log altered (one line naming the
first bad index); 3 ``monitor`` raised an alarm.

Uses only ``schemas`` and ``clients``: an auditor installs the client, not the broker.
Every request is itself an ``audit.queried`` entry on the server (the log grows a little
with each run).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from clients.audit_api import (
    DEFAULT_ORIGIN,
    AuditApi,
    LogAltered,
    RemoteLogError,
    pinned_key,
    read_log_key,
)
from clients.keystore import ask_passphrase, load_keystore, resolve_keystore_path
from clients.log_monitor import ALARM_EXIT, MonitorState, iso_time, monitor_remote
from clients.log_verifier import DEFAULT_SAMPLE, RemoteReport, verify_remote
from clients.log_witnesses import check_witnessed, witness_trust
from clients.oauth import IstmoHttp
from schemas.checkpoint import AUDIT_WITNESSES_ENV, LOG_KEY_ALONE_WARNING, WitnessTrust
from schemas.errors import ConfigError
from schemas.keystore import KeystoreFile
from schemas.merkle_verify import EMPTY_ROOT

# The names tests and callers import from here; they live in the modules above.
__all__ = [
    "ALARM_EXIT",
    "DEFAULT_ORIGIN",
    "DEFAULT_SAMPLE",
    "AuditApi",
    "LogAltered",
    "MonitorState",
    "RemoteLogError",
    "RemoteReport",
    "add_remote_audit_parsers",
    "monitor_command",
    "monitor_remote",
    "read_log_key",
    "verify_command",
    "verify_remote",
]


# ---------------------------------------------------------------------------- commands
class _Bar:
    def __init__(self, enabled: bool, stream: TextIO = sys.stderr) -> None:
        self.enabled, self.stream, self._drawn = enabled, stream, 0.0

    def update(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self._drawn < 0.2 and done < total):
            return
        self._drawn = now
        frac = min(done / max(total, 1), 1.0)
        end = "\n" if done >= total else ""
        self.stream.write(
            f"\rverify [{'#' * int(frac * 30):<30}] {frac:4.0%} {done:,}/{total:,} entries{end}"
        )
        self.stream.flush()


def _api(url: str, keystore: KeystoreFile, timeout: float) -> IstmoHttp:
    return IstmoHttp(url, keystore, scope="audit:read", timeout=timeout)


async def verify_command(
    url: str,
    keystore: KeystoreFile,
    *,
    log_key: Path | None,
    origin: str = DEFAULT_ORIGIN,
    sample: int = DEFAULT_SAMPLE,
    progress: bool = False,
    timeout: float = 30.0,
    http: IstmoHttp | None = None,
    trust: WitnessTrust | None = None,
    trust_log_key_alone: bool = False,
) -> int:
    """``istmo audit verify --from-url``: print the result.

    Args:
        trust: the witnesses whose quorum the log's checkpoint must carry. Required:
            without it the log key alone vouches for the log, and whoever holds that key
            can truncate the log and re-sign its heads.
        trust_log_key_alone: accept the log on its key alone (no ``trust``); warns.

    Raises:
        ConfigError: neither ``trust`` nor ``trust_log_key_alone``, or both.
        LogAltered: the log was altered.
        QuorumMissing: the log's checkpoint lacks the quorum of ``trust``.
    """
    if (trust is None) != trust_log_key_alone:
        raise ConfigError(
            "verify needs the witnesses you trust (trust=WitnessTrust) or, for a log "
            "without witnesses, trust_log_key_alone=True, not both"
            if trust is not None
            else "no witnesses to check the audit log against: pass --witnesses FILE or "
            f"--witness NAME=KEY --quorum K, or name your trust file in ${AUDIT_WITNESSES_ENV}",
            code=None if trust is not None else "witnesses_required",
        )
    pinned = read_log_key(log_key) if log_key is not None else None
    client = http or _api(url, keystore, timeout)
    witnessed = None
    try:
        api = AuditApi(client)
        report = await verify_remote(
            api,
            pinned=pinned,
            origin=origin,
            sample=sample,
            progress=_Bar(progress).update,
        )
        if report.first is not None:
            more = f" ({report.problems - 1} further problems)" if report.problems > 1 else ""
            raise LogAltered(
                f"audit log altered: first bad index {report.first.index}: "
                f"{report.first.message}{more}"
            )
        if trust is not None:
            key = await pinned_key(api, pinned, origin)
            latest = report.latest
            size, root = (latest.tree_size, latest.root()) if latest else (0, EMPTY_ROOT)
            witnessed = await check_witnessed(api, key, origin, trust, size, root)
    finally:
        if http is None:
            await client.aclose()
    if not report.pinned:
        print(
            f"istmo: the log key {report.kid} came from the server itself: compare it with "
            "the broker's log.pub and pass --log-key FILE",
            file=sys.stderr,
        )
    if trust is None:
        print(LOG_KEY_ALONE_WARNING, file=sys.stderr)
    if report.latest is None:
        print(f"the audit log at {url} is empty: nothing to verify yet")
        return 0
    latest = report.latest
    print(
        f"verified {report.entries} entries and {report.heads} signed tree heads from {url} "
        f"in {report.seconds:.2f} s (key {report.kid}{', pinned' if report.pinned else ''})"
    )
    print(
        f"latest head: size {latest.tree_size}, root {latest.root_hash}, "
        f"signed {iso_time(latest.timestamp)}"
    )
    print(f"proofs: {report.inclusion} inclusion, {report.consistency} consistency, all verify")
    if witnessed is not None:
        print(witnessed)
    return 0


async def monitor_command(
    url: str,
    keystore: KeystoreFile,
    *,
    state: Path,
    log_key: Path | None,
    origin: str = DEFAULT_ORIGIN,
    timeout: float = 30.0,
    http: IstmoHttp | None = None,
    trust: WitnessTrust | None = None,
    trust_log_key_alone: bool = False,
) -> int:
    """``istmo audit monitor --from-url``: one run; 0, or ``ALARM_EXIT``.

    Args:
        trust: the witnesses whose quorum a head needs before the monitor adopts it
            (required, as for ``verify_command``).
        trust_log_key_alone: adopt each head on the log key alone (no ``trust``); warns.

    Raises:
        ConfigError: neither ``trust`` nor ``trust_log_key_alone``, or both.
        QuorumMissing: the log's checkpoint lacks the quorum: the head seen is not adopted.
    """
    pinned = read_log_key(log_key) if log_key is not None else None
    client = http or _api(url, keystore, timeout)
    try:
        return await monitor_remote(
            AuditApi(client),
            state,
            pinned=pinned,
            origin=origin,
            trust=trust,
            trust_log_key_alone=trust_log_key_alone,
        )
    finally:
        if http is None:
            await client.aclose()


# ---------------------------------------------------------------------------- the CLI
def _keystore(args: argparse.Namespace) -> KeystoreFile:
    if not args.who:
        raise ConfigError(
            "--from-url needs --as AUDITOR: the agency id or keystore file of an auditor "
            "(scope audit:read)"
        )
    path = resolve_keystore_path(args.who, args.data_dir)
    return load_keystore(path, ask_passphrase(path, args.passphrase_file))


def _url(text: str) -> str:
    if not text.startswith(("http://", "https://")) or len(text) > 2000:
        raise argparse.ArgumentTypeError("give the broker's API URL, like http://127.0.0.1:8844")
    return text.rstrip("/")


async def _verify_args(args: argparse.Namespace) -> int:
    return await verify_command(
        args.from_url,
        _keystore(args),
        log_key=args.log_key,
        origin=args.origin,
        sample=args.sample,
        progress=bool(args.progress),
        timeout=args.timeout,
        trust=witness_trust(
            args.witness, args.quorum, args.witnesses, log_key_alone=args.trust_log_key_alone
        ),
        trust_log_key_alone=args.trust_log_key_alone,
    )


async def _monitor_args(args: argparse.Namespace) -> int:
    return await monitor_command(
        args.from_url,
        _keystore(args),
        state=args.state,
        log_key=args.log_key,
        origin=args.origin,
        timeout=args.timeout,
        trust=witness_trust(
            args.witness, args.quorum, args.witnesses, log_key_alone=args.trust_log_key_alone
        ),
        trust_log_key_alone=args.trust_log_key_alone,
    )


def _add(parser: argparse.ArgumentParser, *flags: str, **kwargs: Any) -> None:
    """Add an option unless the parser has it already (the broker's local options)."""
    try:
        parser.add_argument(*flags, **kwargs)
    except argparse.ArgumentError:
        pass  # same meaning in both modes: --data-dir, --log-key, --state, --progress


def _remote_options(parser: argparse.ArgumentParser, *, alone: bool) -> None:
    parser.add_argument(
        "--from-url",
        type=_url,
        required=alone,
        metavar="URL",
        help="verify from the broker's HTTP API alone (e.g. http://127.0.0.1:8844), as the "
        "auditor --as: nothing of the broker needs to be installed here",
    )
    parser.add_argument(
        "--as",
        dest="who",
        metavar="AUDITOR",
        help="with --from-url: an auditor's agency id (its keystore in DATA_DIR/keys) or "
        "keystore file",
    )
    parser.add_argument(
        "--origin",
        default=DEFAULT_ORIGIN,
        help=f"with --from-url: the log's name (default {DEFAULT_ORIGIN})",
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="with --from-url: seconds per request"
    )
    _add(
        parser,
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("ISTMO_DATA_DIR", ".istmo")),
        help="where --as finds an agency's keystore (default ./.istmo, or $ISTMO_DATA_DIR)",
    )
    _add(parser, "--log-key", type=Path, help="the log's public key (log.pub) to pin")
    _add(
        parser,
        "--passphrase-file",
        type=Path,
        metavar="FILE",
        help="with --from-url: the auditor keystore's passphrase, the first line of FILE",
    )


def _route(parser: argparse.ArgumentParser, remote: Callable[[argparse.Namespace], Any]) -> None:
    local = parser.get_default("func")

    def run(args: argparse.Namespace) -> Any:
        if args.from_url:
            return remote(args)
        if local is None:  # pragma: no cover - --from-url is required without the broker
            raise ConfigError("give --from-url URL")
        if args.who:
            raise ConfigError("--as is for --from-url; the local log needs no identity")
        return local(args)

    parser.set_defaults(func=run)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse offers no public way to reach a group
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _witness_options(parser: argparse.ArgumentParser) -> None:
    """The witnesses a verifier requires, or the explicit opt-out (docs/audit.md#witnesses)."""
    _add(
        parser,
        "--witness",
        action="append",
        default=[],
        metavar="NAME=KEY",
        help="a witness whose cosignature counts (its verifier key or base64 key); repeat for each",
    )
    _add(
        parser,
        "--witnesses",
        type=Path,
        metavar="FILE",
        help="a trust file of witnesses and quorum (docs/audit.md#witnesses)",
    )
    _add(
        parser,
        "--quorum",
        type=int,
        metavar="K",
        help="how many of the witnesses must have cosigned (default all given)",
    )
    _add(
        parser,
        "--trust-log-key-alone",
        action="store_true",
        help="check a log without witnesses on its own key alone (warns: this does not "
        "protect against whoever holds the log key)",
    )


def add_remote_audit_parsers(sub: Any) -> None:
    """``istmo audit verify|monitor --from-url URL --as AUDITOR``.

    Call after the broker's commands are registered. With the broker installed, its
    ``audit verify`` and ``audit monitor`` gain ``--from-url`` (without it they read the
    local data directory, as before); with the client alone, ``istmo audit`` has just these
    two commands and ``--from-url`` is required. One command, either way, for the auditor.
    """
    group = sub.choices.get("audit")
    alone = group is None
    if group is None:
        group = sub.add_parser(
            "audit", help="verify and monitor an Istmo audit log over its HTTP API"
        )
        cmds = group.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
        cmds.add_parser(
            "verify",
            help="verify the whole log from the HTTP API: entries, heads, proofs",
            description="Fetch every entry and signed tree head, rebuild the tree, check "
            "every head and a sample of proofs; name the first bad index.",
        )
        cmds.add_parser(
            "monitor",
            help="check the log still extends the tree head seen last (exit 3 on an alarm)",
            description="Verify the latest signed tree head against the key pinned in STATE "
            "and a consistency proof from the head seen last; alarm on rollback or fork. Only "
            "a head the witness quorum cosigned becomes the new state (--witnesses FILE, "
            "--witness/--quorum or $ISTMO_AUDIT_WITNESSES; else --trust-log-key-alone).",
        )
    parsers = _subcommands(group)
    verify, monitor = parsers.get("verify"), parsers.get("monitor")
    if verify is not None:
        _remote_options(verify, alone=alone)
        verify.add_argument(
            "--sample",
            type=int,
            default=DEFAULT_SAMPLE,
            help="with --from-url: entries given an inclusion proof, and earlier heads a "
            f"consistency proof (default {DEFAULT_SAMPLE})",
        )
        _add(verify, "--progress", action="store_true", help="progress bar on stderr")
        _witness_options(verify)
        _route(verify, _verify_args)
    if monitor is not None:
        _remote_options(monitor, alone=alone)
        _add(monitor, "--state", type=Path, required=True, help="where the monitor remembers")
        _witness_options(monitor)
        _route(monitor, _monitor_args)
