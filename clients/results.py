"""What the SDK hands back to the application: values, no I/O.

The wire models these are made from are in ``schemas``; these are the shapes an
application keeps (a verified, decrypted bulletin; the relay's verdict; receipts).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from schemas.labels import Labels

__all__ = [
    "Preview",
    "PublishResult",
    "RecallResult",
    "ReceiptReport",
    "ReceivedBulletin",
    "Withdrawn",
    "Withheld",
    "iso_time",
    "shown_time",
]


def shown_time(at: int) -> str:
    """Epoch seconds as people read them in ``istmo``'s output (``2026-12-07 10:30:00Z``)."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def iso_time(at: int | None) -> str | None:
    """Epoch seconds as ISO 8601 in UTC (``2026-12-07T10:30:00Z``); None stays None."""
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class PublishResult:
    """What happened to a published bulletin.

    Attributes:
        bulletin_id: the id to quote for receipts.
        state: "accepted" once the relay routed it, "pending" if the wait timed out,
            "embargoed" if it was published with a ``not_before`` still to come.
        routed: agencies it was delivered to.
        denied: (agency, policy ids) the policy refused, with the deciding policies.
    """

    bulletin_id: str
    state: str
    routed: tuple[str, ...] = ()
    denied: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class ReceivedBulletin:
    """A verified, decrypted bulletin, as the application receives it.

    ``expires_at`` is when its originator said it stops being valid (epoch seconds; the
    SDK never hands over one already expired); ``supersedes`` is the id of the
    originator's bulletin it corrects, if it is a correction (ADR 15): the corrected one is
    not withdrawn by it, the application decides what to show.
    """

    id: str
    originator: str
    labels: Labels
    title: str
    body: str
    created_at: int
    received_at: int
    caveats: tuple[str, ...]
    expires_at: int | None = None
    supersedes: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "bulletin",
            "id": self.id,
            "originator": self.originator,
            "labels": self.labels.model_dump(mode="json", exclude_none=True),
            "title": self.title,
            "body": self.body,
            "created_at": self.created_at,
            "received_at": self.received_at,
            "caveats": list(self.caveats),
            "expires_at": iso_time(self.expires_at),
            "supersedes": self.supersedes,
        }


@dataclass(frozen=True)
class Withdrawn:
    """A bulletin its originator withdrew, as the application is told (ADR 15): the
    withdrawal was signed by the originator's key, checked against the signed directory.

    Attributes:
        id: the withdrawn bulletin's id.
        originator: who withdrew it (its originator).
        reason: the originator's words.
        withdrawn_at: when the originator signed the withdrawal, epoch seconds.
        had_it: whether this SDK had handed the bulletin to the application; False when it
            never arrived (or arrived only after its withdrawal, and was dropped).
    """

    id: str
    originator: str
    reason: str
    withdrawn_at: int
    had_it: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "withdrawal",
            "id": self.id,
            "originator": self.originator,
            "reason": self.reason,
            "withdrawn_at": iso_time(self.withdrawn_at),
            "had_it": self.had_it,
        }


@dataclass(frozen=True)
class RecallResult:
    """What a recall did (``schemas.agency.RecallReply``).

    Attributes:
        bulletin_id: the withdrawn bulletin.
        withdrawn_at: when the broker recorded the withdrawal, epoch seconds.
        state: ``done``, or ``pending``: recorded, copies still being removed (ask again).
        removed: recipients whose copy was removed before it reached them (not told).
        notified: recipients sent the signed withdrawal (they had it, or may have).
        copies_kept: undelivered copies an old delivery stream would not let go; those
            recipients' SDKs drop them.
    """

    bulletin_id: str
    withdrawn_at: int
    state: str
    removed: tuple[str, ...]
    notified: tuple[str, ...]
    copies_kept: int


@dataclass(frozen=True)
class Preview:
    """The policy's answer before publishing: (agency, permitted, why) per candidate."""

    policy_version: str
    may_publish: bool
    candidates: tuple[tuple[str, bool, str], ...]


@dataclass(frozen=True)
class ReceiptReport:
    """Who received a bulletin: (agency, received_at or None) per routed recipient."""

    bulletin_id: str
    recipients: tuple[tuple[str, int | None], ...]


@dataclass(frozen=True)
class Withheld:
    """How many bulletins the policy withheld from this agency, and when: nothing about
    which they were.

    Attributes:
        bulletins: how many (0: none).
        first_at: when the first was decided, epoch seconds to the minute (None: none).
        latest_at: when the latest was, likewise.
    """

    bulletins: int
    first_at: int | None
    latest_at: int | None
