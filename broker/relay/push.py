"""Bulletins pushed to waiting agencies over core NATS (ADR 38, ADR 43).

A recipient's queued copy reaches it through JetStream, which writes each consumer's state
to disk as it delivers: for one bulletin to thousands of agencies that is a file per
recipient, seconds in all, and for any bulletin the copies' atomic batch staged and
fsynced before the recipient can fetch it. So a bulletin also goes the way a reply does,
with no disk on the path: every FLASH and IMMEDIATE one, and every other one while the
relay keeps up with its traffic (``PUSH_ALL_BELOW``: a batch that small means nothing
waits behind it; under a backlog the queue paces delivery and a push would only add work):

  * an agency's SDK keeps one ``push`` request open (``istmo.api.<agency>.push``, inside
    the API every agency already imports, so no new grant): ``PushWaits`` keeps its reply
    subject for at most ``wait_s`` seconds, one per agency (a newer wait replaces it);
  * once the relay has recorded its decisions on a batch, it publishes the pushed
    envelopes, each with the agencies it routed it to (``push_bundles``, framed by
    ``schemas.push``), on ``PUSH_SUBJECT``, inside the broker's own account (no agency
    imports it), answers the waits its own API loop keeps itself, on its own connection
    (``PushDoor.answer``: no hop through NATS and the API's thread), then stores the
    queued copies; every other relay's API loop hears the bundle (each keeps the waits it
    was asked for) and answers each listed agency's wait once, with all of that batch's
    bulletins for it, most urgent first;
  * storing one copy that thousands of consumers read keeps nats-server busy for a second
    or more (a state file per consumer), and core messages wait behind it: measured here,
    3,523 pushes took 3.3 s to the median recipient with the copy stored at the same
    time, 0.1 s with the copy stored 0.2 s later. So pushes to ``HOLD_ABOVE`` agencies or
    more hold the copies back until a relay answers that it has pushed (at most
    ``PUSH_HOLD_S``);
  * the SDK opens and hands it over (an urgent one at once; another once nothing queued
    is as urgent, so a push never overtakes what waited longer); the queued copy comes
    later and is dropped by the SDK's dedupe store, which acks it.

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
import threading
import time
from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from schemas.agency import KIND_HEADER, PUSH_KIND, PUSH_STATE_HEADER, PushState
from schemas.errors import EnvelopeError
from schemas.push import (
    PUSH_FRAMES_HEADER,
    PushFrame,
    decode_push_frames,
    encode_push_frames,
    frame_size,
)

__all__ = [
    "HOLD_ABOVE",
    "PUSH_ALL_BELOW",
    "PUSH_HOLD_S",
    "PUSH_SUBJECT",
    "SWEEP_S",
    "PushDoor",
    "PushWaits",
    "answers_by_agency",
    "parse_bundle",
    "push_bundles",
    "push_first",
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
# A decided batch of fewer bulletins than this (and not full) pushes every one of them,
# whatever its precedence: the relay emptied its ingest queue. A larger one pushes only
# FLASH and IMMEDIATE bulletins (``URGENT_PRECEDENCES``).
PUSH_ALL_BELOW = 16
_MORE_ANSWERS_S = 0.02
# Room left in a NATS message for its headers beside a bundle or an answer.
_HEADROOM = 1024


@dataclass(frozen=True)
class _Wait:
    reply: str
    until: float  # monotonic


class PushWaits:
    """Who waits for a push: one reply subject per agency, until a deadline. Safe to use
    from two threads: the loop serving the agency API keeps the waits, and the relay's
    own loop takes those its decided batches answer (``PushDoor.answer``)."""

    def __init__(self) -> None:
        self._by_agency: dict[str, _Wait] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._by_agency)

    def add(self, agency: str, reply: str, until: float) -> str | None:
        """Keep ``reply`` as ``agency``'s wait until ``until``; returns the reply subject
        of the wait it replaces, if any (to be answered ``replaced``)."""
        with self._lock:
            before = self._by_agency.pop(agency, None)
            self._by_agency[agency] = _Wait(reply, until)
        return None if before is None else before.reply

    def take(self, agencies: Iterable[str]) -> list[tuple[str, str]]:
        """(agency, reply subject) of those of ``agencies`` that wait, no longer kept."""
        found = []
        with self._lock:
            for agency in agencies:
                wait = self._by_agency.pop(agency, None)
                if wait is not None:
                    found.append((agency, wait.reply))
        return found

    def expired(self, now: float) -> list[str]:
        """The reply subjects of the waits that ran out by ``now``, no longer kept."""
        with self._lock:
            gone = [a for a, w in self._by_agency.items() if w.until <= now]
            return [self._by_agency.pop(a).reply for a in gone]


def push_bundles(frames: Iterable[PushFrame], limit: int) -> list[bytes]:
    """What a relay publishes on ``PUSH_SUBJECT`` for a batch: its pushes, each with the
    agencies it was routed to (``schemas.push``), in as few messages of at most ``limit``
    bytes as hold them, in order. A push alone over ``limit`` is left to the queue."""
    bundles: list[bytes] = []
    part: list[PushFrame] = []
    size = 0
    for frame in frames:
        need = frame_size(frame)
        if need > limit:
            log.info("a push over NATS's message limit: queued only")
            continue
        if part and size + need > limit:
            bundles.append(encode_push_frames(part))
            part, size = [], 0
        part.append(frame)
        size += need
    if part:
        bundles.append(encode_push_frames(part))
    return bundles


def parse_bundle(data: bytes) -> list[PushFrame]:
    """The pushes of a ``push_bundles`` message.

    Raises:
        EnvelopeError: it is not one (``schemas.push.decode_push_frames``).
    """
    frames = decode_push_frames(data, routed=True)
    if not frames:
        raise EnvelopeError("an empty push", code="malformed")
    return frames


def answers_by_agency(
    frames: Iterable[PushFrame], limit: int, *, only: Set[str]
) -> dict[str, list[PushFrame]]:
    """The pushes of a bundle for each agency of ``only`` they were routed to, in order
    and without the recipients, as many as fit one answer of ``limit`` bytes (the rest
    are queued anyway). Every agency's list holds the same frame objects."""
    by_agency: dict[str, list[PushFrame]] = {}
    sizes: dict[str, int] = {}
    for frame in frames:
        bare = PushFrame(frame.precedence, frame.envelope)
        need = frame_size(bare)
        for agency in frame.recipients:
            if agency not in only or sizes.get(agency, 0) + need > limit:
                continue
            by_agency.setdefault(agency, []).append(bare)
            sizes[agency] = sizes.get(agency, 0) + need
    return by_agency


