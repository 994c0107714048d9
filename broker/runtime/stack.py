"""The embedded stack behind ``istmo up`` and the standalone ``istmo relay``.

``istmo up`` starts, in one process: nats-server (from the pinned wheel unless another
>= 2.12.3 is configured or on PATH) with JetStream in the data directory, SQLite in the
same directory, the relay and the HTTP API on 127.0.0.1, and the demo directory with a
keystore per demo agency. A second run on the same directory resumes with the same keys,
streams and pending deliveries.

``istmo up --nats-auth operator`` (chosen when a data directory is first run) runs NATS in
operator mode (ADR 0013): the agencies' accounts are JWTs pushed to nats-server
(``broker.runtime.accounts``), and a directory change never reloads it.

``istmo up --cluster 3`` starts three nats-server processes instead, routed into one
JetStream cluster on loopback ports (``broker.bus.cluster``), creates every stream with 3
replicas, and connects the relay to all three; a directory change reloads every node. A
data directory keeps the shape it was first run with: its JetStream store is either
``DATA_DIR/nats`` (one node) or ``DATA_DIR/nats-1..3`` (a cluster), never both.

``istmo up --leaves GT,BZ`` adds a NATS leaf node per state, each in a JetStream domain of
its own, where that state's agencies connect (``broker.runtime.statenodes``, ADR 0030).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

import nats
import nats.errors
import uvicorn
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig
from nats.js.client import JetStreamContext
from starlette.types import ASGIApp

from broker.api.oauth import TokenAuthority
from broker.audit.sequencer import LOG_PUB_FILE, run_in_stack
from broker.bus.claims import ClaimsPusher, record_nats_auth
from broker.bus.cluster import (
    ClusterPorts,
    ExternalNats,
    NatsCluster,
    check_cluster_ports,
    route_password,
)
from broker.bus.gate import GateThread
from broker.bus.natsconf import AgencyUser, NatsLayout
from broker.bus.server import NatsServer, check_port_free, find_nats_server
from broker.bus.streams import (
    create_agency_consumers,
    delivery_consumers,
    ensure_agency_consumer,
    ensure_relay_consumers,
    ensure_streams,
    wait_for_jetstream,
)
from broker.clock import SYSTEM_CLOCK
from broker.config import Settings
from broker.directory.keylog import backfill_key_entries
from broker.directory.lifecycle import CONTROL_DIRECTORY_SUBJECT, set_agency_status
from broker.directory.policy_sets import CONTROL_POLICY_SUBJECT, adopt
from broker.directory.service import DirectoryService
from broker.policy.engine import PolicyBundle
from broker.relay.metrics import RelayMetrics, serve_metrics
from broker.relay.worker import Relay
from broker.runtime.accounts import AccountSync
from broker.runtime.app import create_app
from broker.runtime.claim import (
    NATS_PID_FILE,
    check_store_shape,
    nats_auth_of,
    reap_stale_nats,
    take_data_dir_lock,
)
from broker.runtime.datadir import DataDir
from broker.runtime.stackfile import STACK_FILE, read_stack_file
from broker.runtime.statenodes import DEFAULT_LEAF_PORT, StateNodes
from broker.runtime.status_requests import (
    STATUS_REQUEST_QUEUE,
    STATUS_REQUEST_SUBJECT,
    StatusAnswer,
    StatusRequest,
)
from broker.store.db import display_url
from broker.store.groups import delivery_epochs
from broker.store.registry import Registry
from schemas.errors import ConfigError, IstmoError
from schemas.natskeys import user_public_key
from schemas.subjects import deliver_durables

__all__ = ["Stack", "read_stack_file", "uvicorn_config"]

log = logging.getLogger("istmo.stack")
_NATS_WATCH_S = 1.0  # how often the stack checks that its nats-server still runs
DEFAULT_CLUSTER_PORT = 6244  # route port of node 1 (NATS's own default is 6222)
_CONSUMERS_IN_FLIGHT = 4  # agencies whose consumers are being made at once, at start
# A fresh start makes this many agencies' delivery consumers before it says it is up, and
# the rest just after (ADR 39): nats-server makes ~400 a second here, so 10,000 agencies'
# 20,000 would hold the start for most of a minute. Deliveries wait in the stream for a
# consumer made later; an SDK asking one not made yet asks again within 5 s.
CONSUMERS_BEFORE_UP = 1000
_LATER_STEP = 200  # agencies _make_later's worker makes before it reads groups again


async def _watch_nats(server: NatsServer, stop: asyncio.Event) -> None:
    """Say once, as an error, if this stack's nats-server exits without being stopped
    (its exit code or signal and its log's last lines): agencies' clients and the relay
    only see timeouts and refused connections."""
    while not stop.is_set():
        how = server.gone()
        if how is not None:
            log.error("%s", how)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), _NATS_WATCH_S)


def _origin_of(data: bytes) -> str | None:
    """The ``origin`` of a directory-change announcement (None for a bare ``{}``)."""
    try:
        loaded = json.loads(data[:512])
    except ValueError:
        return None
    origin = loaded.get("origin") if isinstance(loaded, dict) else None
    return origin if isinstance(origin, str) else None


async def close_quietly(nc: NATS, timeout: float = 5.0) -> None:
    """Flush what was published, then close. (The relay's loops have ended by now, so a
    drain would only wait on idle pull subscriptions.)"""
    try:
        await asyncio.wait_for(nc.flush(), timeout)
    except (nats.errors.Error, TimeoutError, OSError):
        pass  # closing anyway; unacked work comes back to the next relay
    try:
        await nc.close()
    except OSError as exc:
        # nats-server went away first (it died, or was stopped): nats-py's close still
        # flushes the lost socket and raises. Stopping must not fail for that.
        log.warning("NATS was already gone when the stack closed its connection (%s)", exc)


async def _together(*steps: Awaitable[None]) -> None:
    """Run ``steps`` at once; the first to fail cancels the others, and its exception is
    raised as it is (not in an ExceptionGroup: callers and the CLI catch IstmoError)."""
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def uvicorn_config(app: ASGIApp, settings: Settings) -> uvicorn.Config:
    """How uvicorn serves the API. The client address (per-address rate limits, the
    audit log's ``peer``) is the TCP peer's; X-Forwarded-For is believed only from the
    proxies named in ``ISTMO_TRUSTED_PROXIES`` (uvicorn's own default would believe it
    from 127.0.0.1, where a local proxy that passes the header on lets any client choose
    its address)."""
    trusted = list(settings.trusted_proxies)
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.api_port,
        log_level="warning",
        access_log=False,
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or [],
    )


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The stack owns Ctrl-C and shuts every part down in order.
        yield


class Stack:
    """Files, registry and keys of one data directory, and the services over them."""

    def __init__(
        self,
        settings: Settings,
        out: Callable[[str], None] = print,
        *,
        cluster: int = 1,
        cluster_port: int = DEFAULT_CLUSTER_PORT,
        join: Sequence[str] = (),
        stream_replicas: int | None = None,
        leaves: Sequence[str] = (),
        leaf_port: int = DEFAULT_LEAF_PORT,
        leaf_link_port: int | None = None,
    ) -> None:
        """``cluster``: 1 for one nats-server, 3 (or 5) for a JetStream cluster whose node
        ``i`` uses the client, monitoring and route ports of ``settings`` and
        ``cluster_port``, each plus ``i - 1``. ``join``: the URLs of a NATS run by the
        region's operators instead (nothing started here), whose streams get
        ``stream_replicas`` (None: as they are, 1 when new). ``leaves``: state codes, each
        given a NATS leaf node of its own (ADR 0030) that dials the hub's ``leaf_port``
        (or ``leaf_link_port``, where a test puts a proxy it can cut)."""
        if cluster not in (1, 3, 5):
            raise ConfigError(f"--cluster {cluster}: a cluster has 3 or 5 nodes (1: no cluster)")
        if leaves and (cluster != 1 or join):
            raise ConfigError("--leaves runs with one hub nats-server: drop --cluster or --join")
        self.leaves = list(leaves)
        self.leaf_port = leaf_port
        self.leaf_link_port = leaf_link_port
        self.state_nodes: StateNodes | None = None
        self.settings = settings
        self.out = out
        self.cluster_size = cluster
        self.cluster_ports = ClusterPorts(settings.nats_port, settings.nats_http_port, cluster_port)
        self.join = list(join)
        self.stream_replicas = stream_replicas
        self.nats: NatsServer | NatsCluster | ExternalNats | None = None
        self.registry: Registry | None = None
        self.directory: DirectoryService | None = None
        self._lock: IO[str] | None = None
        self._directory_lock = asyncio.Lock()  # one directory change at a time
        self._consumers: set[str] = set()  # agencies whose durable consumer exists
        # How many agencies' consumers a start makes before it is up; the others it makes
        # once it is (``_make_later``), the ones in ``_later`` meanwhile.
        self.consumers_before_up = CONSUMERS_BEFORE_UP
        self._later: list[str] = []
        # A process that runs for the stack's life (``istmo up``, ``istmo relay``; not an
        # in-process test stack): settle its heap once up and after each directory change
        # (``DirectoryService.keep_heap_settled``).
        self.settles_heap = False
        self._accounts: AccountSync | None = None  # operator mode, once NATS runs
        # Names this process in the directory-change announcements it publishes.
        self._origin = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"

    # ------------------------------------------------------------------ files
    def prepare(self, *, demo: bool = True, directory_later: bool = False) -> None:
        """Open the data directory (``broker.runtime.datadir``): broker keys, registry,
        policy, and the demo directory when ``demo`` and the registry is empty; then
        ``open_directory``, unless ``directory_later`` (``up`` does it while nats-server
        starts)."""
        data = DataDir.open(self.settings, demo=demo, out=self.out)
        self.data = data
        self.directory_key = data.directory_key
        self.relay_seed = data.relay_seed
        self.token_key = data.token_key
        self.registry = data.registry
        if not directory_later:
            self.open_directory()

    def open_directory(self) -> None:
        """Build the directory (checked against the policy: ``ConfigError``), and log the
        keys the key log lacks. At 10,000 agencies about 6 s: ``up`` runs it while
        nats-server recovers its streams and consumers (8 s at that size)."""
        self.directory = self.data.directory
        # Keys registered before ADR 28 (or written behind the registry's back) get the
        # entry SDKs check before sealing for them, and agencies' monitors see.
        logged = backfill_key_entries(self.data.registry)
        if logged:
            self.out(f"keys      logged {logged} key(s) registered before the key log (ADR 28)")

    def _opened(self) -> tuple[Registry, DirectoryService]:
        if self.registry is None or self.directory is None:
            raise RuntimeError("call Stack.prepare() first")
        return self.registry, self.directory

    # ------------------------------------------------------------------ services
    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the flock
            self._lock = None

    def _registry(self) -> Registry:
        """The registry, before the directory is built too (``_opened``)."""
        if self.registry is None:
            raise RuntimeError("call Stack.prepare() first")
        return self.registry

    def nats_layout(self) -> NatsLayout:
        registry = self._registry()
        s = self.settings
        store_dir = (s.data_dir / "nats").resolve()
        operator = self.data.nats_operator
        if operator is not None:  # ADR 0013: the agencies are account JWTs, pushed
            return NatsLayout(
                port=s.nats_port,
                http_port=s.nats_http_port,
                store_dir=store_dir,
                relay_nkey_public=user_public_key(self.relay_seed),
                agencies=(),
                max_payload=s.nats_max_payload,
                operator=operator.trust(store_dir / "resolver", issued_at=SYSTEM_CLOCK.now_s()),
            )
        active = {a.id: a.status for a in registry.agencies()}
        layout = NatsLayout(
            port=s.nats_port,
            http_port=s.nats_http_port,
            store_dir=store_dir,
            relay_nkey_public=user_public_key(self.relay_seed),
            # Only active agencies may connect. A suspended or revoked one loses its user:
            # nats-server closes its connection and refuses new ones (a deny-all user would
            # keep a zombie connection). Its durable consumer stays, holding its deliveries.
            agencies=tuple(
                AgencyUser(u.agency, u.nkey_public)
                for u in registry.nats_users()
                if active.get(u.agency) == "active"
            ),
            max_payload=s.nats_max_payload,
        )
        if self.leaves:
            return self._state_nodes().hub_layout(layout, self._state_of())
        return layout

    def _state_of(self) -> dict[str, str | None]:
        return {a.id: a.state for a in self._registry().agencies()}

    def _state_nodes(self) -> StateNodes:
        if self.state_nodes is None:
            s = self.settings
            self.state_nodes = StateNodes(
                self.leaves,
                binary=find_nats_server(s.nats_server),
                data_dir=s.data_dir,
                broker_dir=s.broker_dir,
                host=s.host,
                hub_port=self.leaf_port,
                link_port=self.leaf_link_port,
                client_base=s.nats_port,
                monitor_base=s.nats_http_port,
            )
        return self.state_nodes

    def claim(self) -> None:
        """Before anything is written: this data directory is ours to run, a nats-server
        left behind by a killed ``istmo up`` is stopped, and every port is free.

        Raises:
            ConfigError: another ``istmo up`` runs here, or a port is taken (named).
        """
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = take_data_dir_lock(s.data_dir)
        try:
            mode = nats_auth_of(s)
            if mode == "operator" and self.join:
                raise ConfigError(
                    "--join runs NATS in config mode only: a region's nodes do not trust "
                    "this broker's operator yet",
                    hint="drop --nats-auth operator, or use another --data-dir",
                )
            if mode == "operator" and self.leaves:
                raise ConfigError(
                    "--leaves runs NATS in config mode only: state nodes render the "
                    "agencies' accounts into their config (ADR 0030)",
                    hint="drop --nats-auth operator, or use another --data-dir",
                )
            record_nats_auth(s.broker_dir, mode)
            reap_stale_nats(s, self.out)
            if self.join:
                check_port_free(s.api_port, "the HTTP API", s.host, option="--api-port")
                return
            check_store_shape(s.data_dir, self.cluster_size)
            if self.leaves:
                check_port_free(self.leaf_port, "NATS leaf nodes", s.host, option="--leaf-port")
            if self.cluster_size == 1:
                check_port_free(s.nats_port, "NATS clients", s.host, option="--nats-port")
                check_port_free(
                    s.nats_http_port, "NATS monitoring", s.host, option="--nats-http-port"
                )
            else:
                check_cluster_ports(self.cluster_ports, self.cluster_size, s.host)
            check_port_free(s.api_port, "the HTTP API", s.host, option="--api-port")
            self._binary = find_nats_server(s.nats_server)
        except BaseException:
            self._release_lock()
            raise

    def _make_nats(self) -> NatsServer | NatsCluster | ExternalNats:
        s = self.settings
        layout = self.nats_layout()
        if self.join:
            return ExternalNats(
                self.join, s.data_dir / "nats-accounts.conf", layout.relay_nkey_public
            )
        if self.cluster_size == 1:
            return NatsServer(
                self._binary, s.broker_dir / "nats.conf", layout, s.data_dir / "nats.log"
            )
        return NatsCluster.in_dir(
            self._binary,
            s.data_dir,
            s.broker_dir,
            size=self.cluster_size,
            ports=self.cluster_ports,
            relay_nkey_public=layout.relay_nkey_public,
            agencies=layout.agencies,
            password=route_password(s.broker_dir),
            host=s.host,
            max_payload=layout.max_payload,
            operator=layout.operator,
        )

    @property
    def nats_urls(self) -> list[str]:
        """The client URLs of the running NATS: one, or every node of the cluster."""
        if self.nats is None:
            raise RuntimeError("NATS is not running")
        return [self.nats.url] if isinstance(self.nats, NatsServer) else self.nats.urls

    async def up(
        self, stop: asyncio.Event, *, with_relay: bool = True, with_sequencer: bool = True
    ) -> None:
        """Run nats-server, relay, sequencer candidate and API until ``stop`` is set, then
        shut down in order."""
        s = self.settings
        if self._lock is None:
            self.claim()
        try:
            server = self.nats = self._make_nats()
            if isinstance(server, NatsCluster):
                self.out(f"starting a {self.cluster_size}-node NATS cluster")
            # A cluster waits for its quorum (node by node on a loaded machine).
            starting = asyncio.to_thread(server.start)
            if self.directory is None:  # prepare(directory_later=True): meanwhile
                await _together(starting, asyncio.to_thread(self.open_directory))
            else:
                await starting
            pids = [server.pid] if isinstance(server, NatsServer) else server.pids
            if self.leaves and isinstance(server, NatsServer):
                self.out(f"starting {len(self.leaves)} state node(s): {', '.join(self.leaves)}")
                await asyncio.to_thread(self._state_nodes().start, server.layout, self._state_of())
                pids += self._state_nodes().pids
            (s.data_dir / NATS_PID_FILE).write_text("".join(f"{p}\n" for p in pids))
        except BaseException:
            if self.state_nodes is not None:
                self.state_nodes.stop()
            if self.nats is not None:
                self.nats.stop()
            self._release_lock()
            raise
        try:
            nc = await self.connect_relay(self.nats_urls)
            try:
                # Independent, so at once: nats-server creates the consumers (its own
                # file work) while this process renders and pushes the accounts.
                await _together(self._start_accounts(server), self.ensure_jetstream(nc))
                if self.state_nodes is not None:
                    await self.state_nodes.set_up(
                        nc,
                        self.connect_relay,
                        self._state_of(),
                        [u.agency for u in server.layout.agencies]
                        if isinstance(server, NatsServer)
                        else [],
                        max_age_s=s.deliver_max_age_s,
                        duplicate_window_s=s.duplicate_window_s,
                    )
                directory_sub = await nc.subscribe(
                    CONTROL_DIRECTORY_SUBJECT, cb=self._reload_nats(server, nc)
                )
                status_sub = await nc.subscribe(
                    STATUS_REQUEST_SUBJECT,
                    queue=STATUS_REQUEST_QUEUE,
                    cb=self._status_requests(server, nc),
                )
                await self._serve(nc, stop, with_relay, server, with_sequencer)
                await status_sub.unsubscribe()
                await directory_sub.unsubscribe()
            finally:
                if self.state_nodes is not None:
                    await self.state_nodes.stop_gates()
                await close_quietly(nc)
                if self._accounts is not None:
                    await self._accounts.pusher.close()
                (s.data_dir / STACK_FILE).unlink(missing_ok=True)
        finally:
            if self.state_nodes is not None:
                self.state_nodes.stop()
            server.stop()
            (s.data_dir / NATS_PID_FILE).unlink(missing_ok=True)
            if self.registry is not None:
                self.registry.close()
            self._release_lock()

    async def _serve(
        self,
        nc: NATS,
        stop: asyncio.Event,
        with_relay: bool,
        server: NatsServer | NatsCluster | ExternalNats,
        with_sequencer: bool = True,
    ) -> None:
        registry, directory = self._opened()
        s = self.settings
        api_url = s.api_url
        # Tokens and links name the public URL when there is one; tools on this machine
        # may still name the loopback one (ISTMO_PUBLIC_URL, docs/adr/0011).
        auth = TokenAuthority(
            registry,
            self.token_key,
            issuer=s.base_url,
            local_url=api_url,
            lifetime_s=s.access_token_lifetime_s,
        )
        app = create_app(
            registry,
            directory,
            lambda: nc.is_connected,
            auth=auth,
            console_dev_login=True,
            allowed_hosts=s.allowed_hosts,
            base_url=s.base_url,
        )
        # The relay's metrics are served with the API's own on /metrics.
        relay_metrics = RelayMetrics(app.state.istmo.metrics.registry)
        app.state.istmo.nats_url = self.nats_urls[0]
        app.state.istmo.directory_changed = lambda: self.apply_directory_change(server, nc)
        if self._accounts is not None:
            app.state.istmo.nats_user_jwt = self._accounts.user_jwt
        app.state.istmo.adopt_policy = lambda root, who: self.adopt_policy(root, who, nc)
        api = _Server(uvicorn_config(app, s))
        # Agencies' publishes reach JetStream through a gate, relay or not (broker.bus.gate),
        # on a thread of its own so that this loop's work never holds a publisher.
        gate = GateThread(lambda: self.connect_relay(self.nats_urls))
        await gate.start()
        try:
            await self._serve_tasks(
                stop, api, with_relay, server, with_sequencer, nc, api_url, relay_metrics
            )
        finally:
            await gate.stop()

    async def _serve_tasks(
        self,
        stop: asyncio.Event,
        api: _Server,
        with_relay: bool,
        server: NatsServer | NatsCluster | ExternalNats,
        with_sequencer: bool,
        nc: NATS,
        api_url: str,
        relay_metrics: RelayMetrics,
    ) -> None:
        registry, directory = self._opened()
        s = self.settings
        async with asyncio.TaskGroup() as tg:
            api_task = tg.create_task(api.serve())
            if with_relay:
                relay = Relay(
                    s,
                    registry,
                    directory,
                    nc,
                    # Agencies' requests on a thread of its own, never behind a batch.
                    api_connect=lambda: self.connect_relay(self.nats_urls),
                    metrics=relay_metrics,
                )
                tg.create_task(relay.run(stop))
            # Elected through NATS KV: any other `istmo up` or `istmo sequencer` on this
            # region's NATS stands by while this one leads, and takes over if it dies.
            if with_sequencer:
                tg.create_task(
                    run_in_stack(s, stop, self.out, nc=nc, replicas=min(self.cluster_size, 3))
                )
            if self._accounts is not None:  # operator mode: resend what a node missed
                tg.create_task(self._accounts.heal_forever(stop))
            if isinstance(server, NatsServer):
                tg.create_task(_watch_nats(server, stop))
            while not api.started and not api_task.done():  # noqa: ASYNC110 -- uvicorn offers no event
                await asyncio.sleep(0.02)  # "ready" only once the API really listens
            if api.started:
                self._announce(server, api_url, with_relay, with_sequencer)
            tg.create_task(self._make_later(nc, stop))
            await stop.wait()
            api.should_exit = True
            await api_task

    def _announce(
        self,
        server: NatsServer | NatsCluster | ExternalNats,
        api_url: str,
        with_relay: bool,
        with_sequencer: bool = True,
    ) -> None:
        s = self.settings
        info: dict[str, object] = {
            # Clients connect to the first and learn the other nodes from it.
            "nats_url": self.nats_urls[0],
            "nats_urls": self.nats_urls,
            "api_url": api_url,
            # Where users reach the API (ISTMO_PUBLIC_URL), or null: then at api_url.
            "public_url": s.public_url,
            # nats-server monitoring, where this stack runs it (istmo health reads /jsz).
            "nats_monitor_urls": (
                [server.monitor_url]
                if isinstance(server, NatsServer)
                else [node.monitor_url for node in server.nodes]
                if isinstance(server, NatsCluster)
                else []
            ),
            "pid": os.getpid(),
            "started_at": int(time.time()),
        }
        if self.state_nodes is not None:
            # ADR 0030: a state's agencies connect to their state node.
            info["leaves"] = self.state_nodes.describe()
        (s.data_dir / STACK_FILE).write_text(json.dumps(info, indent=2) + "\n")
        if isinstance(server, ExternalNats):
            self.out(f"NATS      joined {', '.join(server.urls)} (run by the region's operators)")
            self.out(f"          directory changes write {server.accounts_path}: install, reload")
        elif isinstance(server, NatsServer):
            self.out(
                f"NATS      {server.url} (JetStream in {s.data_dir / 'nats'}, "
                f"log {s.data_dir / 'nats.log'})"
            )
            self.out(f"NATS mon  {server.monitor_url} (nats-server monitoring)")
        else:
            for i, node in enumerate(server.nodes, start=1):
                lay = node.layout
                routes = lay.cluster.port if lay.cluster else "-"
                self.out(
                    f"NATS {i}    {node.url} (monitoring http://{lay.host}:{lay.http_port}, "
                    f"routes {routes}, JetStream in {lay.store_dir}, log {node.log_path})"
                )
            self.out(f"NATS      cluster of {len(server.nodes)}, every stream with 3 replicas")
        if self._accounts is not None:
            self.out("          operator mode: agencies' accounts are JWTs pushed to NATS")
        for state, leaf in (self.state_nodes.nodes if self.state_nodes else {}).items():
            names = ", ".join(sorted(u.agency for u in leaf.server.layout.agencies))
            self.out(
                f"NATS {state:<4} {leaf.server.url} (state node, JetStream domain "
                f"{leaf.server.layout.domain}, log {leaf.server.log_path}; agencies "
                f"{names or 'none'})"
            )
        self.out(f"HTTP API  {api_url} (docs at {api_url}/docs; tokens at {api_url}/v1/token)")
        if s.public_url is not None:
            self.out(
                f"public    {s.public_url} (tokens and links name it; clients call "
                f"{s.public_url}/v1/token)"
            )
        self.out(f"database  {display_url(s.db_url)}")
        self.out(f"keystores {s.keys_dir}/<agency>.json (administrator: {s.keys_dir}/admin.json)")
        self.out("relay     " + ("running" if with_relay else "not started (--no-relay)"))
        if with_sequencer:
            self.out(
                "audit log sequenced here while elected (NATS KV lease; "
                f"log key {s.broker_dir / LOG_PUB_FILE})"
            )
        else:
            self.out("sequencer not here (--no-sequencer): run `istmo sequencer --standby`")
        if self._later:
            self.out(
                f"consumers {len(self._later)} agencies' delivery consumers being made "
                "(their deliveries wait in the stream meanwhile)"
            )
        if self.settles_heap and self.directory is not None:
            # What start-up made stays for the process's life: out of the collector's
            # full passes from now on (and after each directory change).
            self.directory.keep_heap_settled()
        self.out("ready; Ctrl-C stops")

    async def adopt_policy(self, candidate: Path, who: str, nc: NATS) -> tuple[str, str]:
        """Adopt the policy set in ``candidate`` (validated, archived, audited) and switch
        this process and every other relay to it. Returns (previous, new) versions.

        Raises:
            PolicyLoadError: the candidate is invalid; nothing changed.
        """
        registry, directory = self._opened()
        done = adopt(
            candidate,
            settings=self.settings,
            registry=registry,
            active=directory.bundle,
            adopted_by=who,
            check=directory.engine_for,
        )
        directory.use_bundle(PolicyBundle.load(done.archived_at))
        await nc.publish(CONTROL_POLICY_SUBJECT, b"{}")  # relays in other processes
        return done.previous or "", done.version

    def _status_requests(
        self, server: NatsServer | NatsCluster | ExternalNats, nc: NATS
    ) -> Callable[[Msg], Awaitable[None]]:
        """Answer an operator's ``istmo admin suspend | reinstate | revoke``
        (``broker.runtime.status_requests``)."""

        async def on_request(msg: Msg) -> None:
            answer = await self.change_status(server, nc, msg.data)
            if msg.reply:
                await msg.respond(answer.encode())

        return on_request

    async def change_status(
        self, server: NatsServer | NatsCluster | ExternalNats, nc: NATS, data: bytes
    ) -> StatusAnswer:
        """Record the status change ``data`` asks for (``StatusRequest``) with its audit
        event, and apply it as the HTTP API does: NATS first, then the directory and every
        other process. A refused request changes nothing."""
        try:
            req = StatusRequest.parse(data)
            previous = await asyncio.to_thread(
                set_agency_status,
                self._opened()[0],
                req.agency,
                req.status,
                actor=req.actor,
                note=req.note,
            )
        except IstmoError as exc:  # a bad request, no such change, the store refused
            log.warning("status request refused: %s", exc)
            return StatusAnswer(error=str(exc)[:300], code=exc.code)
        except Exception:  # a bug: answer, so the command does not wait for nothing
            log.exception("status request failed")
            return StatusAnswer(error="the stack failed; its log says why", code="internal")
        log.info("agency %s: %s -> %s by %s", req.agency, previous, req.status, req.actor)
        try:
            await self.apply_directory_change(server, nc)
        except IstmoError as exc:
            log.error("agency %s: recorded, but not applied to NATS yet: %s", req.agency, exc)
            return StatusAnswer(previous=previous, applied=False)
        return StatusAnswer(previous=previous, applied=True)

    def _reload_nats(
        self, server: NatsServer | NatsCluster | ExternalNats, nc: NATS
    ) -> Callable[[Msg], Awaitable[None]]:
        """On a directory change (a control message): apply it, logging a failure."""

        async def on_change(msg: Msg) -> None:
            if _origin_of(msg.data) == self._origin:
                return  # our own announcement of a change applied already
            try:
                # Not announced again: two API replicas would echo each other for ever.
                await self.apply_directory_change(server, nc, announce=False)
            except IstmoError as exc:
                log.error("could not apply the directory change to NATS: %s", exc)
            except Exception:  # a bug: keep serving; the next change or restart applies it
                log.exception("could not apply the directory change to NATS")

        return on_change

    async def apply_directory_change(
        self, server: NatsServer | NatsCluster | ExternalNats, nc: NATS, *, announce: bool = True
    ) -> None:
        """Refresh the directory, create the durable consumer of every agency enrolled
        since (before it can connect), then reload nats-server (every node of a cluster)
        with the active agencies' users. The HTTP API awaits this before answering an
        enrolment or a status change. With ``announce`` (a change made here) every other
        process is then told on ``istmo.control.directory``; a change applied because
        another process announced it is not announced again.

        Raises:
            IstmoError: JetStream or nats-server refused (the directory is refreshed).
        """
        async with self._directory_lock:
            try:
                await self._apply_locally(server, nc)
            finally:
                if announce:
                    # Every other process (relays, other API replicas) rebuilds its
                    # directory too, even if this node's reload failed: an agency
                    # enrolled or suspended over this API's HTTP must be known to the
                    # relay that decides its bulletins, wherever it runs.
                    await nc.publish(
                        CONTROL_DIRECTORY_SUBJECT, json.dumps({"origin": self._origin}).encode()
                    )

    async def _new_consumers(self, registry: Registry, js: JetStreamContext) -> None:
        """The two delivery consumers of every agency enrolled since the last change (with
        its group copies, ADR 21), before it can connect."""
        later = set(self._later)  # being made by _make_later
        fresh = [
            u.agency
            for u in registry.nats_users()
            if u.agency not in self._consumers and u.agency not in later
        ]
        if fresh:
            shared = self._group_epochs(registry)  # ADR 21: their group copies too
            for agency in fresh:
                await ensure_agency_consumer(js, agency, groups=shared.get(agency, ()))
                self._consumers.add(agency)

    async def _apply_locally(
        self, server: NatsServer | NatsCluster | ExternalNats, nc: NATS
    ) -> None:
        """``apply_directory_change`` in this process: directory, consumers, nats-server."""
        registry, directory = self._opened()
        t0 = time.perf_counter()
        if self._accounts is not None:
            # Operator mode: NATS first, so a suspension takes effect there without waiting
            # for the directory's rebuild; only the accounts that changed, no reload.
            pushed = await self._accounts.apply()
            t_nats = time.perf_counter()
        else:
            t_nats = t0
        # The rebuild (on a thread) and the new agencies' consumers (JetStream requests)
        # need nothing of each other: both at once. Both finish before anything is raised.
        js = nc.jetstream(timeout=10)
        refreshed, made = await asyncio.gather(
            _timed(directory.refresh_async()),
            _timed(self._new_consumers(registry, js)),
            return_exceptions=True,
        )
        if isinstance(refreshed, BaseException):
            raise refreshed
        if isinstance(made, BaseException):
            raise made
        refresh_s, consumers_s = refreshed, made
        t2 = time.perf_counter()
        if self._accounts is not None:
            log.info(
                "directory change applied in %.2f s: %d NATS account(s) pushed in %.2f, "
                "refresh %.2f, consumers %.2f (at once)",
                t2 - t0,
                pushed,
                t_nats - t0,
                refresh_s,
                consumers_s,
            )
            return
        layout = await asyncio.to_thread(self.nats_layout)
        t3 = time.perf_counter()
        if isinstance(server, NatsServer):
            await asyncio.to_thread(server.reload, layout)
            if self.state_nodes is not None:
                await self.state_nodes.apply_directory(
                    nc,
                    self.connect_relay,
                    layout,
                    self._state_of(),
                    max_age_s=self.settings.deliver_max_age_s,
                    duplicate_window_s=self.settings.duplicate_window_s,
                )
        else:
            await asyncio.to_thread(server.reload_agencies, layout.agencies)
        log.info(
            "directory change applied in %.2f s: refresh %.2f, consumers %.2f (at once), "
            "accounts %.2f, nats reload %.2f",
            time.perf_counter() - t0,
            refresh_s,
            consumers_s,
            t3 - t2,
            time.perf_counter() - t3,
        )
        if isinstance(server, ExternalNats):
            log.warning(
                "directory %s: new NATS accounts in %s; install them on every node and reload it",
                directory.version,
                server.accounts_path,
            )
        else:
            log.info("nats-server reloaded for directory %s", directory.version)

    async def _start_accounts(self, server: NatsServer | NatsCluster | ExternalNats) -> None:
        """Operator mode: connect as the system account's user, push the agencies' accounts
        the resolver lacks or holds stale, and give the demo keystores their user JWTs."""
        operator = self.data.nats_operator
        if operator is None:
            return
        registry, _ = self._opened()
        nodes = len(server.nodes) if isinstance(server, NatsCluster) else 1
        pusher = await ClaimsPusher.connect(self.nats_urls, operator, nodes=nodes)
        self._accounts = AccountSync(operator, registry, pusher)
        t0 = time.perf_counter()
        pushed = await self._accounts.start()
        written = await asyncio.to_thread(self.data.issue_nats_jwts)
        log.info(
            "NATS accounts in step in %.2f s: %d pushed, %d keystore JWTs written",
            time.perf_counter() - t0,
            pushed,
            written,
        )

    async def connect_relay(self, url: str | list[str], *, reconnects: int = -1) -> NATS:
        """Connect as the broker's own NATS user to ``url`` (or any of a cluster's URLs),
        trying again ``reconnects`` times (-1: for ever, as workers do) when it is down.
        A bounded caller (a command, not a worker) gets BusUnavailable, not nats-py's
        logged tracebacks of each failed attempt.

        Raises:
            BusUnavailable: NATS is not reachable.
            ConfigError: NATS's TLS certificate does not verify against the trusted CAs
                (``SSL_CERT_FILE``): retrying cannot help, and nats-py would otherwise
                hang for ever after the failed handshake (nats-io/nats.py#718).
        """
        return await self.data.connect(url, reconnects=reconnects)

    async def ensure_jetstream(self, nc: NATS, *, agency_consumers: bool = True) -> None:
        """The streams and the relay's consumers; with ``agency_consumers`` also every
        agency's delivery consumer (``istmo up`` makes those, and keeps them as agencies
        come; a relay joining a stack skips them: on a 3-node cluster they are most of a
        restart's wait)."""
        registry, _ = self._opened()
        js = nc.jetstream(timeout=10)
        if self.data.nats_operator is not None:
            await wait_for_jetstream(js)  # the relay account's claims may still be landing
        await ensure_streams(
            js,
            deliver_max_age_s=self.settings.deliver_max_age_s,
            duplicate_window_s=self.settings.duplicate_window_s,
            # A worker joining someone else's NATS (istmo relay) keeps what is there.
            replicas=(
                None
                if self.nats is None
                else self.stream_replicas
                if self.join
                else min(self.cluster_size, 3)
            ),
        )
        await ensure_relay_consumers(js)
        if not agency_consumers:
            return
        t0 = time.perf_counter()
        listed = [user.agency for user in registry.nats_users()]
        # A restart finds them made already: those exactly as wanted are left alone.
        existing = await delivery_consumers(js)
        # Agencies with neither consumer yet, past the first consumers_before_up of them,
        # get theirs once the stack is up; the others now (made, updated, or in place).
        absent = [a for a in listed if not any(d in existing for d in deliver_durables(a))]
        self._later = absent[self.consumers_before_up :]
        later = set(self._later)
        now = [a for a in listed if a not in later]
        await self._make_consumers(js, now, existing)
        log.info(
            "delivery consumers of %d agencies in step in %.2f s (%d found in place)%s",
            len(now),
            time.perf_counter() - t0,
            len(existing),
            f"; {len(later)} more once the stack is up" if later else "",
        )

    async def _make_consumers(
        self, js: JetStreamContext, agencies: list[str], existing: dict[str, ConsumerConfig]
    ) -> None:
        """The delivery consumers of ``agencies`` (those in ``existing`` exactly as wanted
        are left alone), a few requests in flight: nats-server works on one while the
        next is on its way (thousands of agencies, two consumers each, were one round
        trip at a time)."""
        registry = self._registry()
        shared = self._group_epochs(registry)  # ADR 21: the group copies each reads
        todo = iter(agencies)

        async def make() -> None:
            for agency in todo:  # shared: each agency is taken by one of them
                groups = shared.get(agency, ())
                await ensure_agency_consumer(js, agency, groups=groups, existing=existing)
                self._consumers.add(agency)

        await _together(*(make() for _ in range(_CONSUMERS_IN_FLIGHT)))

    async def _make_later(self, nc: NATS, stop: asyncio.Event) -> None:
        """Create the delivery consumers ``ensure_jetstream`` left for after the stack is
        up (ADR 39). Deliveries to those agencies wait in the stream meanwhile. Create,
        never update: the relay may have made one already, for a group epoch. If
        JetStream refuses, the ones not made are left to the next directory change."""
        later = self._later
        if not later:
            return
        t0 = time.perf_counter()
        registry = self._registry()
        todo = iter(later)

        async def make() -> None:
            shared: dict[str, list[tuple[str, int]]] = {}
            for n, agency in enumerate(todo):  # shared: each agency is taken by one
                if stop.is_set():
                    return
                if n % _LATER_STEP == 0:  # stale is harmless: a create never replaces
                    shared = await asyncio.to_thread(self._group_epochs, registry)
                await create_agency_consumers(nc, agency, groups=shared.get(agency, ()))
                self._consumers.add(agency)

        try:
            await _together(*(make() for _ in range(_CONSUMERS_IN_FLIGHT)))
        except IstmoError as exc:
            log.error("delivery consumers not made: %s; the next directory change makes them", exc)
            self.out(f"consumers NOT all made: {exc}")
            return
        except Exception:  # a bug: keep serving; the next directory change makes the rest
            log.exception("delivery consumers not made")
            self.out("consumers NOT all made (see the log); the next directory change makes them")
            return
        finally:
            self._later = []
        if not stop.is_set():
            self.out(
                f"consumers all {len(self._consumers)} agencies' delivery consumers made "
                f"({len(later)} in {time.perf_counter() - t0:.1f} s after the start)"
            )

    def _group_epochs(self, registry: Registry) -> dict[str, list[tuple[str, int]]]:
        """The group epochs whose shared copies each agency's consumers read (ADR 21)."""
        since = int(time.time()) - self.settings.deliver_max_age_s
        return delivery_epochs(registry, since=since)

    async def relay_only(
        self, stop: asyncio.Event, nats_url: str | list[str], *, metrics_port: int | None = None
    ) -> None:
        """Run one more relay worker against an already running NATS (any of a
        cluster's URLs); with ``metrics_port``, serve its metrics on 127.0.0.1 there."""
        registry, directory = self._opened()
        metrics = RelayMetrics()
        stop_metrics: Callable[[], None] | None = None
        if metrics_port is not None:
            port, stop_metrics = serve_metrics(metrics, metrics_port)
            self.out(f"relay metrics on http://127.0.0.1:{port}/metrics")
        try:
            await self._relay_only(stop, nats_url, registry, directory, metrics)
        finally:
            if stop_metrics is not None:
                stop_metrics()

    async def _relay_only(
        self,
        stop: asyncio.Event,
        nats_url: str | list[str],
        registry: Registry,
        directory: DirectoryService,
        metrics: RelayMetrics,
    ) -> None:
        nc = await self.connect_relay(nats_url)
        try:
            await self.ensure_jetstream(nc, agency_consumers=False)
            shown = nats_url if isinstance(nats_url, str) else ", ".join(nats_url)
            relay = Relay(
                self.settings,
                registry,
                directory,
                nc,
                api_connect=lambda: self.connect_relay(nats_url),
                metrics=metrics,
            )

            def ready() -> None:
                if self.settles_heap:
                    directory.keep_heap_settled()  # as ``up`` does before "ready"
                # "connected" once it takes bulletins: scripts and tests wait for it.
                self.out(f"relay connected to {shown}; Ctrl-C stops")

            gate = GateThread(lambda: self.connect_relay(nats_url))
            await gate.start()
            try:
                await relay.run(stop, ready=ready)
            finally:
                await gate.stop()
                self.out(f"relay stopped after {relay.processed} ingest messages")
        finally:
            await close_quietly(nc)
            registry.close()


async def _timed(aw: Awaitable[object]) -> float:
    """Seconds ``aw`` took."""
    t = time.perf_counter()
    await aw
    return time.perf_counter() - t
