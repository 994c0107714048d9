"""``istmo inbox``: receive into the agency's encrypted archive, and read it.

``sync`` receives through the SDK (``IstmoClient.receive``: verified, receipts sent) and
keeps each bulletin in the archive (``clients.archive``) before the SDK acks it;
``list``, ``search``, ``show`` and ``flag`` read and mark the archive without the broker;
``print`` writes the desk's PDF of one bulletin (``clients.desk_print``).
The archive key is unwrapped with the keystore's passphrase or a key file
(``clients.archive_keys``); this module only finds them.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import stat
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clients.agency_flags import add_agency_args, add_no_push_arg, nats_url
from clients.archive import FLAGS, MAX_PAGE, Archive, ArchiveEntry, ArchiveFilter, archive_path
from clients.archive_keys import MAX_KEY_FILE_BYTES, ArchiveSecret
from clients.conversation_commands import conversation_lines
from clients.keystore import on_a_terminal, resolve_keystore_path
from clients.label_flags import any_case, bulletin_id, duration
from clients.results import ReceivedBulletin, Withdrawn, shown_time
from clients.sdk import IstmoClient
from schemas.errors import ConfigError
from schemas.keystore import MAX_KEYSTORE_BYTES, parse_any_keystore
from schemas.labels import TOPICS, Classification, Precedence, Tlp

__all__ = ["add_archive_args", "add_inbox_parser", "archive_secret", "open_archive"]

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2})?Z?)?$")


def _once(ask: Callable[[], str]) -> Callable[[], str]:
    """``ask``, called at most once: the keystore and the archive share one passphrase."""
    got: list[str] = []

    def cached() -> str:
        if not got:
            got.append(ask())
        return got[0]

    return cached


def _passphrase(file: Path | None, what: Path) -> Callable[[], str]:
    """The passphrase: ``--passphrase-file``, else ``$ISTMO_PASSPHRASE_FILE``, else asked
    on the terminal; without any of them a ConfigError that says what to give."""

    def ask() -> str:
        name = file or os.environ.get("ISTMO_PASSPHRASE_FILE")
        if name:
            try:
                with Path(name).open(encoding="utf-8") as f:
                    return f.readline(4096).rstrip("\n")
            except OSError as exc:
                raise ConfigError(
                    f"cannot read the passphrase file {name}: {exc.strerror}"
                ) from exc
        if not on_a_terminal():
            raise ConfigError(
                f"the archive {what} needs a passphrase or a key file",
                hint="give --passphrase-file FILE (or set ISTMO_PASSPHRASE_FILE), or "
                "--archive-key-file FILE",
            )
        return getpass.getpass(f"passphrase for {what}: ")

    return _once(ask)


def _key_file(path: Path) -> ArchiveSecret:
    """The bytes of an archive key file, refused if others can read it."""
    try:
        st = path.stat()
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"key file {path} is readable by others", hint=f"chmod 600 {path}")
        with path.open("rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the key file {path}: {exc.strerror}") from exc
    return ArchiveSecret("key-file", data)


def archive_secret(
    key_file: Path | None, passphrase: Callable[[], str]
) -> Callable[[], ArchiveSecret]:
    """What unwraps the archive key: the key file if given, else the passphrase."""

    def secret() -> ArchiveSecret:
        if key_file is not None:
            return _key_file(key_file)
        return ArchiveSecret("passphrase", passphrase().encode())

    return secret


def open_archive(args: argparse.Namespace, *, create: bool = False) -> tuple[Archive, Path, Any]:
    """The archive of ``--as`` (or ``--archive``), open; its keystore path, and the
    passphrase function the keystore may need too.

    Raises:
        ConfigError: no keystore or archive, or the wrong passphrase or key file.
    """
    ks_path = resolve_keystore_path(args.who, args.data_dir)
    try:
        agency = parse_any_keystore(ks_path.read_bytes()[: MAX_KEYSTORE_BYTES + 1]).agency
    except OSError as exc:
        raise ConfigError(f"cannot read the keystore {ks_path}: {exc.strerror}") from exc
    path = args.archive or archive_path(ks_path)
    ask = _passphrase(args.passphrase_file, path)
    archive = Archive.open(path, agency, archive_secret(args.archive_key_file, ask), create=create)
    return archive, ks_path, ask


async def _sync(args: argparse.Namespace) -> int:
    # The archive opens first: a wrong passphrase or key file is refused before anything
    # is received (and acknowledged) that could not be kept.
    archive, ks_path, ask = open_archive(args, create=True)
    new = seen = withdrawn = 0

    async def keep(b: ReceivedBulletin) -> None:
        nonlocal new, seen
        # Stored (and fsynced) before this returns: the SDK acks and sends the receipt after.
        if archive.add(b) is None:
            seen += 1
        else:
            new += 1

    async def withdraw(w: Withdrawn) -> None:
        nonlocal withdrawn
        withdrawn += archive.withdraw(w)

    try:
        client = await IstmoClient.connect(ks_path, nats_url(args, ks_path, ask), passphrase=ask)
        async with client:
            await client.receive(
                keep,
                count=args.count,
                timeout=None if args.follow else args.timeout,
                on_withdrawal=withdraw,
                push=not args.no_push,
            )
        total = archive.count()
    finally:
        archive.close()
    if args.json:
        print(json.dumps({"archived": new, "withdrawn": withdrawn, "total": total}))
    else:
        print(
            f"archived {new} new bulletin{'s' * (new != 1)}"
            + (f", {withdrawn} withdrawn by their originators" if withdrawn else "")
            + f"; {total} in {archive.path}"
        )
    return 0


def _when(text: str) -> int:
    """An argparse type: epoch seconds from a UTC date (2026-12-05), a date and time
    (2026-12-05T10:30Z), or a duration ago (24h, 7d)."""
    if _DATE.fullmatch(text):
        fmt = text.removesuffix("Z")
        try:
            at = datetime.fromisoformat(fmt).replace(tzinfo=UTC)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} is not a date") from exc
        return int(at.timestamp())
    try:
        return int(time.time()) - duration(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r} is not a date (2026-12-05, 2026-12-05T10:30Z) or a duration ago "
            "(24h, 7d)"
        ) from None


def _filter(args: argparse.Namespace) -> ArchiveFilter:
    return ArchiveFilter(
        topic=args.topic,
        precedence=args.precedence,
        classification=args.classification,
        tlp=args.tlp,
        originator=args.originator,
        since=args.since,
        until=args.until,
        unread=args.unread,
        flag=args.flag,
        thread=args.thread,
    )


def _line(e: ArchiveEntry) -> str:
    mark = " " if e.read else "*"
    flags = f" [{','.join(e.flags)}]" if e.flags else ""
    gone = " WITHDRAWN" if e.withdrawn_at is not None else ""
    reply = " reply" if e.in_reply_to else ""
    return (
        f"{mark} {e.id}  {shown_time(e.created_at)}  {e.sender:<14} {e.topic:<17} "
        f"{e.classification} TLP:{e.tlp} {e.precedence}{reply}{flags}{gone}"
    )


def _print_entries(entries: list[ArchiveEntry], as_json: bool) -> None:
    for e in entries:
        print(json.dumps(e.to_json()) if as_json else _line(e))


def _list(args: argparse.Namespace) -> int:
    archive, _, _ = open_archive(args)
    with archive:
        _print_entries(archive.entries(_filter(args), limit=args.limit), args.json)
    return 0


def _search(args: argparse.Namespace) -> int:
    archive, _, _ = open_archive(args)
    with archive:
        hits = archive.search(" ".join(args.words), _filter(args), limit=args.limit)
    _print_entries(hits, args.json)
    return 0 if hits else 1


def _show(args: argparse.Namespace) -> int:
    archive, _, _ = open_archive(args)
    with archive:
        got = archive.get(args.bulletin_id)
        if got is None:
            raise ConfigError(
                f"the archive holds no bulletin {args.bulletin_id}",
                hint="`istmo inbox list` shows what it holds; `istmo inbox sync` receives",
            )
        if not args.keep_unread:
            archive.mark_read(args.bulletin_id)
        thread = archive.entries(ArchiveFilter(thread=got.entry.thread), limit=MAX_PAGE)
    b, e = got.bulletin, got.entry
    if args.json:
        shown = b.to_json()
        shown["flags"] = list(e.flags)
        shown["withdrawn_at"] = e.withdrawn_at
        shown["withdrawal_reason"] = got.withdrawal_reason
        print(json.dumps(shown, ensure_ascii=False))
        return 0
    lab = b.labels
    print(f"── {b.id} from {b.sender} at {shown_time(b.created_at)}")
    print(
        f"   {lab.classification.value} TLP:{lab.tlp.value} REL TO {', '.join(lab.rel_to)}"
        f"  topic {lab.topic}  {lab.precedence.value}"
    )
    if e.withdrawn_at is not None:
        print(f"   WITHDRAWN at {shown_time(e.withdrawn_at)}: {got.withdrawal_reason}")
    for caveat in b.caveats:
        print(f"   caveat: {caveat}")
    if b.supersedes:
        print(f"   corrects {b.supersedes}")
    for line in conversation_lines(b):
        print(line)
    if e.flags:
        print(f"   flags: {', '.join(e.flags)}")
    print(f"   {b.title}\n")
    print(b.body)
    for att in b.attachments:
        print(f"   attached: {att.name} ({att.media_type}, {att.size} bytes)")
    if e.thread is not None and len(thread) > 1:
        print(f"\n   thread {e.thread} ({len(thread)} in the archive):")
        for t in reversed(thread):
            print("   " + _line(t))
    return 0


def _flag(args: argparse.Namespace) -> int:
    archive, _, _ = open_archive(args)
    with archive:
        if args.flag in ("read", "unread"):
            done = archive.mark_read(args.bulletin_id, args.flag == "read")
        else:
            done = archive.flag(args.bulletin_id, args.flag, on=not args.clear)
    if not done:
        raise ConfigError(
            f"the archive holds no bulletin {args.bulletin_id}",
            hint="`istmo inbox list` shows what it holds",
        )
    return 0


def _print(args: argparse.Namespace) -> int:
    """``inbox print ID --out FILE.pdf``: the desk's printout (``clients.desk_print``),
    recorded in the desk's access log as printed at the command line (``-``)."""
    from clients.desk_people import DeskPeople
    from clients.desk_print import bulletin_pdf

    out: Path = args.out
    if out.suffix.lower() != ".pdf":
        raise ConfigError(f"--out {out} does not end in .pdf", hint="e.g. --out bulletin.pdf")
    archive, _, _ = open_archive(args)
    with archive:
        pdf = bulletin_pdf(archive, args.bulletin_id, printed_by="-", now=int(time.time()))
        if pdf is None:
            raise ConfigError(
                f"the archive holds no bulletin {args.bulletin_id}",
                hint="`istmo inbox list` shows what it holds",
            )
        try:  # never over another file, nor through a link: readable by its owner only
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError as exc:
            raise ConfigError(f"{out} exists already", hint="give another --out") from exc
        except OSError as exc:
            raise ConfigError(f"cannot write {out}: {exc.strerror}") from exc
        with os.fdopen(fd, "wb") as f:
            f.write(pdf)
        people = DeskPeople(archive.path, archive.subkey("desk-log"))
        try:
            people.record("-", "print", args.bulletin_id)
        finally:
            people.close()
    print(f"printed {args.bulletin_id} to {out} ({len(pdf)} bytes)", file=sys.stderr)
    return 0


