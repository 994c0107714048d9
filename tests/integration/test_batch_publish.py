"""Group commit (``broker.bus.batch``) against a real nats-server with Istmo's streams.

A list of messages is stored as JetStream atomic batches, whole or not at all, in order
and chunked at 1,000; a batch holding an id the stream already has (a retry after a
crash) is refused whole by JetStream (10201) and sent again one message at a time, so
each message is stored exactly once. ``ensure_streams`` turns ``allow_atomic`` on for a
delivery stream an older Istmo made, keeping what it holds.
"""

from __future__ import annotations

from collections import Counter

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import APIError

from broker.bus.batch import MAX_BATCH, Message, chunks, publish_batch
from broker.bus.streams import ensure_atomic, ensure_streams
from schemas.labels import Precedence
from schemas.subjects import AUDIT_STREAM, DELIVER_STREAM, INGEST_STREAM, deliver_subject
from tests.integration.test_nats_confinement import GT, JM, StackFactory

ATOMIC_DISABLED = 10174  # "atomic publish is disabled"


def _deliveries(ids: range, recipients: tuple[str, ...] = (GT, JM)) -> list[Message]:
    return [
        Message(deliver_subject(r, Precedence.ROUTINE), f"bulletin-{i}".encode(), f"b{i}:{r}")
        for i in ids
        for r in recipients
    ]


async def _stored(js: JetStreamContext, stream: str) -> list[tuple[str, bytes, str | None]]:
    """(subject, data, Nats-Msg-Id) of every message ``stream`` holds, in stream order."""
    state = (await js.stream_info(stream)).state
    out = []
    for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
        msg = await js.get_msg(stream, seq)
        out.append((msg.subject or "", msg.data or b"", (msg.headers or {}).get("Nats-Msg-Id")))
    return out


async def _relay(nats_stack: StackFactory) -> NATS:
    stack = await nats_stack([GT, JM])
    nc: NATS = await stack.connect_relay()
    return nc


async def test_a_batch_is_committed_once_across_subjects_in_order(
    nats_stack: StackFactory,
) -> None:
    nc = await _relay(nats_stack)
    js = nc.jetstream()
    messages = _deliveries(range(3))

    result = await publish_batch(nc, DELIVER_STREAM, messages)

    assert len(result.acks) == 1
    (ack,) = result.acks
    assert (ack.stream, ack.seq, ack.count, ack.atomic) == (DELIVER_STREAM, 6, 6, True)
    assert result.duplicates == 0
    assert await _stored(js, DELIVER_STREAM) == [(m.subject, m.data, m.msg_id) for m in messages]


async def test_more_than_a_thousand_are_chunked_and_kept_in_order(
    nats_stack: StackFactory,
) -> None:
    nc = await _relay(nats_stack)
    js = nc.jetstream()
    messages = _deliveries(range(1234))  # 2,468 messages: 1,000 + 1,000 + 468

    result = await publish_batch(nc, DELIVER_STREAM, messages)

    assert [a.count for a in result.acks] == [MAX_BATCH, MAX_BATCH, 468]
    assert [a.seq for a in result.acks] == [1000, 2000, 2468]
    assert all(a.atomic for a in result.acks)
    assert await _stored(js, DELIVER_STREAM) == [(m.subject, m.data, m.msg_id) for m in messages]


async def test_each_message_of_a_batch_is_stored_with_its_own_headers(
    nats_stack: StackFactory,
) -> None:
    """Every message of a batch keeps its own headers (a link's, a TTL, one nats-py
    trims), with the batch's sequence, in order."""
    nc = await _relay(nats_stack)
    js = nc.jetstream()
    link = (("Istmo-Link", "partner-a"),)
    messages = [
        Message(deliver_subject(GT, Precedence.ROUTINE), b"first", "m1", None, link),
        Message(deliver_subject(JM, Precedence.FLASH), b"framed", "m2", 60, link),
        Message(deliver_subject(GT, Precedence.FLASH), b"trimmed", "m3", None, (("K", " v "),)),
        Message(deliver_subject(JM, Precedence.ROUTINE), b"framed too", "m4", None, link),
        Message(deliver_subject(GT, Precedence.ROUTINE), b"last", "m5"),
    ]

    (ack,) = (await publish_batch(nc, DELIVER_STREAM, messages)).acks

    assert (ack.count, ack.atomic) == (5, True)
    assert await _stored(js, DELIVER_STREAM) == [(m.subject, m.data, m.msg_id) for m in messages]
    first = (await js.stream_info(DELIVER_STREAM)).state.first_seq
    stored = [(await js.get_msg(DELIVER_STREAM, first + i)).headers or {} for i in range(5)]
    assert [h.get("Nats-Batch-Sequence") for h in stored] == ["1", "2", "3", "4", "5"]
    assert stored[1]["Istmo-Link"] == stored[3]["Istmo-Link"] == "partner-a"
    assert stored[1]["Nats-TTL"] == "60s"
    assert stored[2]["K"] == "v"  # trimmed, as nats-py does


def test_chunks_bound_messages_and_bytes_and_keep_order() -> None:
    messages = [Message("s", b"x" * 40, str(i)) for i in range(10)]
    assert [len(c) for c in chunks(messages, size=4)] == [4, 4, 2]
    assert [len(c) for c in chunks(messages, size=100, max_bytes=100)] == [2, 2, 2, 2, 2]
    big = [Message("s", b"x" * 500), *messages[:2]]
    assert [len(c) for c in chunks(big, size=100, max_bytes=100)] == [1, 2]
    assert [m for c in chunks(messages, size=3) for m in c] == messages
    assert list(chunks([], size=3)) == []


