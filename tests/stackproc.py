"""Run `istmo` as a user would: the real console script in subprocesses."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from tests.waiting import eventually_sync
from tests.warm import WarmPopen, run_istmo, start_istmo

ISTMO = str(Path(sys.executable).parent / "istmo")
READY = "ready; Ctrl-C stops"  # what istmo up prints once it is ready


def _port_band() -> tuple[int, int]:
    """This test worker's own band of ports, below the kernel's ephemeral range.

    A port chosen here is free a moment ago, not reserved: the process it is meant for
    binds it later. Inside the ephemeral range any other test's outgoing connection or
    ``port 0`` listener may take it in between (CI once lost a cluster node to that), and
    two xdist workers picking at random may choose the same run. So each worker picks from
    its own slice of 10000..(first ephemeral port - 1).
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32_768
    start, stop = 10_000, max(low, 12_000)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) % workers if worker.isdigit() else 0
    width = (stop - start) // workers
    return start + index * width, start + (index + 1) * width


def free_port_run(n: int, host: str = "127.0.0.1") -> int:
    """The first of ``n`` consecutive TCP ports that were all free a moment ago, from this
    worker's band (``_port_band``)."""
    band_start, band_stop = _port_band()
    for _ in range(200):
        base = random.randrange(band_start, band_stop - n)
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no run of {n} free ports found")


def free_port() -> int:
    """One port from this worker's band (``free_port_run``)."""
    return free_port_run(1)


def _port_of(url: str) -> int:
    port = urllib.parse.urlsplit(url).port
    assert port is not None, url
    return port


def interrupt(proc: subprocess.Popen[str], timeout: float = 30) -> tuple[str, str]:
    """Ctrl-C ``proc`` as a user would; its remaining (stdout, stderr). A process still
    running ``timeout`` seconds later is killed (never left behind for another test's
    garbage collector to find) and the test fails saying so."""
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(
            f"{proc.args!r} did not stop within {timeout} s of Ctrl-C; stderr: {err[-2000:]}"
        ) from None
    return out or "", err or ""


def _thread_states(pid: int) -> list[str]:
    """The scheduler state of each thread of ``pid`` (``R``, ``S``, ``T`` ...)."""
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended meanwhile
        states.append(stat.rsplit(")", 1)[1].split()[0])
    return states


def pause(pid: int, timeout: float = 30) -> None:
    """SIGSTOP ``pid`` and return once every one of its threads has stopped.

    A SIGSTOP sent to a process wakes one of its threads, which then stops the others. On
    a busy machine that thread can wait for a CPU while the others go on: a broker's gate
    thread stored and acknowledged a publish 10 ms after its process was sent SIGSTOP.
    A test that needs the process frozen waits for that here."""
    os.kill(pid, signal.SIGSTOP)
    eventually_sync(
        lambda: all(state in ("T", "t") for state in _thread_states(pid)),
        what=f"every thread of process {pid} to stop",
        timeout=timeout,
        interval=0.005,
        context=lambda: _thread_states(pid),
    )


def publish_args(title: str, body: str, *, rel_to: str = "SICA") -> list[str]:
    """``istmo publish`` options for a RESTRICTED, TLP:AMBER drug-trafficking bulletin
    (the README's example), releasable to ``rel_to``."""
    return [
        "--topic", "drug-trafficking", "--classification", "RESTRICTED", "--tlp", "AMBER",
        "--rel-to", rel_to, "--title", title, "--body", body,
    ]  # fmt: skip


def run_cli(*args: str, data_dir: Path, timeout: float = 60, input_: str | None = None):
    """Run `istmo ARGS --data-dir DATA_DIR` and return the CompletedProcess."""
    argv = [ISTMO, *args]
    if args and args[0] not in ("--help", "-h"):
        argv += ["--data-dir", str(data_dir)]
    return run_istmo(argv, input=input_, timeout=timeout)


@dataclass
class UpProcess:
    """`istmo up` running in the background: nats-server on ports it picks itself (port 0;
    clients find them in ``stack.json``), the HTTP API on one that was free a moment before.

    Once started, ``ports`` holds the ports nats-server bound: started again (or another
    ``UpProcess`` given these ``ports``), the stack comes back where clients knew it."""

    data_dir: Path
    extra: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)  # ISTMO_* settings for this stack
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[str] | WarmPopen | None = None
    log_path: Path | None = None

    def start(self, timeout: float = 180) -> UpProcess:
        if not self.ports:
            self.ports = {"nats": 0, "http": 0, "api": free_port()}
        self.log_path = (
            self.data_dir.parent / f"up-{len(list(self.data_dir.parent.glob('up-*.log')))}.log"
        )
        with self.log_path.open("w") as log:
            self.proc = self._popen(log)
        proc, log_path = self.proc, self.log_path

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"istmo up exited: {log_path.read_text()[-2000:]}")
            # The line printed last: "ready" alone is also in words of earlier lines.
            return (self.data_dir / "stack.json").exists() and READY in log_path.read_text()

        try:
            eventually_sync(
                ready,
                what="istmo up to be ready",
                timeout=timeout,
                interval=0.1,
                context=lambda: self.output,
            )
            if self.ports.get("nats") == 0 or self.ports.get("http") == 0:
                info = json.loads((self.data_dir / "stack.json").read_text())
                self.ports["nats"] = _port_of(info["nats_url"])
                self.ports["http"] = _port_of(info["nats_monitor_urls"][0])
        except BaseException:
            self.stop()  # never a stack left running behind a failed start
            raise
        return self

    def _popen(self, log):
        return start_istmo(
            [
                ISTMO,
                "up",
                "--data-dir",
                str(self.data_dir),
                "--nats-port",
                str(self.ports["nats"]),
                "--nats-http-port",
                str(self.ports["http"]),
                "--api-port",
                str(self.ports["api"]),
                *self.extra,
            ],
            output=log.fileno(),
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )

    @property
    def nats_url(self) -> str:
        return str(json.loads((self.data_dir / "stack.json").read_text())["nats_url"])

    @property
    def output(self) -> str:
        return self.log_path.read_text() if self.log_path else ""

    def stop(self, timeout: float = 30) -> int:
        """Ctrl-C, as a user would, and wait for a clean exit."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
