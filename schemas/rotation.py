"""Key rotation: an agency registers new keys, vouched for by the key it holds now.

The request carries the new public halves and two signatures over the same bytes: one by
the current signing key (it is really the agency asking) and one by the new signing key
(the agency really holds it). The broker keeps the old signing key for verifying what it
signed while it was current, and stops accepting it for anything signed after the
rotation; old encryption keys stay in the keystore so old bulletins still open.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from schemas.canonical import b64d, b64e, canonical_json
from schemas.directory import EncryptionKeyRecord, PublicB64
from schemas.envelope import Kid, Timestamp, parse_model
from schemas.errors import SignatureError
from schemas.ids import AgencyIdStr
from schemas.keys import SigningKey, VerifyKey

__all__ = [
    "MAX_ROTATION_BYTES",
    "RotationRequest",
    "parse_rotation",
    "sign_rotation",
    "verify_rotation",
]

MAX_ROTATION_BYTES = 16 * 1024
_STRICT = ConfigDict(frozen=True, extra="forbid", strict=True)


class NewSigningKey(BaseModel):
    model_config = _STRICT
    kid: Kid
    public: PublicB64


class RotationRequest(BaseModel):
    """New keys for ``agency``, signed by its current key and by the new one."""

    model_config = _STRICT

    v: Literal[1]
    agency: AgencyIdStr
    issued_at: Timestamp
    current_kid: Kid
    signing: NewSigningKey
    encryption: EncryptionKeyRecord
    sig_current: str
    sig_new: str

    def new_verify_key(self) -> VerifyKey:
        key = VerifyKey(b64d(self.signing.public, field="signing.public", max_bytes=32))
        if key.kid != self.signing.kid:
            raise SignatureError("new signing key does not match its id", code="bad_key")
        return key


def _signed_bytes(r: RotationRequest) -> bytes:
    body = r.model_dump(mode="json", exclude={"sig_current", "sig_new"})
    return b"istmo/v1/rotate\x00" + canonical_json(body)


def sign_rotation(
    *,
    agency: str,
    issued_at: int,
    current: SigningKey,
    new: SigningKey,
    encryption: EncryptionKeyRecord,
) -> RotationRequest:
    """Build a rotation request signed by the current and the new signing keys."""
    vk = new.verify_key
    unsigned = RotationRequest(
        v=1,
        agency=agency,
        issued_at=issued_at,
        current_kid=current.verify_key.kid,
        signing=NewSigningKey(kid=vk.kid, public=b64e(vk.public)),
        encryption=encryption,
        sig_current="",
        sig_new="",
    )
    message = _signed_bytes(unsigned)
    return unsigned.model_copy(
        update={"sig_current": b64e(current.sign(message)), "sig_new": b64e(new.sign(message))}
    )


def verify_rotation(request: RotationRequest, current: VerifyKey) -> None:
    """Check both signatures and that the keys match their ids.

    Raises:
        SignatureError: a signature fails, or a key does not match its id.
        EnvelopeError: a weak or malformed key.
    """
    if current.kid != request.current_kid:
        raise SignatureError("rotation is not signed by the current key", code="key_not_current")
    message = _signed_bytes(request)
    current.verify(b64d(request.sig_current, field="sig_current", max_bytes=64), message)
    request.new_verify_key().verify(b64d(request.sig_new, field="sig_new", max_bytes=64), message)
    request.encryption.public_key()  # raises on a weak key or a kid that does not match


def parse_rotation(raw: bytes) -> RotationRequest:
    """Parse a rotation request strictly (EnvelopeError on any fault)."""
    return parse_model(RotationRequest, raw, max_bytes=MAX_ROTATION_BYTES, what="rotation")
