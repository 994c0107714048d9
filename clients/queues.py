"""An agency's two delivery queues, pulled most urgent first (ADR 7).

The relay stores FLASH and IMMEDIATE deliveries where the agency's consumer
``urgent-<agency>`` reads them, and PRIORITY and ROUTINE ones where ``deliver-<agency>``
does. ``DeliveryQueues.take`` asks the urgent consumer first, without waiting (a JetStream
``no_wait`` pull: the server answers at once with what it holds, or "no messages"), then
the other one likewise; only when both are empty does it wait, on both at once. So a FLASH
overtakes any backlog of ROUTINE ones, and one that arrives while the agency is idle is not
held up behind a wait on the other queue. What it returns is sorted by the precedence its
subject names.

Every pull answers on one inbox subscription (``<inbox>.<n>``, a token per request), so an
answer that comes late is not lost: its messages are kept for the next ``take``. Opening,
acking and receipts are left to ``clients.sdk``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from schemas.errors import EnvelopeError
from schemas.labels import Precedence
from schemas.subjects import deliver_durables, deliver_next_subject, precedence_of_delivery

__all__ = [
    "HAND_BACK_DELAY_S",
    "PROBE_TIMEOUT_S",
    "SILENT_RETRY_S",
    "DeliveryQueues",
    "by_precedence",
    "hand_back",
]

# A no_wait pull is answered at once; this only bounds the wait for an answer that is lost
# (a reconnect). Nothing fetched is lost either way: a late answer is kept for later.
PROBE_TIMEOUT_S = 5.0
# A consumer that did not answer is asked again only after this long: a broker older than
# ADR 7 has no urgent consumer (and forbids the pull), which must not cost every round
# PROBE_TIMEOUT_S.
SILENT_RETRY_S = 60.0
# How long past its expiry a wait on an idle queue counts as still open without its end.
_EXPIRY_MARGIN_S = 1.0
_HEARTBEAT = "100"  # a status that does not end a pull

log = logging.getLogger("istmo.sdk")
_ORDER = tuple(Precedence)


# A fetched bulletin a receive will not process goes back to the server for this long.
# Never at once: nats-server (2.15.1) redelivers a nak without a delay at once, whatever
# the consumer's backoff, and every delivery spends one of its ten attempts (measured:
# ten immediate naks, ten deliveries in 6 ms, then the dead-letter stream).
HAND_BACK_DELAY_S = 5.0


async def hand_back(msgs: Iterable[Msg]) -> None:
    """Give fetched messages back to the server (nak) for a later ``receive``, after
    ``HAND_BACK_DELAY_S``: a receive cancelled again and again spends a delivery attempt
    each time, so ten in a row take a minute, not milliseconds, to dead-letter a
    bulletin. Best effort: what cannot be handed back returns after the ack wait anyway."""
    for msg in msgs:
        with contextlib.suppress(nats.errors.Error):
            await msg.nak(delay=HAND_BACK_DELAY_S)


def _rank(msg: Msg) -> int:
    """FLASH = 0 ... ROUTINE = 3, from the delivery subject; a delivery an Istmo before
    ADR 7 stored (no precedence on its subject) counts as ROUTINE, anything else last."""
    try:
        precedence = precedence_of_delivery(msg.subject)
    except EnvelopeError:
        return len(_ORDER)
    return _ORDER.index(precedence or Precedence.ROUTINE)


def by_precedence(msgs: Iterable[Msg]) -> list[Msg]:
    """``msgs`` most urgent first, in the order they came within one precedence."""
    return sorted(msgs, key=_rank)


def _status(msg: Msg) -> str | None:
    """The status code of a JetStream status message (no data), else None."""
    if msg.data:
        return None
    status = (msg.headers or {}).get("Status")
    return status or None


class DeliveryQueues:
    """The pull side of one agency's two delivery consumers, for one ``receive``.

    ``open`` it, ``take`` batches, then ``close`` it (which hands back whatever arrived
    and was not taken). One ``take`` at a time.
    """

    def __init__(self, nc: NATS, agency: str) -> None:
        self._nc = nc
        self._durables = deliver_durables(agency)  # urgent first
        self._inbox = nc.new_inbox()
        self._sub: Subscription | None = None
        self._held: dict[str, list[Msg]] = {d: [] for d in self._durables}
        self._probes: set[str] = set()  # reply subjects of no_wait pulls not yet ended
        # consumer -> (reply subject, when it ends) of its open wait for one message
        self._waits: dict[str, tuple[str, float]] = {}
        self._silent_until: dict[str, float] = {}  # consumer -> when to ask it again
        self._arrived = asyncio.Event()
        self._count = 0

    async def open(self) -> None:
        self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_msg)

    async def close(self) -> None:
        """Stop listening; give back (``hand_back``) what arrived and was not taken, so it
        comes back to the next ``receive`` soon rather than after the ack wait."""
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None
        for held in self._held.values():
            await hand_back(held)
            held.clear()

    async def take(self, want: int, wait: float) -> list[Msg]:
        """Up to ``want`` deliveries, most urgent first: whatever the urgent consumer
        holds, else whatever the other one holds, else the first to arrive on either
        within ``wait`` seconds (then maybe none).
        """
        if want < 1:
            raise ValueError(f"want must be at least 1, not {want}")
        for durable in self._durables:
            got = await self._now(durable, want)
            if got:
                return by_precedence(got)
        return by_precedence(await self._either(want, wait))

    # ------------------------------------------------------------------ internals
    async def _on_msg(self, msg: Msg) -> None:
        status = _status(msg)
        if status is not None:
            # The end of a pull (404 no messages, 408 expired, 409 ...): its reply subject.
            if status != _HEARTBEAT:
                self._probes.discard(msg.subject)
                for durable, (reply, _) in list(self._waits.items()):
                    if reply == msg.subject:
                        del self._waits[durable]
        else:
            durable = self._durable_of(msg)
            self._held[durable].append(msg)
            # A wait asks for one message: this was its answer (or a probe's; then one
            # more wait is sent, which is harmless).
            self._waits.pop(durable, None)
        self._arrived.set()

    def _durable_of(self, msg: Msg) -> str:
        try:
            consumer = msg.metadata.consumer
        except (ValueError, IndexError, AttributeError):
            consumer = None
        return consumer if consumer in self._held else self._durables[-1]

    async def _pull(self, durable: str, batch: int, *, expires_s: float | None) -> str:
        """Send one pull request; returns its reply subject. Without ``expires_s`` it is
        a no_wait pull: the server answers at once."""
        self._count += 1
        reply = f"{self._inbox}.{self._count}"
        request: dict[str, object] = {"batch": batch}
        # Known before it is sent: its answer may come before publish returns.
        if expires_s is None:
            request["no_wait"] = True
            self._probes.add(reply)
        else:
            request["expires"] = int(expires_s * 1_000_000_000)
            self._waits[durable] = (reply, time.monotonic() + expires_s + _EXPIRY_MARGIN_S)
        await self._nc.publish(deliver_next_subject(durable), json.dumps(request).encode(), reply)
        return reply

    def _pop(self, durable: str, most: int) -> list[Msg]:
        held = self._held[durable]
        taken = held[:most]
        del held[:most]
        return taken

    async def _until(self, done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()

    def _silent(self, durable: str) -> bool:
        return self._silent_until.get(durable, 0.0) > time.monotonic()

    async def _now(self, durable: str, want: int) -> list[Msg]:
        """What ``durable`` holds now, up to ``want``, without waiting for more."""
        held = self._held[durable]
        if len(held) < want and not self._silent(durable):
            reply = await self._pull(durable, want - len(held), expires_s=None)
            await self._until(
                lambda: reply not in self._probes or len(held) >= want, PROBE_TIMEOUT_S
            )
            if reply in self._probes and not held:
                log.warning("no answer from delivery consumer %s; asking it less often", durable)
                self._silent_until[durable] = time.monotonic() + SILENT_RETRY_S
            self._probes.discard(reply)
        return self._pop(durable, want)

    async def _either(self, want: int, wait: float) -> list[Msg]:
        """Wait up to ``wait`` seconds for a delivery on either consumer, most urgent
        first. One request per consumer stays open at most; one answered late is kept."""
        if wait <= 0:
            return []
        now = time.monotonic()
        for durable in self._durables:
            if durable in self._waits and self._waits[durable][1] >= now:
                continue  # still open: one at a time
            if self._silent(durable):
                continue
            await self._pull(durable, 1, expires_s=wait)
        await self._until(lambda: any(self._held.values()), wait)
        got: list[Msg] = []
        for durable in self._durables:
            got += self._pop(durable, want - len(got))
        return got
