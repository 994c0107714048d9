"""``istmo admin group``: define community groups and name their managers (ADR 18).

A group gathers the active agencies of a jurisdiction (or all), following a topic (or
any), with at least a clearance; its manager, an agency, makes and hands out its epoch keys
(``istmo groups rotate --as <manager>``, on the manager's own machine). The broker never
holds an epoch key.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from broker.cli._common import operator_name
from broker.config import Settings
from broker.directory.groups import GroupRule, define, roster
from broker.directory.lifecycle import CONTROL_DIRECTORY_SUBJECT
from broker.runtime.control import notify_running_stack
from broker.runtime.datadir import DataDir
from broker.store.groups import current_epochs, group_rows
from schemas.labels import Classification

__all__ = ["group_add_command", "group_list_command"]


def _open(args: argparse.Namespace) -> DataDir:
    settings = Settings.from_env(data_dir=args.data_dir, policy_dir=args.policy_dir)
    return DataDir.open(settings, demo=True, out=lambda _line: None)


def group_add_command(args: argparse.Namespace) -> int:
    data = _open(args)
    clearance = Classification(args.min_clearance).level if args.min_clearance else 0
    row = define(
        data.registry,
        name=args.name,
        manager=args.manager,
        jurisdiction=args.jurisdiction,
        topic=args.topic,
        min_clearance=clearance,
        actor=operator_name(),
        at=int(time.time() * 1000),
    )
    print(
        f"group {row.name}: managed by {row.manager}; its manager makes the first epoch with "
        f"`istmo groups rotate --as {row.manager}` (or keeps them current with --follow)"
    )
    if asyncio.run(notify_running_stack(data.settings, CONTROL_DIRECTORY_SUBJECT)):
        print("the running stack knows it")
    return 0


def group_list_command(args: argparse.Namespace) -> int:
    data = _open(args)
    directory = data.directory
    rows = group_rows(data.registry)
    epochs = current_epochs(data.registry)
    for r in rows:
        now = roster(
            GroupRule(r.name, r.manager, r.jurisdiction, r.topic, r.min_clearance), directory
        )
        cur = epochs.get(r.name)
        doc = {
            "name": r.name,
            "manager": r.manager,
            "jurisdiction": r.jurisdiction or "all",
            "topic": r.topic or "any",
            "min_clearance": r.min_clearance,
            "epoch": cur.epoch if cur else None,
            "members": len(cur.members) if cur else 0,
            "roster": len(now.members),
            "due": cur is None or cur.roster != now.digest,
        }
        if args.json:
            print(json.dumps(doc))
        else:
            state = "rotation due" if doc["due"] else "current"
            print(
                f"{r.name}: manager {r.manager}, {doc['jurisdiction']}, topic {doc['topic']}, "
                f"clearance >= {r.min_clearance}; epoch {doc['epoch'] or '-'} with "
                f"{doc['members']} members ({state}; roster {doc['roster']})"
            )
    if not rows:
        print("no groups: `istmo admin group add NAME --manager AGENCY`")
    return 0
