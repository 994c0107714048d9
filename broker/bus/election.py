"""Leader election through a NATS KV key with a TTL (one active sequencer per region).

The bucket ``istmo-leaders`` keeps one revision per key (``history=1``) and forgets a key
``ttl_s`` seconds after its last write. A candidate becomes leader by *creating* the key
(which succeeds only while nobody holds it), then renews it every ``renew_s`` seconds with
``update(key, value, last=revision)``, which succeeds only while its own revision is still
the key's last one. A leader that dies stops renewing; the key expires ``ttl_s`` seconds
after its last renewal and a standby's next ``create`` wins.

Fencing on the leader's side: the lease is counted from *before* each renewal request was
sent, on the local monotonic clock, and ends ``margin_s`` before the server can expire the
key. ``Lease.valid()`` turns false at that moment, whether or not the renewal task got to
run (a process paused by SIGSTOP, a stalled event loop), so a leader checks it before
every append and stops at once. The monotonic clock keeps counting while a process is
stopped, so a leader resumed after a pause sees its lease gone before it does anything.
What one batch already began finishes; that is covered by the database: each batch
re-reads the log's tip inside its own write transaction (and takes a PostgreSQL advisory
lock there), so even an old leader's last batch can neither repeat nor skip an entry.

Left to callers: what to do while leading (``broker.audit.sequencer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import (
    APIError,
    BadRequestError,
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)
from nats.js.kv import KeyValue

from schemas.errors import BusUnavailable, ConfigError

__all__ = ["BUCKET", "Election", "ElectionTiming", "Lease", "holder_id"]

log = logging.getLogger("istmo.election")

BUCKET = "istmo-leaders"
_STREAM_CONFIG_MISMATCH = 10058


@dataclass(frozen=True)
class ElectionTiming:
    """Seconds. A dead leader is replaced within about ``ttl_s + poll_s``."""

    ttl_s: float = 6.0  # the key's time to live after its last write
    renew_s: float = 2.0  # how often the leader renews
    poll_s: float = 0.5  # how often a standby tries to take the key
    margin_s: float = 1.0  # the leader stops this long before the key can expire
    request_s: float = 1.5  # timeout of one KV request

    def check(self) -> None:
        if not 0 < self.renew_s + self.request_s < self.ttl_s - self.margin_s:
            raise ConfigError(
                f"election timing: renew ({self.renew_s} s) plus request timeout "
                f"({self.request_s} s) must stay below ttl ({self.ttl_s} s) minus margin "
                f"({self.margin_s} s)"
            )


def holder_id() -> str:
    """Who holds a lease, for operators: host, pid and a random tag."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{os.urandom(3).hex()}"


@dataclass
class Lease:
    """A held key: valid until ``deadline`` on the monotonic clock."""

    revision: int
    deadline: float
    clock: Callable[[], float] = time.monotonic

    def valid(self) -> bool:
        return self.clock() < self.deadline


