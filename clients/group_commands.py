"""``istmo groups rotate``: a group manager makes and hands out new epoch keys (ADR 18)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from typing import Any

from clients.agency_flags import add_agency_args, connect
from schemas.errors import IstmoError

__all__ = ["add_groups_parser"]

log = logging.getLogger("istmo.sdk")


async def _rotate(args: argparse.Namespace) -> int:
    client = await connect(args)
    async with client:
        while True:
            try:
                done = await client.rotate_groups(force=args.force)
            except IstmoError as exc:
                if not args.follow:
                    raise
                # The directory changed while posting (roster_changed), or the broker is
                # away: the next round tries again.
                log.warning("rotation not finished (%s); trying again", exc.code)
                done = []
            for r in done:
                if args.json:
                    print(json.dumps(r.__dict__), flush=True)
                elif r.rotated or not args.follow:
                    what = "new epoch" if r.rotated else "current"
                    print(f"{r.group}: epoch {r.epoch} ({what}), {r.members} members", flush=True)
            if not args.follow:
                return 0
            args.force = False
            await asyncio.sleep(args.every)


def add_groups_parser(sub: Any) -> None:
    """Add ``groups`` to the ``istmo`` sub-command parser."""
    p = sub.add_parser("groups", help="community group keys: for a group's manager agency (rotate)")
    cmds = p.add_subparsers(dest="groups_command", metavar="ACTION", required=True)
    c = cmds.add_parser(
        "rotate",
        help="make a new epoch key of each group you manage whose members changed",
        description=(
            "As the manager of community groups: for each group whose members, their keys "
            "or clearances changed since its current epoch (or that has none), make a new "
            "epoch key, seal it to every member with HPKE, sign it and hand it to the "
            "broker. Bulletins may use a group only at its current epoch, and only if every "
            "member may receive them. --follow keeps checking until Ctrl-C."
        ),
    )
    add_agency_args(c)
    c.add_argument("--force", action="store_true", help="a new epoch even if none is due")
    c.add_argument("--follow", action="store_true", help="keep rotating as members change")
    c.add_argument("--every", type=float, default=5.0, help="seconds between checks (5)")
    c.add_argument("--json", action="store_true", help="one JSON line per group")
    c.set_defaults(func=_rotate)
