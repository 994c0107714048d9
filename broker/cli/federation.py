"""``istmo federation``: a partner link's key, its guard's verdict on one envelope, each
day's signed counts, the reconciliation of two sides' counts (ADR 32;
``broker.relay.federation`` does the work), and the link live: the sending side's guard
and the receiving side's ingest (ADR 33; ``broker.runtime.federation``)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from broker.audit import events
from broker.audit.sequencer import require_database
from broker.cli._common import open_data_dir, operator_name, running_nats_url, server_parts
from broker.clock import SYSTEM_CLOCK
from broker.config import Settings
from broker.files import signing_key_file
from broker.relay.federation import check_link_name, compare, day_counts, link_key, load_link
from broker.relay.guard import Link, decide
from broker.store.registry import Registry
from schemas.canonical import b64d, b64e
from schemas.errors import ConfigError, EnvelopeError
from schemas.federation import (
    MAX_COUNTS_BYTES,
    LinkCounts,
    encode_counts,
    parse_counts,
    sign_counts,
)
from schemas.keys import VerifyKey

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from broker.runtime.datadir import DataDir

__all__ = [
    "check_command",
    "counts_command",
    "guard_command",
    "ingest_command",
    "key_command",
    "reconcile_command",
]


@contextmanager
def _registry(args: argparse.Namespace) -> Iterator[tuple[Settings, Registry]]:
    settings = Settings.from_env(data_dir=args.data_dir)
    require_database(settings)
    registry = Registry(settings.db_url)
    try:
        yield settings, registry
    finally:
        registry.close()


def key_command(args: argparse.Namespace) -> int:
    """``istmo federation key``: this side's public link key (made on first use), or with
    ``--directory`` this region's directory key (the receiving side pins both)."""
    settings = Settings.from_env(data_dir=args.data_dir)
    require_database(settings)
    if args.directory:
        path = settings.broker_dir / "directory.key"
        if not path.exists():
            raise ConfigError(f"no directory key in {settings.broker_dir}: run `istmo up` first")
        dkey = signing_key_file(path, "directory key").verify_key
        print(f"directory {dkey.kid} {b64e(dkey.public)}")
        return 0
    key = link_key(settings.broker_dir, args.link).verify_key
    print(f"{args.link} {key.kid} {b64e(key.public)}")
    return 0


def _link_of(args: argparse.Namespace, data_dir: Path) -> Link:
    check_link_name(args.link)
    link = load_link(args.link_file or data_dir / "federation" / f"{args.link}.json")
    if link.name != args.link:
        raise ConfigError(f"the link file names link {link.name}, not {args.link}")
    return link


