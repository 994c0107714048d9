"""Reconciliation (TEST-CATALOGUE F-14): the audit log against the delivery stream.

The audit log, not JetStream, is the system of record: every agency a ``bulletin.decided``
event lists as routed (or, in logs from before ADR 8, every ``bulletin.routed`` event)
says a delivery must exist on ``istmo.deliver.<agency>.<precedence>`` (or, stored by an
Istmo before ADR 7, on ``istmo.deliver.<agency>``). ``reconcile`` lists the routed
(bulletin, recipient) pairs of a time window, scans ``ISTMO_DELIVER`` (headers only) for
the deliveries present, and re-publishes each missing one with its usual
``Nats-Msg-Id = <bulletin>:<recipient>``, recording ``delivery.republished``. The
recipient's SDK drops a bulletin its application already has, so a republish is never a
visible duplicate.

Where the envelope comes from: the delivery stream denies deletes and purges, so a gap
means storage loss, corruption or a deleted stream, and then the other recipients'
copies are usually gone too. So the relay keeps one copy of every accepted envelope in
``ISTMO_ARCHIVE`` (subject ``istmo.archive.<bulletin id>``, deletes and purges denied,
kept as long as deliveries), a different stream from the one that lost it. A copy is
used only if its digest equals the one the audit log recorded at acceptance; a gap with
no good copy is recorded as ``delivery.unrecoverable`` and counted, never silently
absorbed. Still possible: JetStream deduplicates an id for ``duplicate_window`` even after
the message is gone; such a republish is sent again under ``<bulletin>:<recipient>:r<seq>``.

A group epoch's one copy (``istmo.deliver.group.<group>.<epoch>.<precedence>``, ADR 21)
counts as present for every member of that epoch; a missing one is restored as a copy
for each of its routed members, on their own subjects.

Not every missing delivery is a gap (ADR 15): a withdrawn bulletin's copies were removed
on purpose, and an expired one's left with its TTL. Those are left out (``withdrawn``,
``expired``) and never restored.

Idempotent: a second run finds the republished deliveries present. Bounded: at most
``batch`` gaps per run (the report says how many remain).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from broker.audit import events
from broker.bus.batch import Message
from broker.bus.leaves import node_agencies
from broker.bus.streams import add_or_update_stream, bus_unavailable
from broker.clock import SYSTEM_CLOCK, Clock
from broker.store.groups import ready_epochs
from broker.store.recalls import withdrawals
from broker.store.registry import Registry
from schemas.errors import ConfigError, IstmoError
from schemas.ids import parse_bulletin_id
from schemas.labels import Precedence
from schemas.sealing import envelope_digest, parse_envelope
from schemas.subjects import (
    DELIVER_STREAM,
    deliver_subject,
    delivery_msg_id,
    group_copy_id,
    group_delivery_of,
    is_delivery_to,
    is_group_delivery,
)

__all__ = [
    "ARCHIVE_STREAM",
    "ReconcileReport",
    "archive_message",
    "archive_subject",
    "ensure_archive",
    "reconcile",
]

log = logging.getLogger("istmo.reconcile")

ARCHIVE_STREAM = "ISTMO_ARCHIVE"
_ARCHIVE_SUBJECTS = "istmo.archive.*"
MAX_BATCH = 10_000
SCAN_PAGE = 1000
CLOCK_MARGIN_MS = 5 * 60 * 1000  # stream times vs audit times on different clocks


def archive_subject(bulletin_id: str) -> str:
    return f"istmo.archive.{parse_bulletin_id(bulletin_id)}"


async def ensure_archive(js: JetStreamContext) -> None:
    """Create (or update) ``ISTMO_ARCHIVE`` with the delivery stream's replicas and
    retention (a copy is kept exactly as long as the deliveries it can restore).

    Raises:
        BusUnavailable: JetStream does not answer.
        ConfigError: JetStream refuses the configuration.
    """
    try:
        deliver = (await js.stream_info(DELIVER_STREAM)).config
        config = StreamConfig(
            name=ARCHIVE_STREAM,
            subjects=[_ARCHIVE_SUBJECTS],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=deliver.max_age,
            max_msgs_per_subject=1,
            duplicate_window=deliver.duplicate_window,
            deny_delete=True,
            deny_purge=True,
            allow_direct=False,
            num_replicas=deliver.num_replicas or 1,
            allow_atomic=True,  # the relay archives a batch's envelopes as atomic batches
        )
        await add_or_update_stream(js, config)
    except (NatsTimeoutError, NoRespondersError, ServiceUnavailableError) as exc:
        raise bus_unavailable("setting up the envelope archive", exc) from exc
    except APIError as exc:
        raise ConfigError(
            f"JetStream refused stream {ARCHIVE_STREAM}: {exc.description} "
            f"(err_code {exc.err_code})"
        ) from exc


def archive_message(bulletin_id: str, raw: bytes) -> Message:
    """The archive copy of an accepted envelope (ciphertext), for ``publish_batch`` on
    ``ARCHIVE_STREAM``; its id makes a retry stored once."""
    return Message(archive_subject(bulletin_id), raw, f"archive:{bulletin_id}")


@dataclass
class ReconcileReport:
    """What one run found and did."""

    since_ms: int
    routed: int = 0
    present: int = 0
    withdrawn: int = 0  # missing deliveries of withdrawn bulletins, left out (ADR 15)
    expired: int = 0  # missing deliveries of expired bulletins, left out
    scanned: int = 0
    gaps: int = 0
    republished: int = 0
    republished_new_id: int = 0
    unrecoverable: int = 0
    remaining: int = 0
    dry_run: bool = False
    gap_list: list[str] = field(default_factory=list)  # "<bulletin>:<agency>", first 100

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _routed(registry: Registry, since_ms: int) -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for type_ in ("bulletin.decided", "bulletin.routed"):
        after = 0
        while rows := registry.audit_events(type_=type_, after_seq=after, limit=1000):
            for row in rows:
                if row.time < since_ms or not row.bulletin_id:
                    continue
                if row.type == "bulletin.routed":  # written before ADR 8: one per recipient
                    out.add((row.bulletin_id, row.subject))
                    continue
                # Routed groups are always listed in full (ADR 36); the rest may name
                # agency sets, read from the registry.
                for g in events.decided_groups(_data(row.data), registry.agency_set):
                    if g.outcome == "routed":
                        out.update((row.bulletin_id, a) for a in g.agencies)
            after = int(rows[-1].seq or 0)
    return out


def _data(stored: str) -> dict[str, Any]:
    """An event's stored data; empty if it is not a JSON object (`istmo audit verify`
    reports a row edited behind the broker's back)."""
    try:
        value = json.loads(stored)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


