"""What the SDK hands back to the application: values, no I/O.

The wire models these are made from are in ``schemas``; these are the shapes an
application keeps (a verified, decrypted bulletin; the relay's verdict; receipts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from schemas.labels import Labels

__all__ = [
    "ForwardOutcome",
    "ForwardRequest",
    "ForwardedFrom",
    "Preview",
    "PublishResult",
    "RecallResult",
    "ReceiptCheck",
    "ReceiptReport",
    "ReceivedAttachment",
    "ReceivedBulletin",
    "ReplyContext",
    "Rfi",
    "VerifiedReceipts",
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
        envelope_digest: hex SHA-256 of the envelope as published (its canonical JSON):
            what every recipient's signed receipt must name; keep it to check them
            (``IstmoClient.verify_receipts``). None from ``wait_for_verdict`` alone.
    """

    bulletin_id: str
    state: str
    routed: tuple[str, ...] = ()
    denied: tuple[tuple[str, tuple[str, ...]], ...] = ()
    envelope_digest: str | None = None

    def to_json(self) -> dict[str, Any]:
        """As ``istmo publish --json`` (and ``reply``, ``rfi``) print it."""
        return {
            "id": self.bulletin_id,
            "state": self.state,
            "routed": list(self.routed),
            "denied": [{"agency": a, "policy_ids": list(p)} for a, p in self.denied],
            "envelope_digest": self.envelope_digest,
        }


@dataclass(frozen=True)
class ReceivedAttachment:
    """A file that came with a bulletin, not fetched yet (``IstmoClient.save_attachments``).

    Attributes:
        index: its place in the bulletin.
        name: the file name its originator gave (a plain name, no directories).
        media_type: what its originator said it is, e.g. ``application/pdf``.
        size: its length in bytes.
        chunks, chunk_size, digest: how it is stored, as the originator signed it.
        original: for a forward, the original bulletin this file came with: the chunks
            fetched through the forward are the original's, sealed under its id (ADR 20);
            None for a bulletin's own files.
    """

    index: int
    name: str
    media_type: str
    size: int
    chunks: int
    chunk_size: int
    digest: str
    # The key its chunks open with, derived from the bulletin's content key (ADR 17), or
    # for a forward the one its body gave (the original's, ADR 20).
    key: bytes = field(repr=False, compare=False, default=b"")
    original: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "media_type": self.media_type, "size": self.size}


@dataclass(frozen=True)
class ForwardedFrom:
    """Where a forwarded bulletin came from (ADR 20): the forwarder (the bulletin's
    signed ``originator``) passed on ``bulletin_id`` of ``originator`` with ``consent``:
    ``originator`` when it carried the originator's signed grant (the SDK checked it
    against the directory), ``policy`` when the policy let the forwarder pass it on
    without asking (the relay checked that)."""

    bulletin_id: str
    originator: str
    forwarded_by: str
    consent: str

    def describe(self) -> str:
        how = "with its consent" if self.consent == "originator" else "as the policy permits"
        return (
            f"forwarded by {self.forwarded_by}, originally from {self.originator} {how} "
            f"(bulletin {self.bulletin_id})"
        )


