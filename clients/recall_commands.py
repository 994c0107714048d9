"""``istmo recall``, and how ``istmo receive`` shows a withdrawal (ADR 15)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from clients.agency_flags import add_agency_args, connect
from clients.label_flags import bulletin_id
from clients.results import RecallResult, Withdrawn, iso_time, shown_time
from schemas.withdrawal import MAX_REASON_CHARS

__all__ = ["add_recall_parser", "recall_summary", "show_withdrawal"]


def show_withdrawal(w: Withdrawn, as_json: bool) -> None:
    """Print a withdrawal ``istmo receive`` was told of: a JSON line, or a few lines."""
    if as_json:
        print(json.dumps(w.to_json(), ensure_ascii=False), flush=True)
        return
    had = "you had it" if w.had_it else "it never reached you"
    print(f"── WITHDRAWN {w.id} by {w.originator} at {shown_time(w.withdrawn_at)} ({had})")
    print(f"   reason: {w.reason}\n", flush=True)


def recall_summary(r: RecallResult) -> str:
    """A few lines for a person: what the recall did."""
    lines = [f"{r.bulletin_id}: withdrawn at {shown_time(r.withdrawn_at)}"]
    if r.state != "done":
        lines.append(
            "  the broker is still removing copies and telling recipients; "
            "run `istmo recall` again to see the outcome"
        )
        return "\n".join(lines)
    lines.append(f"  removed before delivery ({len(r.removed)}): {', '.join(r.removed) or '-'}")
    lines.append(f"  sent the withdrawal ({len(r.notified)}): {', '.join(r.notified) or '-'}")
    if r.copies_kept:
        lines.append(
            f"  {r.copies_kept} undelivered copies could not be removed (a delivery stream "
            "made before recalls existed); those recipients' software drops them"
        )
    return "\n".join(lines)


async def _recall(args: argparse.Namespace) -> int:
    client = await connect(args)
    async with client:
        result = await client.recall(args.bulletin_id, reason=args.reason)
    if args.json:
        answer: dict[str, Any] = {
            "id": result.bulletin_id,
            "withdrawn_at": iso_time(result.withdrawn_at),
            "state": result.state,
            "removed": list(result.removed),
            "notified": list(result.notified),
            "copies_kept": result.copies_kept,
        }
        print(json.dumps(answer))
        return 0
    print(recall_summary(result))
    return 0


def add_recall_parser(sub: Any) -> None:
    """Add ``recall`` to the ``istmo`` sub-command parser."""
    p = sub.add_parser(
        "recall",
        help="withdraw one of your bulletins",
        description=(
            "Withdraw one of your bulletins: copies not yet delivered are removed from the "
            "recipients' queues (they never see it), and recipients that had it get your "
            "signed withdrawal, which their software applies and shows them. `istmo "
            "receipts` still says who received it. To send a corrected text, publish it "
            "with --supersedes ID (that does not withdraw the old one by itself)."
        ),
    )
    add_agency_args(p)
    p.add_argument("bulletin_id", type=bulletin_id, help="the id `istmo publish` printed")
    p.add_argument(
        "--reason",
        required=True,
        help=f"why, in at most {MAX_REASON_CHARS} characters on one line; recipients read "
        "it and the broker carries it in clear, so put no bulletin content in it",
    )
    p.add_argument("--json", action="store_true", help="the outcome as JSON")
    p.set_defaults(func=_recall)
