"""The broker as a user runs it, in separate processes, for the benchmarks.

``BenchStack`` starts ``istmo up --no-relay`` (nats-server with ``sync_interval: always``,
SQLite, the HTTP API and the sequencer) on free loopback ports in a temporary data
directory, then as many ``istmo relay`` processes, or the bare forwarder, as a measurement
needs. Every process is stopped, and its peak RSS (``VmHWM``) noted, when the stack stops
(a process whose figures are taken is killed rather than stopped in order: nothing
measures that, and it takes a relay about a second, a large stack half a minute), and at
interpreter exit whatever still runs is killed (``atexit``), so a failed benchmark leaves
nothing behind. Also here: sealing and publishing a backlog through the SDK's own
publish path, and timing how fast a consumer drains it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from bench.timing import phase
from broker.bus.claims import load_operator
from broker.bus.server import free_port
from clients.sdk import IstmoClient
from schemas.envelope import Content, Envelope
from schemas.keys import EncryptionPublicKey
from schemas.labels import Classification, Labels, Tlp
from schemas.natskeys import user_public_key
from schemas.sealing import seal
from schemas.subjects import (
    DELIVER_STREAM,
    INGEST_STREAM,
    RELAY_INGEST_DURABLE,
    deliver_durables,
)

__all__ = [
    "BODY",
    "WIDE_LABELS",
    "BenchStack",
    "Proc",
    "drain",
    "peak_rss_mib",
    "publish_backlog",
    "seal_backlog",
]

ISTMO = str(Path(sys.executable).parent / "istmo")
BODY = "x" * 2048  # 2 KiB bulletin bodies, as the issue asks
# Labels that the demo policy lets gt-police send to most of the directory (the police,
# military and foreign ministries of SICA and CARICOM follow border incidents, and the
# observatory follows everything graded B2 or better).
WIDE_LABELS = Labels(
    topic="border-incident",
    classification=Classification.RESTRICTED,
    tlp=Tlp.GREEN,
    rel_to=("SICA", "CARICOM"),
    source_grade="B2",  # the observatory takes only B2 or better
)
_LIVE: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for p in list(_LIVE):
        if p.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
    _LIVE.clear()


def peak_rss_mib(pid: int, field: str = "VmHWM") -> float | None:
    """The peak resident set size (``VmHWM``; or ``VmRSS``, now) of a live process, MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_s(pid: int | None) -> float | None:
    """CPU seconds (user + system) a live process has used so far, or None."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces: count fields after its closing paren.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Proc:
    """One child process (its own process group) with its output in a log file."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None
    peak_mib: float | None = None
    last_rss_mib: float | None = None  # VmRSS just before it was stopped
    # Stopped with Ctrl-C and waited for (a process that writes something as it stops);
    # otherwise a worker is killed once its work is done (``BenchStack.stop_workers``).
    graceful: bool = False

    def start(self) -> Proc:
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
                start_new_session=True,
            )
        _LIVE.add(self.popen)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for(self, marker: str, timeout: float) -> None:
        """Wait until ``marker`` appears in the output; raise if the process dies first."""
        assert self.popen is not None
        deadline = time.monotonic() + timeout
        while marker not in self.output():
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.output()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} not ready in {timeout} s: {self.output()[-2000:]}")
            time.sleep(0.05)

    def stop(self, timeout: float = 30) -> None:
        """Note the peak RSS, then Ctrl-C (SIGINT) and wait; kill if it hangs."""
        self.interrupt()
        self.wait_stopped(timeout)

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def interrupt(self) -> None:
        """Note the peak RSS and RSS now, then Ctrl-C (SIGINT); ``wait_stopped`` waits."""
        p = self.popen
        if p is not None and p.poll() is None:
            self.peak_mib = peak_rss_mib(p.pid)
            self.last_rss_mib = peak_rss_mib(p.pid, "VmRSS")
            with contextlib.suppress(OSError):
                p.send_signal(signal.SIGINT)

    def kill(self) -> None:
        """Note the peak RSS and RSS now, then kill the process group (SIGKILL); for a
        process whose work is done and measured. ``wait_stopped`` reaps it."""
        p = self.popen
        if p is not None and p.poll() is None:
            self.peak_mib = peak_rss_mib(p.pid)
            self.last_rss_mib = peak_rss_mib(p.pid, "VmRSS")
            with contextlib.suppress(OSError):
                os.killpg(p.pid, signal.SIGKILL)

    def end(self) -> None:
        """``interrupt`` if ``graceful``, else ``kill``."""
        if self.graceful:
            self.interrupt()
        else:
            self.kill()

    def wait_stopped(self, timeout: float = 30) -> None:
        """Wait for the process to exit after ``interrupt``; kill it if it hangs."""
        p = self.popen
        if p is None:
            return
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)
        _LIVE.discard(p)


