"""The sequencer: integrates the registry's audit outbox into the Merkle log, in batches.

Loop: take up to ``batch_entries`` outbox rows after the last integrated ``seq``, append
them to the log with the nodes they complete and a tree head signed with the log key, all in
one transaction (``AuditLog.integrate``); repeat, or wait a little when the outbox is empty.

One active sequencer per region, chosen in one of two ways (decided here, issue 7):

* **Elected through NATS KV** whenever a NATS is at hand: always in ``istmo up`` (one node or
  a cluster), and in ``istmo sequencer`` when a stack runs for the data directory or
  ``--nats-url`` is given. Candidates on any machine compete for the key ``sequencer`` of
  the bucket ``istmo-leaders`` (``broker.bus.election``: create, renew every 2 s, TTL 6 s); the
  others stand by and one takes over within about 7 s of the leader's death. The leader
  checks its lease before every batch and stops the moment it lapses (fencing), so a
  leader paused past the TTL appends nothing when it resumes. One mechanism for one
  machine and for many, so the embedded stack runs, and its tests exercise, exactly what
  a region runs.
* **A file lock** (``DATA_DIR/broker/sequencer.lock``, exclusive) only for ``istmo
  sequencer`` with no NATS at all: catching up the log of a stopped stack on its machine.
  Elected sequencers hold the same file *shared*, so the two ways exclude each other on
  one data directory, while elected candidates never block one another (a paused leader
  must not keep its successor out).

Neither is what keeps the log sound: the write transaction itself re-reads the log's tip
under the database's write lock (SQLite's, or the PostgreSQL advisory lock the writer
takes), so even two sequencers could not integrate a row twice or leave a gap.

A SIGKILL at any point loses nothing: a batch either committed whole (entries, nodes, head)
or not at all, and the next run starts after the last committed ``seq``.

The log key (Ed25519) lives in ``DATA_DIR/broker/log.key`` (mode 0600), apart from the
directory key; its public half is in ``log.pub`` for auditors to pin.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from nats.aio.client import Client as NATS

from broker.audit.log import AuditLog, LogCorrupt
from broker.audit.witnessing import CheckpointPublisher, load_trust
from broker.bus.claims import broker_user_jwt
from broker.bus.connect import connect_as_broker
from broker.bus.election import Election, ElectionTiming, holder_id
from broker.clock import SYSTEM_CLOCK, Clock
from broker.config import Settings
from broker.files import signing_key_file, write_file
from schemas.canonical import b64d, b64e
from schemas.errors import AuditStoreError, BusUnavailable, ConfigError
from schemas.keys import SigningKey, VerifyKey

__all__ = [
    "DEFAULT_ORIGIN",
    "LOCK_FILE",
    "LOG_KEY_FILE",
    "LOG_PUB_FILE",
    "Sequencer",
    "SequencerBusy",
    "SequencerLimits",
    "connect_broker",
    "ensure_log_key",
    "log_verify_key",
    "open_sequencer",
    "require_database",
    "run_elected",
    "run_in_stack",
]

log = logging.getLogger("istmo.sequencer")

DEFAULT_ORIGIN = "istmo.local/audit"  # the log's name in its tree heads (Settings: issue 7)
LOG_KEY_FILE = "log.key"
LOG_PUB_FILE = "log.pub"
LOCK_FILE = "sequencer.lock"
ELECTION_KEY = "sequencer"


@dataclass(frozen=True)
class SequencerLimits:
    """How the sequencer paces itself (to move into ``Settings``)."""

    batch_entries: int = 1000  # outbox rows per transaction and tree head
    idle_poll_s: float = 0.2  # wait when the outbox is empty
    retry_s: float = 1.0  # wait after the database refused a batch
    status_every_s: float = 10.0  # how often ``run`` reports progress


class SequencerBusy(ConfigError):
    """Another sequencer holds this data directory's lock."""

    default_code = "sequencer_busy"


def require_database(settings: Settings) -> None:
    """Refuse a data directory without a registry, instead of creating an empty one.

    Raises:
        ConfigError: no ``istmo.db`` in the data directory (and no database URL).
    """
    if settings.database_url is None and not (settings.data_dir / "istmo.db").is_file():
        raise ConfigError(
            f"no Istmo database in {settings.data_dir}",
            hint=f"run `istmo up --data-dir {settings.data_dir}` first",
        )


