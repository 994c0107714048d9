"""``istmo console login``: a one-time sign-in link to the web console, got with the
keystore's key (private_key_jwt) and opened in the browser."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from clients.agency_flags import add_data_dir_arg, add_passphrase_file_arg
from clients.keystore import ask_passphrase, load_keystore, resolve_keystore_path
from schemas.errors import ConfigError

__all__ = ["CONSOLE_LINK_PATH", "add_console_parser"]

CONSOLE_LINK_PATH = "/console/session-link"
LOGIN_PATH = "/console/login"


def _stack_urls(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(api_url, public_url) the `istmo up` of --data-dir recorded, each None if not."""
    try:
        info = json.loads((args.data_dir / "stack.json").read_text())
    except (OSError, ValueError):
        return None, None
    if not isinstance(info, dict):
        return None, None
    found = (info.get("api_url"), info.get("public_url"))
    api, public = (u.rstrip("/") if isinstance(u, str) else None for u in found)
    return api, public


def _api_url(args: argparse.Namespace, recorded: str | None) -> str:
    """--url, else $ISTMO_API_URL, else the API `istmo up` runs for --data-dir."""
    url = args.url or os.environ.get("ISTMO_API_URL") or recorded or "http://127.0.0.1:8844"
    if not url.startswith(("http://", "https://")) or len(url) > 2000:
        raise ConfigError("--url: give the broker's API URL, like http://127.0.0.1:8844")
    return url.rstrip("/")


async def _console_login(args: argparse.Namespace) -> int:
    """Get a one-time console sign-in link with this identity's key (private_key_jwt), print
    it and open it in the browser. The link works once, within 60 seconds."""
    import webbrowser  # only this command needs it

    from clients.oauth import IstmoHttp, canonical_url

    path = resolve_keystore_path(args.who, args.data_dir)
    keystore = load_keystore(path, ask_passphrase(path, args.passphrase_file))
    recorded, public = _stack_urls(args)
    base = _api_url(args, recorded)
    async with IstmoHttp(base, keystore, timeout=args.timeout) as http:
        answer = await http.post(CONSOLE_LINK_PATH, json={})
    url = answer.get("url") if isinstance(answer, dict) else None
    # The link points at the broker asked, or at the public URL its `istmo up` recorded
    # (asked on loopback, a broker behind a proxy links to its public name): nowhere else.
    starts = tuple(f"{canonical_url(b)}{LOGIN_PATH}?code=" for b in (base, public) if b)
    if not isinstance(url, str) or not url.startswith(starts):
        raise ConfigError(f"the broker at {base} did not answer with a console link")
    print(url)
    print(
        f"istmo: this link signs you in once, within {answer.get('expires_in', 60)} s",
        file=sys.stderr,
    )
    if not args.no_open:
        webbrowser.open(url)
    return 0


def add_console_parser(sub: Any) -> None:
    """Add ``console login`` to the ``istmo`` sub-command parser."""
    p = sub.add_parser("console", help="the web console for auditors and administrators")
    cmds = p.add_subparsers(dest="console_command", metavar="ACTION", required=True)
    c = cmds.add_parser(
        "login",
        help="open the web console, signed in with your keystore",
        description="Authenticate to the broker's API with your keystore's key "
        "(private_key_jwt), get a one-time sign-in link (60 s) and open it in your browser.",
    )
    add_data_dir_arg(c)
    c.add_argument(
        "--as",
        dest="who",
        required=True,
        metavar="WHO",
        help="an auditor's or administrator's id (its keystore in DATA_DIR/keys) or keystore file",
    )
    add_passphrase_file_arg(c)
    c.add_argument("--url", help="the broker's API URL (default: the one `istmo up` runs)")
    c.add_argument("--no-open", action="store_true", help="print the link only")
    c.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    c.set_defaults(func=_console_login)
