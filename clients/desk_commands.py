"""``istmo desk``: run the analyst's desk on the agency's archive, manage its analysts,
and check its access log.

``istmo desk --as AGENCY`` opens the archive (the keystore's passphrase or a key file),
builds ``clients.desk_web``'s application and serves it with uvicorn on loopback
(imported only here, when the command runs). ``user add|list|disable`` and
``log show|verify|summarise`` work on the same file without serving (``summarise``
connects to send the broker the log's signed summary, ADR 31). Receiving ("Sync now", and
every ``--sync-every`` seconds in the background) and attachments, the policy's preview
and sending a released draft go through the SDK, connecting when asked, so the desk
starts without the broker and shows what the archive holds.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import ipaddress
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from clients.agency_flags import add_data_dir_arg, add_passphrase_file_arg, nats_url
from clients.archive import Archive
from clients.attachments import Attachment
from clients.desk_drafts import DraftContent
from clients.desk_people import ROLES, DeskPeople, check_password
from clients.desk_summary import pseudonym, sdk_sender, send_summaries
from clients.inbox_commands import add_archive_args, open_archive
from clients.keystore import on_a_terminal
from clients.results import Preview, PublishResult, ReceivedBulletin, Withdrawn, shown_time
from clients.sdk import IstmoClient
from schemas.errors import ConfigError
from schemas.labels import Classification, Labels

__all__ = ["SdkLink", "add_desk_parser", "people_of"]

DEFAULT_LISTEN = "127.0.0.1:8470"
SYNC_SECONDS = 3.0
SYNC_MAX = 500
SYNC_EVERY = 30.0  # seconds between background syncs, by default
MAX_SYNC_EVERY = 24 * 3600


class SdkLink:
    """The desk's ``BrokerLink``: the SDK, connected for each sync or download.

    ``on_new`` is told of each bulletin once it is kept (the notifier's ``offer``, which
    queues and returns: the sync never waits for a notification)."""

    def __init__(
        self,
        keystore: Path,
        url: Callable[[], str],
        passphrase: Callable[[], str],
        *,
        on_new: Callable[[ReceivedBulletin], object] | None = None,
    ):
        self._keystore, self._url, self._passphrase = keystore, url, passphrase
        self._on_new = on_new

    async def sync(self, archive: Archive) -> int:
        new = 0

        async def keep(b: ReceivedBulletin) -> None:
            nonlocal new
            if archive.add(b) is None:  # kept (fsynced) before the SDK acks
                return
            new += 1
            if self._on_new is not None:
                try:
                    self._on_new(b)
                except Exception as exc:  # a notification never fails the sync
                    print(f"notices for {b.id} not queued: {type(exc).__name__}", file=sys.stderr)

        async def withdraw(w: Withdrawn) -> None:
            archive.withdraw(w)

        async with await self._client() as client:
            # A sync is a short poll, now and then: a push wait it left would take the
            # pushes from an agency's receiver that runs all along (ADR 38).
            await client.receive(
                keep,
                count=SYNC_MAX,
                timeout=SYNC_SECONDS,
                on_withdrawal=withdraw,
                push=False,
            )
        return new

    async def save(self, bulletin: ReceivedBulletin, directory: Path) -> list[Path]:
        async with await self._client() as client:
            return await client.save_attachments(bulletin, directory)

    async def preview(self, labels: Labels) -> Preview:
        async with await self._client() as client:
            return await client.preview(labels)

    async def send(self, content: DraftContent, files: Sequence[Attachment]) -> PublishResult:
        async with await self._client() as client:
            if content.kind == "reply" and content.in_reply_to is not None:
                return await client.reply(
                    content.in_reply_to,
                    text=content.text,
                    title=content.title,
                    labels=content.labels,
                    reply_all=content.reply_all,
                    attachments=files,
                )
            if content.kind == "rfi":
                return await client.rfi(
                    to=content.to,
                    title=content.title,
                    text=content.text,
                    labels=content.labels,
                    due_at=content.due_at,
                    reply_all=content.reply_all,
                    attachments=files,
                )
            return await client.publish(
                title=content.title,
                text=content.text,
                labels=content.labels,
                reply_all=content.reply_all,
                attachments=files,
            )

    async def acknowledge(self, bulletin_id: str) -> PublishResult:
        async with await self._client() as client:
            return await client.acknowledge(bulletin_id)

    async def summarise(self, people: DeskPeople) -> int:
        async with await self._client() as client:
            return await send_summaries(people, sdk_sender(client))

    async def _client(self) -> IstmoClient:
        return await IstmoClient.connect(self._keystore, self._url(), passphrase=self._passphrase)


def people_of(archive: Archive) -> DeskPeople:
    """The analysts and access log kept in ``archive``'s file."""
    return DeskPeople(archive.path, archive.subkey("desk-log"))


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
        number = int(port)
    except ValueError as exc:
        raise ConfigError(
            f"--listen {text[:60]} is not ADDRESS:PORT", hint="e.g. --listen 127.0.0.1:8470"
        ) from exc
    if not sep or not 0 < number < 65536:
        raise ConfigError(f"--listen {text[:60]} has no port", hint="e.g. 127.0.0.1:8470")
    return str(ip), number


