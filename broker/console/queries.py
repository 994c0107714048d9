"""What the auditor's log and integrity pages read: a newest-first page of the log with
the console's filters, one entry with everything a browser needs to verify it, tree heads,
a full verification and a consistency check.

Reads only (the console records its own ``audit.queried`` events). Bounded: pages of at
most ``MAX_PAGE`` rows.

Left to others: the log and its proofs (``broker.audit.log``, ``broker.audit.merkle``); chart
figures and the flow of one bulletin (``broker.console.figures``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, text

from broker.audit.events import UnknownSet, decided_groups
from broker.audit.log import LogEntry, event_clauses, same_event, shared_log
from broker.audit.merkle import verify_consistency
from broker.audit.sequencer import DEFAULT_ORIGIN, log_verify_key
from broker.directory.service import DirectoryService
from broker.store.registry import Registry
from schemas.audit import AuditEvent
from schemas.canonical import b64e
from schemas.errors import AuditStoreError, ConfigError, EnvelopeError, SignatureError
from schemas.keys import VerifyKey
from schemas.treehead import parse_signed_tree_head, verify_tree_head

__all__ = [
    "LogFilter",
    "check_consistency",
    "entry_with_proof",
    "log_key_info",
    "log_page",
    "tree_heads",
    "verify_log",
]

MAX_PAGE = 200
_DATA_JSON_LIMIT = 4000

_log = shared_log


@dataclass(frozen=True)
class LogFilter:
    """The log page's filters; every one given must match."""

    agency: str | None = None
    state: str | None = None
    sector: str | None = None
    topic: str | None = None
    type: str | None = None
    decision: str | None = None  # permitted | denied
    since_ms: int | None = None
    until_ms: int | None = None

    def as_query(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


# A bulletin.decided event (ADR 8) holds both the permitted and the denied candidates of
# its bulletin: it matches either filter, and lists each candidate's outcome.
_DECISION_TYPES = {
    "permitted": ("bulletin.routed", "bulletin.decided"),
    "denied": ("bulletin.denied", "bulletin.decided"),
}


def _leaf_ok(leaf: bytes, leaf_hash: bytes, outbox: tuple[Any, ...] | None) -> bool:
    """The row check a page can make: the bytes hash to the stored leaf hash, parse as an
    audit event, and equal the outbox row they came from. (A careful attacker who rewrites
    all three is caught by the inclusion proof, which the browser checks.)"""
    if not hmac.compare_digest(hashlib.sha256(b"\x00" + leaf).digest(), leaf_hash):
        return False
    try:
        AuditEvent.model_validate_json(leaf)
    except ValueError:
        return False
    return outbox is not None and same_event(outbox, leaf)


def log_page(
    registry: Registry,
    directory: DirectoryService,
    f: LogFilter,
    *,
    before: int | None,
    after: int | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Up to ``limit`` entries matching ``f``, newest first: those below ``before``, or the
    ones just above ``after`` (the newer page), or the newest."""
    limit = max(1, min(limit, MAX_PAGE))
    where, params = event_clauses(
        agency=f.agency, type_=f.type, since_ms=f.since_ms, until_ms=f.until_ms
    )
    params["limit"] = limit
    expanding: list[str] = []
    if f.state is not None or f.sector is not None:
        ids = [
            a.id
            for a in registry.agencies()
            if (f.state is None or a.state == f.state)
            and (f.sector is None or a.sector == f.sector)
        ]
        where.append("(a.actor IN :ids OR a.subject IN :ids)")
        params["ids"] = ids or ["-none-"]
        expanding.append("ids")
    if f.topic is not None:
        where.append(
            "a.bulletin_id IN (SELECT t.bulletin_id FROM audit_event t "
            "WHERE t.type = 'bulletin.accepted' AND t.data LIKE :topic_like)"
        )
        params["topic_like"] = f'%"topic":"{f.topic}"%'  # topics are [a-z-]: no LIKE escapes
    if f.decision is not None:
        where.append("a.type IN :decision_types")
        params["decision_types"] = list(_DECISION_TYPES[f.decision])
        expanding.append("decision_types")
    order = "DESC"
    if before is not None:
        where.append('e."index" < :before')
        params["before"] = before
    elif after is not None:
        where.append('e."index" > :after')
        params["after"] = after
        order = "ASC"
    clause = " AND ".join(where) or "1 = 1"
    q = text(
        'SELECT e."index", e.leaf, e.leaf_hash, a.event_id, a.type, a.time, a.actor, '  # noqa: S608  # fixed clauses, values bound
        "a.subject, a.bulletin_id, a.reason, a.data "
        "FROM log_entry e LEFT JOIN audit_event a ON a.seq = e.event_seq "
        f'WHERE {clause} ORDER BY e."index" {order} LIMIT :limit'
    )
    if expanding:
        q = q.bindparams(*(bindparam(name, expanding=True) for name in expanding))
    with registry.connect() as conn:
        rows = conn.execute(q, params).all()
    out = []
    for r in rows:
        leaf, leaf_hash = bytes(r[1]), bytes(r[2])
        outbox = tuple(r[3:11]) if r[3] is not None else None
        try:
            shown = json.loads(leaf)
        except ValueError:
            shown = None
        if not isinstance(shown, dict):
            shown = {}
        out.append(
            {
                "index": int(r[0]),
                "ok": _leaf_ok(leaf, leaf_hash, outbox),
                "type": str(shown.get("type", "?"))[:40],
                "time": shown.get("time") if isinstance(shown.get("time"), int) else None,
                "actor": str(shown.get("actor", ""))[:200],
                "subject": str(shown.get("subject", ""))[:200],
                "bulletin_id": shown.get("bulletin_id"),
                "reason_for": _reason_for(shown, f.agency, registry),
                "reason": _reason(shown, f.agency, registry),
            }
        )
    if order == "ASC":
        out.reverse()
    return out


def _decided_for(shown: dict[str, Any], agency: str | None, registry: Registry) -> str | None:
    """For a ``bulletin.decided`` entry found by ``agency``, what was decided for it
    (``default_deny``), which its row would not show otherwise; a group written by
    reference is read from its agency set (ADR 36)."""
    data = shown.get("data")
    if agency and shown.get("type") == "bulletin.decided" and isinstance(data, dict):
        try:
            groups = decided_groups(data, registry.agency_set)
        except UnknownSet:
            return None
        for g in groups:
            if agency in g.agencies:
                return g.outcome
    return None


def _reason_for(shown: dict[str, Any], agency: str | None, registry: Registry) -> str | None:
    """The agency a row's reason is about, when it is one candidate's outcome."""
    return agency if _decided_for(shown, agency, registry) is not None else None


def _reason(shown: dict[str, Any], agency: str | None, registry: Registry) -> object:
    """An entry's reason (a code where the broker wrote one), or the outcome for the
    agency searched for ("jm-police: default_deny" on the page)."""
    outcome = _decided_for(shown, agency, registry)
    return outcome if outcome is not None else shown.get("reason")


def _log_key(broker_dir: Path | None) -> VerifyKey | None:
    """The log's public key, kept in the data directory's ``broker`` directory (on either
    database); None where there is none yet."""
    if broker_dir is None:
        return None
    try:
        return log_verify_key(broker_dir)
    except ConfigError:
        return None


def log_key_info(broker_dir: Path | None) -> dict[str, str] | None:
    key = _log_key(broker_dir)
    if key is None:
        return None
    return {"kid": key.kid, "public": b64e(key.public), "origin": DEFAULT_ORIGIN}


def entry_with_proof(url: str, index: int, *, broker_dir: Path | None) -> dict[str, Any] | None:
    """Entry ``index``, its fields, and what the browser needs to verify it: the stored
    bytes, the latest signed tree head as stored, an inclusion proof into it, the log key.
    None if there is no such entry."""
    log = _log(url)
    entry: LogEntry | None = log.entry(index)
    if entry is None:
        return None
    try:
        fields = json.loads(entry.leaf)
    except ValueError:
        fields = None
    head_raw = log.head_document(None)
    size = 0
    proof: list[str] = []
    if head_raw is not None:
        try:
            size = parse_signed_tree_head(head_raw).head.tree_size
        except EnvelopeError:
            size = 0
        if index < size:
            try:
                proof = [b64e(h) for h in log.inclusion_proof(index, size)]
            except (LookupError, ValueError, AuditStoreError):
                proof = []
    key = log_key_info(broker_dir)
    check = {
        "index": index,
        "leaf": b64e(entry.leaf),
        "tree_size": size,
        "proof": proof,
        "head": head_raw.decode("utf-8", "replace") if head_raw is not None else None,
        "log_key": key["public"] if key else None,
        "kid": key["kid"] if key else None,
        "origin": DEFAULT_ORIGIN,
    }
    return {
        "index": index,
        "fields": fields if isinstance(fields, dict) else None,
        "data_items": _data_items(fields),
        "leaf_text": entry.leaf.decode("utf-8", "replace")[:_DATA_JSON_LIMIT],
        "leaf_hash": b64e(entry.leaf_hash),
        "covered": index < size,
        "check": check,
    }


def _data_items(fields: Any) -> list[tuple[str, str]]:
    """An event's ``data`` as (key, text) rows, lists joined: for reading, not parsing."""
    data = fields.get("data") if isinstance(fields, dict) else None
    if not isinstance(data, dict):
        return []
    rows = []
    for key in sorted(data)[:64]:
        value = data[key]
        if isinstance(value, list):
            text_ = ", ".join(str(v) for v in value)
        else:
            text_ = "" if value is None else str(value)
        rows.append((str(key)[:200], text_[:2000]))
    return rows


def tree_heads(url: str, *, broker_dir: Path | None, limit: int = 100) -> list[dict[str, Any]]:
    """The newest ``limit`` signed tree heads, newest first, each checked against the log
    key on the server too (``sig_ok``)."""
    log = _log(url)
    key = _log_key(broker_dir)
    with log._read() as conn:  # one snapshot; AuditLog offers no newest-first page
        rows = conn.execute(
            text("SELECT tree_size, raw FROM tree_head ORDER BY tree_size DESC LIMIT :n"),
            {"n": max(1, min(limit, 1000))},
        ).all()
    out = []
    for size, raw in rows:
        doc = bytes(raw)
        item: dict[str, Any] = {"size": int(size), "raw": doc.decode("utf-8", "replace")}
        try:
            sth = parse_signed_tree_head(doc)
            item.update(
                root=sth.head.root_hash, timestamp=sth.head.timestamp, kid=sth.kid, sig_ok=False
            )
            if key is not None:
                verify_tree_head(sth, key, DEFAULT_ORIGIN)
                item["sig_ok"] = True
        except (EnvelopeError, SignatureError):
            item.setdefault("root", "?")
            item.setdefault("timestamp", None)
            item.setdefault("kid", "?")
            item["sig_ok"] = False
        out.append(item)
    return out


def check_consistency(url: str, old: int, new: int, *, broker_dir: Path | None) -> dict[str, Any]:
    """Whether the signed tree of size ``new`` extends the signed tree of size ``old``:
    both heads verified under the log key, then an RFC 9162 consistency proof."""
    log = _log(url)
    key = _log_key(broker_dir)
    result: dict[str, Any] = {"old": old, "new": new, "ok": False, "n": 0}
    if key is None:
        result["message"] = "the log key is not available"
        return result
    if old > new:
        result["message"] = f"size {old} is above size {new}"
        return result
    try:
        raws: dict[int, bytes] = {}
        for size in (old, new):
            raw = log.head_document(size)
            if raw is None:
                result["message"] = f"the log signed no tree head at size {size}"
                return result
            raws[size] = raw
        proof = log.consistency_proof(old, new)
        # What the browser needs to check it again on its own (static/verify.js), given
        # before the server's own check so that a bad head is judged twice.
        result["check"] = {
            "old": old,
            "new": new,
            "old_head": raws[old].decode("utf-8", "replace"),
            "new_head": raws[new].decode("utf-8", "replace"),
            "proof": [b64e(h) for h in proof],
            "log_key": b64e(key.public),
            "kid": key.kid,
            "origin": DEFAULT_ORIGIN,
        }
        heads = {
            size: verify_tree_head(parse_signed_tree_head(raw), key, DEFAULT_ORIGIN)
            for size, raw in raws.items()
        }
        verify_consistency(old, new, heads[old].root(), heads[new].root(), proof)
    except (EnvelopeError, SignatureError, LookupError, ValueError, AuditStoreError) as exc:
        result["message"] = str(exc)[:300] or type(exc).__name__
        return result
    result.update(ok=True, n=len(proof))
    return result


def verify_log(url: str, *, broker_dir: Path | None, at: int) -> dict[str, Any]:
    """Run ``AuditLog.verify_all`` (the same check as ``istmo audit verify``) at ``at``
    (epoch ms, reported with the result)."""
    key = _log_key(broker_dir)
    if key is None:
        return {
            "ok": False,
            "at": at,
            "seconds": 0.0,
            "index": 0,
            "message": "the log key is not available",
            "entries": 0,
            "heads": 0,
        }
    report = _log(url).verify_all(key, DEFAULT_ORIGIN)
    return {
        "ok": report.ok,
        "at": at,
        "seconds": round(report.seconds, 2),
        "entries": report.entries,
        "heads": report.heads,
        "index": report.first.index if report.first else None,
        "message": report.first.message[:300] if report.first else None,
        "problems": report.problems,
    }
