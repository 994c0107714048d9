"""The fault harness of TEST-CATALOGUE.md section 2.0, as a library for every fault test.

Modelled on Jepsen's queue checker: publishers send bulletins whose titles are unique,
monotonic harness ids (``p-0``, ``p-1``, ...) through the real SDK and record what they
*attempted*, what NATS *acked* and what *failed/unknown* (each retried with the same
envelope, hence the same ``Nats-Msg-Id``); recipients record every *delivery* the SDK
saw on the wire (bulletin id, delivery count) and every *app-visible* hand-off after the
SDK's durable dedupe; ``check`` computes, per recipient::

    lost        = acked - app_visible     (split into prefix / middle / postfix)
    unexpected  = app_visible - attempted
    recovered   = app_visible & (attempted - acked)
    dup_visible = |app_visible events| - |unique app_visible|
    dup_wire    = |deliveries| - |unique deliveries|          (informational)

and ``audit_ok``: ``istmo audit verify`` passes on the data directory, every acked
bulletin has exactly one ``bulletin.accepted`` event (and nothing unattempted has one),
and each recipient's ``bulletin.received`` events (its signed receipts) name exactly the
bulletins its application saw.

Everything is bounded in count and time. It runs against the single-node stack
(``tests.stackproc.UpProcess``: ``istmo up`` as a subprocess, optionally ``--no-relay``
plus ``RelayProcess`` workers that a test may SIGKILL) and takes a list of NATS URLs, so
the same code drives the 3-node fixture: ``Target(nats_urls=(...), data_dir=...)``.

A recipient can also run as its own process (``python -m tests.faults.harness receive
...``), so a test can SIGKILL it between receive and ack (F-18); it logs ``start`` when
the SDK hands a bulletin over and ``done`` when the handler returns, each line fsynced.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nats.errors
from nats.aio.msg import Msg
from sqlalchemy import create_engine, text

from clients.sdk import Handler, IstmoClient, ReceivedBulletin
from schemas.envelope import Content, Envelope
from schemas.errors import BusUnavailable, IstmoError
from schemas.ids import AgencyId
from schemas.keys import EncryptionPublicKey
from schemas.labels import Classification, Labels, Tlp
from schemas.sealing import parse_envelope, seal
from tests.stackproc import pause
from tests.waiting import eventually, eventually_sync
from tests.warm import run_istmo

__all__ = [
    "BZ_LABELS",
    "BZ_RECIPIENTS",
    "Publisher",
    "Recipient",
    "RecipientProcess",
    "RelayProcess",
    "Report",
    "Target",
    "audit_rows",
    "check",
    "connect",
    "istmo",
    "operator_connect",
    "wait_until",
]

ISTMO = str(Path(sys.executable).parent / "istmo")
PYTHON = sys.executable

# A bulletin gt-police may publish that exactly Belize's three ministries may receive.
BZ_LABELS = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("BZ",),
)
BZ_RECIPIENTS = ("bz-justice", "bz-military", "bz-police")

MAX_BULLETINS = 20_000  # per publisher: the harness never runs unbounded
MAX_RUN_S = 300.0


# --------------------------------------------------------------------------- target
@dataclass(frozen=True)
class Target:
    """The stack under test.

    Attributes:
        nats_urls: every NATS URL a client may use (one node, or all three of a cluster).
        data_dir: the broker's data directory (keystores in ``data_dir/keys``, database,
            log key for ``istmo audit verify``).
        db_url: the database (default: the SQLite file in ``data_dir``).
        env: extra environment for ``istmo`` subprocesses (e.g. ``ISTMO_DATABASE_URL``).
    """

    nats_urls: tuple[str, ...]
    data_dir: Path
    db_url: str | None = None
    env: tuple[tuple[str, str], ...] = ()

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def database(self) -> str:
        return self.db_url or f"sqlite:///{(self.data_dir / 'istmo.db').resolve()}"

    def subprocess_env(self) -> dict[str, str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **dict(self.env)}
        if self.db_url:
            env["ISTMO_DATABASE_URL"] = self.db_url
        return env

    @classmethod
    def of_up(cls, up: Any, **kw: Any) -> Target:
        """The target of a running ``tests.stackproc.UpProcess``."""
        return cls(nats_urls=(up.nats_url,), data_dir=up.data_dir, **kw)

    @classmethod
    def of_cluster(cls, up: Any) -> Target:
        """The target of a running ``istmo up --cluster 3`` (every node's URL, from the
        stack's ``stack.json``)."""
        urls = json.loads((up.data_dir / "stack.json").read_text())["nats_urls"]
        return cls(nats_urls=tuple(urls), data_dir=up.data_dir)


class RecordingClient(IstmoClient):
    """The real SDK, recording each delivery it sees before its own dedupe decides."""

    deliveries: list[tuple[str, int]]

    async def _handle(self, msg: Msg, handler: Handler) -> bool:
        try:
            bid = parse_envelope(msg.data).header.bulletin_id
        except IstmoError:
            bid = "?"
        try:
            count = msg.metadata.num_delivered
        except (ValueError, AttributeError):  # not a JetStream message
            count = 0
        self.__dict__.setdefault("deliveries", []).append((bid, count))
        return await super()._handle(msg, handler)


async def connect(
    target: Target, agency: str, *, dedupe_path: Path | None = None
) -> RecordingClient:
    """The SDK of ``agency`` (its keystore in the target's keys directory)."""
    client = await RecordingClient.connect(
        target.keys_dir / f"{agency}.json",
        list(target.nats_urls),  # type: ignore[arg-type]  # nats-py takes a list of servers
        dedupe_path=dedupe_path,
    )
    client.deliveries = []
    return client


async def operator_connect(target: Target) -> Any:
    """A NATS connection as the broker's own user (account ISTMO), as an operator's tools
    would connect: for JetStream administration (consumer settings, stream reads)."""
    seed = (target.data_dir / "broker" / "relay.seed").read_text().strip()
    return await nats.connect(
        list(target.nats_urls), nkeys_seed_str=seed, name="fault-test-operator", connect_timeout=5
    )


def istmo(target: Target, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``istmo ARGS --data-dir <target>`` as an operator would."""
    return run_istmo(
        [ISTMO, *args, "--data-dir", str(target.data_dir)],
        timeout=timeout,
        env=target.subprocess_env(),
    )


def audit_rows(target: Target, type_: str) -> list[dict[str, Any]]:
    """Every audit event of ``type_`` (as stored: data is a JSON string)."""
    engine = create_engine(target.database)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT event_id, actor, subject, bulletin_id, reason, data FROM audit_event "
                    "WHERE type = :t ORDER BY seq"
                ),
                {"t": type_},
            )
            return [{**dict(r._mapping), "data": json.loads(r._mapping["data"])} for r in rows]
    finally:
        engine.dispose()


def accepted_count(target: Target) -> int:
    """How many ``bulletin.accepted`` events the audit outbox holds so far."""
    engine = create_engine(target.database)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    text("SELECT count(*) FROM audit_event WHERE type = 'bulletin.accepted'")
                ).scalar_one()
            )
    finally:
        engine.dispose()


async def wait_until(predicate: Any, *, timeout: float, interval: float = 0.2) -> bool:
    """``tests.waiting.eventually`` for the fault runs, which measure rather than fail:
    True once ``predicate()`` (sync or async) holds, False when ``timeout`` passed first."""
    try:
        await eventually(
            predicate, what="the fault run's condition", timeout=timeout, interval=interval
        )
    except AssertionError:
        return False
    return True


# --------------------------------------------------------------------------- publisher
@dataclass
class Publisher:
    """Publishes ``<name>-0, <name>-1, ...`` through the SDK, each retried on failure
    with the same envelope (so the same ``Nats-Msg-Id``)."""

    client: IstmoClient
    name: str = "p"
    labels: Labels = BZ_LABELS
    retries: int = 5
    attempted: dict[str, str] = field(default_factory=dict)  # harness id -> bulletin id
    acked: set[str] = field(default_factory=set)
    unknown: set[str] = field(default_factory=set)  # every attempt failed: maybe stored
    errors: Counter[str] = field(default_factory=Counter)  # error text -> count
    _keys: dict[AgencyId, EncryptionPublicKey] = field(default_factory=dict)
    _next: int = 0
    _unsent: dict[str, Envelope] = field(default_factory=dict)  # unknown: kept for a retry

    async def prepare(self) -> tuple[str, ...]:
        """Resolve the recipients once (retrying while no relay answers yet); returns them."""
        self._keys = await eventually(
            lambda: self.client.resolve(self.labels),
            what="a relay to answer resolve",
            interval=0.2,
            ignoring=(BusUnavailable,),
        )
        return tuple(sorted(self._keys))

    def envelope(self) -> tuple[str, Envelope]:
        hid = f"{self.name}-{self._next}"
        self._next += 1
        if self._next > MAX_BULLETINS:
            raise RuntimeError(f"publisher {self.name} is past {MAX_BULLETINS} bulletins")
        env = seal(
            content=Content(title=hid, text=f"harness bulletin {hid}"),
            labels=self.labels,
            originator=self.client.agency,
            signing_key=self.client.keystore.signing_key(),
            recipients=self._keys,
            now=int(time.time()),
        )
        self.attempted[hid] = env.header.bulletin_id
        return hid, env

    async def publish_one(self) -> str:
        hid, env = self.envelope()
        return await self._send(hid, env)

    async def retry_unknown(self) -> int:
        """Send every failed/unknown bulletin again, same envelope; returns how many
        NATS acked now."""
        done = 0
        for hid, env in list(self._unsent.items()):
            await self._send(hid, env)
            done += hid in self.acked
        return done

    async def _send(self, hid: str, env: Envelope) -> str:
        for attempt in range(self.retries):
            try:
                await self.client._publish_envelope(env, attempts=1)
            except (IstmoError, nats.errors.Error, TimeoutError, OSError) as exc:
                said = str(exc).replace(str(env.header.bulletin_id), "<id>")
                self.errors[f"{type(exc).__name__}: {said[:120]}"] += 1
                await asyncio.sleep(min(0.2 * (attempt + 1), 1.0))
                continue
            self.acked.add(hid)
            self.unknown.discard(hid)
            self._unsent.pop(hid, None)
            return hid
        self.unknown.add(hid)
        self._unsent[hid] = env
        return hid

    async def run(
        self, *, rate: float, count: int, duration: float, concurrency: int = 32
    ) -> float:
        """Publish ``count`` bulletins at about ``rate`` per second, stopping after
        ``duration`` seconds at most. Returns the seconds it took."""
        count = min(count, MAX_BULLETINS)
        duration = min(duration, MAX_RUN_S)
        if not self._keys:
            await self.prepare()
        start = time.monotonic()
        gate = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with gate:
                await self.publish_one()

        async with asyncio.TaskGroup() as tg:
            for i in range(count):
                due = start + i / rate
                now = time.monotonic()
                if now - start > duration:
                    break
                if due > now:
                    await asyncio.sleep(due - now)
                await gate.acquire()  # back-pressure: never more than `concurrency` in flight
                gate.release()
                tg.create_task(one())
        return time.monotonic() - start

    def ids(self) -> dict[str, str]:
        """bulletin id -> harness id of everything attempted."""
        return {bid: hid for hid, bid in self.attempted.items()}


# --------------------------------------------------------------------------- recipient
@dataclass
class Recipient:
    """An in-process recipient: the SDK's receive loop with a recording handler."""

    agency: str
    client: RecordingClient
    visible: list[tuple[str, str]] = field(default_factory=list)  # (harness id, bulletin id)
    errors: Counter[str] = field(default_factory=Counter)

    async def _handler(self, b: ReceivedBulletin) -> None:
        self.visible.append((b.title, b.id))

    async def run(self, stop: asyncio.Event, *, batch: int = 64, max_s: float = MAX_RUN_S) -> None:
        """Receive until ``stop`` is set (or ``max_s`` passes)."""
        deadline = time.monotonic() + max_s
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                await self.client.receive(self._handler, timeout=1.0, batch=batch)
            except (IstmoError, nats.errors.Error, TimeoutError, OSError) as exc:
                self.errors[type(exc).__name__] += 1
                await asyncio.sleep(0.3)

    async def receive_for(self, seconds: float, *, batch: int = 64) -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(self.run(stop, batch=batch))
        await asyncio.sleep(seconds)
        stop.set()
        await task

    async def drain(self, want: Iterable[str], *, timeout: float, quiet: float = 1.0) -> bool:
        """Receive until every harness id in ``want`` is visible (then ``quiet`` seconds
        more, to catch duplicates), or ``timeout``. True if all arrived."""
        want = set(want)
        stop = asyncio.Event()
        task = asyncio.ensure_future(self.run(stop))
        try:
            done = await wait_until(
                lambda: want <= {h for h, _ in self.visible}, timeout=timeout, interval=0.1
            )
            await asyncio.sleep(quiet)
        finally:
            stop.set()
            await task
        return done

    @property
    def deliveries(self) -> list[tuple[str, int]]:
        return list(self.client.deliveries)


async def bz_load(target: Target, *, retries: int = 5) -> tuple[Publisher, list[Recipient]]:
    """gt-police's publisher, prepared (it resolves Belize's three ministries), and one
    connected ``Recipient`` per ministry: the load every fault test runs. Close
    ``pub.client`` and each ``r.client`` when done."""
    pub = Publisher(await connect(target, "gt-police"), retries=retries)
    assert await pub.prepare() == BZ_RECIPIENTS
    return pub, [Recipient(a, await connect(target, a)) for a in BZ_RECIPIENTS]


def all_seen(pub: Publisher, recipients: list[Recipient]) -> bool:
    """Whether every bulletin ``pub`` had acked reached every one of ``recipients``."""
    return all(pub.acked <= {h for h, _ in r.visible} for r in recipients)


class RecipientProcess:
    """A recipient in its own process (``python -m tests.faults.harness receive``).

    It appends ``start <hid> <bid> <delivery count>`` when the SDK hands a bulletin to
    its handler, holds it ``hold_ms``, then appends ``done <hid> <bid>`` and returns, so
    the SDK records, acks and sends the receipt. Each line is fsynced.
    """

    def __init__(
        self, target: Target, agency: str, work: Path, *, hold_ms: int = 0, batch: int = 16
    ) -> None:
        self.target, self.agency, self.work = target, agency, work
        self.hold_ms, self.batch = hold_ms, batch
        self.log = work / f"{agency}.events"
        self.dedupe = work / f"{agency}.received.sqlite"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        out = (self.work / f"{self.agency}.out").open("ab")
        self.proc = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "tests.faults.harness",
                "receive",
                "--keystore",
                str(self.target.keys_dir / f"{self.agency}.json"),
                "--dedupe",
                str(self.dedupe),
                "--log",
                str(self.log),
                "--hold-ms",
                str(self.hold_ms),
                "--batch",
                str(self.batch),
                *(a for url in self.target.nats_urls for a in ("--nats-url", url)),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2],
            env=self.target.subprocess_env(),
        )
        out.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def events(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        lines = self.log.read_text().splitlines()
        return [line.split() for line in lines if line.strip()]

    @property
    def visible(self) -> list[tuple[str, str]]:
        return [(e[1], e[2]) for e in self.events() if e[0] == "done" and len(e) >= 3]

    @property
    def deliveries(self) -> list[tuple[str, int]]:
        return [(e[2], int(e[3])) for e in self.events() if e[0] == "start" and len(e) >= 4]

    def in_handler(self) -> bool:
        """True while a bulletin was handed over and its handler has not returned."""
        open_: set[str] = set()
        for e in self.events():
            if e[0] == "start":
                open_.add(e[2])
            elif e[0] == "done":
                open_.discard(e[2])
        return bool(open_)


async def _receive_main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    client = await RecordingClient.connect(
        Path(args.keystore),
        list(args.nats_url),  # type: ignore[arg-type]  # nats-py takes a list of servers
        dedupe_path=Path(args.dedupe),
    )
    fd = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def line(text_: str) -> None:
        os.write(fd, (text_ + "\n").encode())
        os.fsync(fd)

    async def handler(b: ReceivedBulletin) -> None:
        count = client.deliveries[-1][1] if client.deliveries else 0
        line(f"start {b.title} {b.id} {count}")
        if args.hold_ms:
            await asyncio.sleep(args.hold_ms / 1000)
        line(f"done {b.title} {b.id}")

    client.deliveries = []
    deadline = time.monotonic() + MAX_RUN_S
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                await client.receive(handler, timeout=1.0, batch=args.batch)
            except (IstmoError, nats.errors.Error, TimeoutError, OSError):
                await asyncio.sleep(0.3)
    finally:
        os.close(fd)
        await client.close()


# --------------------------------------------------------------------------- relay
class RelayProcess:
    """``istmo relay`` as its own process, so a test can SIGKILL or SIGSTOP it."""

    def __init__(self, target: Target, log: Path) -> None:
        self.target, self.log = target, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self, timeout: float = 120) -> float:
        """Start and wait until it joined the consumers; returns the seconds it took."""
        t0 = time.monotonic()
        ready = self.log.read_text().count("relay connected") if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    ISTMO,
                    "relay",
                    "--data-dir",
                    str(self.target.data_dir),
                    "--nats-url",
                    ",".join(self.target.nats_urls),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.target.subprocess_env(),
            )
        proc = self.proc

        def connected() -> bool:
            if proc.poll() is not None:
                raise RuntimeError("relay exited: " + self.log.read_text()[-2000:])
            return self.log.read_text().count("relay connected") > ready

        eventually_sync(
            connected, what="the relay to connect", timeout=timeout, context=self.log.read_text
        )
        return time.monotonic() - t0

    def signal(self, sig: int) -> None:
        """Send ``sig``; a SIGSTOP returns once every thread has stopped (``pause``)."""
        assert self.proc is not None
        if sig == signal.SIGSTOP:
            pause(self.proc.pid)
        else:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def restart(self) -> float:
        self.kill()
        self.restarts += 1
        return self.start()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)  # in case a test left it stopped
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()


