"""The ``istmo`` command line.

Agency commands (publish, receive, receipts, status) live here. Commands that run the
broker (``up``, ``relay``) come from the ``istmo[server]`` extra through the
``istmo.commands`` entry point group, so the client never imports the broker.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from clients.audit_verify import add_remote_audit_parsers
from clients.enroll import add_enroll_parser
from clients.keystore import (
    load_keystore,
    passphrase_from_env,
    resolve_keystore_path,
    save_keystore,
)
from clients.sdk import IstmoClient, ReceivedBulletin
from schemas.errors import ConfigError, EnvelopeError, IstmoError
from schemas.ids import parse_bulletin_id
from schemas.keystore import ProtectedKeystore, parse_any_keystore
from schemas.labels import TOPICS, Classification, Labels, Precedence, Tlp

__all__ = ["main"]

DEFAULT_DATA_DIR = Path(".istmo")
MAX_BODY_BYTES = 512 * 1024
MIN_PASSPHRASE_CHARS = 12


def _data_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("ISTMO_DATA_DIR", DEFAULT_DATA_DIR)),
        help="the local stack's data directory (default: ./.istmo, or $ISTMO_DATA_DIR)",
    )


def _agency_args(p: argparse.ArgumentParser) -> None:
    _data_dir_arg(p)
    p.add_argument(
        "--as",
        dest="who",
        required=True,
        metavar="AGENCY",
        help="an agency id (its keystore in DATA_DIR/keys) or the path of a keystore file",
    )
    p.add_argument(
        "--nats-url",
        default=os.environ.get("ISTMO_NATS_URL"),
        help="NATS to connect to (default: the one `istmo up` runs for --data-dir)",
    )


def _nats_url(args: argparse.Namespace, keystore_path: Path, ask: Callable[[], str]) -> str:
    if args.nats_url:
        return str(args.nats_url)
    stack = args.data_dir / "stack.json"
    try:
        url = json.loads(stack.read_text()).get("nats_url")
        if isinstance(url, str):
            return url
    except (OSError, ValueError):
        pass
    ks_url = load_keystore(keystore_path, ask).nats_url
    if ks_url:
        return ks_url
    raise ConfigError(
        f"broker not running: no {stack} (start it with `istmo up`, or pass --nats-url)"
    )


def _ask_passphrase(path: Path) -> Callable[[], str]:
    """Ask for a protected keystore's passphrase on the terminal, if there is one."""

    def ask() -> str:
        env = passphrase_from_env()
        if env is not None:
            return env
        if not sys.stdin.isatty():
            raise ConfigError(
                f"keystore {path} is protected by a passphrase: run interactively, or set "
                "ISTMO_PASSPHRASE_FILE to a file that holds it"
            )
        return getpass.getpass(f"passphrase for {path}: ")

    return ask


async def _client(args: argparse.Namespace) -> IstmoClient:
    path = resolve_keystore_path(args.who, args.data_dir)
    ask = _ask_passphrase(path)
    return await IstmoClient.connect(path, _nats_url(args, path, ask), passphrase=ask)


async def _rotate(args: argparse.Namespace) -> int:
    path = resolve_keystore_path(args.who, args.data_dir)
    protected = isinstance(parse_any_keystore(path.read_bytes()), ProtectedKeystore)
    secret = _ask_passphrase(path)() if protected else None
    client = await IstmoClient.connect(
        path, _nats_url(args, path, lambda: secret or ""), passphrase=secret
    )
    async with client:
        signing, encryption = await client.rotate_keys(passphrase=secret)
    print(f"{args.who}: new signing key {signing}, new encryption key {encryption}")
    return 0


async def _revoke_key(args: argparse.Namespace) -> int:
    async with await _client(args) as client:
        await client.revoke_key(args.kid)
    print(f"{args.who}: signing key {args.kid} revoked; what it signs from now on is refused")
    return 0


def _protect(args: argparse.Namespace) -> int:
    path = resolve_keystore_path(args.who, args.data_dir)
    keystore = load_keystore(path, _ask_passphrase(path))
    if args.passphrase_file:
        try:
            secret = Path(args.passphrase_file).read_text(encoding="utf-8").splitlines()[0]
        except (OSError, IndexError) as exc:
            raise ConfigError(f"cannot read a passphrase from {args.passphrase_file}") from exc
    elif sys.stdin.isatty():
        secret = getpass.getpass("new passphrase: ")
        if secret != getpass.getpass("again: "):
            raise ConfigError("the two passphrases differ; nothing changed")
    else:
        raise ConfigError("give --passphrase-file, or run interactively")
    if len(secret) < MIN_PASSPHRASE_CHARS:
        raise ConfigError(f"use a passphrase of at least {MIN_PASSPHRASE_CHARS} characters")
    save_keystore(path, keystore, passphrase=secret)
    print(f"{path}: protected with a passphrase (scrypt, AES-256-GCM)")
    return 0


