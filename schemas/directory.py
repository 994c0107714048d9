"""The directory as the broker serves it: agencies and their public keys, signed.

Clients pin the broker's directory key when they get their keystore and refuse any
directory document whose signature fails, so a substituted encryption key is caught.

A directory version names the state of the whole directory. Since ADR 14 it is 48 hex
digits: a serial that grows with every change to an agency's record (its status, its keys;
``directory_serial`` reads it back), then a digest of the whole directory. Ordering by the
serial lets a client refuse a directory older than one it already holds; the digest tells
two states of one serial apart (a subscription changed, not a record). Versions of a broker
before ADR 14 are 32 hex digits, without a serial.

``DirectoryChanges`` answers "which agencies' records changed since the version I hold?",
signed by the same key as the excerpts (under another domain), so a client updates what it
holds record by record instead of fetching everything again.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from schemas.agency_status import Status
from schemas.canonical import b64d, b64e, canonical_json
from schemas.envelope import Kid, Timestamp, parse_model
from schemas.errors import SignatureError
from schemas.ids import AgencyIdStr, JurisdictionStr
from schemas.keys import EncryptionPublicKey, KemName, SigningKey, VerifyKey

__all__ = [
    "MAX_CHANGED",
    "SECTORS",
    "AgencyRecord",
    "DirectoryChanges",
    "DirectoryExcerpt",
    "DirectoryVersion",
    "EncryptionKeyRecord",
    "Sector",
    "SignedChanges",
    "SignedExcerpt",
    "SigningKeyRecord",
    "directory_serial",
    "directory_version",
    "open_excerpt",
    "record_bytes",
    "sign_changes",
    "sign_excerpt",
    "sign_excerpt_of",
    "verify_changes",
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
PublicB64 = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]*={0,2}$", max_length=4096)]
MAX_EXCERPT_BYTES = 8 * 1024 * 1024
# Agencies one DirectoryChanges names at most; more changed, and it says "all" (None).
MAX_CHANGED = 1000
DirectoryVersion = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16,64}$")]
_SERIAL_HEX = 16  # a version's leading hex digits that are its serial
_DIGEST_HEX = 32
_STRICT = ConfigDict(frozen=True, extra="forbid", strict=True)


def directory_version(serial: int, digest: str) -> str:
    """The directory version of records at ``serial`` and of a directory whose digest is
    ``digest`` (hex; its first 32 digits are used).

    Raises:
        ValueError: ``serial`` is negative or does not fit in 16 hex digits, or ``digest``
            is not 32 or more lower-case hex digits.
    """
    if not 0 <= serial < 16**_SERIAL_HEX:
        raise ValueError(f"directory serial {serial} is out of range")
    head = digest[:_DIGEST_HEX]
    if len(head) != _DIGEST_HEX or head.strip("0123456789abcdef"):
        raise ValueError("a directory digest is 32 or more lower-case hex digits")
    return f"{serial:0{_SERIAL_HEX}x}{head}"


def directory_serial(version: str) -> int | None:
    """The serial ``version`` names (its records' changes so far), or None for a version
    without one (a broker before ADR 14, or not a version at all)."""
    if len(version) != _SERIAL_HEX + _DIGEST_HEX or version.strip("0123456789abcdef"):
        return None
    return int(version[:_SERIAL_HEX], 16)


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
        return _public_key(self.kem, self.public, self.kid)


# Decoded and checked once per key, not per bulletin: an SDK seals for the same
# recipients again and again, and the key object keeps its parsed form (``schemas.keys``).
# Bounded: a directory of 10,000 agencies holds about 2.5 times this many.
@functools.lru_cache(maxsize=4096)
def _public_key(kem: KemName, public: str, kid: str) -> EncryptionPublicKey:
    key = EncryptionPublicKey(kem, b64d(public, field="kem key", max_bytes=1216))
    if key.kid != kid:
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
    directory_version: DirectoryVersion
    issued_at: Timestamp
    agencies: tuple[AgencyRecord, ...] = Field(max_length=10_000)


class SignedExcerpt(BaseModel):
    """A DirectoryExcerpt signed by the broker's directory key."""

    model_config = _STRICT

    excerpt: DirectoryExcerpt
    kid: Kid
    sig: str


_EXCERPT_DOMAIN = b"istmo/v1/directory\x00"


def _signed_bytes(excerpt: DirectoryExcerpt) -> bytes:
    return _EXCERPT_DOMAIN + canonical_json(excerpt.model_dump(mode="json"))


def sign_excerpt(excerpt: DirectoryExcerpt, key: SigningKey) -> SignedExcerpt:
    """Sign ``excerpt`` with the broker's directory key."""
    sig = key.sign(_signed_bytes(excerpt))
    return SignedExcerpt(excerpt=excerpt, kid=key.verify_key.kid, sig=b64e(sig))


def record_bytes(record: AgencyRecord) -> bytes:
    """The canonical encoding of one record, as it appears in an excerpt's ``agencies``."""
    return canonical_json(record.model_dump(mode="json"))


def sign_excerpt_of(
    directory_version: str,
    issued_at: int,
    records: Sequence[AgencyRecord],
    encoded: Sequence[bytes],
    key: SigningKey,
) -> tuple[SignedExcerpt, bytes]:
    """``sign_excerpt`` of the excerpt of ``records`` at ``directory_version`` as of
    ``issued_at``, and the canonical encoding of the signed excerpt, both built from
    ``encoded``, each record's ``record_bytes`` in the same order (worked out once per
    directory version by the broker, not again for every excerpt). The signature and the
    bytes are those ``sign_excerpt`` and ``canonical_json`` give for the same excerpt.

    Raises:
        ValueError: ``encoded`` does not pair with ``records``.
        pydantic.ValidationError: not a valid excerpt (a version or time out of form).
    """
    if len(encoded) != len(records):
        raise ValueError("one encoding a record")
    excerpt = DirectoryExcerpt(
        v=1, directory_version=directory_version, issued_at=issued_at, agencies=tuple(records)
    )
    # canonical_json(excerpt) with its members in name order, each record's bytes copied
    # once (the excerpt of 7,497 records is 15 MB), behind the signature's domain.
    pieces = [_EXCERPT_DOMAIN, b'{"agencies":[']
    for n, one in enumerate(encoded):
        if n:
            pieces.append(b",")
        pieces.append(one)
    pieces += (
        b'],"directory_version":',
        canonical_json(excerpt.directory_version),
        b',"issued_at":',
        canonical_json(excerpt.issued_at),
        b',"v":',
        canonical_json(excerpt.v),
        b"}",
    )
    signing_input = b"".join(pieces)
    sig = b64e(key.sign(signing_input))
    kid = key.verify_key.kid
    signed = SignedExcerpt(excerpt=excerpt, kid=kid, sig=sig)
    body = memoryview(signing_input)[len(_EXCERPT_DOMAIN) :]
    raw = b"".join(
        (
            b'{"excerpt":',
            body,
            b',"kid":',
            canonical_json(kid),
            b',"sig":',
            canonical_json(sig),
            b"}",
        )
    )
    return signed, raw


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
    _check_signature(signed.kid, signed.sig, _signed_bytes(signed.excerpt), pinned, "directory")
    return signed.excerpt


def _check_signature(kid: str, sig: str, message: bytes, pinned: VerifyKey, what: str) -> None:
    """Raise unless ``sig`` over ``message`` is the pinned directory key's (``kid``).

    Raises:
        EnvelopeError: the signature is not canonical base64.
        SignatureError: another key, or the signature does not verify.
    """
    if kid != pinned.kid:
        raise SignatureError("directory is signed by an unknown key", code="directory_untrusted")
    pinned.verify(b64d(sig, field=f"{what}.sig", max_bytes=64), message)


class DirectoryChanges(BaseModel):
    """The agencies whose records changed after version ``since`` up to
    ``directory_version`` (the broker's now), as of ``issued_at``. ``changed`` is None when
    the broker cannot say (its journal does not reach back to ``since``, ``since`` has no
    serial, or more than ``MAX_CHANGED`` changed): then every record held from before
    ``directory_version`` is out of date."""

    model_config = _STRICT

    v: Literal[1]
    since: DirectoryVersion
    directory_version: DirectoryVersion
    issued_at: Timestamp
    changed: tuple[AgencyIdStr, ...] | None = Field(max_length=MAX_CHANGED)


class SignedChanges(BaseModel):
    """A DirectoryChanges signed by the broker's directory key."""

    model_config = _STRICT

    changes: DirectoryChanges
    kid: Kid
    sig: str


def _changes_bytes(changes: DirectoryChanges) -> bytes:
    return b"istmo/v1/directory-changes\x00" + canonical_json(changes.model_dump(mode="json"))


def sign_changes(changes: DirectoryChanges, key: SigningKey) -> SignedChanges:
    """Sign ``changes`` with the broker's directory key."""
    sig = key.sign(_changes_bytes(changes))
    return SignedChanges(changes=changes, kid=key.verify_key.kid, sig=b64e(sig))


def verify_changes(signed: SignedChanges, pinned: VerifyKey) -> DirectoryChanges:
    """Check a change list against the pinned directory key.

    Raises:
        EnvelopeError: the signature is not canonical base64.
        SignatureError: not signed by the pinned key.
    """
    _check_signature(signed.kid, signed.sig, _changes_bytes(signed.changes), pinned, "changes")
    return signed.changes
