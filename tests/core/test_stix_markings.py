"""STIX bundles' markings mapped to Istmo's TLP label, and what is refused (clients.stix)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from clients.stix import TLP1_MARKINGS, TLP2_MARKINGS, bulletin_of_bundle, tlp_of_bundle
from schemas.errors import EnvelopeError
from schemas.labels import Tlp

WHITE_1_0 = "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9"
AMBER_1_0 = "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82"
CUSTOM = "marking-definition--1e9a1c3e-5e1c-4b5e-9d3e-2a1f0c9b8a77"


def indicator(n: int, *refs: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--0b2f4e1c-1111-4a2b-8c3d-{n:012d}",
        "object_marking_refs": list(refs),
        **extra,
    }


def bundle(*objects: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "bundle",
        "id": "bundle--5d1e2c3b-0a9f-4e8d-b7c6-a5f4e3d2c1b0",
        "objects": list(objects),
    }


@pytest.mark.parametrize(
    ("objects", "tlp", "notes"),
    [
        ([indicator(1, TLP2_MARKINGS[Tlp.GREEN])], Tlp.GREEN, 0),
        ([indicator(1, TLP2_MARKINGS[Tlp.CLEAR])], Tlp.CLEAR, 0),
        # The strictest level of all objects is the bulletin's.
        (
            [indicator(1, TLP2_MARKINGS[Tlp.GREEN]), indicator(2, TLP2_MARKINGS[Tlp.AMBER_STRICT])],
            Tlp.AMBER_STRICT,
            0,
        ),
        # TLP 1.0: WHITE is TLP 2.0's CLEAR, the others keep their names; the user is told.
        ([indicator(1, WHITE_1_0)], Tlp.CLEAR, 1),
        ([indicator(1, AMBER_1_0)], Tlp.AMBER, 1),
        # A TLP marking definition carried in the bundle is fine.
        (
            [
                {"type": "marking-definition", "id": TLP2_MARKINGS[Tlp.RED]},
                indicator(1, TLP2_MARKINGS[Tlp.RED]),
            ],
            Tlp.RED,
            0,
        ),
    ],
)
def test_mapped(objects: list[dict[str, Any]], tlp: Tlp, notes: int) -> None:
    got = tlp_of_bundle(bundle(*objects))
    assert got.tlp == tlp
    assert len(got.notes) == notes


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"type": "report"}, "not a STIX bundle"),
        (bundle(), "has no objects"),
        (bundle(indicator(1)), "no TLP marking: give every object one"),
        (bundle(indicator(1, CUSTOM)), "is not TLP: Istmo cannot map it"),
        (
            bundle({"type": "marking-definition", "id": CUSTOM, "definition_type": "statement"}),
            "maps only TLP markings",
        ),
        (
            bundle(indicator(1, TLP2_MARKINGS[Tlp.GREEN], WHITE_1_0)),
            r"two TLP levels on one object \(TLP:CLEAR, TLP:GREEN\)",
        ),
        (
            bundle(
                indicator(
                    1,
                    TLP2_MARKINGS[Tlp.GREEN],
                    granular_markings=[
                        {"marking_ref": TLP2_MARKINGS[Tlp.RED], "selectors": ["name"]}
                    ],
                )
            ),
            "granular markings cannot be mapped",
        ),
        (bundle({"type": "marking-definition", "id": TLP2_MARKINGS[Tlp.RED]}), "only marking"),
        (bundle(*[indicator(i, TLP2_MARKINGS[Tlp.GREEN]) for i in range(1001)]), "over 1000"),
    ],
)
def test_refused(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(EnvelopeError, match=message) as err:
        tlp_of_bundle(doc)
    assert err.value.code == "unknown_label"


def test_bundle_as_a_bulletin() -> None:
    report = {
        "type": "report",
        "id": "report--7a1e2c3b-0a9f-4e8d-b7c6-a5f4e3d2c1b0",
        "name": "Go-fast boats",
        "object_marking_refs": [TLP2_MARKINGS[Tlp.AMBER]],
    }
    raw = json.dumps(bundle(report, indicator(1, TLP2_MARKINGS[Tlp.GREEN]))).encode()
    got = bulletin_of_bundle(raw, title=None, max_bytes=10_000)
    assert (got.tlp, got.title, got.text) == (Tlp.AMBER, "Go-fast boats", raw.decode())
    assert bulletin_of_bundle(raw, title="Mine", max_bytes=10_000).title == "Mine"
    with pytest.raises(EnvelopeError, match="over 0 KiB"):
        bulletin_of_bundle(raw, title=None, max_bytes=100)
    with pytest.raises(EnvelopeError, match="not UTF-8 JSON"):
        bulletin_of_bundle(b"{", title=None, max_bytes=100)
    no_report = json.dumps(bundle(indicator(1, TLP2_MARKINGS[Tlp.GREEN]))).encode()
    with pytest.raises(EnvelopeError, match="give --title"):
        bulletin_of_bundle(no_report, title=None, max_bytes=10_000)
    assert set(TLP1_MARKINGS.values()) == {Tlp.CLEAR, Tlp.GREEN, Tlp.AMBER, Tlp.RED}