class PushDoor:
    """The waits one relay was asked for, and their answers: kept on the loop and
    connection that serve the agency API (``broker.relay.agency_api``), answered there
    for the bundles other relays publish, and on the relay's own loop and connection for
    the batches it decides itself (``answer``)."""

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
        """Answer the waits of the agencies a bundle's pushes were routed to, each with its
        own pushes (``schemas.push``); how many waits were answered. A door that keeps no
        wait does not read the bundle; one that does logs a malformed bundle (none but a
        relay can publish one)."""
        if not len(self.waits):
            return 0  # nobody waits here: nothing to read
        try:
            frames = parse_bundle(data)
        except EnvelopeError as exc:
            log.warning("dropped a malformed push (%s)", exc.code)
            return 0
        return await self.answer(nc, frames)

    async def answer(self, nc: NATS, frames: Sequence[PushFrame]) -> int:
        """Answer on ``nc`` the waits kept here of the agencies ``frames`` were routed to,
        each with its own pushes; how many were answered. The relay calls it for a batch
        it decided, after publishing the batch's bundle for the other relays: the answer
        then skips a hop through NATS and the API's thread, which must win the
        interpreter lock from the busy relay loop (3-4 ms at 100 bulletins a second), and
        the bundle reaches this relay's API loop before any wait its answer prompts, so
        nothing is pushed twice."""
        waiting = self.waits.take(dict.fromkeys(a for f in frames for a in f.recipients))
        if not waiting:
            return 0
        mine = answers_by_agency(frames, nc.max_payload - _HEADROOM, only={a for a, _ in waiting})
        # Agencies given the same pushes (a broadcast's thousands) share one encoding.
        encoded: dict[tuple[int, ...], bytes] = {}
        for agency, reply in waiting:
            pushed = mine.get(agency)
            if not pushed:  # over the limit: queued only; the SDK asks again after idle
                await _answer_empty(nc, reply, "idle")
                continue
            key = tuple(map(id, pushed))
            if key not in encoded:
                encoded[key] = encode_push_frames(pushed)
            headers = {KIND_HEADER: PUSH_KIND, PUSH_FRAMES_HEADER: str(len(pushed))}
            with contextlib.suppress(nats.errors.Error):
                await nc.publish(reply, encoded[key], headers=headers)
        return len(waiting)


async def push_first(nc: NATS, pushes: list[PushFrame], *, hold_s: float = PUSH_HOLD_S) -> int:
    """Publish ``pushes`` (each with the agencies it was routed to; one with none is
    skipped) on ``nc`` in as few bundles as hold them; one over NATS's message limit is
    left to the queue. If they name ``HOLD_ABOVE`` agencies or more, return once the
    relays answered that they pushed them (at most ``hold_s``): the caller stores the
    copies after. Returns how many answers came (0 when not held)."""
    routed = [f for f in pushes if f.recipients]
    fit = push_bundles(routed, nc.max_payload - _HEADROOM)
    if not fit:
        return 0
    if sum(len(f.recipients) for f in routed) < HOLD_ABOVE:
        with contextlib.suppress(nats.errors.Error):
            for data in fit:
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
        for data in fit:
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