async def test_a_retry_holding_stored_ids_falls_back_and_stores_each_once(
    nats_stack: StackFactory,
) -> None:
    """A redelivered ingest batch after a crash: part of its deliveries are stored.
    JetStream refuses such a batch whole (10201); each message is then published on its
    own with its id, and the stream ends up holding every message exactly once."""
    nc = await _relay(nats_stack)
    js = nc.jetstream()
    first = _deliveries(range(5))
    await publish_batch(nc, DELIVER_STREAM, first)
    retry = _deliveries(range(3, 9))  # b3, b4 stored already; b5..b8 new

    result = await publish_batch(nc, DELIVER_STREAM, retry)

    (ack,) = result.acks
    assert (ack.atomic, ack.count, ack.duplicates) == (False, 12, 4)
    stored = await _stored(js, DELIVER_STREAM)
    ids = Counter(msg_id for _, _, msg_id in stored)
    assert set(ids) == {m.msg_id for m in _deliveries(range(9))}
    assert set(ids.values()) == {1}
    # The new ones follow in the order given, after what the first batch stored.
    assert [msg_id for _, _, msg_id in stored[10:]] == [m.msg_id for m in retry[4:]]


async def test_only_the_refused_chunk_falls_back(nats_stack: StackFactory) -> None:
    nc = await _relay(nats_stack)
    await publish_batch(nc, DELIVER_STREAM, _deliveries(range(1)))
    result = await publish_batch(nc, DELIVER_STREAM, _deliveries(range(4)), size=4)
    assert [(a.count, a.atomic, a.duplicates) for a in result.acks] == [
        (4, False, 2),
        (4, True, 0),
    ]


async def test_a_refused_batch_stores_nothing(nats_stack: StackFactory) -> None:
    """All or nothing: a batch whose last message the stream refuses (over its message
    size limit) leaves none of the messages before it stored."""
    nc = await _relay(nats_stack)
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name="BATCH_TEST",
            subjects=["batch.test.>"],
            storage=StorageType.FILE,
            max_msg_size=1000,
            allow_atomic=True,
        )
    )
    fits = [Message(f"batch.test.{i}", b"x" * 50, f"m{i}") for i in range(5)]

    with pytest.raises(APIError):
        await publish_batch(nc, "BATCH_TEST", [*fits, Message("batch.test.big", b"x" * 2000)])

    assert (await js.stream_info("BATCH_TEST")).state.messages == 0
    # The same messages without the oversized one go through whole.
    result = await publish_batch(nc, "BATCH_TEST", fits)
    assert result.count == 5
    assert (await js.stream_info("BATCH_TEST")).state.messages == 5


async def test_a_stream_without_atomic_batches_refuses_and_stores_nothing(
    nats_stack: StackFactory,
) -> None:
    nc = await _relay(nats_stack)
    js = nc.jetstream()
    subject = "istmo.gated.ingest." + GT
    with pytest.raises(APIError) as refused:
        await publish_batch(nc, INGEST_STREAM, [Message(subject, b"a"), Message(subject, b"b")])
    assert refused.value.err_code == ATOMIC_DISABLED
    assert (await js.stream_info(INGEST_STREAM)).state.messages == 0


async def test_ensure_streams_lets_an_old_delivery_stream_take_batches(
    nats_stack: StackFactory,
) -> None:
    """A data directory from before group commit: its delivery and audit streams lack
    ``allow_atomic``. ``ensure_streams`` (every ``istmo up``) and ``ensure_atomic`` (a
    joining relay) update them in place; what they hold stays."""
    nc = await _relay(nats_stack)
    js = nc.jetstream()
    for name in (DELIVER_STREAM, AUDIT_STREAM):
        config = (await js.stream_info(name)).config
        await js.delete_stream(name)
        config.allow_atomic = None  # as an older Istmo created it
        await js.add_stream(config)
        assert not (await js.stream_info(name)).config.allow_atomic
    await js.publish(
        deliver_subject(GT, Precedence.ROUTINE), b"old", headers={"Nats-Msg-Id": "old:" + GT}
    )

    await ensure_streams(js)

    for name in (DELIVER_STREAM, AUDIT_STREAM):
        assert (await js.stream_info(name)).config.allow_atomic
    await publish_batch(nc, DELIVER_STREAM, _deliveries(range(1)))
    stored = [data for _, data, _ in await _stored(js, DELIVER_STREAM)]
    assert stored == [b"old", b"bulletin-0", b"bulletin-0"]  # one for each of GT, JM


async def test_ensure_atomic_enables_it_on_one_stream(nats_stack: StackFactory) -> None:
    nc = await _relay(nats_stack)
    js = nc.jetstream()
    config = (await js.stream_info(DELIVER_STREAM)).config
    await js.delete_stream(DELIVER_STREAM)
    config.allow_atomic = None
    await js.add_stream(config)

    await ensure_atomic(js, DELIVER_STREAM)
    await ensure_atomic(js, DELIVER_STREAM)  # idempotent

    assert (await js.stream_info(DELIVER_STREAM)).config.allow_atomic