# --------------------------------------------------------------------------- checker
@dataclass(frozen=True)
class RecipientResult:
    agency: str
    expected: int
    app_visible: int
    lost_prefix: tuple[str, ...]
    lost_middle: tuple[str, ...]
    lost_postfix: tuple[str, ...]
    unexpected: tuple[str, ...]
    recovered: int
    dup_visible: int
    dup_wire: int
    receipts_audited: int

    @property
    def lost(self) -> tuple[str, ...]:
        return self.lost_prefix + self.lost_middle + self.lost_postfix


@dataclass(frozen=True)
class Report:
    attempted: int
    acked: int
    unknown: int
    recipients: tuple[RecipientResult, ...]
    audit_verified: bool
    accepted_audited: int
    audit_problems: tuple[str, ...]

    @property
    def audit_ok(self) -> bool:
        return self.audit_verified and not self.audit_problems

    @property
    def lost(self) -> int:
        return sum(len(r.lost) for r in self.recipients)

    @property
    def unexpected(self) -> int:
        return sum(len(r.unexpected) for r in self.recipients)

    @property
    def dup_visible(self) -> int:
        return sum(r.dup_visible for r in self.recipients)

    @property
    def dup_wire(self) -> int:
        return sum(r.dup_wire for r in self.recipients)

    @property
    def recovered(self) -> int:
        return sum(r.recovered for r in self.recipients)

    @property
    def ok(self) -> bool:
        return (self.lost, self.unexpected, self.dup_visible, self.audit_ok) == (0, 0, 0, True)

    def summary(self) -> str:
        lines = [
            f"attempted={self.attempted} acked={self.acked} unknown={self.unknown} "
            f"accepted(audit)={self.accepted_audited} lost={self.lost} "
            f"unexpected={self.unexpected} recovered={self.recovered} "
            f"dup_visible={self.dup_visible} dup_wire={self.dup_wire} audit_ok={self.audit_ok}"
        ]
        for r in self.recipients:
            lines.append(
                f"  {r.agency}: expected={r.expected} visible={r.app_visible} "
                f"lost={len(r.lost)} (prefix {len(r.lost_prefix)}, middle {len(r.lost_middle)}, "
                f"postfix {len(r.lost_postfix)}) unexpected={len(r.unexpected)} "
                f"dup_visible={r.dup_visible} dup_wire={r.dup_wire} receipts={r.receipts_audited}"
            )
        lines += [f"  audit: {p}" for p in self.audit_problems]
        return "\n".join(lines)


