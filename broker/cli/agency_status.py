"""``istmo admin suspend | reinstate | revoke``: an agency's status, changed in the registry
with its audit event and told to the running stack at once.

Only the registry and the broker's NATS user are opened (``broker.runtime.broker_user``):
the rest of the data directory (the policy engine, the directory service, the API's token
keys) would cost most of a second of imports before a suspension takes effect (issue 16).
A registry still empty gets the demo directory first, as every ``istmo admin`` command
gives it (``DataDir``).
"""

from __future__ import annotations

import argparse
import asyncio

from broker.cli._common import operator_name, server_parts
from broker.config import Settings
from broker.directory.lifecycle import CONTROL_DIRECTORY_SUBJECT, set_agency_status
from broker.runtime.control import notify_running_stack
from broker.store.registry import Registry
from schemas.directory import Status

__all__ = ["status_command", "tell_running_stack"]

_STATUS: dict[str, Status] = {"suspend": "suspended", "reinstate": "active", "revoke": "revoked"}


def status_command(args: argparse.Namespace) -> int:
    settings = Settings.from_env(data_dir=args.data_dir, policy_dir=args.policy_dir)
    registry = Registry(settings.db_url, broker_dir=settings.broker_dir)
    if registry.is_empty():
        registry.close()
        registry = (
            server_parts("runtime.datadir")
            .DataDir.open(settings, demo=True, out=lambda _line: None)
            .registry
        )
    status = _STATUS[args.status_action]
    try:
        before = set_agency_status(
            registry, args.agency, status, actor=operator_name(), note=args.note
        )
    finally:
        registry.close()
    print(f"{args.agency}: {before} -> {status}")
    tell_running_stack(settings)
    return 0


def tell_running_stack(settings: Settings) -> None:
    """Tell the stack running for ``settings``' data directory that its directory
    changed, and say whether one did."""
    if asyncio.run(notify_running_stack(settings, CONTROL_DIRECTORY_SUBJECT)):
        print("the running stack applied it")
    else:
        print("no running stack for this data directory: it applies at the next `istmo up`")
