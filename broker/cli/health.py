"""``istmo health``: the operational alarms of a running region, with exit codes a
monitor can act on (``broker.runtime.health`` measures)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from broker.audit.log import shared_log
from broker.cli._common import on_bus, open_data_dir
from broker.config import Settings
from broker.relay.dead_letters import list_dead_letters
from broker.runtime.health import (
    CANNOT_CHECK_EXIT,
    HealthReport,
    collect,
    database_checks,
    dead_letter_check,
    exit_code,
    rfi_check,
)
from broker.runtime.stackfile import read_stack_file
from broker.store.rfi_book import overdue_count
from schemas.errors import BusUnavailable, ConfigError

__all__ = ["health_command"]


def _print(report: HealthReport, show_all: bool) -> None:
    marks = {"ok": "ok   ", "warn": "WARN ", "alarm": "ALARM"}
    for c in report.checks:
        if show_all or c.level != "ok" or not c.name.startswith("retention."):
            print(f"{marks[c.level]}  {c.name:28}  {c.detail}")
    print(f"health: {report.level.upper()}")


def health_command(args: argparse.Namespace) -> int:
    """``istmo health``: 0 all ok, 1 a warning, 2 nothing could be measured (no stack
    here, bad settings), 3 an alarm."""
    try:
        return _health(args)
    except ConfigError as exc:
        print(f"istmo: {exc.diagnostics()}", file=sys.stderr)
        return CANNOT_CHECK_EXIT


def _health(args: argparse.Namespace) -> int:
    data_dir = Settings.from_env(data_dir=args.data_dir).data_dir
    running = read_stack_file(data_dir) or {}
    url = args.nats_url or running.get("nats_url")
    if not isinstance(url, str):  # checked before anything is opened (or created)
        raise ConfigError(
            f"no stack running for {data_dir}", hint="start `istmo up`, or pass --nats-url"
        )
    urls = [u for u in url.split(",") if u]
    known = running.get("nats_monitor_urls")
    given = [u for text in args.monitor_url or () for u in text.split(",") if u]
    monitors = given or (list(known) if isinstance(known, list) else [])
    data = open_data_dir(args)
    try:
        registry = data.registry
        pending, oldest = shared_log(data.settings.db_url).pending_since()
        local = database_checks(data.settings.db_url, pending, oldest, time.time())
        local.append(dead_letter_check(len(list_dead_letters(registry))))
        now = time.time()
        local.append(rfi_check(*overdue_count(registry, now=int(now)), now))
        agencies = [a.id for a in registry.agencies() if a.status != "revoked"]

        try:
            report = on_bus(
                data,
                urls,
                lambda js: collect(js, monitor_urls=monitors, agencies=agencies, local=local),
                reconnects=1,
            )
        except BusUnavailable as exc:  # NATS away: an alarm, with the rest still measured
            report = asyncio.run(
                collect(
                    None, monitor_urls=monitors, agencies=agencies, local=local, bus_error=str(exc)
                )
            )
    finally:
        data.close()
    if args.json:
        print(json.dumps(report.to_json(), sort_keys=True))
    else:
        _print(report, args.show_all)
    return exit_code(report.level)