def _index(hid: str) -> tuple[str, int]:
    name, _, n = hid.rpartition("-")
    return name, int(n) if n.isdigit() else -1


def _split_lost(lost: set[str], seen: set[str]) -> tuple[tuple[str, ...], ...]:
    """Lost ids before the first seen id of their publisher, between, and after the last."""
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for hid in seen:
        name, i = _index(hid)
        first[name] = min(first.get(name, i), i)
        last[name] = max(last.get(name, i), i)
    prefix, middle, postfix = [], [], []
    for hid in sorted(lost, key=_index):
        name, i = _index(hid)
        if name not in first or i < first[name]:
            prefix.append(hid)
        elif i > last[name]:
            postfix.append(hid)
        else:
            middle.append(hid)
    return tuple(prefix), tuple(middle), tuple(postfix)


def audit_counts(
    target: Target, bulletin_ids: set[str]
) -> tuple[Counter[str], dict[str, set[str]]]:
    """(accepted events per bulletin id, recipients with a received event per bulletin)."""
    engine = create_engine(target.database)
    accepted: Counter[str] = Counter()
    received: dict[str, set[str]] = {}
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT type, bulletin_id, actor FROM audit_event "
                    "WHERE type IN ('bulletin.accepted', 'bulletin.received')"
                )
            )
            for type_, bid, actor in rows:
                if bid not in bulletin_ids:
                    continue
                if type_ == "bulletin.accepted":
                    accepted[bid] += 1
                else:
                    received.setdefault(actor, set()).add(bid)
    finally:
        engine.dispose()
    return accepted, received