def add_archive_args(p: argparse.ArgumentParser) -> None:
    add_agency_args(p)
    p.add_argument(
        "--archive",
        type=Path,
        metavar="FILE",
        help="the archive file (default: beside the keystore, AGENCY.archive.sqlite)",
    )
    p.add_argument(
        "--archive-key-file",
        type=Path,
        metavar="FILE",
        help="unlock the archive with this key file (32 bytes or more, mode 0600) instead "
        "of the passphrase",
    )


def _add_filter_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--topic", type=any_case(list(TOPICS)), choices=TOPICS)
    p.add_argument(
        "--precedence",
        type=any_case([x.value for x in Precedence]),
        choices=[x.value for x in Precedence],
    )
    p.add_argument(
        "--classification",
        type=any_case([c.value for c in Classification]),
        choices=[c.value for c in Classification],
    )
    p.add_argument("--tlp", type=any_case([t.value for t in Tlp]), choices=[t.value for t in Tlp])
    p.add_argument("--from", dest="originator", metavar="AGENCY", help="its originator")
    p.add_argument("--since", type=_when, metavar="WHEN", help="created at or after WHEN")
    p.add_argument("--until", type=_when, metavar="WHEN", help="created before WHEN")
    p.add_argument("--unread", action="store_true", help="only those not shown yet")
    p.add_argument("--flag", choices=FLAGS, help="only those with this flag")
    p.add_argument("--thread", type=bulletin_id, metavar="ID", help="only this thread")
    p.add_argument("--limit", type=int, default=50, help=f"at most this many (1-{MAX_PAGE})")
    p.add_argument("--json", action="store_true", help="one JSON object a line")


