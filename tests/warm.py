"""``istmo`` commands for the tests, started from a warm process.

An ``istmo`` command that a test runs to completion costs 1-2 s of CPU, and nearly all of it
is Python importing Istmo and its libraries (``istmo audit verify`` on a small log: 2.3 s,
of which the check itself 0.03 s). The suite runs about 500 of them, on two cores shared by
four workers: measured on 2026-12-07, a third of the suite's CPU went to processes starting.

So each pytest worker keeps a *zygote*: a Python (``python -m tests.warm SOCKET``) that
imports the command line and the modules its commands load, once, then waits. For each
command it forks a child, which takes the command's standard streams, working directory,
environment and argv and runs what the ``istmo`` console script runs,
``clients.cli.main``: a process of its own (its own pid, exit status and output), the same
code, without the start. Commands that keep running (``istmo up``, relays, witnesses) and
the tests about the console script itself (``test_cli_errors``, the docs' examples) still
start the real script in a fresh interpreter. ``ISTMO_TEST_WARM=0`` makes every command do so.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import locale
import os
import pkgutil
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

__all__ = ["WarmPopen", "run_istmo", "start_istmo"]

_ROOT = Path(__file__).resolve().parents[1]
_MAX_REQUEST = 1 << 20
_START_WITHIN_S = 120.0  # the zygote's imports, on a loaded machine


def warm_enabled() -> bool:
    return os.environ.get("ISTMO_TEST_WARM", "1") != "0"


def run_istmo(
    argv: Sequence[str],
    *,
    input: str | None = None,  # as subprocess.run names it
    timeout: float = 60,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(argv, capture_output=True, text=True, ...)`` for an ``istmo``
    command (``argv[0]`` the console script), from this worker's zygote.

    Standard input is ``input``, or empty. Raises ``subprocess.TimeoutExpired`` after
    killing the command when it outlives ``timeout``, as ``subprocess.run`` does.
    """
    if not warm_enabled():
        return subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input if input is not None else "",
            env=None if env is None else dict(env),
            cwd=cwd,
            check=False,
        )
    request = {
        "argv": [str(a) for a in argv],
        "env": dict(os.environ if env is None else env),
        "cwd": str(cwd if cwd is not None else Path.cwd()),
    }
    return _Zygote.get().run(request, input or "", timeout)


