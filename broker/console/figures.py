"""What the pictures and the flow page read, from the integrated log's events: chart
figures over a time window, and the path of one bulletin.

Reads only. Bounded: charts over at most ``MAX_CHART_ROWS`` events, a flow over at most
``MAX_FLOW_EVENTS``.

Left to others: drawing (``broker.console.charts``), the log (``broker.audit.log``).
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter, defaultdict
from typing import Any

from sqlalchemy import bindparam, text

from broker.audit.events import UnknownSet, decided_groups
from broker.store.registry import Registry

__all__ = ["MAX_CHART_ROWS", "bulletin_flow", "chart_stats"]

MAX_CHART_ROWS = 200_000
MAX_FLOW_EVENTS = 5000


# ---------------------------------------------------------------------- charts
def chart_stats(registry: Registry, since_ms: int, until_ms: int) -> dict[str, Any]:
    """Figures for the pictures, from the integrated log's events in [since, until)."""
    q = text(
        "SELECT a.type, a.time, a.actor, a.subject, a.bulletin_id, a.reason, a.data "
        "FROM audit_event a JOIN log_entry e ON e.event_seq = a.seq "
        "WHERE a.time >= :since AND a.time < :until AND a.type IN :types "
        "ORDER BY a.time LIMIT :n"
    ).bindparams(bindparam("types", expanding=True))
    types = [
        "bulletin.accepted",
        "bulletin.decided",
        "bulletin.denied",
        "bulletin.routed",
        "bulletin.received",
    ]
    with registry.connect() as conn:
        rows = conn.execute(
            q, {"since": since_ms, "until": until_ms, "types": types, "n": MAX_CHART_ROWS}
        ).all()
    per_day: dict[str, Counter[str]] = defaultdict(Counter)
    denials: dict[str, Counter[str]] = defaultdict(Counter)
    routed: dict[tuple[str, str], int] = {}
    received: dict[tuple[str, str], int] = {}
    for type_, t, actor, subject, bid, reason, data in rows:
        if type_ == "bulletin.accepted":
            try:
                topic = str(json.loads(data).get("topic", "?"))[:64]
            except (ValueError, AttributeError):
                topic = "?"
            per_day[time.strftime("%Y-%m-%d", time.gmtime(t / 1000))][topic] += 1
        elif type_ == "bulletin.decided" and bid:
            for agency, outcome, _ in _decided(data, registry):
                if outcome == "routed":
                    routed[(bid, agency)] = int(t)
                elif outcome != "unaddressed":
                    denials[agency][outcome] += 1
        elif type_ == "bulletin.denied":  # the per-candidate events of logs before ADR 8
            denials[str(subject)][str(reason or "?")] += 1
        elif type_ == "bulletin.routed" and bid:
            routed[(bid, str(subject))] = int(t)
        elif type_ == "bulletin.received" and bid:
            received[(bid, str(actor))] = int(t)
    waits = [
        (received[k] - t) / 1000 for k, t in routed.items() if k in received and received[k] >= t
    ]
    buckets = [
        ("< 1 s", 1),
        ("1-10 s", 10),
        ("10-60 s", 60),
        ("1-10 min", 600),
        ("10-60 min", 3600),
        ("> 1 h", float("inf")),
    ]
    counts: Counter[str] = Counter()
    for w in waits:
        for label, top in buckets:
            if w < top:
                counts[label] += 1
                break
    topics = sorted({topic for c in per_day.values() for topic in c})
    day_ms = 86_400_000
    all_days = [
        time.strftime("%Y-%m-%d", time.gmtime(t / 1000))
        for t in range(since_ms - since_ms % day_ms, until_ms, day_ms)
    ][-400:]
    return {
        "events": len(rows),
        "days": all_days if per_day else [],
        "topics": topics,
        "per_day": {d: dict(per_day.get(d, {})) for d in all_days} if per_day else {},
        "denials": {a: dict(c) for a, c in sorted(denials.items())},
        "reasons": sorted({r for c in denials.values() for r in c}),
        "delivered": len(routed),
        "received": sum(1 for k in routed if k in received),
        "ack_buckets": [(label, counts[label]) for label, _ in buckets],
        "median_ack_s": round(statistics.median(waits), 2) if waits else None,
    }


