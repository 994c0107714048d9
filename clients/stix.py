"""Bulletins as STIX 2.1 objects, and a STIX bundle's TLP markings as Istmo's (ADR 23).

Outward (the agency's TAXII server, ``clients.taxii_app``): a bulletin is a ``report``, a
reply a ``note`` on the bulletin it answers; its TLP level is the TLP 2.0 marking
definition FIRST and OASIS published (fixed ids), its other labels are ``labels`` strings
(``istmo:classification=RESTRICTED``), its originator an ``identity`` id derived from the
agency id. Inward (``istmo publish --stix``): every object of a bundle must carry exactly
one TLP marking Istmo can map, and the bulletin gets the strictest of them; anything else
(a statement or custom marking, granular markings, two TLP levels on one object) is
refused, saying which object and why. Pure: dicts in, dicts out.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from clients.results import ReceivedBulletin
from schemas.errors import EnvelopeError
from schemas.labels import TOPICS, Tlp

__all__ = [
    "STIX_MEDIA_TYPE",
    "TLP1_MARKINGS",
    "TLP2_MARKINGS",
    "TLP_ORDER",
    "BundleBulletin",
    "BundleMarking",
    "bulletin_of_bundle",
    "collection_id",
    "identity_id",
    "marking_definition",
    "stix_objects_of",
    "stix_time",
    "tlp_of_bundle",
    "tlps_up_to",
    "topic_of_collection",
]

STIX_MEDIA_TYPE: Final = "application/stix+json;version=2.1"
# Istmo's namespace for the ids it derives (collections, identities): uuid5 of it.
_NAMESPACE: Final = uuid.UUID("5b0c8a9e-6f3d-4d2b-9a61-1f1c3e7a2d40")
TLP_ORDER: Final = (Tlp.CLEAR, Tlp.GREEN, Tlp.AMBER, Tlp.AMBER_STRICT, Tlp.RED)

# TLP 2.0 as STIX 2.1 marking definitions (OASIS cti-stix-common-objects), by level.
TLP2_EXTENSION: Final = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d"
TLP2_MARKINGS: Final = {
    Tlp.CLEAR: "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
    Tlp.GREEN: "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
    Tlp.AMBER: "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
    Tlp.AMBER_STRICT: "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
    Tlp.RED: "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
}
# TLP 1.0 as the STIX 2.1 specification predefines it. TLP 2.0 says TLP:WHITE is now
# TLP:CLEAR; GREEN, AMBER and RED keep their names and meaning (AMBER+STRICT is new).
TLP1_MARKINGS: Final = {
    "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9": Tlp.CLEAR,  # TLP:WHITE
    "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da": Tlp.GREEN,
    "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82": Tlp.AMBER,
    "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed": Tlp.RED,
}
_TLP_BY_ID: Final = {**{v: k for k, v in TLP2_MARKINGS.items()}, **TLP1_MARKINGS}
_TLP2_CREATED: Final = "2022-10-01T00:00:00.000Z"


def stix_time(epoch_s: int) -> str:
    """Epoch seconds as a STIX timestamp (millisecond precision, UTC)."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def collection_id(topic: str) -> str:
    """The TAXII collection id of ``topic`` (the same at every agency)."""
    return str(uuid.uuid5(_NAMESPACE, f"collection/{topic}"))


_TOPIC_BY_COLLECTION: Final = {collection_id(t): t for t in TOPICS}


def topic_of_collection(cid: str) -> str | None:
    return _TOPIC_BY_COLLECTION.get(cid)


def identity_id(agency: str) -> str:
    """The STIX identity id that stands for ``agency``."""
    return f"identity--{uuid.uuid5(_NAMESPACE, f'agency/{agency}')}"


def marking_definition(tlp: Tlp) -> dict[str, Any]:
    """The TLP 2.0 marking definition object of ``tlp``, as OASIS published it."""
    return {
        "type": "marking-definition",
        "spec_version": "2.1",
        "id": TLP2_MARKINGS[tlp],
        "created": _TLP2_CREATED,
        "name": f"TLP:{tlp.value}",
        "extensions": {
            TLP2_EXTENSION: {
                "extension_type": "property-extension",
                "tlp_2_0": tlp.value.lower(),
            }
        },
    }


def _text(b: ReceivedBulletin) -> str:
    text = b.body
    if b.caveats:
        text += "\n\n" + "\n".join(f"Caveat: {c}" for c in b.caveats)
    if b.attachments:
        text += "\n\n" + "\n".join(
            f"Attached (fetch with istmo): {a.name} ({a.media_type}, {a.size} bytes)"
            for a in b.attachments
        )
    return text


def _labels(b: ReceivedBulletin) -> list[str]:
    lab = b.labels
    shown = [
        f"istmo:topic={lab.topic}",
        f"istmo:classification={lab.classification.value}",
        f"istmo:precedence={lab.precedence.value}",
        *(f"istmo:rel-to={j}" for j in lab.rel_to),
        *(f"istmo:handling={h.value}" for h in lab.handling),
    ]
    if lab.source_grade:
        shown.append(f"istmo:source-grade={lab.source_grade}")
    return shown


