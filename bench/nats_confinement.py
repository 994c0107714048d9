"""Confinement in NATS operator mode at scale (ADR 0013): nats-server alone, N agencies.

    .venv/bin/python -m bench.nats_confinement --agencies 100,3500,10000
    .venv/bin/python -m bench.nats_confinement --agencies 10000 --storm --out /tmp/r.json
    .venv/bin/python -m bench.nats_confinement --agencies 10000 --storm --cluster 3

Not part of ``python -m bench`` (it needs many file descriptors and, with ``--storm``, a
few minutes). For each N, a fresh nats-server (the one ``istmo up`` would use) in operator
mode with JetStream, on 127.0.0.1 and ports it picks itself, in a temporary directory
(with ``--cluster 3``: three nodes routed into one cluster, agencies spread over them as a
region's would be, every figure taken on the whole cluster):

The agencies are rows of a SQLite registry, and their accounts are kept in step with it by
``broker.runtime.accounts.AccountSync``, as ``istmo up`` does (without the directory's own
rebuild, which is the relay's and the same in both modes):

* ``first_sync_s``: a stack's first start on that registry: rendering and pushing N agency
  account JWTs over ``$SYS.REQ.CLAIMS.UPDATE``; ``next_sync_s``: a later start, reading
  them back (``CLAIMS.PACK``) and finding nothing to push;
* ``admit_ms``: a directory change admitting one more agency: from the registry's commit
  to its first request answered by the relay through its imports (nats-py, as the SDK
  connects), median of 5;
* ``cut_off_ms``: suspending a connected agency: from the registry's commit to the server
  closing its connection, median of 5;
* ``rss_mib``: nats-server's resident memory after the pushes, and with N agencies
  connected (``--storm``);
* ``restart_s``: a restart with N accounts in the resolver directory, until healthy;
* with ``--storm``: N agencies connect (a minimal client per agency: CONNECT with its JWT
  and nonce signature, PING, answer the server's PINGs), nats-server restarts, and
  ``storm_s`` is the time from the restart until every one of them is admitted again
  (each retries every 0.1-0.5 s, jittered, as nats-py's reconnect does). The agencies are
  one Python process here, not 10,000 machines: at most ``HANDSHAKES`` of them handshake
  at once, or the process itself would answer the server's INFO after its 2 s
  authentication timeout and every attempt would fail.

Prints one JSON object per N and writes them all to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import resource
import secrets
import socket
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import nats
import nkeys
from nats.aio.client import Client as NATS

from broker.bus.claims import ClaimsPusher
from broker.bus.cluster import ClusterPorts, NatsCluster
from broker.bus.natsauth import NatsOperator
from broker.bus.natsconf import ANY_PORT, NatsLayout
from broker.bus.server import NatsServer, find_nats_server
from broker.runtime.accounts import AccountSync
from broker.store.registry import AgencyRow, NatsUserRow, Registry
from schemas.natskeys import new_user_seed, user_public_key
from schemas.subjects import api_subject, inbox_prefix

TRIALS = 5
HANDSHAKES = 200  # agencies handshaking at once (see the module)


def _rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


async def _quiet(_exc: Exception) -> None:
    """nats-py logs a traceback for each error otherwise (a cut-off is expected here)."""


def _agency(i: int) -> str:
    return f"ag-{i:05d}"


class RawAgency:
    """One agency's NATS connection, as little as the protocol allows: CONNECT with its JWT
    and the nonce signed, PING, then answer the server's PINGs; reconnect when dropped."""

    def __init__(self, port: int, seed: str, user_jwt: str, gate: asyncio.Semaphore) -> None:
        self.port = port
        self.gate = gate
        self.kp = nkeys.from_seed(bytearray(seed.encode()))
        self.user_jwt = user_jwt
        self.admitted_at = 0.0  # time.monotonic() of the last admission
        self.refusals = 0

    async def _handshake(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        async with self.gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                info = json.loads((await reader.readline()).split(b" ", 1)[1])
                nonce = info["nonce"].encode()
                sig = base64.urlsafe_b64encode(self.kp.sign(nonce)).rstrip(b"=")
                connect = {
                    "verbose": False,
                    "pedantic": False,
                    "jwt": self.user_jwt,
                    "sig": sig.decode(),
                    "protocol": 1,
                    "lang": "bench",
                    "version": "0",
                }
                writer.write(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
                await writer.drain()
                line = await reader.readline()
            except BaseException:
                writer.close()
                raise
            if not line.startswith(b"PONG"):
                self.refusals += line.startswith(b"-ERR")
                writer.close()
                return None
            self.admitted_at = time.monotonic()
            return reader, writer

    async def _session(self) -> None:
        opened = await self._handshake()
        if opened is None:
            return
        reader, writer = opened
        try:
            while line := await reader.readline():
                if line.startswith(b"PONG"):
                    self.admitted_at = time.monotonic()
                elif line.startswith(b"PING"):
                    writer.write(b"PONG\r\n")
                elif line.startswith(b"-ERR"):
                    self.refusals += 1
                    return
        finally:
            writer.close()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._session()
            except (OSError, ValueError, IndexError, KeyError):
                pass
            await asyncio.sleep(random.uniform(0.1, 0.5))


async def _all_admitted_since(agencies: Sequence[RawAgency], since: float, timeout: float) -> float:
    """Seconds from ``since`` until every agency was admitted after it."""
    deadline = since + timeout
    while True:
        last = [a.admitted_at for a in agencies]
        if min(last) > since:
            return max(last) - since
        if time.monotonic() > deadline:
            missing = sum(1 for t in last if t <= since)
            raise TimeoutError(f"{missing} agencies not admitted after {timeout:g} s")
        await asyncio.sleep(0.1)


def _enrol(registry: Registry, agency: str, seed: str) -> None:
    registry.add_all(
        [
            AgencyRow(id=agency, name=agency, sector="police"),
            NatsUserRow(agency=agency, nkey_public=user_public_key(seed)),
        ]
    )


def _suspend(registry: Registry, agency: str) -> None:
    with registry.session() as s:
        row = s.get(AgencyRow, agency)
        assert row is not None
        row.status = "suspended"
        s.add(row)
        s.commit()


async def _connect(operator: NatsOperator, url: str, agency: str, seed: str, **kw: Any) -> NATS:
    user_jwt = operator.agency_user_jwt(agency, user_public_key(seed), issued_at=int(time.time()))
    return await nats.connect(
        url,
        nkeys_seed_str=seed,
        user_jwt_cb=lambda: user_jwt.encode(),
        inbox_prefix=inbox_prefix(agency),
        allow_reconnect=False,
        error_cb=_quiet,
        **kw,
    )


async def _admit_once(sync: AccountSync, url: str, agency: str) -> float:
    """From the registry's commit of a new agency to its first request answered."""
    seed = new_user_seed()
    t0 = time.perf_counter()
    await asyncio.to_thread(_enrol, sync.registry, agency, seed)
    await sync.apply()
    nc = await _connect(sync.operator, url, agency, seed)
    try:
        await nc.request(api_subject(agency, "status"), b"{}", timeout=5)
        took = time.perf_counter() - t0
    finally:
        await nc.close()
    return took


async def _cut_off_once(sync: AccountSync, url: str, agency: str) -> float:
    """From the registry's commit of a suspension to the server closing the connection."""
    seed = new_user_seed()
    await asyncio.to_thread(_enrol, sync.registry, agency, seed)
    await sync.apply()
    lost = asyncio.Event()

    async def on_lost() -> None:
        lost.set()

    nc = await _connect(sync.operator, url, agency, seed, disconnected_cb=on_lost)
    t0 = time.perf_counter()
    await asyncio.to_thread(_suspend, sync.registry, agency)
    await sync.apply()
    await asyncio.wait_for(lost.wait(), 10)
    took = time.perf_counter() - t0
    await nc.close()
    return took


def _free_run(n: int) -> int:
    """The first of ``n`` consecutive TCP ports on 127.0.0.1 that were free a moment ago."""
    for _ in range(200):
        base = random.randrange(20_000, 30_000)
        socks = []
        try:
            for port in range(base, base + n):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no run of {n} free ports")


class _Hub:
    """The nats-server(s) measured: one, or the nodes of a cluster."""

    def __init__(self, operator: NatsOperator, home: Path, now: int, size: int) -> None:
        trust = operator.trust(home / "resolver", issued_at=now)
        relay_key = user_public_key(new_user_seed())
        binary = find_nats_server()
        self.cluster: NatsCluster | None = None
        if size == 1:
            layout = NatsLayout(
                port=ANY_PORT,
                http_port=ANY_PORT,
                store_dir=home / "jetstream",
                relay_nkey_public=relay_key,
                agencies=(),
                operator=trust,
            )
            self.nodes = [NatsServer(binary, home / "nats.conf", layout, home / "nats.log")]
            return
        ports = ClusterPorts(_free_run(size), _free_run(size), _free_run(size))
        self.cluster = NatsCluster.in_dir(
            binary,
            home,
            home,
            size=size,
            ports=ports,
            relay_nkey_public=relay_key,
            agencies=(),
            password=secrets.token_urlsafe(24),
            operator=trust,
        )
        self.nodes = self.cluster.nodes

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self, timeout: float = 300) -> None:
        if self.cluster is not None:
            self.cluster.start(timeout)
        else:
            self.nodes[0].start(timeout)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def pin_ports(self) -> None:
        """Keep the ports a single node picked, so that a restart binds them again."""
        node = self.nodes[0]
        if self.cluster is None:
            node.layout = replace(node.layout, port=node.port, http_port=node.http_port)

    def rss_mib(self) -> float | None:
        sizes = [_rss_mib(node.pid) for node in self.nodes]
        return round(sum(s for s in sizes if s is not None), 1) if any(sizes) else None


async def measure(n: int, *, storm: bool, home: Path, size: int = 1) -> dict[str, Any]:
    master = secrets.token_bytes(32)
    operator = NatsOperator(master)
    now = int(time.time())
    hub = _Hub(operator, home, now, size)
    t0 = time.perf_counter()
    hub.start()
    figures: dict[str, Any] = {
        "agencies": n,
        "nodes": size,
        "start_s": round(time.perf_counter() - t0, 2),
    }
    relay_seed = new_user_seed()
    relay_jwt = operator.relay_user_jwt(user_public_key(relay_seed), issued_at=now)
    registry = Registry(f"sqlite:///{home / 'istmo.db'}")
    try:
        seeds = [new_user_seed() for _ in range(n)]
        rows: list[Any] = []
        for i, seed in enumerate(seeds):
            rows.append(AgencyRow(id=_agency(i), name=_agency(i), sector="police"))
            rows.append(NatsUserRow(agency=_agency(i), nkey_public=user_public_key(seed)))
        registry.add_all(rows)
        pusher = await ClaimsPusher.connect(hub.urls, operator, nodes=size, timeout=30)
        sync = AccountSync(operator, registry, pusher)
        t0 = time.perf_counter()
        figures["accounts_pushed"] = await sync.start()
        figures["first_sync_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        # As a broker started again would: nothing derived yet.
        again = await AccountSync(NatsOperator(master), registry, pusher).start()
        figures["next_sync_s"] = round(time.perf_counter() - t0, 2)
        figures["next_sync_pushed"] = again
        token = (await pusher.stored())[operator.agency_account(_agency(0))]
        figures["account_jwt_bytes"] = len(token)
        figures["rss_mib_accounts"] = hub.rss_mib()

        relay: NATS = await nats.connect(
            hub.urls, nkeys_seed_str=relay_seed, user_jwt_cb=lambda: relay_jwt.encode()
        )

        async def answer(msg: Any) -> None:
            await msg.respond(b"{}")

        await relay.subscribe("istmo.api.*.status", cb=answer)
        await relay.flush()
        url = hub.urls[-1]  # on a cluster, away from the node the pushes go to
        admits = [await _admit_once(sync, url, f"new-{i}") for i in range(TRIALS)]
        cuts = [await _cut_off_once(sync, url, f"cut-{i}") for i in range(TRIALS)]
        figures["admit_ms"] = round(statistics.median(admits) * 1000, 1)
        figures["admit_max_ms"] = round(max(admits) * 1000, 1)
        figures["cut_off_ms"] = round(statistics.median(cuts) * 1000, 1)
        figures["cut_off_max_ms"] = round(max(cuts) * 1000, 1)
        await relay.close()
        await pusher.close()

        if storm:
            figures.update(await _storm(hub, operator, seeds, now))

        hub.stop()
        t0 = time.perf_counter()
        hub.start()
        figures["restart_s"] = round(time.perf_counter() - t0, 2)
    finally:
        hub.stop()
        registry.close()
    return figures


async def _storm(
    hub: _Hub, operator: NatsOperator, seeds: Sequence[str], now: int
) -> dict[str, Any]:
    gate = asyncio.Semaphore(HANDSHAKES)
    ports = [node.port for node in hub.nodes]
    agencies = [
        RawAgency(
            ports[i % len(ports)],
            seed,
            operator.agency_user_jwt(_agency(i), user_public_key(seed), issued_at=now),
            gate,
        )
        for i, seed in enumerate(seeds)
    ]
    stop = asyncio.Event()
    figures: dict[str, Any] = {}
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(agency.run(stop)) for agency in agencies]
        try:
            t0 = time.monotonic()
            figures["first_connect_s"] = round(await _all_admitted_since(agencies, t0, 900), 2)
            figures["rss_mib_connected"] = hub.rss_mib()
            hub.pin_ports()  # the clients know no others
            # Off the event loop: the agencies keep retrying meanwhile, as they would.
            await asyncio.to_thread(hub.stop)
            t0 = time.monotonic()
            await asyncio.to_thread(hub.start)
            figures["storm_healthy_s"] = round(time.monotonic() - t0, 2)
            figures["storm_s"] = round(await _all_admitted_since(agencies, t0, 900), 2)
            figures["storm_refusals"] = sum(a.refusals for a in agencies)
        finally:
            stop.set()
            for task in tasks:  # connected ones wait on their socket: end them
                task.cancel()
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.nats_confinement")
    parser.add_argument("--agencies", default="100,3500,10000")
    parser.add_argument("--storm", action="store_true", help="also the reconnect storm")
    parser.add_argument("--cluster", type=int, default=1, choices=(1, 3), help="nodes")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    results = []
    for n in (int(x) for x in args.agencies.split(",")):
        with tempfile.TemporaryDirectory(prefix="istmo-nats-") as home:
            figures = asyncio.run(measure(n, storm=args.storm, home=Path(home), size=args.cluster))
        print(json.dumps(figures), flush=True)
        results.append(figures)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    del soft


if __name__ == "__main__":
    main()
