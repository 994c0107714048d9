"""Run a JetStream cluster of nats-server processes on this machine (``istmo up --cluster 3``).

The same deployment shape as a region's three NATS hosts, on loopback ports: node ``i``
(1-based) listens for clients on ``client_port + i - 1``, for monitoring on
``http_port + i - 1`` and for routes on ``cluster_port + i - 1``, keeps JetStream in
``home/nats-<i>`` and its log in ``home/nats-<i>.log``, and knows the other nodes' routes.
Every node carries the same accounts (``broker.bus.natsconf``), so an agency may connect to any
of them; a directory change reloads every node. The route password lives in
``broker_dir/cluster.secret`` (mode 0600).

Streams and their replicas are left to ``broker.bus.streams``; this module only runs processes.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from broker.bus.natsconf import (
    AgencyUser,
    ClusterLayout,
    NatsLayout,
    OperatorMode,
    render_accounts,
)
from broker.bus.server import NatsServer, check_port_free
from broker.files import write_private
from schemas.errors import BusUnavailable, ConfigError

__all__ = [
    "ClusterPorts",
    "ExternalNats",
    "NatsCluster",
    "check_cluster_ports",
    "route_password",
]

SECRET_FILE = "cluster.secret"  # noqa: S105 (a file name, not the secret)
_POLL_S = 0.1


@dataclass(frozen=True)
class ClusterPorts:
    """The first port of each kind; node ``i`` adds ``i - 1``."""

    client: int
    http: int
    cluster: int
    options: tuple[str, str, str] = ("--nats-port", "--nats-http-port", "--cluster-port")

    def of(self, node: int) -> tuple[int, int, int]:
        return (self.client + node - 1, self.http + node - 1, self.cluster + node - 1)


def check_cluster_ports(ports: ClusterPorts, size: int, host: str = "127.0.0.1") -> None:
    """Raise ConfigError naming the first taken port of ``size`` nodes, and the option
    that moves it.

    Raises:
        ConfigError: a client, monitoring or route port is taken.
    """
    kinds = ("NATS clients", "NATS monitoring", "NATS cluster routes")
    for i in range(1, size + 1):
        for what, port, option in zip(kinds, ports.of(i), ports.options, strict=True):
            hint = option if i == 1 else f"{option} (node {i} uses it + {i - 1})"
            check_port_free(port, f"{what} of node istmo-{i}", host, option=hint)


def route_password(broker_dir: Path) -> str:
    """The cluster's route password, made on first use (mode 0600)."""
    path = broker_dir / SECRET_FILE
    if path.exists():
        return path.read_text().strip()
    secret = secrets.token_urlsafe(32)
    write_private(path, secret.encode() + b"\n")
    return secret