class _Zygote:
    """This worker's zygote process and the socket it listens on."""

    _this: _Zygote | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.path = tempfile.mkdtemp(prefix="istmo-warm-") + "/z.sock"
        self.log = Path(self.path).with_name("zygote.log")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.warm", self.path],
                cwd=_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                # Its children's stdout and stderr are the zygote's Python objects on new
                # descriptors: unbuffered, so that a long-running command's lines (``istmo
                # up``'s "ready") reach its log as they are printed.
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        atexit.register(self.close)
        deadline = time.monotonic() + _START_WITHIN_S
        while not Path(self.path).exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"the tests' zygote did not start: {self.log.read_text()}")
            time.sleep(0.05)

    def close(self) -> None:
        """Stop the zygote (its running children are killed with it) and remove its socket."""
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        shutil.rmtree(Path(self.path).parent, ignore_errors=True)

    @classmethod
    def get(cls) -> _Zygote:
        with cls._lock:
            if cls._this is None or cls._this.proc.poll() is not None:
                cls._this = cls()
            return cls._this

    def fork(self, request: dict[str, object], fds: Sequence[int]) -> tuple[_Lines, int]:
        """Have a child run ``request`` on ``fds`` (its stdin, stdout, stderr): the
        connection its exit status will come on, and its pid."""
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lines = _Lines(conn)
        try:
            conn.connect(self.path)
            payload = json.dumps(request).encode()
            socket.send_fds(conn, [len(payload).to_bytes(4, "big") + payload], list(fds))
            pid = int(lines.next() or b"0")
        except BaseException:
            conn.close()
            raise
        if pid <= 0:
            conn.close()
            raise RuntimeError(
                f"the zygote did not start {request['argv']}: {self.log.read_text()}"
            )
        return lines, pid

    def run(
        self, request: dict[str, object], text_in: str, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        argv = request["argv"]
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            lines, pid = self.fork(request, (in_r, out_w, err_w))
        except BaseException:
            for fd in (in_w, out_r, err_r):
                os.close(fd)
            raise
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        try:
            chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
            pumps = [threading.Thread(target=_drain, args=(fd, chunks[fd])) for fd in chunks]
            pumps.append(threading.Thread(target=_feed, args=(in_w, text_in.encode())))
            for t in pumps:
                t.start()
            try:
                line = lines.next(timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                lines.next()
                for t in pumps:
                    t.join()
                raise subprocess.TimeoutExpired(
                    argv, timeout, output=_text(chunks[out_r]), stderr=_text(chunks[err_r])
                ) from None
        finally:
            lines.conn.close()
        for t in pumps:
            t.join()
        if not line:
            raise RuntimeError(f"the tests' zygote lost {argv}: {self.log.read_text()}")
        return subprocess.CompletedProcess(
            argv, int(line), _text(chunks[out_r]), _text(chunks[err_r])
        )


class WarmPopen:
    """A long-running ``istmo`` command started by the zygote, as much of
    ``subprocess.Popen`` as the tests use: ``pid``, ``returncode``, ``poll``, ``wait``,
    ``send_signal``, ``terminate``, ``kill``."""

    def __init__(self, args: list[str], lines: _Lines, pid: int) -> None:
        self.args, self.pid, self._lines = args, pid, lines
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            with contextlib.suppress(TimeoutError):
                self._status(0.0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            try:
                self._status(timeout)
            except TimeoutError:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0) from None
        assert self.returncode is not None
        return self.returncode

    def _status(self, timeout: float | None) -> None:
        line = self._lines.next(timeout)
        self._lines.conn.close()
        if not line:
            raise RuntimeError(f"the tests' zygote lost {self.args} (pid {self.pid})")
        self.returncode = int(line)

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def start_istmo(
    argv: Sequence[str], *, output: int, env: Mapping[str, str]
) -> subprocess.Popen[str] | WarmPopen:
    """``subprocess.Popen(argv, stdout=output, stderr=STDOUT, env=env)`` for a
    long-running ``istmo`` command (``istmo up``), from this worker's zygote; standard
    input empty."""
    if not warm_enabled():
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(env),
        )
    request = {"argv": [str(a) for a in argv], "env": dict(env), "cwd": str(Path.cwd())}
    stdin = os.open(os.devnull, os.O_RDONLY)
    try:
        lines, pid = _Zygote.get().fork(request, (stdin, output, output))
    finally:
        os.close(stdin)
    return WarmPopen(list(request["argv"]), lines, pid)


class _Lines:
    """Lines read off a socket, each within a time limit."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn, self.buffer = conn, b""

    def next(self, timeout: float | None = None) -> bytes:
        """The next line (b"" at the end). Raises TimeoutError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            self.conn.settimeout(left)  # 0.0: what has come, without waiting
            try:
                chunk = self.conn.recv(4096)
            except BlockingIOError:
                raise TimeoutError from None
            if not chunk:
                line, self.buffer = self.buffer, b""
                return line
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line


def _drain(fd: int, into: list[bytes]) -> None:
    with open(fd, "rb", buffering=0) as f:
        while chunk := f.read(65536):
            into.append(chunk)


def _feed(fd: int, data: bytes) -> None:
    with open(fd, "wb", buffering=0) as f, contextlib.suppress(BrokenPipeError):
        f.write(data)


def _text(chunks: list[bytes]) -> str:
    """As ``subprocess.run(text=True)`` decodes: the locale's encoding, universal newlines."""
    data = b"".join(chunks).decode(locale.getpreferredencoding(False))
    return data.replace("\r\n", "\n").replace("\r", "\n")


# ----------------------------------------------------------------------------- the zygote


class _Become(Exception):  # not an error: the child leaves the zygote's loop
    """Raised in a forked child: it leaves the zygote's loop to run its command."""

    def __init__(self, request: dict[str, object], fds: list[int]) -> None:
        self.request, self.fds = request, fds


def _preload() -> None:
    """What the commands import: the command line, every command module of the client and
    of the server, and the server parts those load when a command runs."""
    import broker.cli
    import clients.cli

    for module, _function, _commands in clients.cli._CLIENT_COMMANDS:
        importlib.import_module(module)
    importlib.import_module(clients.cli._REMOTE_AUDIT[0])
    for info in pkgutil.iter_modules(broker.cli.__path__, "broker.cli."):
        importlib.import_module(info.name)
    for module in ("runtime.datadir", "runtime.federation", "runtime.witnesses", "audit.sequencer"):
        importlib.import_module(f"broker.{module}")
    clients.cli.build_parser()


def _receive(conn: socket.socket) -> tuple[dict[str, object], list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(conn, 65536, 3)
    size = int.from_bytes(data[:4], "big")
    if not 0 < size <= _MAX_REQUEST or len(fds) != 3:
        raise ValueError("not a request of the tests' runner")
    body = bytearray(data[4:])
    while len(body) < size:
        more = conn.recv(size - len(body))
        if not more:
            raise ValueError("a request cut short")
        body += more
    return json.loads(bytes(body)), fds


def _serve(path: str) -> NoReturn:
    """Fork a child per request; tell each caller its child's pid, then its exit status.
    Ends when the worker that started it is gone."""
    parent = os.getppid()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path + ".new")
    server.listen(64)
    os.rename(path + ".new", path)  # the caller waits for the name: bound and listening
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno())
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
    signal.signal(signal.SIGTERM, _leave)
    waiting: dict[int, socket.socket] = {}
    try:
        _loop(parent, server, wake_r, wake_w, waiting)
    finally:
        for pid in waiting:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    raise SystemExit(0)


