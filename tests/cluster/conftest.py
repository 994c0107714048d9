"""A real 3-node NATS JetStream cluster from the wheel, laid out as ``istmo up --cluster 3``.

``cluster_stack`` is the cluster twin of the single-node ``nats_stack`` fixture
(``tests/conftest.py``): the same accounts and streams (with 3 replicas), and the same
``NatsStack`` helpers, so the confinement tests run on it unchanged. The relay connects to
node 1 and every agency to node 2 or 3, so each allowed and denied operation crosses a
route. ``running_cluster_stack`` runs the whole broker on such a cluster in the test's
event loop, as ``istmo up --cluster 3`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS

from broker.bus.claims import ClaimsPusher
from broker.bus.cluster import ClusterPorts, NatsCluster
from broker.bus.natsauth import NatsOperator
from broker.bus.natsconf import AgencyUser
from broker.bus.streams import wait_for_jetstream
from broker.config import Settings
from broker.runtime.stack import Stack
from schemas.natskeys import new_user_seed, user_public_key
from tests.conftest import NatsStack, user_jwt_option
from tests.integration.stack_inproc import serving
from tests.stackproc import UpProcess, free_port_run, pause
from tests.waiting import eventually, eventually_sync

_CONNECT_OPTIONS: dict[str, Any] = {
    "connect_timeout": 2,
    "max_reconnect_attempts": 5,
    "reconnect_time_wait": 0.2,
    "allow_reconnect": True,
    "dont_randomize": True,  # the first URL is the node the test means
}


def cluster_ports() -> ClusterPorts:
    # One run of nine, split: three runs picked one after another were each free, but
    # could overlap one another (nothing binds them until the nodes start), and the
    # cluster then refused its own ports or found one taken.
    base = free_port_run(9)
    return ClusterPorts(base, base + 3, base + 6)


@dataclass
class ClusterStack(NatsStack):
    """``NatsStack`` on a cluster: ``server`` is node 1; agencies connect elsewhere."""

    cluster: NatsCluster | None = None
    _turn: int = field(default=0)

    @property
    def url(self) -> str:
        return self.server.url

    def _urls(self, first: int) -> list[str]:
        assert self.cluster is not None
        urls = self.cluster.urls
        return urls[first:] + urls[:first]

    async def _connect(self, seed: str, prefix: str | None, **options: Any) -> NATS:
        errors: list[Exception] | None = options.pop("errors", None)

        async def on_error(exc: Exception) -> None:
            if errors is not None:
                errors.append(exc)

        merged = {**_CONNECT_OPTIONS, **user_jwt_option(options), **options}
        if prefix is None:
            first = 0
        else:
            merged["inbox_prefix"] = prefix
            self._turn += 1
            first = 1 + self._turn % 2
        nc = await nats.connect(
            self._urls(first),
            nkeys_seed_str=seed,
            error_cb=on_error,
            name=prefix or "relay",
            **merged,
        )
        self._connections.append(nc)
        return nc

    def reload_with(self, agencies: Iterable[str]) -> None:
        """Add fresh seeds for new ``agencies`` and reload every node."""
        for agency in agencies:
            self.seeds.setdefault(agency, new_user_seed())
        users = tuple(AgencyUser(a, user_public_key(s)) for a, s in self.seeds.items())
        assert self.cluster is not None
        self.cluster.reload_agencies(users)


@pytest.fixture
async def cluster_stack(
    nats_binary: Path, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[ClusterStack]]]:
    """Factory: ``stack = await cluster_stack(["gt-police", "jm-police"])`` (and
    ``auth="operator"`` for operator mode, ADR 0013)."""
    stacks: list[ClusterStack] = []

    async def start(agencies: list[str], auth: str = "config") -> ClusterStack:
        home = tmp_path / f"cluster-{len(stacks)}"
        seeds = {agency: new_user_seed() for agency in agencies}
        relay_seed = new_user_seed()
        operator = NatsOperator(secrets.token_bytes(32)) if auth == "operator" else None
        cluster = NatsCluster.in_dir(
            nats_binary,
            home,
            home,
            size=3,
            ports=cluster_ports(),
            relay_nkey_public=user_public_key(relay_seed),
            agencies=()
            if operator is not None
            else tuple(AgencyUser(a, user_public_key(s)) for a, s in seeds.items()),
            password="test-route-password-0123",
            operator=None
            if operator is None
            else operator.trust(home / "unused", issued_at=int(time.time())),
        )
        stack = ClusterStack(
            server=cluster.nodes[0],
            relay_seed=relay_seed,
            seeds=seeds,
            cluster=cluster,
            operator=operator,
        )
        stacks.append(stack)
        await asyncio.to_thread(cluster.start)
        if operator is not None:
            stack.pusher = await ClaimsPusher.connect(cluster.urls, operator, nodes=3)
            await stack.admit(agencies)
            # Operator mode: a node may answer "JetStream not enabled for account" for a
            # moment after the cluster is up; istmo up waits for it the same way.
            relay = await stack.connect_relay()
            try:
                await wait_for_jetstream(relay.jetstream(timeout=2))
            finally:
                await relay.close()
        await stack.provision(agencies, replicas=3, timeout=10)
        return stack

    try:
        yield start
    finally:
        for stack in stacks:
            try:
                await stack.close_connections()
            finally:
                assert stack.cluster is not None
                stack.cluster.stop()


@contextlib.asynccontextmanager
async def running_cluster_stack(
    data_dir: Path, *, with_relay: bool = True, with_sequencer: bool = True
) -> AsyncIterator[Stack]:
    """The whole broker on a 3-node cluster, as ``istmo up --cluster 3`` runs it."""
    ports = cluster_ports()
    settings = Settings(
        data_dir=data_dir,
        nats_port=ports.client,
        nats_http_port=ports.http,
        api_port=free_port_run(1),
    )
    stack = Stack(settings, out=lambda _line: None, cluster=3, cluster_port=ports.cluster)
    async with serving(
        stack,
        "the cluster stack to come up",
        start_timeout=240,
        with_relay=with_relay,
        with_sequencer=with_sequencer,
    ) as up:
        yield up


# ------------------------------------------------------------------ `istmo up --cluster 3`
def up_cluster_process(data_dir: Path, *extra: str) -> UpProcess:
    """``istmo up --cluster 3`` as a subprocess on free port runs (not started yet)."""
    ports = cluster_ports()
    up = UpProcess(data_dir, extra=("--cluster", "3", "--cluster-port", str(ports.cluster), *extra))
    up.ports = {"nats": ports.client, "http": ports.http, "api": free_port_run(1)}
    return up


@pytest.fixture
def up_cluster(tmp_path: Path) -> Iterator[UpProcess]:
    """``istmo up --cluster 3 --no-relay``: three NATS nodes, the API and the sequencer;
    relays are the test's (``tests.faults.harness.RelayProcess``)."""
    up = up_cluster_process(tmp_path / "istmo", "--no-relay").start(timeout=240)
    try:
        yield up
    finally:
        up.stop(timeout=60)


