"""What the SDK hands back to the application: values, no I/O.

The wire models these are made from are in ``schemas``; these are the shapes an
application keeps (a verified, decrypted bulletin; the relay's verdict; receipts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.labels import Labels

__all__ = ["Preview", "PublishResult", "ReceiptReport", "ReceivedBulletin", "Withheld"]


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
    """A verified, decrypted bulletin, as the application receives it."""

    id: str
    originator: str
    labels: Labels
    title: str
    body: str
    created_at: int
    received_at: int
    caveats: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "originator": self.originator,
            "labels": self.labels.model_dump(mode="json", exclude_none=True),
            "title": self.title,
            "body": self.body,
            "created_at": self.created_at,
            "received_at": self.received_at,
            "caveats": list(self.caveats),
        }


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
