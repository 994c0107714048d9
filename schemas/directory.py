"""The directory as the broker serves it: agencies and their public keys, signed.

Clients pin the broker's directory key when they get their keystore and refuse any
directory document whose signature fails, so a substituted encryption key is caught.
"""

from __future__ import annotations

import functools
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from schemas.canonical import b64d, b64e, canonical_json
from schemas.envelope import Kid, Timestamp, parse_model
from schemas.errors import SignatureError
from schemas.ids import AgencyIdStr, JurisdictionStr
from schemas.keys import EncryptionPublicKey, KemName, SigningKey, VerifyKey

__all__ = [
    "SECTORS",
    "AgencyRecord",
    "DirectoryExcerpt",
    "EncryptionKeyRecord",
    "Sector",
    "SignedExcerpt",
    "SigningKeyRecord",
    "open_excerpt",
    "sign_excerpt",
    "verify_excerpt",
]

Sector = Literal["police", "military", "foreign", "justice", "regional-centre", "auditor"]
SECTORS: tuple[Sector, ...] = (
    "police",
    "military",
    "foreign",
    "justice",
    "regional-centre",
    "auditor",
)
Status = Literal["active", "suspended", "revoked"]
PublicB64 = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]*={0,2}$", max_length=4096)]
MAX_EXCERPT_BYTES = 8 * 1024 * 1024
_STRICT = ConfigDict(frozen=True, extra="forbid", strict=True)


@functools.lru_cache(maxsize=16_384)
def _verify_key(public: str, kid: str) -> VerifyKey:
    """The key a registered record names, checked once per (key, id): a relay checks every
    envelope against its sender's record. Failures are not cached (they raise)."""
    key = VerifyKey(b64d(public, field="signing key", max_bytes=32))
    if key.kid != kid:
        raise SignatureError("directory key id does not match its key", code="bad_key")
    return key


class SigningKeyRecord(BaseModel):
    """A registered Ed25519 public key; valid for signatures made before ``revoked_at``."""

    model_config = _STRICT

    kid: Kid
    public: PublicB64
    created_at: Timestamp
    revoked_at: Timestamp | None = None

    def verify_key(self) -> VerifyKey:
        return _verify_key(self.public, self.kid)


class EncryptionKeyRecord(BaseModel):
    """A registered HPKE public key."""

    model_config = _STRICT

    kid: Kid
    kem: KemName
    public: PublicB64
    created_at: Timestamp

    def public_key(self) -> EncryptionPublicKey:
        key = EncryptionPublicKey(self.kem, b64d(self.public, field="kem key", max_bytes=1216))
        if key.kid != self.kid:
            raise SignatureError("directory key id does not match its key", code="bad_key")
        return key


class AgencyRecord(BaseModel):
    """One agency as the directory shows it. ``encryption_key`` is the current one."""

    model_config = _STRICT

    id: AgencyIdStr
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    state: JurisdictionStr | None
    communities: tuple[JurisdictionStr, ...] = ()
    sector: Sector
    status: Status
    signing_keys: tuple[SigningKeyRecord, ...] = Field(default=(), max_length=64)
    encryption_key: EncryptionKeyRecord | None = None


class DirectoryExcerpt(BaseModel):
    """Some agencies of the directory at one version, as of ``issued_at``."""

    model_config = _STRICT

    v: Literal[1]
    directory_version: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16,64}$")]
    issued_at: Timestamp
    agencies: tuple[AgencyRecord, ...] = Field(max_length=10_000)


class SignedExcerpt(BaseModel):
    """A DirectoryExcerpt signed by the broker's directory key."""

    model_config = _STRICT

    excerpt: DirectoryExcerpt
    kid: Kid
    sig: str


def _signed_bytes(excerpt: DirectoryExcerpt) -> bytes:
    return b"istmo/v1/directory\x00" + canonical_json(excerpt.model_dump(mode="json"))


def sign_excerpt(excerpt: DirectoryExcerpt, key: SigningKey) -> SignedExcerpt:
    """Sign ``excerpt`` with the broker's directory key."""
    sig = key.sign(_signed_bytes(excerpt))
    return SignedExcerpt(excerpt=excerpt, kid=key.verify_key.kid, sig=b64e(sig))


def open_excerpt(raw: bytes, pinned: VerifyKey) -> DirectoryExcerpt:
    """Parse a signed excerpt and check it against the pinned directory key.

    Raises:
        EnvelopeError: malformed.
        SignatureError: not signed by the pinned key.
    """
    signed = parse_model(SignedExcerpt, raw, max_bytes=MAX_EXCERPT_BYTES, what="directory")
    return verify_excerpt(signed, pinned)


def verify_excerpt(signed: SignedExcerpt, pinned: VerifyKey) -> DirectoryExcerpt:
    """Check an excerpt already parsed (as part of a larger answer) against the pinned
    directory key.

    Raises:
        EnvelopeError: the signature is not canonical base64.
        SignatureError: not signed by the pinned key.
    """
    if signed.kid != pinned.kid:
        raise SignatureError("directory is signed by an unknown key", code="directory_untrusted")
    pinned.verify(
        b64d(signed.sig, field="directory.sig", max_bytes=64), _signed_bytes(signed.excerpt)
    )
    return signed.excerpt
