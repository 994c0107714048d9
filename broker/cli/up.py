"""``istmo up``, ``istmo relay`` and ``istmo sequencer``: run the broker's processes."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from broker.cli._common import server_parts
from broker.config import Settings
from broker.runtime.stack import Stack, read_stack_file
from broker.runtime.statenodes import parse_leaves
from schemas.errors import ConfigError

__all__ = ["relay_command", "sequencer_command", "up_command"]


def up_command(args: argparse.Namespace) -> int:

    logging.getLogger("istmo").setLevel(logging.INFO)
    settings = Settings.from_env(
        data_dir=args.data_dir,
        nats_port=args.nats_port,
        nats_http_port=args.nats_http_port,
        api_port=args.api_port,
        public_url=args.public_url,
        nats_server=args.nats_server,
        policy_dir=args.policy_dir,
        nats_auth=args.nats_auth,
    )
    join = _nats_urls(args.join, None) if args.join else []
    if join and args.cluster != 1:
        raise ConfigError("--join and --cluster exclude each other: the NATS to join is running")
    stack = Stack(
        settings,
        cluster=args.cluster,
        cluster_port=args.cluster_port,
        join=join,
        stream_replicas=args.stream_replicas,
        leaves=parse_leaves(args.leaves) if args.leaves else (),
        leaf_port=args.leaf_port,
    )
    stack.settles_heap = True
    stack.claim()  # lock, ports, a stale nats-server: before anything is written
    # A region's directory is its administrators', never the demo; the directory itself is
    # built while nats-server starts.
    stack.prepare(demo=not join, directory_later=True)
    witnesses = server_parts("runtime.witnesses")
    local = None
    if args.witnesses:
        logging.getLogger("istmo.witness").setLevel(logging.WARNING)  # refusals only
        local = witnesses.start_local_witnesses(settings, args.witnesses, args.witness_quorum)
    elif args.witness_quorum is not None:
        raise ConfigError("--witness-quorum needs --witnesses N")
    elif witnesses.forget_local_witnesses(settings):
        print("witnesses none (removed the local witnesses file of an earlier --witnesses)")
    try:
        code = _run(
            lambda stop: stack.up(
                stop, with_relay=not args.no_relay, with_sequencer=not args.no_sequencer
            )
        )
    finally:
        if local is not None:
            local.stop()
    print("istmo: stopped cleanly")
    return code


def relay_command(args: argparse.Namespace) -> int:
    port = args.metrics_port
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(f"--metrics-port {port} is not a TCP port")
    settings = Settings.from_env(data_dir=args.data_dir, policy_dir=args.policy_dir)
    urls = _nats_urls(args.nats_url, read_stack_file(settings.data_dir))
    stack = Stack(settings)
    stack.settles_heap = True
    stack.prepare(demo=False)
    return _run(lambda stop: stack.relay_only(stop, urls, metrics_port=port))


def _nats_urls(given: str | None, stack_file: dict[str, Any] | None) -> list[str]:
    """``--nats-url`` (comma-separated for a cluster), else every URL the running stack
    recorded for this data directory.

    Raises:
        ConfigError: neither is there.
    """
    if given:
        urls = [u.strip() for u in given.split(",") if u.strip()]
    else:
        info = stack_file or {}
        recorded = info.get("nats_urls") or [info.get("nats_url")]
        urls = [u for u in recorded if isinstance(u, str)]
    if not urls or len(urls) > 16:
        raise ConfigError(
            "no stack running for this data directory",
            hint="start `istmo up`, or pass --nats-url",
        )
    return urls


def sequencer_command(args: argparse.Namespace) -> int:
    parts = server_parts("audit.sequencer")
    if not 1 <= args.batch <= 100_000:
        raise ConfigError(f"--batch {args.batch} is outside 1..100000")
    settings = Settings.from_env(data_dir=args.data_dir)
    parts.require_database(settings)
    limits = parts.SequencerLimits(batch_entries=args.batch)
    urls: list[str] = []
    if not args.offline:
        running = read_stack_file(settings.data_dir)
        if args.nats_url or running:
            urls = _nats_urls(args.nats_url, running)

    async def run(stop: asyncio.Event) -> None:
        if not urls:
            print("sequencer: no NATS; holding the file lock of this data directory")
            await parts.run_in_stack(settings, stop, print, limits=limits, standby=args.standby)
            return
        nc = await parts.connect_broker(urls, settings.broker_dir)
        try:
            await parts.run_in_stack(
                settings, stop, print, nc=nc, replicas=None, limits=limits, standby=args.standby
            )
        finally:
            await nc.close()

    code = _run(run)
    print("sequencer: stopped")
    return code


def _run(coro_factory: Callable[[asyncio.Event], Awaitable[Any]]) -> int:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await coro_factory(stop)

    asyncio.run(main())
    return 0
