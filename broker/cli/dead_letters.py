"""``istmo admin dead-letters`` and ``istmo admin redrive``: what the broker could not deliver,
and delivering it again once the agency is fixed (``broker.relay.dead_letters`` does the work).
"""

from __future__ import annotations

import argparse
import json

from broker.cli._common import on_bus, open_data_dir, operator_name, running_nats_url
from broker.relay.dead_letters import REDRIVE_MAX, list_dead_letters, redrive
from schemas.errors import ConfigError

__all__ = ["list_command", "redrive_command"]


def list_command(args: argparse.Namespace) -> int:
    """``istmo admin dead-letters``: what is waiting for a redrive."""
    data = open_data_dir(args)
    try:
        letters = list_dead_letters(data.registry, agency=args.agency, include_redriven=args.all)
    finally:
        data.close()
    if args.json:
        for dl in letters:
            print(json.dumps(dl.to_json(), sort_keys=True))
        return 0
    if not letters:
        print("no dead letters" + (f" for {args.agency}" if args.agency else ""))
        return 0
    print(f"{'dead_seq':>8}  {'kind':7}  {'agency':16}  {'attempts':>8}  bulletin")
    for dl in letters:
        mark = " (redriven)" if dl.redriven else ""
        print(
            f"{dl.dead_seq if dl.dead_seq is not None else '-':>8}  {dl.kind:7}  "
            f"{dl.agency:16}  {dl.deliveries:>8}  {dl.bulletin_id or '?'}{mark}"
        )
    return 0


def redrive_command(args: argparse.Namespace) -> int:
    """``istmo admin redrive``: deliver dead letters again, once the agency is fixed."""
    if not args.dead_seq and not args.agency:
        raise ConfigError("name the dead letters: --dead-seq N (repeatable) or --agency ID")
    data = open_data_dir(args)
    try:
        pending = list_dead_letters(data.registry, agency=args.agency)
        if args.dead_seq:
            wanted = set(args.dead_seq)
            unknown = wanted - {dl.dead_seq for dl in pending}
            if unknown:
                raise ConfigError(
                    "no pending dead letter with dead_seq "
                    + ", ".join(str(n) for n in sorted(unknown))
                    + " (see `istmo admin dead-letters --all`)"
                )
            pending = [dl for dl in pending if dl.dead_seq in wanted]
        pending = pending[:REDRIVE_MAX]
        url = running_nats_url(data, args.nats_url)
        outcomes = on_bus(
            data, url, lambda js: redrive(js, data.registry, pending, actor=operator_name())
        )
    finally:
        data.close()
    for dl, outcome in outcomes:
        print(f"{dl.dead_seq}\t{dl.kind}\t{dl.agency}\t{dl.bulletin_id or '?'}\t{outcome}")
    print(f"{sum(1 for _, o in outcomes if o == 'redriven')} of {len(outcomes)} redriven")
    return 1 if any(o == "copy_missing" for _, o in outcomes) else 0
