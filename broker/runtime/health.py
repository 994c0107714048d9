"""Operational alarms: ``istmo health``, what an operator must act on before a user notices.

Each check measures one thing and grades it ``ok``, ``warn`` or ``alarm`` against a named
threshold; the command exits 0 when all are ok, 1 on a warning and 3 on an alarm (the audit
monitor's alarm code), and 2 when it could not measure at all (no stack, bad settings), so
cron or any monitoring agent can page on it. The checks, and the
fault each stands for (TEST-CATALOGUE.md §2):

- ``nats.store``: JetStream storage used against the server's ``max_file_store`` (read from
  nats-server's monitoring port) and the free space of the store's volume where it is on
  this machine; ``nats.stream.<name>``: an Istmo stream against its own byte limit (F-16).
  A full store refuses publishes; the alarm comes first.
- ``database.volume``: free space of the SQLite database's volume (F-17). A full volume
  stops the relay accepting bulletins. (PostgreSQL's volume is the database server's to
  watch; the check says so.)
- ``retention.<agency>``: how old the oldest delivery waiting for an agency is, against the
  delivery stream's ``max_age`` (F-19): at 80 % of it (headroom below 20 %) bulletins are
  about to expire unread.
- ``ingest.backlog``: how long the oldest bulletin no relay has taken yet has waited: no
  relay running, or relays far behind.
- ``audit.sequencer``: how long the oldest audit event has waited for the sequencer, against
  the log's maximum merge delay of 60 s (F-22).
- ``dead_letters``: deliveries and bulletins waiting for a redrive (F-20).

The grading functions are pure; the collectors read NATS, the monitoring endpoint and the
database, each bounded in time and count. Nothing here changes any state.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from broker.bus.streams import MAX_AGENCIES
from schemas.subjects import (
    DELIVER_STREAM,
    INGEST_STREAM,
    RELAY_INGEST_DURABLE,
    deliver_durables,
    deliver_filter_subjects,
)

__all__ = [
    "CANNOT_CHECK_EXIT",
    "Check",
    "HealthReport",
    "age_check",
    "collect",
    "consumers_check",
    "database_checks",
    "dead_letter_check",
    "exit_code",
    "retention_check",
    "usage_check",
    "volume_check",
]

Level = Literal["ok", "warn", "alarm"]
_RANK: dict[Level, int] = {"ok": 0, "warn": 1, "alarm": 2}
EXIT_CODES: dict[Level, int] = {"ok": 0, "warn": 1, "alarm": 3}
CANNOT_CHECK_EXIT = 2

# Thresholds. Storage: the share used of a limit. Volumes: the share still free.
STORE_WARN, STORE_ALARM = 0.80, 0.90
VOLUME_WARN, VOLUME_ALARM = 0.20, 0.10
# Retention: the oldest waiting delivery's age as a share of the stream's max_age. The
# catalogue's F-19 alarm is "headroom below 20 %".
RETENTION_WARN, RETENTION_ALARM = 0.50, 0.80
# Seconds the oldest bulletin may wait for a relay.
BACKLOG_WARN_S, BACKLOG_ALARM_S = 60.0, 600.0
# Seconds the oldest audit event may wait for the sequencer (the log's MMD is 60 s).
AUDIT_WARN_S, AUDIT_ALARM_S = 10.0, 60.0

_PARALLEL = 32  # JetStream API requests in flight at once
_MONITOR_TIMEOUT_S = 3.0
_MONITOR_MAX_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Check:
    """One measurement and its grade. ``value`` is the measured share or age in seconds."""

    name: str
    level: Level
    detail: str
    value: float | None = None


@dataclass(frozen=True)
class HealthReport:
    checks: tuple[Check, ...]

    @property
    def level(self) -> Level:
        return worst(c.level for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {"level": self.level, "checks": [asdict(c) for c in self.checks]}


def worst(levels: Iterable[Level]) -> Level:
    return max(levels, key=_RANK.__getitem__, default="ok")


def exit_code(level: Level) -> int:
    return EXIT_CODES[level]


def _grade(value: float, warn: float, alarm: float) -> Level:
    if value >= alarm:
        return "alarm"
    return "warn" if value >= warn else "ok"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _n(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def usage_check(name: str, used: int, limit: int, what: str) -> Check:
    """``used`` bytes of ``limit`` (a limit <= 0 means none: nothing to grade)."""
    if limit <= 0:
        return Check(name, "ok", f"{what}: {_size(used)} used, no limit set")
    share = used / limit
    level = _grade(share, STORE_WARN, STORE_ALARM)
    detail = f"{what}: {_size(used)} of {_size(limit)} used ({share:.0%})"
    if level != "ok":
        detail += "; when it is full, publishes are refused"
    return Check(name, level, detail, round(share, 4))


def volume_check(name: str, path: str, free: int, total: int, what: str) -> Check:
    """The volume holding ``path``: ``free`` of ``total`` bytes."""
    share = free / total if total > 0 else 0.0
    level: Level = "alarm" if share < VOLUME_ALARM else "warn" if share < VOLUME_WARN else "ok"
    detail = f"{what} volume ({path}): {_size(free)} free of {_size(total)} ({share:.0%})"
    if level != "ok":
        detail += "; free space before it fills"
    return Check(name, level, detail, round(share, 4))


def retention_check(agency: str, waiting: int, age_s: float, max_age_s: float) -> Check:
    """An agency's oldest waiting delivery, ``age_s`` old, expires at ``max_age_s``."""
    name = f"retention.{agency}"
    if waiting == 0:
        return Check(name, "ok", f"{agency}: nothing waiting", 0.0)
    if max_age_s <= 0:
        return Check(name, "ok", f"{agency}: {waiting} waiting, deliveries never expire")
    share = age_s / max_age_s
    level = _grade(share, RETENTION_WARN, RETENTION_ALARM)
    detail = (
        f"{agency}: {_n(waiting, 'delivery', 'deliveries')} waiting, the oldest for "
        f"{_span(age_s)} ({share:.0%} of the {_span(max_age_s)} deliveries are kept)"
    )
    if level != "ok":
        left = max(0.0, max_age_s - age_s)
        detail += f"; it expires unread in {_span(left)} unless the agency receives"
    return Check(name, level, detail, round(share, 4))