def stix_objects_of(b: ReceivedBulletin) -> dict[str, Any]:
    """The STIX 2.1 object a bulletin is: a ``report``, or a ``note`` for a reply."""
    when = stix_time(b.created_at)
    common: dict[str, Any] = {
        "spec_version": "2.1",
        "created": when,
        "modified": when,
        "created_by_ref": identity_id(b.originator),
        "labels": _labels(b),
        "object_marking_refs": [TLP2_MARKINGS[b.labels.tlp]],
        "external_references": [{"source_name": "istmo", "external_id": b.id}],
    }
    if b.in_reply_to is not None and b.thread is not None:
        # The thread's first bulletin is a report; a reply to a reply answers a note.
        answered = "report" if b.in_reply_to == b.thread else "note"
        refs = [f"report--{b.thread}"]
        if answered == "note":
            refs.append(f"note--{b.in_reply_to}")
        return {
            "type": "note",
            "id": f"note--{b.id}",
            **common,
            "abstract": b.title,
            "content": _text(b),
            "object_refs": refs,
        }
    refs = [identity_id(b.originator)]
    if b.supersedes:
        refs.append(f"report--{b.supersedes}")
    return {
        "type": "report",
        "id": f"report--{b.id}",
        **common,
        "name": b.title,
        "description": _text(b),
        "report_types": ["threat-report"],
        "published": when,
        "object_refs": refs,
    }


# ---------------------------------------------------------------- publish --stix
MAX_BUNDLE_OBJECTS = 1000


@dataclass(frozen=True)
class BundleMarking:
    """What a bundle's markings map to: the strictest TLP level, and notes for the user
    (a TLP 1.0 marking read as its TLP 2.0 level)."""

    tlp: Tlp
    notes: tuple[str, ...]


def _refused(message: str) -> EnvelopeError:
    return EnvelopeError(message, code="unknown_label")


def tlp_of_bundle(bundle: Any) -> BundleMarking:
    """The TLP level a bulletin carrying ``bundle`` must have: the strictest of its
    objects' markings.

    Raises:
        EnvelopeError: ``unknown_label``: not a bundle; an object with no TLP marking,
            two, a marking Istmo does not know (a statement, a custom one), or granular
            markings; a marking definition in the bundle that is not TLP.
    """
    if not isinstance(bundle, dict) or bundle.get("type") != "bundle":
        raise _refused("not a STIX bundle: its type must be 'bundle'")
    objects = bundle.get("objects")
    if not isinstance(objects, list) or not objects:
        raise _refused("the STIX bundle has no objects")
    if len(objects) > MAX_BUNDLE_OBJECTS:
        raise _refused(f"the STIX bundle has over {MAX_BUNDLE_OBJECTS} objects")
    levels: list[Tlp] = []
    notes: list[str] = []
    for obj in objects:
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
            raise _refused("a STIX object in the bundle has no id")
        oid = str(obj["id"])[:100]
        if obj.get("type") == "marking-definition":
            if obj["id"] not in _TLP_BY_ID:
                raise _refused(
                    f"{oid}: Istmo maps only TLP markings to labels, not this marking "
                    "definition: remove it and its uses, or mark with TLP"
                )
            continue
        if obj.get("granular_markings"):
            raise _refused(f"{oid}: granular markings cannot be mapped: mark whole objects")
        refs = obj.get("object_marking_refs") or []
        if not isinstance(refs, list):
            raise _refused(f"{oid}: object_marking_refs is not a list")
        unknown = [r for r in refs if r not in _TLP_BY_ID]
        if unknown:
            raise _refused(
                f"{oid}: marking {str(unknown[0])[:100]} is not TLP: Istmo cannot map it to "
                "a label (use a TLP 2.0 marking)"
            )
        tlps = {_TLP_BY_ID[r] for r in refs}
        if not tlps:
            raise _refused(f"{oid}: no TLP marking: give every object one")
        if len(tlps) > 1:
            shown = ", ".join(sorted(f"TLP:{t.value}" for t in tlps))
            raise _refused(f"{oid}: two TLP levels on one object ({shown})")
        levels += tlps
        notes += [
            f"{oid}: TLP 1.0 marking read as TLP:{_TLP_BY_ID[r].value} (TLP 2.0)"
            for r in refs
            if r in TLP1_MARKINGS
        ]
    if not levels:
        raise _refused("the STIX bundle holds only marking definitions")
    strictest = max(levels, key=TLP_ORDER.index)
    return BundleMarking(strictest, tuple(dict.fromkeys(notes)))


def tlps_up_to(tlp: Tlp) -> Sequence[str]:
    """The TLP levels no stricter than ``tlp``."""
    return [t.value for t in TLP_ORDER[: TLP_ORDER.index(tlp) + 1]]


@dataclass(frozen=True)
class BundleBulletin:
    """What ``istmo publish --stix`` publishes for a bundle: its TLP level (the strictest
    of its markings), a title, the bundle's own text as the body, and notes for the user."""

    tlp: Tlp
    title: str
    text: str
    notes: tuple[str, ...]


def bulletin_of_bundle(raw: bytes, *, title: str | None, max_bytes: int) -> BundleBulletin:
    """Read a STIX 2.1 bundle for publishing as one bulletin.

    The title is ``title`` if given, else the name of the bundle's one report.

    Raises:
        EnvelopeError: ``unknown_label`` as ``tlp_of_bundle``; ``malformed``: over
            ``max_bytes``, not UTF-8 JSON, or no title to be had.
    """
    if len(raw) > max_bytes:
        raise EnvelopeError(f"the STIX bundle is over {max_bytes // 1024} KiB", code="malformed")
    try:
        text = raw.decode("utf-8")
        bundle = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise EnvelopeError("the STIX bundle is not UTF-8 JSON", code="malformed") from exc
    marking = tlp_of_bundle(bundle)
    if title is None:
        names = [
            o.get("name")
            for o in bundle["objects"]
            if isinstance(o, dict) and o.get("type") == "report"
        ]
        if len(names) != 1 or not isinstance(names[0], str) or not names[0].strip():
            raise EnvelopeError(
                "the STIX bundle has no single report to take a title from: give --title",
                code="malformed",
            )
        title = names[0].strip()[:300]
    return BundleBulletin(marking.tlp, title, text, marking.notes)
