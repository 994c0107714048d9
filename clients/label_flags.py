"""The labels and times of a bulletin on the command line: the flags of ``istmo publish``
and ``istmo preview``, and what they parse to (``Labels``, durations, bulletin ids)."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from schemas.errors import EnvelopeError, IstmoError
from schemas.ids import parse_bulletin_id
from schemas.labels import TOPICS, Classification, Labels, Precedence, Tlp

__all__ = ["add_label_args", "add_time_args", "bulletin_id", "duration", "labels_from_args"]

_LABEL_HINTS = {
    "rel_to": "use upper-case ISO 3166 state codes (GT, JM) or communities (SICA, CARICOM)",
    "named": "use agency ids such as gt-police",
    "judicial_consent": "use agency ids such as gt-justice",
    "source_grade": "use a reliability letter A-F and a credibility digit 1-6, like B2",
}
_DURATION = re.compile(r"^(\d{1,7})([smhd])$")


def bulletin_id(text: str) -> str:
    """An argparse type: a bulletin id (a lowercase UUID)."""
    try:
        return parse_bulletin_id(text)
    except IstmoError as exc:
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r} is not a bulletin id (a lowercase UUID)"
        ) from exc


def duration(text: str) -> int:
    """An argparse type: seconds, from a duration like 90s, 30m, 24h or 7d."""
    m = _DURATION.fullmatch(text)
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 30m, 24h or 7d")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def any_case(values: list[str]) -> Callable[[str], str]:
    """An argparse type for ``choices=values`` that takes any case: ``restricted`` is
    ``RESTRICTED``. What matches none is left as typed, for argparse to refuse with the
    choices."""
    canonical = {v.casefold(): v for v in values}

    def parse(text: str) -> str:
        return canonical.get(text.casefold(), text)

    return parse


def labels_from_args(args: argparse.Namespace) -> Labels:
    """The labels the flags of ``add_label_args`` give.

    Raises:
        EnvelopeError: ``unknown_label``, naming the first field not allowed and why.
    """

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


def _any_case_choices(values: list[str]) -> dict[str, Any]:
    """``add_argument`` options for a choice among ``values``, typed in any case."""
    return {"type": any_case(values), "choices": values}


def add_label_args(
    p: argparse.ArgumentParser, *, required: bool = True, tlp_required: bool | None = None
) -> None:
    """The label flags; ``required=False`` where a command checks them itself (``istmo
    rfi``, whose ``list`` and ``close`` take none); ``tlp_required=False`` where the TLP
    level may come from elsewhere (``istmo publish --stix``: the bundle's markings)."""
    p.add_argument(
        "--topic",
        required=required,
        **_any_case_choices(list(TOPICS)),
        help="what the bulletin is about",
    )
    p.add_argument(
        "--classification",
        required=required,
        **_any_case_choices([c.value for c in Classification]),
        help="protective marking, checked against each recipient's clearance",
    )
    p.add_argument(
        "--tlp",
        required=required if tlp_required is None else tlp_required,
        **_any_case_choices([t.value for t in Tlp]),
        help="TLP 2.0 level",
    )
    p.add_argument(
        "--rel-to",
        action="append",
        required=required,
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
        **_any_case_choices([x.value for x in Precedence]),
        help="delivery precedence (default ROUTINE); a recipient gets FLASH, then IMMEDIATE, "
        "before PRIORITY and ROUTINE, even ahead of those waiting for it",
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


def add_time_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--expires-in",
        type=duration,
        metavar="DURATION",
        help="expiry after publication, like 24h or 7d",
    )
    p.add_argument(
        "--embargo",
        type=duration,
        metavar="DURATION",
        help="deliver nothing before this long after publication, like 30m",
    )
