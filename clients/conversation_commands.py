"""``istmo reply``, ``istmo acknowledge`` and ``istmo rfi`` (ask, ``list``, ``close``), and
how ``istmo receive`` shows a reply, an acknowledgement or a request for information
(ADRs 16 and 27)."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

from clients.agency_flags import add_agency_args, connect
from clients.bulletin_text import MAX_BODY_BYTES, read_body
from clients.conversations import reply_labels
from clients.label_flags import add_label_args, bulletin_id, duration, labels_from_args
from clients.results import PublishResult, ReceivedBulletin, Rfi, shown_time
from schemas.errors import ConfigError, EnvelopeError
from schemas.labels import Classification, Handling, Labels, Precedence, Tlp
from schemas.rfi import DEFAULT_DUE_S

__all__ = ["add_conversation_parsers", "conversation_lines", "due"]

_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?(Z|[+-]00:?00)$")


def due(text: str) -> tuple[str, int]:
    """An argparse type for ``--due``: ``("in", seconds)`` from a duration like 30m or 2h,
    or ``("at", epoch seconds)`` from an ISO 8601 UTC time like 2026-12-08T10:00Z."""
    if _ISO.fullmatch(text):
        stamp = re.sub(r"(Z|[+-]00:?00)$", "+00:00", text)
        try:
            return "at", int(datetime.fromisoformat(stamp).astimezone(UTC).timestamp())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} is not a date and time") from exc
    try:
        return "in", duration(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r} is not a deadline: give a duration like 30m, 2h or 1d, or a UTC "
            "time like 2026-12-08T10:00Z"
        ) from None


def conversation_lines(b: ReceivedBulletin) -> list[str]:
    """What ``istmo receive`` adds for a reply or a request for information."""
    lines = []
    if b.in_reply_to:
        lines.append(f"   in reply to {b.in_reply_to} (thread {b.thread})")
    if b.acknowledges:
        lines.append(
            f"   ACKNOWLEDGED by {b.originator}: read and acted on (a person's word, "
            "not the automatic receipt)"
        )
    if b.rfi_due is not None:
        lines.append(
            f"   REQUEST FOR INFORMATION: answers due {shown_time(b.rfi_due)} "
            f"(answer with `istmo reply {b.id}`)"
        )
    if b.reply_all:
        lines.append("   replies reach every recipient")
    return lines


def _verdict(result: PublishResult, what: str, as_json: bool) -> int:
    if as_json:
        print(json.dumps(result.to_json()))
        return 0
    print(result.bulletin_id)
    if result.state == "accepted":
        print(f"{what} accepted: sent to {', '.join(result.routed)}", file=sys.stderr)
    else:
        print(f"{what} sent; the relay has not decided yet (`istmo status`)", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- reply
def _stricter(base: Labels, args: argparse.Namespace) -> Labels:
    """``base`` with the label flags given replacing its values (the policy refuses any
    that is weaker)."""
    update: dict[str, Any] = {}
    if args.classification:
        update["classification"] = Classification(args.classification)
    if args.tlp:
        update["tlp"] = Tlp(args.tlp)
    if args.precedence:
        update["precedence"] = Precedence(args.precedence)
    if args.rel_to:
        update["rel_to"] = _split(args.rel_to)
    if args.handling:
        update["handling"] = tuple(Handling(h) for h in _split(args.handling))
    try:
        return Labels.model_validate({**base.model_dump(), **update})
    except ValueError as exc:
        raise EnvelopeError(f"label not allowed: {exc}", code="unknown_label") from exc


def _split(values: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v.strip() for item in values for v in item.split(",") if v.strip()))


async def _reply(args: argparse.Namespace) -> int:
    text = read_body(args.body, args.body_file)
    client = await connect(args)
    async with client:
        context = await client.reply_context(args.bulletin_id)
        labels = _stricter(reply_labels(context, client.agency), args)
        result = await client.reply(
            args.bulletin_id,
            text=text,
            title=args.title,
            labels=labels,
            reply_all=args.reply_all,
            wait=not args.no_wait,
            timeout=args.timeout,
        )
    return _verdict(result, "reply", args.json)


async def _acknowledge(args: argparse.Namespace) -> int:
    client = await connect(args)
    async with client:
        result = await client.acknowledge(
            args.bulletin_id, wait=not args.no_wait, timeout=args.timeout
        )
    return _verdict(result, "acknowledgement", args.json)


# ---------------------------------------------------------------------------- rfi
async def _rfi(args: argparse.Namespace) -> int:
    if args.action == "list":
        return await _rfi_list(args)
    if args.action == "close":
        return await _rfi_close(args)
    missing = [f for f in ("to", "topic", "classification", "tlp", "title") if not getattr(args, f)]
    if missing:
        raise ConfigError(
            f"an RFI needs {', '.join('--' + m.replace('_', '-') for m in missing)}",
            hint="`istmo rfi --help` shows an example",
        )
    text = read_body(args.body, args.body_file)
    to = _split(args.to)
    client = await connect(args)
    async with client:
        if not args.rel_to:
            # Releasable to the states and communities asked, else to the addressees' own.
            codes = [t for t in to if t.isupper()]
            args.rel_to = codes or await client.jurisdictions_of([t for t in to if not t.isupper()])
        labels = labels_from_args(args)
        now = int(time.time())
        due_at = None
        if args.due is not None:
            kind, value = args.due
            due_at = now + value if kind == "in" else value
        result = await client.rfi(
            to=to,
            title=args.title,
            text=text,
            labels=labels,
            due_at=due_at,
            reply_all=args.reply_all,
            wait=not args.no_wait,
            timeout=args.timeout,
        )
    return _verdict(result, "request for information", args.json)


def _rfi_line(r: Rfi, me: str) -> str:
    mark = "OVERDUE" if r.state == "overdue" else r.state
    who = f"to {', '.join(r.addressees) or '-'}" if r.asker == me else f"from {r.asker}"
    line = f"{r.id}  {mark:<12}  due {shown_time(r.due_at)}  {r.precedence:<9}  {who}"
    if r.asker == me and r.answered_by:
        line += f"; answered by {', '.join(r.answered_by)}"
    elif r.asker == me and r.acknowledged_by:
        line += f"; received by {', '.join(r.acknowledged_by)}"
    return line


async def _rfi_list(args: argparse.Namespace) -> int:
    client = await connect(args)
    async with client:
        rfis = await client.rfis(closed=args.all)
        me = client.agency
    if args.json:
        print(json.dumps([r.to_json() for r in rfis]))
        return 0
    if not rfis:
        print(f"{me}: no open request for information, asked or asked of you")
        return 0
    for r in rfis:
        print(_rfi_line(r, me))
    overdue = [r for r in rfis if r.state == "overdue" and r.asker == me]
    if overdue:
        print(
            f"ALARM: {len(overdue)} of your requests for information "
            f"{'is' if len(overdue) == 1 else 'are'} overdue with no answer: remind the "
            "addressees, or close it with `istmo rfi close ID`",
            file=sys.stderr,
        )
    return 0


async def _rfi_close(args: argparse.Namespace) -> int:
    if args.rfi_id is None:
        raise ConfigError("say which RFI: `istmo rfi close ID`")
    rid = bulletin_id(args.rfi_id)
    client = await connect(args)
    async with client:
        r = await client.close_rfi(rid)
    if args.json:
        print(json.dumps(r.to_json()))
    else:
        print(f"{r.id}: closed at {shown_time(r.closed_at or 0)}")
    return 0


def add_conversation_parsers(sub: Any) -> None:
    """Add ``reply``, ``acknowledge`` and ``rfi`` to the ``istmo`` sub-command parser."""
    p = sub.add_parser(
        "reply",
        help="answer a bulletin you received",
        description=(
            "Answer a bulletin you received (or sent): a signed bulletin that names it and "
            "its thread, sent to its originator and, if its originator allowed reply-all, to "
            "its other recipients. It carries the labels of the bulletin it answers; give "
            "stricter ones with the label flags (weaker ones are refused). A reply to a "
            "request for information is its answer."
        ),
    )
    add_agency_args(p)
    p.add_argument("bulletin_id", type=bulletin_id, help="the id of the bulletin you answer")
    _add_body_args(p)
    p.add_argument("--title", help="the reply's title (default: Re: <id>; encrypted)")
    for flag, choices in (
        ("--classification", [c.value for c in Classification]),
        ("--tlp", [t.value for t in Tlp]),
        ("--precedence", [x.value for x in Precedence]),
    ):
        p.add_argument(flag, type=str.upper, choices=choices, help="stricter than the original")
    p.add_argument("--rel-to", action="append", metavar="CODES", help="narrower releasability")
    p.add_argument("--handling", action="append", metavar="CODES", help="more handling codes")
    _add_send_args(p)
    p.set_defaults(func=_reply)

    p = sub.add_parser(
        "acknowledge",
        help="tell a bulletin's originator a person read it and acted on it",
        description=(
            "Acknowledge a bulletin you received: a signed reply to its originator alone "
            "saying a person at your agency read it and acted on it (ADR 27). The receipt "
            "your SDK sends on delivery only says it arrived."
        ),
    )
    add_agency_args(p)
    p.add_argument("bulletin_id", type=bulletin_id, help="the id of the bulletin acknowledged")
    p.add_argument("--no-wait", action="store_true", help="do not wait for the relay's verdict")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the verdict")
    p.add_argument("--json", action="store_true", help="the result as JSON")
    p.set_defaults(func=_acknowledge)

    p = sub.add_parser(
        "rfi",
        help="ask for information, list your requests, close one",
        description=(
            "Ask agencies (gt-police), states (GT) or communities (SICA) for information "
            "by a deadline: `istmo rfi --as gt-police --to rc-drugs --topic "
            "drug-trafficking --classification RESTRICTED --tlp AMBER --title ... "
            "--body-file q.md --due 2h`. Without --due, answers are due in "
            + ", ".join(f"{p.value} {_span(s)}" for p, s in DEFAULT_DUE_S.items())
            + ". Addressees answer with `istmo reply`. `istmo rfi list` shows where your "
            "requests stand (and those asked of you), `istmo rfi close ID` closes one."
        ),
    )
    add_agency_args(p)
    p.add_argument(
        "action", nargs="?", choices=("list", "close"), help="list, or close one (default: ask)"
    )
    p.add_argument("rfi_id", nargs="?", metavar="ID", help="the RFI to close")
    p.add_argument(
        "--to",
        action="append",
        metavar="ADDRESSEES",
        help="agencies and/or state or community codes, comma-separated or repeated",
    )
    add_label_args(p, required=False)
    p.add_argument("--title", help="the request's title (encrypted)")
    _add_body_args(p)
    p.add_argument(
        "--due",
        type=due,
        metavar="WHEN",
        help="when answers are due: 30m, 2h, 1d, or 2026-12-08T10:00Z (at most 30 days)",
    )
    p.add_argument("--all", action="store_true", help="list: closed requests too")
    _add_send_args(p)
    p.set_defaults(func=_rfi)


def _span(seconds: int) -> str:
    return f"{seconds // 3600} h" if seconds >= 3600 else f"{seconds // 60} min"


def _add_body_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--body-file",
        help=f"file with the text, UTF-8, at most {MAX_BODY_BYTES // 1024} KiB (encrypted); "
        "- for stdin",
    )
    p.add_argument("--body", help="the text itself, instead of --body-file")


def _add_send_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--reply-all",
        action="store_true",
        help="let replies to it reach every recipient, not only you",
    )
    p.add_argument("--no-wait", action="store_true", help="do not wait for the relay's verdict")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the verdict")
    p.add_argument("--json", action="store_true", help="the result as JSON")
