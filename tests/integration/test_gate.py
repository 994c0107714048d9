"""The gate between agencies and JetStream (``broker.bus.gate``), against a real nats-server.

An agency's publish on its ingest or receipt subject is stored by the gate with only the
gate's own ``Nats-Msg-Id``: every header nats-server would act on is dropped, the dedupe id
lives in the sender's namespace, and the publisher gets JetStream's own PubAck. Without a
gate, a publish finds no responders and nothing is stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import nats.js.errors
import pytest
from nats.aio.client import Client as NATS

from broker.bus.gate import Gate
from broker.bus.streams import ensure_streams
from schemas.subjects import (
    GATED_AT_HEADER,
    INGEST_STREAM,
    RECEIPT_STREAM,
    gated_msg_id,
    gated_subject,
    ingest_msg_id,
    ingest_subject,
    receipt_subject,
)
from tests.integration.test_nats_confinement import GT, JM, StackFactory, stored
from tests.waiting import eventually

# Headers with which a publisher could act on a stream's state (the catalogue's note 11
# and S-26): on nats-server 2.15.1 a failing Nats-Expected-Last-Msg-Id on a replicated
# stream stalls it for everyone (tests/cluster/test_cluster_confinement.py).
HOSTILE_HEADERS: dict[str, str] = {
    "Nats-Expected-Last-Msg-Id": "nope",
    "Nats-Expected-Last-Sequence": "999",
    "Nats-Expected-Last-Subject-Sequence": "999",
    "Nats-Expected-Stream": "SOMETHING_ELSE",
    "Nats-Rollup": "all",
    "Nats-TTL": "1s",
    "Nats-Schedule": "@at 2030-01-01T00:00:00Z",
    "Nats-Incr": "+1",
    "Nats-Batch-Id": "b1",
    "Nats-Batch-Sequence": "1",
    "Istmo-Kind": "deliver",
    # A forged stamp a week old would widen the relay's clock window (ADR 0034).
    GATED_AT_HEADER: "1",
    "X-Whatever": "agency text",
}


async def _kept_headers(relay: NATS, stream: str, subject: str) -> dict[str, str]:
    msg = await relay.jetstream(timeout=2).get_last_msg(stream, subject)
    return dict(msg.headers or {})


@pytest.mark.parametrize(
    ("kind", "subject_of", "stream"),
    [("ingest", ingest_subject, INGEST_STREAM), ("receipt", receipt_subject, RECEIPT_STREAM)],
)
async def test_every_header_an_agency_sends_is_dropped(
    nats_stack: StackFactory, kind: str, subject_of: Any, stream: str
) -> None:
    stack = await nats_stack([GT, JM])
    relay = await stack.connect_relay()
    gt = await stack.connect_agency(GT)
    js = gt.jetstream(timeout=5)
    await js.publish(subject_of(GT), b"first", headers={"Nats-Msg-Id": "m-1"})

    before_ms = time.time_ns() // 1_000_000
    ack = await js.publish(
        subject_of(GT), b"hostile", headers={**HOSTILE_HEADERS, "Nats-Msg-Id": "m-2"}
    )
    after_ms = time.time_ns() // 1_000_000

    # Stored as a plain message, answered with JetStream's own PubAck.
    assert (ack.stream, ack.seq, ack.duplicate) == (stream, 2, None)
    kept = await _kept_headers(relay, stream, gated_subject(kind, GT))
    # The gate's own stamp, of when it stored it: not the agency's forged one.
    stamp = kept.pop(GATED_AT_HEADER)
    assert before_ms <= int(stamp) <= after_ms
    assert kept == {"Nats-Msg-Id": gated_msg_id(GT, kind, "m-2", "")}
    # No rollup or TTL took effect: both messages are still there.
    assert await stored(relay, subject_of(GT)) == 2
    # And the stream still takes everyone's publishes.
    jm = await stack.connect_agency(JM)
    other = await jm.jetstream(timeout=5).publish(subject_of(JM), b"innocent")
    assert (other.stream, other.seq) == (stream, 3)


async def test_dedupe_ids_live_in_the_senders_namespace(nats_stack: StackFactory) -> None:
    """S-27 by construction: jm proposing gt's exact dedupe id stores jm's message and
    squats nothing; gt's retry of the same envelope is still a duplicate."""
    stack = await nats_stack([GT, JM])
    relay = await stack.connect_relay()
    gt = await stack.connect_agency(GT)
    jm = await stack.connect_agency(JM)
    envelope = b'{"sealed":"gt"}'
    own_id = ingest_msg_id(GT, hashlib.sha256(envelope).hexdigest())

    squat = await jm.jetstream(timeout=5).publish(
        ingest_subject(JM), b"squat", headers={"Nats-Msg-Id": own_id}
    )
    first = await gt.jetstream(timeout=5).publish(
        ingest_subject(GT), envelope, headers={"Nats-Msg-Id": own_id}
    )
    again = await gt.jetstream(timeout=5).publish(
        ingest_subject(GT), envelope, headers={"Nats-Msg-Id": own_id}
    )

    assert (squat.duplicate, first.duplicate, again.duplicate) == (None, None, True)
    assert await stored(relay, ingest_subject(GT)) == 1
    assert await stored(relay, ingest_subject(JM)) == 1


