"""Monitor an audit log from its HTTP API: does it still extend the tree head seen last?

``monitor_remote`` does what the broker's local monitor does, over HTTP: pin the key and the
latest head on the first run; afterwards verify the new head's signature, refuse a rollback
or a split view (``check_monotonic``), and check a consistency proof from the head seen
last. An alarm keeps both signed heads as evidence in the state file (the same format as
the local monitor's) and is answered with ``ALARM_EXIT`` on every run after.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from clients.audit_api import DEFAULT_ORIGIN, AuditApi, RemoteLogError, pinned_key
from clients.oauth import ApiError
from schemas.canonical import b64d, b64e
from schemas.errors import ConfigError, EnvelopeError, SignatureError
from schemas.keys import VerifyKey
from schemas.merkle_verify import ProofError, verify_consistency
from schemas.monitor import MonitorState
from schemas.treehead import (
    SignedTreeHead,
    TreeHeadConflict,
    check_monotonic,
    parse_signed_tree_head,
    verify_tree_head,
)

__all__ = ["ALARM_EXIT", "MonitorState", "iso_time", "monitor_remote"]

ALARM_EXIT = 3


def iso_time(ms: int) -> str:
    """Epoch milliseconds as the monitor's messages and state file write them."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _load_state(path: Path) -> MonitorState | None:
    try:
        return MonitorState.parse(path, path.read_bytes())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read the monitor state {path}: {exc.strerror}") from exc


def _save_state(state: MonitorState) -> None:
    tmp = state.path.with_name(state.path.name + ".tmp")
    try:
        tmp.write_bytes(state.encode())
        os.replace(tmp, state.path)
    except OSError as exc:
        raise ConfigError(f"cannot write the monitor state {state.path}: {exc.strerror}") from exc


def _alarm(
    state: MonitorState, kind: str, message: str, *heads: SignedTreeHead, err: TextIO
) -> int:
    """Keep the heads as evidence, stop trusting the log, and say so."""
    state.raise_alarm(kind, message, iso_time(time.time_ns() // 1_000_000), heads)
    _save_state(state)
    kept = f"; {len(heads)} tree heads kept as evidence" if heads else ""
    print(f"istmo: ALARM: {message}{kept} in {state.path}", file=err)
    return ALARM_EXIT


async def monitor_remote(
    api: AuditApi,
    state_path: Path,
    *,
    pinned: VerifyKey | None,
    origin: str = DEFAULT_ORIGIN,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """One monitor run against the log behind ``api``; returns the exit code (0 or 3).

    Raises:
        ConfigError: the state file is unusable, or ``pinned`` is not the key in it.
        LogAltered: on the first run, the server's key is not ``pinned``.
        RemoteLogError, ApiError, ApiUnavailable: the server did not answer usefully (an
            outage is an error, not an alarm).
    """
    out = out or sys.stdout
    err = err or sys.stderr
    state = _load_state(state_path)
    if state is not None and state.alarm is not None:
        print(
            f"istmo: ALARM: the log is not trusted since {state.alarm.get('at')}: "
            f"{state.alarm.get('message')} (evidence in {state.path})",
            file=err,
        )
        return ALARM_EXIT
    if state is None:
        key = await pinned_key(api, pinned, origin)
        if pinned is None:
            print(
                f"istmo: pinning the key the server names, {key.kid}: compare it with the "
                "broker's log.pub (or pass --log-key FILE)",
                file=err,
            )
        state = MonitorState(state_path, b64e(key.public), origin)
    key = VerifyKey(b64d(state.log_key, field="pinned log key", max_bytes=32))
    if pinned is not None and pinned != key:
        raise ConfigError(f"--log-key is not the key pinned in {state.path}")
    raw = await api.latest_head()
    last = state.head
    if raw is None:
        if last is None:
            print("the log has no signed tree head yet", file=out)
            return 0
        return _alarm(
            state,
            "rollback",
            f"the log has no tree head, but size {last.head.tree_size} was verified",
            last,
            err=err,
        )
    try:
        sth = parse_signed_tree_head(raw)
    except EnvelopeError as exc:
        raise RemoteLogError(f"the latest tree head is malformed: {exc}") from exc
    # 1. The new head is signed by the pinned key for the pinned log.
    try:
        new = verify_tree_head(sth, key, state.origin)
    except SignatureError as exc:
        heads = (last, sth) if last else (sth,)
        return _alarm(state, "bad_signature", f"the log's tree head: {exc}", *heads, err=err)
    if last is None:
        state.head = sth
        _save_state(state)
        print(
            f"pinned log key {key.kid} for {state.origin}; tree head size {new.tree_size}, "
            f"root {new.root_hash}, signed {iso_time(new.timestamp)}",
            file=out,
        )
        return 0
    old = last.head
    # 2. It neither rolls back nor forks the last verified one.
    try:
        check_monotonic(old, new)
    except TreeHeadConflict as exc:
        msg = f"{exc.code.replace('_', ' ')}: {exc}"
        return _alarm(state, exc.code, msg, last, sth, err=err)
    # 3. It extends it: a consistency proof from the log, checked against both roots.
    if new.tree_size > old.tree_size:
        try:
            proof = await api.consistency(old.tree_size, new.tree_size)
            verify_consistency(old.tree_size, new.tree_size, old.root(), new.root(), proof)
        except (ProofError, RemoteLogError, ApiError) as exc:
            if isinstance(exc, ApiError) and exc.status != 400:
                raise
            return _alarm(
                state,
                "fork",
                f"fork: the log at size {new.tree_size} does not extend the head at size "
                f"{old.tree_size} seen before ({exc})",
                last,
                sth,
                err=err,
            )
        note = f"consistent with size {old.tree_size} ({len(proof)}-hash proof)"
    else:
        note = "unchanged"
    state.head = sth
    _save_state(state)
    print(f"tree head size {new.tree_size}, root {new.root_hash}: {note}", file=out)
    return 0
