"""Withdrawals: an originator's signed statement that one of its bulletins is recalled.

One object does two jobs (ADR 15): the originator's SDK sends it to the broker as the
``recall`` request, and the relay forwards the very same bytes to the recipients that had
the bulletin, whose SDK checks the signature again. The broker can neither forge one nor
move one to another originator's bulletin.

Signed bytes: ``"istmo/v1/withdrawal" 0 canonical(every field but sig)``.

The reason is the originator's words, printed on recipients' terminals: 1 to
``MAX_REASON_CHARS`` characters, no control characters (no escape sequences, no line
breaks). It travels in clear through the broker: no bulletin content belongs in it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints

from schemas.canonical import canonical_json
from schemas.envelope import Kid, Timestamp, parse_model
from schemas.ids import AgencyId, AgencyIdStr, BulletinId, BulletinIdStr
from schemas.keys import SigningKey, VerifyKey
from schemas.selfsigned import sign_document, verify_document

__all__ = [
    "MAX_REASON_CHARS",
    "MAX_WITHDRAWAL_BYTES",
    "WITHDRAWAL_KIND",
    "Withdrawal",
    "encode_withdrawal",
    "parse_withdrawal",
    "sign_withdrawal",
    "verify_withdrawal",
]

MAX_REASON_CHARS = 280
MAX_WITHDRAWAL_BYTES = 4096
# The value of the ``Istmo-Kind`` header a delivered withdrawal carries (a bulletin has none).
WITHDRAWAL_KIND = "withdrawal"
# No C0 or C1 control character, no DEL: nothing a terminal would act on.
Reason = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=MAX_REASON_CHARS, pattern=r"^[^\x00-\x1f\x7f-\x9f]+$"
    ),
]


class Withdrawal(BaseModel):
    """``originator`` withdraws its bulletin ``bulletin_id``, for ``reason``, signed by key
    ``kid`` at ``issued_at`` (epoch seconds)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    v: Literal[1]
    bulletin_id: BulletinIdStr
    originator: AgencyIdStr
    reason: Reason
    issued_at: Timestamp
    kid: Kid
    sig: str


def sign_withdrawal(
    *,
    bulletin_id: BulletinId,
    originator: AgencyId,
    reason: str,
    issued_at: int,
    key: SigningKey,
) -> Withdrawal:
    """Build and sign a withdrawal with the originator's (current) signing key.

    Raises:
        pydantic.ValidationError: a field is out of bounds (the reason too long, say).
    """
    unsigned = Withdrawal(
        v=1,
        bulletin_id=bulletin_id,
        originator=originator,
        reason=reason,
        issued_at=issued_at,
        kid=key.verify_key.kid,
        sig="",
    )
    return sign_document("withdrawal", unsigned, key)


def verify_withdrawal(w: Withdrawal, key: VerifyKey) -> None:
    """Raise SignatureError unless ``w`` is signed by ``key``."""
    verify_document("withdrawal", w, kid=w.kid, sig=w.sig, key=key)


def encode_withdrawal(w: Withdrawal) -> bytes:
    """The canonical bytes of a withdrawal, as sent and as delivered."""
    return canonical_json(w.model_dump(mode="json"))


def parse_withdrawal(raw: bytes) -> Withdrawal:
    """Parse a withdrawal strictly (EnvelopeError on any fault, naming the field only)."""
    return parse_model(Withdrawal, raw, max_bytes=MAX_WITHDRAWAL_BYTES, what="withdrawal")