def _hosts(host: str, port: int, public_url: str | None) -> tuple[frozenset[str], bool]:
    """The Host values the desk answers to, and whether it is reached over HTTPS."""
    ip = ipaddress.ip_address(host)
    shown = f"[{host}]" if ip.version == 6 else host
    hosts = {f"{shown}:{port}"}
    if ip.is_loopback:
        hosts.add(f"localhost:{port}")
    if public_url:
        if not public_url.startswith("https://"):
            raise ConfigError(
                "--public-url must be https://", hint="put a TLS proxy in front of the desk"
            )
        hosts.add(public_url.removeprefix("https://").split("/")[0].lower())
        return frozenset(hosts), True
    if not ip.is_loopback:
        raise ConfigError(
            f"refusing to serve the desk on {host} without TLS",
            hint="listen on 127.0.0.1 and put a TLS proxy in front: give its --public-url",
        )
    return frozenset(hosts), False


def _sync_every(text: str) -> float:
    """``--sync-every``: 0 (off), or 5 seconds to a day."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if seconds != 0 and not 5 <= seconds <= MAX_SYNC_EVERY:
        raise argparse.ArgumentTypeError(f"give 0 (off) or 5 to {MAX_SYNC_EVERY} seconds")
    return seconds


def _serve(args: argparse.Namespace) -> int:
    if not args.who:
        raise ConfigError("give the agency: --as AGENCY", hint="istmo desk --as rc-drugs")
    try:
        import uvicorn

        # Only when serving: FastAPI and Jinja2 are not the SDK's dependencies.
        from clients.desk_compose import add_compose_routes
        from clients.desk_web import DeskState, desk_app
    except ImportError as exc:
        raise ConfigError(
            "the desk needs uvicorn, FastAPI and Jinja2", hint="pip install 'istmo[server]'"
        ) from exc
    host, port = _listen(args.listen)
    hosts, secure = _hosts(host, port, args.public_url)
    archive, ks_path, ask = open_archive(args, create=True)
    people = people_of(archive)
    if not people.analysts():
        print(
            f"no analyst can sign in yet: add one with `istmo desk user add NAME --as {args.who}`",
            file=sys.stderr,
        )
    notifier = None
    if args.notify_config is not None:
        from clients.desk_notify import Notifier, NotifyPrefs, load_notify_config

        notifier = Notifier(
            load_notify_config(args.notify_config), NotifyPrefs(archive.path), people
        )
        if args.no_sync:
            print("--no-sync: nothing is received, so nobody is notified", file=sys.stderr)
    link = None
    if not args.no_sync:
        on_new = None if notifier is None else notifier.offer
        link = SdkLink(ks_path, lambda: nats_url(args, ks_path, ask), ask, on_new=on_new)
    every = 0.0 if args.no_sync else args.sync_every
    state = DeskState(archive, people, hosts, secure=secure, link=link, sync_every=every)
    print(
        f"the desk of {archive.agency} at http://{sorted(hosts)[0]}/ ; Ctrl-C stops it",
        file=sys.stderr,
        flush=True,
    )
    try:
        uvicorn.run(
            desk_app(state, extend=(add_compose_routes,)),
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            server_header=False,
            proxy_headers=False,
        )
    finally:
        if state.drafts is not None:
            state.drafts.close()
        people.close()
        archive.close()
    return 0


def _new_password(file: Path | None) -> str:
    if file is not None:
        try:
            with file.open(encoding="utf-8") as f:
                return check_password(f.readline(1100).rstrip("\n"))
        except OSError as exc:
            raise ConfigError(f"cannot read the password file {file}: {exc.strerror}") from exc
    if not on_a_terminal():
        raise ConfigError(
            "the analyst's password is needed", hint="give --password-file FILE (one line)"
        )
    first = check_password(getpass.getpass("analyst's password: "))
    if getpass.getpass("again: ") != first:
        raise ConfigError("the two passwords differ", hint="type the same password twice")
    return first


def _user(args: argparse.Namespace) -> int:
    archive, _, _ = open_archive(args, create=args.user_command == "add")
    people = people_of(archive)
    try:
        if args.user_command == "add":
            password = _new_password(args.password_file)
            people.add(args.name, args.role, password)
            print(f"analyst {args.name} added as {args.role}")
        elif args.user_command == "disable":
            people.disable(args.name)
            print(f"analyst {args.name} disabled: no sign-in, open sessions end")
        else:
            for a in people.analysts():
                doc = {
                    "name": a.name,
                    "role": a.role,
                    "active": a.active,
                    "created_at": a.created_at,
                }
                if args.json:
                    print(json.dumps(doc))
                else:
                    state = "active" if a.active else "disabled"
                    print(f"{a.name:<24} {a.role:<9} {state:<8} since {shown_time(a.created_at)}")
    finally:
        people.close()
        archive.close()
    return 0


def _notify(args: argparse.Namespace) -> int:
    from clients.desk_notify import NotifyPrefs, Preference

    archive, _, _ = open_archive(args)
    people, prefs = people_of(archive), NotifyPrefs(archive.path)
    try:
        if people.analyst(args.name) is None:
            raise ConfigError(
                f"there is no analyst {args.name[:40]}", hint="`istmo desk user list` shows them"
            )
        if args.off:
            prefs.clear(args.name)
            people.record("-", "account-notify", None, subject=args.name)
            print(f"analyst {args.name} gets no notifications")
            return 0
        if args.email is not None or args.ceiling is not None or args.topics is not None:
            topics = tuple(t for t in (args.topics or "").split(",") if t)
            ceiling = Classification(args.ceiling or "UNCLASSIFIED")
            prefs.set(Preference(args.name, args.email or None, ceiling, topics))
            people.record("-", "account-notify", None, subject=args.name)
        for p in prefs.all():
            if p.analyst == args.name:
                doc = {
                    "analyst": p.analyst,
                    "email": p.email,
                    "ceiling": p.ceiling.value,
                    "topics": list(p.topics),
                }
                print(json.dumps(doc) if args.json else (
                    f"{p.analyst}: up to {p.ceiling.value}, topics "
                    f"{', '.join(p.topics) or 'all'}, e-mail {p.email or 'none'}"
                ))  # fmt: skip
                return 0
        print(f"analyst {args.name} gets no notifications")
    finally:
        prefs.close()
        people.close()
        archive.close()
    return 0


def _log(args: argparse.Namespace) -> int:
    archive, keystore, ask = open_archive(args)
    people = people_of(archive)
    try:
        if args.log_command == "summarise":
            return _summarise(args, keystore, ask, people)
        if args.log_command == "verify":
            check = people.verify()
            mac = people.mac_at(args.mac_at) if check.ok and args.mac_at else None
            if args.json:
                doc: dict[str, Any] = {"ok": check.ok, "entries": check.entries}
                doc |= {"mac_at": {"seq": args.mac_at, "mac": mac}} if args.mac_at else {}
                print(json.dumps({**doc, "first_bad": check.first_bad, "reason": check.reason}))
            elif check.ok:
                print(f"the desk's access log is whole: {check.entries} entries")
                if args.mac_at:
                    print(f"entry {args.mac_at}'s MAC: {mac or 'no such entry'}")
            else:
                print(
                    f"the desk's access log is NOT whole: entry {check.first_bad}: "
                    f"{check.reason} ({check.entries} entries check before it)"
                )
            return 0 if check.ok else 3
        for seq, at, who, action, bid in people.entries(analyst=args.analyst, limit=args.limit):
            alias = f"{pseudonym(people.log_key, who):<13}" if args.pseudonyms else ""
            print(f"{seq:>6} {shown_time(at)} {who:<24} {alias}{action:<16} {bid or ''}")
    finally:
        people.close()
        archive.close()
    return 0


def _summarise(
    args: argparse.Namespace, keystore: Path, ask: Callable[[], str], people: DeskPeople
) -> int:
    """``istmo desk log summarise``: send the broker the summaries not sent yet."""
    link = SdkLink(keystore, lambda: nats_url(args, keystore, ask), ask)
    if args.new_chain:
        chain = people.new_summary_chain()
        print(f"starting chain {chain} of summaries from entry 1", file=sys.stderr)
    sent = asyncio.run(link.summarise(people))
    upto = people.summarised()[0]
    if args.json:
        print(json.dumps({"sent": sent, "summarised_to": upto, "waiting": people.waiting()}))
    elif sent:
        what = "summary" if sent == 1 else "summaries"
        print(f"sent {sent} {what} of the desk's access log: entries 1-{upto} are summarised")
    else:
        print(f"nothing to summarise: entries 1-{upto} are summarised already")
    return 0


def add_desk_parser(sub: Any) -> None:
    """Add ``desk`` (serve; ``user add|list|disable``; ``log show|verify``) to ``istmo``."""
    p = sub.add_parser(
        "desk",
        help="the analyst's desk: a web app on the agency's archive",
        description=(
            "Serve the analyst's desk on this machine (loopback by default), where the "
            "agency's analysts sign in to read, search and flag the archive; or manage its "
            "analysts (user) and check its access log (log)."
        ),
    )
    # Not add_archive_args: its --as is required, which `desk user ...` would trip on
    # (the subcommands take their own --as, after their name).
    add_data_dir_arg(p)
    p.add_argument("--as", dest="who", metavar="AGENCY", help="the agency whose desk it is")
    add_passphrase_file_arg(p)
    p.add_argument("--nats-url", default=os.environ.get("ISTMO_NATS_URL"), help="NATS to use")
    p.add_argument("--archive", type=Path, metavar="FILE", help="the archive file")
    p.add_argument("--archive-key-file", type=Path, metavar="FILE", help="its key file")
    p.add_argument(
        "--listen", default=DEFAULT_LISTEN, metavar="ADDRESS:PORT", help="default %(default)s"
    )
    p.add_argument(
        "--public-url",
        metavar="URL",
        help="the https:// URL of a TLS proxy in front (needed to listen off loopback)",
    )
    p.add_argument(
        "--no-sync", action="store_true", help="never connect to the broker (no sync, no files)"
    )
    p.add_argument(
        "--sync-every",
        type=_sync_every,
        default=SYNC_EVERY,
        metavar="SECONDS",
        help="receive in the background this often (default %(default)g; 0: only 'Sync now')",
    )
    p.add_argument(
        "--notify-config",
        type=Path,
        metavar="FILE",
        help="send FLASH and IMMEDIATE notices as this TOML file says (docs/desk.md)",
    )
    p.set_defaults(func=_serve)
    desk = p.add_subparsers(dest="desk_command", metavar="ACTION")

    u = desk.add_parser("user", help="the desk's analysts")
    users = u.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    s = users.add_parser("add", help="add an analyst")
    add_archive_args(s)
    s.add_argument("name", help="2-32 of a-z, 0-9, '.', '_', '-'")
    s.add_argument("--role", choices=ROLES, default="reader", help="default %(default)s")
    s.add_argument(
        "--password-file", type=Path, metavar="FILE", help="the password on its first line"
    )
    s.set_defaults(func=_user)
    s = users.add_parser("list", help="the analysts and their roles")
    add_archive_args(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_user)
    s = users.add_parser("disable", help="stop an analyst signing in")
    add_archive_args(s)
    s.add_argument("name")
    s.set_defaults(func=_user)

    s = users.add_parser(
        "notify",
        help="an analyst's notification settings (none given: show them)",
        description=(
            "Notices of urgent bulletins go to analysts who have settings, for bulletins "
            "at or below their ceiling on the topics they follow (all if none given)."
        ),
    )
    add_archive_args(s)
    s.add_argument("name")
    s.add_argument("--email", metavar="ADDRESS", help="send e-mail here too ('' for none)")
    s.add_argument(
        "--ceiling",
        choices=[c.value for c in Classification],
        help="the highest classification to notify (default UNCLASSIFIED)",
    )
    s.add_argument("--topics", metavar="T1,T2", help="only these topics (default all)")
    s.add_argument("--off", action="store_true", help="no notifications at all")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_notify)

    lg = desk.add_parser("log", help="the desk's access log (who opened what)")
    logs = lg.add_subparsers(dest="log_command", metavar="ACTION", required=True)
    s = logs.add_parser("show", help="the newest entries")
    add_archive_args(s)
    s.add_argument("--analyst", help="only this analyst's")
    s.add_argument("--limit", type=int, default=50)
    s.add_argument(
        "--pseudonyms", action="store_true", help="show each analyst's pseudonym in summaries"
    )
    s.set_defaults(func=_log)
    s = logs.add_parser("verify", help="check the chain (exit 3 if it is broken)")
    add_archive_args(s)
    s.add_argument("--json", action="store_true")
    s.add_argument(
        "--mac-at",
        type=int,
        metavar="SEQ",
        help="also print that entry's MAC, to compare with a desk.summary's head_mac",
    )
    s.set_defaults(func=_log)
    s = logs.add_parser(
        "summarise",
        help="send the broker's audit log a signed summary of the entries not sent yet",
        description=(
            "Counts of each analyst's actions (by pseudonym) since the last summary, with "
            "the log's chain MACs, signed by the agency: no content, no bulletin id, no name."
        ),
    )
    add_archive_args(s)
    s.add_argument("--json", action="store_true")
    s.add_argument(
        "--new-chain",
        action="store_true",
        help="start again from entry 1 as a new chain (after restoring an older archive)",
    )
    s.set_defaults(func=_log)
