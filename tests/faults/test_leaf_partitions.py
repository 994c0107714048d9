"""Real partitions of a state node (catalogue F-25, F-26; ``docs/faults.md``).

The GT state node's nats-server runs in a network namespace of its own (``tests/netns.py``)
with two veth pairs: the state's LAN (its agencies, played by this process, and the gate
reach it there) and its uplink, over which it dials the hub through a ``Forwarder`` (the
hub listens on loopback). A cut is ``ip link set <uplink> down`` (its namespace end): no
proxy closing sockets, the node's TCP connection to the hub simply stops getting through,
as when a cable or a radio link fails.

- F-25 (CI, ``slow``): cut the uplink; gt-police publishes on the node, rc-drugs on the
  hub to GT's agencies; heal; every bulletin is accepted once, each delivery copy exists
  once on each side, each application sees each bulletin once, the node stored exactly
  what the hub accepted, and the audit log verifies.
- F-25 with a hub restart (``long``): as above, and the hub's nats-server restarts during
  the cut (F-27's share for one state node: everything reconnects).
- F-25 past the clock window (CI, ``slow``): the relay's clock window shrunk to 3 s, the
  cut held until the node's bulletins are older than it; after the heal every one is
  accepted once, judged by when the node's gate stored it (ADR 0034; before, all were
  refused as ``timestamp_out_of_window``, the gap the hour-long cut below hit).
- F-25 under load (``long``): 10,000 bulletins queued across the cut (by default 3,000 on
  the node, sealed within the minute a publisher may seal unheard, ADR 9, and 7,000 on the
  hub for GT's agencies), the cut held ``ISTMO_F25_CUT_S`` seconds (3600 for the
  catalogue's hour); the queues drain within 5 minutes of the heal, none refused: a
  bulletin's ``created_at`` is judged against the node gate's stamp (ADR 0034), not
  against when the hub stored it after the heal.
- F-26 (``long``): the uplink flaps (down and up every 2-8 s; ``ISTMO_F26_FLAP_S`` for
  5-30 s) for ``ISTMO_F26_RUN_S`` seconds (600 for the catalogue's 10 minutes) while both
  sides publish, over a link that delays each chunk 50 ± 25 ms and resets 1 in 2,000
  chunks' connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from broker.bus.leaves import leaf_stream
from broker.bus.natsconf import NatsLayout
from broker.bus.server import ANY_PORT, NatsServer, find_nats_server
from broker.config import Settings
from broker.runtime.stack import Stack
from broker.runtime.statenodes import StateNodes
from clients.sdk import IstmoClient
from tests.cluster.test_state_nodes import (
    GT_PEER,
    HUB_AGENCY,
    LABELS,
    audited,
    delivery_copies,
    gt_url,
    receive_all,
)
from tests.integration.recall_kit import audit_verifies
from tests.integration.stack_inproc import serving
from tests.netns import Forwarder, Netns, skip_reason
from tests.stackproc import free_port_run
from tests.waiting import eventually

FIGURES = Path(__file__).with_name("figures.jsonl")
UPLINK = 1  # Netns link 0 is the state's LAN, link 1 its uplink to the hub
MIN_CUT_S = 3.0  # F-25 (CI): the cut lasts at least this long
DRAIN_LIMIT_S = 300.0  # issue 20: the queues drain within 5 minutes of the heal


class NamespacedStateNodes(StateNodes):
    """``istmo up --leaves``'s state nodes, each listening on its namespace's LAN address
    and dialing the hub at ``uplink_host`` (the forwarder's end of the uplink); the
    binary given runs nats-server inside the namespace (``Netns.wrapper``)."""

    def __init__(self, states: list[str], *, lan_host: str, uplink_host: str, **kw: Any) -> None:
        super().__init__(states, **kw)
        self.lan_host = lan_host
        self.uplink_host = uplink_host

    def leaf_layout(
        self, i: int, state: str, hub: NatsLayout, state_of: dict[str, str | None]
    ) -> NatsLayout:
        layout = super().leaf_layout(i, state, hub, state_of)
        assert layout.leaf_remote is not None
        return replace(
            layout,
            host=self.lan_host,
            # Picked by nats-server in its namespace (a fixed one would be checked for
            # being free here, where the namespace's address does not exist).
            port=ANY_PORT,
            http_port=ANY_PORT,
            leaf_remote=replace(layout.leaf_remote, host=self.uplink_host),
        )


@dataclass
class Rig:
    stack: Stack
    ns: Netns
    forwarder: Forwarder

    @property
    def node_url(self) -> str:
        return gt_url(self.stack)

    async def node_stored(self) -> int:
        """How many publishes the GT node has stored in its ingest stream, ever."""
        nc = await self.stack.connect_relay(self.node_url)
        try:
            info = await nc.jetstream(timeout=10).stream_info(leaf_stream("GT", "ingest"))
            return int(info.state.last_seq)
        finally:
            await nc.close()


@contextlib.asynccontextmanager
async def gt_node_in_a_namespace(
    tmp_path: Path,
    *,
    announce_interval_s: int,
    delay_s: float = 0.0,
    jitter_s: float = 0.0,
    drop: float = 0.0,
    fixed_ports: bool = False,
    max_clock_skew_s: int = Settings.max_clock_skew_s,
) -> AsyncIterator[Rig]:
    """``fixed_ports``: the hub's client and monitoring ports chosen here, so that a
    restarted hub binds the same ones and its clients find it again.
    ``max_clock_skew_s``: the relay's clock window (ADR 0034), shrunk to reach it in
    seconds."""
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    with Netns(links_wanted=2) as ns:
        uplink = ns.links[UPLINK]
        leaf_port = free_port_run(1)
        forwarder = Forwarder(
            uplink.host_addr,
            ("127.0.0.1", leaf_port),
            delay_s=delay_s,
            jitter_s=jitter_s,
            drop=drop,
            rng=random.Random(20),
        )
        await forwarder.start()
        try:
            async with _stack(tmp_path, ns, forwarder, leaf_port, announce_interval_s,
                              fixed_ports, max_clock_skew_s) as stack:  # fmt: skip
                yield Rig(stack, ns, forwarder)
        finally:
            await forwarder.close()


@contextlib.asynccontextmanager
async def _stack(
    tmp_path: Path,
    ns: Netns,
    forwarder: Forwarder,
    leaf_port: int,
    announce_interval_s: int,
    fixed_ports: bool,
    max_clock_skew_s: int,
) -> AsyncIterator[Stack]:
    lan, uplink = ns.links
    data_dir = tmp_path / "istmo"
    hub_ports = free_port_run(2) if fixed_ports else ANY_PORT
    settings = Settings(
        data_dir=data_dir,
        nats_port=hub_ports,
        nats_http_port=hub_ports + 1 if fixed_ports else ANY_PORT,
        api_port=free_port_run(1),
        announce_interval_s=announce_interval_s,
        max_clock_skew_s=max_clock_skew_s,
    )
    stack = Stack(
        settings,
        out=lambda _line: None,
        leaves=["GT"],
        leaf_port=leaf_port,
        leaf_link_port=forwarder.port,
    )
    stack.state_nodes = NamespacedStateNodes(
        ["GT"],
        binary=ns.wrapper(find_nats_server(settings.nats_server), tmp_path),
        data_dir=settings.data_dir,
        broker_dir=settings.broker_dir,
        host=settings.host,
        hub_port=leaf_port,
        link_port=forwarder.port,
        lan_host=lan.ns_addr,
        uplink_host=uplink.host_addr,
    )
    async with serving(stack, "the hub and the GT node (in its namespace) to come up"):
        node = stack.state_nodes.nodes["GT"].server
        assert node.pid in ns.pids(), "the GT node does not run in its namespace"
        try:
            yield stack
        finally:
            ns.heal(UPLINK)  # a failed test must not leave the stack unable to stop


def rejected(stack: Stack, ids: set[str]) -> Counter[str]:
    """``bulletin.rejected`` events of ``ids``, by reason."""
    engine = create_engine(stack.settings.db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT bulletin_id, reason FROM audit_event WHERE type = 'bulletin.rejected'")
            )
            return Counter(reason for bid, reason in rows if bid in ids)
    finally:
        engine.dispose()


def record(name: str, **figures: object) -> None:
    entry = {"test": name, "time": int(time.time()), **figures}
    with FIGURES.open("a") as f:
        f.write(json.dumps(entry, default=str) + "\n")


def gt_agencies(stack: Stack) -> set[str]:
    assert stack.state_nodes is not None
    return {u.agency for u in stack.state_nodes.nodes["GT"].server.layout.agencies}


async def exactly_once_on_both_sides(
    rig: Rig, leaf_ids: set[str], hub_ids: set[str], stored: int
) -> dict[str, int]:
    """Each bulletin accepted once; each of its deliveries once in the hub's stream and,
    for GT's agencies, once in the node's; the node stored exactly the leaf bulletins;
    the audit log verifies. Returns the counts."""
    stack = rig.stack
    ids = leaf_ids | hub_ids
    accepted = audited(stack, ids)
    assert accepted == Counter(dict.fromkeys(ids, 1)), (
        f"lost {len(ids - set(accepted))}, duplicated {sum(v > 1 for v in accepted.values())}"
    )
    assert stored == len(leaf_ids), (stored, len(leaf_ids))  # the node's count = the hub's
    hub_copies = await delivery_copies(stack, stack.nats_urls[0], ids)
    node_copies = await delivery_copies(stack, rig.node_url, ids)
    assert set(hub_copies.values()) == {1}
    assert {b.split(":", 1)[0] for b in hub_copies} == ids  # every bulletin went somewhere
    gt = tuple(f":{a}" for a in gt_agencies(stack))
    assert node_copies == Counter({k: 1 for k in hub_copies if k.endswith(gt)})
    assert {f"{b}:{GT_PEER}" for b in ids} <= set(node_copies)
    assert await audit_verifies(stack.settings.data_dir)
    return {
        "accepted": sum(accepted.values()),
        "hub_copies": sum(hub_copies.values()),
        "node_copies": sum(node_copies.values()),
        "node_stored": stored,
    }


async def until_drained(rig: Rig, leaf_ids: set[str], hub_ids: set[str]) -> float:
    """Seconds from now until every leaf bulletin is accepted on the hub and every
    delivery of every bulletin to GT_PEER is on the node."""
    t0 = time.monotonic()
    ids = leaf_ids | hub_ids
    want = {f"{b}:{GT_PEER}" for b in ids}
    await eventually(
        lambda: (
            sum(audited(rig.stack, leaf_ids).values()) + sum(rejected(rig.stack, leaf_ids).values())
        ),
        until=lambda n: n >= len(leaf_ids),
        what=f"{len(leaf_ids)} bulletins from the node decided on the hub",
        timeout=DRAIN_LIMIT_S,
        interval=0.5,
    )
    # None refused: a bulletin that waited on the cut-off node is judged by when the
    # node's gate stored it, not by when the hub did (ADR 0034).
    refused = rejected(rig.stack, leaf_ids)
    assert not refused, f"{sum(refused.values())} of {len(leaf_ids)} refused: {dict(refused)}"
    await eventually(
        lambda: delivery_copies(rig.stack, rig.node_url, ids),
        until=lambda c: want <= set(c),
        what=f"{len(ids)} deliveries to {GT_PEER} on the node",
        timeout=max(1.0, DRAIN_LIMIT_S - (time.monotonic() - t0)),
        interval=1.0,
    )
    return time.monotonic() - t0


@pytest.mark.slow
async def test_f25_a_state_node_cut_off_by_ip_link_down(tmp_path: Path) -> None:
    await cut_publish_heal(tmp_path, restart_hub=False)


@pytest.mark.long
async def test_f25_the_hub_restarts_while_the_state_node_is_cut_off(tmp_path: Path) -> None:
    """F-27's share for one state node: the hub's nats-server restarts during the cut, so
    the node, the relay and the hub's agencies all reconnect."""
    await cut_publish_heal(tmp_path, restart_hub=True)


@contextlib.asynccontextmanager
async def three_clients_past_a_first_bulletin(
    rig: Rig,
) -> AsyncIterator[tuple[IstmoClient, IstmoClient, IstmoClient, int]]:
    """gt-police and GT_PEER on the GT node, HUB_AGENCY on the hub, once gt-police has
    heard the relays' announcement and a first bulletin of its reached the other two, each
    once (the link works); and what the node had stored by then."""
    keys = rig.stack.settings.keys_dir
    async with (
        await IstmoClient.connect(keys / "gt-police.json", rig.node_url) as gt,
        await IstmoClient.connect(keys / f"{GT_PEER}.json", rig.node_url) as peer,
        await IstmoClient.connect(keys / f"{HUB_AGENCY}.json", rig.stack.nats_urls[0]) as hub,
    ):
        cache = gt.resolve_cache
        assert cache is not None
        await eventually(lambda: cache.versions is not None, what="an announcement")
        first = await gt.publish(title="through GT", text="normal flow", labels=LABELS)
        assert {HUB_AGENCY, GT_PEER} <= set(first.routed), first
        assert await receive_all(peer, {first.bulletin_id}) == {first.bulletin_id: 1}
        assert await receive_all(hub, {first.bulletin_id}) == {first.bulletin_id: 1}
        yield gt, peer, hub, await rig.node_stored()


async def heal_and_see_each_once(
    rig: Rig, peer: IstmoClient, hub: IstmoClient, leaf_ids: set[str], hub_ids: set[str]
) -> float:
    """Heal the uplink and wait for both queues to drain (its seconds); then each
    application sees each bulletin once, on both sides of the healed link."""
    rig.ns.heal(UPLINK)
    drained_s = await until_drained(rig, leaf_ids, hub_ids)
    assert await receive_all(peer, leaf_ids | hub_ids) == Counter(
        dict.fromkeys(leaf_ids | hub_ids, 1)
    )
    hub_got = await receive_all(hub, leaf_ids)
    assert leaf_ids <= set(hub_got), hub_got
    assert set(hub_got.values()) == {1}, hub_got
    return drained_s


async def cut_publish_heal(tmp_path: Path, *, restart_hub: bool) -> None:
    n_leaf, n_hub = 10, 5
    restart_s = 0.0
    async with gt_node_in_a_namespace(
        tmp_path, announce_interval_s=10, fixed_ports=restart_hub
    ) as rig:
        async with three_clients_past_a_first_bulletin(rig) as (gt, peer, hub, stored_before):
            rig.ns.cut(UPLINK)
            t_cut = time.monotonic()
            sent = [
                await gt.publish(title=f"cut {i}", text="on the node", labels=LABELS, wait=False)
                for i in range(n_leaf)
            ]
            # The hub side goes on: its verdicts come back at once, its GT copies wait.
            from_hub = [
                await hub.publish(title=f"hub {i}", text="for GT", labels=LABELS)
                for i in range(n_hub)
            ]
            assert all(GT_PEER in r.routed for r in from_hub)
            leaf_ids = {s.bulletin_id for s in sent}
            hub_ids = {r.bulletin_id for r in from_hub}
            stored = (
                await eventually(
                    rig.node_stored,
                    until=lambda v: v - stored_before >= n_leaf,
                    what=f"the node to keep the {n_leaf} it acknowledged",
                )
                - stored_before
            )
            assert stored == n_leaf  # the node acknowledged and kept them all, once
            assert audited(rig.stack, leaf_ids) == Counter()  # none crossed the cut
            assert not rig.ns.carrier(UPLINK)
            if restart_hub:
                server = rig.stack.nats
                assert isinstance(server, NatsServer)
                t_restart = time.monotonic()
                await asyncio.to_thread(server.stop)
                await asyncio.to_thread(server.start, 60.0)
                restart_s = time.monotonic() - t_restart
            if (rest := MIN_CUT_S - (time.monotonic() - t_cut)) > 0:
                await asyncio.sleep(rest)  # long enough for TCP to retransmit into the void
            cut_s = time.monotonic() - t_cut

            drained_s = await heal_and_see_each_once(rig, peer, hub, leaf_ids, hub_ids)
        counts = await exactly_once_on_both_sides(rig, leaf_ids, hub_ids, stored)
    name = "F-25 netns hub restart" if restart_hub else "F-25 netns short"
    record(name, leaf=n_leaf, hub=n_hub, cut_s=round(cut_s, 2), restart_s=round(restart_s, 2),
           drained_s=round(drained_s, 2), lost=0, duplicated=0, **counts)  # fmt: skip
    print(f"\n{name}: {n_leaf} on the node + {n_hub} on the hub across a {cut_s:.1f} s cut "
          f"(hub restart {restart_s:.1f} s), drained {drained_s:.2f} s after the heal; "
          f"{counts}")  # fmt: skip


SHORT_SKEW_S = 3  # F-25 past the clock window: the relay's window, in seconds


@pytest.mark.slow
async def test_f25_bulletins_queued_past_the_clock_window(tmp_path: Path) -> None:
    """ADR 0034: a cut longer than the relay's clock window loses nothing. Before, every
    bulletin the node held past the window was refused on the heal
    (``timestamp_out_of_window``): the catalogue's hour lost what the state published."""
    n_leaf, n_hub = 20, 5
    async with gt_node_in_a_namespace(
        tmp_path, announce_interval_s=2, max_clock_skew_s=SHORT_SKEW_S
    ) as rig:
        async with three_clients_past_a_first_bulletin(rig) as (gt, peer, hub, stored_before):
            rig.ns.cut(UPLINK)
            t_cut = time.monotonic()
            leaf_ids, refused = await publish_leaf(gt, n_leaf, "queued")
            assert refused == 0
            sealed_by = time.time()  # every created_at is at or before this
            hub_ids, hub_refused = await publish_leaf(hub, n_hub, "hub")
            assert hub_refused == 0
            stored = (
                await eventually(
                    rig.node_stored,
                    until=lambda v: v - stored_before >= n_leaf,
                    what=f"the node to keep the {n_leaf} it acknowledged",
                )
                - stored_before
            )
            assert stored == n_leaf
            # Held until the hub's clock is past every queued bulletin's window (the hub
            # stores them only after the heal, later still).
            await eventually(
                time.time,
                until=lambda t: t > sealed_by + SHORT_SKEW_S + 1.5,
                what=f"the node's bulletins to be older than the {SHORT_SKEW_S} s window",
                interval=0.2,
            )
            assert audited(rig.stack, leaf_ids) == Counter()  # none crossed the cut
            assert not rig.ns.carrier(UPLINK)
            cut_s = time.monotonic() - t_cut

            drained_s = await heal_and_see_each_once(rig, peer, hub, leaf_ids, hub_ids)
        counts = await exactly_once_on_both_sides(rig, leaf_ids, hub_ids, stored)
    record("F-25 netns past the window", leaf=n_leaf, hub=n_hub, skew_s=SHORT_SKEW_S,
           cut_s=round(cut_s, 2), drained_s=round(drained_s, 2), lost=0, duplicated=0,
           **counts)  # fmt: skip
    print(f"\nF-25 past the window: {n_leaf} held {cut_s:.1f} s on the node (window "
          f"{SHORT_SKEW_S} s) + {n_hub} on the hub, drained {drained_s:.2f} s after the "
          f"heal; {counts}")  # fmt: skip


async def publish_leaf(client: IstmoClient, n: int, tag: str) -> tuple[set[str], int]:
    """``n`` publishes (not waiting for verdicts); the ids the node acknowledged, and how
    many the SDK refused (it could not seal: nothing was queued)."""
    ids: set[str] = set()
    refused = 0
    for i in range(n):
        try:
            r = await client.publish(title=f"{tag} {i}", text="x", labels=LABELS, wait=False)
        except Exception:
            refused += 1
            continue
        ids.add(r.bulletin_id)
    return ids, refused


@pytest.mark.long
async def test_f25_ten_thousand_bulletins_queued_across_a_long_cut(tmp_path: Path) -> None:
    n_leaf = int(os.environ.get("ISTMO_F25_LEAF_N", "3000"))
    n_hub = int(os.environ.get("ISTMO_F25_HUB_N", "7000"))
    hold_s = float(os.environ.get("ISTMO_F25_CUT_S", "0"))
    async with gt_node_in_a_namespace(tmp_path, announce_interval_s=30) as rig:
        keys = rig.stack.settings.keys_dir
        async with (
            await IstmoClient.connect(keys / "gt-police.json", rig.node_url) as gt,
            await IstmoClient.connect(keys / f"{HUB_AGENCY}.json", rig.stack.nats_urls[0]) as hub,
        ):
            cache = gt.resolve_cache
            assert cache is not None
            await eventually(lambda: cache.versions is not None, what="an announcement")
            first = await gt.publish(title="through GT", text="normal flow", labels=LABELS)
            assert GT_PEER in first.routed
            stored_before = await rig.node_stored()
            rig.ns.cut(UPLINK)
            t_cut = time.monotonic()
            # The node's first (a publisher seals unheard for a minute at most), then the hub's.
            leaf_ids, refused = await publish_leaf(gt, n_leaf, "leaf")
            hub_ids, hub_refused = await publish_leaf(hub, n_hub, "hub")
            published_s = time.monotonic() - t_cut
            assert (refused, hub_refused) == (0, 0), "publishers could not seal in time"
            await eventually(
                lambda: sum(audited(rig.stack, hub_ids).values()),
                until=lambda n: n >= n_hub,
                what="the hub's bulletins accepted during the cut",
                timeout=DRAIN_LIMIT_S,
                interval=1,
            )
            stored = (
                await eventually(
                    rig.node_stored,
                    until=lambda v: v - stored_before >= n_leaf,
                    what=f"the node to keep the {n_leaf} it acknowledged",
                )
                - stored_before
            )
            assert stored == n_leaf
            assert audited(rig.stack, leaf_ids) == Counter()
            if (rest := hold_s - (time.monotonic() - t_cut)) > 0:
                await asyncio.sleep(rest)  # the catalogue's hour: the link simply stays down
            cut_s = time.monotonic() - t_cut
            rig.ns.heal(UPLINK)
            drained_s = await until_drained(rig, leaf_ids, hub_ids)
        counts = await exactly_once_on_both_sides(rig, leaf_ids, hub_ids, stored)
    assert drained_s < DRAIN_LIMIT_S
    record("F-25 netns long", leaf=n_leaf, hub=n_hub, published_s=round(published_s, 1),
           cut_s=round(cut_s, 1), drained_s=round(drained_s, 1), lost=0, duplicated=0,
           **counts)  # fmt: skip
    print(f"\nF-25 long: {n_leaf} on the node + {n_hub} on the hub (published in "
          f"{published_s:.1f} s), cut {cut_s:.0f} s, drained {drained_s:.1f} s after the "
          f"heal; {counts}")  # fmt: skip


@pytest.mark.long
async def test_f26_a_flapping_lossy_uplink(tmp_path: Path) -> None:
    run_s = float(os.environ.get("ISTMO_F26_RUN_S", "60"))
    low, high = (float(x) for x in os.environ.get("ISTMO_F26_FLAP_S", "2,8").split(","))
    rate = 10.0  # bulletins per second on each side
    rng = random.Random(26)
    async with gt_node_in_a_namespace(
        tmp_path, announce_interval_s=5, delay_s=0.05, jitter_s=0.025, drop=0.0005
    ) as rig:
        keys = rig.stack.settings.keys_dir
        async with (
            await IstmoClient.connect(keys / "gt-police.json", rig.node_url) as gt,
            await IstmoClient.connect(keys / f"{HUB_AGENCY}.json", rig.stack.nats_urls[0]) as hub,
        ):
            cache = gt.resolve_cache
            assert cache is not None
            await eventually(lambda: cache.versions is not None, what="an announcement")
            await gt.publish(title="through GT", text="normal flow", labels=LABELS)
            stored_before = await rig.node_stored()
            stop = asyncio.Event()
            leaf_ids: set[str] = set()
            hub_ids: set[str] = set()
            refused = Counter[str]()

            async def load(client: IstmoClient, ids: set[str], side: str) -> None:
                i = 0
                while not stop.is_set():
                    got, no = await publish_leaf(client, 1, f"{side}-{i}")
                    ids |= got
                    refused[side] += no
                    i += 1
                    await asyncio.sleep(1 / rate)

            flaps = 0
            loads = [
                asyncio.create_task(load(gt, leaf_ids, "leaf")),
                asyncio.create_task(load(hub, hub_ids, "hub")),
            ]
            t0 = time.monotonic()
            try:
                while time.monotonic() - t0 < run_s:
                    rig.ns.cut(UPLINK)
                    flaps += 1
                    await asyncio.sleep(rng.uniform(low, high))
                    rig.ns.heal(UPLINK)
                    await asyncio.sleep(rng.uniform(low, high))
            finally:
                stop.set()
                await asyncio.gather(*loads)
                rig.ns.heal(UPLINK)
            drained_s = await until_drained(rig, leaf_ids, hub_ids)
            stored = await rig.node_stored() - stored_before
        counts = await exactly_once_on_both_sides(rig, leaf_ids, hub_ids, stored)
    assert refused["hub"] == 0
    record("F-26 netns flapping", run_s=run_s, flaps=flaps, leaf=len(leaf_ids),
           hub=len(hub_ids), refused_leaf=refused["leaf"], resets=rig.forwarder.dropped,
           link_connections=rig.forwarder.connections, drained_s=round(drained_s, 1),
           lost=0, duplicated=0, **counts)  # fmt: skip
    print(f"\nF-26: {flaps} flaps in {run_s:.0f} s, {len(leaf_ids)} on the node "
          f"({refused['leaf']} refused: could not seal), {len(hub_ids)} on the hub, "
          f"{rig.forwarder.dropped} connection resets; drained {drained_s:.1f} s after the "
          f"last heal; {counts}")  # fmt: skip
