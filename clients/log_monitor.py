"""Monitor an audit log from its HTTP API: does it still extend the tree head seen last?

``monitor_remote`` does what the broker's local monitor does, over HTTP: pin the key on the
first run; verify the latest head's signature, refuse a rollback or a split view
(``check_monotonic``), and check a consistency proof from the head seen last. A head
becomes the monitor's state only when the witness quorum cosigned it (ADR 24): the log's
checkpoint carries the quorum of the auditor's witnesses, the log's head at that size has
the cosigned root, and the latest head extends it; a later head not witnessed yet is
reported, not adopted. An alarm keeps the signed heads as evidence in the state file (the
same format as the local monitor's) and is answered with ``ALARM_EXIT`` on every run after.
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
from schemas.checkpoint import (
    AUDIT_WITNESSES_ENV,
    LOG_KEY_ALONE_WARNING,
    QuorumMissing,
    WitnessTrust,
    parse_note,
)
from schemas.errors import ConfigError, EnvelopeError, SignatureError
from schemas.keys import VerifyKey
from schemas.merkle_verify import ProofError, verify_consistency
from schemas.monitor import MonitorState, cosigned_checkpoint, witnessed_head, witnessed_line
from schemas.treehead import (
    SignedTreeHead,
    TreeHead,
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
    trust: WitnessTrust | None = None,
    trust_log_key_alone: bool = False,
) -> int:
    """One monitor run against the log behind ``api``; returns the exit code (0 or 3).

    Args:
        trust: the witnesses whose quorum a head needs before the monitor adopts it.
            Required: without it the log key alone vouches for the heads, and whoever holds
            that key can truncate the log and re-sign them.
        trust_log_key_alone: adopt each head on the log key alone (no ``trust``); warns.

    Raises:
        ConfigError: neither ``trust`` nor ``trust_log_key_alone`` (or both), the state
            file is unusable, or ``pinned`` is not the key in it.
        QuorumMissing: the log's checkpoint lacks the quorum of ``trust``: the head seen
            is reported (stdout), not adopted.
        LogAltered: on the first run, the server's key is not ``pinned``.
        RemoteLogError, ApiError, ApiUnavailable: the server did not answer usefully (an
            outage is an error, not an alarm).
    """
    if (trust is None) != trust_log_key_alone:
        raise ConfigError(
            "monitor needs the witnesses you trust (trust=WitnessTrust) or, for a log "
            "without witnesses, trust_log_key_alone=True, not both"
            if trust is not None
            else "no witnesses to check the audit log against: pass --witnesses FILE or "
            f"--witness NAME=KEY --quorum K, or name your trust file in ${AUDIT_WITNESSES_ENV}",
            code=None if trust is not None else "witnesses_required",
        )
    out = out or sys.stdout
    err = err or sys.stderr
    code = await _monitor_once(api, state_path, pinned, origin, out, err, trust)
    if trust is None:
        print(LOG_KEY_ALONE_WARNING, file=err)
    return code


async def _monitor_once(
    api: AuditApi,
    state_path: Path,
    pinned: VerifyKey | None,
    origin: str,
    out: TextIO,
    err: TextIO,
    trust: WitnessTrust | None,
) -> int:
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
        seen = (
            f"pinned log key {key.kid} for {state.origin}; tree head size {new.tree_size}, "
            f"root {new.root_hash}, signed {iso_time(new.timestamp)}"
        )
    else:
        old = last.head
        # 2. It neither rolls back nor forks the last verified one.
        try:
            check_monotonic(old, new)
        except TreeHeadConflict as exc:
            msg = f"{exc.code.replace('_', ' ')}: {exc}"
            return _alarm(state, exc.code, msg, last, sth, err=err)
        # 3. It extends it: a consistency proof from the log, checked against both roots.
        if new.tree_size > old.tree_size:
            fork, hashes = await _extends(api, old, new)
            if fork:
                return _alarm(
                    state,
                    "fork",
                    f"fork: the log at size {new.tree_size} does not extend the head at size "
                    f"{old.tree_size} seen before ({fork})",
                    last,
                    sth,
                    err=err,
                )
            said = f"consistent with size {old.tree_size} ({hashes}-hash proof)"
        else:
            said = "unchanged"
        seen = f"tree head size {new.tree_size}, root {new.root_hash}: {said}"
    print(seen, file=out)
    if trust is None:  # trust_log_key_alone: the signed head is adopted on the key alone
        state.head = sth
        _save_state(state)
        return 0
    return await _adopt_witnessed(api, state, key, last, sth, new, trust, out, err)


async def _extends(api: AuditApi, old: TreeHead, new: TreeHead) -> tuple[str, int]:
    """Why ``new`` does not extend ``old`` ("" when a consistency proof shows it does), and
    the proof's length."""
    try:
        proof = await api.consistency(old.tree_size, new.tree_size)
        verify_consistency(old.tree_size, new.tree_size, old.root(), new.root(), proof)
    except (ProofError, RemoteLogError, ApiError) as exc:
        if isinstance(exc, ApiError) and exc.status != 400:
            raise
        return str(exc) or type(exc).__name__, 0
    return "", len(proof)


async def _adopt_witnessed(
    api: AuditApi,
    state: MonitorState,
    key: VerifyKey,
    last: SignedTreeHead | None,
    sth: SignedTreeHead,
    new: TreeHead,
    trust: WitnessTrust,
    out: TextIO,
    err: TextIO,
) -> int:
    """4. The quorum cosigned a head of this log, which the latest head extends: adopt it."""
    stays = f"size {last.head.tree_size}" if last else "no head (nothing saved)"
    raw = await api.raw("/v1/audit/checkpoint")
    try:
        note = None if raw is None else parse_note(raw)
        cp, good = cosigned_checkpoint(trust, note, key, state.origin, api.base_url)
    except (QuorumMissing, EnvelopeError) as exc:
        said = exc if isinstance(exc, QuorumMissing) else f"audit log not witnessed: {exc}"
        raise QuorumMissing(
            f"{said}; tree head size {new.tree_size} seen, not adopted: the monitor stays at "
            f"{stays}"
        ) from exc
    # 5. The log's own head at the cosigned size has the cosigned root.
    at_raw = await api.raw(f"/v1/audit/tree-heads/{cp.size}")
    try:
        at = None if at_raw is None else parse_signed_tree_head(at_raw)
    except EnvelopeError as exc:
        raise RemoteLogError(f"the tree head at size {cp.size} is malformed: {exc}") from exc
    evidence = tuple(h for h in (last, sth, at) if h is not None)
    try:
        witnessed = witnessed_head(cp, at, key, state.origin, new.tree_size)
    except SignatureError as exc:
        msg = f"the log's head at size {cp.size}: {exc}"
        return _alarm(state, "bad_signature", msg, *evidence, err=err)
    except TreeHeadConflict as exc:
        return _alarm(state, exc.code, f"{exc.code}: {exc}", *evidence, err=err)
    # 6. The latest head extends the witnessed one.
    if new.tree_size > cp.size:
        fork, _ = await _extends(api, witnessed.head, new)
        if fork:
            return _alarm(
                state,
                "fork",
                f"fork: the log at size {new.tree_size} does not extend the witnessed head at "
                f"size {cp.size} ({fork})",
                *evidence,
                err=err,
            )
    kept = last if last is not None and last.head.tree_size >= cp.size else witnessed
    if kept is witnessed:
        state.head = witnessed
        _save_state(state)
    print(witnessed_line(trust, cp, good, new, kept.head, adopted=kept is witnessed), file=out)
    return 0