# ---------------------------------------------------------------------- flow
def bulletin_flow(registry: Registry, bulletin_id: str) -> dict[str, Any]:
    """The path of one bulletin from its events: originator and labels, acceptance or
    rejection, the decision per candidate with its deciding policies, routed, received."""
    q = text(
        'SELECT e."index", a.type, a.time, a.actor, a.subject, a.reason, a.data '
        "FROM audit_event a JOIN log_entry e ON e.event_seq = a.seq "
        'WHERE a.bulletin_id = :b ORDER BY e."index" LIMIT :n'
    )
    with registry.connect() as conn:
        rows = conn.execute(q, {"b": bulletin_id, "n": MAX_FLOW_EVENTS}).all()
    flow: dict[str, Any] = {
        "events": len(rows),
        "originator": None,
        "accepted": None,
        "rejected": None,
        "labels": {},
        "candidates": {},
    }
    for index, type_, t, actor, subject, reason, data in rows:
        try:
            d = json.loads(data)
        except ValueError:
            d = {}
        if type_ == "bulletin.accepted":
            flow["originator"] = actor
            flow["accepted"] = {
                "time": t,
                "index": index,
                "policy_version": d.get("policy_version"),
            }
            flow["labels"] = {
                k: d[k] for k in ("topic", "classification", "tlp", "rel_to") if k in d
            }
        elif type_ == "bulletin.rejected":
            flow["originator"] = actor
            flow["rejected"] = {"time": t, "index": index, "reason": reason}
        elif type_ == "bulletin.decided":
            for agency, outcome, policy_ids in _decided(data, registry):
                if outcome != "unaddressed":
                    routed = outcome == "routed"
                    _candidate(flow, agency, routed, policy_ids, None if routed else outcome)
                    c = flow["candidates"][agency]
                    c["decided_index"] = index
                    c["routed" if routed else "denied_at"] = t
            flow["originator"] = flow["originator"] or d.get("originator")
        elif type_ in ("bulletin.routed", "bulletin.denied"):  # logs before ADR 8
            routed = type_ == "bulletin.routed"
            _candidate(flow, subject, routed, tuple(d.get("policy_ids") or ()), reason)
            c = flow["candidates"][subject]
            c["decided_index"] = index
            c["routed" if routed else "denied_at"] = t
            flow["originator"] = flow["originator"] or d.get("originator")
        elif type_ == "bulletin.received":
            c = flow["candidates"].setdefault(actor, {"agency": actor})
            c["received"] = t
            c["received_index"] = index
    cands = flow["candidates"].values()
    flow["permitted"] = sum(1 for c in cands if c.get("decision") == "permitted")
    flow["denied"] = sum(1 for c in cands if c.get("decision") == "denied")
    flow["received"] = sum(1 for c in cands if c.get("received"))
    flow["candidates"] = sorted(
        flow["candidates"].values(),
        key=lambda c: (c.get("decision") != "permitted", c["agency"]),
    )
    return flow


def _candidate(
    flow: dict[str, Any],
    agency: str,
    routed: bool,
    policy_ids: tuple[str, ...],
    reason: str | None,
) -> None:
    c = flow["candidates"].setdefault(agency, {"agency": agency})
    c["decision"] = "permitted" if routed else "denied"
    c["policy_ids"] = list(policy_ids)
    c["reason"] = reason


def _decided(data: str, registry: Registry) -> list[tuple[str, str, tuple[str, ...]]]:
    """(agency, outcome, policy ids) of each candidate a ``bulletin.decided`` event
    lists, a group written by reference read from its agency set (ADR 36); nothing from
    data that is not a JSON object (a hand-edited row) or names a set not recorded."""
    try:
        value = json.loads(data)
    except ValueError:
        return []
    if not isinstance(value, dict):
        return []
    try:
        groups = decided_groups(value, registry.agency_set)
    except UnknownSet:
        return []
    return [(a, g.outcome, g.policy_ids) for g in groups for a in g.agencies]
