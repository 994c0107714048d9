"""``tests/netns.py``: the pure pieces as tables, then one real namespace (root only): a
link that carries TCP, stops carrying it when cut, carries it again when healed, and
leaves nothing behind; the sweeper; the forwarder's delay and resets."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.netns import (
    Forwarder,
    Netns,
    leftovers,
    link_name,
    ns_name,
    parse_link_name,
    parse_ns_name,
    skip_reason,
    subnet,
    sweep_leftovers,
)

TOKEN = "0a1b2c3d"


@pytest.mark.parametrize(
    ("pid", "token", "name"),
    [(1234, TOKEN, "istmo-t-1234-0a1b2c3d"), (4194304, "ffffffff", "istmo-t-4194304-ffffffff")],
)
def test_namespace_names_round_trip(pid: int, token: str, name: str) -> None:
    assert ns_name(pid, token) == name
    assert parse_ns_name(name) == (pid, token)


@pytest.mark.parametrize(
    ("pid", "token"), [(0, TOKEN), (12, "0A1B2C3D"), (12, "0a1b2c3"), (12, "0a1b2c3d;x")]
)
def test_bad_namespace_names_are_refused(pid: int, token: str) -> None:
    with pytest.raises(ValueError, match="bad pid"):
        ns_name(pid, token)


@pytest.mark.parametrize(
    "name", ["istmo-t-12", "istmo-t-x-0a1b2c3d", "other-12-0a1b2c3d", "istmo-t-12-0a1b2c3d-x"]
)
def test_other_names_are_not_ours(name: str) -> None:
    assert parse_ns_name(name) is None


@pytest.mark.parametrize(
    ("index", "side", "name"), [(0, "h", "iv0a1b2c3d0h"), (1, "n", "iv0a1b2c3d1n")]
)
def test_link_names_fit_ifnamsiz(index: int, side: str, name: str) -> None:
    assert link_name(TOKEN, index, side) == name
    assert len(name) <= 15
    assert parse_link_name(name) == TOKEN


@pytest.mark.parametrize(("index", "side"), [(10, "h"), (-1, "h"), (0, "x")])
def test_bad_link_names_are_refused(index: int, side: str) -> None:
    with pytest.raises(ValueError, match="bad link"):
        link_name(TOKEN, index, side)


@pytest.mark.parametrize("name", ["eth0", "lo", "iv0a1b2c3d", "iv0a1b2c3d0x", "veth0a1b2c3d0h"])
def test_other_links_are_not_ours(name: str) -> None:
    assert parse_link_name(name) is None


@pytest.mark.parametrize(
    ("block", "ends"),
    [
        (0, ("198.18.0.1", "198.18.0.2")),
        (1, ("198.18.0.5", "198.18.0.6")),
        (64, ("198.18.1.1", "198.18.1.2")),
        (32767, ("198.19.255.253", "198.19.255.254")),
    ],
)
def test_subnets_are_slash_30s_of_the_testing_range(block: int, ends: tuple[str, str]) -> None:
    assert subnet(block) == ends


@pytest.mark.parametrize("block", [-1, 32768])
def test_subnets_stay_in_the_testing_range(block: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        subnet(block)


@pytest.mark.parametrize(
    ("namespaces", "links", "alive", "dead", "stale"),
    [
        ([], [], set(), [], []),
        # a live owner keeps its namespace and links; a dead one loses both
        (
            ["istmo-t-10-0a1b2c3d", "istmo-t-11-ffffffff"],
            ["iv0a1b2c3d0h", "ivffffffff0h", "ivffffffff1h"],
            {10},
            ["istmo-t-11-ffffffff"],
            ["ivffffffff0h", "ivffffffff1h"],
        ),
        # a link whose namespace is gone altogether; names not ours are never touched
        (["netns-of-someone", "istmo-t-10-0a1b2c3d"], ["eth0", "iv12345678" + "0h"], {10}, [],
         ["iv123456780h"]),
    ],
)  # fmt: skip
def test_leftovers_are_only_those_of_dead_test_processes(
    namespaces: list[str], links: list[str], alive: set[int], dead: list[str], stale: list[str]
) -> None:
    assert leftovers(namespaces, links, alive) == (dead, stale)


def test_exec_argv_and_wrapper(tmp_path: Path) -> None:
    ns = Netns(token=TOKEN)
    assert ns.exec_argv(["nats-server", "-c", "x.conf"]) == [
        "ip", "netns", "exec", f"istmo-t-{os.getpid()}-{TOKEN}", "nats-server", "-c", "x.conf",
    ]  # fmt: skip
    script = ns.wrapper(Path("/usr/bin/nats-server"), tmp_path)
    assert script.read_text().splitlines()[1] == (
        f'exec ip netns exec istmo-t-{os.getpid()}-{TOKEN} /usr/bin/nats-server "$@"'
    )
    assert script.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize(
    ("delay", "jitter", "drop"), [(-0.1, 0.0, 0.0), (0.1, 0.2, 0.0), (0.0, 0.0, 1.0)]
)
def test_forwarder_refuses_bad_settings(delay: float, jitter: float, drop: float) -> None:
    with pytest.raises(ValueError, match="need"):
        Forwarder("127.0.0.1", ("127.0.0.1", 1), delay_s=delay, jitter_s=jitter, drop=drop)


def test_forwarder_holds_within_the_jitter() -> None:
    f = Forwarder("127.0.0.1", ("127.0.0.1", 1), delay_s=0.1, jitter_s=0.05)
    holds = [f.hold() for _ in range(1000)]
    assert 0.05 <= min(holds) < 0.06
    assert 0.14 < max(holds) <= 0.15


async def echo_server() -> asyncio.Server:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(echo, "127.0.0.1", 0)


async def test_forwarder_delays_in_order_and_resets() -> None:
    server = await echo_server()
    port = server.sockets[0].getsockname()[1]
    slow = Forwarder("127.0.0.1", ("127.0.0.1", port), delay_s=0.05, jitter_s=0.04)
    await slow.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", slow.port)
        t0 = time.monotonic()
        for i in range(20):
            writer.write(f"{i:02d}".encode())
            await writer.drain()
        got = await reader.readexactly(40)
        assert got == b"".join(f"{i:02d}".encode() for i in range(20))  # order kept
        assert time.monotonic() - t0 >= 0.02  # two holds of at least 10 ms each
        writer.close()
    finally:
        await slow.close()
    lossy = Forwarder("127.0.0.1", ("127.0.0.1", port), drop=0.5)
    await lossy.start()
    try:
        resets = 0
        for _ in range(10):
            reader, writer = await asyncio.open_connection("127.0.0.1", lossy.port)
            writer.write(b"ping")
            try:
                await asyncio.wait_for(reader.readexactly(4), 5)
            except (asyncio.IncompleteReadError, ConnectionError):
                resets += 1
            writer.close()
        assert resets == lossy.dropped
        assert 0 < resets < 10
    finally:
        await lossy.close()
        server.close()


# ---------------------------------------------------------------- a real namespace (root)
def _needs_netns() -> None:
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


def _connects(ns: Netns, host: str, port: int) -> bool:
    """A TCP connect from inside ``ns`` to ``host:port`` succeeds within 1 s."""
    code = (
        f"import socket,sys\ns=socket.create_connection(({host!r},{port}),timeout=1)\ns.close()\n"
    )
    done = subprocess.run(ns.exec_argv([sys.executable, "-c", code]), capture_output=True,
                          timeout=20, check=False)  # fmt: skip
    return done.returncode == 0


async def test_a_namespace_cut_healed_and_cleaned_up() -> None:
    _needs_netns()
    with Netns(links_wanted=2) as ns:
        lan, uplink = ns.links
        assert ns.name in _ip("netns", "list")
        listener = await asyncio.start_server(lambda _r, w: w.close(), uplink.host_addr, 0)
        port = listener.sockets[0].getsockname()[1]
        sleeper = await asyncio.create_subprocess_exec(*ns.exec_argv(["sleep", "600"]))
        try:
            assert await asyncio.to_thread(_connects, ns, uplink.host_addr, port)
            ns.cut(1)
            assert not ns.carrier(1)
            assert ns.carrier(0)
            assert not await asyncio.to_thread(_connects, ns, uplink.host_addr, port)
            ns.heal(1)
            assert await asyncio.to_thread(_connects, ns, uplink.host_addr, port)
            assert sleeper.pid in ns.pids()  # ip netns exec execs: the same pid
            assert lan.host_if in _ip("-o", "link", "show")
        finally:
            listener.close()
    assert await asyncio.wait_for(sleeper.wait(), 10) == -9  # close() killed what ran inside
    assert ns.name not in _ip("netns", "list")
    links = _ip("-o", "link", "show")
    assert lan.host_if not in links
    assert uplink.host_if not in links
    ns.close()  # idempotent


def test_the_sweeper_removes_only_what_dead_processes_left() -> None:
    _needs_netns()
    alive = {int(p) for p in os.listdir("/proc") if p.isdigit()}
    dead_pid = next(p for p in range(999_999_999, 0, -1) if p not in alive)
    with Netns() as mine:
        orphan = ns_name(dead_pid, "deadbeef")
        _ip("netns", "add", orphan)
        stray = link_name("deadbee0", 0, "h")
        _ip("link", "add", stray, "type", "veth", "peer", "name", link_name("deadbee0", 0, "n"))
        dead, stale = sweep_leftovers()
        assert orphan in dead
        assert stray in stale
        assert mine.name not in dead
        assert mine.links[0].host_if not in stale
        assert orphan not in _ip("netns", "list")
        assert stray not in _ip("-o", "link", "show")
        assert mine.name in _ip("netns", "list")
