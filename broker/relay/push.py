"""FLASH and IMMEDIATE bulletins pushed to waiting agencies over core NATS (ADR 38).

A recipient's queued copy reaches it through JetStream, which writes each consumer's state
to disk as it delivers: for one bulletin to thousands of agencies that is a file per
recipient, seconds in all. So an urgent bulletin also goes the way a reply does, with no
disk on the path:

  * an agency's SDK keeps one ``push`` request open (``istmo.api.<agency>.push``, inside
    the API every agency already imports, so no new grant): ``PushWaits`` keeps its reply
    subject for at most ``wait_s`` seconds, one per agency (a newer wait replaces it);
  * once the relay has recorded its decision on a FLASH or IMMEDIATE bulletin, it
    publishes the envelope with the agencies it routed it to on ``PUSH_SUBJECT``, inside
    the broker's own account (no agency imports it), then stores the queued copies; every
    relay's API loop hears it (each keeps the waits it was asked for) and answers each
    listed agency's wait with the envelope;
  * storing one copy that thousands of consumers read keeps nats-server busy for a second
    or more (a state file per consumer), and core messages wait behind it: measured here,
    3,523 pushes took 3.3 s to the median recipient with the copy stored at the same
    time, 0.1 s with the copy stored 0.2 s later. So a push to ``HOLD_ABOVE`` agencies or
    more holds the copies back until a relay answers that it has pushed (at most
    ``PUSH_HOLD_S``);
  * the SDK opens and hands it over at once; the queued copy comes later and is dropped
    by the SDK's dedupe store, which then sends the receipt and acks it.

A push is only ever sooner, never the record: it goes after the decision and its audit
events are committed, only to agencies the relay routed the bulletin to, sealed as it is
stored (the broker never reads it). A push lost (no wait open, a relay restarting, a
message over NATS's limit) costs nothing but the queue's speed; if storing the copies
fails, the batch comes back and resumes from its record, and the SDK that was pushed the
bulletin only acks its queued copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from schemas.agency import KIND_HEADER, PUSH_KIND, PUSH_STATE_HEADER, PushState
from schemas.errors import EnvelopeError
from schemas.ids import AgencyId, parse_agency_id

__all__ = [
    "HOLD_ABOVE",
    "PUSH_HOLD_S",
    "PUSH_SUBJECT",
    "SWEEP_S",
    "PushDoor",
    "PushWaits",
    "parse_push",
    "push_first",
    "push_message",
]

log = logging.getLogger("istmo.relay")

# Inside account ISTMO only: no agency account imports it.
PUSH_SUBJECT = "istmo.relay.push"
SWEEP_S = 1.0  # how often waits that ran out are answered
# A push naming this many agencies or more holds the batch's copies back until a relay
# says it has answered its waits, for at most PUSH_HOLD_S; after the first answer, others
# (more relays) are waited for while they come within _MORE_ANSWERS_S of each other.
HOLD_ABOVE = 100
PUSH_HOLD_S = 0.5
_MORE_ANSWERS_S = 0.02
_SEP = b"\n"  # between the recipients' line and the envelope


@dataclass(frozen=True)
class _Wait:
    reply: str
    until: float  # monotonic


class PushWaits:
    """Who waits for a push: one reply subject per agency, until a deadline (pure)."""

    def __init__(self) -> None:
        self._by_agency: dict[str, _Wait] = {}

    def __len__(self) -> int:
        return len(self._by_agency)

    def add(self, agency: str, reply: str, until: float) -> str | None:
        """Keep ``reply`` as ``agency``'s wait until ``until``; returns the reply subject
        of the wait it replaces, if any (to be answered ``replaced``)."""
        before = self._by_agency.pop(agency, None)
        self._by_agency[agency] = _Wait(reply, until)
        return None if before is None else before.reply

    def take(self, agencies: Iterable[str]) -> list[str]:
        """The reply subjects of those of ``agencies`` that wait, no longer kept."""
        found = []
        for agency in agencies:
            wait = self._by_agency.pop(agency, None)
            if wait is not None:
                found.append(wait.reply)
        return found

    def expired(self, now: float) -> list[str]:
        """The reply subjects of the waits that ran out by ``now``, no longer kept."""
        gone = [a for a, w in self._by_agency.items() if w.until <= now]
        return [self._by_agency.pop(a).reply for a in gone]


def push_message(recipients: Iterable[str], envelope: bytes) -> bytes:
    """What a relay publishes on ``PUSH_SUBJECT``: the recipients' ids, comma-separated,
    a newline, then the envelope as stored."""
    return ",".join(recipients).encode() + _SEP + envelope


def parse_push(data: bytes) -> tuple[list[AgencyId], bytes]:
    """(recipients, envelope) of a ``push_message``.

    Raises:
        EnvelopeError: it is not one (no newline, an id that is not an agency's, nothing
            after it).
    """
    head, sep, envelope = data.partition(_SEP)
    if not sep or not envelope or not head:
        raise EnvelopeError("not a push message", code="malformed")
    return [parse_agency_id(a) for a in head.decode("ascii", "replace").split(",")], envelope


class PushDoor:
    """The waits one relay was asked for, and their answers; on the loop and connection
    that serve the agency API (``broker.relay.agency_api``), never shared across loops."""

    def __init__(self) -> None:
        self.waits = PushWaits()
        self.serving = False  # listening to the relays' pushes
        self._closed = False

    async def wait(self, nc: NATS, agency: str, reply: str, wait_s: int) -> None:
        """Keep ``reply`` as ``agency``'s wait for ``wait_s`` seconds; answer the one it
        replaces. Once ``close``d, answer it at once (``idle``: its SDK asks again, of
        another relay)."""
        if self._closed:
            await _answer_empty(nc, reply, "idle")
            return
        replaced = self.waits.add(agency, reply, time.monotonic() + wait_s)
        if replaced is not None:
            await _answer_empty(nc, replaced, "replaced")

    async def serve(self, nc: NATS, stop: asyncio.Event) -> None:
        """Hear the relays' pushes on ``nc`` and answer waits that ran out, until
        ``stop``."""

        async def on_push(msg: Msg) -> None:
            pushed = await self.deliver(nc, msg.data)
            if msg.reply:  # the relay holds its copies back until the pushes are out
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    await nc.flush(timeout=1)
                    await nc.publish(msg.reply, str(pushed).encode())

        sub = await nc.subscribe(PUSH_SUBJECT, cb=on_push)
        await nc.flush()
        self.serving = True
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), SWEEP_S)
                for reply in self.waits.expired(time.monotonic()):
                    await _answer_empty(nc, reply, "idle")
        finally:
            self.serving = False
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def close(self, nc: NATS) -> None:
        """Answer every wait kept (``idle``), and any asked from now on: called once the
        API is no longer subscribed, so the SDKs ask again of a relay that runs."""
        self._closed = True
        for reply in self.waits.expired(float("inf")):
            await _answer_empty(nc, reply, "idle")
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await nc.flush(timeout=2)

    async def deliver(self, nc: NATS, data: bytes) -> int:
        """Answer the waits of the recipients a push names with its envelope; how many
        were answered. A malformed push (none but a relay can publish one) is logged."""
        try:
            recipients, envelope = parse_push(data)
        except EnvelopeError as exc:
            log.warning("dropped a malformed push (%s)", exc.code)
            return 0
        replies = self.waits.take(recipients)
        headers = {KIND_HEADER: PUSH_KIND}
        for reply in replies:
            with contextlib.suppress(nats.errors.Error):
                await nc.publish(reply, envelope, headers=headers)
        return len(replies)


async def push_first(
    nc: NATS, pushes: list[tuple[list[str], bytes]], *, hold_s: float = PUSH_HOLD_S
) -> int:
    """Publish each (recipients, envelope) of ``pushes`` on ``nc``, skipping one with no
    recipients or over NATS's message limit (the queue alone delivers it). If they name
    ``HOLD_ABOVE`` agencies or more, return once the relays answered that they pushed them
    (at most ``hold_s``): the caller stores the copies after. Returns how many answers
    came (0 when not held)."""
    sent = [
        (recipients, data)
        for recipients, envelope in pushes
        if recipients and (data := push_message(recipients, envelope))
    ]
    fit = [(r, d) for r, d in sent if len(d) <= nc.max_payload]
    if len(fit) < len(sent):
        log.info("%d pushes over NATS's message limit: queued only", len(sent) - len(fit))
    if not fit:
        return 0
    if sum(len(r) for r, _ in fit) < HOLD_ABOVE:
        with contextlib.suppress(nats.errors.Error):
            for _, data in fit:
                await nc.publish(PUSH_SUBJECT, data)
        return 0
    answers: asyncio.Queue[bool] = asyncio.Queue()  # False: no relay listens

    async def on_answer(msg: Msg) -> None:
        if msg.data:
            answers.put_nowait(True)
        elif (msg.headers or {}).get("Status") == "503":  # no responders
            answers.put_nowait(False)

    inbox = nc.new_inbox()
    try:
        sub = await nc.subscribe(inbox, cb=on_answer)
    except nats.errors.Error as exc:
        log.info("pushes not sent (%s); the queue delivers them", type(exc).__name__)
        return 0
    try:
        for _, data in fit:
            await nc.publish(PUSH_SUBJECT, data, reply=inbox)
        return await _answered(answers, len(fit), time.monotonic() + hold_s)
    except nats.errors.Error as exc:
        log.info("pushes not confirmed (%s); storing the copies", type(exc).__name__)
        return 0
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()


async def _answered(answers: asyncio.Queue[bool], pushes: int, deadline: float) -> int:
    """Wait for the first relay's answer to each push, then for more while they come
    within ``_MORE_ANSWERS_S`` of each other; never past ``deadline``, nor past word that
    no relay listens. How many came."""
    got = 0
    while time.monotonic() < deadline:
        wait = deadline - time.monotonic()
        if got >= pushes:
            wait = min(wait, _MORE_ANSWERS_S)
        try:
            if not await asyncio.wait_for(answers.get(), max(wait, 0)):
                break
        except TimeoutError:
            break
        got += 1
    return got


async def _answer_empty(nc: NATS, reply: str, state: PushState) -> None:
    with contextlib.suppress(nats.errors.Error):
        await nc.publish(reply, b"", headers={PUSH_STATE_HEADER: state})