_LABEL_HINTS = {
    "rel_to": "use upper-case ISO 3166 state codes (GT, JM) or communities (SICA, CARICOM)",
    "named": "use agency ids such as gt-police",
    "judicial_consent": "use agency ids such as gt-justice",
    "source_grade": "use a reliability letter A-F and a credibility digit 1-6, like B2",
}


def _bulletin_id(text: str) -> str:
    try:
        return parse_bulletin_id(text)
    except IstmoError as exc:
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r} is not a bulletin id (a lowercase UUID)"
        ) from exc


_DURATION = re.compile(r"^(\d{1,7})([smhd])$")


def _duration(text: str) -> int:
    m = _DURATION.fullmatch(text)
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 30m, 24h or 7d")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _labels(args: argparse.Namespace) -> Labels:
    def split(values: list[str] | None) -> tuple[str, ...]:
        return tuple(v.strip() for item in values or [] for v in item.split(",") if v.strip())

    raw: dict[str, Any] = {
        "topic": args.topic,
        "classification": args.classification,
        "tlp": args.tlp,
        "rel_to": split(args.rel_to),
        "handling": split(args.handling),
        "precedence": args.precedence,
        "named": split(args.named),
        "judicial_consent": split(args.judicial_consent),
    }
    if args.handling_note:
        raw["handling_note"] = args.handling_note
    if args.source_grade:
        raw["source_grade"] = args.source_grade
    try:
        return Labels.model_validate_json(json.dumps(raw))
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        field = str(first["loc"][0]) if first["loc"] else "labels"
        why = first["msg"]
        if first["type"] == "string_pattern_mismatch":
            why = _LABEL_HINTS.get(field, why)
        raise EnvelopeError(f"label not allowed: {field}: {why}", code="unknown_label") from exc