def _leave(_signum: int, _frame: object) -> NoReturn:
    raise SystemExit(0)


def _loop(
    parent: int,
    server: socket.socket,
    wake_r: socket.socket,
    wake_w: socket.socket,
    waiting: dict[int, socket.socket],
) -> None:
    sel = selectors.DefaultSelector()
    sel.register(server, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    while os.getppid() == parent:
        for key, _events in sel.select(timeout=1.0):
            if key.fileobj is wake_r:
                with contextlib.suppress(BlockingIOError):
                    while wake_r.recv(4096):
                        pass
                continue
            conn, _ = server.accept()
            try:
                request, fds = _receive(conn)
            except (OSError, ValueError) as exc:
                print(f"zygote: refused a request: {exc}", file=sys.stderr, flush=True)
                conn.close()
                continue
            pid = os.fork()
            if pid == 0:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                for sock in (conn, server, wake_r, wake_w, *waiting.values()):
                    sock.close()
                waiting.clear()  # the zygote's, not this child's, to end
                sel.close()
                raise _Become(request, fds)
            for fd in fds:
                os.close(fd)
            try:
                conn.sendall(f"{pid}\n".encode())
                waiting[pid] = conn
            except OSError:
                conn.close()
        while waiting:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = waiting.pop(pid, None)
            if conn is not None:
                with contextlib.suppress(OSError):
                    conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
                conn.close()


def _become(request: dict[str, object], fds: list[int]) -> NoReturn:
    """In the forked child: the command's streams, directory and environment, then what
    the console script runs."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.chdir(str(request["cwd"]))
    env = request["env"]
    assert isinstance(env, dict)
    os.environ.clear()
    os.environ.update(env)
    argv = request["argv"]
    assert isinstance(argv, list)
    sys.argv = [str(a) for a in argv]
    from clients.cli import main

    try:
        code = main(sys.argv[1:])
    except SystemExit as exc:  # as the interpreter reads an exit's code
        code = exc.code
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    # Python's own exit, but for tearing down the thousands of modules the zygote loaded
    # (a few tenths of a second a command, and nothing of the command's): what is still to
    # run, what is buffered, then out. An uncaught exception has already left, as usual.
    threading._shutdown()  # type: ignore[attr-defined]  # the interpreter's own join
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code or 0)


def _zygote_main(path: str) -> NoReturn:
    _preload()
    try:
        _serve(path)
    except _Become as become:
        request, fds = become.request, become.fds
    _become(request, fds)  # outside the handler: the command's tracebacks are its own


if __name__ == "__main__":
    _zygote_main(sys.argv[1])