def _until_stopped() -> asyncio.Event:
    """An event Ctrl-C and SIGTERM set (in the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _until_ctrl_c(
    data: DataDir, url: str, serve: Callable[[NATS, asyncio.Event], Awaitable[None]]
) -> None:
    """Connect to NATS at ``url`` as the broker and run ``serve`` until Ctrl-C (or
    SIGTERM) sets its event; the connection is closed however it ends."""

    async def run() -> None:
        stop = _until_stopped()
        nc = await data.connect(url)
        try:
            await serve(nc, stop)
        finally:
            await nc.close()

    asyncio.run(run())


def guard_command(args: argparse.Namespace) -> int:
    """``istmo federation guard``: carry what the guard passes to the partner's ingest,
    until Ctrl-C."""
    federation = server_parts("runtime.federation")
    data = open_data_dir(args)
    try:
        link = _link_of(args, data.settings.data_dir)
        key = link_key(data.settings.broker_dir, link.name)
        url = running_nats_url(data, args.nats_url)
        if not 1 <= args.timeout <= 300:
            raise ConfigError(
                f"--timeout is {args.timeout:g} s; it must be 1 to 300 seconds", code="bad_timeout"
            )
        guard = federation.LinkGuard(
            data.registry, data.directory, link, key, args.partner, timeout_s=args.timeout
        )

        said = (
            f"guard of link {link.name}: {', '.join(link.agencies)} -> {args.partner}; Ctrl-C stops"
        )
        _until_ctrl_c(
            data, url, lambda nc, stop: guard.run(nc, stop, ready=lambda: print(said, flush=True))
        )
    finally:
        data.close()
    print(f"guard of link {link.name}: stopped ({guard.crossed} crossed, {guard.blocked} blocked)")
    return 0


def ingest_command(args: argparse.Namespace) -> int:
    """``istmo federation ingest``: take the partner's transfers over one link, until
    Ctrl-C."""
    federation = server_parts("runtime.federation")
    sender_key = _verify_key(args.sender_key, "--sender-key")
    directory_key = _verify_key(args.directory_key, "--directory-key")
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--listen {args.listen[:40]!r}: give HOST:PORT, like 127.0.0.1:8850")
    data = open_data_dir(args)
    try:
        link = _link_of(args, data.settings.data_dir)
        url = running_nats_url(data, args.nats_url)

        async def serve(nc: NATS, stop: asyncio.Event) -> None:
            app = federation.ingest_app(
                data.registry,
                link,
                nc=nc,
                sender_key=sender_key,
                directory_key=directory_key,
                allowed_hosts={"localhost", "127.0.0.1", "::1", host, *args.allow_host},
            )
            path = federation.transfers_path(link.name)
            said = (
                f"ingest of link {link.name} on http://{host}:{port}{path} -> "
                f"{', '.join(link.agencies)}; Ctrl-C stops"
            )
            await federation.serve_ingest(
                app, host, int(port), stop, ready=lambda: print(said, flush=True)
            )

        _until_ctrl_c(data, url, serve)
    finally:
        data.close()
    print(f"ingest of link {link.name}: stopped")
    return 0


def check_command(args: argparse.Namespace) -> int:
    """``istmo federation check``: would the guard let ENVELOPE cross? Exit 0 if so, 1 if
    not; nothing is recorded or sent."""
    settings = Settings.from_env(data_dir=args.data_dir)
    link = _link_of(args, settings.data_dir)
    try:
        raw = args.envelope.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {args.envelope}") from exc
    d = decide(link, raw, now=SYSTEM_CLOCK.now_ms() // 1000)
    if d.passed:
        print(f"passes link {link.name} to {', '.join(d.to)}")
        return 0
    print(f"blocked at link {link.name}: {', '.join(d.reasons)}")
    return 1


def counts_command(args: argparse.Namespace) -> int:
    """``istmo federation counts``: this side's signed counts of a link for one day."""
    check_link_name(args.link)
    with _registry(args) as (settings, registry):
        counts = day_counts(registry, args.link, args.side, args.day)
        key = link_key(settings.broker_dir, args.link)
    try:
        signed = sign_counts(
            link=args.link,
            side=args.side,
            region=args.region,
            day=args.day,
            counts=counts,
            issued_at=SYSTEM_CLOCK.now_ms() // 1000,
            key=key,
        )
    except ValidationError as exc:
        field = ".".join(str(p) for p in exc.errors()[0]["loc"])
        raise ConfigError(f"cannot sign the counts: {field} is not valid") from exc
    raw = encode_counts(signed)
    if args.out is None:
        sys.stdout.write(raw.decode() + "\n")
        return 0
    args.out.write_bytes(raw + b"\n")
    print(
        f"{args.side} on link {args.link}, {args.day}: {signed.total} bulletins in "
        f"{len(signed.counts)} label sets, signed by {signed.kid} -> {args.out}"
    )
    return 0


def _read_counts(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(MAX_COUNTS_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}") from exc


def _verify_key(text: str, what: str) -> VerifyKey:
    parts = text.split()  # a bare key, or the line `istmo federation key` prints
    try:
        return VerifyKey(b64d(parts[-1] if parts else "", field=what, max_bytes=32))
    except EnvelopeError as exc:
        raise ConfigError(f"{what}: not an Ed25519 public key in base64 ({exc})") from exc


def reconcile_command(args: argparse.Namespace) -> int:
    """``istmo federation reconcile``: exit 0 when both sides' counts verify and agree;
    otherwise print every difference, record ``federation.mismatch`` and exit 1."""
    sent_key = _verify_key(args.sent_key, "--sent-key")
    received_key = _verify_key(args.received_key, "--received-key")
    problems: list[str] = []
    parsed: list[LinkCounts] = []
    for path, what in ((args.sent, "sent"), (args.received, "received")):
        try:
            parsed.append(parse_counts(_read_counts(path).rstrip(b"\n")))
        except EnvelopeError as exc:
            problems.append(f"the {what} side's counts file is not valid: {exc}")
    if not problems:
        problems = compare(parsed[0], sent_key, parsed[1], received_key)
    link = parsed[0].link if parsed else "unknown"
    day = parsed[0].day if parsed else "unknown"
    if not problems:
        c = parsed[0]
        print(
            f"link {c.link}, {c.day}: both sides count {c.total} bulletins in "
            f"{len(c.counts)} label sets: they agree"
        )
        return 0
    print(f"ALARM: link {link}, {day}: the two sides' counts differ", file=sys.stderr)
    for p in problems:
        print(f"  {p}", file=sys.stderr)
    with _registry(args) as (_settings, registry):
        registry.record(
            [],
            [
                events.federation_mismatch(
                    link, day, problems, actor=operator_name(), at=SYSTEM_CLOCK.now_ms()
                )
            ],
        )
    return 1
