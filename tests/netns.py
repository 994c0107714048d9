"""Real partitions for tests: a network namespace joined to this one by veth pairs, a link
cut with ``ip link set ... down`` (its namespace end), and a TCP forwarder that can add
delay and drop connections (there is no netem module here).

    with Netns(links=2) as ns:                 # link 0: the state's LAN, link 1: its uplink
        argv = ns.exec_argv(["nats-server", "-c", conf])   # runs inside the namespace
        ns.cut(1)                              # the uplink's host end down
        ns.heal(1)

Every namespace is ``istmo-t-<pid>-<token>`` and every link ``iv<token><n><side>``: a
``Netns`` removes its own on exit (context manager, and ``atexit`` if the test process
dies before that), and the first one a process creates sweeps what earlier runs left: the
namespaces (and their processes) and links of processes that no longer run. Other live
test processes' namespaces (xdist workers) are left alone.

Addresses come from 198.18.0.0/15 (RFC 2544, set aside for testing networks), one /30 per
link, on interfaces that exist only inside this machine: traffic never leaves it.

Needs root and ``ip netns``; ``skip_reason()`` says why not, for ``pytest.skip``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ipaddress
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Forwarder",
    "Link",
    "Netns",
    "leftovers",
    "link_name",
    "ns_name",
    "parse_link_name",
    "parse_ns_name",
    "skip_reason",
    "subnet",
    "sweep_leftovers",
]

NS_PREFIX = "istmo-t-"
LINK_PREFIX = "iv"
_TOKEN = re.compile(r"[0-9a-f]{8}")
_NS_RE = re.compile(rf"{re.escape(NS_PREFIX)}(\d{{1,10}})-([0-9a-f]{{8}})")
_LINK_RE = re.compile(rf"{LINK_PREFIX}([0-9a-f]{{8}})\d[hn]")
_TEST_NET = ipaddress.IPv4Network("198.18.0.0/15")
_BLOCKS = _TEST_NET.num_addresses // 4  # /30 blocks
_IFNAMSIZ = 15  # Linux: an interface name has at most 15 characters
_CMD_TIMEOUT_S = 20.0


# ---------------------------------------------------------------------------- pure pieces
def ns_name(pid: int, token: str) -> str:
    """The namespace of test process ``pid``: ``istmo-t-<pid>-<token>``."""
    if pid <= 0 or _TOKEN.fullmatch(token) is None:
        raise ValueError(f"bad pid {pid} or token {token!r}")
    return f"{NS_PREFIX}{pid}-{token}"


def parse_ns_name(name: str) -> tuple[int, str] | None:
    """``(pid, token)`` of one of our namespaces; None for any other name."""
    m = _NS_RE.fullmatch(name)
    return (int(m.group(1)), m.group(2)) if m else None


def link_name(token: str, index: int, side: str) -> str:
    """Link ``index`` of namespace ``token``: side ``h`` (this namespace) or ``n`` (in it)."""
    if _TOKEN.fullmatch(token) is None or not 0 <= index <= 9 or side not in ("h", "n"):
        raise ValueError(f"bad link {token!r} {index} {side!r}")
    name = f"{LINK_PREFIX}{token}{index}{side}"
    assert len(name) <= _IFNAMSIZ
    return name


def parse_link_name(name: str) -> str | None:
    """The token of one of our links; None for any other name."""
    m = _LINK_RE.fullmatch(name)
    return m.group(1) if m else None


def subnet(block: int) -> tuple[str, str]:
    """``(host end, namespace end)`` of /30 number ``block`` of 198.18.0.0/15."""
    if not 0 <= block < _BLOCKS:
        raise ValueError(f"block {block} is outside 198.18.0.0/15")
    base = int(_TEST_NET.network_address) + 4 * block
    return str(ipaddress.IPv4Address(base + 1)), str(ipaddress.IPv4Address(base + 2))


def leftovers(
    namespaces: list[str], links: list[str], alive: set[int]
) -> tuple[list[str], list[str]]:
    """What to remove: our namespaces whose process is not in ``alive``, and our links
    whose namespace is not one of the live ones (other names are never touched)."""
    live_tokens: set[str] = set()
    dead: list[str] = []
    for name in namespaces:
        parsed = parse_ns_name(name)
        if parsed is None:
            continue
        pid, token = parsed
        if pid in alive:
            live_tokens.add(token)
        else:
            dead.append(name)
    stale = [n for n in links if (t := parse_link_name(n)) is not None and t not in live_tokens]
    return dead, stale


# ---------------------------------------------------------------------------- commands
def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=_CMD_TIMEOUT_S, check=False
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


_skip: str | None = None
_probed = False


def skip_reason() -> str | None:
    """None when namespaces and veth pairs can be made here, else why not (probed once:
    a namespace is created and removed)."""
    global _skip, _probed
    if _probed:
        return _skip
    _probed = True
    if os.geteuid() != 0:
        _skip = "real partitions need root (ip netns, veth pairs)"
    elif shutil.which("ip") is None:
        _skip = "real partitions need iproute2's ip command"
    else:
        probe = ns_name(os.getpid(), secrets.token_hex(4))
        try:
            made = _ip("netns", "add", probe, check=False)
            if made.returncode != 0:
                _skip = f"ip netns add is not allowed here: {made.stderr.strip()[:200]}"
        except (OSError, subprocess.TimeoutExpired) as exc:
            _skip = f"ip netns does not work here: {exc}"
        finally:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                _ip("netns", "delete", probe, check=False)
    return _skip


def _ns_pids(name: str) -> list[int]:
    done = _ip("netns", "pids", name, check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def _kill_all(name: str) -> None:
    """SIGKILL every process in namespace ``name`` and wait (10 s) for them to go."""
    deadline = time.monotonic() + 10
    while (pids := _ns_pids(name)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def _alive_pids() -> set[int]:
    return {int(p) for p in os.listdir("/proc") if p.isdigit()}


def sweep_leftovers() -> tuple[list[str], list[str]]:
    """Remove the namespaces and links that test processes no longer running left behind;
    returns what it removed."""
    names = [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line]
    links = [
        m.group(1)
        for line in _ip("-o", "link", "show").stdout.splitlines()
        if (m := re.match(r"\d+: ([^:@]+)", line))
    ]
    dead, stale = leftovers(names, links, _alive_pids())
    for name in dead:
        _kill_all(name)
        _ip("netns", "delete", name, check=False)
    for link in stale:
        _ip("link", "delete", link, check=False)
    return dead, stale


_swept = False


# ---------------------------------------------------------------------------- namespace
@dataclass
class Link:
    """One veth pair: ``host_if`` here at ``host_addr``, ``ns_if`` in the namespace at
    ``ns_addr`` (a /30)."""

    host_if: str
    ns_if: str
    host_addr: str
    ns_addr: str


@dataclass
class Netns:
    """A network namespace with ``links`` veth pairs to this one; removed on exit."""

    links_wanted: int = 1
    token: str = field(default_factory=lambda: secrets.token_hex(4))
    links: list[Link] = field(default_factory=list)
    _made: bool = False

    @property
    def name(self) -> str:
        return ns_name(os.getpid(), self.token)

    def exec_argv(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def wrapper(self, binary: Path, folder: Path) -> Path:
        """A script that runs ``binary`` with its arguments inside the namespace, for code
        that takes a binary's path (``NatsServer``)."""
        path = folder / f"{binary.name}-in-{self.token}"
        path.write_text(f'#!/bin/sh\nexec ip netns exec {self.name} {binary} "$@"\n')
        path.chmod(0o700)
        return path

    def _free_blocks(self, count: int) -> list[int]:
        taken = _ip("-o", "-4", "addr", "show").stdout
        blocks: list[int] = []
        while len(blocks) < count:
            block = random.randrange(_BLOCKS)
            host, ns = subnet(block)
            if block not in blocks and f" {host}/" not in taken and f" {ns}/" not in taken:
                blocks.append(block)
        return blocks

    def __enter__(self) -> Netns:
        global _swept
        reason = skip_reason()
        if reason is not None:
            raise RuntimeError(reason)
        if not _swept:
            _swept = True
            sweep_leftovers()
        atexit.register(self.close)
        _ip("netns", "add", self.name)
        self._made = True
        try:
            _ip("-n", self.name, "link", "set", "lo", "up")
            for i, block in enumerate(self._free_blocks(self.links_wanted)):
                host_addr, ns_addr = subnet(block)
                link = Link(link_name(self.token, i, "h"), link_name(self.token, i, "n"),
                            host_addr, ns_addr)  # fmt: skip
                _ip("link", "add", link.host_if, "type", "veth", "peer", "name", link.ns_if)
                self.links.append(link)
                _ip("link", "set", link.ns_if, "netns", self.name)
                _ip("addr", "add", f"{host_addr}/30", "dev", link.host_if)
                _ip("-n", self.name, "addr", "add", f"{ns_addr}/30", "dev", link.ns_if)
                _ip("link", "set", link.host_if, "up")
                _ip("-n", self.name, "link", "set", link.ns_if, "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill what runs inside, remove the links and the namespace (idempotent)."""
        if not self._made:
            return
        self._made = False
        _kill_all(self.name)
        for link in self.links:
            _ip("link", "delete", link.host_if, check=False)
        _ip("netns", "delete", self.name, check=False)
        atexit.unregister(self.close)

    def carrier(self, i: int) -> bool:
        """Both ends of link ``i`` have their carrier (it passes traffic)."""
        link = self.links[i]
        here = _ip("-o", "link", "show", link.host_if).stdout
        there = _ip("-n", self.name, "-o", "link", "show", link.ns_if).stdout
        return "LOWER_UP" in here and "LOWER_UP" in there

    def cut(self, i: int) -> None:
        """Link ``i`` down: ``ip link set`` its namespace end down. That end loses its
        route to the other side (the namespace has no default route: sends fail there),
        and the host end loses its carrier but keeps its route, so packets for the
        namespace are dropped at the veth rather than routed anywhere else."""
        _ip("-n", self.name, "link", "set", self.links[i].ns_if, "down")

    def heal(self, i: int, timeout: float = 10.0) -> None:
        """Link ``i`` up again; returns once both ends have their carrier."""
        _ip("-n", self.name, "link", "set", self.links[i].ns_if, "up")
        deadline = time.monotonic() + timeout
        while not self.carrier(i):
            if time.monotonic() > deadline:
                raise RuntimeError(f"link {self.links[i].host_if} has no carrier after heal")
            time.sleep(0.02)

    def pids(self) -> list[int]:
        return _ns_pids(self.name)


# ---------------------------------------------------------------------------- forwarder
class Forwarder:
    """A TCP forwarder from ``listen_host`` (port picked) to ``target``: what a leaf node
    in a namespace dials to reach a hub that listens on loopback.

    ``delay_s`` ± ``jitter_s`` holds each chunk before it is passed on (per direction,
    order kept); ``drop`` is the chance that a chunk ends its connection instead (both
    sides reset: what a lossy link does to a TCP stream, short of corrupting it). ``rng``
    makes the drops repeatable."""

    def __init__(
        self,
        listen_host: str,
        target: tuple[str, int],
        *,
        delay_s: float = 0.0,
        jitter_s: float = 0.0,
        drop: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        if delay_s < 0 or jitter_s < 0 or jitter_s > delay_s or not 0 <= drop < 1:
            raise ValueError("need 0 <= jitter_s <= delay_s and 0 <= drop < 1")
        self.listen_host = listen_host
        self.target = target
        self.delay_s, self.jitter_s, self.drop = delay_s, jitter_s, drop
        self.rng = rng or random.Random(0)
        self.port = 0
        self.connections = 0
        self.dropped = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def hold(self) -> float:
        """How long one chunk waits: ``delay_s`` ± ``jitter_s``."""
        if not self.delay_s:
            return 0.0
        return max(0.0, self.delay_s + self.rng.uniform(-self.jitter_s, self.jitter_s))

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.listen_host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        writers = [writer]
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            writers.append(up_writer)
            self.connections += 1
            pipes = [
                asyncio.create_task(self._pipe(reader, up_writer)),
                asyncio.create_task(self._pipe(up_reader, writer)),
            ]
            # Either direction ending ends the connection (as a reset link does).
            _, pending = await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            for p in pending:
                p.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        except OSError:
            pass
        finally:
            for w in writers:
                w.transport.abort()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def send() -> None:
            while (item := await queue.get()) is not None:
                due, data = item
                if (wait := due - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(send())
        try:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await reader.read(65536):
                    if self.drop and self.rng.random() < self.drop:
                        self.dropped += 1
                        return
                    await queue.put((time.monotonic() + self.hold(), data))
                    if sender.done():
                        return
            await queue.put(None)
            with contextlib.suppress(OSError, ConnectionError):
                await sender
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError, ConnectionError):
                await sender

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=10)
