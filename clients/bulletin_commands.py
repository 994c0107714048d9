"""``istmo publish``, ``preview``, ``receive``, ``receipts``, ``status`` and ``withheld``:
what an agency does with bulletins, through the SDK (``clients.sdk``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import textwrap
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clients.agency_flags import add_agency_args, add_no_push_arg, connect
from clients.bulletin_text import MAX_BODY_BYTES, read_body
from clients.conversation_commands import conversation_lines
from clients.errors import AttachmentError, NotFound
from clients.label_flags import add_label_args, add_time_args, bulletin_id, labels_from_args
from clients.recall_commands import show_withdrawal
from clients.results import shown_time
from clients.sdk import IstmoClient, ReceivedBulletin, Withdrawn, Withheld
from clients.stix import bulletin_of_bundle
from schemas.errors import ConfigError, IstmoError

__all__ = ["MAX_BODY_BYTES", "add_bulletin_parsers"]

# How long a receive that found nothing waits to add the withheld count: it has its
# answer already, and a broker that does not answer should not hold it up.
WITHHELD_TIMEOUT_S = 2.0

log = logging.getLogger("istmo.cli")


async def _publish(args: argparse.Namespace) -> int:
    if args.stix is not None:
        text = _stix_bulletin(args)
    else:
        if args.tlp is None or args.title is None:
            raise ConfigError(
                f"give {'--tlp' if args.tlp is None else '--title'}",
                hint="or publish a STIX bundle with --stix, whose markings give the TLP level",
            )
        text = read_body(args.body, args.body_file)
    labels = labels_from_args(args)
    now = int(time.time())
    expires_at = now + args.expires_in if args.expires_in else None
    not_before = now + args.embargo if args.embargo else None
    attachments = [_readable(Path(f)) for f in args.attach or ()]
    client = await connect(args)
    async with client:
        result = await client.publish(
            attachments=attachments,
            title=args.title,
            text=text,
            labels=labels,
            expires_at=expires_at,
            not_before=not_before,
            wait=not args.no_wait,
            timeout=args.timeout,
            supersedes=args.supersedes,
            groups=args.groups,
            reply_all=args.reply_all,
        )
    if args.json:
        print(json.dumps(result.to_json()))
        return 0
    print(result.bulletin_id)
    if result.state == "accepted":
        print(
            f"accepted: routed to {len(result.routed)} agencies"
            + (f"; {len(result.denied)} candidates denied by policy" if result.denied else ""),
            file=sys.stderr,
        )
    elif result.state == "embargoed":
        print("sent; under embargo, the relay will decide and deliver it then", file=sys.stderr)
    else:
        print("sent; the relay has not decided yet (check with `istmo status`)", file=sys.stderr)
    return 0


def _stix_bulletin(args: argparse.Namespace) -> str:
    """The body of a bulletin carrying the STIX bundle ``--stix`` names; sets ``args.tlp``
    from its markings and ``args.title`` from its report, unless given (and refuses a
    ``--tlp`` the markings contradict)."""
    if args.body is not None or args.body_file is not None:
        raise ConfigError("--stix is the body: give no --body or --body-file with it")
    try:
        with Path(args.stix).open("rb") as f:
            raw = f.read(MAX_BODY_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the STIX bundle {args.stix}: {exc.strerror}") from exc
    got = bulletin_of_bundle(raw, title=args.title, max_bytes=MAX_BODY_BYTES)
    if args.tlp is not None and args.tlp != got.tlp.value:
        raise ConfigError(
            f"--tlp {args.tlp} contradicts the bundle's markings (TLP:{got.tlp.value})",
            hint="leave --tlp out: the bundle's strictest marking gives the level",
        )
    for note in got.notes:
        print(f"istmo: {note}", file=sys.stderr)
    args.tlp, args.title = got.tlp.value, got.title
    return got.text


def _digest(value: str) -> str:
    """An envelope digest on the command line: 64 hex digits."""
    if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise argparse.ArgumentTypeError(
            "give the 64 hex digits of envelope_digest that `istmo publish --json` printed"
        )
    return value.lower()


def _readable(path: Path) -> Path:
    """``path`` if it is a file this process can read, else ConfigError saying so."""
    if not path.is_file() or not os.access(path, os.R_OK):
        raise ConfigError(
            f"cannot read the attachment {str(path)[:200]}",
            hint="give --attach the path of a file you can read",
        )
    return path


async def _preview(args: argparse.Namespace) -> int:
    labels = labels_from_args(args)
    now = int(time.time())
    client = await connect(args)
    async with client:
        pv = await client.preview(
            labels,
            expires_at=now + args.expires_in if args.expires_in else None,
            not_before=now + args.embargo if args.embargo else None,
        )
    if args.json:
        rows = [{"agency": a, "allowed": ok, "summary": why} for a, ok, why in pv.candidates]
        print(
            json.dumps(
                {
                    "policy_version": pv.policy_version,
                    "may_publish": pv.may_publish,
                    "candidates": rows,
                }
            )
        )
        return 0
    verdict = "may" if pv.may_publish else "may NOT"
    permitted = sum(1 for _, ok, _ in pv.candidates if ok)
    print(
        f"policy {pv.policy_version}: {args.who} {verdict} publish this; "
        f"{permitted} of {len(pv.candidates)} candidates would receive it"
    )
    for agency, _ok, why in pv.candidates:
        print(f"  {agency:<18} {why}")
    return 0


def _show(b: ReceivedBulletin, as_json: bool, saved: Sequence[Path | None] = ()) -> None:
    if as_json:
        shown = b.to_json()
        for entry, path in zip(shown.get("attachments", ()), saved, strict=False):
            entry["saved_to"] = None if path is None else str(path)
        print(json.dumps(shown, ensure_ascii=False), flush=True)
        return
    when = datetime.fromtimestamp(b.created_at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    lab = b.labels
    print(f"── {b.id} from {b.sender} at {when}")
    if b.forwarded is not None:
        print(f"   {b.forwarded.describe()}")
    print(
        f"   {lab.classification.value} TLP:{lab.tlp.value} REL TO {', '.join(lab.rel_to)}"
        f"  topic {lab.topic}  {lab.precedence.value}"
    )
    if lab.source_grade:
        print(f"   source grade {lab.source_grade}")
    for caveat in b.caveats:
        print(f"   caveat: {caveat}")
    if b.supersedes:
        print(f"   corrects {b.supersedes}")
    if b.expires_at is not None:
        print(f"   expires {shown_time(b.expires_at)}")
    for line in conversation_lines(b):
        print(line)
    print(f"   {b.title}\n")
    print(b.body, flush=True)
    for i, att in enumerate(b.attachments):
        path = saved[i] if i < len(saved) else None
        where = f" -> {path}" if path is not None else ""
        print(f"   attached: {att.name} ({att.media_type}, {att.size} bytes){where}", flush=True)


async def _receive(args: argparse.Namespace) -> int:
    count = None if args.follow else args.count
    timeout = None if args.follow else args.timeout

    refused: list[str] = []

    async def handler(b: ReceivedBulletin) -> None:
        saved: list[Path | None] = []
        if args.save_attachments and b.attachments:
            try:
                saved = list(await client.save_attachments(b, args.save_attachments))
            except (AttachmentError, NotFound) as exc:
                # The bulletin itself opened: hand it over, say which files are not saved.
                refused.append(f"istmo: {b.id}: attachments not saved: {exc}")
                saved = [None] * len(b.attachments)
        _show(b, args.json, saved)

    async def withdrawn(w: Withdrawn) -> None:
        show_withdrawal(w, args.json)

    client = await connect(args)
    async with client:
        got = await client.receive(
            handler,
            count=count,
            timeout=timeout,
            on_withdrawal=withdrawn,
            push=not args.no_push,
        )
        # An empty queue: was nothing sent, or did the policy refuse what was?
        withheld = await _withheld_if_known(client) if got == 0 and count is not None else None
    for line in refused:
        print(line, file=sys.stderr)
    if refused:
        return 1
    if count is not None and got < count:
        line = f"istmo: received {got} of {count} bulletins within {timeout:g} s"
        if got == 0:
            line += ": nothing waiting" + _withheld_note(client.agency, withheld)
        print(line, file=sys.stderr)
        return 1
    return 0


async def _withheld_if_known(client: IstmoClient) -> Withheld | None:
    """The agency's withheld count, or None if the broker does not say (an older broker,
    or none answering): the receive has its answer already, this only adds to it."""
    try:
        return await client.withheld(timeout=WITHHELD_TIMEOUT_S)
    except IstmoError as exc:
        if exc.code == "not_authorized":
            raise  # NATS refused the agency: that, not "nothing waiting", is the answer
        log.debug("no withheld count (%s)", exc.code)
        return None


def _withheld_note(agency: str, withheld: Withheld | None) -> str:
    """What to add to "nothing waiting" when the policy withheld bulletins from ``agency``."""
    if withheld is None or not withheld.bulletins:
        return ""
    return (
        f"; the policy withheld {_bulletins(withheld.bulletins)} from {agency} "
        f"(latest {_minute(withheld.latest_at)}): ask the broker's administrators why "
        f"(`istmo audit search --agency {agency}` finds them)"
    )


async def _withheld(args: argparse.Namespace) -> int:
    client = await connect(args)
    async with client:
        got = await client.withheld()
        agency = client.agency
    if args.json:
        print(
            json.dumps(
                {
                    "agency": agency,
                    "withheld": got.bulletins,
                    "first_at": got.first_at,
                    "latest_at": got.latest_at,
                }
            )
        )
        return 0
    if not got.bulletins:
        print(f"{agency}: the policy has withheld no bulletin from you")
        return 0
    when = (
        f"at {_minute(got.latest_at)}"
        if got.first_at == got.latest_at
        else f"the first at {_minute(got.first_at)}, the latest at {_minute(got.latest_at)}"
    )
    print(
        f"{agency}: the policy withheld {_bulletins(got.bulletins)} from you, {when}.\n"
        "Istmo tells you how many, not which or why: ask the broker's administrators "
        f"(`istmo audit search --agency {agency}` finds them, `istmo policy explain` says why)."
    )
    return 0


def _bulletins(n: int) -> str:
    return f"{n} bulletin" if n == 1 else f"{n} bulletins"


def _minute(at: int | None) -> str:
    return "-" if at is None else datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M UTC")


async def _receipts(args: argparse.Namespace) -> int:
    if args.verify:
        return await _verify_receipts(args)
    if args.digest:
        raise ConfigError("--digest is what --verify checks receipts against", hint="add --verify")
    client = await connect(args)
    async with client:
        report = await client.receipts(args.bulletin_id)
    if args.json:
        rows = [{"agency": a, "received_at": t} for a, t in report.recipients]
        print(json.dumps({"id": report.bulletin_id, "recipients": rows}))
        return 0
    got = sum(1 for _, t in report.recipients if t is not None)
    print(f"{report.bulletin_id}: {got} of {len(report.recipients)} recipients received it")
    for agency, t in report.recipients:
        when = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if t else "not yet"
        print(f"  {agency:<20} {when}")
    return 0


async def _verify_receipts(args: argparse.Namespace) -> int:
    client = await connect(args)
    async with client:
        checked = await client.verify_receipts(args.bulletin_id, envelope_digest=args.digest)
    failed = len(checked.failed)
    if args.json:
        print(
            json.dumps(
                {
                    "id": checked.bulletin_id,
                    "envelope_digest": checked.envelope_digest,
                    "digest_from": checked.digest_from,
                    "broker_digest": checked.broker_digest,
                    "failed": failed,
                    "recipients": [r.to_json() for r in checked.recipients],
                }
            )
        )
        return 1 if failed else 0
    verified = sum(1 for r in checked.recipients if r.state == "verified")
    waiting = sum(1 for r in checked.recipients if r.state == "not_received")
    print(
        f"{checked.bulletin_id}: {verified} of {len(checked.recipients)} receipts verified, "
        f"{waiting} not received yet, {failed} FAILED"
    )
    if checked.digest_from == "publisher":
        print(f"  checked against the envelope you published ({checked.envelope_digest})")
    else:
        print(
            f"  checked against the envelope digest the broker recorded "
            f"({checked.envelope_digest}): add --digest from `istmo publish --json` to check "
            "them against what you published"
        )
    for r in checked.recipients:
        if r.state == "verified":
            revoked = (
                f"; key revoked since {shown_time(r.key_revoked_at)}" if r.key_revoked_at else ""
            )
            line = f"verified {shown_time(r.received_at or 0)} ({r.kid}{revoked})"
        elif r.state == "not_received":
            line = "not received yet"
        else:
            line = f"FAILED ({r.reason}): {r.message}"
        print(f"  {r.agency:<20} {line}")
    return 1 if failed else 0


async def _status(args: argparse.Namespace) -> int:
    client = await connect(args)
    async with client:
        st = await client.status(args.bulletin_id)
    if args.json:
        print(json.dumps(st))
    else:
        print(status_summary(st))
    return 1 if st["state"] == "rejected" else 0


def status_summary(st: dict[str, Any]) -> str:
    """A few lines for a person: the verdict first, then whom it reached and who was
    denied, grouped by the policies that denied them."""
    bid, state = st["bulletin_id"], st["state"]
    if state == "rejected":
        return f"{bid}: rejected ({st['reason']}): {st['message']}"
    if state != "accepted":
        return f"{bid}: waiting for the relay (not decided yet, or under embargo)"
    routed, denied = st["routed"], st["denied"]
    lines = [
        f"{bid}: accepted under policy {st['policy_version']}; "
        f"routed to {len(routed)}, denied {len(denied)}"
    ]
    # ADR 15: withdrawn, a correction, corrected (a broker before it says none of these).
    if st.get("withdrawn_at") is not None:
        lines.append(f"  WITHDRAWN at {shown_time(st['withdrawn_at'])}")
    if st.get("supersedes"):
        lines.append(f"  corrects {st['supersedes']}")
    if st.get("superseded_by"):
        lines.append(_listed("corrected by", st["superseded_by"]))
    if routed:
        lines.append(_listed("routed", routed))
    by_policy: dict[str, list[str]] = {}
    for d in denied:
        by_policy.setdefault(", ".join(d["policy_ids"]) or "default deny", []).append(d["agency"])
    for why, agencies in sorted(by_policy.items()):
        lines.append(_listed(f"denied by {why} ({len(agencies)})", agencies))
    return "\n".join(lines)


def _listed(what: str, agencies: list[str]) -> str:
    return textwrap.fill(
        ", ".join(agencies),
        width=88,
        initial_indent=f"  {what}: ",
        subsequent_indent="    ",
        break_on_hyphens=False,
    )


def add_bulletin_parsers(sub: Any) -> None:
    """Add ``publish``, ``preview``, ``receive``, ``receipts``, ``status`` and ``withheld``
    to the ``istmo`` sub-command parser."""
    p = sub.add_parser(
        "publish",
        help="seal, sign and publish a bulletin",
        description=(
            "Seal a bulletin for every agency the policy permits, sign it as --as, publish it "
            "and wait for the relay's verdict. Prints the bulletin id."
        ),
    )
    add_agency_args(p)
    add_label_args(p, tlp_required=False)
    p.add_argument(
        "--title",
        help="the bulletin's title (encrypted; required, but for --stix: its report's name)",
    )
    p.add_argument(
        "--body-file",
        help=f"file with the bulletin text, UTF-8, at most {MAX_BODY_BYTES // 1024} KiB "
        "(encrypted); - for stdin",
    )
    p.add_argument("--body", help="the bulletin text itself, instead of --body-file")
    p.add_argument(
        "--stix",
        metavar="FILE",
        help="publish this STIX 2.1 bundle as the bulletin's body: its TLP markings give "
        "--tlp (the strictest), and a marking Istmo cannot map is refused",
    )
    add_time_args(p)
    p.add_argument(
        "--supersedes",
        type=bulletin_id,
        metavar="ID",
        help="this bulletin corrects your bulletin ID: recipients are told the link (the "
        "old one stays valid unless you `istmo recall` it)",
    )
    p.add_argument(
        "--groups",
        action="store_true",
        help="for audiences of thousands: seal once under each community group you belong "
        "to whose members may all receive it, and one key each for the rest (`istmo admin "
        "group list` on the broker shows the groups)",
    )
    p.add_argument(
        "--reply-all",
        action="store_true",
        help="let replies to it reach every recipient, not only you (`istmo reply`)",
    )
    p.add_argument(
        "--attach",
        action="append",
        metavar="FILE",
        help="send FILE with the bulletin, sealed in chunks (repeat for more files); its "
        "name and type travel encrypted",
    )
    p.add_argument("--no-wait", action="store_true", help="do not wait for the relay's verdict")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the verdict")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_publish)

    p = sub.add_parser(
        "preview",
        help="who would receive a bulletin with these labels, and why not the others",
        description=(
            "Ask the policy, before publishing, which agencies would receive a bulletin with "
            "these labels and which would not, by which policies. Nothing is sent."
        ),
    )
    add_agency_args(p)
    add_label_args(p)
    add_time_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_preview)

    p = sub.add_parser(
        "receive",
        help="receive, verify and decrypt bulletins",
        description=(
            "Fetch bulletins delivered to --as, verify each against the signed directory, "
            "decrypt it, print it, acknowledge it and send a signed receipt."
        ),
    )
    add_agency_args(p)
    p.add_argument(
        "--count",
        type=int,
        default=1,
        help="how many bulletins (or withdrawals of bulletins) to wait for (default 1)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait (default 10); exits 1 if fewer than --count arrived",
    )
    p.add_argument("--follow", action="store_true", help="keep receiving until Ctrl-C")
    add_no_push_arg(p)
    p.add_argument(
        "--save-attachments",
        metavar="DIR",
        type=Path,
        help="fetch each bulletin's files into DIR/<bulletin id>/, each checked against what "
        "its originator signed (without it, only their names and sizes are shown)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help='one JSON line per bulletin ("kind": "bulletin") or withdrawal ("kind": '
        '"withdrawal"); times in ISO 8601',
    )
    p.set_defaults(func=_receive)

    p = sub.add_parser(
        "receipts",
        help="who has received one of your bulletins",
        description="Who has received one of your bulletins. With --verify, each "
        "recipient's signed receipt is checked here, against its key in the signed "
        "directory, not taken on the broker's word; exit 1 if any fails.",
    )
    add_agency_args(p)
    p.add_argument("bulletin_id", type=bulletin_id, help="the id `istmo publish` printed")
    p.add_argument(
        "--verify",
        action="store_true",
        help="check each signed receipt yourself: verified (key id), not received yet, "
        "or FAILED with the reason",
    )
    p.add_argument(
        "--digest",
        type=_digest,
        metavar="HEX",
        help="with --verify: the envelope_digest `istmo publish --json` printed; every "
        "receipt must name it (default: the digest the broker recorded)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_receipts)

    p = sub.add_parser(
        "status",
        help="the relay's verdict on one of your bulletins",
        description=(
            "Whether the relay accepted one of your bulletins (whom it routed it to, whom the "
            "policy denied and by which policies), rejected it (and why), or has not decided "
            "yet. Exits 1 when it was rejected, or when no bulletin of yours has this id."
        ),
    )
    add_agency_args(p)
    p.add_argument("bulletin_id", type=bulletin_id, help="the id `istmo publish` printed")
    p.add_argument("--json", action="store_true", help="the relay's whole answer as JSON")
    p.set_defaults(func=_status)

    p = sub.add_parser(
        "withheld",
        help="how many bulletins the policy withheld from you, and when",
        description=(
            "How many bulletins meant for --as (on topics it follows, or naming it) the "
            "policy refused it, and when the first and the latest were, to the minute. "
            "Nothing about which bulletins they were: the broker's administrators can find "
            "them (`istmo audit search --agency`) and say why (`istmo policy explain`). "
            "`istmo receive` says so too when it finds nothing waiting."
        ),
    )
    add_agency_args(p)
    p.add_argument("--json", action="store_true", help="the count and times as JSON")
    p.set_defaults(func=_withheld)
