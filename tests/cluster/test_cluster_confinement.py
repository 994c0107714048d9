"""The per-agency confinement tests (S-01, S-02, S-26, S-27) again, on a 3-node cluster.

The tests are those of ``tests/integration/test_nats_confinement.py``, unchanged: this
module only hands them the cluster fixture instead of the single server. S-26 is run here
without its ``Nats-Expected-Last-Msg-Id`` probe: on a clustered stream that header, when it
fails, stops the whole stream in nats-server 2.15.1 (every agency's publishes time out),
which ``test_a_failing_expected_last_msg_id_stalls_a_clustered_stream`` records. The relay sits on
node 1 and each agency on node 2 or 3, so every permission, account boundary and service
import is exercised across routes. Adding an agency reloads all three nodes. Each test that
asks for ``nats_stack`` runs twice: in config mode and in operator mode (ADR 0013), where
the account JWTs are pushed to all three nodes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
import pytest
from nats.aio.client import Client as NATS

from broker.bus.streams import ensure_agency_consumer
from schemas.labels import Precedence
from schemas.subjects import (
    DELIVER_STREAM,
    INGEST_STREAM,
    deliver_durable,
    deliver_subject,
    gated_subject,
    inbox_prefix,
    ingest_subject,
    receipt_subject,
)
from tests.integration import test_nats_confinement as single
from tests.waiting import eventually

StackFactory = Callable[[list[str]], Awaitable[Any]]


@pytest.fixture(params=single.AUTH_MODES)
def nats_stack(request: pytest.FixtureRequest, cluster_stack: Any) -> StackFactory:
    """The single-node tests below ask for ``nats_stack``: give them the cluster, in the
    mode this run names (config, or operator: ADR 0013)."""
    auth: str = request.param

    async def start(agencies: list[str]) -> Any:
        return await cluster_stack(agencies, auth=auth)

    return start


test_control_flow_on_own_subjects = single.test_control_flow_on_own_subjects
test_s02_agency_cannot_publish_as_another = single.test_s02_agency_cannot_publish_as_another
test_s01_agency_cannot_subscribe_to_another_agencys_traffic = (
    single.test_s01_agency_cannot_subscribe_to_another_agencys_traffic
)
test_s01_agency_cannot_read_another_agencys_consumer_or_stream = (
    single.test_s01_agency_cannot_read_another_agencys_consumer_or_stream
)
test_s01_agency_cannot_call_another_agencys_api = (
    single.test_s01_agency_cannot_call_another_agencys_api
)
test_announcements_reach_every_agency_one_way = single.test_announcements_reach_every_agency_one_way
test_s27_other_agency_cannot_hijack_a_dedupe_id = (
    single.test_s27_other_agency_cannot_hijack_a_dedupe_id
)
test_stream_setup_is_idempotent_and_updates_limits = (
    single.test_stream_setup_is_idempotent_and_updates_limits
)


async def test_streams_have_three_replicas(cluster_stack: StackFactory) -> None:
    stack = await cluster_stack([single.GT])
    relay = await stack.connect_relay()
    js = relay.jetstream(timeout=5)
    for name in (INGEST_STREAM, DELIVER_STREAM):
        info = await js.stream_info(name)
        assert info.config.num_replicas == 3, name
        assert info.config.storage == "file"
        assert info.config.duplicate_window >= 600
        assert info.cluster is not None
        assert info.cluster.leader in {"istmo-1", "istmo-2", "istmo-3"}


async def test_reload_adds_an_agency_on_every_node(cluster_stack: StackFactory) -> None:
    stack = await cluster_stack([single.GT])
    pids = stack.cluster.pids
    relay = await stack.connect_relay()
    newcomer = "bz-police"

    await asyncio.to_thread(stack.reload_with, [single.GT, newcomer])
    assert stack.cluster.pids == pids  # reloaded, not restarted
    rjs = relay.jetstream(timeout=5)
    await ensure_agency_consumer(rjs, newcomer)
    # The newcomer may connect to any node, and its imports work on each.
    for node in stack.cluster.nodes:
        bz = await nats.connect(
            node.url,
            nkeys_seed_str=stack.seeds[newcomer],
            inbox_prefix=inbox_prefix(newcomer),
            allow_reconnect=False,
            connect_timeout=2,
        )
        try:
            ack = await bz.jetstream(timeout=5).publish(ingest_subject(newcomer), node.url.encode())
            assert ack.stream == INGEST_STREAM
        finally:
            await bz.close()
    await rjs.publish(deliver_subject(newcomer, Precedence.ROUTINE), b"for bz")
    bz: NATS = await stack.connect_agency(newcomer)
    sub = await bz.jetstream(timeout=5).pull_subscribe_bind(
        durable=deliver_durable(newcomer), stream=DELIVER_STREAM
    )
    (msg,) = await sub.fetch(1, timeout=5)
    assert msg.data == b"for bz"
    await msg.ack_sync()
    assert (await rjs.stream_info(INGEST_STREAM)).state.messages == len(stack.cluster.nodes)


async def test_s26_reply_subject_injection_lands_nothing_on_other_agency(
    nats_stack: StackFactory,
) -> None:
    stack = await nats_stack([single.GT, single.JM])
    gt_, jm_ = single.GT, single.JM
    relay = await stack.connect_relay()
    gt_errors: list[Exception] = []
    gt = await stack.connect_agency(gt_, errors=gt_errors)
    jm = await stack.connect_agency(jm_)
    jm_victim = single.Collector()
    await jm.subscribe(f"{inbox_prefix(jm_)}.victim", cb=jm_victim.cb)
    await single.barrier(jm)
    gt_probe = single.Collector()
    await gt.subscribe(f"{inbox_prefix(gt_)}.probe", cb=gt_probe.cb)

    next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{DELIVER_STREAM}.{deliver_durable(gt_)}"
    targets = [
        ingest_subject(jm_),
        receipt_subject(jm_),
        deliver_subject(jm_, Precedence.ROUTINE),
        f"{inbox_prefix(jm_)}.victim",
        f"{inbox_prefix(gt_)}.probe",
    ]
    for i, reply in enumerate(targets):
        # A PubAck (distinct bodies: identical ones would dedupe on their digest).
        await gt.publish(ingest_subject(gt_), b"inject-%d" % i, reply=reply)
        await gt.publish(next_subject, b'{"batch":1,"no_wait":true}', reply=reply)
        await gt.publish(next_subject, b'{"batch":1,"expires":50000000}', reply=reply)
    await single.barrier(gt)

    async def all_answered() -> bool:
        return len(gt_probe.msgs) >= 3

    await eventually(all_answered, what="gt's three probes answered")
    await asyncio.sleep(single.SETTLE_S)

    # Control: the server answered on gt's own subject (a PubAck, a 404 and a 408).
    assert len(gt_probe.msgs) == 3
    assert single.violations(gt_errors) == []
    for subject in (
        ingest_subject(jm_),
        receipt_subject(jm_),
        deliver_subject(jm_, Precedence.ROUTINE),
    ):
        assert await single.stored(relay, subject) == 0, subject
    assert jm_victim.msgs == []
    info = await relay.jetstream(timeout=5).consumer_info(DELIVER_STREAM, deliver_durable(jm_))
    assert (info.num_pending, info.num_ack_pending) == (0, 0)
    assert await single.stored(relay, ingest_subject(gt_)) == len(targets)


async def test_a_failing_expected_last_msg_id_cannot_stall_the_clustered_streams(
    cluster_stack: StackFactory,
) -> None:
    """Through the gate, the header that stalls an R3 stream (below) never reaches it:
    gt's hostile publishes are stored as plain messages, and jm publishes as before."""
    stack = await cluster_stack([single.GT, single.JM])
    relay = await stack.connect_relay()
    gt = await stack.connect_agency(single.GT)
    jm = await stack.connect_agency(single.JM)
    for subject_of in (ingest_subject, receipt_subject):
        gt_js = gt.jetstream(timeout=10)
        await gt_js.publish(subject_of(single.GT), b"first", headers={"Nats-Msg-Id": "x"})
        bad = await gt_js.publish(
            subject_of(single.GT), b"bad", headers={"Nats-Expected-Last-Msg-Id": "nope"}
        )
        assert bad.duplicate is None

        ack = await jm.jetstream(timeout=10).publish(subject_of(single.JM), b"innocent")

        assert ack.seq == 3
        assert await single.stored(relay, subject_of(single.GT)) == 2


