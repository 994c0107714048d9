"""``istmo admin``: suspend, reinstate and revoke agencies, revoke keys.

Run where the broker's data directory is. Each change is recorded with an audit event
and reaches a running stack at once: nats-server is reloaded without a restart, so a
suspended agency's connection is closed within milliseconds and a new one refused, while
its queued deliveries wait in its durable consumer until it is reinstated.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass

from broker.config import Settings
from broker.control import notify_running_stack
from broker.lifecycle import (
    CONTROL_DIRECTORY_SUBJECT,
    Status,
    revoke_signing_key,
    set_agency_status,
)
from broker.stack import Stack

__all__ = ["key_revoke_command", "status_command"]


_STATUS: dict[str, Status] = {"suspend": "suspended", "reinstate": "active", "revoke": "revoked"}


def _open(args: argparse.Namespace) -> Stack:
    stack = Stack(
        Settings.from_env(data_dir=args.data_dir, policy_dir=args.policy_dir), out=lambda _l: None
    )
    stack.prepare()
    return stack


def _tell(stack: Stack) -> None:
    if asyncio.run(notify_running_stack(stack, CONTROL_DIRECTORY_SUBJECT)):
        print("the running stack applied it")
    else:
        print("no running stack for this data directory: it applies at the next `istmo up`")


def status_command(args: argparse.Namespace) -> int:
    stack = _open(args)
    registry, _ = stack._opened()
    status: Status = _STATUS[args.status_action]
    before = set_agency_status(
        registry,
        args.agency,
        status,
        actor=f"local:{getpass.getuser()}",
        note=args.note,
    )
    print(f"{args.agency}: {before} -> {status}")
    _tell(stack)
    return 0


def key_revoke_command(args: argparse.Namespace) -> int:
    stack = _open(args)
    registry, _ = stack._opened()
    revoke_signing_key(registry, args.agency, args.kid, actor=f"local:{getpass.getuser()}")
    print(f"{args.agency}: key {args.kid} revoked")
    _tell(stack)
    return 0
