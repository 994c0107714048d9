"""Dead letters: what the broker could not deliver or process, kept and audited, never dropped.

Two ways a message dies (TEST-CATALOGUE F-20):

* **Delivery.** A recipient's handler fails on a bulletin every time: its durable
  consumer (``deliver-<agency>``, or ``urgent-<agency>`` for FLASH and IMMEDIATE; MaxDeliver
  10 with BackOff, see ``broker.bus.streams``) stops offering it after the 10th attempt,
  and nats-server publishes the
  ``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.ISTMO_DELIVER.<consumer>`` advisory.
  Stream ``ISTMO_DEAD_ADVISORIES`` captures those advisories (so none is lost while no
  relay runs); a relay takes each one, copies the undeliverable message to
  ``istmo.dead.deliver.<agency>`` in stream ``ISTMO_DEAD`` and records
  ``delivery.dead_lettered`` (bulletin, recipient, attempts).
* **Ingest.** A bulletin no relay manages to process (every attempt ends in a crash or an
  unexpected error) would be redelivered forever. When an ingest message comes back more
  than ``INGEST_MAX_ATTEMPTS`` times (plus the hand-backs an embargo explains), the relay
  copies it to ``istmo.dead.ingest.<agency>`` and records ``ingest.dead_lettered``, then
  terminates it.

``ISTMO_DEAD`` denies deletes and purges; a copy's ``Nats-Msg-Id`` is derived from the
source stream sequence, so a retried copy is stored once. An operator lists dead letters
(``istmo admin dead-letters``) and, once the agency fixed its handler, re-delivers them
(``istmo admin redrive``): each redrive is a ``delivery.redriven`` (or
``ingest.redriven``) event. The broker never opens a dead letter: it holds ciphertext.

Left to others: reading the audit log (``broker.store.registry``), creating the main streams
(``broker.bus.streams``).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import TypeVar

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
from broker.bus.streams import add_or_update_stream, bus_unavailable
from broker.clock import SYSTEM_CLOCK, Clock
from broker.store.registry import Registry
from schemas.audit import AuditEvent
from schemas.errors import ConfigError, EnvelopeError, IstmoError
from schemas.ids import parse_agency_id
from schemas.labels import Precedence
from schemas.partner_delivery import LINK_HEADER, PARTNER_RECORD_HEADER
from schemas.sealing import parse_envelope
from schemas.subjects import (
    DELIVER_STREAM,
    INGEST_STREAM,
    agency_of_deliver_durable,
    deliver_subject,
    gated_subject,
    is_delivery_to,
    is_group_delivery,
)

__all__ = [
    "ADVISORY_STREAM",
    "DEAD_DURABLE",
    "DEAD_STREAM",
    "INGEST_MAX_ATTEMPTS",
    "REDRIVE_MAX",
    "DeadLetter",
    "dead_letter_ingest",
    "ensure_dead_letters",
    "handle_advisory",
    "ingest_attempts_allowed",
    "list_dead_letters",
    "redrive",
]

log = logging.getLogger("istmo.dead_letters")

DEAD_STREAM = "ISTMO_DEAD"  # istmo.dead.deliver.<agency>, istmo.dead.ingest.<agency>
ADVISORY_STREAM = "ISTMO_DEAD_ADVISORIES"
DEAD_DURABLE = "relay-dead-letters"
_DEAD_SUBJECTS = "istmo.dead.>"
_ADVISORIES = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{DELIVER_STREAM}.*"
_ADVISORY_TYPE = "io.nats.jetstream.advisory.v1.max_deliver"
_MAX_ADVISORY_BYTES = 4096
DEAD_MAX_AGE_S = 365 * 24 * 3600  # a year: an operator has time to redrive
INGEST_MAX_ATTEMPTS = 10
EMBARGO_HANDBACK_S = 3600  # the relay hands an embargoed bulletin back at most this long
REDRIVE_MAX = 1000  # dead letters per redrive command


def dead_subject(kind: str, agency: str) -> str:
    if kind not in ("deliver", "ingest"):
        raise ValueError(f"unknown dead-letter kind {kind!r}")
    return f"istmo.dead.{kind}.{parse_agency_id(agency)}"


T = TypeVar("T")


async def ensure_dead_letters(js: JetStreamContext) -> None:
    """Create (or update) ``ISTMO_DEAD``, ``ISTMO_DEAD_ADVISORIES`` and the relays' shared
    durable on the advisories, with as many replicas as the delivery stream has.

    Raises:
        BusUnavailable: JetStream does not answer.
        ConfigError: JetStream refuses a configuration.
    """
    try:
        info = await js.stream_info(DELIVER_STREAM)
        replicas = info.config.num_replicas or 1
        for config in (
            StreamConfig(
                name=DEAD_STREAM,
                subjects=[_DEAD_SUBJECTS],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                max_age=float(DEAD_MAX_AGE_S),
                duplicate_window=600.0,
                deny_delete=True,
                deny_purge=True,
                allow_direct=False,
                num_replicas=replicas,
            ),
            StreamConfig(
                name=ADVISORY_STREAM,
                subjects=[_ADVISORIES],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                max_age=float(DEAD_MAX_AGE_S),
                allow_direct=False,
                num_replicas=replicas,
            ),
        ):
            await add_or_update_stream(js, config)
        await js.add_consumer(
            ADVISORY_STREAM,
            ConsumerConfig(
                name=DEAD_DURABLE,
                durable_name=DEAD_DURABLE,
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=30.0,
            ),
        )
    except (NatsTimeoutError, NoRespondersError, ServiceUnavailableError) as exc:
        raise bus_unavailable("setting up the dead-letter streams", exc) from exc
    except APIError as exc:
        raise ConfigError(
            f"JetStream refused the dead-letter streams: {exc.description} "
            f"(err_code {exc.err_code})"
        ) from exc


def _precedence_of(data: bytes | None) -> Precedence:
    """The precedence of an envelope; ROUTINE if it does not parse (its recipient's SDK
    refuses such a message anyway)."""
    try:
        return parse_envelope(data or b"").header.labels.precedence
    except (IstmoError, ValueError):
        return Precedence.ROUTINE


def _bulletin_of(data: bytes | None) -> str | None:
    """The bulletin id of an envelope, or None if it does not parse."""
    try:
        return parse_envelope(data or b"").header.bulletin_id
    except (IstmoError, ValueError):
        return None


async def handle_advisory(
    js: JetStreamContext, registry: Registry, raw: bytes, *, clock: Clock = SYSTEM_CLOCK
) -> str | None:
    """Dead-letter the delivery one max_deliver advisory names; idempotent.

    Returns:
        The recipient agency, or None if the advisory is not one of ours (ignored).

    Raises:
        nats errors, TimeoutError, AuditStoreError: transient; the caller leaves the
            advisory unacked and it comes back.
    """
    if len(raw) > _MAX_ADVISORY_BYTES:
        log.warning("ignored an oversized advisory (%d bytes)", len(raw))
        return None
    try:
        adv = json.loads(raw)
        consumer = str(adv["consumer"])
        seq = int(adv["stream_seq"])
        deliveries = int(adv["deliveries"])
        if adv.get("type") != _ADVISORY_TYPE or adv.get("stream") != DELIVER_STREAM:
            return None
        if seq <= 0:
            return None
        agency = agency_of_deliver_durable(consumer)  # either of the agency's two
    except (ValueError, KeyError, TypeError, EnvelopeError):
        log.warning("ignored a malformed max_deliver advisory")
        return None
    msg_id = f"dead:deliver:{seq}"  # the copy's, like its event's: stored once
    bid: str | None = None
    dead_seq: int | None = None
    try:
        msg = await js.get_msg(DELIVER_STREAM, seq)
    except NotFoundError:
        msg = None
    # The agency's own copy, or a group copy its consumer read as a member (ADR 21).
    subject = msg.subject or "" if msg is not None else ""
    if msg is None or not (is_delivery_to(subject, agency) or is_group_delivery(subject)):
        # Gone (max age) before it could be copied: record that, loudly.
        reason = "message_gone"
        log.error("dead letter deliver seq %d for %s is no longer in the stream", seq, agency)
    else:
        reason = "max_deliver"
        bid = _bulletin_of(msg.data)
        ack = await js.publish(
            dead_subject("deliver", agency),
            msg.data or b"",
            headers={
                "Nats-Msg-Id": msg_id,
                "Istmo-Kind": "deliver",
                "Istmo-Agency": agency,
                "Istmo-Bulletin": bid or "",
                "Istmo-Source-Seq": str(seq),
                "Istmo-Deliveries": str(deliveries),
                **_crossed(msg.headers),
            },
        )
        dead_seq = ack.seq
    event = events.delivery_dead_lettered(
        seq,
        agency,
        bulletin_id=bid,
        reason=reason,
        deliveries=deliveries,
        dead_seq=dead_seq,
        at=clock.now_ms(),
    )
    registry.record([], [event])
    log.warning(
        "bulletin %s dead-lettered for %s after %d deliveries", bid or "?", agency, deliveries
    )
    return agency


def ingest_attempts_allowed(data: bytes, stored_at: int) -> int:
    """How many deliveries of an ingest message are normal: ``INGEST_MAX_ATTEMPTS``, plus
    one hand-back per started hour of an embargo set when it was published."""
    try:
        env = parse_envelope(data)
    except (IstmoError, ValueError):
        return INGEST_MAX_ATTEMPTS
    nb = env.header.not_before
    if nb is None or nb <= stored_at:
        return INGEST_MAX_ATTEMPTS
    return INGEST_MAX_ATTEMPTS + math.ceil((nb - stored_at) / EMBARGO_HANDBACK_S) + 1


async def dead_letter_ingest(
    js: JetStreamContext,
    *,
    sender: str,
    seq: int,
    data: bytes,
    deliveries: int,
    clock: Clock = SYSTEM_CLOCK,
) -> tuple[int, AuditEvent]:
    """Copy an ingest message no relay could process to ``istmo.dead.ingest.<sender>``.

    Returns:
        The copy's sequence in ``ISTMO_DEAD`` and the ``ingest.dead_lettered`` event the
        caller commits before it terminates the message.
    """
    msg_id = f"dead:ingest:{seq}"  # the copy's, like its event's: stored once
    bid = _bulletin_of(data)
    ack = await js.publish(
        dead_subject("ingest", sender),
        data,
        headers={
            "Nats-Msg-Id": msg_id,
            "Istmo-Kind": "ingest",
            "Istmo-Agency": sender,
            "Istmo-Bulletin": bid or "",
            "Istmo-Source-Seq": str(seq),
            "Istmo-Deliveries": str(deliveries),
        },
    )
    event = events.ingest_dead_lettered(
        seq, sender, bulletin_id=bid, deliveries=deliveries, dead_seq=ack.seq, at=clock.now_ms()
    )
    return ack.seq, event


# --------------------------------------------------------------------------- operators
@dataclass(frozen=True)
class DeadLetter:
    """One dead letter, as the audit log knows it."""

    kind: str  # "deliver" | "ingest"
    agency: str  # the recipient (deliver) or the publisher (ingest)
    bulletin_id: str | None
    dead_seq: int | None  # where the copy is in ISTMO_DEAD (None: the message was gone)
    source_seq: int
    deliveries: int
    time_ms: int
    redriven: bool

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "agency": self.agency,
            "bulletin_id": self.bulletin_id,
            "dead_seq": self.dead_seq,
            "source_seq": self.source_seq,
            "deliveries": self.deliveries,
            "time_ms": self.time_ms,
            "redriven": self.redriven,
        }


def _events(registry: Registry, type_: str) -> list[AuditEvent]:
    out: list[AuditEvent] = []
    after = 0
    while True:
        rows = registry.audit_events(type_=type_, after_seq=after, limit=1000)
        if not rows:
            return out
        out += [row.to_event() for row in rows]
        after = int(rows[-1].seq or 0)


def list_dead_letters(
    registry: Registry, *, agency: str | None = None, include_redriven: bool = False
) -> list[DeadLetter]:
    """Dead letters from the audit log, oldest first; redriven ones only if asked."""
    redriven = {
        int(e.data["dead_seq"])  # type: ignore[arg-type]  # recorded as an int below
        for t in ("delivery.redriven", "ingest.redriven")
        for e in _events(registry, t)
        if isinstance(e.data.get("dead_seq"), int)
    }
    out = []
    for type_, kind in (("delivery.dead_lettered", "deliver"), ("ingest.dead_lettered", "ingest")):
        for e in _events(registry, type_):
            dead_seq = e.data.get("dead_seq")
            source = e.data.get("deliver_seq", e.data.get("ingest_seq"))
            deliveries = e.data.get("deliveries")
            dl = DeadLetter(
                kind=kind,
                agency=e.subject,
                bulletin_id=e.bulletin_id,
                dead_seq=dead_seq if isinstance(dead_seq, int) else None,
                source_seq=source if isinstance(source, int) else 0,
                deliveries=deliveries if isinstance(deliveries, int) else 0,
                time_ms=e.time,
                redriven=isinstance(dead_seq, int) and dead_seq in redriven,
            )
            if agency is not None and dl.agency != agency:
                continue
            if dl.redriven and not include_redriven:
                continue
            out.append(dl)
    return sorted(out, key=lambda d: d.time_ms)


async def redrive(
    js: JetStreamContext,
    registry: Registry,
    letters: list[DeadLetter],
    *,
    actor: str,
    clock: Clock = SYSTEM_CLOCK,
) -> list[tuple[DeadLetter, str]]:
    """Re-deliver dead letters from their copies in ``ISTMO_DEAD``; audited, idempotent.

    A delivery goes back on ``istmo.deliver.<agency>.<precedence>`` (the recipient's SDK
    drops it if its application already has it); an ingest message goes back on
    ``istmo.ingest.<agency>`` for the relay to process afresh, unless the bulletin was
    accepted meanwhile (then ``istmo reconcile`` restores any missing delivery).

    Returns:
        (dead letter, outcome) for each: ``redriven``, ``already_redriven``,
        ``already_accepted`` or ``copy_missing``.

    Raises:
        ValueError: more than ``REDRIVE_MAX`` letters.
        BusUnavailable: JetStream does not answer.
        AuditStoreError: the audit store refused the event (the message went out; a
            second run publishes it with the same id, so it is stored once).
    """
    if len(letters) > REDRIVE_MAX:
        raise ValueError(f"at most {REDRIVE_MAX} dead letters per redrive")
    done = {
        e.data.get("dead_seq")
        for t in ("delivery.redriven", "ingest.redriven")
        for e in _events(registry, t)
    }
    out: list[tuple[DeadLetter, str]] = []
    for dl in letters:
        if dl.dead_seq is None:
            out.append((dl, "copy_missing"))
            continue
        if dl.dead_seq in done:
            out.append((dl, "already_redriven"))
            continue
        if dl.kind == "ingest" and dl.bulletin_id and registry.bulletin(dl.bulletin_id):
            out.append((dl, "already_accepted"))
            continue
        try:
            copy = await js.get_msg(DEAD_STREAM, dl.dead_seq)
        except NotFoundError:
            out.append((dl, "copy_missing"))
            continue
        except (NatsTimeoutError, NoRespondersError, ServiceUnavailableError) as exc:
            raise bus_unavailable("reading a dead letter", exc) from exc
        headers = {}
        if dl.kind == "deliver":
            subject = deliver_subject(dl.agency, _precedence_of(copy.data))
            msg_id = f"{dl.bulletin_id}:{dl.agency}:redrive:{dl.dead_seq}"
            redriven, stream = events.delivery_redriven, DELIVER_STREAM
            headers = _crossed(copy.headers)  # it crossed a link: it still opens
        else:
            # Straight to the stream: the broker is its own gate.
            subject = gated_subject("ingest", dl.agency)
            msg_id = f"{dl.agency}/ingest/redrive:{dl.dead_seq}"
            redriven, stream = events.ingest_redriven, INGEST_STREAM
        try:
            headers["Nats-Msg-Id"] = msg_id
            ack = await js.publish(subject, copy.data or b"", headers=headers)
        except (NatsTimeoutError, NoRespondersError, ServiceUnavailableError) as exc:
            raise bus_unavailable("redriving a dead letter", exc) from exc
        event = redriven(
            dl.dead_seq,
            dl.agency,
            bulletin_id=dl.bulletin_id,
            stream=stream,
            new_seq=ack.seq,
            actor=actor,
            at=clock.now_ms(),
        )
        registry.record([], [event])
        out.append((dl, "redriven"))
    return out


def _crossed(headers: dict[str, str] | None) -> dict[str, str]:
    """The headers of a delivery that crossed a partner link (ADR 33): kept with its
    dead letter and its redrive, or its gateway could not open it."""
    return {k: v for k, v in (headers or {}).items() if k in (LINK_HEADER, PARTNER_RECORD_HEADER)}