@dataclass
class ClusterNodes:
    """The nodes ``istmo up --cluster 3`` started, for fault tests: SIGKILL one (it stays a
    zombie child of ``istmo up`` until that exits) and start it again from its own config
    (then it is this object's child, stopped by ``stop_restarted``)."""

    up: UpProcess
    binary: Path
    restarted: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return 3

    def _original_pid(self, node: int) -> int:
        pids = (self.up.data_dir / "nats.pid").read_text().split()
        return int(pids[node - 1])

    def pid(self, node: int) -> int:
        proc = self.restarted.get(node)
        return proc.pid if proc is not None else self._original_pid(node)

    def http(self, node: int) -> str:
        return f"http://127.0.0.1:{self.up.ports['http'] + node - 1}"

    def _get(self, node: int, path: str) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(self.http(node) + path, timeout=1) as resp:  # noqa: S310
                body: dict[str, Any] = json.loads(resp.read())
                return body
        except (OSError, ValueError):
            return None

    def alive(self, node: int) -> bool:
        return self._get(node, "/varz") is not None

    def kill(self, node: int) -> None:
        os.kill(self.pid(node), signal.SIGKILL)
        eventually_sync(
            lambda: not self.alive(node), what=f"node {node} to die of SIGKILL", interval=0.02
        )
        old = self.restarted.pop(node, None)
        if old is not None:
            old.wait()

    def restart(self, node: int) -> None:
        conf = self.up.data_dir / "broker" / f"nats-{node}.conf"
        with (self.up.data_dir / f"nats-{node}.log").open("ab") as log:
            self.restarted[node] = subprocess.Popen(
                [str(self.binary), "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_alive(self, node: int, timeout: float = 120) -> None:
        eventually_sync(lambda: self.alive(node), what=f"node {node} to come back", timeout=timeout)

    def pause(self, node: int) -> None:
        """SIGSTOP: the node keeps its sockets but answers nothing, like a node cut off by a
        partition (or a VM frozen), and comes back with whatever it believed before."""
        pause(self.pid(node))

    def resume(self, node: int) -> None:
        os.kill(self.pid(node), signal.SIGCONT)

    def stream_states(self, stream: str) -> dict[int, tuple[int, int, int]]:
        """Each answering node's own replica of ``stream``: (messages, first seq, last seq)
        from its ``/jsz``. Equal on every node once the cluster has converged."""
        states: dict[int, tuple[int, int, int]] = {}
        for node in range(1, self.size + 1):
            jsz = self._get(node, "/jsz?acc=ISTMO&streams=true")
            for acc in (jsz or {}).get("account_details") or []:
                for info in acc.get("stream_detail") or []:
                    if info.get("name") == stream:
                        st = info.get("state") or {}
                        states[node] = (
                            int(st.get("messages", 0)),
                            int(st.get("first_seq", 0)),
                            int(st.get("last_seq", 0)),
                        )
        return states

    def stream_leader(self, stream: str) -> int | None:
        """Which node (1-based) leads ``stream`` right now, from ``/jsz``."""
        for node in range(1, self.size + 1):
            jsz = self._get(node, "/jsz?acc=ISTMO&streams=true")
            for acc in (jsz or {}).get("account_details") or []:
                for info in acc.get("stream_detail") or []:
                    leader = (info.get("cluster") or {}).get("leader")
                    if info.get("name") == stream and leader:
                        return int(str(leader).rsplit("-", 1)[1])
        return None

    def stop_restarted(self) -> None:
        for proc in self.restarted.values():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.restarted.clear()


@pytest.fixture
def cluster_nodes(up_cluster: UpProcess, nats_binary: Path) -> Iterator[ClusterNodes]:
    nodes = ClusterNodes(up_cluster, nats_binary)
    try:
        yield nodes
    finally:
        # The stack stops first (its nodes); nodes this test restarted are its own.
        up_cluster.stop(timeout=60)
        nodes.stop_restarted()


# ------------------------------------------------------------ deploy/: a region's TLS cluster
ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
NODES = (1, 2, 3)


def run(*argv: str | Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, check=False, timeout=60, **kw
    )


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Certificates and accounts.conf for the three nodes, made by deploy/nats's tools: the
    CA in ``ca/``, the broker's data directory (demo directory, keystores) in ``istmo/``."""
    home = tmp_path_factory.mktemp("region")
    made = run("sh", DEPLOY / "nats" / "make-test-ca.sh", home / "ca")
    assert made.returncode == 0, made.stderr
    rendered = run(
        sys.executable,
        DEPLOY / "nats" / "render-accounts.py",
        "--data-dir",
        home / "istmo",
        "--out",
        home / "accounts.conf",
        "--demo",
        cwd=ROOT,
    )
    assert rendered.returncode == 0, rendered.stderr
    assert (home / "accounts.conf").stat().st_mode & 0o077 == 0
    return home


def node_config(region: Path, node: int, *, ports: dict[str, int] | None = None) -> Path:
    """deploy/nats/nats-<node>.conf with its files under ``region`` (and, with ``ports``,
    its listeners and routes on loopback)."""
    text = (DEPLOY / "nats" / f"nats-{node}.conf").read_text()
    text = text.replace("/etc/nats/tls/", f"{region / 'ca' / f'nats-{node}'}/")
    text = text.replace("/var/lib/nats/jetstream", str(region / f"js-{node}"))
    if ports is not None:
        text = text.replace('host: "0.0.0.0"', 'host: "127.0.0.1"')
        text = text.replace("port: 4222", f"port: {ports['client'] + node - 1}")
        text = text.replace("port: 6222", f"port: {ports['route'] + node - 1}")
        text = text.replace('"127.0.0.1:8222"', f'"127.0.0.1:{ports["http"] + node - 1}"')
        for peer in NODES:
            text = text.replace(
                f"nats-{peer}.region.example:6222", f"localhost:{ports['route'] + peer - 1}"
            )
    conf_dir = region / f"etc-{node}"
    conf_dir.mkdir(exist_ok=True)
    shutil.copy(region / "accounts.conf", conf_dir / "accounts.conf")
    (conf_dir / "nats.conf").write_text(text)
    return conf_dir / "nats.conf"


def start_node(binary: Path, conf: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(binary), "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT
        )


@dataclass
class DeployCluster:
    """The three deploy/nats configs running as one TLS cluster on loopback ports."""

    region: Path
    ports: dict[str, int]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def ca(self) -> Path:
        return self.region / "ca" / "ca.pem"

    @property
    def urls(self) -> list[str]:
        """Each node's client URL, by the name its certificate holds."""
        return [f"tls://localhost:{self.ports['client'] + node - 1}" for node in NODES]

    def log(self, node: int) -> str:
        return (self.region / f"nats-{node}.log").read_text()

    def start(self, binary: Path) -> None:
        for node in NODES:
            conf = node_config(self.region, node, ports=self.ports)
            self.procs.append(start_node(binary, conf, self.region / f"nats-{node}.log"))

    async def wait_ready(self, timeout: float = 120) -> None:
        """Until the broker's own user gets an answer from JetStream over TLS (a meta
        leader was elected)."""
        tls = ssl.create_default_context(cafile=str(self.ca))
        relay_seed = (self.region / "istmo" / "broker" / "relay.seed").read_text().strip()

        async def quiet(_exc: Exception) -> None:
            """A node not listening yet is expected: no logged traceback for it."""

        async def answers() -> bool:
            try:
                nc = await asyncio.wait_for(
                    nats.connect(
                        self.urls[0],
                        tls=tls,
                        nkeys_seed_str=relay_seed,
                        connect_timeout=2,
                        allow_reconnect=False,
                        error_cb=quiet,
                    ),
                    10,
                )
            except ConnectionRefusedError:
                return False  # not listening yet
            try:
                return await nc.jetstream(timeout=2).account_info() is not None
            except nats.errors.Error:
                return False
            finally:
                await nc.close()

        async def running_and_answering() -> bool:
            for node, proc in zip(NODES, self.procs, strict=True):
                assert proc.poll() is None, (node, self.log(node)[-2000:])
            return await answers()

        await eventually(
            running_and_answering,
            what="JetStream to answer over TLS",
            timeout=timeout,
            interval=0.2,
            context=lambda: self.log(1),
        )

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def deploy_cluster(region: Path, binary: Path) -> Iterator[DeployCluster]:
    """Start the three deploy/nats nodes on free loopback ports; stop them on the way out."""
    cluster = DeployCluster(
        region, {"client": free_port_run(3), "route": free_port_run(3), "http": free_port_run(3)}
    )
    try:
        cluster.start(binary)
        yield cluster
    finally:
        cluster.stop()
