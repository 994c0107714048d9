"""The guard of a partner link (ADR 32): every label rule, default deny, unknown fields and
values, and the link file's own limits. Pure: real sealed envelopes, their labels changed
in the JSON (the guard decides on labels alone and never checks a signature)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest

from broker.relay.guard import REASONS, decide, parse_link
from schemas.attachments import MIN_CHUNK_BYTES, AttachmentRef
from schemas.errors import EnvelopeError
from schemas.labels import Classification, Handling, Tlp
from tests.core.federation_kit import GATEWAY, LINK, LOCAL, NOW, OTHER, sealed

BASE = sealed()


def changed(mutate: Callable[[dict[str, Any]], None], raw: bytes = BASE) -> bytes:
    d = json.loads(raw)
    mutate(d)
    return json.dumps(d).encode()


def label(name: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(d: dict[str, Any]) -> None:
        d["header"]["labels"][name] = value

    return mutate


def header(name: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(d: dict[str, Any]) -> None:
        d["header"][name] = value

    return mutate


def group_only(d: dict[str, Any]) -> None:
    d["wraps"] = [w for w in d["wraps"] if w["recipient"] != GATEWAY]
    d["groups"] = [{"group": "EU", "epoch": 1, "kid": "gk-" + "0" * 32, "nonce": "", "ct": ""}]


ATTACHMENT = AttachmentRef(size=10, chunk_size=MIN_CHUNK_BYTES, chunks=1, digest="a" * 64)
CASES: list[tuple[str, bytes, tuple[str, ...]]] = [
    ("releasable, green, restricted, H0", BASE, ()),
    ("unclassified, clear, no handling", changed(lambda d: (
        label("classification", "UNCLASSIFIED")(d), label("tlp", "CLEAR")(d),
        label("handling", [])(d))), ()),
    ("amber", changed(label("tlp", "AMBER")), ()),
    ("a community never covers the partner", changed(label("rel_to", ["GT", "SICA"])), (
        "not_releasable",)),
    ("TLP:RED", changed(label("tlp", "RED")), ("tlp_red",)),
    ("TLP:RED even when the gateway is named", changed(lambda d: (
        label("tlp", "RED")(d), label("named", [GATEWAY])(d))), ("tlp_red",)),
    ("TLP:AMBER+STRICT", changed(label("tlp", "AMBER+STRICT")), ("tlp_amber_strict",)),
    ("confidential", changed(label("classification", "CONFIDENTIAL")), ("above_ceiling",)),
    ("secret", changed(label("classification", "SECRET")), ("above_ceiling",)),
    ("a topic the link does not carry", changed(label("topic", "migration")), ("topic",)),
    ("H2", changed(label("handling", ["H2"])), ("no_dissemination",)),
    ("H3", changed(lambda d: (label("handling", ["H3"])(d), label("handling_note", "x")(d))),
     ("no_dissemination",)),
    ("H1 unless the link carries it", changed(label("handling", ["H1"])), ("handling",)),
    ("H0 and H2", changed(label("handling", ["H0", "H2"])), ("no_dissemination",)),
    ("not addressed to the gateway", sealed((LOCAL, OTHER)), ("not_addressed",)),
    ("embargoed", changed(header("not_before", NOW + 60)), ("embargoed",)),
    ("expired", changed(header("expires_at", NOW)), ("expired",)),
    ("attachments", changed(header("attachments", [ATTACHMENT.model_dump()])), ("attachments",)),
    ("the gateway covered by a group key only", changed(group_only), ("no_wrap",)),
    ("every failing rule is named", changed(lambda d: (
        label("tlp", "RED")(d), label("classification", "SECRET")(d),
        label("topic", "migration")(d), label("rel_to", ["GT"])(d))),
     ("not_releasable", "tlp_red", "above_ceiling", "topic")),
    ("an unknown label field", changed(label("caveat", "NOFORN")), ("unknown_label",)),
    ("an unknown TLP", changed(label("tlp", "WHITE")), ("unknown_label",)),
    ("an unknown header field", changed(header("route", "x")), ("malformed",)),
    ("an unknown top-level field", changed(lambda d: d.update(extra=1)), ("malformed",)),
    ("another envelope version", changed(lambda d: d.update(v=2)), ("malformed",)),
    ("not JSON", b"\x00not json", ("malformed",)),
    ("empty", b"", ("malformed",)),
    ("a duplicate key", BASE[:-1] + b',"v":1}', ("malformed",)),
    ("oversized", b" " * (LINK.max_envelope_bytes + 1), ("oversized",)),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "reasons"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_rule(raw: bytes, reasons: tuple[str, ...]) -> None:
    d = decide(LINK, raw, now=NOW)
    assert d.reasons == reasons
    assert d.passed is (reasons == ())
    assert set(d.reasons) <= set(REASONS)
    if d.passed:
        assert d.to == (GATEWAY,)


def test_the_link_decides_what_it_carries() -> None:
    h1 = changed(label("handling", ["H1"]))
    amber = changed(label("tlp", "AMBER"))
    wider = LINK.model_copy(update={"handling": (Handling.H0, Handling.H1)})
    narrower = LINK.model_copy(update={"tlps": (Tlp.GREEN,)})
    assert decide(wider, h1, now=NOW).passed
    assert decide(narrower, amber, now=NOW).reasons == ("tlp_not_allowed",)
    other_code = LINK.model_copy(update={"code": "INTERPOL"})
    assert decide(other_code, BASE, now=NOW).reasons == ("not_releasable",)


def relabelled(tlp: Tlp, cls: Classification, codes: tuple[Handling, ...]) -> bytes:
    def mutate(d: dict[str, Any]) -> None:
        labels = d["header"]["labels"]
        labels.update(tlp=tlp.value, classification=cls.value, handling=[c.value for c in codes])
        if Handling.H3 in codes:
            labels["handling_note"] = "x"

    return changed(mutate)


def test_it_passes_exactly_what_every_rule_allows() -> None:
    """Default deny over every TLP, classification and handling set: it passes if and only
    if each label is one the link carries (an oracle written from the rules' text)."""
    passed = 0
    for tlp, cls in itertools.product(Tlp, Classification):
        for n in range(5):
            for codes in itertools.combinations(list(Handling), n):
                d = decide(LINK, relabelled(tlp, cls, codes), now=NOW)
                allowed = (
                    tlp in LINK.tlps
                    and cls.level <= LINK.ceiling.level
                    and set(codes) <= set(LINK.handling)
                )
                assert d.passed is allowed, (tlp, cls, codes, d.reasons)
                passed += d.passed
    # CLEAR, GREEN, AMBER x UNCLASSIFIED, RESTRICTED x {none, H0}
    assert passed == 12


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("tlps", ["GREEN", "RED"], "RED"),
        ("tlps", ["AMBER+STRICT"], "AMBER+STRICT"),
        ("handling", ["H0", "H2"], "H2"),
        ("handling", ["H3"], "H2"),
        ("agencies", [GATEWAY, GATEWAY], "unique"),
        ("agencies", [], "agencies"),
        ("topics", [], "topics"),
        ("topics", ["weather"], "topics"),
        ("ceiling", "TOP SECRET", "ceiling"),
        ("code", "eu-siena", "code"),
        ("extra", 1, "extra"),
    ],
)
def test_a_link_file_refuses(field: str, value: Any, needle: str) -> None:
    d = json.loads(LINK.model_dump_json())
    d[field] = value
    with pytest.raises(EnvelopeError) as err:
        parse_link(json.dumps(d).encode())
    assert needle in str(err.value)


def test_a_link_file_round_trips() -> None:
    assert parse_link(LINK.model_dump_json().encode()) == LINK