def audit_verify(target: Target) -> tuple[bool, str]:
    """``istmo audit verify`` on the target's data directory: (passed, its output)."""
    done = run_istmo(
        # The stacks under fault have no witnesses: the log key's checks are the point here.
        [ISTMO, "audit", "verify", "--trust-log-key-alone", "--data-dir", str(target.data_dir)],
        timeout=120,
        env=target.subprocess_env(),
    )
    return done.returncode == 0, (done.stdout + done.stderr).strip()[-500:]


async def check(
    target: Target,
    publishers: Sequence[Publisher],
    recipients: Sequence[Recipient | RecipientProcess],
    *,
    receipts_timeout: float = 45.0,
    verify: bool = True,
) -> Report:
    """The catalogue's checker over everything the publishers and recipients recorded.

    Every recipient is expected to see every acked bulletin of every publisher (build the
    publishers' labels so they route to exactly those recipients). Waits up to
    ``receipts_timeout`` seconds for the relay to audit the recipients' receipts (longer than
    the relays' 30 s ack wait: a receipt whose recording failed comes back after it).
    """
    attempted: dict[str, str] = {}  # bulletin id -> harness id
    acked: set[str] = set()
    unknown: set[str] = set()
    for p in publishers:
        attempted.update(p.ids())
        acked |= p.acked
        unknown |= p.unknown
    attempted_h = set(attempted.values())
    bids = set(attempted)

    def visible_bids(r: Recipient | RecipientProcess) -> set[str]:
        return {bid for _, bid in r.visible}

    async def settled() -> bool:
        _, received = await asyncio.to_thread(audit_counts, target, bids)
        return all(received.get(r.agency, set()) >= visible_bids(r) for r in recipients)

    await wait_until(settled, timeout=receipts_timeout, interval=0.5)
    accepted, received = await asyncio.to_thread(audit_counts, target, bids)
    problems: list[str] = []
    acked_bids = {bid for bid, hid in attempted.items() if hid in acked}
    missing = acked_bids - set(accepted)
    if missing:
        problems.append(f"{len(missing)} acked bulletins have no bulletin.accepted event")
    twice = [bid for bid, n in accepted.items() if n != 1]
    if twice:
        problems.append(f"{len(twice)} bulletins have more than one bulletin.accepted event")

    results = []
    for r in recipients:
        events = [hid for hid, _ in r.visible]
        seen = set(events)
        lost = acked - seen
        prefix, middle, postfix = _split_lost(lost, seen)
        wire = [bid for bid, _ in r.deliveries]
        receipts = received.get(r.agency, set())
        if receipts != visible_bids(r):
            problems.append(
                f"{r.agency}: {len(receipts)} bulletin.received events for "
                f"{len(visible_bids(r))} bulletins its application saw"
            )
        results.append(
            RecipientResult(
                agency=r.agency,
                expected=len(acked),
                app_visible=len(seen),
                lost_prefix=prefix,
                lost_middle=middle,
                lost_postfix=postfix,
                unexpected=tuple(sorted(seen - attempted_h)),
                recovered=len(seen & (attempted_h - acked)),
                dup_visible=len(events) - len(seen),
                dup_wire=len(wire) - len(set(wire)),
                receipts_audited=len(receipts),
            )
        )
    verified, output = await asyncio.to_thread(audit_verify, target) if verify else (True, "")
    if not verified:
        problems.append(f"istmo audit verify failed: {output}")
    return Report(
        attempted=len(attempted),
        acked=len(acked),
        unknown=len(unknown),
        recipients=tuple(results),
        audit_verified=verified,
        accepted_audited=sum(1 for bid in accepted if bid in bids),
        audit_problems=tuple(problems),
    )


