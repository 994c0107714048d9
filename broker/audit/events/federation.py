"""A partner link's events (ADR 32): a bulletin the guard passed or blocked, one that
arrived from a partner, and counts of the two sides that differ.

A passed, blocked or arrived event's id is ``federation:<link>:<bulletin>:<what>``, so a
guard that sees the same bulletin again (a redelivery) writes nothing new and the day's
counts stay exact. Their data are labels, the bulletin's ``created_at`` (the day it is
counted on) and the link's agencies it was addressed to: never content.
"""

from __future__ import annotations

from typing import Literal

from broker.audit.events._common import MAX, one_off
from schemas.audit import AuditEvent, DataValue
from schemas.envelope import Header

__all__ = [
    "federation_arrived",
    "federation_blocked",
    "federation_mismatch",
    "federation_passed",
    "federation_refused",
    "federation_subject",
]


def federation_subject(link: str) -> str:
    """What a link's events are about: ``link:<name>``."""
    return f"link:{link}"


def _labelled(link: str, header: Header, to: tuple[str, ...]) -> dict[str, DataValue]:
    labels = header.labels
    return {
        "link": link,
        "originator": header.originator,
        "created_at": header.created_at,
        "topic": labels.topic,
        "classification": labels.classification.value,
        "tlp": labels.tlp.value,
        "handling": tuple(sorted(h.value for h in labels.handling)),
        "rel_to": tuple(labels.rel_to[:16]),
        "to": tuple(to[:16]),
    }


def federation_passed(
    link: str, header: Header, to: tuple[str, ...], *, actor: str, at: int
) -> AuditEvent:
    """The guard of ``link`` let ``header``'s bulletin cross to the link's agencies ``to``."""
    return _crossed("federation.passed", link, header, to, actor=actor, at=at)


def federation_arrived(
    link: str, header: Header, to: tuple[str, ...], *, actor: str, at: int
) -> AuditEvent:
    """``header``'s bulletin arrived over ``link`` and passed this side's own check."""
    return _crossed("federation.arrived", link, header, to, actor=actor, at=at)


def _crossed(
    kind: Literal["federation.passed", "federation.arrived"],
    link: str,
    header: Header,
    to: tuple[str, ...],
    *,
    actor: str,
    at: int,
) -> AuditEvent:
    return AuditEvent(
        event_id=f"federation:{link}:{header.bulletin_id}:{kind.removeprefix('federation.')}",
        type=kind,
        time=at,
        actor=actor[:MAX],
        subject=federation_subject(link),
        bulletin_id=header.bulletin_id,
        data=_labelled(link, header, to),
    )


def federation_blocked(
    link: str,
    header: Header | None,
    to: tuple[str, ...],
    reasons: tuple[str, ...],
    *,
    side: str,
    actor: str,
    at: int,
) -> AuditEvent:
    """``link``'s guard (``side`` ``sent``) or arrival check (``received``) blocked a
    bulletin for ``reasons``; without a header (it did not parse) the event is one-off."""
    data: dict[str, DataValue] = {"link": link, "side": side, "reasons": reasons}
    if header is not None:
        data |= _labelled(link, header, to)
    return AuditEvent(
        event_id=(
            f"federation:{link}:{header.bulletin_id}:blocked:{side}"
            if header is not None
            else one_off(f"federation:{link}:blocked")
        ),
        type="federation.blocked",
        time=at,
        actor=actor[:MAX],
        subject=federation_subject(link),
        bulletin_id=None if header is None else header.bulletin_id,
        reason=reasons[0] if reasons else "default_deny",
        data=data,
    )


def federation_refused(
    link: str, reason: str, digest: str, *, claimed: str | None, actor: str, at: int
) -> AuditEvent:
    """A transfer over ``link`` was refused before the link's rules were applied (it did
    not parse, or a signature did not verify: ADR 33) for ``reason``. ``digest`` (the
    SHA-256 of the bytes received) is its id, so the same bytes sent again are one event;
    ``claimed`` is the bulletin id it claimed, unverified."""
    data: dict[str, DataValue] = {"link": link, "side": "received", "digest": digest}
    if claimed is not None:
        data["claimed_bulletin"] = claimed[:MAX]
    return AuditEvent(
        event_id=f"federation:{link}:refused:{digest[:64]}",
        type="federation.refused",
        time=at,
        actor=actor[:MAX],
        subject=federation_subject(link),
        reason=reason,
        data=data,
    )


def federation_mismatch(
    link: str, day: str, differences: list[str], *, actor: str, at: int
) -> AuditEvent:
    """The two sides' counts of ``link`` for ``day`` differ (or one side's did not verify):
    the alarm, with the first differences."""
    return AuditEvent(
        event_id=one_off(f"federation:{link}:mismatch"),
        type="federation.mismatch",
        time=at,
        actor=actor[:MAX],
        subject=federation_subject(link),
        reason="counts_differ",
        data={
            "link": link,
            "day": day,
            "differences": len(differences),
            "first": tuple(d[:MAX] for d in differences[:16]),
        },
    )
