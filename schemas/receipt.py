"""Signed receipts: a recipient's statement that its application received a bulletin."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints

from schemas.envelope import Kid, Timestamp, parse_model
from schemas.ids import AgencyId, AgencyIdStr, BulletinId, BulletinIdStr
from schemas.keys import SigningKey, VerifyKey
from schemas.selfsigned import sign_document, verify_document

__all__ = ["MAX_RECEIPT_BYTES", "Receipt", "parse_receipt", "sign_receipt", "verify_receipt"]

MAX_RECEIPT_BYTES = 4096
Digest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class Receipt(BaseModel):
    """Recipient ``recipient`` received the envelope with digest ``envelope_digest``."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    v: Literal[1]
    bulletin_id: BulletinIdStr
    originator: AgencyIdStr
    recipient: AgencyIdStr
    envelope_digest: Digest
    received_at: Timestamp
    kid: Kid
    sig: str


def sign_receipt(
    *,
    bulletin_id: BulletinId,
    originator: AgencyId,
    recipient: AgencyId,
    envelope_digest: str,
    received_at: int,
    key: SigningKey,
) -> Receipt:
    """Build and sign a receipt with the recipient's signing key."""
    unsigned = Receipt(
        v=1,
        bulletin_id=bulletin_id,
        originator=originator,
        recipient=recipient,
        envelope_digest=envelope_digest,
        received_at=received_at,
        kid=key.verify_key.kid,
        sig="",
    )
    return sign_document("receipt", unsigned, key)


def verify_receipt(receipt: Receipt, key: VerifyKey) -> None:
    """Raise SignatureError unless ``receipt`` is signed by ``key``."""
    verify_document("receipt", receipt, kid=receipt.kid, sig=receipt.sig, key=key)


def parse_receipt(raw: bytes) -> Receipt:
    """Parse a receipt strictly (EnvelopeError on any fault)."""
    return parse_model(Receipt, raw, max_bytes=MAX_RECEIPT_BYTES, what="receipt")