@pytest.mark.xfail(
    strict=True,
    reason="nats-server 2.15.1: a failing Nats-Expected-Last-Msg-Id on an R3 stream is a "
    "'critical write error' on every replica and the stream loses its leader",
)
async def test_nats_server_still_stalls_on_a_failing_expected_last_msg_id(
    cluster_stack: StackFactory,
) -> None:
    """Why the gate exists: the same header sent straight to the stream (as only the
    broker's own account still can) stops ISTMO_INGEST for everyone. When nats-server
    fixes it this test passes and xfail_strict fails it: the gate stays (it also drops
    rollups, TTLs and the rest), but docs/security.md can say the bug is gone."""
    stack = await cluster_stack([single.GT, single.JM])
    broker = await stack.connect_relay()
    jm = await stack.connect_agency(single.JM)
    stored_at = gated_subject("ingest", single.GT)
    await broker.jetstream(timeout=5).publish(stored_at, b"first", headers={"Nats-Msg-Id": "x"})
    await broker.publish(stored_at, b"bad", headers={"Nats-Expected-Last-Msg-Id": "nope"})
    await single.barrier(broker)
    ack = await jm.jetstream(timeout=5).publish(ingest_subject(single.JM), b"innocent")
    assert ack.stream == INGEST_STREAM
