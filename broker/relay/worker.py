"""The relay: ingest -> verify -> decide -> audit -> deliver, and signed receipts.

Effects happen in this order for every batch pulled from the shared ingest consumer:
  1. verify each envelope (``relay_core.verify_ingest``) and decide with the policy;
  2. commit bulletin rows, decisions and audit events in one transaction;
  3. publish each permitted delivery with ``Nats-Msg-Id = <bulletin>:<recipient>``;
  4. ack the ingest message (term a rejected one: it must not come back).
A crash anywhere replays the batch: a bulletin already stored under the same stream
sequence is resumed (its deliveries republished; JetStream and the recipient SDK drop
duplicates), never decided twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlmodel import SQLModel

from broker.bus.streams import ACK_WAIT_S
from broker.config import Settings
from broker.directory.lifecycle import CONTROL_DIRECTORY_SUBJECT
from broker.directory.policy_sets import CONTROL_POLICY_SUBJECT, active_policy_dir
from broker.directory.service import DirectoryService
from broker.policy.engine import BulletinFacts, Decision, PolicyBundle
from broker.relay.agency_api import AgencyApi
from broker.relay.checks import IngestLimits, check_ingest, parse_ingest, sender_of
from broker.relay.dead_letters import (
    ADVISORY_STREAM,
    DEAD_DURABLE,
    INGEST_MAX_ATTEMPTS,
    dead_letter_ingest,
    ensure_dead_letters,
    handle_advisory,
    ingest_attempts_allowed,
)
from broker.relay.reconcile import archive_envelope, ensure_archive
from broker.store.registry import BulletinRow, DecisionRow, ReceiptRow, Registry, RejectionRow
from schemas.audit import AuditEvent
from schemas.canonical import canonical_json
from schemas.envelope import Envelope
from schemas.errors import (
    AuditStoreError,
    BusUnavailable,
    EnvelopeError,
    IstmoError,
)
from schemas.ids import AgencyId
from schemas.labels import Precedence
from schemas.receipt import parse_receipt, verify_receipt
from schemas.sealing import envelope_digest
from schemas.subjects import (
    INGEST_STREAM,
    RECEIPT_STREAM,
    RELAY_INGEST_DURABLE,
    RELAY_RECEIPT_DURABLE,
    agency_of_gated,
    deliver_subject,
)

__all__ = ["Relay"]

log = logging.getLogger("istmo.relay")
MAX_DEFER_S = 3600
# Failures that pass: NATS or the database away for a moment (a registry read raises
# SQLAlchemy's own errors, a write AuditStoreError). The batch comes back and resumes.
_TRANSIENT = (nats.errors.Error, TimeoutError, AuditStoreError, OperationalError, InterfaceError)
# JetStream publishes awaiting their acks at once: a batch of 64 bulletins to 60 agencies
# each (~400 MB in flight) made nats-server answer 429 and stalled the relay.
IN_FLIGHT = 256
DEFAULT_DENY = "no policy grants it (default deny): not releasable to it, and not named"


def _ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class _Writes:
    """What one batch commits, in one transaction, before anything is delivered."""

    rows: list[SQLModel] = field(default_factory=list)
    decisions: list[dict[str, object]] = field(default_factory=list)
    events: list[AuditEvent] = field(default_factory=list)
    seen: dict[str, tuple[int, str]] = field(default_factory=dict)  # bulletin -> (seq, digest)
    known: dict[str, tuple[int, str]] = field(default_factory=dict)  # accepted before the batch


@dataclass
class _Outcome:
    msg: Msg
    deliveries: list[str] = field(default_factory=list)
    raw: bytes = b""
    bulletin_id: str = ""
    rejected: bool = False
    defer_s: int = 0  # embargoed: hand back to JetStream for this long
    rank: int = len(Precedence)  # delivery precedence, FLASH = 0


class Relay:
    """One relay worker. Many may share the same consumers."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        directory: DirectoryService,
        nc: NATS,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.directory = directory
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=10)
        self.limits = IngestLimits(settings.max_envelope_bytes, settings.max_clock_skew_s)
        self.api = AgencyApi(settings, registry, directory)
        self.processed = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Pull and process until ``stop`` is set."""
        api_sub = await self.nc.subscribe("istmo.api.*.*", queue="relay-api", cb=self._on_api)
        control_sub = await self.nc.subscribe(CONTROL_POLICY_SUBJECT, cb=self._on_policy)
        directory_sub = await self.nc.subscribe(CONTROL_DIRECTORY_SUBJECT, cb=self._on_directory)
        try:
            # Accepted envelopes are archived for reconciliation before they are delivered.
            await ensure_archive(self.js)
            # The first batch may hold a message to dead-letter: its stream must be there.
            await ensure_dead_letters(self.js)
            ingest = await self.js.pull_subscribe_bind(RELAY_INGEST_DURABLE, stream=INGEST_STREAM)
            receipts = await self.js.pull_subscribe_bind(
                RELAY_RECEIPT_DURABLE, stream=RECEIPT_STREAM
            )
            # The delivery consumers' max_deliver advisories, turned into dead letters.
            dead = await self.js.pull_subscribe_bind(DEAD_DURABLE, stream=ADVISORY_STREAM)
        except BaseException:
            for core in (api_sub, control_sub, directory_sub):
                with contextlib.suppress(nats.errors.Error):
                    await core.unsubscribe()
            raise
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._loop(stop, ingest, self._ingest_guarded))
                tg.create_task(self._loop(stop, receipts, self._receipt_batch))
                tg.create_task(self._loop(stop, dead, self._dead_batch))
        finally:
            for sub in (api_sub, control_sub, directory_sub, ingest, receipts, dead):
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()

    async def _loop(self, stop: asyncio.Event, sub: JetStreamContext.PullSubscription, handle):  # type: ignore[no-untyped-def]
        while not stop.is_set():
            try:
                msgs = await sub.fetch(self.settings.relay_batch, timeout=0.5)
            except TimeoutError:  # nats-py raises both its own and asyncio's
                continue
            except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
                return
            except nats.errors.Error as exc:
                # Reconnecting, or the server is restarting: nothing was taken, try again.
                log.warning("fetch failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(0.5)
                continue
            try:
                await handle(msgs)
            except _TRANSIENT as exc:
                # NATS or the database is away for a moment: hand the batch back to come
                # again soon (sooner than the ack wait, later with every attempt); the work
                # is idempotent. Whatever cannot be handed back returns after the ack wait.
                log.warning(
                    "batch of %d not finished (%s); it will be redelivered",
                    len(msgs),
                    type(exc).__name__,
                )
                await _hand_back(msgs)
                await asyncio.sleep(0.5)
            except Exception:
                # A bug, not bad input (bad input is refused and audited). Keep the relay
                # up for everyone else; the batch is redelivered after the ack wait.
                log.exception("batch of %d failed unexpectedly; it will be redelivered", len(msgs))
                await asyncio.sleep(1.0)

    # ------------------------------------------------------------------ ingest
    async def _ingest_guarded(self, msgs: list[Msg]) -> None:
        """Dead-letter what came back too often, then process the rest; if a batch fails
        unexpectedly, process its messages one by one, so one poison bulletin cannot hold
        back (and finally dead-letter) the innocent ones around it."""
        live = [msg for msg in msgs if not await self._poisoned(msg)]
        if not live:
            return
        try:
            await self._ingest_batch(live)
        except _TRANSIENT:
            raise
        except Exception:
            if len(live) == 1:
                raise
            log.exception("batch of %d failed unexpectedly; retrying one by one", len(live))
            for msg in live:
                try:
                    await self._ingest_batch([msg])
                except _TRANSIENT:
                    raise
                except Exception:
                    log.exception(
                        "ingest seq %d failed unexpectedly (delivery %d); it will come back",
                        msg.metadata.sequence.stream,
                        msg.metadata.num_delivered,
                    )

    async def _poisoned(self, msg: Msg) -> bool:
        """Dead-letter an ingest message that no relay managed to process: it came back
        more often than ``INGEST_MAX_ATTEMPTS`` plus what an embargo explains (a relay
        that crashes on it dies before it can catch anything; JetStream counts)."""
        meta = msg.metadata
        if meta.num_delivered <= INGEST_MAX_ATTEMPTS:
            return False
        if meta.num_delivered <= ingest_attempts_allowed(msg.data, int(meta.timestamp.timestamp())):
            return False
        sender = sender_of(msg.subject, "ingest") or "unknown"
        _, event = await dead_letter_ingest(
            self.js,
            sender=sender,
            seq=meta.sequence.stream,
            data=msg.data,
            deliveries=meta.num_delivered,
        )
        self.registry.record([], [event])
        await msg.term()
        log.error(
            "ingest seq %d from %s dead-lettered after %d deliveries",
            meta.sequence.stream,
            sender,
            meta.num_delivered,
        )
        return True

    async def _dead_batch(self, msgs: list[Msg]) -> None:
        """max_deliver advisories of the delivery consumers: dead-letter each delivery."""
        for msg in msgs:
            await handle_advisory(self.js, self.registry, msg.data)
            await msg.ack_sync()

    async def _ingest_batch(self, msgs: list[Msg]) -> None:
        now = int(time.time())
        w = _Writes()
        outcomes: list[_Outcome] = []
        parsed: list[tuple[AgencyId, Envelope] | IstmoError] = []
        for msg in msgs:
            try:
                parsed.append(parse_ingest(msg.data, subject=msg.subject, limits=self.limits))
            except IstmoError as exc:
                parsed.append(exc)
        # One query for the whole batch: which of these ids were accepted before?
        w.known = self.registry.accepted(
            {p[1].header.bulletin_id for p in parsed if not isinstance(p, IstmoError)}
        )
        for msg, got in zip(msgs, parsed, strict=True):
            outcome = _Outcome(msg=msg, raw=msg.data)
            try:
                if isinstance(got, IstmoError):
                    raise got
                self._process(msg, got, now, w, outcome)
            except IstmoError as exc:
                outcome.rejected = True
                self._reject(msg, exc, now, w, outcome)
            outcomes.append(outcome)
        self.registry.record(w.rows, w.events, bulk={DecisionRow: w.decisions})
        # Deliver everything, most urgent precedence first (one wave per precedence, so
        # the delivery streams hold FLASH before ROUTINE), then ack everything. If any
        # delivery fails, nothing of the batch is acked: it all comes back after the ack
        # wait and resumes idempotently.
        # Keep each accepted envelope (ciphertext) where `istmo reconcile` finds it if a
        # delivery goes missing from ISTMO_DELIVER (broker.relay.reconcile).
        await _all(
            archive_envelope(self.js, o.bulletin_id, o.raw) for o in outcomes if o.deliveries
        )
        for rank in sorted({o.rank for o in outcomes if o.deliveries}):
            await _all(
                self._deliver(o, r) for o in outcomes if o.rank == rank for r in o.deliveries
            )
        # Recorded and delivered: counted before the acks, whose replies can time out
        # under load after the server has taken them (then nothing comes back to count).
        self.processed += len(outcomes)
        await _all(_settle(o) for o in outcomes)

    async def _deliver(self, o: _Outcome, recipient: str) -> None:
        headers = {"Nats-Msg-Id": f"{o.bulletin_id}:{recipient}"}
        await self.js.publish(deliver_subject(recipient), o.raw, headers=headers)

    def _process(
        self,
        msg: Msg,
        parsed: tuple[AgencyId, Envelope],
        now: int,
        w: _Writes,
        outcome: _Outcome,
    ) -> None:
        meta = msg.metadata
        seq = meta.sequence.stream
        stored_at = int(meta.timestamp.timestamp())
        d = self.directory
        sender, env = parsed
        h = env.header
        # Rejections are filed under (sender, id): the sender can see its own verdict,
        # and a forged id never touches another agency's bulletin.
        outcome.bulletin_id = h.bulletin_id
        check_ingest(
            env,
            sender=sender,
            stored_at=stored_at,
            now=now,
            limits=self.limits,
            records=d.records,
            jurisdictions=d.states,
        )
        bid = h.bulletin_id
        digest = envelope_digest(env)
        outcome.rank = list(Precedence).index(h.labels.precedence)
        # Replays: the same stream message again is a redelivery to finish; anything
        # else with a known id is refused (NATS dedupe only covers a few minutes).
        prior = w.known.get(bid) or w.seen.get(bid)
        if prior is not None:
            if prior[0] == seq:
                outcome.deliveries = [
                    r.agency
                    for r in self.registry.decisions(bid)
                    if r.allowed and r.agency in h.recipients
                ]
                return
            if prior[1] == digest:
                raise EnvelopeError(f"bulletin {bid} was already accepted", code="replay")
            raise EnvelopeError(
                f"bulletin id {bid} is taken by another bulletin", code="id_conflict"
            )
        if h.not_before is not None and h.not_before > now:
            # Embargo: nothing is decided or delivered before not_before. JetStream keeps
            # the message and hands it back then (at most an hour at a time).
            outcome.defer_s = min(h.not_before - now, MAX_DEFER_S)
            return
        w.seen[bid] = (seq, digest)
        facts = _facts(env, d)
        publish = d.engine.decide_publish(facts, now)
        if not publish.allowed:
            ids = ", ".join(publish.policy_ids) or "no grant matched"
            raise IstmoError(
                f"the policy does not let {h.originator} publish this ({ids})", code="policy_deny"
            )
        candidates = sorted(set(d.candidates(h.labels.topic, h.labels.named)) | set(h.recipients))
        candidates = [c for c in candidates if c != h.originator or c in h.recipients]
        decisions = d.engine.decide_receive(facts, candidates, now)
        labels_json = canonical_json(h.labels.model_dump(mode="json")).decode()
        w.rows.append(
            BulletinRow(
                id=bid,
                originator=h.originator,
                labels=labels_json,
                envelope_digest=digest,
                ingest_seq=seq,
                created_at=h.created_at,
                accepted_at=now,
                not_before=h.not_before,
                expires_at=h.expires_at,
                recipients=",".join(h.recipients),
                policy_version=publish.policy_version,
                directory_version=publish.directory_version,
            )
        )
        t = _ms()
        w.events.append(
            AuditEvent(
                event_id=f"{bid}:accepted",
                type="bulletin.accepted",
                time=t,
                actor=h.originator,
                subject=bid,
                bulletin_id=bid,
                data={
                    "topic": h.labels.topic,
                    "classification": h.labels.classification.value,
                    "tlp": h.labels.tlp.value,
                    "rel_to": h.labels.rel_to,
                    "envelope_digest": digest,
                    "recipients": h.recipients,
                    "policy_version": publish.policy_version,
                    "directory_version": publish.directory_version,
                    "policy_ids": publish.policy_ids,
                },
            )
        )
        for dec in decisions:
            addressed = dec.agency in h.recipients
            w.decisions.append(_decision_values(bid, dec))
            if dec.allowed and addressed:
                outcome.deliveries.append(dec.agency)
                w.events.append(_decision_event(bid, dec, "bulletin.routed", t, h.originator))
            elif not dec.allowed:
                w.events.append(_decision_event(bid, dec, "bulletin.denied", t, h.originator))

    def _reject(
        self,
        msg: Msg,
        exc: IstmoError,
        now: int,
        w: _Writes,
        outcome: _Outcome,
    ) -> None:
        seq = msg.metadata.sequence.stream
        sender = sender_of(msg.subject, "ingest") or "unknown"
        bid = outcome.bulletin_id or None
        message = str(exc)[:300]
        log.info("rejected ingest seq=%d from %s: %s", seq, sender, exc.code)
        w.rows.append(
            RejectionRow(
                ingest_seq=seq,
                originator=sender,
                bulletin_id=bid,
                reason=exc.code,
                message=message,
                time=now,
            )
        )
        w.events.append(
            AuditEvent(
                event_id=f"ingest:{seq}:rejected",
                type="bulletin.rejected",
                time=_ms(),
                actor=sender,
                subject=bid or f"ingest:{seq}",
                bulletin_id=bid,
                reason=exc.code,
                data={"message": message[:200], "ingest_seq": seq, "size": len(msg.data)},
            )
        )

    # ------------------------------------------------------------------ receipts
    async def _receipt_batch(self, msgs: list[Msg]) -> None:
        for msg in msgs:
            try:
                self._receipt(msg)
            except (AuditStoreError, BusUnavailable):
                raise  # the store or NATS is away: not the receipt's fault; it comes back
            except IstmoError as exc:
                seq = msg.metadata.sequence.stream
                self.registry.record(
                    [],
                    [
                        AuditEvent(
                            event_id=f"receipt:{seq}:rejected",
                            type="receipt.rejected",
                            time=_ms(),
                            actor=sender_of(msg.subject, "receipt") or "unknown",
                            subject=f"receipt:{seq}",
                            reason=exc.code,
                            data={"message": str(exc)[:200]},
                        )
                    ],
                )
                await msg.term()
                continue
            await msg.ack_sync()

    def _receipt(self, msg: Msg) -> None:
        sender = agency_of_gated(msg.subject, "receipt")
        receipt = parse_receipt(msg.data)
        if receipt.recipient != sender:
            raise EnvelopeError(
                "receipt recipient differs from its sender", code="originator_mismatch"
            )
        bulletin = self.registry.bulletin(receipt.bulletin_id)
        routed = {r.agency for r in self.registry.decisions(receipt.bulletin_id) if r.allowed}
        if bulletin is None or sender not in routed or sender not in bulletin.recipients.split(","):
            raise EnvelopeError(
                "receipt for a bulletin not routed to its sender", code="unknown_bulletin"
            )
        if (
            receipt.originator != bulletin.originator
            or receipt.envelope_digest != bulletin.envelope_digest
        ):
            raise EnvelopeError("receipt does not match the bulletin", code="receipt_mismatch")
        record = self.directory.records.get(sender)
        key = (
            next((k for k in record.signing_keys if k.kid == receipt.kid), None) if record else None
        )
        if key is None:
            raise EnvelopeError("receipt signed by an unknown key", code="key_not_bound_to_sender")
        verify_receipt(receipt, key.verify_key())
        bid = receipt.bulletin_id
        self.registry.record(
            [
                ReceiptRow(
                    bulletin_id=bid,
                    recipient=sender,
                    received_at=receipt.received_at,
                    recorded_at=int(time.time()),
                    signature=receipt.sig,
                )
            ],
            [
                AuditEvent(
                    event_id=f"{bid}:received:{sender}",
                    type="bulletin.received",
                    time=_ms(),
                    actor=sender,
                    subject=bid,
                    bulletin_id=bid,
                    data={
                        "received_at": receipt.received_at,
                        "envelope_digest": receipt.envelope_digest,
                    },
                )
            ],
        )

    # ------------------------------------------------------------------ control
    async def _on_policy(self, msg: Msg) -> None:
        """An adopted policy set: load the active one from the data directory and swap."""
        try:
            bundle = PolicyBundle.load(active_policy_dir(self.settings, self.registry))
            self.directory.use_bundle(bundle)
        except IstmoError as exc:
            # Keep serving with the set in force; the adoption was validated, so this is
            # a broken archive or a race, worth an operator's eye.
            log.error("could not switch to the adopted policy set: %s", exc)
            return
        log.info("policy set %s now in force", bundle.version)

    async def _on_directory(self, msg: Msg) -> None:
        """An agency or key changed status: decide with the new directory from now on."""
        try:
            await self.directory.refresh_async()
        except IstmoError as exc:
            log.error("could not refresh the directory: %s", exc)
            return
        log.info("directory %s now in force", self.directory.version)

    # ------------------------------------------------------------------ agency API
    async def _on_api(self, msg: Msg) -> None:
        await self.api.serve(self.nc, msg, now=int(time.time()))


async def _settle(o: _Outcome) -> None:
    """Ack what is done, term what was refused, hand back what is embargoed."""
    if o.rejected:
        await o.msg.term()
    elif o.defer_s:
        await o.msg.nak(delay=o.defer_s)
    else:
        await o.msg.ack_sync()


async def _all(aws: Iterable[Awaitable[object]], limit: int = IN_FLIGHT) -> None:
    """Await all of ``aws``, at most ``limit`` at a time; then raise the first failure."""
    gate = asyncio.Semaphore(limit)

    async def one(aw: Awaitable[object]) -> object:
        async with gate:
            return await aw

    results = await asyncio.gather(*(one(aw) for aw in aws), return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r


async def _hand_back(msgs: list[Msg]) -> None:
    """Nak each message with a delay that doubles with its deliveries (2, 4, 8 s ... up to
    the ack wait), so a short outage costs seconds, not the ack wait, and a long one does
    not burn through the attempts that dead-letter a poison bulletin."""
    for msg in msgs:
        delay = min(2.0 ** max(msg.metadata.num_delivered, 1), ACK_WAIT_S)
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await msg.nak(delay=delay)


def _facts(env: Envelope, d: DirectoryService) -> BulletinFacts:
    h = env.header
    origin = d.records.get(h.originator)
    return BulletinFacts(
        bulletin_id=h.bulletin_id,
        originator=h.originator,
        origin_state=origin.state if origin else None,
        labels=h.labels,
        not_before=h.not_before,
        expires_at=h.expires_at,
    )


def _decision_values(bid: str, dec: Decision) -> dict[str, object]:
    """A DecisionRow's columns (plain values: a fan-out makes dozens per bulletin)."""
    return {
        "bulletin_id": bid,
        "agency": dec.agency,
        "allowed": dec.allowed,
        "policy_ids": ",".join(dec.policy_ids),
        "reasons": json.dumps(list(dec.reasons) or _why_not(dec)),
    }


def _deny_code(dec: Decision) -> str:
    if dec.errors:
        return "policy_error"
    return "policy_deny" if dec.policy_ids else "default_deny"


def _why_not(dec: Decision) -> list[str]:
    """A denial no policy forbade is a default deny: say so rather than nothing."""
    if dec.allowed:
        return []
    if dec.errors:
        return ["the policy could not be evaluated (fail closed): " + dec.errors[0]]
    return [DEFAULT_DENY]


def _decision_event(bid: str, dec: Decision, type_: str, t: int, originator: str) -> AuditEvent:
    kind = "routed" if type_ == "bulletin.routed" else "denied"
    return AuditEvent(
        event_id=f"{bid}:{kind}:{dec.agency}",
        type=type_,  # type: ignore[arg-type]
        time=t,
        actor="relay",
        subject=dec.agency,
        bulletin_id=bid,
        reason=None if dec.allowed else _deny_code(dec),
        data={
            "originator": originator,
            "policy_version": dec.policy_version,
            "directory_version": dec.directory_version,
            "policy_ids": dec.policy_ids,
        },
    )