def record_run(path: Path, name: str, report: Report, **figures: object) -> None:
    """Append one run's figures (and the checker's summary) as a JSON line."""
    entry = {
        "test": name,
        "time": int(time.time()),
        "python": sys.version.split()[0],
        "attempted": report.attempted,
        "acked": report.acked,
        "unknown": report.unknown,
        "lost": report.lost,
        "unexpected": report.unexpected,
        "recovered": report.recovered,
        "dup_visible": report.dup_visible,
        "dup_wire": report.dup_wire,
        "audit_ok": report.audit_ok,
        **figures,
    }
    with path.open("a") as f:
        f.write(json.dumps(entry, default=str) + "\n")


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.harness")
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("receive", help="a recipient process that logs its hand-offs")
    r.add_argument("--keystore", required=True)
    r.add_argument("--nats-url", action="append", required=True)
    r.add_argument("--dedupe", required=True)
    r.add_argument("--log", required=True)
    r.add_argument("--hold-ms", type=int, default=0)
    r.add_argument("--batch", type=int, default=16)
    args = parser.parse_args(argv)
    if not 0 <= args.hold_ms <= 60_000 or not 1 <= args.batch <= 256:
        parser.error("--hold-ms must be 0..60000 and --batch 1..256")
    asyncio.run(_receive_main(args))


if __name__ == "__main__":
    _main()
