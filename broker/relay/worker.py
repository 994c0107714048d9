"""The relay: ingest -> verify -> decide -> audit -> deliver, and signed receipts.

Effects happen in this order for every batch pulled from the shared ingest consumer:
  1. verify and decide each message: ``broker.relay.plan`` (pure) answers accept, reject,
     resume or defer, with the rows and audit events to write;
  2. commit bulletin rows, decisions and audit events in one transaction;
  3. store every permitted delivery of the batch (``Nats-Msg-Id = <bulletin>:<recipient>``,
     or one copy per ready group epoch, ``<bulletin>:group:<group>:<epoch>``, ADR 21;
     most urgent precedence first) and every archive copy as a few JetStream atomic
     batches (``broker.bus.batch``): one flush per batch, not per message;
  4. once every batch is committed, ack the ingest messages (term a rejected one: it must
     not come back), as plain publishes written out with one flush.
Steps 3 and 4 of a batch run while steps 1 and 2 of the next one do (at most
``PIPELINE_DEPTH`` batches waiting on the disk, ``broker.bus.pipeline``): the flush of
one batch no longer leaves the process idle.
A crash anywhere replays the batch: a bulletin already stored under the same stream
sequence is resumed (its deliveries republished: an atomic batch holding an id already
stored is sent again one message at a time, which JetStream deduplicates, and the
recipient SDK drops what still comes twice), never decided twice.

This module only does the I/O around those decisions. Left to others: the decision
(``broker.relay.plan``, with the checks of ``broker.relay.checks``), the checks on a
receipt (``broker.relay.receipts``), dead letters (``broker.relay.dead_letters``), the
envelope archive (``broker.relay.reconcile``) and the answers to agencies' requests
(``broker.relay.agency_api``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import ParamSpec

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from sqlalchemy.exc import DataError, IntegrityError, InterfaceError, OperationalError

from broker.bus.batch import Message, publish_batch
from broker.bus.leaves import node_agencies
from broker.bus.nats_thread import NatsThread
from broker.bus.pipeline import Pipeline
from broker.bus.streams import ACK_WAIT_S, ensure_attach_stream, ensure_deliver_stream
from broker.clock import SYSTEM_CLOCK, Clock
from broker.config import Settings
from broker.directory.lifecycle import CONTROL_DIRECTORY_SUBJECT
from broker.directory.policy_sets import CONTROL_POLICY_SUBJECT, active_policy_dir
from broker.directory.service import DirectoryService
from broker.policy.engine import PolicyBundle
from broker.relay.agency_api import AgencyApi
from broker.relay.attachment_checks import AttachmentLimits, StoredChunk
from broker.relay.attachments import Attachments, scan_chunks
from broker.relay.checks import IngestLimits, sender_of
from broker.relay.dead_letters import (
    ADVISORY_STREAM,
    DEAD_DURABLE,
    INGEST_MAX_ATTEMPTS,
    dead_letter_ingest,
    ensure_dead_letters,
    handle_advisory,
    ingest_attempts_allowed,
)
from broker.relay.fanout import fan_out
from broker.relay.forward_requests import originals_of
from broker.relay.group_delivery import open_group_delivery
from broker.relay.metrics import RelayMetrics
from broker.relay.plan import Ingested, Parsed, Plan, parse, plan_batch, set_records
from broker.relay.push import PUSH_ALL_BELOW, push_first
from broker.relay.receipts import IncomingReceipt, ReceiptVerdict, judge_batch, read_batch
from broker.relay.reconcile import ARCHIVE_STREAM, archive_message, ensure_archive
from broker.store.groups import current_epochs, epoch_members, ready_epochs
from broker.store.registry import Registry
from broker.store.withheld import Withholding
from schemas.agency import Announcement, encode_announcement
from schemas.errors import AuditStoreError, BusUnavailable, IstmoError
from schemas.labels import Precedence
from schemas.push import PushFrame
from schemas.subjects import (
    ANNOUNCE_SUBJECT,
    DELIVER_STREAM,
    GATED_AT_HEADER,
    INGEST_STREAM,
    RECEIPT_STREAM,
    RELAY_INGEST_DURABLE,
    RELAY_RECEIPT_DURABLE,
    URGENT_PRECEDENCES,
    deliver_subject,
    delivery_msg_id,
    gated_at_of,
    group_copy_id,
    group_deliver_subject,
)

__all__ = ["Relay"]

log = logging.getLogger("istmo.relay")
# Failures that pass: NATS or the database away for a moment (a registry read raises
# SQLAlchemy's own errors, a write AuditStoreError). The batch comes back and resumes.
_TRANSIENT = (nats.errors.Error, TimeoutError, AuditStoreError, OperationalError, InterfaceError)
API_SUBJECTS = "istmo.api.*.*"  # istmo.api.<agency>.<op>
API_QUEUE = "relay-api"  # one relay answers each request
# JetStream publishes awaiting their acks at once: a batch of 64 bulletins to 60 agencies
# each (~400 MB in flight) made nats-server answer 429 and stalled the relay.
IN_FLIGHT = 256
_KEPT_LISTED = 4096  # digests of recorded agency sets a relay remembers (ADR 36)
# Ingest batches recorded and waiting on their deliveries' flush while the next is
# decided: 2 keeps the CPU busy during one flush and bounds what a crash replays.
PIPELINE_DEPTH = 2
# After a batch of receipts that was not full, the receipts loop waits this long before it
# fetches again: receipts trickle in one by one at a light load, and each batch costs a
# fetch, two queries, a transaction and a flush of acks whatever its size (about 1.5 ms of
# the event loop's CPU). Nothing waits on a receipt being recorded sooner (an originator
# asking sees it a quarter of a second later at most); under a backlog every batch is full
# and none waits. At 50 bulletins/s, 0.05 s made 19-20 batches a second and 0.25 s makes 4:
# the relay's CPU a bulletin fell from 5.9-7.0 ms to 4.9-5.6 ms.
RECEIPT_LINGER_S = 0.25
_PRECEDENCES = tuple(Precedence)  # by rank: FLASH first
_P = ParamSpec("_P")


@dataclass
class _Outcome:
    msg: Msg
    deliveries: list[str] = field(default_factory=list)
    raw: bytes = b""
    bulletin_id: str = ""
    rejected: bool = False
    defer_s: int = 0  # embargoed: hand back to JetStream for this long
    rank: int = len(Precedence)  # delivery precedence, FLASH = 0
    expires_at: int | None = None  # its deliveries go when it expires (ADR 15)
    shared: tuple[tuple[str, int], ...] = ()  # one copy per group epoch (ADR 21)
    routed: list[str] = field(default_factory=list)  # every agency it goes to (ADR 38)

    @property
    def precedence(self) -> Precedence:
        """The precedence ``rank`` stands for (ROUTINE for none: such is never delivered)."""
        return _PRECEDENCES[min(self.rank, len(_PRECEDENCES) - 1)]


class Relay:
    """One relay worker. Many may share the same consumers.

    Args:
        settings: limits and the data directory.
        registry: where decisions, rows and audit events are committed.
        directory: the directory and policy engine in force (refreshed on control
            messages).
        nc: the broker's NATS connection.
        clock: the time of decisions and audit events (a test passes its own).
        api_connect: opens a NATS connection of the agency API's own: with it, agencies'
            requests are answered on a thread of their own (``broker.bus.nats_thread``),
            never behind a batch; without it, on ``nc`` between batches.
        metrics: where to count (``broker.relay.metrics``); by default a registry of its own.
    """

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        directory: DirectoryService,
        nc: NATS,
        *,
        clock: Clock = SYSTEM_CLOCK,
        api_connect: Callable[[], Awaitable[NATS]] | None = None,
        metrics: RelayMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.registry = registry
        self.directory = directory
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=10)
        self.limits = IngestLimits(
            settings.max_envelope_bytes, settings.max_clock_skew_s, settings.max_queue_age_s
        )
        self.api = AgencyApi(settings, registry, directory, clock=clock)
        # Attachment chunks (ADR 17): answered on a thread and connection of their own.
        self.attachments = Attachments(settings, registry, directory, clock=clock)
        self.attachment_limits = AttachmentLimits(
            settings.max_attachment_bytes, settings.max_attachments
        )
        self._api_connect = api_connect
        self.metrics = metrics if metrics is not None else RelayMetrics()
        self.processed = 0
        # Each ingest batch's deliveries and acks wait on the disk while the next batch is
        # decided (``broker.bus.pipeline``).
        self._tails = Pipeline(PIPELINE_DEPTH)
        # The bulletins of batches whose record is still being committed by a tail, and
        # the lock that keeps those commits one at a time, in the order they were decided.
        self._recording: set[str] = set()
        # Digests of agency sets this relay has recorded or seen recorded (ADR 36).
        self._listed: set[str] = set()
        self._record_lock = asyncio.Lock()
        # Each receipt batch's commit and acks run as a tail while the next batch is
        # fetched and judged; one at a time, so one writer and in order.
        self._receipt_tails = Pipeline(1)
        # Agencies whose deliveries reach a state node (ADR 30), which group copies do
        # not: each gets a copy of its own. None until first read: then no group copy is
        # used at all (everyone gets its own), never one a node's agency would miss.
        self._on_nodes: frozenset[str] | None = None

    async def run(self, stop: asyncio.Event, *, ready: Callable[[], None] | None = None) -> None:
        """Pull and process until ``stop`` is set; call ``ready`` once the streams and
        consumers are bound (before that, only agencies' requests are answered)."""
        control_sub = await self.nc.subscribe(CONTROL_POLICY_SUBJECT, cb=self._on_policy)
        directory_sub = await self.nc.subscribe(CONTROL_DIRECTORY_SUBJECT, cb=self._on_directory)
        subs: list[Subscription | JetStreamContext.PullSubscription] = [
            control_sub,
            directory_sub,
        ]
        api_thread = await self._start_api_thread(stop)
        if api_thread is None:
            subs.append(await self.nc.subscribe(API_SUBJECTS, queue=API_QUEUE, cb=self._on_api))
        att_thread = await self._start_attachments_thread(stop)
        try:
            async with asyncio.TaskGroup() as tg:
                if att_thread is None:
                    tg.create_task(self.attachments.serve_all(self.nc, stop))
                if api_thread is None:
                    tg.create_task(self.api.push.serve(self.nc, stop))
                # From the first answer on: the SDKs keep resolve answers while they hear it.
                tg.create_task(self._announce_every(stop))
                bound = await self._bind(stop)
                if bound is None:
                    return
                subs.extend(bound)
                if ready is not None:
                    ready()
                ingest, receipts, dead = bound
                await self._read_state_nodes()
                batch, receipt_batch = self.settings.relay_batch, self.settings.receipt_batch
                tg.create_task(self._ingest_loop(stop, ingest, batch))
                tg.create_task(self._receipts_loop(stop, receipts, receipt_batch))
                tg.create_task(self._loop(stop, dead, batch, "advisories", self._dead_batch))
                tg.create_task(self._sample_backlog(stop))
                tg.create_task(self._finish_withdrawals(stop))
                tg.create_task(self._sweep_rfis(stop))
                tg.create_task(self._open_group_delivery(stop))
        finally:
            for sub in subs:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
            if api_thread is not None:
                await api_thread.stop()
            else:
                await self.api.push.close(self.nc)
            if att_thread is not None:
                await att_thread.stop()

    async def _bind(
        self, stop: asyncio.Event
    ) -> tuple[JetStreamContext.PullSubscription, ...] | None:
        """Make sure of the streams the relay writes to and bind its three consumers;
        while JetStream does not answer (a server starting, or this process paused past
        a request's timeout), try again until ``stop`` (then None). A worker that gave up
        here would leave the region without a relay until someone restarted it."""
        delay = 0.5
        while not stop.is_set():
            try:
                # Accepted envelopes are archived for reconciliation as they are delivered.
                await ensure_archive(self.js)
                # Deliveries are stored in atomic batches and on per-precedence subjects,
                # even on a stream an older Istmo made.
                await ensure_deliver_stream(self.js)
                # The first batch may hold a message to dead-letter: its stream must be there.
                await ensure_dead_letters(self.js)
                # Attachment chunks, on a stack made before ADR 17 too.
                await ensure_attach_stream(
                    self.js,
                    max_age_s=self.settings.deliver_max_age_s,
                    duplicate_window_s=self.settings.duplicate_window_s,
                )
                return (
                    await self.js.pull_subscribe_bind(RELAY_INGEST_DURABLE, stream=INGEST_STREAM),
                    await self.js.pull_subscribe_bind(RELAY_RECEIPT_DURABLE, stream=RECEIPT_STREAM),
                    # The delivery consumers' max_deliver advisories, turned into dead letters.
                    await self.js.pull_subscribe_bind(DEAD_DURABLE, stream=ADVISORY_STREAM),
                )
            except (BusUnavailable, nats.errors.Error, TimeoutError) as exc:
                log.warning("JetStream not ready for the relay (%s); trying again", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, 5.0)
        return None

    async def _loop(
        self,
        stop: asyncio.Event,
        sub: JetStreamContext.PullSubscription,
        batch: int,
        queue: str,
        handle: Callable[[list[Msg]], Awaitable[None]],
        *,
        linger_s: float = 0.0,
    ) -> None:
        """Fetch batches of up to ``batch`` and ``handle`` each, until ``stop``; after a
        batch that was not full, wait ``linger_s`` (or until ``stop``) for more to
        gather before fetching again."""
        ahead: asyncio.Task[list[Msg]] | None = None
        try:
            while not stop.is_set():
                try:
                    if ahead is None:
                        msgs = await sub.fetch(batch, timeout=0.5)
                    else:
                        taken, ahead = ahead, None
                        msgs = await taken
                except TimeoutError:  # nats-py raises both its own and asyncio's
                    continue
                except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
                    return
                except nats.errors.Error as exc:
                    # Reconnecting, or the server is restarting: nothing was taken, try again.
                    log.warning("fetch failed (%s); retrying", type(exc).__name__)
                    await asyncio.sleep(0.5)
                    continue
                if len(msgs) == batch and not stop.is_set():
                    # A full batch: more is likely waiting. Ask for it now, so that
                    # nats-server reads and sends it while this batch is decided.
                    ahead = asyncio.create_task(sub.fetch(batch, timeout=0.5))
                    await _let_requests_out()
                await self._handle_batch(msgs, queue, handle)
                if linger_s and len(msgs) < batch:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), linger_s)
        finally:
            if ahead is not None:
                await _give_back_prefetched(ahead)

    async def _handle_batch(
        self, msgs: list[Msg], queue: str, handle: Callable[[list[Msg]], Awaitable[None]]
    ) -> None:
        """Handle one fetched batch; what fails is handed back or left to the ack wait."""
        self.metrics.batch.labels(queue).observe(len(msgs))
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

    async def _ingest_loop(
        self, stop: asyncio.Event, sub: JetStreamContext.PullSubscription, batch: int
    ) -> None:
        """The ingest loop; before it ends, the batches still waiting on the disk are
        delivered and acked."""
        try:
            await self._loop(stop, sub, batch, "ingest", self._ingest_guarded)
        finally:
            await self._tails.drain()

    async def _receipts_loop(
        self, stop: asyncio.Event, sub: JetStreamContext.PullSubscription, batch: int
    ) -> None:
        """The receipts loop; before it ends, the batch still being recorded is recorded
        and acked."""

        async def handle(msgs: list[Msg]) -> None:
            await self._receipt_batch(msgs, pipeline=self._receipt_tails)

        try:
            await self._loop(stop, sub, batch, "receipts", handle, linger_s=RECEIPT_LINGER_S)
        finally:
            await self._receipt_tails.drain()

    async def _sample_backlog(self, stop: asyncio.Event) -> None:
        """Every ``relay_metrics_sample_s``: how many messages wait on the shared ingest and
        receipt consumers (one request each; a sample that fails is skipped)."""
        while not stop.is_set():
            for queue, stream, durable in (
                ("ingest", INGEST_STREAM, RELAY_INGEST_DURABLE),
                ("receipts", RECEIPT_STREAM, RELAY_RECEIPT_DURABLE),
            ):
                try:
                    info = await self.js.consumer_info(stream, durable)
                except (nats.errors.Error, TimeoutError):
                    continue  # NATS away for a moment: the next sample tells
                except Exception:  # a bug here must not stop the relay
                    log.exception("could not sample the %s backlog", queue)
                    continue
                waiting = (info.num_pending or 0) + (info.num_ack_pending or 0)
                self.metrics.backlog.labels(queue).set(waiting)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.relay_metrics_sample_s)

    async def _sweep_rfis(self, stop: asyncio.Event) -> None:
        """At start and every ``rfi_sweep_s``: raise the overdue alarm of the requests for
        information past their due time with no answer (ADR 16), once each."""
        while not stop.is_set():
            try:
                raised = await asyncio.to_thread(self.api.conversations.sweep)
            except _TRANSIENT as exc:
                log.warning("could not look for overdue RFIs (%s)", type(exc).__name__)
            except Exception:  # a bug here must not stop the relay
                log.exception("could not look for overdue RFIs")
            else:
                if raised:
                    log.info("raised the overdue alarm of %d RFIs", raised)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.rfi_sweep_s)

    async def _open_group_delivery(self, stop: asyncio.Event) -> None:
        """At start and every ``group_delivery_sweep_s``: bring the members of group epochs
        that became current to read the epoch's one shared copy (ADR 21)."""
        while not stop.is_set():
            try:
                # First: an epoch made ready below is fanned out with the nodes as now.
                await self._read_state_nodes()
                now = self.clock.now_s()
                await open_group_delivery(
                    self.js,
                    self.registry,
                    since=now - self.settings.deliver_max_age_s,
                    now=now,
                )
            except _TRANSIENT as exc:
                log.warning("could not open group delivery (%s)", type(exc).__name__)
            except Exception:  # a bug here must not stop the relay
                log.exception("could not open group delivery")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.group_delivery_sweep_s)

    async def _read_state_nodes(self) -> None:
        """Read which agencies' deliveries the state nodes receive (the hub's
        ``ISTMO_STATE_<S>`` filters); on a passing failure keep what was read before."""
        try:
            self._on_nodes = await node_agencies(self.js)
        except _TRANSIENT as exc:
            log.warning("could not read the state nodes' agencies (%s)", type(exc).__name__)

    async def _finish_withdrawals(self, stop: asyncio.Event) -> None:
        """At start and every ``withdrawal_sweep_s``: finish the withdrawals a relay
        recorded and did not carry out (it died in between; ADR 15)."""
        while not stop.is_set():
            try:
                finished = await self.api.recalls.finish_unfinished(self.js)
            except _TRANSIENT as exc:
                log.warning("could not look for unfinished withdrawals (%s)", type(exc).__name__)
            except Exception:  # a bug here must not stop the relay
                log.exception("could not finish the unfinished withdrawals")
            else:
                if finished:
                    log.info("finished %d withdrawals another relay had left", finished)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.withdrawal_sweep_s)

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
            clock=self.clock,
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
            await handle_advisory(self.js, self.registry, msg.data, clock=self.clock)
            await msg.ack_sync()

    async def _ingest_batch(self, msgs: list[Msg]) -> None:
        now_ms = self.clock.now_ms()
        ingested = [
            Ingested(
                raw=msg.data,
                subject=msg.subject,
                seq=msg.metadata.sequence.stream,
                stored_at=int(msg.metadata.timestamp.timestamp()),
                gated_at=gated_at_of((msg.headers or {}).get(GATED_AT_HEADER)),
            )
            for msg in msgs
        ]
        parsed = [parse(i, self.limits) for i in ingested]
        if self._recording and any(
            p[1].header.bulletin_id in self._recording
            for p in parsed
            if not isinstance(p, IstmoError)
        ):
            # A bulletin met again while the batch that decided it is still being
            # committed: wait for that record, so it is resumed from it, not decided twice.
            await self._tails.drain()
        # One query for the whole batch: which of these ids were accepted before?
        accepted = self.registry.accepted(
            {p[1].header.bulletin_id for p in parsed if not isinstance(p, IstmoError)}
        )
        # Corrections: whose are the bulletins they supersede (no query without one)?
        corrected = {
            p[1].header.supersedes
            for p in parsed
            if not isinstance(p, IstmoError) and p[1].header.supersedes
        }
        superseded = {bid: b.originator for bid, b in self.registry.bulletins(corrected).items()}
        # Community groups the batch's envelopes use: their current epochs (ADR 18).
        named_groups = {
            g.group for p in parsed if not isinstance(p, IstmoError) for g in p[1].groups or ()
        }
        epochs = current_epochs(self.registry, named_groups) if named_groups else {}
        # Group epochs addressed as a whole (ADR 37): their recorded members.
        members = epoch_members(
            self.registry,
            {
                (a.group, a.epoch)
                for p in parsed
                if not isinstance(p, IstmoError)
                for a in p[1].header.audience or ()
            },
        )
        # Replies: what was recorded of the bulletins they answer (ADR 16; none without one).
        answered = self.api.conversations.answered(
            {
                p[1].header.in_reply_to
                for p in parsed
                if not isinstance(p, IstmoError) and p[1].header.in_reply_to
            }
        )
        attachments = await self._stored_attachments(parsed, accepted)
        # Forwards: the bulletins they cite, as recorded (no query without one; ADR 20).
        cited = {
            p[1].header.forward_of.bulletin_id
            for p in parsed
            if not isinstance(p, IstmoError) and p[1].header.forward_of is not None
        }
        originals = originals_of(self.registry, cited)
        plans = plan_batch(
            ingested,
            parsed,
            directory=self.directory,
            limits=self.limits,
            accepted=accepted,
            now_ms=now_ms,
            superseded=superseded,
            epochs=epochs,
            members=members,
            answered=answered,
            attachments=attachments,
            attachment_limits=self.attachment_limits,
            originals=originals,
            listed=self._listed,
        )
        # Group epochs whose members' consumers read one shared copy (ADR 21).
        # Until the state nodes' agencies are known, none: one copy each, as before.
        ready = (
            ready_epochs(self.registry, {pair for p in plans for pair in p.groups})
            if self._on_nodes is not None
            else {}
        )
        outcomes = [self._outcome(msg, p, ready) for msg, p in zip(msgs, plans, strict=True)]
        # Each refused candidate's count of withheld bulletins goes up in the same
        # transaction: one upsert per agency for the batch (broker.store.withheld).
        withheld = [
            Withholding(p.bulletin_id, p.withheld_from, now_ms // 1000)
            for p in plans
            if p.bulletin_id is not None and p.withheld_from
        ]
        # The rest waits on the disk: the record's commit, then the deliveries and the
        # acks, done while the next batch is decided. A bulletin of this batch published
        # again and met in a later one is resumed from the record, as after a crash.
        deciding = {p.bulletin_id for p in plans if p.bulletin_id is not None}
        self._recording |= deciding
        await self._tails.add(self._record_deliver_settle(outcomes, plans, withheld, deciding))

    async def _record_deliver_settle(
        self,
        outcomes: list[_Outcome],
        plans: list[Plan],
        withheld: list[Withholding],
        deciding: set[str],
    ) -> None:
        """A decided batch's tail: commit its record (``_write``, one batch at a time, in
        the order they were decided), then deliver and settle what was recorded. Nothing
        is delivered or acked before its decision record and audit events are committed.

        If the database is away for a moment, the whole batch is handed back (it resumes
        idempotently). If it refuses the record (a constraint: the content, not the
        moment, is at fault), each bulletin's record is tried alone, so one bad bulletin
        cannot hold back the others; the one refused is left unacked, comes back after
        the ack wait and is finally dead-lettered (``_poisoned``)."""
        try:
            try:
                await self._record(plans, withheld)
            except Exception as exc:
                if not _refused_by_database(exc):
                    if not isinstance(exc, _TRANSIENT):
                        raise
                    log.warning(
                        "batch of %d decided but not recorded (%s); it will be redelivered",
                        len(outcomes),
                        type(exc).__name__,
                    )
                    await _hand_back([o.msg for o in outcomes])
                    return
                if len(plans) == 1:
                    log.error("the database refused the record of ingest seq %d", plans[0].seq)
                    return
                kept = [
                    (o, p)
                    for o, p in zip(outcomes, plans, strict=True)
                    if await self._record_alone(p, withheld)
                ]
                if not kept:
                    return
                outcomes, plans = [o for o, _ in kept], [p for _, p in kept]
            await self._deliver_and_settle(outcomes, plans)
        finally:
            self._recording -= deciding

    async def _record_alone(self, plan: Plan, withheld: list[Withholding]) -> bool:
        """Commit one bulletin's record after its batch's was refused; False (logged) if
        the database refuses this one too. The agency sets it names go with it, also
        those another plan of the batch was to record (already there: left as they are)."""
        borrowed = [s for s in plan.sets if s[0] not in plan.listed]
        rows, trail = set_records(borrowed, self.clock.now_ms())
        alone = replace(plan, rows=(*rows, *plan.rows), events=(*trail, *plan.events))
        try:
            await self._record([alone], [w for w in withheld if w.bulletin_id == plan.bulletin_id])
        except Exception as exc:
            if not _refused_by_database(exc):
                raise
            log.error("the database refused the record of ingest seq %d", plan.seq)
            return False
        return True

    async def _record(self, plans: list[Plan], withheld: list[Withholding]) -> None:
        """Commit the plans' rows and events, and the withheld counts, in one transaction
        (``_write``), one batch at a time."""
        rows = [row for p in plans for row in p.rows]
        events = [event for p in plans for event in p.events]
        async with self._record_lock:
            with self.metrics.commit.labels("ingest").time():
                await self._write(self.registry.record, rows, events, withheld=withheld)
        # Their agency sets are recorded: later bulletins name them without them (ADR 36).
        if len(self._listed) >= _KEPT_LISTED:
            self._listed.clear()
        self._listed.update(d for p in plans for d, _ in p.sets)

    async def _stored_attachments(
        self, parsed: list[Parsed], accepted: Mapping[str, object]
    ) -> dict[str, dict[tuple[int, int], StoredChunk]]:
        """What is stored of the attachments of each new bulletin of a batch that has any
        (ADR 17), by its id: one headers-only read per such bulletin. For a forward,
        what is stored of the original, under the originator it cites (the plan checks
        that citation against the registry): all of it must be cited (ADR 20)."""
        stored: dict[str, dict[tuple[int, int], StoredChunk]] = {}
        for p in parsed:
            if isinstance(p, IstmoError):
                continue
            if not p[1].header.file_refs() and p[1].header.forward_of is None:
                continue
            h = p[1].header
            if h.bulletin_id in accepted or h.bulletin_id in stored:
                continue
            owner, of = str(p[0]), h.bulletin_id
            if h.forward_of is not None:
                owner, of = h.forward_of.originator, h.forward_of.bulletin_id
            # One more than named: a forward that leaves a file out shows (F7).
            most = sum(a.chunks for a in h.file_refs())
            stored[h.bulletin_id] = await scan_chunks(self.js, owner, of, most=most + 1)
        return stored

    async def _deliver_and_settle(self, outcomes: list[_Outcome], plans: list[Plan]) -> None:
        """Deliver a recorded batch, then settle its ingest messages; on a passing failure
        hand the batch back (it resumes idempotently)."""
        try:
            await self._deliver(outcomes)
        except _TRANSIENT as exc:
            log.warning(
                "batch of %d recorded but not delivered (%s); it will be redelivered",
                len(outcomes),
                type(exc).__name__,
            )
            await _hand_back([o.msg for o in outcomes])
            await asyncio.sleep(0.5)  # holds a pipeline slot: the next batch waits a moment
            return
        # Recorded and delivered: counted before the acks, which cannot undo that.
        self.processed += len(outcomes)
        # Acks, terms and naks are plain publishes, written out with one flush: ack_sync
        # cost a request and a reply per message (and timed out under load after the
        # server had taken the ack). An ack that is lost redelivers the bulletin, which
        # resumes without being decided or delivered twice.
        with contextlib.suppress(*_TRANSIENT):
            for o in outcomes:
                await _settle(o)
            await self.nc.flush()
        for p in plans:
            self.metrics.bulletins.labels(p.verdict).inc()

    async def _deliver(self, outcomes: list[_Outcome]) -> None:
        """Deliver everything as a few atomic batches, most urgent precedence first (the
        delivery stream holds FLASH before ROUTINE), with each accepted envelope's archive
        copy (ciphertext), where ``istmo reconcile`` finds it if a delivery goes missing
        from ISTMO_DELIVER (``broker.relay.reconcile``). Each delivery goes on its
        precedence's subject: FLASH and IMMEDIATE reach the recipient's urgent consumer,
        which its SDK drains before the rest (ADR 7). If any batch fails, nothing of the
        ingest batch is acked: it all comes back and resumes idempotently."""
        delivering = sorted((o for o in outcomes if o.deliveries or o.shared), key=lambda o: o.rank)
        if not delivering:
            return
        now_s = self.clock.now_s()
        # Each bulletin's precedence and time to live, worked out once for all its copies.
        each = [(o, o.precedence, _ttl(o.expires_at, now_s)) for o in delivering]
        deliveries = [
            Message(group_deliver_subject(g, e, p), o.raw, group_copy_id(o.bulletin_id, g, e), t)
            for o, p, t in each
            for g, e in o.shared
        ] + [
            Message(deliver_subject(r, p), o.raw, delivery_msg_id(o.bulletin_id, r), t)
            for o, p, t in each
            for r in o.deliveries
        ]
        copies = [archive_message(o.bulletin_id, o.raw) for o in delivering]
        # Recorded: an urgent bulletin also goes at once to its recipients' open waits,
        # whichever relay holds them (ADR 38), before its copies keep nats-server busy;
        # so does every bulletin of a batch small enough that nothing waits (ADR 43).
        # (A full batch means a backlog even where the configured batch is smaller.)
        every = len(outcomes) < min(PUSH_ALL_BELOW, self.settings.relay_batch)
        pushes = [
            PushFrame(p, o.raw, tuple(o.routed))
            for o, p, _ in each
            if (every or p in URGENT_PRECEDENCES) and o.routed
        ]
        if pushes:
            # Published for every relay's waits, then this relay's own answered at once.
            await push_first(self.nc, pushes)
            await self.api.push.answer(self.nc, pushes)
        await _all(
            (
                publish_batch(self.nc, ARCHIVE_STREAM, copies),
                publish_batch(self.nc, DELIVER_STREAM, deliveries),
            )
        )
        stored_s = self.clock.now_ms() / 1000
        for o in delivering:
            waited = stored_s - o.msg.metadata.timestamp.timestamp()
            self.metrics.publish_to_delivery.observe(max(waited, 0.0))

    def _outcome(
        self, msg: Msg, p: Plan, ready: Mapping[tuple[str, int], frozenset[str]]
    ) -> _Outcome:
        """What to deliver and how to settle ``msg``, by its plan. A resumed bulletin is
        delivered to whom it was routed when it was recorded, not decided again. Members
        of a ready group epoch share one copy (``broker.relay.fanout``)."""
        outcome = _Outcome(
            msg=msg,
            raw=msg.data,
            bulletin_id=p.bulletin_id or "",
            rejected=p.verdict == "reject",
            defer_s=p.defer_s,
            rank=p.rank,
            deliveries=list(p.deliver_to),
            expires_at=p.expires_at,
        )
        if p.verdict == "resume":
            outcome.deliveries = [
                r.agency
                for r in self.registry.decisions(outcome.bulletin_id)
                if r.allowed and r.agency in p.addressed
            ]
        elif p.verdict == "reject":
            log.info("rejected ingest seq=%d from %s: %s", p.seq, p.sender, p.reason)
        outcome.routed = list(outcome.deliveries)
        if outcome.deliveries and p.groups:
            split = fan_out(
                outcome.deliveries,
                originator=p.originator,
                groups=p.groups,
                ready=ready,
                on_nodes=self._on_nodes or frozenset(),
            )
            outcome.shared, outcome.deliveries = split.shared, list(split.individual)
        return outcome

    # ------------------------------------------------------------------ receipts
    async def _receipt_batch(self, msgs: list[Msg], *, pipeline: Pipeline | None = None) -> None:
        """Judge a batch of receipts (``broker.relay.receipts``, pure) against the bulletins
        they name (two queries for the batch, whatever their number), then record every
        receipt row, its event and every refusal in one transaction and ack the good ones
        and term the refused (they must not come back) with one flush, after the commit.
        With ``pipeline``, that second part runs as its tail while the caller goes on with
        the next batch. A lost ack redelivers a receipt, which is recorded again as
        nothing new: rows and events are keyed by bulletin and recipient, refusals by
        stream sequence."""
        batch = []
        for msg in msgs:
            meta = msg.metadata  # worked out from the reply subject on each read
            stored_at = int(meta.timestamp.timestamp())
            batch.append(IncomingReceipt(meta.sequence.stream, msg.subject, msg.data, stored_at))
        read = read_batch(batch)
        named = {got[1].bulletin_id for got in read if not isinstance(got, IstmoError)}
        verdicts = judge_batch(
            batch,
            read,
            bulletins=self.registry.bulletins(named),
            routed=self.registry.routed(named),
            records=self.directory.records,
            at=self.clock.now_ms(),
        )
        if pipeline is None:
            await self._record_receipts(msgs, verdicts)
        else:
            await pipeline.add(self._settle_receipts(msgs, verdicts))

    async def _settle_receipts(self, msgs: list[Msg], verdicts: list[ReceiptVerdict]) -> None:
        """``_record_receipts`` as a pipelined tail: on a passing failure the batch is
        handed back (recording it again is harmless)."""
        try:
            await self._record_receipts(msgs, verdicts)
        except _TRANSIENT as exc:
            log.warning(
                "receipt batch of %d not recorded (%s); it will be redelivered",
                len(msgs),
                type(exc).__name__,
            )
            await _hand_back(msgs)

    async def _write(self, write: Callable[_P, None], *args: _P.args, **kwargs: _P.kwargs) -> None:
        """Run a registry write: on this thread for SQLite, on a worker thread for
        PostgreSQL. A PostgreSQL commit waits on the network and a server, time the
        event loop can spend on the next batch. A SQLite commit waits only on the local
        disk (an fsync of the WAL, a fraction of a millisecond), while a worker thread
        has to win the GIL back from the busy event loop for each of its statements:
        at 100 bulletins a second that made a one-bulletin record take 15 ms, not 3,
        and doubled publish -> application latency (BENCHMARKS.md, session 25). The
        loop also waits out another writer's lock (a second relay, the sequencer):
        their transactions take milliseconds, and the thread waited for it as well."""
        if self.registry.local:
            write(*args, **kwargs)
        else:
            await asyncio.to_thread(write, *args, **kwargs)

    async def _record_receipts(self, msgs: list[Msg], verdicts: list[ReceiptVerdict]) -> None:
        """Commit the verdicts' rows and events (``_write``), then ack the accepted
        receipts and term the refused ones."""
        rows = [v.row for v in verdicts if v.row is not None]
        events = [v.event for v in verdicts]
        with self.metrics.commit.labels("receipts").time():
            await self._write(self.registry.record_receipts, rows, events)
        for msg, verdict in zip(msgs, verdicts, strict=True):
            await (msg.ack() if verdict.accepted else msg.term())
        await self.nc.flush()
        recorded = sum(v.accepted for v in verdicts)
        self.metrics.receipts.labels("recorded").inc(recorded)
        self.metrics.receipts.labels("refused").inc(len(verdicts) - recorded)

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
        await self._announce()

    async def _on_directory(self, msg: Msg) -> None:
        """An agency or key changed status: decide with the new directory from now on."""
        try:
            await self.directory.refresh_async()
        except IstmoError as exc:
            log.error("could not refresh the directory: %s", exc)
            return
        log.info("directory %s now in force", self.directory.version)
        await self._announce()

    # ------------------------------------------------------------------ announcements
    async def _announce(self) -> None:
        """Tell every agency the directory and policy versions this relay decides with
        (``schemas.agency.Announcement``): an SDK drops the resolve answers it keeps when
        they change. Sent after a change is in force here, never before, so an SDK that
        asks again is answered with the change. Best effort: the next one follows within
        ``announce_interval_s``, and an SDK that hears none keeps nothing."""
        d = self.directory
        announcement = Announcement(
            directory_version=d.version,
            policy_version=d.engine.bundle.version,
            interval_s=self.settings.announce_interval_s,
        )
        try:
            await self.nc.publish(ANNOUNCE_SUBJECT, encode_announcement(announcement))
        except nats.errors.Error as exc:  # reconnecting: the next one is due soon
            log.debug("announcement not sent (%s)", type(exc).__name__)

    async def _announce_every(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._announce()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.announce_interval_s)

    # ------------------------------------------------------------------ agency API
    async def _start_api_thread(self, stop: asyncio.Event) -> NatsThread | None:
        """The agency API on a thread of its own, or None (then it is served on ``nc``):
        without ``api_connect``, or if the thread cannot start (logged; agencies are still
        answered, between batches)."""
        if self._api_connect is None:
            return None
        thread = NatsThread("istmo-agency-api", self._api_connect, self._serve_api)
        return await _started(thread, stop, "agency API: no thread of its own (%s); "
                              "answering between batches")  # fmt: skip

    async def _start_attachments_thread(self, stop: asyncio.Event) -> NatsThread | None:
        """Chunk requests on a thread and connection of their own (ADR 17), or None
        (served on ``nc`` then)."""
        if self._api_connect is None:
            return None

        async def serve(nc: NATS, stop: asyncio.Event, ready: Callable[[], None]) -> None:
            ready()
            await self.attachments.serve_all(nc, stop)

        thread = NatsThread("istmo-attachments", self._api_connect, serve)
        return await _started(thread, stop, "attachments: no thread of their own (%s); "
                              "answering on the relay's")  # fmt: skip

    async def _serve_api(self, nc: NATS, stop: asyncio.Event, ready: Callable[[], None]) -> None:
        """On the API's own thread and connection: answer requests until ``stop``."""

        async def on_api(msg: Msg) -> None:
            await self.api.serve(nc, msg, now=self.clock.now_s())

        sub = await nc.subscribe(API_SUBJECTS, queue=API_QUEUE, cb=on_api)
        try:
            await nc.flush()  # nats-server routes requests here from now on
            ready()
            await self.api.push.serve(nc, stop)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
            await self.api.push.close(nc)

    async def _on_api(self, msg: Msg) -> None:
        await self.api.serve(self.nc, msg, now=self.clock.now_s())


def _refused_by_database(exc: BaseException) -> bool:
    """Whether the database refused a write for what it holds (a constraint, a value it
    cannot store), as opposed to being away or busy: retrying the same rows cannot help."""
    return isinstance(exc.__cause__, (IntegrityError, DataError))


def _ttl(expires_at: int | None, now_s: int) -> int | None:
    """The per-message TTL of a delivery (ADR 15): JetStream removes it, delivered or not,
    when the bulletin expires. At least 1 s (JetStream's least); None: it does not expire."""
    return None if expires_at is None else max(expires_at - now_s, 1)


async def _settle(o: _Outcome) -> None:
    """Ack what is done, term what was refused, hand back what is embargoed."""
    if o.rejected:
        await o.msg.term()
    elif o.defer_s:
        await o.msg.nak(delay=o.defer_s)
    else:
        await o.msg.ack()


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


async def _let_requests_out() -> None:
    """Yield to the event loop until a request just made is written to the socket: the
    task making it runs to its first wait, then nats-py's flusher writes it (a few turns
    of the loop, no round trip)."""
    for _ in range(3):
        await asyncio.sleep(0)


async def _give_back_prefetched(ahead: asyncio.Task[list[Msg]]) -> None:
    """A batch asked for ahead and never handled (the loop stopped): hand it back at once,
    for another relay (or this one, started again) to take without waiting for the ack
    wait."""
    try:
        msgs = await ahead
    except (TimeoutError, nats.errors.Error, asyncio.CancelledError):
        return
    for msg in msgs:
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await msg.nak()


async def _hand_back(msgs: list[Msg]) -> None:
    """Nak each message with a delay that doubles with its deliveries (2, 4, 8 s ... up to
    the ack wait), so a short outage costs seconds, not the ack wait, and a long one does
    not burn through the attempts that dead-letter a poison bulletin."""
    for msg in msgs:
        delay = min(2.0 ** max(msg.metadata.num_delivered, 1), ACK_WAIT_S)
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await msg.nak(delay=delay)


async def _started(thread: NatsThread, stop: asyncio.Event, failed: str) -> NatsThread | None:
    """``thread`` once ready, or None if it cannot start (``failed`` logged, with why) or
    the relay is stopping meanwhile (nothing logged: NATS may be what went)."""
    try:
        await thread.start(stop=stop)
    except BusUnavailable as exc:
        if not stop.is_set():
            log.error(failed, exc)
        await thread.stop()
        return None
    return thread