async def _present(
    js: JetStreamContext, registry: Registry, since_ms: int, report: ReconcileReport
) -> set[tuple[str, str]]:
    """(bulletin, agency) of every delivery in ISTMO_DELIVER stored since ``since_ms``
    (headers only, through an ephemeral consumer that acks nothing); a group epoch's one
    copy counts for each of its members (ADR 21), except those whose deliveries reach a
    state node, which group copies do not: each must have its own (ADR 30, amendment), and
    one missing is restored on its own subject like any other."""
    shared: dict[tuple[str, int], set[str]] = {}
    start = datetime.fromtimestamp(max(0, since_ms - CLOCK_MARGIN_MS) / 1000, tz=UTC)
    try:
        info = await js.stream_info(DELIVER_STREAM)
    except (NatsTimeoutError, NoRespondersError, ServiceUnavailableError) as exc:
        raise bus_unavailable("reading the delivery stream", exc) from exc
    except NotFoundError as exc:
        raise ConfigError(
            f"stream {DELIVER_STREAM} does not exist: start the stack (or a relay) first"
        ) from exc
    present: set[tuple[str, str]] = set()
    if not info.state.messages:
        return present
    sub = await js.pull_subscribe(
        "istmo.deliver.>",  # both shapes: .<agency>.<precedence> and .<agency>
        stream=DELIVER_STREAM,
        config=ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=start,
            headers_only=True,
            inactive_threshold=30.0,
        ),
    )
    try:
        while True:
            try:
                msgs = await sub.fetch(SCAN_PAGE, timeout=2)
            except TimeoutError:
                break
            for msg in msgs:
                report.scanned += 1
                msg_id = (msg.headers or {}).get("Nats-Msg-Id", "")
                bid, _, rest = msg_id.partition(":")
                agency = rest.split(":", 1)[0]
                if bid and agency and is_delivery_to(msg.subject, agency):
                    present.add((bid, agency))
                elif bid and is_group_delivery(msg.subject):
                    # One copy for a group epoch's members (ADR 21): present for each.
                    group, epoch, _ = group_delivery_of(msg.subject)
                    if msg_id == group_copy_id(bid, group, epoch):
                        shared.setdefault((group, epoch), set()).add(bid)
            if msgs and msgs[-1].metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    if not shared:
        return present
    try:
        on_nodes = await node_agencies(js)
    except (NatsTimeoutError, NoRespondersError, ServiceUnavailableError) as exc:
        raise bus_unavailable("reading the state nodes' streams", exc) from exc
    for pair, members in ready_epochs(registry, list(shared)).items():
        present.update((bid, m) for bid in shared[pair] for m in members - on_nodes)
    return present