class NatsCluster:
    """``size`` nats-server processes routed into one JetStream cluster."""

    def __init__(self, nodes: Sequence[NatsServer]) -> None:
        if len(nodes) < 3:
            raise ValueError("a JetStream cluster needs at least 3 nodes for a quorum")
        self.nodes = list(nodes)

    @classmethod
    def in_dir(
        cls,
        binary: Path,
        home: Path,
        config_dir: Path,
        *,
        size: int,
        ports: ClusterPorts,
        relay_nkey_public: str,
        agencies: tuple[AgencyUser, ...],
        password: str,
        host: str = "127.0.0.1",
        max_payload: int = 2 * 1024 * 1024,
        operator: OperatorMode | None = None,
    ) -> NatsCluster:
        """A cluster of ``size`` nodes with JetStream in ``home/nats-<i>``, configs in
        ``config_dir/nats-<i>.conf`` and logs in ``home/nats-<i>.log``. With ``operator``
        (ADR 0013) each node keeps the pushed account JWTs in ``home/nats-<i>/resolver``
        (one a node missed while down is sent to it again: ``broker.runtime.accounts``)."""
        route_ports = [ports.of(i)[2] for i in range(1, size + 1)]
        nodes = []
        for i in range(1, size + 1):
            client, http, route = ports.of(i)
            store_dir = (home / f"nats-{i}").resolve()
            layout = NatsLayout(
                port=client,
                http_port=http,
                store_dir=store_dir,
                relay_nkey_public=relay_nkey_public,
                agencies=agencies,
                host=host,
                server_name=f"istmo-{i}",
                max_payload=max_payload,
                cluster=ClusterLayout(
                    port=route,
                    peers=tuple(p for p in route_ports if p != route),
                    route_password=password,
                ),
                operator=None
                if operator is None
                else replace(operator, resolver_dir=store_dir / "resolver"),
            )
            nodes.append(
                NatsServer(binary, config_dir / f"nats-{i}.conf", layout, home / f"nats-{i}.log")
            )
        return cls(nodes)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def pids(self) -> list[int | None]:
        return [node.pid for node in self.nodes]

    def start(self, timeout: float = 30.0) -> None:
        """Start every node, then wait until each is healthy and the cluster has a
        JetStream meta leader.

        Raises:
            ConfigError: a port is taken, a config is rejected or a node exits.
            BusUnavailable: no meta leader within ``timeout``.
        """
        try:
            for node in self.nodes:
                node.spawn()
            deadline = time.monotonic() + timeout
            for node in self.nodes:
                node.wait_ready(max(1.0, deadline - time.monotonic()))
            self.wait_meta_leader(max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise

    def meta_leader(self) -> str | None:
        """The server name of the JetStream meta leader once it sees every other node
        current (before that, placing a replicated stream fails with "no suitable peers");
        None while there is no such leader."""
        for node in self.nodes:
            if node.pid is None:
                continue
            meta = (node.monitor("/jsz") or {}).get("meta_cluster") or {}
            if meta.get("leader") != node.layout.server_name:
                continue
            peers = [r for r in meta.get("replicas") or [] if r.get("current")]
            if len(peers) >= len(self.nodes) - 1:
                return node.layout.server_name
        return None

    def wait_meta_leader(self, timeout: float = 30.0) -> str:
        """Wait for a JetStream meta leader that sees every node; returns its name.

        Raises:
            BusUnavailable: none within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while (leader := self.meta_leader()) is None:
            if time.monotonic() > deadline:
                raise BusUnavailable(
                    f"the NATS cluster elected no JetStream meta leader in {timeout:g} s; "
                    f"see {', '.join(str(n.log_path) for n in self.nodes)}"
                )
            time.sleep(_POLL_S)
        return leader

    def stream_leader(self, stream: str, account: str = "ISTMO") -> str | None:
        """The server name leading ``stream`` (from ``/jsz``), None if unknown right now."""
        for node in self.nodes:
            if node.pid is None:
                continue
            jsz = node.monitor(f"/jsz?acc={account}&streams=true")
            if jsz is None:
                continue
            for acc in jsz.get("account_details") or []:
                for info in acc.get("stream_detail") or []:
                    if info.get("name") == stream:
                        leader = (info.get("cluster") or {}).get("leader")
                        if isinstance(leader, str) and leader:
                            return leader
        return None

    def node_named(self, server_name: str) -> NatsServer:
        for node in self.nodes:
            if node.layout.server_name == server_name:
                return node
        raise ValueError(f"no node named {server_name!r}")

    def reload_agencies(self, agencies: tuple[AgencyUser, ...], timeout: float = 30.0) -> None:
        """Reload every running node with ``agencies``; all are tried before an error is
        raised, so one node down does not keep the others on the old directory.

        Raises:
            ConfigError: a node refused or did not apply the change (the first such error).
        """
        failures: list[ConfigError | BusUnavailable] = []
        for node in self.nodes:
            if node.pid is None:
                # A stopped node takes the new file when it starts again.
                node.layout = replace(node.layout, agencies=agencies)
                with contextlib.suppress(ConfigError):
                    node.write_config()
                continue
            try:
                node.reload(replace(node.layout, agencies=agencies), timeout)
            except (ConfigError, BusUnavailable) as exc:
                failures.append(exc)
        if failures:
            raise ConfigError(f"{len(failures)} NATS node(s) not reloaded: {failures[0]}")

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after a while). Safe to call twice."""
        for node in self.nodes:
            node.stop()


class ExternalNats:
    """A region's NATS cluster, run by its operators (``deploy/nats``): nothing to start or
    stop here. A directory change cannot signal servers on other hosts, so it writes the
    accounts block every node includes (``accounts_path``, mode 0600); the operators'
    tooling installs it on each node and reloads it (``deploy/README.md``)."""

    def __init__(self, urls: Sequence[str], accounts_path: Path, relay_nkey_public: str) -> None:
        if not urls:
            raise ConfigError("no NATS URL to join")
        self.urls = list(urls)
        self.accounts_path = accounts_path
        self.relay_nkey_public = relay_nkey_public
        self.nodes: list[NatsServer] = []

    @property
    def url(self) -> str:
        return self.urls[0]

    @property
    def pids(self) -> list[int | None]:
        return []

    def start(self) -> None:
        """Nothing to start: the servers are the operators'."""

    def stop(self) -> None:
        """Nothing to stop."""

    def reload_agencies(self, agencies: tuple[AgencyUser, ...], timeout: float = 30.0) -> None:
        """Write the accounts block for ``agencies`` to ``accounts_path``."""
        del timeout  # the reload is the operators'
        layout = NatsLayout(
            port=1,  # unused: only the accounts are rendered
            http_port=2,
            store_dir=Path("/"),
            relay_nkey_public=self.relay_nkey_public,
            agencies=agencies,
        )
        write_private(self.accounts_path, render_accounts(layout).encode())
