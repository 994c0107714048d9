"""The gate: the only way from an agency to JetStream's ingest and receipt streams.

An agency publishes on ``istmo.ingest.<agency>`` and ``istmo.receipt.<agency>`` (its NATS
permissions allow nothing else there). No stream listens on those subjects. The gate, a
queue subscriber in every ``istmo up`` and ``istmo relay`` process, stores each message on
``istmo.gated.<kind>.<agency>`` with headers of its own and answers the publisher with
JetStream's own reply (the PubAck, or JetStream's error), so the SDK's JetStream publish
works unchanged.

Why a hop: nats-server acts on headers the publisher sends, and account permissions cannot
filter headers. On nats-server 2.15.1 one publish with a failing
``Nats-Expected-Last-Msg-Id`` on a 3-replica stream is a "critical write error" on every
replica, and the stream loses its leader for every agency. ``Nats-Rollup``, ``Nats-TTL``,
schedules, counters, batches and the other ``Nats-Expected-*`` headers act on the stream
too. The gate drops every header an agency sends and writes only ``Nats-Msg-Id``, in the
sender's own namespace (``schemas.subjects.gated_msg_id``), so no agency can touch a stream's
state beyond appending its own message, and ``Istmo-Gated-At`` (``GATED_AT_HEADER``): when
it stored the message, by its own clock. On a state node that is the time the bulletin was
fresh, however long the node then holds it while its link to the hub is cut; the hub's
relay judges the bulletin's ``created_at`` against it (ADR 0034). An agency cannot set it:
whatever it sends under that name is dropped with the rest.

The gate reads nothing else: size, schema and signature are the relay's checks (refused and
audited there). It keeps the order in which messages arrive; it holds at most
``IN_FLIGHT`` stores at once and ``PENDING_BYTES`` waiting, beyond which nats-server drops
messages for this subscriber and the publisher, seeing no answer, retries with the same id.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from broker.bus.nats_thread import NatsThread
from schemas.errors import EnvelopeError
from schemas.subjects import (
    GATED_AT_HEADER,
    GATED_KINDS,
    agency_of_subject,
    gated_msg_id,
    gated_subject,
)

__all__ = ["GATE_QUEUE", "Gate", "GateThread"]

log = logging.getLogger("istmo.gate")

GATE_QUEUE = "istmo-gate"
IN_FLIGHT = 256
PENDING_BYTES = 64 * 1024 * 1024
PENDING_MSGS = 20_000
# Under the SDK's own 5 s, so a publisher never retries while its first store still runs.
STORE_TIMEOUT_S = 4.0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Gate:
    """Stores agencies' publishes on the gated subjects. Any number may run at once."""

    def __init__(
        self,
        nc: NATS,
        store_subject: Callable[[str, str], str] = gated_subject,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        """``store_subject(kind, agency)``: where to store; a state node's gate stores on
        ``broker.bus.leaves.leaf_gated_subject`` instead (ADR 0030). ``clock_ms``: the
        time it stamps, epoch milliseconds."""
        self.nc = nc
        self._store_subject = store_subject
        self._clock_ms = clock_ms
        self.passed = 0
        self.unanswered = 0
        self.ready = asyncio.Event()  # set once nats-server routes publishes to this gate
        self._slots = asyncio.Semaphore(IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set; stores already under way finish first."""
        subs = []
        try:
            for kind in GATED_KINDS:
                subs.append(
                    await self.nc.subscribe(
                        f"istmo.{kind}.*",
                        queue=GATE_QUEUE,
                        cb=self._on_msg,
                        pending_msgs_limit=PENDING_MSGS,
                        pending_bytes_limit=PENDING_BYTES,
                    )
                )
            await self.nc.flush()
            self.ready.set()
            await stop.wait()
        finally:
            for sub in subs:
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=STORE_TIMEOUT_S + 1)

    async def _on_msg(self, msg: Msg) -> None:
        # Called in arrival order; a store starts (its PUB is written) before the next
        # message is taken, so the stream keeps each publisher's order.
        await self._slots.acquire()
        task = asyncio.create_task(self._store(msg))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _store(self, msg: Msg) -> None:
        kind = msg.subject.split(".")[1] if msg.subject.count(".") == 2 else ""
        try:
            agency = agency_of_subject(msg.subject, kind)
        except EnvelopeError:
            # nats-server lets no agency publish such a subject; only the broker's own
            # account could. Nothing to store.
            log.warning("gate: ignored a message on %r", msg.subject[:80])
            return
        proposed = (msg.headers or {}).get("Nats-Msg-Id")
        digest = hashlib.sha256(msg.data).hexdigest()
        # Only headers of the gate's own: the agency's are dropped, a forged stamp with them.
        # A retry is stamped anew but deduped by its id: the first store's stamp stays.
        headers = {
            "Nats-Msg-Id": gated_msg_id(agency, kind, proposed, digest),
            GATED_AT_HEADER: str(self._clock_ms()),
        }
        try:
            answer = await self.nc.request(
                self._store_subject(kind, agency),
                msg.data,
                timeout=STORE_TIMEOUT_S,
                headers=headers,
            )
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, TimeoutError) as exc:
            # JetStream did not answer (a leader election, a node away): the publisher sees
            # no answer either and retries with the same id.
            self.unanswered += 1
            log.warning("gate: JetStream did not store a %s of %s (%s)", kind, agency, exc)
            return
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
            return
        self.passed += 1
        if msg.reply:
            with contextlib.suppress(nats.errors.Error):
                await self.nc.publish(msg.reply, answer.data)


class GateThread:
    """A gate on its own thread, event loop and NATS connection (a ``NatsThread``).

    A broker process's main event loop also runs work that holds it for milliseconds at a
    time (a relay batch's checks and database commit, the sequencer, the API). A gate there
    would make every publisher wait for that; on its own loop it answers in between (the
    interpreter switches threads every few milliseconds).
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[NATS]],
        store_subject: Callable[[str, str], str] = gated_subject,
    ) -> None:
        self._store_subject = store_subject
        self._thread = NatsThread("istmo-gate", connect, self._serve)
        self.gate: Gate | None = None

    async def start(self, timeout: float = 30.0) -> None:
        """Start, and return once the gate takes publishes (BusUnavailable if NATS does
        not let it)."""
        await self._thread.start(timeout)

    async def stop(self) -> None:
        """Stop taking publishes; stores under way finish first."""
        await self._thread.stop(STORE_TIMEOUT_S + 10)

    async def _serve(self, nc: NATS, stop: asyncio.Event, ready: Callable[[], None]) -> None:
        self.gate = Gate(nc, self._store_subject)
        task = asyncio.create_task(self.gate.run(stop))
        await self.gate.ready.wait()
        ready()
        await task