def _read_body(args: argparse.Namespace) -> str:
    if args.body is not None:
        if len(args.body.encode("utf-8", "surrogatepass")) > MAX_BODY_BYTES:
            raise ConfigError(f"the body is over {MAX_BODY_BYTES // 1024} KiB")
        return str(args.body)
    if args.body_file is None:
        raise ConfigError("give the bulletin text with --body-file FILE (or - for stdin) or --body")
    try:
        if str(args.body_file) == "-":
            data = sys.stdin.buffer.read(MAX_BODY_BYTES + 1)
        else:
            with Path(args.body_file).open("rb") as f:
                data = f.read(MAX_BODY_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the body file {args.body_file}: {exc.strerror}") from exc
    if len(data) > MAX_BODY_BYTES:
        raise ConfigError(f"the body is over {MAX_BODY_BYTES // 1024} KiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"the body file {args.body_file} is not UTF-8 text") from exc


async def _publish(args: argparse.Namespace) -> int:
    labels = _labels(args)
    text = _read_body(args)
    now = int(time.time())
    expires_at = now + args.expires_in if args.expires_in else None
    not_before = now + args.embargo if args.embargo else None
    client = await _client(args)
    async with client:
        result = await client.publish(
            title=args.title,
            text=text,
            labels=labels,
            expires_at=expires_at,
            not_before=not_before,
            wait=not args.no_wait,
            timeout=args.timeout,
        )
    if args.json:
        print(
            json.dumps(
                {
                    "id": result.bulletin_id,
                    "state": result.state,
                    "routed": list(result.routed),
                    "denied": [{"agency": a, "policy_ids": list(p)} for a, p in result.denied],
                }
            )
        )
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


async def _preview(args: argparse.Namespace) -> int:
    labels = _labels(args)
    now = int(time.time())
    client = await _client(args)
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


def _show(b: ReceivedBulletin, as_json: bool) -> None:
    if as_json:
        print(json.dumps(b.to_json(), ensure_ascii=False), flush=True)
        return
    when = datetime.fromtimestamp(b.created_at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    lab = b.labels
    print(f"── {b.id} from {b.originator} at {when}")
    print(
        f"   {lab.classification.value} TLP:{lab.tlp.value} REL TO {', '.join(lab.rel_to)}"
        f"  topic {lab.topic}  {lab.precedence.value}"
    )
    for caveat in b.caveats:
        print(f"   caveat: {caveat}")
    print(f"   {b.title}\n")
    print(b.body, flush=True)


async def _receive(args: argparse.Namespace) -> int:
    count = None if args.follow else args.count
    timeout = None if args.follow else args.timeout

    async def handler(b: ReceivedBulletin) -> None:
        _show(b, args.json)

    client = await _client(args)
    async with client:
        got = await client.receive(handler, count=count, timeout=timeout)
    if count is not None and got < count:
        print(f"istmo: received {got} of {count} bulletins within {timeout:g} s", file=sys.stderr)
        return 1
    return 0


async def _receipts(args: argparse.Namespace) -> int:
    client = await _client(args)
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


async def _status(args: argparse.Namespace) -> int:
    client = await _client(args)
    async with client:
        st = await client.status(args.bulletin_id)
    print(json.dumps(st, indent=None if args.json else 2))
    return 0


def _label_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--topic", required=True, choices=TOPICS, help="what the bulletin is about")
    p.add_argument(
        "--classification",
        required=True,
        choices=[c.value for c in Classification],
        help="protective marking, checked against each recipient's clearance",
    )
    p.add_argument("--tlp", required=True, choices=[t.value for t in Tlp], help="TLP 2.0 level")
    p.add_argument(
        "--rel-to",
        action="append",
        required=True,
        metavar="CODES",
        help="releasable to: state codes (GT, JM) and communities (SICA, CARICOM), "
        "comma-separated or repeated",
    )
    p.add_argument(
        "--handling",
        action="append",
        metavar="CODES",
        help="handling codes: H0 use only for the stated purpose, H1 no judicial use without "
        "consent, H2 no further dissemination without consent, H3 other (see --handling-note)",
    )
    p.add_argument("--handling-note", help="the restriction an H3 handling code stands for")
    p.add_argument(
        "--precedence",
        default="ROUTINE",
        choices=[x.value for x in Precedence],
        help="delivery precedence (default ROUTINE); FLASH goes first",
    )
    p.add_argument("--source-grade", metavar="A1..F6", help="Admiralty source/information grade")
    p.add_argument(
        "--named",
        action="append",
        metavar="AGENCIES",
        help="agencies named as recipients (needed for TLP:RED)",
    )
    p.add_argument(
        "--judicial-consent",
        action="append",
        metavar="AGENCIES",
        help="justice agencies that may use an H1 bulletin in judicial proceedings",
    )


def _time_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--expires-in",
        type=_duration,
        metavar="DURATION",
        help="expiry after publication, like 24h or 7d",
    )
    p.add_argument(
        "--embargo",
        type=_duration,
        metavar="DURATION",
        help="deliver nothing before this long after publication, like 30m",
    )


# ---------------------------------------------------------------------- console login
CONSOLE_LINK_PATH = "/console/session-link"


def _api_url(args: argparse.Namespace) -> str:
    """--url, else $ISTMO_API_URL, else the API `istmo up` runs for --data-dir."""
    url = args.url or os.environ.get("ISTMO_API_URL")
    if not url:
        try:
            found = json.loads((args.data_dir / "stack.json").read_text()).get("api_url")
        except (OSError, ValueError, AttributeError):
            found = None
        url = found if isinstance(found, str) else "http://127.0.0.1:8844"
    if not url.startswith(("http://", "https://")) or len(url) > 2000:
        raise ConfigError("--url: give the broker's API URL, like http://127.0.0.1:8844")
    return url.rstrip("/")


async def _console_login(args: argparse.Namespace) -> int:
    """Get a one-time console sign-in link with this identity's key (private_key_jwt), print
    it and open it in the browser. The link works once, within 60 seconds."""
    import webbrowser  # only this command needs it

    from clients.oauth import IstmoHttp

    path = resolve_keystore_path(args.who, args.data_dir)
    keystore = load_keystore(path, _ask_passphrase(path))
    base = _api_url(args)
    async with IstmoHttp(base, keystore, timeout=args.timeout) as http:
        answer = await http.post(CONSOLE_LINK_PATH, json={})
    url = answer.get("url") if isinstance(answer, dict) else None
    if not isinstance(url, str) or not url.startswith(base + "/console/login?code="):
        raise ConfigError(f"the broker at {base} did not answer with a console link")
    print(url)
    print(
        f"istmo: this link signs you in once, within {answer.get('expires_in', 60)} s",
        file=sys.stderr,
    )
    if not args.no_open:
        webbrowser.open(url)
    return 0


def _add_console_parser(sub: Any) -> None:
    p = sub.add_parser("console", help="the web console for auditors and administrators")
    cmds = p.add_subparsers(dest="console_command", metavar="ACTION", required=True)
    c = cmds.add_parser(
        "login",
        help="open the web console, signed in with your keystore",
        description="Authenticate to the broker's API with your keystore's key "
        "(private_key_jwt), get a one-time sign-in link (60 s) and open it in your browser.",
    )
    _data_dir_arg(c)
    c.add_argument(
        "--as",
        dest="who",
        required=True,
        metavar="WHO",
        help="an auditor's or administrator's id (its keystore in DATA_DIR/keys) or keystore file",
    )
    c.add_argument("--url", help="the broker's API URL (default: the one `istmo up` runs)")
    c.add_argument("--no-open", action="store_true", help="print the link only")
    c.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    c.set_defaults(func=_console_login)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="istmo",
        description=(
            "Istmo: signed, end-to-end encrypted bulletins between the ministries of Central "
            "America and the Caribbean. Start a local stack with `istmo up`, then publish and "
            "receive as its demo agencies."
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "publish",
        help="seal, sign and publish a bulletin",
        description=(
            "Seal a bulletin for every agency the policy permits, sign it as --as, publish it "
            "and wait for the relay's verdict. Prints the bulletin id."
        ),
    )
    _agency_args(p)
    _label_args(p)
    p.add_argument("--title", required=True, help="the bulletin's title (encrypted)")
    p.add_argument("--body-file", help="file with the bulletin text (encrypted); - for stdin")
    p.add_argument("--body", help="the bulletin text itself, instead of --body-file")
    _time_args(p)
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
    _agency_args(p)
    _label_args(p)
    _time_args(p)
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
    _agency_args(p)
    p.add_argument(
        "--count", type=int, default=1, help="how many bulletins to wait for (default 1)"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait (default 10); exits 1 if fewer than --count arrived",
    )
    p.add_argument("--follow", action="store_true", help="keep receiving until Ctrl-C")
    p.add_argument("--json", action="store_true", help="one JSON line per bulletin")
    p.set_defaults(func=_receive)

    p = sub.add_parser("receipts", help="who has received one of your bulletins")
    _agency_args(p)
    p.add_argument("bulletin_id", type=_bulletin_id, help="the id `istmo publish` printed")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_receipts)

    p = sub.add_parser("status", help="the relay's verdict on one of your bulletins")
    _agency_args(p)
    p.add_argument("bulletin_id", type=_bulletin_id, help="the id `istmo publish` printed")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_status)

    p = sub.add_parser("keys", help="manage your keystore")
    keys = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    c = keys.add_parser(
        "protect",
        help="encrypt a keystore with a passphrase",
        description=(
            "Encrypt the keystore of --as with a passphrase (scrypt, then AES-256-GCM). "
            "Commands then ask for it, or read it from the file named by $ISTMO_PASSPHRASE_FILE."
        ),
    )
    _data_dir_arg(c)
    c.add_argument("--as", dest="who", required=True, metavar="AGENCY")
    c.add_argument("--passphrase-file", help="read the new passphrase from this file")
    c.set_defaults(func=_protect)

    c = keys.add_parser(
        "rotate",
        help="register new keys, vouched for by the current ones",
        description=(
            "Generate new signing and encryption keys, register them signed by the current "
            "signing key, and keep the old ones in the keystore so old bulletins still open. "
            "From now on the broker refuses what the old signing key signs."
        ),
    )
    _agency_args(c)
    c.set_defaults(func=_rotate)

    c = keys.add_parser(
        "revoke",
        help="revoke one of your signing keys (after a leak)",
        description=(
            "Revoke one of your own signing keys from now on: the broker refuses what it "
            "signs from now on; what it signed before still verifies. Revoking your current "
            "key leaves you nothing to sign with: rotate first, then revoke the old key."
        ),
    )
    _agency_args(c)
    c.add_argument("kid", help="the key id (sig-...), as in the keystore or the directory")
    c.set_defaults(func=_revoke_key)

    add_enroll_parser(sub)
    _add_console_parser(sub)

    for ep in entry_points(group="istmo.commands"):
        ep.load()(sub)
    add_remote_audit_parsers(sub)  # after the broker's: `istmo audit ... --from-url`
    return parser


class _NotTlsEofNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received() has no effect when using ssl" not in record.getMessage()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    # asyncio warns on every TLS connection nats-py closes (nats-io/nats.py#727); it
    # means nothing to a user and would bury the lines that do.
    logging.getLogger("asyncio").addFilter(_NotTlsEofNoise())
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        return int(result)
    except IstmoError as exc:
        print(f"istmo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("istmo: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`); stop quietly like other Unix tools.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
