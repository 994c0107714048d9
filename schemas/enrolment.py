"""Enrolment: an agency registers its first keys with a one-time token from an administrator.

The agency generates its three keys on its own machine (Ed25519 signing key, HPKE
encryption key, NATS user nkey) and sends only the public halves, in a request signed by
the new signing key and by the NATS key (proof that it holds both). The request names the
token's id, not its secret, so a proof cannot be replayed with another token and the
signed bytes hold nothing secret; the secret travels beside it, once, in the HTTP body.

The token is ``istmo-enrol.<id>.<secret>``: 96 bits of id (stored as is, named in audit
events) and 256 random bits of secret (the broker stores only a SHA-256 of it).

This module only describes, signs and checks these values; the broker's redemption
(``broker.directory.enrolment``) and the client (``clients.enroll``) do the rest.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
from typing import Annotated, Literal

import nkeys
from pydantic import BaseModel, ConfigDict, StringConstraints

from schemas.canonical import b64d, b64e, canonical_json
from schemas.directory import EncryptionKeyRecord, PublicB64
from schemas.envelope import Kid, Timestamp, parse_model
from schemas.errors import EnvelopeError, SignatureError
from schemas.ids import AgencyIdStr
from schemas.keys import EncryptionPublicKey, SigningKey, VerifyKey
from schemas.keystore import NatsJwt, PinnedKey

__all__ = [
    "MAX_ENROLMENT_BYTES",
    "MAX_TOKEN_CHARS",
    "TOKEN_PREFIX",
    "EnrolmentAnswer",
    "EnrolmentBody",
    "EnrolmentRequest",
    "new_enrolment_token",
    "nkey_public_bytes",
    "parse_enrolment_body",
    "sign_enrolment",
    "split_enrolment_token",
    "token_digest",
    "verify_enrolment",
]

TOKEN_PREFIX = "istmo-enrol"  # noqa: S105  # a label before the token, not a secret
MAX_TOKEN_CHARS = 128
MAX_ENROLMENT_BYTES = 16 * 1024
_TOKEN = re.compile(r"istmo-enrol\.([0-9a-f]{24})\.([A-Za-z0-9_-]{43})")
_USER_NKEY = r"^U[A-Z2-7]{55}$"
_SIG_B64 = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]{86}==$")]
_STRICT = ConfigDict(frozen=True, extra="forbid", strict=True)


# ---------------------------------------------------------------------- the token
def new_enrolment_token() -> tuple[str, str]:
    """A fresh token: ``(token_id, token)``. The token is the secret; show it once."""
    token_id = secrets.token_hex(12)
    return token_id, f"{TOKEN_PREFIX}.{token_id}.{secrets.token_urlsafe(32)}"


def split_enrolment_token(token: str) -> tuple[str, str] | None:
    """``(token_id, secret)`` of a well-formed token, or None."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
        return None
    m = _TOKEN.fullmatch(token)
    return (m.group(1), m.group(2)) if m else None


def token_digest(secret: str) -> str:
    """What the broker stores of a token's secret: SHA-256, hex (the secret has 256
    random bits, so a fast hash is enough)."""
    return hashlib.sha256(b"istmo/v1/enrolment-token\x00" + secret.encode("ascii")).hexdigest()


# ---------------------------------------------------------------------- the request
class EnrolmentSigningKey(BaseModel):
    model_config = _STRICT
    kid: Kid
    public: PublicB64


class EnrolmentRequest(BaseModel):
    """The public halves of a new agency's keys, signed by its new keys."""

    model_config = _STRICT

    v: Literal[1]
    token_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{24}$")]
    issued_at: Timestamp
    signing: EnrolmentSigningKey
    encryption: EncryptionKeyRecord
    nats_user: Annotated[str, StringConstraints(pattern=_USER_NKEY)]
    proof: _SIG_B64
    nats_proof: _SIG_B64


class EnrolmentBody(BaseModel):
    """``POST /v1/enroll``: the token (checked by the broker, never stored) and the
    signed request."""

    model_config = _STRICT

    token: Annotated[str, StringConstraints(max_length=MAX_TOKEN_CHARS)]
    request: EnrolmentRequest

    def __repr__(self) -> str:
        return f"EnrolmentBody(token_id={self.request.token_id!r})"

    def __str__(self) -> str:
        return repr(self)


