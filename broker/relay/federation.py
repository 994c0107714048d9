"""A partner link's bookkeeping on one side (ADR 32): the guard's decisions and the
arrivals, audited; each day's counts, signed with the link key; two sides' counts
compared, and a difference audited as an alarm.

The decision itself is ``broker.relay.guard`` (pure); the signed counts and their
comparison are the contract's (``schemas.federation``), so a partner hub that is not
Istmo can compute and check them too. What is not here (not built yet): the process that
takes a link's deliveries from this region's stream and publishes them to the partner
hub, and the partner's relay checking an arrival's signature against this region's
signed directory.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from broker.audit import events
from broker.files import signing_key_file
from broker.relay.guard import GuardDecision, Link, decide, parse_link
from broker.store.registry import Registry
from schemas.errors import ConfigError, EnvelopeError, SignatureError
from schemas.federation import (
    LabelCount,
    LabelSet,
    LinkCounts,
    Side,
    count_labels,
    day_of,
    differences,
    verify_counts,
)
from schemas.ids import AGENCY_ID_PATTERN
from schemas.keys import SigningKey, VerifyKey

__all__ = [
    "CLOCK_SKEW_S",
    "arrive",
    "check_link_name",
    "compare",
    "day_counts",
    "guard",
    "link_key",
    "load_link",
]

# A bulletin's events are recorded after it was created, less the publisher's clock skew
# (the relay allows 2 minutes by default): the day's scan starts an hour before midnight.
CLOCK_SKEW_S = 3600
_TYPES: dict[Side, str] = {"sent": "federation.passed", "received": "federation.arrived"}
_LINK_NAME = re.compile(AGENCY_ID_PATTERN)


def check_link_name(name: str) -> str:
    """``name`` if it is a link name (an agency-id-like token: it names files).

    Raises:
        ConfigError: it is not.
    """
    if _LINK_NAME.fullmatch(name) is None:
        raise ConfigError("a link name is 3-32 of a-z, 0-9 and '-', like eu-siena")
    return name


def load_link(path: Path) -> Link:
    """The link file at ``path``.

    Raises:
        ConfigError: it cannot be read or is not a valid link (the message names the field).
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the link file {path}") from exc
    try:
        return parse_link(raw)
    except EnvelopeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def link_key(broker_dir: Path, link: str) -> SigningKey:
    """This side's signing key for ``link`` (``broker/federation/<link>.key``, 0600),
    made on first use.

    Raises:
        ConfigError: ``link`` is not a link name, or the file holds no key.
    """
    check_link_name(link)
    return signing_key_file(broker_dir / "federation" / f"{link}.key", f"key of link {link}")


def guard(registry: Registry, link: Link, raw: bytes, *, at_ms: int) -> GuardDecision:
    """Decide whether ``raw`` may cross ``link`` and audit the decision
    (``federation.passed`` or ``federation.blocked``) before anything crosses.

    Raises:
        AuditStoreError: the decision could not be recorded (then nothing may cross).
    """
    return _decided(registry, link, raw, at_ms=at_ms, side="sent")


def arrive(registry: Registry, link: Link, raw: bytes, *, at_ms: int) -> GuardDecision:
    """The receiving side's check of a bulletin arrived over ``link``: the same rules
    under this side's link file, audited as ``federation.arrived`` or
    ``federation.blocked`` (side ``received``). Only an arrived one goes on to this
    side's relay.

    Raises:
        AuditStoreError: the arrival could not be recorded.
    """
    return _decided(registry, link, raw, at_ms=at_ms, side="received")


def _decided(
    registry: Registry, link: Link, raw: bytes, *, at_ms: int, side: Literal["sent", "received"]
) -> GuardDecision:
    """The guard's decision on ``raw`` at ``link``, recorded before anything moves: the
    sending side's ``federation.passed`` or the receiving side's ``federation.arrived``,
    else ``federation.blocked`` with the side."""
    d = decide(link, raw, now=at_ms // 1000)
    actor = f"guard:{link.name}" if side == "sent" else f"link:{link.name}"
    if d.passed and d.envelope is not None:
        crossed = events.federation_passed if side == "sent" else events.federation_arrived
        event = crossed(link.name, d.envelope.header, d.to, actor=actor, at=at_ms)
    else:
        header = None if d.envelope is None else d.envelope.header
        event = events.federation_blocked(
            link.name, header, d.to, d.reasons, side=side, actor=actor, at=at_ms
        )
    registry.record([], [event])
    return d


def _day_start(day: str) -> int:
    try:
        return int(datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp())
    except ValueError as exc:
        raise ConfigError(f"--day {day[:20]!r}: give a UTC day like 2026-12-05") from exc


def day_counts(registry: Registry, link: str, side: Side, day: str) -> tuple[LabelCount, ...]:
    """This side's counts of ``link`` for the UTC ``day``: its ``federation.passed``
    (``sent``) or ``federation.arrived`` (``received``) events of bulletins created that
    day, per label set.

    Raises:
        ConfigError: ``day`` is not a date, ``link`` not a link name.
        AuditStoreError: the database refused.
    """
    check_link_name(link)
    start = _day_start(day)
    items: list[tuple[str, LabelSet]] = []
    after = 0
    subject = events.federation_subject(link)
    while True:
        rows = registry.audit_events(
            type_=_TYPES[side],
            subject=subject,
            since_ms=(start - CLOCK_SKEW_S) * 1000,
            after_seq=after,
            limit=1000,
        )
        for row in rows:
            data = json.loads(row.data)
            created = data.get("created_at")
            if not isinstance(created, int) or day_of(created) != day:
                continue
            if row.bulletin_id is None:
                continue
            labels: LabelSet = (
                str(data.get("topic")),
                str(data.get("classification")),
                str(data.get("tlp")),
                tuple(str(h) for h in data.get("handling") or ()),
            )
            items.append((row.bulletin_id, labels))
        if len(rows) < 1000:
            break
        after = rows[-1].seq or after
    return count_labels(items)


def compare(
    sent: LinkCounts, sent_key: VerifyKey, received: LinkCounts, received_key: VerifyKey
) -> list[str]:
    """Every difference between the two sides' counts, after checking each side's
    signature: a counts file that does not verify is itself a difference."""
    problems: list[str] = []
    for c, key, what in ((sent, sent_key, "sent"), (received, received_key, "received")):
        try:
            verify_counts(c, key)
        except (SignatureError, EnvelopeError) as exc:
            problems.append(f"the {what} side's counts do not verify: {exc}")
    if problems:
        return problems
    return differences(sent, received)
