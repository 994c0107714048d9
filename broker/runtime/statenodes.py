"""``istmo up --leaves GT,BZ``: a hub and one NATS leaf node per state, on one machine
(ADR 0030, ``broker.bus.leaves``).

Each state node is a nats-server in JetStream domain ``<state>`` (lower case) holding only
that state's active agencies, joined to the hub's leaf-node port with a password of its own
(``DATA_DIR/broker/leaf-<state>.secret``, mode 0600). This process runs a gate on every
state node (the agencies' publishes are stored there, and reach the hub when the link
allows), creates the state node's streams and the agencies' delivery consumers, and reloads
the state node when the directory changes.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.client import Client as NATS

from broker.bus.gate import GateThread
from broker.bus.leaves import (
    HUB_DOMAIN,
    check_state,
    ensure_hub_sources,
    ensure_hub_state_streams,
    ensure_leaf_streams,
    leaf_domain,
    leaf_gated_subject,
)
from broker.bus.natsconf import ANY_PORT, AgencyUser, LeafHub, LeafLink, LeafRemote, NatsLayout
from broker.bus.server import NatsServer
from broker.bus.streams import ensure_agency_consumer
from broker.files import write_private
from schemas.errors import ConfigError

__all__ = ["DEFAULT_LEAF_PORT", "StateNode", "StateNodes", "parse_leaves"]

log = logging.getLogger("istmo.leaves")

DEFAULT_LEAF_PORT = 7422  # the hub's leaf-node port (NATS's own default)
_PORT_STEP = 100  # state node i: the hub's client and monitoring ports plus 100 * i


def parse_leaves(text: str) -> list[str]:
    """``GT,BZ`` -> ``["BZ", "GT"]`` (ConfigError on a bad or repeated code)."""
    states = [part.strip().upper() for part in text.split(",") if part.strip()]
    try:
        for state in states:
            check_state(state)
    except ValueError as exc:
        raise ConfigError(f"--leaves {text!r}: {exc}") from exc
    if len(set(states)) != len(states):
        raise ConfigError(f"--leaves {text!r} names a state twice")
    if not states:
        raise ConfigError("--leaves needs at least one state code, such as GT")
    return sorted(states)


def link_password(broker_dir: Path, state: str) -> str:
    """One state's link password, made on first use (mode 0600)."""
    path = broker_dir / f"leaf-{leaf_domain(state)}.secret"
    if path.exists():
        return path.read_text().strip()
    secret = secrets.token_urlsafe(32)
    write_private(path, secret.encode() + b"\n")
    return secret


def _connector(
    connect: Callable[[str], Awaitable[NATS]], url: str
) -> Callable[[], Awaitable[NATS]]:
    return lambda: connect(url)


@dataclass
class StateNode:
    state: str
    server: NatsServer
    gate: GateThread | None = None
    consumers: set[str] = field(default_factory=set)


