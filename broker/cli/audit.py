"""``istmo audit tail | search | export | verify | monitor``: the audit log from the shell.

Local mode: each command reads the data directory's database (``--data-dir``), so it runs
where the broker runs. Every query that shows entries (tail, search, export) is itself
recorded, before the rows are shown, as an ``audit.queried`` event (actor
``local:<os user>``, the filter, the row count); the sequencer integrates it like any other
event. ``verify`` and ``monitor`` reveal no entry and are not recorded. Both require the
witness quorum (ADR 24): witnesses from the options, ``$ISTMO_AUDIT_WITNESSES`` or the
broker's own witnesses file, else they refuse unless ``--trust-log-key-alone``; ``monitor``
adopts as its new state only a head the quorum cosigned.

Exit codes: 0 fine; 1 an error, or ``verify`` found the log altered (one line naming the
first bad index); 3 ``monitor`` raised an alarm (rollback, fork, bad signature or proof).

Left to others: the HTTP endpoints (``broker.api.audit``), and ``verify``/``monitor``
``--from-url`` (``clients.audit_verify``, which the client CLI routes to).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from broker.audit import events, merkle
from broker.audit.log import (
    MAX_PAGE,
    AuditLog,
    EntryFilter,
    LogCorrupt,
    LogEntry,
)
from broker.audit.sequencer import DEFAULT_ORIGIN, log_verify_key, require_database
from broker.audit.witnessing import read_checkpoint, witness_sizes
from broker.cli._common import operator_name
from broker.clock import SYSTEM_CLOCK
from broker.config import Settings
from broker.store.registry import Registry
from schemas.audit import EVENT_TYPES
from schemas.canonical import b64d, b64e
from schemas.checkpoint import (
    AUDIT_WITNESSES_ENV,
    LOG_KEY_ALONE_FLAG,
    LOG_KEY_ALONE_WARNING,
    NOTE_ALG,
    CosignerKey,
    QuorumMissing,
    SignedNote,
    WitnessTrust,
    required_trust,
)
from schemas.errors import ConfigError, SignatureError
from schemas.keys import VerifyKey
from schemas.monitor import MonitorState, cosigned_checkpoint, witnessed_head, witnessed_line
from schemas.treehead import (
    SignedTreeHead,
    TreeHead,
    TreeHeadConflict,
    check_monotonic,
    verify_tree_head,
)

__all__ = [
    "ALARM_EXIT",
    "export_command",
    "monitor_command",
    "search_command",
    "tail_command",
    "verify_command",
]

ALARM_EXIT = 3
FOLLOW_POLL_S = 0.5
_BAR_MIN_ENTRIES = 10_000  # shorter exports finish before a bar helps
_RELATIVE = re.compile(r"^(\d{1,7})([smhd])$")


@dataclass
class _Local:
    settings: Settings
    registry: Registry
    log: AuditLog

    def close(self) -> None:
        self.log.close()
        self.registry.close()


@contextmanager
def _local(args: argparse.Namespace) -> Iterator[_Local]:
    settings = Settings.from_env(data_dir=args.data_dir)
    require_database(settings)
    registry = Registry(settings.db_url)
    try:
        opened = _Local(settings, registry, AuditLog(settings.db_url))
    except BaseException:
        registry.close()
        raise
    try:
        yield opened
    finally:
        opened.close()


def _record(local: _Local, command: str, query: dict[str, Any], rows: int) -> None:
    """Record the query before its rows are shown: no access without an audit event."""
    event = events.audit_queried(
        operator_name(), f"audit.{command}", query, rows, at=SYSTEM_CLOCK.now_ms()
    )
    local.registry.record([], [event])


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _line(e: LogEntry) -> str:
    ev = e.event()
    text = f"{e.index:>8}  {_iso(ev['time'])}  {ev['type']:<18} {ev['actor']} -> {ev['subject']}"
    if ev.get("bulletin_id"):
        text += f"  bulletin {ev['bulletin_id']}"
    if ev.get("reason"):
        text += f"  [{ev['reason']}]"
    if ev.get("data"):
        text += "  " + json.dumps(ev["data"], sort_keys=True, separators=(",", ":"))
    return text


def _entry_json(e: LogEntry) -> dict[str, Any]:
    return {
        "index": e.index,
        "leaf_hash": b64e(e.leaf_hash),
        "entry": e.event(),
    }


def _when(text: str | None, flag: str) -> int | None:
    """Epoch ms from ISO 8601 (UTC unless it says otherwise), epoch ms, or ``24h`` ago."""
    if text is None:
        return None
    if m := _RELATIVE.fullmatch(text):
        seconds = int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return SYSTEM_CLOCK.now_ms() - seconds * 1000
    if text.isdigit() and len(text) >= 10:
        return int(text)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"{flag} {text[:40]!r}: use ISO 8601 (2026-01-31 or 2026-01-31T08:00Z), "
            "epoch milliseconds, or a span ago like 90m, 24h, 7d"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


# ---------------------------------------------------------------------------------- tail
def tail_command(args: argparse.Namespace) -> int:
    n = max(1, min(args.n, MAX_PAGE))
    with _local(args) as local:
        entries = local.log.tail(n)
        _record(local, "tail", {"n": n, "follow": bool(args.follow)}, len(entries))
        # --json: one entry per line (JSON Lines), so --follow can stream them.
        show = (lambda e: json.dumps(_entry_json(e))) if args.json else _line
        for e in entries:
            print(show(e), flush=True)
        if not args.follow:
            return 0
        last = entries[-1].index if entries else -1
        try:
            while True:
                time.sleep(FOLLOW_POLL_S)
                for e in local.log.search(EntryFilter(after_index=last, limit=MAX_PAGE)):
                    print(show(e), flush=True)
                    last = e.index
        except KeyboardInterrupt:
            return 0


# -------------------------------------------------------------------------------- search
def search_command(args: argparse.Namespace) -> int:
    if args.type is not None and args.type not in EVENT_TYPES:
        raise ConfigError(f"unknown event type {args.type[:40]!r}; one of {', '.join(EVENT_TYPES)}")
    since, until = _when(args.since, "--since"), _when(args.until, "--until")
    try:
        f = EntryFilter(
            agency=args.agency,
            bulletin_id=args.bulletin,
            type=args.type,
            since_ms=since,
            until_ms=until,
            after_index=args.after_index,
            limit=args.limit,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    with _local(args) as local:
        entries = local.log.search(f)
        query = {
            "agency": f.agency,
            "bulletin": f.bulletin_id,
            "type": f.type,
            "since": f.since_ms,
            "until": f.until_ms,
            "after_index": f.after_index,
            "limit": f.limit,
        }
        _record(local, "search", query, len(entries))
    more = entries[-1].index if len(entries) == f.limit else None
    if args.json:
        doc = {"entries": [_entry_json(e) for e in entries], "next_after_index": more}
        print(json.dumps(doc, indent=2))
        return 0
    for e in entries:
        print(_line(e))
    note = f"{len(entries)} entries"
    if more is not None:
        note += f"; next page: --after-index {more}"
    print(note, file=sys.stderr)
    return 0


# -------------------------------------------------------------------------------- export
class _Progress:
    """A text progress bar on stderr, redrawn at most five times a second."""

    def __init__(self, what: str, total: int, enabled: bool, stream: TextIO = sys.stderr):
        self.what, self.total, self.enabled, self.stream = what, max(total, 1), enabled, stream
        self._drawn = 0.0

    def update(self, done: int, total: int | None = None, *, final: bool = False) -> None:
        if not self.enabled:
            return
        if total:
            self.total = total
        now = time.monotonic()
        if not final and now - self._drawn < 0.2:
            return
        self._drawn = now
        frac = min(done / self.total, 1.0)
        bar = "#" * int(frac * 30)
        self.stream.write(
            f"\r{self.what} [{bar:<30}] {frac:4.0%} {done:,}/{self.total:,} entries"
            + ("\n" if final else "")
        )
        self.stream.flush()


def _want_bar(flag: bool | None, total: int) -> bool:
    if flag is not None:
        return flag
    return total >= _BAR_MIN_ENTRIES and sys.stderr.isatty()


_CSV_FIELDS = (
    "index",
    "time",
    "time_iso",
    "type",
    "actor",
    "subject",
    "bulletin_id",
    "reason",
    "event_id",
    "data",
    "leaf_hash",
)


def _write_entries(out: TextIO, fmt: str, entries: Iterator[LogEntry], bar: _Progress) -> int:
    writer = csv.DictWriter(out, fieldnames=_CSV_FIELDS) if fmt == "csv" else None
    if writer is not None:
        writer.writeheader()
    n = 0
    for e in entries:
        if writer is None:
            # The entry verbatim: its bytes are canonical JSON, what the leaf hash covers.
            out.write(
                f'{{"entry":{e.leaf.decode()},"index":{e.index},'
                f'"leaf_hash":"{b64e(e.leaf_hash)}"}}\n'
            )
        else:
            ev = e.event()
            writer.writerow(
                {
                    "index": e.index,
                    "time": ev["time"],
                    "time_iso": _iso(ev["time"]),
                    "type": ev["type"],
                    "actor": ev["actor"],
                    "subject": ev["subject"],
                    "bulletin_id": ev["bulletin_id"] or "",
                    "reason": ev["reason"] or "",
                    "event_id": ev["event_id"],
                    "data": json.dumps(ev["data"], sort_keys=True, separators=(",", ":")),
                    "leaf_hash": b64e(e.leaf_hash),
                }
            )
        n += 1
        bar.update(n)
    return n


def _until(entries: Iterator[LogEntry], size: int) -> Iterator[LogEntry]:
    for e in entries:
        if e.index >= size:
            return
        yield e


def export_command(args: argparse.Namespace) -> int:
    out_path: Path = args.out
    tmp = out_path.with_name(out_path.name + ".part")
    with _local(args) as local:
        sth = local.log.latest_head()
        size = sth.head.tree_size if sth else 0
        bar = _Progress("export", size, _want_bar(args.progress, size))
        query = {"format": args.format, "out": str(out_path)[-200:]}
        try:
            with tmp.open("w", newline="", encoding="utf-8") as out:
                n = _write_entries(out, args.format, _until(local.log.iter_entries(), size), bar)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ConfigError(f"cannot write {out_path}: {exc.strerror}") from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        bar.update(n, final=True)
        try:
            _record(local, "export", query, n)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(out_path)
    root = sth.head.root_hash if sth else b64e(merkle.EMPTY_ROOT)
    print(f"exported {n} entries to {out_path} ({args.format}): tree size {size}, root {root}")
    return 0


# -------------------------------------------------------------------------------- verify
def _pinned_key(args: argparse.Namespace, settings: Settings) -> VerifyKey | None:
    if args.log_key is not None:
        try:
            text = args.log_key.read_text().strip()
            return VerifyKey(b64d(text, field="--log-key", max_bytes=32))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the log key {args.log_key}") from exc
    return log_verify_key(settings.broker_dir)


def _read_trust_file(path: Path, said: str = "") -> tuple[bytes, str]:
    try:
        return path.read_bytes(), f"{path}{said}"
    except OSError as exc:
        raise ConfigError(f"cannot read the witnesses file {path}{said}") from exc


@dataclass(frozen=True)
class VerifyTrust:
    """The witnesses a command requires, and a note on where they came from (stderr)."""

    witnesses: WitnessTrust | None  # None: --trust-log-key-alone
    note: str = ""


def witness_trust(args: argparse.Namespace, settings: Settings) -> VerifyTrust:
    """The witnesses ``verify``, ``monitor`` and ``istmo db copy`` require
    (docs/audit.md#verifying-with-the-quorum), from, in order:
    ``--witness``/``--witnesses FILE``/``--quorum``; the trust file
    ``$ISTMO_AUDIT_WITNESSES`` names (the auditor's own); the broker's own witnesses file
    (``DATA_DIR/broker/witnesses.json``, or ``ISTMO_WITNESSES_FILE``), said so on stderr.
    Without any of these, and without ``--trust-log-key-alone``, the command refuses.
    """
    file = _read_trust_file(args.witnesses) if args.witnesses is not None else None
    default, note = None, ""
    env = os.environ.get(AUDIT_WITNESSES_ENV, "")
    own = settings.witnesses_path
    given = bool(args.witness) or file is not None or args.quorum is not None
    if not given and not args.trust_log_key_alone:
        if env:
            default = _read_trust_file(Path(env), f" (${AUDIT_WITNESSES_ENV})")
        elif own.is_file():
            default = _read_trust_file(own)
            note = (
                f"istmo: the witnesses are the broker's own list ({own}): it catches a "
                "history rewritten behind that list's back, not one its operator rewrote; "
                "an auditor passes their own with --witnesses FILE"
            )
    trust = required_trust(
        args.witness,
        args.quorum,
        file,
        log_key_alone=args.trust_log_key_alone,
        default=default,
        looked=f"${AUDIT_WITNESSES_ENV} is not set and there is no {own}",
    )
    return VerifyTrust(trust, LOG_KEY_ALONE_WARNING if trust is None else note)


def _ask_witnesses(trust: WitnessTrust, note: SignedNote, size: int) -> str:
    """Refuse a checkpoint older than one a witness cosigned (a replayed checkpoint)."""
    sizes = witness_sizes(trust, note)
    for name, seen in sizes.items():
        if isinstance(seen, int) and seen > size:
            raise LogCorrupt(
                f"audit log altered: witness {name} cosigned size {seen}, beyond the "
                f"checkpoint at {size} this log keeps: it was truncated or rolled back"
            )
    said = [f"{n} {v}" for n, v in sizes.items()]
    return f"; witnesses' latest sizes: {', '.join(said) or 'none asked (no URLs)'}"


def _witnessed(
    local: _Local,
    key: VerifyKey,
    trust: WitnessTrust,
    latest: TreeHead | None,
    *,
    ask: bool = False,
) -> str:
    """Check the stored checkpoint has the quorum and is a head of this log; say what."""
    note = read_checkpoint(local.settings.broker_dir)
    if note is None:
        raise QuorumMissing(
            f"audit log not witnessed: no checkpoint in {local.settings.broker_dir}/checkpoint",
            hint="are the witnesses running and configured (DATA_DIR/broker/witnesses.json)?",
        )
    try:
        cp, good = trust.verify(note, CosignerKey(DEFAULT_ORIGIN, key, NOTE_ALG))
    except SignatureError as exc:
        raise QuorumMissing(f"audit log not witnessed: {exc}") from exc
    head = local.log.head(cp.size)
    size = latest.tree_size if latest else 0
    if head is None and cp.size > size:
        raise LogCorrupt(
            f"audit log altered: the witnesses cosigned size {cp.size}, root "
            f"{b64e(cp.root)}, but the log holds {size} entries: it was truncated"
        )
    if head is None or head.head.root() != cp.root:
        raise LogCorrupt(
            f"audit log altered: the witnesses cosigned root {b64e(cp.root)} at size "
            f"{cp.size}; the log's history there is another: it was rewritten"
        )
    after = f"; {size - cp.size} later entries not witnessed yet" if size > cp.size else ""
    if ask:
        after += _ask_witnesses(trust, note, cp.size)
    if latest is not None and cp.size > size:
        # The sequencer went on after verify's snapshot: that head is checked here, and the
        # verified tree must be a prefix of it.
        try:
            verify_tree_head(head, key, DEFAULT_ORIGIN)
            merkle.verify_consistency(
                size, cp.size, latest.root(), cp.root, local.log.consistency_proof(size, cp.size)
            )
        except (SignatureError, merkle.ProofError) as exc:
            raise LogCorrupt(
                f"audit log altered: the verified head at {size} does not lead to the "
                f"cosigned tree at {cp.size}: {exc}"
            ) from exc
        after = f" (the log grew from {size} while it was checked; consistent)"
    return (
        f"witnessed: size {cp.size} cosigned by {len(good)} of {len(trust.witnesses)} "
        f"witnesses (quorum {trust.quorum}: {', '.join(good)}){after}"
    )


def verify_command(args: argparse.Namespace) -> int:
    if args.ask_witnesses and args.trust_log_key_alone:
        raise ConfigError(f"--ask-witnesses asks witnesses: it contradicts {LOG_KEY_ALONE_FLAG}")
    with _local(args) as local:
        chosen = witness_trust(args, local.settings)
        trust = chosen.witnesses
        key = _pinned_key(args, local.settings)
        if key is None:
            if local.log.size() == 0:
                print("the audit log is empty: nothing to verify yet")
                return 0
            raise ConfigError(
                f"no log key in {local.settings.broker_dir}: pass the log's public key with "
                "--log-key FILE"
            )
        bar = _Progress("verify", 0, bool(args.progress))
        report = local.log.verify_all(key, DEFAULT_ORIGIN, progress=bar.update)
        bar.update(report.entries, final=True)
        if report.first is not None:
            more = f" ({report.problems - 1} further problems)" if report.problems > 1 else ""
            raise LogCorrupt(
                f"audit log altered: first bad index {report.first.index}: "
                f"{report.first.message}{more}"
            )
        latest = report.latest
        witnessed = (
            _witnessed(local, key, trust, latest, ask=args.ask_witnesses)
            if trust is not None
            else None
        )
    print(
        f"verified {report.entries} entries and {report.heads} signed tree heads "
        f"in {report.seconds:.2f} s (key {key.kid})"
    )
    if latest is not None:
        print(
            f"latest head: size {latest.tree_size}, root {latest.root_hash}, "
            f"signed {_iso(latest.timestamp)}"
        )
    if witnessed is not None:
        print(witnessed)
    if report.pending:
        print(f"{report.pending} events wait for the sequencer")
    if chosen.note:
        print(chosen.note, file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------- monitor
def _load_state(path: Path) -> MonitorState | None:
    try:
        return MonitorState.parse(path, path.read_bytes())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read the monitor state {path}: {exc.strerror}") from exc


def _save_state(state: MonitorState) -> None:
    tmp = state.path.with_name(state.path.name + ".tmp")
    tmp.write_bytes(state.encode())
    os.replace(tmp, state.path)


def _alarm(state: MonitorState, kind: str, message: str, *heads: SignedTreeHead) -> int:
    """Keep the heads as evidence, stop trusting the log, and say so."""
    state.raise_alarm(kind, message, _iso(SYSTEM_CLOCK.now_ms()), heads)
    _save_state(state)
    kept = f"; {len(heads)} tree heads kept as evidence" if heads else ""
    print(f"istmo: ALARM: {message}{kept} in {state.path}", file=sys.stderr)
    return ALARM_EXIT


def monitor_command(args: argparse.Namespace) -> int:
    state = _load_state(args.state)
    if state is not None and state.alarm is not None:
        print(
            f"istmo: ALARM: the log is not trusted since {state.alarm.get('at')}: "
            f"{state.alarm.get('message')} (evidence in {state.path})",
            file=sys.stderr,
        )
        return ALARM_EXIT
    with _local(args) as local:
        chosen = witness_trust(args, local.settings)
        if state is None:
            key = _pinned_key(args, local.settings)
            if key is None:
                raise ConfigError(
                    f"no log key in {local.settings.broker_dir} to pin: pass --log-key FILE"
                )
            state = MonitorState(args.state, b64e(key.public), DEFAULT_ORIGIN)
        key = VerifyKey(b64d(state.log_key, field="pinned log key", max_bytes=32))
        if args.log_key is not None and _pinned_key(args, local.settings) != key:
            raise ConfigError(f"--log-key is not the key pinned in {state.path}")
        sth = local.log.latest_head()
        last = state.head
        if sth is None:
            if last is None:
                print("the log has no signed tree head yet")
                code = 0
            else:
                code = _alarm(
                    state,
                    "rollback",
                    f"the log has no tree head, but size {last.head.tree_size} was verified",
                    last,
                )
        else:
            code = _check_new_head(local, state, key, last, sth, chosen.witnesses)
    if chosen.note:
        print(chosen.note, file=sys.stderr)
    return code


def _check_new_head(
    local: _Local,
    state: MonitorState,
    key: VerifyKey,
    last: SignedTreeHead | None,
    sth: SignedTreeHead,
    trust: WitnessTrust | None,
) -> int:
    log = local.log
    # 1. The new head is signed by the pinned key for the pinned log.
    try:
        new = verify_tree_head(sth, key, state.origin)
    except SignatureError as exc:
        heads = (last, sth) if last else (sth,)
        return _alarm(state, "bad_signature", f"the log's tree head: {exc}", *heads)
    if last is None:
        seen = (
            f"pinned log key {key.kid} for {state.origin}; tree head size {new.tree_size}, "
            f"root {new.root_hash}, signed {_iso(new.timestamp)}"
        )
    else:
        old: TreeHead = last.head
        # 2. It neither rolls back nor forks the last verified one.
        try:
            check_monotonic(old, new)
        except TreeHeadConflict as exc:
            return _alarm(state, exc.code, f"{exc.code.replace('_', ' ')}: {exc}", last, sth)
        # 3. It extends it: a consistency proof from the store, checked against both roots.
        if new.tree_size > old.tree_size:
            try:
                proof = log.consistency_proof(old.tree_size, new.tree_size)
                merkle.verify_consistency(
                    old.tree_size, new.tree_size, old.root(), new.root(), proof
                )
            except (LookupError, merkle.ProofError) as exc:
                return _alarm(
                    state,
                    "fork",
                    f"fork: the log at size {new.tree_size} does not extend the head at size "
                    f"{old.tree_size} seen before ({exc})",
                    last,
                    sth,
                )
            said = f"consistent with size {old.tree_size} ({len(proof)}-hash proof)"
        else:
            said = "unchanged"
        seen = f"tree head size {new.tree_size}, root {new.root_hash}: {said}"
    if trust is None:  # --trust-log-key-alone: the signed head is adopted on the key alone
        state.head = sth
        _save_state(state)
        print(seen)
        return 0
    # 4. The witness quorum cosigned a head of this log; only that head is adopted.
    print(seen)
    return _witnessed_head(local, state, key, last, sth, new, trust) or 0


def _witnessed_head(
    local: _Local,
    state: MonitorState,
    key: VerifyKey,
    last: SignedTreeHead | None,
    sth: SignedTreeHead,
    new: TreeHead,
    trust: WitnessTrust,
) -> int | None:
    """Steps 4-6 of ``_check_new_head``: adopt the witnessed head, alarm, or raise."""
    broker_dir = local.settings.broker_dir
    stays = f"size {last.head.tree_size}" if last else "no head (nothing saved)"
    try:
        cp, good = cosigned_checkpoint(
            trust, read_checkpoint(broker_dir), key, state.origin, f"{broker_dir}/checkpoint"
        )
    except QuorumMissing as exc:
        raise QuorumMissing(
            f"{exc}; tree head size {new.tree_size} seen, not adopted: the monitor stays at "
            f"{stays}",
            hint="are the witnesses running and configured (DATA_DIR/broker/witnesses.json)?",
        ) from exc
    # 5. The log's own head at the cosigned size has the cosigned root.
    at = local.log.head(cp.size)
    evidence = tuple(h for h in (last, sth, at) if h is not None)
    try:
        witnessed = witnessed_head(cp, at, key, state.origin, new.tree_size)
    except SignatureError as exc:
        return _alarm(state, "bad_signature", f"the log's head at size {cp.size}: {exc}", *evidence)
    except TreeHeadConflict as exc:
        return _alarm(state, exc.code, f"{exc.code}: {exc}", *evidence)
    # 6. The latest head extends the witnessed one.
    if new.tree_size > cp.size:
        try:
            proof = local.log.consistency_proof(cp.size, new.tree_size)
            merkle.verify_consistency(cp.size, new.tree_size, cp.root, new.root(), proof)
        except (LookupError, merkle.ProofError) as exc:
            return _alarm(
                state,
                "fork",
                f"fork: the log at size {new.tree_size} does not extend the witnessed head at "
                f"size {cp.size} ({exc})",
                *evidence,
            )
    kept = last if last is not None and last.head.tree_size >= cp.size else witnessed
    if kept is witnessed:
        state.head = witnessed
        _save_state(state)
    print(witnessed_line(trust, cp, good, new, kept.head, adopted=kept is witnessed))
    return None
