"""``istmo forward``: pass a bulletin on with consent, and answer requests to (ADR 20).

One command, two sides, told apart by the first word (a bulletin id is a UUID, never one
of these words):

    istmo forward --as sv-police <bulletin-id> --to jm-police [--reason ...]   # recipient
    istmo forward requests --as gt-police [--all]                              # originator
    istmo forward grant --as gt-police <request-id> [--valid-for 7d]
    istmo forward refuse --as gt-police <request-id> --reason ...

``forward`` is safe to run again: it asks once, and sends once consent is there.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from clients.agency_flags import add_agency_args, connect
from clients.label_flags import bulletin_id, duration
from clients.results import ForwardOutcome, shown_time
from schemas.forwarding import FORWARD_REASON_CHARS, MAX_GRANT_S

__all__ = ["add_forward_parser"]

_ACTIONS = ("requests", "grant", "refuse")


def _outcome_line(o: ForwardOutcome) -> str:
    if o.state == "requested":
        return (
            f"{o.bulletin_id}: asked its originator to let you forward it to {o.recipient} "
            f"(request {o.request_id}); run this again once it has answered"
        )
    how = "with the originator's consent" if o.consent == "originator" else "as the policy permits"
    verb = "forwarded" if o.state == "forwarded" else f"sent ({o.state})"
    return f"{o.bulletin_id}: {verb} to {o.recipient} {how} as {o.forward_id}"


async def _forward(args: argparse.Namespace) -> int:
    what = args.what
    if what in _ACTIONS:
        return await _originator(args)
    try:
        bid = bulletin_id(what)
    except argparse.ArgumentTypeError as exc:
        print(f"istmo: {exc}; or use one of: {', '.join(_ACTIONS)}", file=sys.stderr)
        return 2
    if not args.to:
        print("istmo: say whom to forward it to: --to AGENCY", file=sys.stderr)
        return 2
    client = await connect(args)
    async with client:
        outcome = await client.forward(bid, to=args.to, reason=args.reason)
    if args.json:
        print(json.dumps(outcome.__dict__))
    else:
        print(_outcome_line(outcome))
    return 0


async def _originator(args: argparse.Namespace) -> int:
    client = await connect(args)
    async with client:
        if args.what == "requests":
            rows = await client.forward_requests(include_answered=args.all)
            if args.json:
                print(json.dumps([r.to_json() for r in rows]))
                return 0
            if not rows:
                print("no requests to forward your bulletins are waiting")
            for r in rows:
                print(
                    f"{r.request_id}  {r.state:<8} {r.forwarder} -> {r.recipient}  "
                    f"bulletin {r.bulletin_id}  asked {shown_time(r.requested_at)}"
                )
                if r.reason:
                    print(f"    reason: {r.reason}")
            return 0
        if not args.request_id:
            print(f"istmo: forward {args.what} needs the request id", file=sys.stderr)
            return 2
        if args.what == "grant":
            state = await client.grant_forward(args.request_id, valid_for_s=args.valid_for)
        else:
            if not args.reason:
                print("istmo: say why: --reason TEXT (the forwarder reads it)", file=sys.stderr)
                return 2
            state = await client.refuse_forward(args.request_id, reason=args.reason)
    answer: dict[str, Any] = {"request_id": args.request_id, "state": state}
    print(json.dumps(answer) if args.json else f"{args.request_id}: {state}")
    return 0


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--to", help="the agency to forward to")
    p.add_argument(
        "--reason",
        help=f"why, in at most {FORWARD_REASON_CHARS} characters on one line; the other side "
        "reads it and the broker carries it in clear, so put no bulletin content in it",
    )
    p.add_argument(
        "--valid-for",
        type=duration,
        default=7 * 86400,
        metavar="DURATION",
        help=f"how long a grant lasts, like 24h or 7d (at most {MAX_GRANT_S // 86400}d)",
    )
    p.add_argument("--all", action="store_true", help="requests: answered ones too")
    p.add_argument("--json", action="store_true", help="the outcome as JSON")


def _as_optional(p: argparse.ArgumentParser) -> None:
    """``--as`` may come before or after the words: required of the two parsers together."""
    for action in p._actions:
        if action.dest == "who":
            action.required = False


def add_forward_parser(sub: Any) -> None:
    """Add ``forward`` to the ``istmo`` sub-command parser.

    Its words and options may come in any order (``istmo forward grant --as X ID``), which
    argparse's sub-commands do not allow with an optional second word: the outer parser
    takes what precedes the first word, and a second one (``_words``) the rest, intermixed.
    """
    p = sub.add_parser(
        "forward",
        help="pass a bulletin you received on, with consent; answer requests to",
        description=(
            "Pass a bulletin you received on to one more agency: `istmo forward BULLETIN-ID "
            "--to AGENCY`. If the policy lets you (TLP:CLEAR or GREEN, to an agency of its "
            "releasability that follows the topic, and no H2 or H3), it is sent at once; "
            "otherwise its originator is asked, and you run the same command again once it "
            "granted. The forward is sealed for that agency alone, signed by you, and cites "
            "the original. Originators: `istmo forward requests` lists what is asked of "
            "your bulletins, `istmo forward grant REQUEST-ID` consents and `istmo forward "
            "refuse REQUEST-ID --reason ...` refuses."
        ),
    )
    add_agency_args(p)
    _options(p)
    _as_optional(p)
    p.add_argument(
        "words",
        nargs=argparse.REMAINDER,
        metavar="BULLETIN-ID | requests | grant REQUEST-ID | refuse REQUEST-ID",
    )
    words = type(p)(prog="istmo forward", add_help=False)
    add_agency_args(words)
    _options(words)
    _as_optional(words)
    words.add_argument("what")
    words.add_argument("request_id", nargs="?")

    def run(args: argparse.Namespace) -> Any:
        if not args.words:
            p.error("say what to forward (a bulletin id), or requests, grant or refuse")
        words.parse_intermixed_args(args.words, namespace=args)
        if not args.who:
            p.error("the following arguments are required: --as")
        return _forward(args)

    p.set_defaults(func=run)