def add_inbox_parser(sub: Any) -> None:
    """Add ``inbox`` (``sync``, ``list``, ``search``, ``show``, ``flag``, ``print``) to
    ``istmo``."""
    p = sub.add_parser(
        "inbox",
        help="the agency's encrypted archive of received bulletins",
        description=(
            "Receive bulletins into an archive on this machine, sealed at rest under a key "
            "unlocked by the keystore's passphrase or a key file, and read it: list, "
            "filter, search, show, flag. WHEN is a date (2026-12-05), a date and time in "
            "UTC (2026-12-05T10:30Z) or a duration ago (24h, 7d)."
        ),
    )
    inbox = p.add_subparsers(dest="inbox_command", metavar="ACTION", required=True)

    s = inbox.add_parser("sync", help="receive into the archive (receipts are sent)")
    add_archive_args(s)
    s.add_argument("--count", type=int, help="stop after this many bulletins")
    s.add_argument(
        "--timeout", type=float, default=5.0, help="stop after this many seconds (default 5)"
    )
    s.add_argument("--follow", action="store_true", help="keep receiving until Ctrl-C")
    add_no_push_arg(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_sync)

    s = inbox.add_parser("list", help="the newest bulletins, filtered")
    add_archive_args(s)
    _add_filter_args(s)
    s.set_defaults(func=_list)

    s = inbox.add_parser("search", help="bulletins holding every word given")
    add_archive_args(s)
    s.add_argument("words", nargs="+", help="words to find in titles, bodies and file names")
    _add_filter_args(s)
    s.set_defaults(func=_search)

    s = inbox.add_parser("show", help="one bulletin, whole (marks it read)")
    add_archive_args(s)
    s.add_argument("bulletin_id", type=bulletin_id, metavar="ID")
    s.add_argument("--keep-unread", action="store_true", help="do not mark it read")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_show)

    s = inbox.add_parser("flag", help="set or clear a flag, or mark read or unread")
    add_archive_args(s)
    s.add_argument("bulletin_id", type=bulletin_id, metavar="ID")
    s.add_argument("flag", choices=[*FLAGS, "read", "unread"])
    s.add_argument("--clear", action="store_true", help="clear the flag instead")
    s.set_defaults(func=_flag)

    s = inbox.add_parser("print", help="one bulletin as a PDF, its markings on every page")
    add_archive_args(s)
    s.add_argument("bulletin_id", type=bulletin_id, metavar="ID")
    s.add_argument("--out", type=Path, required=True, metavar="FILE.pdf", help="a new file")
    s.set_defaults(func=_print)
