"""Confinement in NATS operator mode at scale (ADR 0013): nats-server alone, N agencies.

    .venv/bin/python -m bench.nats_confinement --agencies 100,3500,10000
    .venv/bin/python -m bench.nats_confinement --agencies 10000 --storm --out /tmp/r.json

Not part of ``python -m bench`` (it needs many file descriptors and, with ``--storm``, a
few minutes). For each N, a fresh nats-server (the one ``istmo up`` would use) in operator
mode with JetStream, on 127.0.0.1 and ports it picks itself, in a temporary directory:

* ``push_s``: rendering and pushing N agency account JWTs over ``$SYS.REQ.CLAIMS.UPDATE``;
* ``admit_ms``: a directory change admitting one more agency: from rendering its account
  JWT to its first request answered by the relay through its imports (nats-py, as the SDK
  connects), median of 5;
* ``cut_off_ms``: suspending a connected agency: from rendering its account JWT to the
  server closing its connection, median of 5;
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
from broker.bus.natsauth import AgencyAccount, NatsOperator
from broker.bus.natsconf import ANY_PORT, NatsLayout
from broker.bus.server import NatsServer, find_nats_server
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


async def _admit_once(operator: NatsOperator, pusher: ClaimsPusher, url: str, agency: str) -> float:
    seed = new_user_seed()
    key = user_public_key(seed)
    t0 = time.perf_counter()
    token = operator.agency_account_jwt(
        AgencyAccount(agency, key, True), issued_at=int(time.time())
    )
    await pusher.push([token])
    user_jwt = operator.agency_user_jwt(agency, key, issued_at=int(time.time()))
    nc = await nats.connect(
        url,
        nkeys_seed_str=seed,
        user_jwt_cb=lambda: user_jwt.encode(),
        inbox_prefix=inbox_prefix(agency),
        allow_reconnect=False,
        error_cb=_quiet,
    )
    try:
        await nc.request(api_subject(agency, "status"), b"{}", timeout=5)
        took = time.perf_counter() - t0
    finally:
        await nc.close()
    return took


async def _cut_off_once(
    operator: NatsOperator, pusher: ClaimsPusher, url: str, agency: str
) -> float:
    seed = new_user_seed()
    key = user_public_key(seed)
    await pusher.push(
        [operator.agency_account_jwt(AgencyAccount(agency, key, True), issued_at=int(time.time()))]
    )
    user_jwt = operator.agency_user_jwt(agency, key, issued_at=int(time.time()))
    lost = asyncio.Event()

    async def on_lost() -> None:
        lost.set()

    nc = await nats.connect(
        url,
        nkeys_seed_str=seed,
        user_jwt_cb=lambda: user_jwt.encode(),
        inbox_prefix=inbox_prefix(agency),
        allow_reconnect=False,
        disconnected_cb=on_lost,
        error_cb=_quiet,
    )
    t0 = time.perf_counter()
    # A later iat than the JWT admitting it, as the stack issues them.
    token = operator.agency_account_jwt(
        AgencyAccount(agency, key, False), issued_at=int(time.time()) + 1
    )
    await pusher.push([token])
    await asyncio.wait_for(lost.wait(), 10)
    took = time.perf_counter() - t0
    await nc.close()
    return took


async def measure(n: int, *, storm: bool, home: Path) -> dict[str, Any]:
    operator = NatsOperator(secrets.token_bytes(32))
    now = int(time.time())
    layout = NatsLayout(
        port=ANY_PORT,
        http_port=ANY_PORT,
        store_dir=home / "jetstream",
        relay_nkey_public=user_public_key(new_user_seed()),
        agencies=(),
        operator=operator.trust(home / "resolver", issued_at=now),
    )
    server = NatsServer(find_nats_server(), home / "nats.conf", layout, home / "nats.log")
    t0 = time.perf_counter()
    server.start(timeout=120)
    figures: dict[str, Any] = {"agencies": n, "start_s": round(time.perf_counter() - t0, 2)}
    relay_seed = new_user_seed()
    relay_jwt = operator.relay_user_jwt(user_public_key(relay_seed), issued_at=now)
    try:
        seeds = [new_user_seed() for _ in range(n)]
        t0 = time.perf_counter()
        tokens = [
            operator.agency_account_jwt(
                AgencyAccount(_agency(i), user_public_key(seed), True), issued_at=now
            )
            for i, seed in enumerate(seeds)
        ]
        figures["render_s"] = round(time.perf_counter() - t0, 2)
        figures["account_jwt_bytes"] = len(tokens[0])
        pusher = await ClaimsPusher.connect(server.url, operator, timeout=30)
        t0 = time.perf_counter()
        await pusher.push(tokens)
        figures["push_s"] = round(time.perf_counter() - t0, 2)
        figures["rss_mib_accounts"] = _rss_mib(server.pid)

        relay: NATS = await nats.connect(
            server.url, nkeys_seed_str=relay_seed, user_jwt_cb=lambda: relay_jwt.encode()
        )

        async def answer(msg: Any) -> None:
            await msg.respond(b"{}")

        await relay.subscribe("istmo.api.*.status", cb=answer)
        await relay.flush()
        admits = [
            await _admit_once(operator, pusher, server.url, f"new-{i}") for i in range(TRIALS)
        ]
        cuts = [
            await _cut_off_once(operator, pusher, server.url, f"cut-{i}") for i in range(TRIALS)
        ]
        figures["admit_ms"] = round(statistics.median(admits) * 1000, 1)
        figures["admit_max_ms"] = round(max(admits) * 1000, 1)
        figures["cut_off_ms"] = round(statistics.median(cuts) * 1000, 1)
        figures["cut_off_max_ms"] = round(max(cuts) * 1000, 1)
        await relay.close()
        await pusher.close()

        if storm:
            figures.update(await _storm(server, operator, seeds, now))

        server.stop()
        t0 = time.perf_counter()
        server.start(timeout=300)
        figures["restart_s"] = round(time.perf_counter() - t0, 2)
    finally:
        server.stop()
    return figures


async def _storm(
    server: NatsServer, operator: NatsOperator, seeds: Sequence[str], now: int
) -> dict[str, Any]:
    gate = asyncio.Semaphore(HANDSHAKES)
    agencies = [
        RawAgency(
            server.port,
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
            figures["first_connect_s"] = round(await _all_admitted_since(agencies, t0, 600), 2)
            figures["rss_mib_connected"] = _rss_mib(server.pid)
            # The same ports after the restart: the clients know no others.
            server.layout = replace(server.layout, port=server.port, http_port=server.http_port)
            # Off the event loop: the agencies keep retrying meanwhile, as they would.
            await asyncio.to_thread(server.stop)
            t0 = time.monotonic()
            await asyncio.to_thread(server.start, 300)
            figures["storm_healthy_s"] = round(time.monotonic() - t0, 2)
            figures["storm_s"] = round(await _all_admitted_since(agencies, t0, 600), 2)
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
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    results = []
    for n in (int(x) for x in args.agencies.split(",")):
        with tempfile.TemporaryDirectory(prefix="istmo-nats-") as home:
            figures = asyncio.run(measure(n, storm=args.storm, home=Path(home)))
        print(json.dumps(figures), flush=True)
        results.append(figures)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    del soft


if __name__ == "__main__":
    main()