@dataclass(frozen=True)
class ReceivedBulletin:
    """A verified, decrypted bulletin, as the application receives it.

    ``expires_at`` is when its originator said it stops being valid (epoch seconds; the
    SDK never hands over one already expired); ``supersedes`` is the id of the
    originator's bulletin it corrects, if it is a correction (ADR 15): the corrected one is
    not withdrawn by it, the application decides what to show. A reply names the
    bulletin it answers (``in_reply_to``) and its ``thread`` (the id of the thread's first
    bulletin); ``reply_all`` says its originator lets replies reach every recipient; a
    request for information says by when it wants answers (``rfi_due``; answer it with
    ``IstmoClient.reply``). ADR 16. ``acknowledges``: a reply that says a person at its
    originator read ``in_reply_to`` and acted on it (ADR 27), apart from the receipt.
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
    in_reply_to: str | None = None
    thread: str | None = None
    reply_all: bool = False
    rfi_due: int | None = None
    # Files that came with it (ADR 17), fetched by ``IstmoClient.save_attachments``.
    attachments: tuple[ReceivedAttachment, ...] = ()
    forwarded: ForwardedFrom | None = None
    # The originator's key its signature verified under (``sig-...``); None in an
    # archive row kept before it was recorded. The signed time is ``created_at``.
    signed_kid: str | None = None
    # A human acknowledgement ("read and acted on") of ``in_reply_to`` (ADR 27).
    acknowledges: bool = False
    # The partner region it came from over a partner link, as this agency's pin names it
    # (``clients.partners``); None: from this region (ADR 33).
    region: str | None = None

    @property
    def sender(self) -> str:
        """The originator as a person reads it: ``gt-police``, or ``gt-police
        (istmo-sica)`` for a bulletin that crossed a partner link."""
        return self.originator if self.region is None else f"{self.originator} ({self.region})"

    def to_json(self) -> dict[str, Any]:
        """As ``istmo receive --json`` prints it: times in ISO 8601 (UTC), the source grade
        and handling note beside the labels, and where a forward came from."""
        fwd = self.forwarded
        shown: dict[str, Any] = {
            "kind": "bulletin",
            "id": self.id,
            "originator": self.originator,
            "labels": self.labels.model_dump(mode="json", exclude_none=True),
            "source_grade": self.labels.source_grade,
            "handling_note": self.labels.handling_note,
            "title": self.title,
            "body": self.body,
            "created_at": iso_time(self.created_at),
            "received_at": iso_time(self.received_at),
            "caveats": list(self.caveats),
            "expires_at": iso_time(self.expires_at),
            "supersedes": self.supersedes,
            "in_reply_to": self.in_reply_to,
            "thread": self.thread,
            "reply_all": self.reply_all,
            "rfi_due": iso_time(self.rfi_due),
            "forwarded": None if fwd is None else {
                "bulletin_id": fwd.bulletin_id,
                "originator": fwd.originator,
                "forwarded_by": fwd.forwarded_by,
                "consent": fwd.consent,
            },
        }  # fmt: skip
        if self.attachments:
            shown["attachments"] = [a.to_json() for a in self.attachments]
        if self.acknowledges:
            shown["acknowledges"] = True
        if self.region is not None:
            shown["region"] = self.region
        return shown


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
class ReplyContext:
    """What a reply to a bulletin starts from, as the broker recorded that bulletin
    (``schemas.agency.ReplyContextReply``; ADR 16).

    Attributes:
        bulletin_id: the bulletin answered.
        originator: its originator.
        labels: its labels: a reply's may be no weaker.
        thread: the thread a reply joins.
        reply_all: its originator lets replies reach every recipient.
        rfi_due: set when it is a request for information.
        audience: who a reply from this agency may reach (the policy decides each).
    """

    bulletin_id: str
    originator: str
    labels: Labels
    thread: str
    reply_all: bool
    rfi_due: int | None
    audience: tuple[str, ...]


@dataclass(frozen=True)
class Rfi:
    """A request for information as the broker knows it: metadata, never its text.

    Attributes:
        id: the RFI's bulletin id.
        asker: who asked.
        topic: its topic.
        precedence: its precedence.
        created_at: when it was asked, epoch seconds.
        due_at: when answers are due.
        state: ``open``, ``acknowledged`` (an addressee sent a receipt), ``answered`` (an
            addressee replied), ``closed`` (its asker closed it) or ``overdue`` (due, with
            no answer), at the time of asking.
        addressees: who it reached (for its asker only).
        acknowledged_by: addressees that received it (for its asker only).
        answered_by: addressees that replied (for its asker; an addressee sees itself).
        closed_at: when its asker closed it.
        overdue_since: when the broker raised its overdue alarm.
    """

    id: str
    asker: str
    topic: str
    precedence: str
    created_at: int
    due_at: int
    state: str
    addressees: tuple[str, ...]
    acknowledged_by: tuple[str, ...]
    answered_by: tuple[str, ...]
    closed_at: int | None
    overdue_since: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "asker": self.asker,
            "topic": self.topic,
            "precedence": self.precedence,
            "created_at": iso_time(self.created_at),
            "due_at": iso_time(self.due_at),
            "state": self.state,
            "addressees": list(self.addressees),
            "acknowledged_by": list(self.acknowledged_by),
            "answered_by": list(self.answered_by),
            "closed_at": iso_time(self.closed_at),
            "overdue_since": iso_time(self.overdue_since),
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
class ReceiptCheck:
    """One routed recipient of a bulletin, as its originator checked the receipt itself.

    Attributes:
        agency: the recipient.
        state: ``verified`` (its signed receipt checks out), ``not_received`` (none yet)
            or ``failed`` (see ``reason``).
        received_at: when it says it received the bulletin (epoch seconds), if it did.
        kid: the signing key that verified the receipt.
        reason: why it failed, a short code (``signature_invalid``, ``digest_mismatch``,
            ``key_revoked`` ...), and ``message`` in words.
        key_revoked_at: the key that verified it has been revoked since, at this time
            (after ``received_at``): the receipt stands, but says no more than the key's
            holder did.
    """

    agency: str
    state: Literal["verified", "not_received", "failed"]
    received_at: int | None = None
    kid: str | None = None
    reason: str | None = None
    message: str | None = None
    key_revoked_at: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "agency": self.agency,
            "state": self.state,
            "received_at": iso_time(self.received_at),
            "kid": self.kid,
            "reason": self.reason,
            "message": self.message,
            "key_revoked_at": iso_time(self.key_revoked_at),
        }


@dataclass(frozen=True)
class VerifiedReceipts:
    """Every routed recipient of one of this agency's bulletins, each receipt checked by
    this client (``IstmoClient.verify_receipts``).

    Attributes:
        bulletin_id: the bulletin.
        envelope_digest: the digest every receipt had to name.
        digest_from: ``publisher`` when it was the digest this agency gave (the one
            ``publish`` returned), ``broker`` when it was the one the broker recorded,
            which only shows the receipts agree with the broker.
        broker_digest: the digest the broker recorded.
        recipients: one check per routed recipient, in id order.
    """

    bulletin_id: str
    envelope_digest: str
    digest_from: Literal["publisher", "broker"]
    broker_digest: str
    recipients: tuple[ReceiptCheck, ...]

    @property
    def failed(self) -> tuple[ReceiptCheck, ...]:
        return tuple(r for r in self.recipients if r.state == "failed")


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


@dataclass(frozen=True)
class ForwardOutcome:
    """What ``forward`` did (ADR 20).

    Attributes:
        state: ``forwarded`` (the forward was accepted: ``forward_id``), ``requested``
            (the originator is asked: run ``forward`` again once it granted), or
            ``pending`` (sent; the relay had not decided within the wait).
        bulletin_id: the bulletin passed on.
        recipient: the agency it is passed to.
        request_id: the request to the originator, if one was needed.
        forward_id: the new bulletin (``forwarded`` and ``pending``).
        consent: ``originator`` or ``policy`` once sent.
    """

    state: str
    bulletin_id: str
    recipient: str
    request_id: str | None = None
    forward_id: str | None = None
    consent: str | None = None


@dataclass(frozen=True)
class ForwardRequest:
    """A request to forward one of this agency's bulletins, as its originator sees it."""

    request_id: str
    bulletin_id: str
    forwarder: str
    recipient: str
    reason: str | None
    requested_at: int
    state: str

    def to_json(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "bulletin_id": self.bulletin_id,
            "forwarder": self.forwarder,
            "recipient": self.recipient,
            "reason": self.reason,
            "requested_at": iso_time(self.requested_at),
            "state": self.state,
        }
