"""Community group keys (ADR 18): epoch keys a group manager hands to a community's members,
so that one bulletin to thousands carries a constant-size key section.

    SignedEpoch      the manager's signed statement of one epoch of a group: which members
                     (by digest), and a commitment to the epoch key
    MemberWrap       the epoch key, sealed with HPKE to one member's encryption key
    GroupWrap        in an envelope: the bulletin's content key, sealed under an epoch key

Construction:
  1. E = 32 random bytes (the epoch key); commitment = SHA-256("istmo/v1/group-key" || 0 || E);
     its id is ``gk-`` and 32 hex digits of SHA-256 over the commitment.
  2. statement = {group, epoch, manager, issued_at, member_count, members_digest,
     key_commitment, kid}; sig = Ed25519 by the manager over
     "istmo/v1/group-epoch" || 0 || canonical(statement).
  3. wrap_m = HPKE.Seal(pk_m, info = "istmo/v1/group-wrap" || 0 || group || 0 || epoch || 0
     || m || 0 || kid_m || 0 || commitment, E): bound to the group, the epoch, the member and
     its key, and to the key the manager signed, so a wrap the broker made up (HPKE's base
     mode does not authenticate the sender) is refused by the commitment.
  4. In an envelope: gw = AES-256-GCM(E, nonce, K, aad = "istmo/v1/group-content" || 0 ||
     hd || 0 || group || 0 || epoch), K the bulletin's content key, hd its header digest.

Pure: keys, times and member lists come in as arguments. Which members an epoch must hold,
and whether a bulletin may use it, is decided elsewhere (``broker.directory.groups``,
``broker.relay.cover``, ``clients.groups``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from schemas.canonical import b64d, b64e, canonical_json
from schemas.envelope import (
    B64,
    GROUP_NAME_PATTERN,
    MAX_GROUPS_PER_ENVELOPE,
    MAX_RECIPIENTS,
    Epoch,
    GroupKid,
    GroupName,
    GroupWrap,
    Kid,
    Timestamp,
)
from schemas.errors import DecryptionError, EnvelopeError, SignatureError
from schemas.ids import AgencyIdStr
from schemas.keys import (
    EncryptionKey,
    EncryptionPublicKey,
    KemName,
    SigningKey,
    VerifyKey,
    hpke_suite,
)

__all__ = [
    "GROUP_NAME_PATTERN",
    "MAX_GROUPS_PER_ENVELOPE",
    "EpochKey",
    "EpochStatement",
    "GroupName",
    "GroupWrap",
    "MemberWrap",
    "SignedEpoch",
    "check_group_wrap_shape",
    "epoch_statement",
    "group_kid",
    "members_digest",
    "new_epoch_key",
    "open_group_wrap",
    "seal_group_wrap",
    "sign_epoch",
    "unwrap_epoch_key",
    "verify_epoch",
    "wrap_epoch_key",
]

Digest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
_KEY_BYTES = 32
_NONCE_BYTES = 12
_MAX_WRAP_BYTES = 4096

_STRICT = ConfigDict(frozen=True, extra="forbid", strict=True)


class EpochStatement(BaseModel):
    """What the manager signs for one epoch of a group."""

    model_config = _STRICT

    v: Literal[1]
    group: GroupName
    epoch: Epoch
    manager: AgencyIdStr
    issued_at: Timestamp
    member_count: int = Field(ge=1, le=MAX_RECIPIENTS)
    members_digest: Digest
    key_commitment: B64
    kid: GroupKid


class SignedEpoch(BaseModel):
    """An epoch statement with the manager's signature (by its signing key ``kid``)."""

    model_config = _STRICT

    statement: EpochStatement
    kid: Kid
    sig: B64


class MemberWrap(BaseModel):
    """An epoch key sealed to one member's current encryption key."""

    model_config = _STRICT

    agency: AgencyIdStr
    kid: Kid
    kem: KemName
    enc: B64


@dataclass(frozen=True, repr=False)
class EpochKey:
    """An epoch key as its holder keeps it. Never logged: ``repr`` shows only its id."""

    group: str
    epoch: int
    kid: str
    key: bytes

    def __repr__(self) -> str:
        return f"EpochKey(group={self.group!r}, epoch={self.epoch}, kid={self.kid!r})"


def _commitment(key: bytes) -> bytes:
    return hashlib.sha256(b"istmo/v1/group-key\x00" + key).digest()


def group_kid(commitment: bytes) -> str:
    """The id of the epoch key with ``commitment``."""
    return "gk-" + hashlib.sha256(b"istmo/v1/kid/group\x00" + commitment).hexdigest()[:32]


def members_digest(members: Iterable[str]) -> str:
    """Hex SHA-256 over the sorted, unique member ids (what a statement signs)."""
    ordered = sorted(set(members))
    return hashlib.sha256(b"istmo/v1/group-members\x00" + canonical_json(ordered)).hexdigest()


def new_epoch_key(group: str, epoch: int) -> EpochKey:
    """A fresh random epoch key for ``group`` at ``epoch``."""
    key = os.urandom(_KEY_BYTES)
    return EpochKey(group, epoch, group_kid(_commitment(key)), key)


def epoch_statement(
    key: EpochKey, *, manager: str, members: Iterable[str], issued_at: int
) -> EpochStatement:
    """The statement of ``key``'s epoch with ``members`` (the manager among them)."""
    member_list = sorted(set(members))
    return EpochStatement(
        v=1,
        group=key.group,
        epoch=key.epoch,
        manager=manager,
        issued_at=issued_at,
        member_count=len(member_list),
        members_digest=members_digest(member_list),
        key_commitment=b64e(_commitment(key.key)),
        kid=key.kid,
    )