class EnrolmentAnswer(BaseModel):
    """What the broker answers: who the keys now belong to, and what to pin."""

    model_config = _STRICT

    v: Literal[1]
    agency: AgencyIdStr
    signing_kid: Kid
    encryption_kid: Kid
    nats_user: Annotated[str, StringConstraints(pattern=_USER_NKEY)]
    directory_key: PinnedKey
    nats_url: Annotated[str, StringConstraints(max_length=200)] | None = None
    # In operator mode (ADR 0013): the user JWT the agency connects to NATS with.
    nats_jwt: NatsJwt | None = None


def _signed_bytes(request: EnrolmentRequest) -> bytes:
    body = request.model_dump(mode="json", exclude={"proof", "nats_proof"})
    return b"istmo/v1/enrol\x00" + canonical_json(body)


def sign_enrolment(
    *,
    token_id: str,
    issued_at: int,
    signing_key: SigningKey,
    encryption: EncryptionPublicKey,
    nats_seed: str,
) -> EnrolmentRequest:
    """Build an enrolment request signed by the new signing key and the NATS key."""
    vk = signing_key.verify_key
    unsigned = EnrolmentRequest(
        v=1,
        token_id=token_id,
        issued_at=issued_at,
        signing=EnrolmentSigningKey(kid=vk.kid, public=b64e(vk.public)),
        encryption=EncryptionKeyRecord(
            kid=encryption.kid,
            kem=encryption.kem,
            public=b64e(encryption.public),
            created_at=issued_at,
        ),
        nats_user=_nkey_public(nats_seed),
        proof="A" * 86 + "==",
        nats_proof="A" * 86 + "==",
    )
    message = _signed_bytes(unsigned)
    kp = nkeys.from_seed(nats_seed.encode("ascii"))
    try:
        nats_sig: bytes = kp.sign(message)
    finally:
        kp.wipe()
    return unsigned.model_copy(
        update={"proof": b64e(signing_key.sign(message)), "nats_proof": b64e(nats_sig)}
    )


def _nkey_public(seed: str) -> str:
    kp = nkeys.from_seed(seed.encode("ascii"))
    try:
        public: bytes = kp.public_key
        return public.decode("ascii")
    finally:
        kp.wipe()


def nkey_public_bytes(nkey: str) -> bytes:
    """The Ed25519 public key inside a NATS user nkey ("U..."), checked.

    Raises:
        EnvelopeError: not base32, not a user key, or a bad checksum.
    """
    try:
        raw = base64.b32decode(nkey.encode("ascii"))  # 56 characters: 35 bytes, no padding
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise EnvelopeError("nats_user is not a NATS public key", code="bad_key") from exc
    if len(raw) != 35 or raw[0] != nkeys.PREFIX_BYTE_USER:
        raise EnvelopeError("nats_user is not a NATS user key", code="bad_key")
    if nkeys.crc16_checksum(raw[:33]) != raw[33:]:
        raise EnvelopeError("nats_user has a bad checksum", code="bad_key")
    return raw[1:33]


def verify_enrolment(request: EnrolmentRequest) -> tuple[VerifyKey, EncryptionPublicKey]:
    """Check the keys and both proofs of possession.

    Steps:
      1. The signing key is a canonical, not small-order Ed25519 point matching its kid.
      2. The encryption key has the right length, is not a low-order X25519 point, and
         matches its kid.
      3. The NATS key is a user nkey with a good checksum and not a small-order point.
      4. The new signing key signed the request; so did the NATS key.

    Returns:
        The new signing key and encryption key.

    Raises:
        EnvelopeError: a malformed or weak key (``bad_key``).
        SignatureError: a key does not match its id (``bad_key``), or a proof fails
            (``bad_proof``).
    """
    verify_key = VerifyKey(b64d(request.signing.public, field="signing.public", max_bytes=32))
    if verify_key.kid != request.signing.kid:
        raise SignatureError("signing key does not match its id", code="bad_key")
    encryption = request.encryption.public_key()
    nats_key = VerifyKey(nkey_public_bytes(request.nats_user))
    message = _signed_bytes(request)
    for key, sig, what in (
        (verify_key, request.proof, "signing key"),
        (nats_key, request.nats_proof, "NATS key"),
    ):
        try:
            key.verify(b64d(sig, field="proof", max_bytes=64), message)
        except SignatureError as exc:
            raise SignatureError(
                f"the request is not signed by its new {what}", code="bad_proof"
            ) from exc
    return verify_key, encryption


def parse_enrolment_body(raw: bytes) -> EnrolmentBody:
    """Parse ``POST /v1/enroll``'s body strictly (EnvelopeError on any fault)."""
    return parse_model(EnrolmentBody, raw, max_bytes=MAX_ENROLMENT_BYTES, what="enrolment")
