"""``istmo reconcile``: find routed deliveries missing from the delivery stream and publish
them again from the archive (``broker.relay.reconcile`` does the work)."""

from __future__ import annotations

import argparse
import json

from broker.cli._common import on_bus, open_data_dir, operator_name, running_nats_url
from broker.clock import SYSTEM_CLOCK
from broker.relay.reconcile import MAX_BATCH, reconcile
from schemas.errors import ConfigError

__all__ = ["reconcile_command", "since_ms"]

_SPANS = {"m": 60, "h": 3600, "d": 86400}


def since_ms(text: str, now_ms: int) -> int:
    """The start of ``--since`` (``90m``, ``24h``, ``30d``) before ``now_ms``, in epoch ms.

    Raises:
        ConfigError: not a count and one of m, h, d.
    """
    if text[:-1].isdigit() and text[-1:] in _SPANS and len(text) <= 8:
        return now_ms - int(text[:-1]) * _SPANS[text[-1]] * 1000
    raise ConfigError(f"--since {text[:20]!r}: give a span like 90m, 24h or 30d")


def reconcile_command(args: argparse.Namespace) -> int:
    """``istmo reconcile``: exit 0 when nothing is missing afterwards, 1 otherwise."""
    data = open_data_dir(args)
    try:
        since = since_ms(args.since, SYSTEM_CLOCK.now_ms())
        if not 1 <= args.batch <= MAX_BATCH:
            raise ConfigError(f"--batch {args.batch} is outside 1..{MAX_BATCH}")
        url = running_nats_url(data, args.nats_url)

        report = on_bus(
            data,
            url,
            lambda js: reconcile(
                js,
                data.registry,
                since_ms=since,
                batch=args.batch,
                dry_run=args.dry_run,
                actor=operator_name(),
            ),
        )
    finally:
        data.close()
    if args.json:
        print(json.dumps(report.to_json(), sort_keys=True))
    else:
        print(
            f"routed {report.routed}, present {report.present}, missing {report.gaps} "
            f"(scanned {report.scanned} deliveries)"
        )
        if report.withdrawn or report.expired:
            print(
                f"left out on purpose: {report.withdrawn} of withdrawn bulletins, "
                f"{report.expired} of expired ones"
            )
        if not report.dry_run:
            print(
                f"republished {report.republished} ({report.republished_new_id} under a new "
                f"id), unrecoverable {report.unrecoverable}, left for the next run "
                f"{report.remaining}"
            )
    healed = report.gaps == report.republished and not report.dry_run
    return 0 if report.gaps == 0 or healed else 1