def _signed_bytes(statement: EpochStatement) -> bytes:
    return b"istmo/v1/group-epoch\x00" + canonical_json(statement.model_dump(mode="json"))


def sign_epoch(statement: EpochStatement, key: SigningKey) -> SignedEpoch:
    """``statement`` signed by the manager's current signing key."""
    return SignedEpoch(
        statement=statement, kid=key.verify_key.kid, sig=b64e(key.sign(_signed_bytes(statement)))
    )


def verify_epoch(signed: SignedEpoch, key: VerifyKey) -> EpochStatement:
    """The statement, once its signature verifies under ``key`` (the manager's).

    Raises:
        SignatureError: another key, or the signature does not verify.
        EnvelopeError: a field is not canonical base64 or has the wrong length.
    """
    if key.kid != signed.kid:
        raise SignatureError("epoch signed by another key", code="key_not_bound_to_sender")
    key.verify(b64d(signed.sig, field="sig", max_bytes=64), _signed_bytes(signed.statement))
    st = signed.statement
    commitment = b64d(st.key_commitment, field="key_commitment", max_bytes=32)
    if len(commitment) != 32 or group_kid(commitment) != st.kid:
        raise EnvelopeError("epoch key id does not match its commitment", code="malformed")
    return st


def _wrap_info(st: EpochStatement, member: str, kid: str) -> bytes:
    return b"\x00".join(
        (
            b"istmo/v1/group-wrap",
            st.group.encode(),
            str(st.epoch).encode(),
            member.encode(),
            kid.encode(),
            b64d(st.key_commitment, field="key_commitment", max_bytes=32),
        )
    )


def wrap_epoch_key(
    key: EpochKey, statement: EpochStatement, member: str, public: EncryptionPublicKey
) -> MemberWrap:
    """``key`` sealed with HPKE to ``member``'s encryption key ``public``."""
    enc = hpke_suite(public.kem).encrypt(
        key.key, public.hpke_public(), info=_wrap_info(statement, member, public.kid)
    )
    return MemberWrap(agency=member, kid=public.kid, kem=public.kem, enc=b64e(enc))


def unwrap_epoch_key(
    statement: EpochStatement, wrap: MemberWrap, member: str, key: EncryptionKey
) -> EpochKey:
    """The epoch key of ``statement`` (verified by the caller) from ``member``'s ``wrap``.

    Raises:
        DecryptionError: not this member's wrap, or it does not open to the signed key.
    """
    if wrap.agency != member or wrap.kid != key.public_key.kid or wrap.kem != key.kem:
        raise DecryptionError("epoch key does not open", code="recipient_key_unknown")
    try:
        enc = b64d(wrap.enc, field="enc", max_bytes=_MAX_WRAP_BYTES)
        plain = hpke_suite(key.kem).decrypt(
            enc, key.hpke_private(), info=_wrap_info(statement, member, wrap.kid)
        )
    except (InvalidTag, ValueError, EnvelopeError) as exc:
        raise DecryptionError("epoch key does not open", code="wrap_invalid") from exc
    commitment = b64d(statement.key_commitment, field="key_commitment", max_bytes=32)
    if len(plain) != _KEY_BYTES or not hmac.compare_digest(_commitment(plain), commitment):
        raise DecryptionError("epoch key does not open", code="key_commitment_mismatch")
    return EpochKey(statement.group, statement.epoch, statement.kid, plain)


def _content_aad(hd: bytes, group: str, epoch: int) -> bytes:
    return (
        b"istmo/v1/group-content\x00"
        + hd
        + b"\x00"
        + group.encode()
        + b"\x00"
        + str(epoch).encode()
    )


def seal_group_wrap(content_key: bytes, key: EpochKey, hd: bytes) -> GroupWrap:
    """The bulletin's ``content_key`` sealed under epoch key ``key``, bound to header ``hd``."""
    nonce = os.urandom(_NONCE_BYTES)
    ct = AESGCM(key.key).encrypt(nonce, content_key, _content_aad(hd, key.group, key.epoch))
    return GroupWrap(group=key.group, epoch=key.epoch, kid=key.kid, nonce=b64e(nonce), ct=b64e(ct))


def open_group_wrap(wrap: GroupWrap, key: EpochKey, hd: bytes) -> bytes:
    """The content key inside ``wrap``.

    Raises:
        DecryptionError: ``key`` is not the wrap's, or it does not open.
    """
    if (wrap.group, wrap.epoch, wrap.kid) != (key.group, key.epoch, key.kid):
        raise DecryptionError("bulletin does not open", code="recipient_key_unknown")
    try:
        nonce = b64d(wrap.nonce, field="group.nonce", max_bytes=_NONCE_BYTES)
        ct = b64d(wrap.ct, field="group.ct", max_bytes=_KEY_BYTES + 16)
        return AESGCM(key.key).decrypt(nonce, ct, _content_aad(hd, wrap.group, wrap.epoch))
    except (InvalidTag, ValueError, EnvelopeError) as exc:
        raise DecryptionError("bulletin does not open", code="wrap_invalid") from exc


def check_group_wrap_shape(wrap: GroupWrap) -> None:
    """Length checks a broker can make without the key.

    Raises:
        EnvelopeError: the nonce or ciphertext has the wrong length.
    """
    if len(b64d(wrap.nonce, field="group.nonce", max_bytes=_NONCE_BYTES)) != _NONCE_BYTES:
        raise EnvelopeError(f"group wrap {wrap.group}: nonce must be 12 bytes")
    if len(b64d(wrap.ct, field="group.ct", max_bytes=_KEY_BYTES + 16)) != _KEY_BYTES + 16:
        raise EnvelopeError(f"group wrap {wrap.group}: ciphertext has the wrong length")