class BenchStack:
    """``istmo up --no-relay`` in ``root``, plus relay or forwarder processes on demand."""

    def __init__(
        self,
        root: Path,
        name: str,
        *,
        policy_dir: Path | None = None,
        nats_auth: str = "config",
    ) -> None:
        self.root = root
        self.nats_auth = nats_auth  # istmo up --nats-auth (ADR 0013)
        self.name = name
        self.data_dir = root / "istmo"
        self.policy_dir = policy_dir
        self.ports = {"nats": free_port(), "http": free_port(), "api": free_port()}
        self.up: Proc | None = None
        self.workers: list[Proc] = []
        self.peaks: dict[str, float] = {}  # component -> highest VmHWM seen, MiB
        self.steady: dict[str, float] = {}  # component -> highest VmRSS when stopped, MiB
        self.startup_s = 0.0  # start until the stack says it is up
        self.consumers_s = 0.0  # start until every agency's delivery consumers exist
        self._nats_pid: int | None = None
        self.last_stopped: list[tuple[str, float | None, float | None]] = []
        # (agency, labels) -> the relay's resolve answer (recipient -> encryption key)
        self.resolved: dict[tuple[str, Labels], dict[str, EncryptionPublicKey]] = {}

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 300) -> BenchStack:
        self.root.mkdir(parents=True, exist_ok=True)
        argv = [
            ISTMO,
            "up",
            "--no-relay",
            "--data-dir",
            str(self.data_dir),
            "--nats-port",
            str(self.ports["nats"]),
            "--nats-http-port",
            str(self.ports["http"]),
            "--api-port",
            str(self.ports["api"]),
        ]
        if self.policy_dir is not None:
            argv += ["--policy-dir", str(self.policy_dir)]
        if self.nats_auth != "config":
            argv += ["--nats-auth", self.nats_auth]
        t = time.perf_counter()
        with phase("start istmo up"):
            self.up = Proc(f"{self.name}: istmo up", argv, self.root / "up.log").start()
            self.up.wait_for("ready; Ctrl-C stops", timeout)
        self.startup_s = time.perf_counter() - t
        # A fresh start of a large directory makes most delivery consumers once it is up
        # (ADR 39): the figures after this wait for them, as a region would.
        if "delivery consumers being made" in self.up.output():
            with phase("delivery consumers made after start"):
                self.up.wait_for("delivery consumers made (", timeout)
        self.consumers_s = time.perf_counter() - t
        return self

    def stop(self, *, wait: bool = True, kill: bool = False) -> None:
        """Stop the workers, then ``istmo up``; with ``wait=False`` only Ctrl-C it (its
        memory is noted) and leave ``wait_stopped`` to wait for it to exit. ``kill``:
        kill it and its nats-server instead (memory noted first), for a stack whose
        figures are all taken: an orderly stop takes seconds (over 30 s with 3,500
        agencies) that nothing measures."""
        self.stop_workers()
        if self.up is not None and self.up.alive():
            self._nats_pid = self.nats_server_pid()  # its file is gone once it stopped
            if kill:
                self.up.kill()
                _stop_pid(self._nats_pid, must_have=str(self.data_dir), kill=True)
            else:
                self.up.interrupt()
            self._note("api+sequencer (istmo up)", self.up.peak_mib, self.up.last_rss_mib)
        if wait:
            self.wait_stopped()

    def wait_stopped(self, timeout: float = 120) -> None:
        """Wait for ``istmo up`` to exit (a 3,500-agency stack takes over 30 s); if it had
        to be killed, its nats-server (a process of its own) is stopped too."""
        if self.up is not None:
            with phase("stop istmo up"):
                self.up.wait_stopped(timeout)
                _stop_pid(self._nats_pid, must_have=str(self.data_dir))
            self.up = None

    def __enter__(self) -> BenchStack:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def _note(self, component: str, mib: float | None, rss: float | None = None) -> None:
        if mib is not None:
            self.peaks[component] = max(self.peaks.get(component, 0.0), mib)
        if rss is not None:
            self.steady[component] = max(self.steady.get(component, 0.0), rss)

    # ------------------------------------------------------------------ facts
    @property
    def nats_url(self) -> str:
        info = json.loads((self.data_dir / "stack.json").read_text())
        return str(info["nats_url"])

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "istmo.db"

    def keystore(self, agency: str) -> Path:
        return self.data_dir / "keys" / f"{agency}.json"

    def relay_seed(self) -> str:
        return (self.data_dir / "broker" / "relay.seed").read_text().strip()

    def nats_server_pid(self) -> int | None:
        try:
            return int((self.data_dir / "nats.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def count(self, table: str) -> int:
        """Rows in one registry table (read-only; the table name is ours, not input)."""
        con = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        try:
            return int(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608
        finally:
            con.close()

    # ------------------------------------------------------------------ workers
    def start_relays(self, n: int, timeout: float = 120) -> list[Proc]:
        """``n`` more ``istmo relay`` processes on the shared ingest consumer."""
        with phase("start relays"):
            return self._start_relays(n, timeout)

    def ensure_relays(self, n: int, timeout: float = 120) -> list[Proc]:
        """Start as many relays as it takes for ``n`` to run (none if they already do).

        Raises:
            RuntimeError: a bare forwarder runs (it would share their consumer).
        """
        if any(w.alive() and _kind(w.name) == "bare forwarder" for w in self.workers):
            raise RuntimeError("a bare forwarder still runs on the relays' consumer")
        running = sum(1 for w in self.workers if w.alive())
        return self.start_relays(n - running, timeout) if n > running else []

    def _start_relays(self, n: int, timeout: float) -> list[Proc]:
        started = []
        for _ in range(n):
            argv = [ISTMO, "relay", "--data-dir", str(self.data_dir), "--nats-url", self.nats_url]
            if self.policy_dir is not None:
                argv += ["--policy-dir", str(self.policy_dir)]
            i = len(self.workers)
            proc = Proc(f"{self.name}: relay {i}", argv, self.root / f"relay-{i}.log").start()
            self.workers.append(proc)
            started.append(proc)
        for proc in started:
            proc.wait_for("relay connected", timeout)
        return started

    def start_forwarder(self, recipients: Sequence[str], timeout: float = 60) -> Proc:
        """The bare nats-py forwarder (bench/bare_forwarder.py) on the same consumer."""
        seed = self.root / "relay.seed.copy"
        if not seed.exists():
            shutil.copyfile(self.data_dir / "broker" / "relay.seed", seed)
            seed.chmod(0o600)
        i = len(self.workers)
        argv = [
            sys.executable,
            "-m",
            "bench.bare_forwarder",
            "--nats-url",
            self.nats_url,
            "--seed-file",
            str(seed),
            "--recipients",
            ",".join(recipients),
        ]
        with phase("start forwarder"):
            proc = Proc(f"{self.name}: bare forwarder", argv, self.root / f"fwd-{i}.log").start()
            self.workers.append(proc)
            proc.wait_for("ready", timeout)
        return proc

    def keep_workers(self, n: int) -> None:
        """Stop every worker but the first ``n`` still running (in parallel)."""
        extra = [w for w in self.workers if w.alive()][n:]
        if extra:
            with phase("stop workers"):
                for proc in extra:
                    proc.end()
                for proc in extra:
                    proc.wait_stopped()
                    self._note(_kind(proc.name), proc.peak_mib, proc.last_rss_mib)
            self.workers = [w for w in self.workers if w not in extra]

    def worker_rss(self) -> list[tuple[str, float | None, float | None]]:
        """(name, peak RSS, RSS now) of every live worker, MiB."""
        return [
            (w.name, peak_rss_mib(w.pid), peak_rss_mib(w.pid, "VmRSS"))
            for w in self.workers
            if w.alive()
        ]

    def stop_workers(self) -> None:
        """Stop every worker: kill those whose work is done (a relay or forwarder after
        its figures: an orderly stop takes a relay ~0.5-1 s of CPU, nothing measures it),
        Ctrl-C the ``graceful`` ones, then wait for all."""
        with phase("stop workers"):
            for proc in self.workers:
                proc.end()
            for proc in self.workers:
                proc.wait_stopped()
                self._note(_kind(proc.name), proc.peak_mib, proc.last_rss_mib)
        if self.workers:
            self.last_stopped = [(p.name, p.peak_mib, p.last_rss_mib) for p in self.workers]
        self.workers = []

    def sample_peaks(self) -> None:
        """Note the peak RSS of every live process now (VmHWM only grows)."""
        if self.up is not None and self.up.popen is not None:
            self._note("api+sequencer (istmo up)", peak_rss_mib(self.up.pid))
        pid = self.nats_server_pid()
        if pid is not None:
            self._note("nats-server", peak_rss_mib(pid))
        for proc in self.workers:
            if proc.popen is not None and proc.popen.poll() is None:
                self._note(_kind(proc.name), peak_rss_mib(proc.pid))

    # ------------------------------------------------------------------ NATS
    async def operator(self) -> NATS:
        """A NATS connection with the relay's credentials (account ISTMO), for the
        benchmark's own bookkeeping: consumer state, purges, the bare-JetStream stream."""
        seed = self.relay_seed()
        user_jwt = None
        if self.nats_auth == "operator":  # the broker's user presents its JWT (ADR 0013)
            operator = load_operator(self.data_dir / "broker")
            user_jwt = operator.relay_user_jwt(user_public_key(seed), issued_at=int(time.time()))
        return await nats.connect(
            self.nats_url,
            nkeys_seed_str=seed,
            user_jwt_cb=None if user_jwt is None else user_jwt.encode,
            name="istmo-bench",
            connect_timeout=5,
        )

    async def client(self, agency: str) -> IstmoClient:
        return await IstmoClient.connect(
            self.keystore(agency),
            self.nats_url,
            dedupe_path=self.root / f"{agency}.received.sqlite",
        )


def _stop_pid(pid: int | None, *, must_have: str, timeout: float = 10, kill: bool = False) -> None:
    """SIGTERM ``pid`` if it still runs with ``must_have`` in its command line (not a
    process that took the number over), SIGKILL it after ``timeout`` seconds (at once if
    ``kill``)."""
    if pid is None:
        return
    try:
        if must_have.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return
    except OSError:
        return  # gone
    for sig in (signal.SIGKILL,) if kill else (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except OSError:
            return  # gone (or not ours)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
                if not Path(f"/proc/{pid}/cmdline").read_bytes():
                    return  # a zombie: exited, its parent (gone) never reaped it
            except OSError:
                return
            time.sleep(0.05)


def _kind(name: str) -> str:
    if "profiled" in name:
        return "relay under pyinstrument"
    return "relay (istmo relay)" if "relay" in name else "bare forwarder"


def seal_backlog(
    client: IstmoClient,
    recipients: dict[str, EncryptionPublicKey],
    n: int,
    *,
    labels: Labels = WIDE_LABELS,
    body: str = BODY,
    tag: str = "b",
) -> list[Envelope]:
    """``n`` distinct sealed bulletins from ``client``'s agency to ``recipients``."""
    now = int(time.time())
    with phase("seal backlog"):
        return _seal(client, recipients, n, labels, body, tag, now)


def _seal(
    client: IstmoClient,
    recipients: dict[str, EncryptionPublicKey],
    n: int,
    labels: Labels,
    body: str,
    tag: str,
    now: int,
) -> list[Envelope]:
    return [
        seal(
            content=Content(title=f"{tag}{i}", text=body),
            labels=labels,
            originator=client.agency,
            signing_key=client.keystore.signing_key(),
            recipients=recipients,  # type: ignore[arg-type]
            now=now,
        )
        for i in range(n)
    ]


async def publish_backlog(
    client: IstmoClient,
    envs: list[Envelope],
    window: int = 100,
    *,
    by: Sequence[IstmoClient] = (),
) -> float:
    """Publish through the SDK's own ingest path, ``window`` at a time, envelope ``i``
    through ``by[i]`` if given (each its originator's client), else ``client``; returns
    seconds."""
    t = time.perf_counter()
    with phase("publish backlog"):
        for start in range(0, len(envs), window):
            batch = envs[start : start + window]
            sends = by[start : start + window] if by else [client] * len(batch)
            await asyncio.gather(
                *(c._publish_envelope(e) for c, e in zip(sends, batch, strict=True))
            )
    return time.perf_counter() - t


async def drain(
    js: JetStreamContext,
    expected: int,
    *,
    timeout: float,
    stack: BenchStack | None = None,
    poll_s: float = 0.05,
    released: float | None = None,
    stream: str = INGEST_STREAM,
    durable: str = RELAY_INGEST_DURABLE,
) -> dict[str, object]:
    """Time how fast the relay's shared ingest consumer (or ``durable`` on ``stream``)
    drains ``expected`` messages.

    The consumer is polled every ``poll_s``; the clock starts when a worker takes its
    first batch (so process start-up is not counted) and stops when nothing is pending
    or unacked (or at ``timeout``), each taken as the midpoint between the poll that
    sees it and the one before (or ``released``: ``time.perf_counter()`` when the whole
    backlog was there for the workers to take, nothing taken yet), so that neither end
    of the window lags by a poll more than the other.
    """
    with phase("drain backlog"):
        return await _drain(js, expected, timeout, stack, poll_s, released, stream, durable)


async def _drain(
    js: JetStreamContext,
    expected: int,
    timeout: float,
    stack: BenchStack | None,
    poll_s: float,
    released: float | None = None,
    stream: str = INGEST_STREAM,
    durable: str = RELAY_INGEST_DURABLE,
) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    t0: float | None = None
    end: float | None = None
    done0 = 0
    done = 0
    last = released  # when the consumer was last seen as before (nothing taken, or some left)
    while time.monotonic() < deadline:
        asked = time.perf_counter()
        info = await js.consumer_info(stream, durable)
        seen = (asked + time.perf_counter()) / 2
        left = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        done = expected - left
        if t0 is None and int(info.num_pending or 0) < expected:
            # A worker took its first batch since ``last`` (nothing was taken then).
            t0, done0 = ((last + seen) / 2, 0) if last is not None else (seen, done)
        if t0 is not None and left == 0:
            # The last ack came since ``last`` (something was left then).
            end = (last + seen) / 2 if last is not None else seen
            if end <= t0:  # the first take and the last ack between the same two looks
                t0, end = (last if last is not None else t0), seen
            break
        last = seen
        if stack is not None:
            stack.sample_peaks()
        await asyncio.sleep(poll_s)
    if end is None:
        end = time.perf_counter()
    if t0 is None:
        return {"processed": 0, "seconds": 0.0, "per_s": 0.0, "drained": False}
    seconds = max(end - t0, 1e-9)
    return {
        "processed": done,
        "seconds": round(seconds, 3),
        "per_s": round((done - done0) / seconds, 1),
        "drained": done >= expected,
    }


async def empty_queue(stack: BenchStack, client: IstmoClient, budget_s: float = 30) -> int:
    """Drop what earlier measurements left in ``client``'s queue, so a latency measurement
    does not first chew through an old backlog: taken off its durable consumer and acked
    with the relay's credentials, not opened (a leftover 60-recipient bulletin takes the
    SDK tens of ms to open, and items 1 and 2 leave bz-police a few hundred; the delivery
    stream denies purges). Bounded in time; returns how many were dropped."""
    op = await stack.operator()
    total = 0
    try:
        js = op.jetstream(timeout=10)
        deadline = time.monotonic() + budget_s
        for durable in deliver_durables(client.agency):  # urgent-<agency>, deliver-<agency>
            info = await js.consumer_info(DELIVER_STREAM, durable)
            if not info.num_pending:
                continue
            sub = await js.pull_subscribe_bind(durable, stream=DELIVER_STREAM)
            while time.monotonic() < deadline:
                try:
                    msgs = await sub.fetch(256, timeout=0.5)
                except TimeoutError:
                    break  # nothing more to take (or only what another client holds unacked)
                for m in msgs:
                    await m.ack()
                total += len(msgs)
                info = await js.consumer_info(DELIVER_STREAM, durable)
                if not info.num_pending:
                    break
            await sub.unsubscribe()
    finally:
        await op.close()
    return total


async def stop_receiver(task: asyncio.Task[Any]) -> None:
    """Cancel an SDK ``receive`` task and wait until it has ended, cancelling again while
    it runs: on Python 3.11 a cancel that meets a message arriving in the same moment is
    lost inside nats-py's ``next_msg`` (``asyncio.wait_for`` returns the message), and
    ``receive`` then goes on fetching until its own timeout (a minute or more)."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.5)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


async def purge_ingest(js: JetStreamContext) -> None:
    """Drop whatever a time-capped run left in the ingest work queue."""
    await js.purge_stream(INGEST_STREAM)