@pytest.mark.parametrize(
    "proposed",
    [None, "", "x" * 129, "spaces are not allowed", "gt-police/ingest/../../jm", "é"],
)
async def test_an_unusable_proposed_id_falls_back_to_the_payload_digest(
    nats_stack: StackFactory, proposed: str | None
) -> None:
    stack = await nats_stack([GT])
    relay = await stack.connect_relay()
    gt = await stack.connect_agency(GT)
    headers = None if proposed is None else {"Nats-Msg-Id": proposed}
    payload = b"same bytes"

    first = await gt.jetstream(timeout=5).publish(ingest_subject(GT), payload, headers=headers)
    again = await gt.jetstream(timeout=5).publish(ingest_subject(GT), payload, headers=headers)

    assert (first.duplicate, again.duplicate) == (None, True)
    kept = await _kept_headers(relay, INGEST_STREAM, gated_subject("ingest", GT))
    digest = hashlib.sha256(payload).hexdigest()
    assert kept.keys() == {"Nats-Msg-Id", GATED_AT_HEADER}
    assert kept["Nats-Msg-Id"] == f"{GT}/ingest/sha256:{digest}"


async def test_no_gate_no_store_and_a_second_gate_takes_over(nats_stack: StackFactory) -> None:
    stack = await nats_stack([GT])
    relay = await stack.connect_relay()
    gt = await stack.connect_agency(GT)
    await stack.close_gate()

    # nats-py reports the 503 of a JetStream publish as "no response from stream".
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await gt.jetstream(timeout=2).publish(ingest_subject(GT), b"nobody listens")
    assert await stored(relay, ingest_subject(GT)) == 0

    # Any broker process's gate serves; the first one's stop lost nothing it had answered.
    stop = asyncio.Event()
    gate_nc = await stack.connect_relay()
    gate = Gate(gate_nc)
    task = asyncio.create_task(gate.run(stop))
    try:
        await asyncio.wait_for(gate.ready.wait(), 5)
        # A 503 stores nothing (above), and the SDK asks again after one
        # (clients.publishing): once in a CI run nats-server still answered the first
        # publish after the new gate's flush with it. So ask as the SDK does.
        ack = await eventually(
            lambda: gt.jetstream(timeout=5).publish(ingest_subject(GT), b"now stored"),
            what="the second gate to store a publish",
            ignoring=(nats.js.errors.NoStreamResponseError,),
            timeout=30,
        )
        assert (ack.stream, ack.seq) == (INGEST_STREAM, 1)
        assert gate.passed == 1
    finally:
        stop.set()
        await task
    assert await stored(relay, ingest_subject(GT)) == 1


async def test_a_gate_keeps_one_publishers_order(nats_stack: StackFactory) -> None:
    stack = await nats_stack([GT])
    relay = await stack.connect_relay()
    gt = await stack.connect_agency(GT)
    js = gt.jetstream(timeout=10)

    acks = await asyncio.gather(*(js.publish(ingest_subject(GT), b"%04d" % i) for i in range(200)))

    assert sorted(a.seq for a in acks) == list(range(1, 201))
    rjs = relay.jetstream(timeout=5)
    bodies = [(await rjs.get_msg(INGEST_STREAM, seq)).data for seq in range(1, 201)]
    assert bodies == [b"%04d" % i for i in range(200)]


async def test_an_upgrade_moves_what_an_older_istmo_stored_ungated(
    nats_stack: StackFactory,
) -> None:
    """Before the gate, ISTMO_INGEST and ISTMO_RECEIPTS listened on the agencies' own
    subjects. Bringing the streams up to date re-stores what still waited there on the
    gated subjects (the gate's id, no other header) so the relay reads it; nothing is lost."""
    stack = await nats_stack([GT])
    await stack.close_gate()  # an older Istmo had none
    relay = await stack.connect_relay()
    js = relay.jetstream(timeout=5)
    waiting = {}
    for kind, subject_of, stream in (
        ("ingest", ingest_subject, INGEST_STREAM),
        ("receipt", receipt_subject, RECEIPT_STREAM),
    ):
        info = await js.stream_info(stream)
        old = info.config
        old.subjects = [f"istmo.{kind}.*"]
        await js.update_stream(old)
        for i in range(3):
            await js.publish(
                subject_of(GT),
                b"%s-%d" % (kind.encode(), i),
                headers={"Nats-Msg-Id": f"old-{i}", "X-Old": "dropped"},
            )
        waiting[kind] = (subject_of, stream)

    await ensure_streams(js)
    await ensure_streams(js)  # and again: nothing more to move

    for kind, (subject_of, stream) in waiting.items():
        info = await js.stream_info(stream, subjects_filter=">")
        assert info.config.subjects == [f"istmo.gated.{kind}.*"]
        assert info.state.subjects == {gated_subject(kind, GT): 3}
        first = await js.get_msg(stream, subject=gated_subject(kind, GT), next=True, seq=1)
        assert first.data == kind.encode() + b"-0"
        assert dict(first.headers or {}) == {"Nats-Msg-Id": gated_msg_id(GT, kind, "old-0", "")}
        assert await stored(relay, subject_of(GT)) == 3