def _log_key(broker_dir: Path) -> SigningKey:
    """The log key, made on first use. Call only while holding the sequencer lock."""
    key = signing_key_file(broker_dir / LOG_KEY_FILE, "log key")
    pub = broker_dir / LOG_PUB_FILE
    line = b64e(key.verify_key.public) + "\n"
    if not pub.exists() or pub.read_text() != line:
        write_file(pub, line.encode(), 0o644)
    return key


def ensure_log_key(broker_dir: Path) -> VerifyKey:
    """The log's public key, making the key pair first if no sequencer has run yet (for
    witnesses started with the stack, which must pin it before the first head)."""
    return _log_key(broker_dir).verify_key


def log_verify_key(broker_dir: Path) -> VerifyKey | None:
    """The log's public key from ``log.pub`` (or ``log.key``), None before the first run.

    Raises:
        ConfigError: the file is there but unreadable or malformed.
    """
    pub, private = broker_dir / LOG_PUB_FILE, broker_dir / LOG_KEY_FILE
    try:
        if pub.exists():
            return VerifyKey(b64d(pub.read_text().strip(), field="log.pub", max_bytes=32))
        if private.exists():
            raw = b64d(private.read_text().strip(), field="log key", max_bytes=32)
            return SigningKey(raw).verify_key
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the log key in {broker_dir}") from exc
    return None