def _precedence(raw: bytes) -> Precedence:
    """The precedence of an archived envelope (it parsed when it was archived)."""
    try:
        return parse_envelope(raw).header.labels.precedence
    except (IstmoError, ValueError):
        return Precedence.ROUTINE


async def reconcile(
    js: JetStreamContext,
    registry: Registry,
    *,
    since_ms: int,
    batch: int = 1000,
    dry_run: bool = False,
    actor: str = "reconcile",
    clock: Clock = SYSTEM_CLOCK,
) -> ReconcileReport:
    """Find routed deliveries missing from ISTMO_DELIVER and re-publish them.

    Args:
        since_ms: consider bulletins routed from this time on (epoch ms); older
            deliveries may have expired with the stream's max age.
        batch: re-publish at most this many gaps in this run (1..10000).
        dry_run: only count.
        actor: who runs it, for the audit events.
        clock: the time of the audit events.

    Raises:
        ValueError: ``batch`` out of bounds.
        BusUnavailable: JetStream does not answer.
        AuditStoreError: the audit store refused an event (the run can be repeated).
    """
    if not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"batch must be 1..{MAX_BATCH}, not {batch}")
    report = ReconcileReport(since_ms=since_ms, dry_run=dry_run)
    routed = _routed(registry, since_ms)
    present = await _present(js, registry, since_ms, report)
    report.routed = len(routed)
    report.present = len(routed & present)
    gaps = _left_out(registry, sorted(routed - present), clock.now_s(), report)
    report.gaps = len(gaps)
    report.gap_list = [f"{b}:{a}" for b, a in gaps[:100]]
    todo = gaps[:batch]
    report.remaining = len(gaps) - len(todo)
    if dry_run:
        return report
    envelopes: dict[str, bytes | None] = {}
    for bid, agency in todo:
        if bid not in envelopes:
            envelopes[bid] = await _archived(js, registry, bid)
        raw = envelopes[bid]
        if raw is None:
            report.unrecoverable += 1
            lost = events.delivery_unrecoverable(bid, agency, actor=actor, at=clock.now_ms())
            registry.record([], [lost])
            log.error("delivery of %s to %s is missing and no good copy is left", bid, agency)
            continue
        subject = deliver_subject(agency, _precedence(raw))
        try:
            ack = await js.publish(
                subject, raw, headers={"Nats-Msg-Id": delivery_msg_id(bid, agency)}
            )
            reused = not ack.duplicate
            if ack.duplicate:
                # JetStream still remembers the id of the lost message: send it again
                # under an id of its own (the recipient's SDK dedupes by bulletin id).
                ack = await js.publish(
                    subject,
                    raw,
                    headers={"Nats-Msg-Id": f"{bid}:{agency}:r{ack.seq}"},
                )
                report.republished_new_id += 1
        except (NatsTimeoutError, NoRespondersError, ServiceUnavailableError) as exc:
            raise bus_unavailable("re-publishing a delivery", exc) from exc
        event = events.delivery_republished(
            bid, agency, deliver_seq=ack.seq, same_msg_id=reused, actor=actor, at=clock.now_ms()
        )
        registry.record([], [event])
        report.republished += 1
    return report


def _left_out(
    registry: Registry, missing: list[tuple[str, str]], now_s: int, report: ReconcileReport
) -> list[tuple[str, str]]:
    """``missing`` without the deliveries of withdrawn and expired bulletins, counted in
    ``report``: their copies went on purpose."""
    bids = {bid for bid, _ in missing}
    gone = withdrawals(registry, bids)
    rows = registry.bulletins(bids)
    gaps = []
    for bid, agency in missing:
        expires_at = rows[bid].expires_at if bid in rows else None
        if bid in gone:
            report.withdrawn += 1
        elif expires_at is not None and expires_at <= now_s:
            report.expired += 1
        else:
            gaps.append((bid, agency))
    return gaps


async def _archived(js: JetStreamContext, registry: Registry, bid: str) -> bytes | None:
    """The archived envelope of ``bid`` if it is the one the audit log accepted."""
    row = registry.bulletin(bid)
    if row is None:
        return None
    try:
        msg = await js.get_msg(ARCHIVE_STREAM, subject=archive_subject(bid))
    except NotFoundError:
        return None
    except (NatsTimeoutError, NoRespondersError, ServiceUnavailableError) as exc:
        raise bus_unavailable("reading the envelope archive", exc) from exc
    try:
        digest = envelope_digest(parse_envelope(msg.data or b""))
    except (IstmoError, ValueError):
        return None
    return msg.data if digest == row.envelope_digest else None
