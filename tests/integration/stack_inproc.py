"""The whole broker (nats-server, relay, API) running inside the test's event loop.

nats-server binds ports it picks itself (``ANY_PORT``); the HTTP API (uvicorn) still takes
one that was free a moment before, from this xdist worker's band below the ephemeral range
(``tests.stackproc.free_port``), where no outgoing connection can take it meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from broker.bus.server import ANY_PORT
from broker.config import Settings
from broker.runtime.stack import Stack
from clients.sdk import IstmoClient
from schemas.errors import BusUnavailable
from schemas.labels import Labels
from tests.stackproc import free_port
from tests.waiting import eventually

RelayTask = tuple[asyncio.Event, "asyncio.Task[None]"]


@contextlib.contextmanager
def prepared_stack(data_dir: Path, **settings_: Any) -> Iterator[Stack]:
    """The stack on ``data_dir`` prepared (registry, directory, keys) but not started, for
    what the relay computes in process; ``settings_`` are more ``Settings`` fields."""
    stack = Stack(Settings(data_dir=data_dir, **settings_), out=lambda _line: None)
    stack.prepare()
    try:
        yield stack
    finally:
        assert stack.registry is not None
        stack.registry.close()


@contextlib.asynccontextmanager
async def running_stack(
    data_dir: Path,
    *,
    with_relay: bool = True,
    database_url: str | None = None,
    **settings_: Any,
) -> AsyncIterator[Stack]:
    """The stack on ``data_dir``; its database is the SQLite file there unless
    ``database_url`` names another (a migrated PostgreSQL database). ``settings_`` are
    more ``Settings`` fields."""
    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        nats_port=ANY_PORT,
        nats_http_port=ANY_PORT,
        api_port=free_port(),
        **settings_,
    )
    stack = Stack(settings, out=lambda _line: None)
    async with serving(
        stack, f"the stack on {data_dir} to start", stop_timeout=30, with_relay=with_relay
    ) as up:
        yield up


@contextlib.asynccontextmanager
async def serving(
    stack: Stack,
    what: str,
    *,
    start_timeout: float = 120,
    stop_timeout: float = 60,
    **up_options: bool,
) -> AsyncIterator[Stack]:
    """Prepare ``stack`` and run it in this event loop (``Stack.up`` with ``up_options``)
    until the block ends; ``what`` is the wait's name in a failure. Raises what went wrong
    if it stops on its own (or is not up within ``start_timeout`` s), and fails if it does
    not stop within ``stop_timeout`` s."""
    data_dir = stack.settings.data_dir
    stack.prepare()
    stop = asyncio.Event()
    task = asyncio.create_task(stack.up(stop, **up_options))
    try:
        await eventually(
            lambda: (data_dir / "stack.json").exists() or task.done(),
            what=what,
            timeout=start_timeout,
        )
        if task.done():
            task.result()  # raises what went wrong
        yield stack
    finally:
        stop.set()
        done, _ = await asyncio.wait({task}, timeout=stop_timeout)
        if not done:
            for t in asyncio.all_tasks():
                t.print_stack(limit=8)
            task.cancel()
            raise AssertionError(f"the stack did not stop within {stop_timeout:g} s")
        task.result()


def nats_url(stack: Stack) -> str:
    """The client URL of the stack's running nats-server."""
    return stack.nats_urls[0]


async def client(stack: Stack, agency: str) -> IstmoClient:
    return await IstmoClient.connect(stack.settings.keys_dir / f"{agency}.json", nats_url(stack))


async def start_relay(stack: Stack, agency: str, labels: Labels) -> RelayTask:
    """One relay worker in this process (``istmo relay``'s code) on a stack started
    ``with_relay=False``; returns once it answers ``agency``'s resolve of ``labels``.

    A test that changes the streams under the relay (an upgrade, an older data directory)
    stops it first (``stop_relay``): a relay still binding that meets no stream stops
    with a ConfigError, and takes the stack down with it."""
    stop = asyncio.Event()
    task = asyncio.create_task(stack.relay_only(stop, nats_url(stack)))
    async with await client(stack, agency) as who:
        await eventually(
            lambda: who.resolve(labels), ignoring=(BusUnavailable,), what="the relay answering"
        )
    return stop, task


async def stop_relay(relay: RelayTask) -> None:
    stop, task = relay
    stop.set()
    await asyncio.wait_for(task, 60)