def _try_lock(path: Path, *, shared: bool = False) -> IO[str] | None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    f = path.open("a")
    try:
        fcntl.flock(f, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    return f


class Sequencer:
    """Integrates the outbox into the log; the caller holds the lock (``open_sequencer``)."""

    def __init__(
        self,
        audit_log: AuditLog,
        key: SigningKey,
        *,
        origin: str = DEFAULT_ORIGIN,
        limits: SequencerLimits | None = None,
        clock: Clock = SYSTEM_CLOCK,
        out: Callable[[str], None] = print,
        lock: IO[str] | None = None,
        publisher: CheckpointPublisher | None = None,
    ) -> None:
        self.log = audit_log
        # Sends each signed head to the witnesses; stores a checkpoint with a quorum.
        self.publisher = publisher
        self.key = key
        self.origin = origin
        self.limits = limits or SequencerLimits()
        self._clock = clock  # the time each signed tree head states
        self._out = out
        self._lock = lock
        self.size = 0  # the log's size after this process's last batch
        # The election's lease, checked again just before each batch's transaction.
        self.may_append: Callable[[], bool] = lambda: True

    def close(self) -> None:
        """Close the log and release the lock."""
        self.log.close()
        if self.publisher is not None:
            self.publisher.close()
        if self._lock is not None:
            self._lock.close()  # closing the file releases the flock
            self._lock = None

    def step(self) -> int:
        """Integrate one batch.

        Returns:
            How many entries were appended (0: the outbox is empty).

        Raises:
            LogCorrupt: the stored tree is not the one the log key last signed.
            AuditStoreError: the database refused; nothing was integrated.
        """
        if not self.may_append():
            return 0
        done = self.log.integrate(
            self.key,
            self.origin,
            now_ms=self._clock.now_ms(),
            max_entries=self.limits.batch_entries,
        )
        if done is None:
            return 0
        self.size = done.head.head.tree_size
        if self.publisher is not None:
            # After the commit: a witness that is slow or down delays this loop by its
            # timeout at most, and never the entries, which are already durable.
            self.publisher.publish(done.head.head)
        return done.count

    def drain(self) -> int:
        """Integrate until the outbox is empty; returns how many entries were appended."""
        total = 0
        while n := self.step():
            total += n
        return total

    async def run(
        self,
        stop: asyncio.Event,
        *,
        hint: str = "; Ctrl-C stops",
        may_append: Callable[[], bool] | None = None,
    ) -> None:
        """Integrate until ``stop`` is set (a batch in progress finishes first), or until
        ``may_append`` (checked before every batch: the election's lease) says no.

        Raises:
            LogCorrupt: as ``step``; the database refusing is retried.
        """
        lim = self.limits
        if may_append is not None:
            self.may_append = may_append
        self.size = await asyncio.to_thread(self.log.size)
        waiting = await asyncio.to_thread(self.log.pending)
        self._out(
            f"sequencer: log size {self.size}, {waiting} events waiting, "
            f"key {self.key.verify_key.kid}{hint}"
        )
        reported, since = time.monotonic(), 0
        while not stop.is_set():
            if may_append is not None and not may_append():
                self._out(f"sequencer: lease lapsed at log size {self.size}; standing down")
                return
            try:
                n = await asyncio.to_thread(self.step)
            except LogCorrupt:
                raise
            except AuditStoreError as exc:
                log.warning("sequencer: %s; retrying in %.1f s", exc, lim.retry_s)
                await _wait(stop, lim.retry_s)
                continue
            since += n
            if since and time.monotonic() - reported >= lim.status_every_s:
                self._out(f"sequencer: log size {self.size} (+{since})")
                reported, since = time.monotonic(), 0
            if n < lim.batch_entries:
                await _wait(stop, lim.idle_poll_s)
        self._out(f"sequencer: stopped at log size {self.size}")


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _publisher(
    settings: Settings, key: SigningKey, audit_log: AuditLog, out: Callable[[str], None]
) -> CheckpointPublisher | None:
    path = settings.witnesses_path
    if settings.witnesses_file is None and not path.exists():
        return None  # no witnesses configured: heads are signed, checkpoints not published
    trust = load_trust(path)
    out(
        f"sequencer: checkpoints need {trust.quorum} of {len(trust.witnesses)} witness "
        f"cosignatures ({', '.join(w.key.name for w in trust.witnesses)})"
    )
    return CheckpointPublisher(
        trust, key, DEFAULT_ORIGIN, settings.broker_dir, audit_log.consistency_proof, out=out
    )


def _open_locked(settings: Settings, lock: IO[str] | None, **kwargs: object) -> Sequencer:
    try:
        key = _log_key(settings.broker_dir)
        audit_log = AuditLog(settings.db_url)
        out = kwargs.get("out", print)
        publisher = _publisher(settings, key, audit_log, out)  # type: ignore[arg-type]  # a Callable when given
        return Sequencer(audit_log, key, lock=lock, publisher=publisher, **kwargs)  # type: ignore[arg-type]  # keyword options passed through
    except BaseException:
        if lock is not None:
            lock.close()
        raise


def open_sequencer(settings: Settings, **kwargs: object) -> Sequencer:
    """Take the sequencer lock of ``settings.data_dir`` and open the log and its key.

    Keyword arguments go to ``Sequencer`` (``limits``, ``out``, ``origin``).

    Raises:
        ConfigError: no database in the data directory.
        SequencerBusy: another sequencer holds the lock.
    """
    require_database(settings)
    path = settings.broker_dir / LOCK_FILE
    lock = _try_lock(path)
    if lock is None:
        raise SequencerBusy(f"another sequencer is running on {settings.data_dir} ({path})")
    return _open_locked(settings, lock, **kwargs)


async def _wait_for_lock(
    path: Path, stop: asyncio.Event, out: Callable[[str], None], *, shared: bool, standby: bool
) -> IO[str] | None:
    lock = _try_lock(path, shared=shared)
    if lock is None and not standby:
        raise SequencerBusy(f"another sequencer holds {path}; add --standby to wait for it")
    if lock is None:
        who = "a sequencer without NATS" if shared else "another sequencer"
        out(f"sequencer: {who} holds {path}; standing by")
        while lock is None and not stop.is_set():
            await _wait(stop, 1.0)
            lock = _try_lock(path, shared=shared)
    return lock


async def run_in_stack(
    settings: Settings,
    stop: asyncio.Event,
    out: Callable[[str], None] = print,
    *,
    nc: NATS | None = None,
    replicas: int | None = 1,
    timing: ElectionTiming | None = None,
    limits: SequencerLimits | None = None,
    standby: bool = True,
) -> None:
    """The sequencer task of ``istmo up`` (and ``istmo sequencer``): stand by until this
    process leads, then integrate until ``stop`` is set; stand by again if leadership
    lapses. Elected through NATS KV when ``nc`` is given, else by the file lock. With
    ``standby=False`` it raises ``SequencerBusy`` instead of waiting behind a leader.

    If the stored tree stops matching the last signed head, sequencing stops with one loud
    line and the broker goes on serving: events wait, durable, in the outbox, and
    ``istmo audit verify`` names what was altered.
    """
    if nc is not None:
        await run_elected(
            settings,
            nc,
            stop,
            out,
            replicas=replicas,
            timing=timing,
            limits=limits,
            standby=standby,
        )
        return
    lock = await _wait_for_lock(
        settings.broker_dir / LOCK_FILE, stop, out, shared=False, standby=standby
    )
    if lock is None:
        return
    # Off the event loop: the API and the relay share it.
    seq = await asyncio.to_thread(_open_locked, settings, lock, out=out, limits=limits)
    try:
        await seq.run(stop, hint="")
    except LogCorrupt as exc:
        log.error("sequencer stopped: %s", exc)
        out(f"sequencer: STOPPED: {exc}; run `istmo audit verify`")
    finally:
        seq.close()


async def run_elected(
    settings: Settings,
    nc: NATS,
    stop: asyncio.Event,
    out: Callable[[str], None] = print,
    *,
    replicas: int | None = 1,
    timing: ElectionTiming | None = None,
    limits: SequencerLimits | None = None,
    standby: bool = True,
) -> None:
    """Compete for the sequencer key; lead while the lease holds, stand by otherwise.

    Raises:
        SequencerBusy: ``standby`` is False and another sequencer leads.
        BusUnavailable: JetStream does not answer when the bucket is opened.
        ConfigError: JetStream refuses the bucket.
    """
    shared = await _wait_for_lock(
        settings.broker_dir / LOCK_FILE, stop, out, shared=True, standby=standby
    )
    if shared is None:
        return
    try:
        election = Election(
            nc.jetstream(timeout=5), ELECTION_KEY, holder_id(), replicas=replicas, timing=timing
        )
        while True:  # NATS may be restarting: keep trying, as a standby would
            try:
                await election.open()
                break
            except BusUnavailable as exc:
                out(f"sequencer: {exc}; retrying")
                await _wait(stop, 2.0)
                if stop.is_set():
                    return
        leader = await election.leader()
        if leader is not None and not standby:
            raise SequencerBusy(
                f"another sequencer leads ({leader}); add --standby to wait and take over"
            )
        while not stop.is_set():
            leader = await election.leader()
            if leader is not None:
                out(f"sequencer: standing by; {leader} leads")
            lease = await election.acquire(stop)
            if lease is None:
                return
            out(f"sequencer: leading (lease revision {lease.revision}, holder {election.holder})")
            await _lead(settings, election, stop, out, limits)
    finally:
        shared.close()


async def _lead(
    settings: Settings,
    election: Election,
    stop: asyncio.Event,
    out: Callable[[str], None],
    limits: SequencerLimits | None,
) -> None:
    lost = asyncio.Event()
    done = asyncio.Event()
    seq = await asyncio.to_thread(_open_locked, settings, None, out=out, limits=limits)

    def may_append() -> bool:
        return not lost.is_set() and election.lease is not None and election.lease.valid()

    async def sequence() -> None:
        try:
            await seq.run(stop, hint="", may_append=may_append)
        except LogCorrupt as exc:
            log.error("sequencer stopped: %s", exc)
            out(f"sequencer: STOPPED: {exc}; run `istmo audit verify`")
            await stop.wait()  # keep the lease: no other sequencer should sign over it
        finally:
            done.set()

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(sequence())
            # Renews until the sequencer stops (Ctrl-C, lapse or error) or renewal fails.
            tg.create_task(election.keep(done, lost))
    finally:
        await asyncio.to_thread(seq.close)
        if stop.is_set():
            await election.release()


async def connect_broker(urls: Sequence[str], broker_dir: Path) -> NATS:
    """Connect as the broker's own NATS user (its seed in ``broker_dir/relay.seed``).

    Raises:
        ConfigError: the seed file is missing.
        BusUnavailable: NATS does not answer.
    """
    try:
        seed = (broker_dir / "relay.seed").read_text().strip()
    except OSError as exc:
        raise ConfigError(f"no broker NATS key in {broker_dir} (relay.seed)") from exc
    return await connect_as_broker(
        urls, seed=seed, name="istmo-sequencer", user_jwt=broker_user_jwt(broker_dir, seed)
    )