class Election:
    """Candidacy for one key of the leaders bucket."""

    def __init__(
        self,
        js: JetStreamContext,
        key: str,
        holder: str,
        *,
        replicas: int | None = 1,
        timing: ElectionTiming | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.js = js
        self.key = key
        self.holder = holder
        self.replicas = replicas
        self.timing = timing or ElectionTiming()
        self.timing.check()
        self._clock = clock
        self._kv: KeyValue | None = None
        self.lease: Lease | None = None

    async def open(self) -> None:
        """Create the bucket (or bind to it, updating its TTL and replicas; with
        ``replicas=None`` bind to it as it is, or create it with one replica).

        Raises:
            BusUnavailable: JetStream does not answer.
            ConfigError: JetStream refuses the bucket.
        """
        t = self.timing
        if self.replicas is None:
            with contextlib.suppress(NotFoundError, BucketNotFoundError):
                self._kv = await self.js.key_value(BUCKET)
                return
        config = KeyValueConfig(
            bucket=BUCKET,
            history=1,
            ttl=t.ttl_s,
            storage=StorageType.FILE,
            replicas=self.replicas or 1,
            description="Istmo leader leases (broker.bus.election)",
        )
        try:
            try:
                self._kv = await self.js.create_key_value(config)
            except BadRequestError as exc:
                if exc.err_code != _STREAM_CONFIG_MISMATCH:
                    raise
                info = await self.js.stream_info(f"KV_{BUCKET}")
                stream = info.config
                stream.max_age = t.ttl_s
                stream.num_replicas = self.replicas or 1
                await self.js.update_stream(stream)
                self._kv = await self.js.key_value(BUCKET)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            raise BusUnavailable(f"JetStream did not answer for bucket {BUCKET}") from exc
        except APIError as exc:
            raise ConfigError(f"JetStream refused bucket {BUCKET}: {exc.description}") from exc

    def _bucket(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError("call Election.open() first")
        return self._kv

    async def try_acquire(self) -> Lease | None:
        """Take the key if nobody holds it; None if somebody does (or NATS is away)."""
        sent = self._clock()
        try:
            revision = await asyncio.wait_for(
                self._bucket().create(self.key, self.holder.encode()), self.timing.request_s
            )
        except KeyWrongLastSequenceError:
            return None
        except (TimeoutError, nats.errors.Error, APIError) as exc:
            log.debug("election: create failed (%s)", type(exc).__name__)
            return None
        self.lease = Lease(revision, sent + self.timing.ttl_s - self.timing.margin_s, self._clock)
        return self.lease

    async def renew(self) -> bool:
        """Extend the lease; False (and the lease is dropped) if it was lost."""
        lease = self.lease
        if lease is None or not lease.valid():
            self.lease = None
            return False
        sent = self._clock()
        try:
            revision = await asyncio.wait_for(
                self._bucket().update(self.key, self.holder.encode(), last=lease.revision),
                self.timing.request_s,
            )
        except KeyWrongLastSequenceError:
            log.warning("election: %s was taken over; standing down", self.key)
            self.lease = None
            return False
        except (TimeoutError, nats.errors.Error, APIError) as exc:
            # Keep the old deadline: try again while it lasts.
            log.warning("election: renewing %s failed (%s)", self.key, type(exc).__name__)
            return lease.valid()
        lease.revision = revision
        lease.deadline = max(lease.deadline, sent + self.timing.ttl_s - self.timing.margin_s)
        return lease.valid()

    async def acquire(self, stop: asyncio.Event) -> Lease | None:
        """Stand by until this candidate holds the key, or ``stop`` is set (None)."""
        while not stop.is_set():
            lease = await self.try_acquire()
            if lease is not None:
                return lease
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.timing.poll_s)
        return None

    async def keep(self, stop: asyncio.Event, lost: asyncio.Event) -> None:
        """Renew the lease every ``renew_s`` until ``stop``; set ``lost`` and return
        when it cannot be kept."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.timing.renew_s)
            if stop.is_set():
                return
            if not await self.renew():
                lost.set()
                return

    async def leader(self) -> str | None:
        """Who holds the key now (its holder id), None if nobody; never raises."""
        try:
            entry = await asyncio.wait_for(self._bucket().get(self.key), self.timing.request_s)
        except (KeyNotFoundError, NotFoundError):
            return None
        except (TimeoutError, nats.errors.Error, APIError):
            return "(unknown: NATS does not answer)"
        return entry.value.decode(errors="replace") if entry.value else None

    async def release(self) -> None:
        """Give the key up at once (a clean stop), so a standby need not wait the TTL."""
        lease, self.lease = self.lease, None
        if lease is None or not lease.valid():
            return
        with contextlib.suppress(TimeoutError, nats.errors.Error, APIError):
            await asyncio.wait_for(
                self._bucket().delete(self.key, last=lease.revision), self.timing.request_s
            )