class StateNodes:
    """The state nodes of one ``istmo up``."""

    def __init__(
        self,
        states: Sequence[str],
        *,
        binary: Path,
        data_dir: Path,
        broker_dir: Path,
        host: str,
        hub_port: int,
        link_port: int | None = None,
        client_base: int = ANY_PORT,
        monitor_base: int = ANY_PORT,
    ) -> None:
        """``hub_port``: where the hub listens for leaf nodes; ``link_port``: where the
        state nodes dial it (default the same; a test puts a proxy it can cut between).
        ``client_base``/``monitor_base``: the hub's ports; state node ``i`` (from 1) uses
        each plus ``100 * i``, or lets nats-server pick when they are ``ANY_PORT``."""
        self.states = list(states)
        self.binary = binary
        self.data_dir = data_dir
        self.broker_dir = broker_dir
        self.host = host
        self.hub_port = hub_port
        self.link_port = link_port or hub_port
        self.client_base = client_base
        self.monitor_base = monitor_base
        self.nodes: dict[str, StateNode] = {}

    # ------------------------------------------------------------------ layouts
    @staticmethod
    def agencies_of(
        users: Sequence[AgencyUser], state_of: dict[str, str | None], state: str
    ) -> tuple[AgencyUser, ...]:
        return tuple(u for u in users if state_of.get(u.agency) == state)

    def hub_layout(self, layout: NatsLayout, state_of: dict[str, str | None]) -> NatsLayout:
        """The hub's layout with a domain and a link per state."""
        links = tuple(
            LeafLink(
                state,
                link_password(self.broker_dir, state),
                tuple(u.agency for u in self.agencies_of(layout.agencies, state_of, state)),
            )
            for state in self.states
        )
        return NatsLayout(
            **{
                **layout.__dict__,
                "domain": HUB_DOMAIN,
                "leaf_hub": LeafHub(self.hub_port, links),
            }
        )

    def leaf_layout(
        self, i: int, state: str, hub: NatsLayout, state_of: dict[str, str | None]
    ) -> NatsLayout:
        def port(base: int) -> int:
            return ANY_PORT if base == ANY_PORT else base + _PORT_STEP * i

        name = leaf_domain(state)
        return NatsLayout(
            port=port(self.client_base),
            http_port=port(self.monitor_base),
            store_dir=(self.data_dir / f"nats-leaf-{name}").resolve(),
            relay_nkey_public=hub.relay_nkey_public,
            agencies=self.agencies_of(hub.agencies, state_of, state),
            host=self.host,
            server_name=f"istmo-leaf-{name}",
            max_payload=hub.max_payload,
            domain=name,
            leaf_remote=LeafRemote(
                self.host, self.link_port, state, link_password(self.broker_dir, state)
            ),
        )

    # ------------------------------------------------------------------ lifecycle
    def start(self, hub: NatsLayout, state_of: dict[str, str | None]) -> None:
        """Spawn every state node, then wait for each (the hub runs already)."""
        for i, state in enumerate(self.states, start=1):
            name = leaf_domain(state)
            layout = self.leaf_layout(i, state, hub, state_of)
            server = NatsServer(
                self.binary,
                self.broker_dir / f"nats-leaf-{name}.conf",
                layout,
                self.data_dir / f"nats-leaf-{name}.log",
            )
            self.nodes[state] = StateNode(state, server)
            server.spawn()
        for node in self.nodes.values():
            node.server.wait_ready()

    @property
    def pids(self) -> list[int]:
        return [n.server.pid for n in self.nodes.values() if n.server.pid is not None]

    async def set_up(
        self,
        hub_nc: NATS,
        connect: Callable[[str], Awaitable[NATS]],
        state_of: dict[str, str | None],
        agencies: Sequence[str],
        *,
        max_age_s: int,
        duplicate_window_s: int,
    ) -> None:
        """The hub's state streams, each node's streams and consumers, and its gate."""
        by_state = {s: [a for a in agencies if state_of.get(a) == s] for s in self.states}
        await ensure_hub_state_streams(
            hub_nc,
            by_state,
            max_age_s=max_age_s,
            duplicate_window_s=duplicate_window_s,
        )
        for state, node in self.nodes.items():
            url = node.server.url
            nc = await connect(url)
            try:
                js = nc.jetstream(timeout=10)
                await ensure_leaf_streams(
                    js, state, max_age_s=max_age_s, duplicate_window_s=duplicate_window_s
                )
                for agency in by_state[state]:
                    await ensure_agency_consumer(js, agency)
                    node.consumers.add(agency)
            finally:
                await nc.drain()
            node.gate = GateThread(_connector(connect, url), leaf_gated_subject)
            await node.gate.start()
        # Last: the nodes' streams exist now, so the hub's sources find them at once.
        await ensure_hub_sources(hub_nc.jetstream(timeout=10), self.states)

    async def apply_directory(
        self,
        hub_nc: NATS,
        connect: Callable[[str], Awaitable[NATS]],
        hub: NatsLayout,
        state_of: dict[str, str | None],
        *,
        max_age_s: int,
        duplicate_window_s: int,
    ) -> None:
        """After a directory change: the state streams' filters, new agencies' consumers,
        and each state node reloaded with its active agencies."""
        agencies = [u.agency for u in hub.agencies]
        by_state = {s: [a for a in agencies if state_of.get(a) == s] for s in self.states}
        await ensure_hub_state_streams(
            hub_nc,
            by_state,
            max_age_s=max_age_s,
            duplicate_window_s=duplicate_window_s,
        )
        for i, (state, node) in enumerate(sorted(self.nodes.items()), start=1):
            fresh = [a for a in by_state[state] if a not in node.consumers]
            if fresh:
                nc = await connect(node.server.url)
                try:
                    js = nc.jetstream(timeout=10)
                    for agency in fresh:
                        await ensure_agency_consumer(js, agency)
                        node.consumers.add(agency)
                finally:
                    await nc.drain()
            layout = self.leaf_layout(i, state, hub, state_of)
            # The ports nats-server picked stay: reload cannot change them.
            layout = NatsLayout(
                **{
                    **layout.__dict__,
                    "port": node.server.layout.port,
                    "http_port": node.server.layout.http_port,
                }
            )
            await asyncio.to_thread(node.server.reload, layout)

    async def stop_gates(self) -> None:
        for node in self.nodes.values():
            if node.gate is not None:
                await node.gate.stop()

    def stop(self) -> None:
        for node in self.nodes.values():
            node.server.stop()

    def describe(self) -> dict[str, dict[str, object]]:
        """What stack.json says of each state node."""
        return {
            state: {
                "nats_url": node.server.url,
                "monitor_url": node.server.monitor_url,
                "domain": leaf_domain(state),
                "agencies": sorted(u.agency for u in node.server.layout.agencies),
            }
            for state, node in self.nodes.items()
        }
