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

Besides the queues, one ``push`` request stays open (ADR 38, ``broker.relay.push``),
answered on the same inbox (``<inbox>.p<n>``): a relay answers it with the bulletins of a
batch routed to the agency (``schemas.push``: FLASH and IMMEDIATE ones always, the others
while the relay keeps up, ADR 43) as soon as it has recorded its decisions, before their
queued copies are stored and handed over. ``take`` returns a pushed urgent bulletin before
anything else, and another one after what the queues hold at that moment (both are asked
first, at once and without waiting), so a push never overtakes a bulletin that waited
longer; its queued copy comes later, and the SDK's dedupe store settles it. A
broker that does not push (before ADR 38), or a newer wait of the same agency taking the
place of this one, turns pushes off for ``PUSH_RETRY_S``; the queues deliver as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from schemas.agency import KIND_HEADER, PUSH_KIND, PUSH_STATE_HEADER, PushRequest
from schemas.canonical import canonical_json
from schemas.errors import EnvelopeError
from schemas.labels import Precedence
from schemas.push import PUSH_FRAMES_HEADER, decode_push_frames
from schemas.subjects import (
    URGENT_PRECEDENCES,
    api_subject,
    deliver_durables,
    deliver_next_subject,
    precedence_of_delivery,
)

__all__ = [
    "HAND_BACK_DELAY_S",
    "PROBE_TIMEOUT_S",
    "PUSH_RETRY_S",
    "PUSH_WAIT_S",
    "SILENT_RETRY_S",
    "DeliveryQueues",
    "Pushed",
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
# How long one push request waits at the relay (at most schemas.agency.MAX_PUSH_WAIT_S); it
# is asked again at once when answered, and when its answer is overdue by PROBE_TIMEOUT_S.
PUSH_WAIT_S = 25
# No pushes asked for this long after a broker refused one (before ADR 38), or a newer wait
# of the same agency took this one's place (another receiver of the agency gets them).
PUSH_RETRY_S = 60.0
_NO_RESPONDERS_RETRY_S = 5.0  # no relay answers the API now (one restarting)

log = logging.getLogger("istmo.sdk")
_ORDER = tuple(Precedence)


# A fetched bulletin a receive will not process goes back to the server for this long.
# Never at once: nats-server (2.15.1) redelivers a nak without a delay at once, whatever
# the consumer's backoff, and every delivery spends one of its ten attempts (measured:
# ten immediate naks, ten deliveries in 6 ms, then the dead-letter stream).
HAND_BACK_DELAY_S = 5.0


@dataclass(frozen=True)
class Pushed:
    """A bulletin's envelope a relay pushed ahead of its queued copy (ADR 38, ADR 43):
    nothing to ack or hand back; the queued copy is settled when it comes."""

    data: bytes
    subject: str  # the inbox subject it came on
    headers: dict[str, str] | None = None  # none: a pushed bulletin never crossed a link
    # As the relay says; a relay before ADR 43 pushed only FLASH and IMMEDIATE ones.
    precedence: Precedence = Precedence.FLASH

    @property
    def urgent(self) -> bool:
        return self.precedence in URGENT_PRECEDENCES


_M = TypeVar("_M", Msg, Msg | Pushed)


async def hand_back(msgs: Iterable[Msg | Pushed]) -> None:
    """Give fetched messages back to the server (nak) for a later ``receive``, after
    ``HAND_BACK_DELAY_S``: a receive cancelled again and again spends a delivery attempt
    each time, so ten in a row take a minute, not milliseconds, to dead-letter a
    bulletin. Best effort: what cannot be handed back returns after the ack wait anyway.
    A pushed bulletin is skipped: its queued copy still waits on the server."""
    for msg in msgs:
        if isinstance(msg, Pushed):
            continue
        with contextlib.suppress(nats.errors.Error):
            await msg.nak(delay=HAND_BACK_DELAY_S)


def _pushed(data: bytes, subject: str, frames: str | None) -> list[Pushed]:
    """The bulletins of a push answer: framed (``schemas.push``, ADR 43), or one envelope
    alone (a relay before it). A malformed answer is dropped: the queue has them all."""
    if frames is None:
        return [Pushed(data, subject)]
    try:
        count = int(frames) if frames.isdigit() and len(frames) <= 4 else -1  # <= 4096
        return [
            Pushed(f.envelope, subject, precedence=f.precedence)
            for f in decode_push_frames(data, count=count)
        ]
    except EnvelopeError as exc:
        log.warning("dropped a malformed push (%s); the queue delivers it", exc.code)
        return []


def _rank(msg: Msg | Pushed) -> int:
    """FLASH = 0 ... ROUTINE = 3, from the delivery subject (a pushed bulletin's, as its
    relay said); a delivery an Istmo before ADR 7 stored (no precedence on its subject)
    counts as ROUTINE, anything else last."""
    if isinstance(msg, Pushed):
        return _ORDER.index(msg.precedence)
    try:
        precedence = precedence_of_delivery(msg.subject)
    except EnvelopeError:
        return len(_ORDER)
    return _ORDER.index(precedence or Precedence.ROUTINE)


def by_precedence(msgs: Iterable[_M]) -> list[_M]:
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

    def __init__(self, nc: NATS, agency: str, *, push: bool = True) -> None:
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
        # Pushed bulletins (ADR 38): the open push request, (reply subject, when its
        # answer is overdue), and when to ask again after a refusal.
        self._push_subject = api_subject(agency, "push") if push else None
        self._pushed: list[Pushed] = []
        self._push_wait: tuple[str, float] | None = None
        self._push_off_until = 0.0

    async def open(self) -> None:
        self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_msg)
        await self._ask_push()

    async def close(self) -> None:
        """Stop listening; give back (``hand_back``) what arrived and was not taken, so it
        comes back to the next ``receive`` soon rather than after the ack wait."""
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None
        self._pushed.clear()  # their queued copies wait on the server
        for held in self._held.values():
            await hand_back(held)
            held.clear()

    async def take(self, want: int, wait: float) -> Sequence[Msg | Pushed]:
        """Up to ``want`` deliveries, most urgent first: bulletins pushed ahead of their
        queued copies, else whatever the urgent consumer holds, else whatever the other
        one holds, else the first to arrive on either or pushed within ``wait`` seconds
        (then maybe none).
        """
        if want < 1:
            raise ValueError(f"want must be at least 1, not {want}")
        await self._ask_push()
        if any(p.urgent for p in self._pushed):
            return self._take_pushed(want, urgent=True)
        # Other pushed bulletins go after whatever the queues hold now (ADR 43): a push
        # is sooner than its queued copy, never ahead of a bulletin that waited longer.
        # Both queues are asked at once then: one round trip, not two (whatever the
        # deliver queue gives beyond ``want`` is kept for the next take).
        if self._pushed:
            queued = await self._now(self._durables, want)
            return by_precedence([*queued, *self._take_pushed(want - len(queued))])
        queued = []
        for durable in self._durables:
            queued += await self._now((durable,), want - len(queued))
            if queued:
                return by_precedence(queued)
        got = await self._either(want, wait)
        if not got and self._pushed:
            # The queues were empty and a push came first.
            return self._take_pushed(want)
        return by_precedence(got)

    # ------------------------------------------------------------------ internals
    def _take_pushed(self, want: int, *, urgent: bool = False) -> list[Pushed]:
        """Up to ``want`` pushed bulletins, most urgent first; only FLASH and IMMEDIATE
        ones if ``urgent``."""
        ranked = sorted(self._pushed, key=_rank)
        taken = [p for p in ranked if p.urgent or not urgent][:want]
        chosen = {id(p) for p in taken}
        self._pushed = [p for p in self._pushed if id(p) not in chosen]
        return taken

    async def _ask_push(self) -> None:
        """Send a push request unless one is open (and not overdue), pushes are off for
        now, or the queues are closed."""
        now = time.monotonic()
        if self._push_subject is None or self._sub is None or self._push_off_until > now:
            return
        if self._push_wait is not None and self._push_wait[1] > now:
            return
        self._count += 1
        reply = f"{self._inbox}.p{self._count}"
        self._push_wait = (reply, now + PUSH_WAIT_S + PROBE_TIMEOUT_S)
        body = canonical_json(PushRequest(wait_s=PUSH_WAIT_S).model_dump(mode="json"))
        try:
            await self._nc.publish(self._push_subject, body, reply)
        except nats.errors.Error:
            self._push_wait = None  # asked again on the next take

    async def _on_push(self, msg: Msg) -> None:
        """The answer to a push request: a bulletin, a wait that ran out (ask again), or
        a refusal (ask again later)."""
        if self._push_wait is None or msg.subject != self._push_wait[0]:
            return  # an answer to a request given up on: its bulletin is queued too
        self._push_wait = None
        headers = msg.headers or {}
        if msg.data and headers.get(KIND_HEADER) == PUSH_KIND:
            self._pushed += _pushed(msg.data, msg.subject, headers.get(PUSH_FRAMES_HEADER))
            self._arrived.set()
        elif not msg.data and headers.get(PUSH_STATE_HEADER) == "idle":
            pass
        elif _status(msg) == "503":  # no responders: no relay answers the API now
            self._push_off_until = time.monotonic() + _NO_RESPONDERS_RETRY_S
        else:
            # Replaced by a newer wait of this agency's, or refused (an ErrorReply; a
            # broker before ADR 38 knows no push): the queues alone deliver for a while.
            log.info("no pushed bulletins for %.0f s; the queues deliver them", PUSH_RETRY_S)
            self._push_off_until = time.monotonic() + PUSH_RETRY_S
        await self._ask_push()

    async def _on_msg(self, msg: Msg) -> None:
        if msg.subject.startswith(f"{self._inbox}.p"):
            await self._on_push(msg)
            return
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

    async def _now(self, durables: Sequence[str], want: int) -> list[Msg]:
        """What ``durables`` hold now, up to ``want``, most urgent first, without waiting
        for more: each is asked at once (a no_wait pull each, all answered in one round
        trip) for what it lacks of ``want``; what is taken beyond ``want`` stays held."""
        asked: dict[str, str] = {}
        for durable in durables:
            held = self._held[durable]
            if len(held) < want and not self._silent(durable):
                asked[durable] = await self._pull(durable, want - len(held), expires_s=None)
        await self._until(
            lambda: all(
                reply not in self._probes or len(self._held[d]) >= want
                for d, reply in asked.items()
            ),
            PROBE_TIMEOUT_S,
        )
        for durable, reply in asked.items():
            if reply in self._probes and not self._held[durable]:
                log.warning("no answer from delivery consumer %s; asking it less often", durable)
                self._silent_until[durable] = time.monotonic() + SILENT_RETRY_S
            self._probes.discard(reply)
        taken: list[Msg] = []
        for durable in durables:
            taken += self._pop(durable, want - len(taken))
        return taken

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
        await self._until(lambda: any(self._held.values()) or bool(self._pushed), wait)
        got: list[Msg] = []
        for durable in self._durables:
            got += self._pop(durable, want - len(got))
        return got