def age_check(
    name: str, waiting: int, age_s: float, warn_s: float, alarm_s: float, what: tuple[str, str]
) -> Check:
    """``waiting`` items, the oldest ``age_s`` old; ``what`` names one item and several."""
    if waiting == 0:
        return Check(name, "ok", f"no {what[1]} waiting", 0.0)
    level = _grade(age_s, warn_s, alarm_s)
    return Check(
        name, level, f"{_n(waiting, *what)} waiting, the oldest for {_span(age_s)}", round(age_s, 1)
    )


# --------------------------------------------------------------------------- collectors
def _monitor_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=_MONITOR_TIMEOUT_S) as resp:  # noqa: S310  # http on loopback or the operators' monitoring URL
        loaded: dict[str, Any] = json.loads(resp.read(_MONITOR_MAX_BYTES))
        return loaded


def _node_checks(name: str, base: str) -> list[Check]:
    try:
        jsz = _monitor_json(base.rstrip("/") + "/jsz")
    except (OSError, ValueError) as exc:  # URLError is an OSError
        return [Check(name, "alarm", f"nats-server monitoring at {base} does not answer: {exc}")]
    config = jsz.get("config") or {}
    used = int(jsz.get("storage", 0) or 0)  # not reserved_storage: room promised, not used
    limit = int(config.get("max_storage", 0) or 0)
    checks = [usage_check(name, used, limit, f"JetStream store at {base}")]
    store_dir = config.get("store_dir")
    if isinstance(store_dir, str) and Path(store_dir).is_dir():
        disk = shutil.disk_usage(store_dir)
        checks.append(
            volume_check(name + ".volume", store_dir, disk.free, disk.total, "JetStream store")
        )
    return checks


