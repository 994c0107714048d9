"""Operator mode (ADR 0013) on a 3-node cluster: one push reaches every node's resolver,
and a node that missed one is sent it again.

The relay sits on node 1; agencies connect to the node each test names.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NATS

from broker.bus.server import NatsServer
from broker.runtime.accounts import AccountSync
from broker.store.registry import Registry
from schemas.subjects import INGEST_STREAM, inbox_prefix, ingest_subject
from tests.integration.test_account_sync import enrol, set_status
from tests.integration.test_nats_operator import refused
from tests.waiting import eventually

GT = "gt-police"
BZ = "bz-police"
StackFactory = Callable[..., Awaitable[Any]]


async def connect_to(stack: Any, node: NatsServer, agency: str, **options: Any) -> NATS:
    jwt = stack.agency_jwt(agency)
    nc = await nats.connect(
        node.url,
        nkeys_seed_str=stack.seeds[agency],
        user_jwt_cb=lambda: jwt.encode(),
        inbox_prefix=inbox_prefix(agency),
        connect_timeout=2,
        **options,
    )
    stack._connections.append(nc)
    return nc


async def quiet(_exc: Exception) -> None:
    """A refused connection is what the test waits for: no logged traceback."""


def load_times(stack: Any) -> list[object]:
    return [(node.monitor("/varz") or {}).get("config_load_time") for node in stack.cluster.nodes]


async def test_one_push_admits_an_agency_on_every_node(cluster_stack: StackFactory) -> None:
    stack = await cluster_stack([GT], auth="operator")
    loaded = load_times(stack)

    await stack.admit([BZ])  # every node answers the push
    await stack.provision([BZ], replicas=3, timeout=10)

    for node in stack.cluster.nodes:
        bz = await connect_to(stack, node, BZ, allow_reconnect=False)
        ack = await bz.jetstream(timeout=5).publish(ingest_subject(BZ), node.url.encode())
        assert ack.stream == INGEST_STREAM
    assert load_times(stack) == loaded


async def test_a_suspension_cuts_the_agency_off_on_every_node(cluster_stack: StackFactory) -> None:
    stack = await cluster_stack([GT], auth="operator")
    lost = [asyncio.Event() for _ in stack.cluster.nodes]
    for node, event in zip(stack.cluster.nodes, lost, strict=True):

        async def on_lost(event: asyncio.Event = event) -> None:
            event.set()

        await connect_to(stack, node, GT, allow_reconnect=False, disconnected_cb=on_lost)

    await stack.admit([GT], active=False)

    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in lost)), 2.0)
    for node in stack.cluster.nodes:
        reason = await refused(node.url, stack.seeds[GT], GT, stack.agency_jwt(GT))
        assert "authorization violation" in reason.lower()


async def test_a_node_that_missed_a_suspension_is_sent_it_again(
    cluster_stack: StackFactory, tmp_path: Path
) -> None:
    """nats-server's nodes do not pass a pushed JWT on to a node that was down (each
    answers its own store comparison): the broker sends what a node missed again until it
    has stored it (``AccountSync.heal``)."""
    stack = await cluster_stack([GT], auth="operator")
    registry = Registry(f"sqlite:///{tmp_path / 'istmo.db'}")
    try:
        enrol(registry, stack, [GT])
        sync = AccountSync(stack.operator, registry, stack.pusher)
        await sync.start()
        third = stack.cluster.nodes[2]
        await asyncio.to_thread(third.stop)

        set_status(registry, GT, "suspended")
        await sync.apply()  # nodes 1 and 2 store it; node 3 is down
        assert await sync.heal() == 1  # still owed to node 3
        await asyncio.to_thread(third.start, 60)

        assert await third_admits(stack, third)  # it kept the JWT it had
        # Node 3 answers the push once its routes are back, a moment after it admits
        # clients: the broker sends it again until it has (``heal_forever`` does so).
        await eventually(sync.heal, until=lambda owed: owed == 0, what="node 3 to store it")
        assert not await third_admits(stack, third)
    finally:
        registry.close()


async def third_admits(stack: Any, node: NatsServer) -> bool:
    """Whether ``node`` admits gt-police now."""
    jwt = stack.agency_jwt(GT)
    nc = NATS()
    try:
        await nc.connect(
            node.url,
            nkeys_seed_str=stack.seeds[GT],
            user_jwt_cb=lambda: jwt.encode(),
            inbox_prefix=inbox_prefix(GT),
            allow_reconnect=False,
            connect_timeout=2,
            error_cb=quiet,
        )
    except (nats.errors.Error, OSError):
        return False
    finally:
        await nc.close()  # nats-py leaves the socket of a refused connect open
    return True
