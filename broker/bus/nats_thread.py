"""A service on a thread of its own, with its own event loop and NATS connection.

A broker process's main event loop runs work that holds it for milliseconds at a time,
and sometimes for longer: a relay batch's checks and signatures (CPU), its database commit
(a SQLite writer waits for the lock with the loop held). A service that must answer in
between, such as the agency API, runs here instead: the interpreter switches threads every
few milliseconds, and a thread blocked in the database or in OpenSSL lets the others run.

Left to others: what the service does (``serve``), and its own thread safety: whatever it
shares with the main loop (a registry, a directory) must be safe to use from two threads.
``broker.bus.gate`` runs the gate on one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.client import Client as NATS

from schemas.errors import BusUnavailable

__all__ = ["NatsThread", "Serve"]

log = logging.getLogger("istmo.bus")

_READY_POLL_S = 0.2  # how often start() looks at its caller's stop while it waits

# serve(nc, stop, ready): call ready() once it takes work; return once stop is set.
Serve = Callable[[NATS, asyncio.Event, Callable[[], None]], Awaitable[None]]


class NatsThread:
    """Runs ``serve`` on its own thread, event loop and NATS connection (``connect``).

    Args:
        name: the thread's name (for logs and ``py-spy``).
        connect: opens the thread's NATS connection (called on its loop).
        serve: the service (see ``Serve``).
    """

    def __init__(self, name: str, connect: Callable[[], Awaitable[NATS]], serve: Serve) -> None:
        self.name = name
        self._connect = connect
        self._serve_fn = serve
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._abandoned = False  # stop() came first: give up connecting
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    async def start(self, timeout: float = 30.0, *, stop: asyncio.Event | None = None) -> None:
        """Start, and return once ``serve`` is ready.

        Raises:
            BusUnavailable: it did not connect or get ready within ``timeout`` seconds, or
                ``stop`` was set first (its process is stopping: NATS may be gone, and a
                connection would be retried for the whole ``timeout``).
        """
        self._thread.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._ready.is_set():
            left = deadline - loop.time()
            if left <= 0 or (stop is not None and stop.is_set()):
                break
            await asyncio.to_thread(self._ready.wait, min(left, _READY_POLL_S))
        if self._failed is not None:
            raise BusUnavailable(f"{self.name} could not start: {self._failed!r}") from self._failed
        if not self._ready.is_set():
            if stop is not None and stop.is_set():
                raise BusUnavailable(f"{self.name} was stopped before it was ready")
            raise BusUnavailable(f"{self.name} did not start within {timeout:.0f} s")

    async def stop(self, timeout: float = 10.0) -> None:
        """Tell ``serve`` to stop and wait (up to ``timeout`` seconds) for the thread. Not
        ready yet, it gives up connecting."""
        self._abandoned = True
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # its loop has ended already
                if self._ready.is_set() and self._stop is not None:
                    self._loop.call_soon_threadsafe(self._stop.set)
                elif self._task is not None:
                    self._loop.call_soon_threadsafe(self._task.cancel)
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, timeout)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:
            self._failed = exc
            if self._ready.is_set():  # else start() raises it
                log.exception("%s stopped", self.name)
            self._ready.set()

    async def _run(self) -> None:
        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._abandoned:  # stopped before its loop ran: nothing to cancel yet
            raise BusUnavailable(f"{self.name} was stopped before it was ready")
        nc = await self._connect()
        try:
            await self._serve_fn(nc, self._stop, self._ready.set)
        finally:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await nc.drain()
