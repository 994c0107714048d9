"""``istmo partner pin | list``: the partner regions an agency opens bulletins from (ADR 33).

A gateway agency in this region opens a bulletin that crossed a partner link only once
its operator pinned the sending region's directory key for that link, as the sending
region's operator printed it (``istmo federation key --directory``). The pins are kept
beside the keystore (``clients.partners``); nothing secret is in them.
"""

from __future__ import annotations

import argparse
from typing import Any

from clients.agency_flags import add_data_dir_arg
from clients.keystore import resolve_keystore_path
from clients.partners import (
    load_partner_pins,
    parse_directory_key_line,
    partner_pins_path,
    write_partner_pins,
)

__all__ = ["add_partner_parser"]


def _pin(args: argparse.Namespace) -> int:
    keystore = resolve_keystore_path(args.who, args.data_dir)
    pin = parse_directory_key_line(args.directory_key, link=args.link, region=args.region)
    path = partner_pins_path(keystore)
    pins = load_partner_pins(path)
    old = pins.pin_of(pin.link)
    write_partner_pins(path, pins.with_pin(pin))
    was = "" if old is None else f" (was {old.directory_kid}, region {old.region})"
    print(f"link {pin.link}: region {pin.region}, directory key {pin.directory_kid}{was}")
    print(f"pinned in {path}; bulletins that crossed link {pin.link} now open")
    return 0


def _list(args: argparse.Namespace) -> int:
    keystore = resolve_keystore_path(args.who, args.data_dir)
    path = partner_pins_path(keystore)
    pins = load_partner_pins(path)
    if not pins.partners:
        print(f"no partner pinned ({path}): nothing that crossed a partner link opens")
        return 0
    for p in pins.partners:
        print(f"link {p.link}: region {p.region}, directory key {p.directory_kid}")
    return 0


def add_partner_parser(sub: Any) -> None:
    """Add ``partner pin | list`` to the ``istmo`` sub-command parser."""
    p = sub.add_parser("partner", help="pin the partner regions whose bulletins you open")
    partner = p.add_subparsers(dest="partner_command", metavar="ACTION", required=True)
    c = partner.add_parser(
        "pin",
        help="pin a partner region's directory key for one link",
        description=(
            "Open bulletins that crossed partner link --link: their originators' records "
            "must be signed by --directory-key, the sending region's directory key as its "
            "operator's `istmo federation key --directory` prints it (get it over a "
            "channel you trust). --region is your name for that region, shown beside its "
            "originators. Pinning a link again replaces its key."
        ),
    )
    add_data_dir_arg(c)
    c.add_argument(
        "--as", dest="who", required=True, metavar="AGENCY", help="an agency id or a keystore"
    )
    c.add_argument("--link", required=True, help="the link's name, e.g. eu-siena")
    c.add_argument("--region", required=True, help="your name for the sending region")
    c.add_argument("--directory-key", required=True, metavar='"directory KID KEY"',
                   help="the sending region's `istmo federation key --directory` line")  # fmt: skip
    c.set_defaults(func=_pin)
    c = partner.add_parser("list", help="list the partner regions pinned")
    add_data_dir_arg(c)
    c.add_argument("--as", dest="who", required=True, metavar="AGENCY")
    c.set_defaults(func=_list)
