"""Group delivery (ADR 21) with state nodes (ADR 30): ``istmo up --leaves BZ,GT`` and the
community group SICA-drugs, whose members are on the hub and on both nodes.

Group copies are not sourced to state nodes; the relay stores a routed member whose
deliveries reach a node a copy of its own besides (ADR 30, amendment). Proven here: a
bulletin sealed under the group is stored once for the group on the hub, the hub's
members receive that one copy (and no copy of their own), a member on the GT node
receives it exactly once (one copy in the node's stream, nothing left in its
consumers), and the node holds no group copy; ``istmo reconcile`` restores such a
member's own copy if it goes missing (the group copy does not stand for it); then a GT
member is suspended (the policy denies it) and left out of the next epoch: the node holds
no copy of the next bulletin for it, while the other GT member still gets its own.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from broker.directory.lifecycle import CONTROL_DIRECTORY_SUBJECT, set_agency_status
from broker.relay.reconcile import reconcile
from broker.runtime.stack import Stack
from clients.sdk import IstmoClient
from schemas.labels import Classification, Labels, Precedence, Tlp
from schemas.subjects import (
    DELIVER_STREAM,
    deliver_durables,
    deliver_subject,
    group_copy_id,
    group_deliver_subject,
)
from tests.cluster.test_state_nodes import (
    _gt,
    delivery_copies,
    gt_url,
    hub_with_gt_node,
    receive_all,
)
from tests.integration.stack_inproc import client
from tests.integration.test_group_delivery_live import next_epoch, ready
from tests.integration.test_group_keys_live import GROUP, MANAGER, define_group
from tests.waiting import eventually

pytestmark = pytest.mark.slow

FLASH = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("SICA",),
    source_grade="A1",
    precedence=Precedence.FLASH,
)
PUBLISHER = "hn-police"  # on the hub (HN has no node here)
HUB_MEMBER = "sv-police"  # on the hub


async def pending_on(stack: Stack, url: str, agency: str) -> int:
    nc = await stack.connect_relay(url)
    try:
        js = nc.jetstream(timeout=10)
        total = 0
        for durable in deliver_durables(agency):
            total += int((await js.consumer_info(DELIVER_STREAM, durable)).num_pending or 0)
        return total
    finally:
        await nc.close()


async def test_group_members_on_a_state_node_receive_a_group_bulletin_once(
    tmp_path: Path,
) -> None:
    async with hub_with_gt_node(tmp_path / "istmo", 10) as (stack, _proxy):
        keys = stack.settings.keys_dir
        await define_group(stack)
        members = await ready(stack, 1)
        on_gt = sorted(members & set(_gt(stack)))
        assert len(on_gt) >= 2, (members, _gt(stack))
        assert {PUBLISHER, HUB_MEMBER, MANAGER} <= members
        node_member, denied = on_gt[0], on_gt[1]

        async with await client(stack, PUBLISHER) as hn:
            first = await hn.publish(title="flash", text="to the group", labels=FLASH, groups=True)
        assert first.state == "accepted"
        assert set(first.routed) == members - {PUBLISHER}
        bid = first.bulletin_id
        group_key = group_copy_id(bid, GROUP, 1)

        # On the hub: the one group copy, and copies of their own only for the members
        # whose deliveries reach a state node.
        hub_copies = await delivery_copies(stack, stack.nats_urls[0], {bid})
        assert hub_copies[group_key] == 1
        own_on_hub = {k.split(":", 1)[1] for k in hub_copies if k != group_key}
        assert set(on_gt) <= own_on_hub
        assert HUB_MEMBER not in own_on_hub
        assert MANAGER not in own_on_hub
        assert set(hub_copies.values()) == {1}
        # The write cost: one more envelope on the hub per member on a node (and once
        # more in its state's stream and on its node, as for any copy of theirs).
        relay = await stack.connect_relay(stack.nats_urls[0])
        try:
            shared = await relay.jetstream(timeout=10).get_last_msg(
                DELIVER_STREAM, group_deliver_subject(GROUP, 1, Precedence.FLASH)
            )
        finally:
            await relay.close()
        size = len(shared.data or b"")
        print(
            f"\ngroup bulletin, {len(members)} members, {len(own_on_hub)} on state nodes: "
            f"{len(hub_copies)} copies on the hub ({len(hub_copies) * size} bytes; "
            f"{len(members) - 1} without the group copy), envelope {size} bytes"
        )

        # On the GT node: one copy of their own for each GT member, no group copy.
        await eventually(
            lambda: delivery_copies(stack, gt_url(stack), {bid}),
            until=lambda c: {f"{bid}:{a}" for a in on_gt} <= set(c),
            what="the GT members' copies on the GT node",
        )
        gt_copies = await delivery_copies(stack, gt_url(stack), {bid})
        assert gt_copies == Counter({f"{bid}:{a}": 1 for a in on_gt})

        # A member on the node receives it once, and nothing is left for it there; a
        # member on the hub receives the shared copy.
        async with (
            await IstmoClient.connect(keys / f"{node_member}.json", gt_url(stack)) as gt,
            await IstmoClient.connect(keys / f"{HUB_MEMBER}.json", stack.nats_urls[0]) as sv,
        ):
            assert await receive_all(gt, {bid}) == Counter({bid: 1})
            assert await receive_all(sv, {bid}) == Counter({bid: 1})
        assert await pending_on(stack, gt_url(stack), node_member) == 0
        assert await pending_on(stack, stack.nats_urls[0], HUB_MEMBER) == 0

        # ``istmo reconcile`` counts the group copy for the hub's members only: a node
        # member's own copy gone from the hub is a gap it restores.
        assert stack.registry is not None
        relay = await stack.connect_relay(stack.nats_urls[0])
        try:
            js = relay.jetstream(timeout=10)
            since = int(time.time() * 1000) - 600_000
            clean = await reconcile(js, stack.registry, since_ms=since, dry_run=True)
            assert not [g for g in clean.gap_list if g.startswith(bid)], clean.gap_list
            own = await js.get_last_msg(
                DELIVER_STREAM, deliver_subject(node_member, FLASH.precedence)
            )
            await js.delete_msg(DELIVER_STREAM, own.seq)
            gaps = await reconcile(js, stack.registry, since_ms=since, dry_run=True)
            assert [g for g in gaps.gap_list if g.startswith(bid)] == [f"{bid}:{node_member}"]
        finally:
            await relay.close()

        # The policy denies a GT member (suspended): the next epoch leaves it out, and the
        # node holds nothing of the next bulletin for it.
        assert stack.registry is not None
        set_agency_status(stack.registry, denied, "suspended", actor="test", note="groups")
        relay = await stack.connect_relay(stack.nats_urls[0])
        try:
            await relay.publish(CONTROL_DIRECTORY_SUBJECT, b"{}")
            await relay.flush()
        finally:
            await relay.close()
        epoch, later = await next_epoch(stack)
        assert denied not in later
        assert node_member in later
        async with await client(stack, PUBLISHER) as hn:
            second = await hn.publish(title="later", text="after", labels=FLASH, groups=True)
        assert second.state == "accepted"
        assert denied not in second.routed
        await eventually(
            lambda: delivery_copies(stack, gt_url(stack), {second.bulletin_id}),
            until=lambda c: f"{second.bulletin_id}:{node_member}" in c,
            what="the GT member's copy of the later bulletin on the node",
        )
        hub_later = await delivery_copies(stack, stack.nats_urls[0], {second.bulletin_id})
        assert hub_later[group_copy_id(second.bulletin_id, GROUP, epoch)] == 1
        assert f"{second.bulletin_id}:{denied}" not in hub_later
        gt_later = await delivery_copies(stack, gt_url(stack), {second.bulletin_id})
        assert f"{second.bulletin_id}:{denied}" not in gt_later
        assert not [k for k in gt_later if ":group:" in k]
        async with await IstmoClient.connect(keys / f"{node_member}.json", gt_url(stack)) as gt:
            assert await receive_all(gt, {second.bulletin_id}) == Counter({second.bulletin_id: 1})
