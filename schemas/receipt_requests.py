"""The ``receipts`` request, and the signed form of its answer that an originator checks
itself (issue 19).

    {"bulletin_id"}                         ReceiptsReply (schemas.agency): each routed
                                            recipient, when it received the bulletin and
                                            its receipt's signature
    {"bulletin_id", "signed": true,         SignedReceiptsReply: the bulletin's originator
     "after": agency id (optional)}         and envelope digest as the broker recorded
                                            them, and each routed recipient's whole signed
                                            receipt (``schemas.receipt.Receipt``), a page
                                            of at most ``MAX_SIGNED_RECEIPTS`` recipients
                                            in id order after ``after``; ``next`` names
                                            where the next page starts

A request without ``signed`` is the bytes an SDK before this one sends, and gets the
answer it always had: replies are parsed strictly, so the answer changes shape only for a
client that asked. A broker before this one refuses ``signed`` as an unknown field
(``malformed``).

With every field of the receipt, the originator verifies each with
``schemas.receipt.verify_receipt`` under the recipient's key from the signed directory,
and compares ``envelope_digest`` with the digest of the envelope it published: the broker
can leave a receipt out, but not make one up. An entry with ``received_at`` but no
``receipt`` is one the broker recorded and cannot show signed (recorded before the relay
kept key ids, and no signing key of the recipient verifies it): the broker says so rather
than name a key.

Pure: no I/O. Left to others: the answer (``broker.relay.queries``), the checks the
originator makes (``clients.receipt_checks``).
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.envelope import Timestamp
from schemas.ids import AgencyIdStr, BulletinIdStr
from schemas.receipt import Digest, Receipt

__all__ = [
    "MAX_SIGNED_RECEIPTS",
    "ReceiptsRequest",
    "SignedReceiptEntry",
    "SignedReceiptsReply",
]

# Recipients in one page of a signed answer: about 420 bytes each, so a page stays near
# 420 KB, well under NATS's 2 MiB message limit, whatever the audience (up to 10,000).
MAX_SIGNED_RECEIPTS = 1000

_STRICT = ConfigDict(frozen=True, extra="forbid", strict=True)


class ReceiptsRequest(BaseModel):
    """Who received one of the caller's bulletins; ``signed`` for every receipt whole,
    from the first recipient whose id sorts after ``after``."""

    model_config = _STRICT

    bulletin_id: BulletinIdStr
    signed: Literal[True] | None = None
    after: AgencyIdStr | None = None

    @model_validator(mode="after")
    def _after_only_signed(self) -> Self:
        if self.after is not None and self.signed is None:
            raise ValueError("after pages the signed answer: send it with signed")
        return self


class SignedReceiptEntry(BaseModel):
    """A routed recipient: when the broker recorded it received the bulletin, and its
    signed receipt (None: not received yet, or, with ``received_at``, a receipt the broker
    cannot show signed)."""

    model_config = _STRICT

    agency: AgencyIdStr
    received_at: Timestamp | None
    receipt: Receipt | None


class SignedReceiptsReply(BaseModel):
    """One page of the routed recipients of one of the caller's bulletins, with their
    signed receipts.

    Attributes:
        bulletin_id: the bulletin.
        originator: its originator, as the broker accepted it (the caller).
        envelope_digest: the digest of the envelope the broker accepted, hex SHA-256 of its
            canonical JSON: the one every receipt must name.
        recipients: routed recipients in id order, at most ``MAX_SIGNED_RECEIPTS``.
        next: ask again with ``after`` set to this to get the next page (None: last page).
    """

    model_config = _STRICT

    bulletin_id: BulletinIdStr
    originator: AgencyIdStr
    envelope_digest: Digest
    recipients: tuple[SignedReceiptEntry, ...] = Field(max_length=MAX_SIGNED_RECEIPTS)
    next: AgencyIdStr | None