async def server_store_checks(monitor_urls: Sequence[str]) -> list[Check]:
    """Each node's JetStream storage against its ``max_file_store``, and the store's volume
    where it is on this machine."""
    checks: list[Check] = []
    for n, base in enumerate(monitor_urls, start=1):
        name = "nats.store" if len(monitor_urls) == 1 else f"nats.store.node{n}"
        checks.extend(await asyncio.to_thread(_node_checks, name, base))
    return checks


async def stream_checks(js: JetStreamContext) -> list[Check]:
    """Every Istmo stream's bytes against its own limit, where it has one."""
    checks: list[Check] = []
    for name in (INGEST_STREAM, DELIVER_STREAM):
        info = await js.stream_info(name)
        limit = int(info.config.max_bytes or -1)
        used = int(info.state.bytes)
        checks.append(usage_check(f"nats.stream.{name}", used, limit, f"stream {name}"))
    return checks


def _age_s(stamp: Any, now: float) -> float:
    return max(0.0, now - stamp.timestamp()) if stamp is not None else 0.0


async def ingest_check(js: JetStreamContext, now: float) -> Check:
    """The oldest bulletin in the ingest stream no relay has taken yet."""
    info = await js.consumer_info(INGEST_STREAM, RELAY_INGEST_DURABLE)
    waiting = int(info.num_pending or 0)
    age = 0.0
    if waiting:
        try:
            msg = await js.get_msg(
                INGEST_STREAM,
                seq=int(info.delivered.stream_seq or 0) + 1,
                subject="istmo.gated.ingest.*",
                next=True,
            )
            age = _age_s(msg.time, now)
        except NotFoundError:
            waiting = 0  # taken meanwhile
    return age_check(
        "ingest.backlog",
        waiting,
        age,
        BACKLOG_WARN_S,
        BACKLOG_ALARM_S,
        ("bulletin for a relay", "bulletins for a relay"),
    )


async def _waiting_on(js: JetStreamContext, durable: str, now: float) -> tuple[int, float] | None:
    """(deliveries waiting on one delivery consumer, the age of the oldest in seconds), or
    None if there is no such consumer."""
    try:
        info = await js.consumer_info(DELIVER_STREAM, durable)
    except NotFoundError:
        return None
    waiting = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
    if not waiting:
        return 0, 0.0
    ages = []
    # What it reads: its own subjects and its group epochs' (ADR 21).
    for subject in info.config.filter_subjects or deliver_filter_subjects(durable):
        try:
            msg = await js.get_msg(
                DELIVER_STREAM,
                seq=int(info.ack_floor.stream_seq or 0) + 1,
                subject=subject,
                next=True,
            )
        except NotFoundError:
            continue
        ages.append(_age_s(msg.time, now))
    return (waiting, max(ages)) if ages else (0, 0.0)  # none: acked or expired meanwhile


async def _retention_one(
    js: JetStreamContext, agency: str, max_age_s: float, now: float
) -> tuple[int, Check] | None:
    """(deliveries waiting on the agency's consumers, the grade of the oldest), or None for
    an agency that has none yet (made when the agency is added, or just after a fresh
    start of a large directory, ADR 39: ``consumers_check`` counts those)."""
    found = [
        r
        for r in await asyncio.gather(*(_waiting_on(js, d, now) for d in deliver_durables(agency)))
        if r is not None
    ]
    if not found:
        return None
    waiting = sum(n for n, _ in found)
    age = max(a for _, a in found)
    return waiting, retention_check(agency, waiting, age, max_age_s)


