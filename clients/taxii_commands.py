"""``istmo taxii serve``: the agency's TAXII 2.1 server over its archive, on uvicorn.

It reads decrypted bulletins, so it runs at the agency, beside its keystore, never in the
broker. This module reads the options (where to listen, the credentials, the TLP ceiling),
opens the archive (``clients.inbox_commands.open_archive``) and runs the application of
``clients.taxii_app``; uvicorn is imported only here, when the command runs (the
``istmo[taxii]`` extra), so the rest of the client does not need it.
"""

from __future__ import annotations

import argparse
import ipaddress
import stat
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from clients.inbox_commands import add_archive_args, open_archive
from clients.label_flags import any_case
from clients.stix import tlps_up_to
from clients.taxii_app import Credentials, TaxiiApp
from schemas.errors import ConfigError
from schemas.labels import Tlp

__all__ = ["DEFAULT_TAXII_PORT", "add_taxii_parser", "credentials_from_files"]

DEFAULT_TAXII_PORT = 9444


def _secret_line(path: Path, what: str) -> str:
    try:
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{what} {path} is readable by others", hint=f"chmod 600 {path}")
        with path.open(encoding="utf-8") as f:
            return f.readline(4096).rstrip("\n")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc


def credentials_from_files(token_file: Path | None, basic_auth_file: Path | None) -> Credentials:
    """The credentials requests must present: exactly one of the two files.

    Raises:
        ConfigError: neither (there is no anonymous access) or both; a file others can
            read; a token under 32 characters or a password under 16.
    """
    if (token_file is None) == (basic_auth_file is None):
        raise ConfigError(
            "the TAXII server needs exactly one of --token-file and --basic-auth-file",
            hint="it never serves anonymously: make a token with `openssl rand -hex 32 > "
            "taxii.token && chmod 600 taxii.token` and pass --token-file taxii.token",
        )
    if token_file is not None:
        return Credentials.bearer(_secret_line(token_file, "the token file"))
    if basic_auth_file is None:  # one of the two, checked above
        raise ConfigError("give --token-file or --basic-auth-file")
    user, _, password = _secret_line(basic_auth_file, "the basic-auth file").partition(":")
    return Credentials.basic(user, password)


def _hosts(listen: str, port: int, public_url: str | None) -> tuple[frozenset[str], str]:
    """The Host values the server answers to, and the base URL it names in discovery."""
    ip = ipaddress.ip_address(listen)
    shown = f"[{listen}]" if ip.version == 6 else listen
    hosts = {f"{shown}:{port}"}
    if ip.is_loopback:
        hosts.add(f"localhost:{port}")
    base = f"http://{shown}:{port}"
    if public_url:
        url = urlsplit(public_url)
        if url.scheme != "https" or not url.hostname or url.path not in ("", "/"):
            raise ConfigError(
                f"--public-url {public_url[:100]} is not an https:// origin",
                hint="give the https URL of the TLS proxy in front, like https://taxii.example.org",
            )
        hosts |= {url.netloc.lower(), url.hostname.lower()}
        base = f"https://{url.netloc}"
    elif not ip.is_loopback:
        raise ConfigError(
            f"refusing to serve on {listen} without TLS",
            hint="listen on 127.0.0.1 and put a TLS proxy in front: give its --public-url",
        )
    return frozenset(hosts), base


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError as exc:
        raise ConfigError(
            "the TAXII server needs uvicorn", hint="pip install 'istmo[taxii]'"
        ) from exc
    try:
        hosts, base = _hosts(args.listen, args.port, args.public_url)
    except ValueError as exc:
        raise ConfigError(f"--listen {args.listen[:60]} is not an IP address") from exc
    credentials = credentials_from_files(args.token_file, args.basic_auth_file)
    archive, _, _ = open_archive(args, create=True)
    tlps = tuple(tlps_up_to(Tlp(args.max_tlp)))
    app = TaxiiApp(archive, credentials, hosts=hosts, base_url=base, tlps=tlps)
    print(
        f"TAXII 2.1 for {archive.agency} at {base}/taxii2/ (API root {base}/istmo/), "
        f"serving TLP up to {args.max_tlp}; Ctrl-C stops it",
        file=sys.stderr,
        flush=True,
    )
    try:
        uvicorn.run(
            app,
            host=args.listen,
            port=args.port,
            log_level="warning",
            access_log=False,
            server_header=False,
            proxy_headers=False,
        )
    finally:
        archive.close()
    return 0


def add_taxii_parser(sub: Any) -> None:
    """Add ``taxii serve`` to ``istmo``."""
    p = sub.add_parser(
        "taxii",
        help="serve the agency's archive as a TAXII 2.1 feed",
        description="Serve the bulletins in the agency's archive (`istmo inbox sync`) to "
        "TAXII 2.1 clients such as MISP or OpenCTI: one collection per topic, bulletins as "
        "STIX 2.1 reports and notes with TLP 2.0 markings. See docs/taxii.md.",
    )
    taxii = p.add_subparsers(dest="taxii_command", metavar="ACTION", required=True)
    s = taxii.add_parser("serve", help="run the TAXII 2.1 server until Ctrl-C")
    add_archive_args(s)
    s.add_argument("--listen", default="127.0.0.1", help="address to listen on (loopback)")
    s.add_argument("--port", type=int, default=DEFAULT_TAXII_PORT, help="port (default 9444)")
    s.add_argument(
        "--public-url",
        metavar="URL",
        help="the https URL of the TLS proxy clients reach it through",
    )
    s.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="clients present `Authorization: Bearer` with the token on FILE's first line",
    )
    s.add_argument(
        "--basic-auth-file",
        type=Path,
        metavar="FILE",
        help="clients present HTTP basic auth with USER:PASSWORD on FILE's first line",
    )
    levels = [t.value for t in Tlp]
    s.add_argument(
        "--max-tlp",
        type=any_case(levels),
        choices=levels,
        default=Tlp.AMBER_STRICT.value,
        help="serve bulletins up to this TLP level (default AMBER+STRICT: TLP:RED is for "
        "named recipients only and stays out unless you say so)",
    )
    s.set_defaults(func=_serve)
