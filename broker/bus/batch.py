"""Group commit: many messages of one stream stored with one flush (JetStream atomic batch).

With ``sync_interval: always`` nats-server flushes every write it stores; one by one this
machine stores about 3,600 messages/s, in atomic batches of 500 (ADR-50, nats-server >=
2.12, stream ``allow_atomic``) 13,600-20,400. ``publish_batch`` sends a list of messages
of one stream as a few atomic batches (at most ``MAX_BATCH`` messages and about
``MAX_BATCH_BYTES`` each), one after the other and in the order given, so the stream
holds them in that order. Each batch is stored whole or not at all.

The wire (nats-py has no API for it): every message carries ``Nats-Batch-Id`` (a fresh
id per batch) and ``Nats-Batch-Sequence`` (1..n); all but the last go as plain
publishes, the last as a request with ``Nats-Batch-Commit: 1``, answered with the batch's
PubAck or an error: one round trip a batch. nats-server checks the whole batch at its
commit (duplicate ids, TTLs, the stream's settings), so every refusal comes in that
answer; a batch it would not even start (too many in flight) is answered "incomplete".
The first message was once sent as a request too, to hear such a refusal sooner: at
200 bulletins/s that second round trip was a third of the relay's time from a
bulletin's fetch to its deliveries stored (30 ms a batch against 20 ms without it).

A batch holding any ``Nats-Msg-Id`` the stream already has (within its dedupe window) is
refused whole (err_code 10201), not deduplicated message by message. That is what a retry
after a crash or an unanswered commit meets, so such a batch is sent again one message
at a time with the same ids, which JetStream deduplicates one by one: each message ends
up stored exactly once, and nothing counts as lost. Any other refusal raises, with
nothing of that batch stored (earlier batches of the same call stay stored: a caller
that retries sends them all again with the same ids and meets the fallback).

Left to others: which messages to send and what to settle once they are stored (the
relay; receipts and audit later), and enabling ``allow_atomic`` on a stream
(``broker.bus.streams``).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NoReturn

from nats.aio.client import Client as NATS
from nats.js.errors import APIError

__all__ = [
    "DUPLICATE_IN_BATCH",
    "MAX_BATCH",
    "MAX_BATCH_BYTES",
    "BatchAck",
    "BatchResult",
    "Message",
    "chunks",
    "publish_batch",
]

MAX_BATCH = 1000  # nats-server's limit on the messages of one atomic batch
# The server stages a batch in memory until its commit: bound what one batch holds
# (a batch of 64 bulletins to 60 agencies each is ~400 MB in all).
MAX_BATCH_BYTES = 8 * 1024 * 1024
DUPLICATE_IN_BATCH = 10201  # "atomic publish batch contains duplicate message id"
IN_FLIGHT = 256  # per-message publishes of the fallback awaiting their acks at once


@dataclass(frozen=True)
class Message:
    """One message to store: its subject, payload, optional dedupe id and optional
    per-message TTL in seconds (``Nats-TTL``; the stream must have ``allow_msg_ttl``)."""

    subject: str
    data: bytes
    msg_id: str | None = None
    ttl_s: int | None = None
    extra: tuple[tuple[str, str], ...] = ()  # more headers, e.g. a crossed bulletin's

    def headers(self) -> dict[str, str]:
        """The headers that store it: its dedupe id and TTL, if any, and ``extra``."""
        headers = dict(self.extra)
        if self.msg_id is not None:
            headers["Nats-Msg-Id"] = self.msg_id
        if self.ttl_s is not None:
            headers["Nats-TTL"] = f"{self.ttl_s}s"
        return headers


@dataclass(frozen=True)
class BatchAck:
    """What the stream answered for one batch.

    Attributes:
        stream: the stream that stored it.
        seq: the stream sequence of its last message (the highest, after a fallback).
        count: how many messages the batch held.
        atomic: True if it was committed as one atomic batch; False if it fell back to
            one publish per message after a duplicate id.
        duplicates: of a fallback, how many messages the stream already held.
    """

    stream: str
    seq: int
    count: int
    atomic: bool = True
    duplicates: int = 0


@dataclass(frozen=True)
class BatchResult:
    """The acks of every batch one ``publish_batch`` call sent, in order."""

    acks: tuple[BatchAck, ...]

    @property
    def count(self) -> int:
        """Messages sent (stored now or found already stored)."""
        return sum(a.count for a in self.acks)

    @property
    def duplicates(self) -> int:
        """Messages the stream already held (found by a fallback)."""
        return sum(a.duplicates for a in self.acks)

    @property
    def fallbacks(self) -> int:
        """Batches sent one message at a time after a duplicate id."""
        return sum(1 for a in self.acks if not a.atomic)


def chunks(
    messages: Sequence[Message], *, size: int = MAX_BATCH, max_bytes: int = MAX_BATCH_BYTES
) -> Iterator[Sequence[Message]]:
    """Cut ``messages`` into runs of at most ``size`` messages and about ``max_bytes``
    payload bytes (a message larger than that goes alone), keeping their order."""
    start, held = 0, 0
    for i, message in enumerate(messages):
        if i > start and (i - start >= size or held + len(message.data) > max_bytes):
            yield messages[start:i]
            start, held = i, 0
        held += len(message.data)
    if start < len(messages):
        yield messages[start:]


async def publish_batch(
    nc: NATS,
    stream: str,
    messages: Sequence[Message],
    *,
    timeout: float = 10.0,
    size: int = MAX_BATCH,
) -> BatchResult:
    """Store ``messages`` on ``stream`` in atomic batches of at most ``size``, in order.

    Args:
        nc: a connection allowed to publish on the messages' subjects.
        stream: the stream their subjects belong to (with ``allow_atomic``); an answer
            from another stream is refused.
        messages: what to store, in the order the stream should hold it.
        timeout: how long to wait for each reply, in seconds.
        size: messages per batch, at most ``MAX_BATCH``.

    Returns:
        The ack of each batch sent.

    Raises:
        nats.js.errors.APIError: JetStream refused a batch (other than for a duplicate
            id): nothing of that batch is stored.
        nats.errors.TimeoutError: a reply did not come; the batch may or may not be
            stored (a retry with the same ids meets the fallback).
        nats.errors.Error: NATS is unavailable.
    """
    if not 1 <= size <= MAX_BATCH:
        raise ValueError(f"an atomic batch holds 1 to {MAX_BATCH} messages, not {size}")
    acks = []
    for chunk in chunks(messages, size=size):
        acks.append(await _one_batch(nc, stream, chunk, timeout))
    return BatchResult(tuple(acks))


async def _one_batch(nc: NATS, stream: str, chunk: Sequence[Message], timeout: float) -> BatchAck:
    batch_id = uuid.uuid4().hex
    last = len(chunk)
    for n, message in enumerate(chunk, 1):
        headers = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(n), **message.headers()}
        if n == last:
            headers["Nats-Batch-Commit"] = "1"
        if n == last:
            reply = await nc.request(message.subject, message.data, timeout, headers=headers)
            answer = json.loads(reply.data) if reply.data else {}
            error = answer.get("error")
            if error is not None:
                if error.get("err_code") == DUPLICATE_IN_BATCH:
                    return await _one_by_one(nc, stream, chunk, timeout)
                _refused(error)
            if n == last:
                return _committed(stream, answer, last)
        else:
            await nc.publish(message.subject, message.data, headers=headers)
    raise AssertionError("unreachable: an empty batch is never sent")


def _refused(error: dict[str, object]) -> NoReturn:
    """Raise JetStream's refusal as nats-py's matching ``APIError`` subclass."""
    APIError.from_error(error)  # raises
    raise AssertionError("unreachable: from_error always raises")


def _committed(stream: str, answer: dict[str, object], count: int) -> BatchAck:
    """The commit's PubAck, checked: the stream we meant, every message stored."""
    seq, stored = answer.get("seq"), answer.get("count")
    if answer.get("stream") != stream or not isinstance(seq, int) or stored != count:
        raise APIError(
            code=500,
            description=f"unexpected answer to an atomic batch on {stream}: {answer!r}",
        )
    return BatchAck(stream=stream, seq=seq, count=count)


async def _one_by_one(nc: NATS, stream: str, chunk: Sequence[Message], timeout: float) -> BatchAck:
    """Store each message of a refused batch on its own, deduplicated by its id.

    Pipelined on one connection, so the stream stores them in the order given."""
    js = nc.jetstream(timeout=timeout)
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(message: Message) -> tuple[int, bool]:
        headers = message.headers() or None
        async with gate:
            ack = await js.publish(message.subject, message.data, stream=stream, headers=headers)
        return ack.seq, bool(ack.duplicate)

    results = await asyncio.gather(*(one(m) for m in chunk), return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    done = [r for r in results if not isinstance(r, BaseException)]
    return BatchAck(
        stream=stream,
        seq=max(seq for seq, _ in done),
        count=len(chunk),
        atomic=False,
        duplicates=sum(1 for _, dup in done if dup),
    )