async def retention_checks(
    js: JetStreamContext, agencies: Sequence[str], now: float
) -> list[Check]:
    """A summary line, then one line per agency with deliveries waiting, oldest first."""
    info = await js.stream_info(DELIVER_STREAM)
    max_age_s = float(info.config.max_age or 0)
    found: list[tuple[int, Check]] = []
    names = list(agencies)[:MAX_AGENCIES]  # every agency a region can hold
    for start in range(0, len(names), _PARALLEL):
        part = names[start : start + _PARALLEL]
        results = await asyncio.gather(*(_retention_one(js, a, max_age_s, now) for a in part))
        found.extend(r for r in results if r is not None)
    lacking = consumers_check(len(names) - len(found))
    busy = sorted((c for n, c in found if n), key=lambda c: -(c.value or 0.0))
    idle = len(found) - len(busy)
    if not busy:
        done = Check(
            "retention", "ok", f"{_n(idle, 'agency', 'agencies')}: no delivery waiting", 0.0
        )
        return [done, *lacking]
    oldest = busy[0]
    summary = Check(
        "retention",
        worst(c.level for c in busy),
        f"{_n(len(busy), 'agency has', 'agencies have')} deliveries waiting, {idle} none; "
        f"oldest: {oldest.detail}",
        oldest.value,
    )
    return [summary, *lacking, *busy]


def consumers_check(missing: int) -> list[Check]:
    """A warning for agencies with no delivery consumer (ADR 39: a fresh start of a large
    directory makes most of them once it is up); none when every agency has them."""
    if missing <= 0:
        return []
    return [
        Check(
            "consumers",
            "warn",
            f"{_n(missing, 'agency has', 'agencies have')} no delivery consumer yet: their "
            "deliveries wait in the stream until it is made (a fresh start makes them "
            "once it is up, else the next directory change does)",
            float(missing),
        )
    ]


def database_checks(db_url: str, pending: int, oldest_ms: int | None, now: float) -> list[Check]:
    checks = []
    if db_url.startswith("sqlite:///"):
        path = Path(db_url.removeprefix("sqlite:///")).parent
        disk = shutil.disk_usage(path)
        checks.append(volume_check("database.volume", str(path), disk.free, disk.total, "database"))
    else:
        checks.append(
            Check(
                "database.volume",
                "ok",
                "PostgreSQL: its volume is watched on the database server, not from here",
            )
        )
    age = max(0.0, now - oldest_ms / 1000) if oldest_ms is not None else 0.0
    checks.append(
        age_check(
            "audit.sequencer",
            pending,
            age,
            AUDIT_WARN_S,
            AUDIT_ALARM_S,
            ("audit event for the sequencer", "audit events for the sequencer"),
        )
    )
    return checks


def rfi_check(overdue: int, oldest_due: int | None, now: float) -> Check:
    """Requests for information past their due time with no answer (ADR 16): counted for
    monitoring, never a warning of the broker's own (their askers see the alarm in
    ``istmo rfi list``; nothing an operator does answers them)."""
    if not overdue:
        return Check("rfis", "ok", "no request for information is overdue", 0.0)
    late = _span(max(now - (oldest_due or now), 0.0))
    return Check(
        "rfis",
        "ok",
        f"{_n(overdue, 'request for information', 'requests for information')} overdue "
        f"with no answer (the oldest due {late} ago); their askers see it in `istmo rfi list`",
        float(overdue),
    )


def dead_letter_check(count: int) -> Check:
    if count == 0:
        return Check("dead_letters", "ok", "no dead letters waiting for a redrive", 0.0)
    return Check(
        "dead_letters",
        "warn",
        f"{count} dead letters wait for a redrive (istmo admin dead-letters)",
        float(count),
    )


async def collect(
    js: JetStreamContext | None,
    *,
    monitor_urls: Sequence[str],
    agencies: Sequence[str],
    local: list[Check],
    bus_error: str | None = None,
) -> HealthReport:
    """Every check; ``local`` holds those read from the database already. With ``js`` None
    (NATS unreachable) the NATS checks become one alarm naming ``bus_error``."""
    now = time.time()
    checks = list(local)
    checks.extend(await server_store_checks(monitor_urls))
    if js is None:
        checks.append(Check("nats", "alarm", bus_error or "NATS is not reachable"))
        return HealthReport(tuple(checks))
    try:
        checks.extend(await stream_checks(js))
        checks.append(await ingest_check(js, now))
        checks.extend(await retention_checks(js, agencies, now))
    except (TimeoutError, NatsError) as exc:
        checks.append(Check("nats", "alarm", f"JetStream did not answer: {exc!r}"))
    return HealthReport(tuple(checks))


# --------------------------------------------------------------------------- command
