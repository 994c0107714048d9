"""Seal, sign, verify and open envelopes: pure functions, keys and ``now`` passed in.

Construction (envelope v1):
  1. K = 32 random bytes; commitment = SHA-256("istmo/v1/commit" || 0 || K) goes in the header,
     so one ciphertext cannot open to two plaintexts under two keys.
  2. hd = SHA-256("istmo/v1/header" || 0 || canonical(header)).
  3. body = AES-256-GCM(K, nonce, canonical(inner), aad = hd).
  4. wrap_r = HPKE.Seal(pk_r, info = "istmo/v1/wrap" || 0 || hd || 0 || r || 0 || kid_r, K).
     The header names bulletin id and originator, so a wrap cannot move to another
     bulletin or recipient.
  5. with community groups (ADR 18), wraps only for the recipients no group covers, and per
     group gw = AES-256-GCM(E_group, nonce, K, aad bound to hd, group and epoch)
     (``schemas.groups``). Since ADR 37 the header names those groups' epochs in
     ``audience`` (count and digest of their signed members) instead of listing each
     member, and ``recipients`` only the agencies with wraps.
  6. sig = Ed25519("istmo/v1/envelope" || 0 || canonical({header, body_digest, wraps[,
     groups]})); ``groups`` is signed only when present, so envelopes without it sign as
     before.

Recipients open in the reverse order and check every binding before any plaintext leaves.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from schemas.attachments import AttachmentRef
from schemas.canonical import b64d, b64e, canonical_json, join_members, model_members
from schemas.envelope import (
    Audience,
    Content,
    Envelope,
    GroupWrap,
    Header,
    InnerBulletin,
    SealedBody,
    Signature,
    Wrap,
    parse_model,
)
from schemas.errors import DecryptionError, EnvelopeError, SignatureError
from schemas.forwarding import Citation
from schemas.groups import (
    EpochKey,
    check_group_wrap_shape,
    members_digest,
    open_group_wrap,
    seal_group_wrap,
)
from schemas.ids import AgencyId, BulletinId, new_bulletin_id
from schemas.keys import EncryptionKey, EncryptionPublicKey, SigningKey, VerifyKey, hpke_suite
from schemas.labels import Labels
from schemas.limits import DEFAULT_MAX_ENVELOPE_BYTES

__all__ = [
    "DEFAULT_MAX_ENVELOPE_BYTES",
    "EnvelopeBytes",
    "check_envelope_shape",
    "encode_envelope",
    "envelope_bytes",
    "envelope_digest",
    "header_digest",
    "new_content_key",
    "open_envelope",
    "open_envelope_keyed",
    "parse_envelope",
    "seal",
    "verify_envelope",
]

_KEY_BYTES = 32
_NONCE_BYTES = 12
_MAX_WRAP_BYTES = 4096
_SIGNED_PREFIX = b"istmo/v1/envelope\x00"


def _commitment(key: bytes) -> bytes:
    return hashlib.sha256(b"istmo/v1/commit\x00" + key).digest()


def header_digest(header: Header) -> bytes:
    """SHA-256 over the canonical header, with a domain prefix."""
    return hashlib.sha256(b"istmo/v1/header\x00" + canonical_json(_dump(header))).digest()


def _wrap_info(hd: bytes, recipient: str, kid: str) -> bytes:
    return b"istmo/v1/wrap\x00" + hd + b"\x00" + recipient.encode() + b"\x00" + kid.encode()


def _dump(model: Header | Wrap | GroupWrap | SealedBody | Envelope) -> Any:
    return model.model_dump(mode="json", exclude_none=True)


def _signed_bytes(
    header: Header,
    body: SealedBody,
    wraps: tuple[Wrap, ...],
    groups: tuple[GroupWrap, ...] | None = None,
) -> bytes:
    signed = {
        "header": _dump(header),
        "body_digest": _body_digest(body),
        "wraps": [_dump(w) for w in wraps],
    }
    if groups is not None:
        signed["groups"] = [_dump(g) for g in groups]
    return _SIGNED_PREFIX + canonical_json(signed)


def _body_digest(body: SealedBody) -> str:
    return hashlib.sha256(
        b64d(body.nonce, field="body.nonce", max_bytes=_NONCE_BYTES)
        + b64d(body.ct, field="body.ct", max_bytes=DEFAULT_MAX_ENVELOPE_BYTES)
    ).hexdigest()


@dataclass(frozen=True)
class EnvelopeBytes:
    """An envelope's two canonical encodings, made in one pass (``envelope_bytes``).

    Attributes:
        signed: what its signature covers (construction step 6).
        encoded: the canonical envelope (``encode_envelope``).
    """

    signed: bytes
    encoded: bytes

    @property
    def digest(self) -> str:
        """Hex SHA-256 of the canonical envelope (``envelope_digest``)."""
        return hashlib.sha256(self.encoded).hexdigest()


def envelope_bytes(env: Envelope) -> EnvelopeBytes:
    """What ``env``'s signature covers and its canonical bytes, from one dump and one
    encoding of each of its parts: the header and wraps are signed as they appear in the
    envelope, so each is encoded once for both (on the relay, about 60 us a bulletin
    saved). Equal to ``_signed_bytes`` and ``encode_envelope`` on every envelope
    (``tests/core/test_envelope_bytes.py``).

    Raises:
        EnvelopeError: the body's nonce or ciphertext is not canonical base64.
        ValueError: a value without a canonical encoding (as ``canonical_json``).
    """
    body_digest = _body_digest(env.body)
    members = model_members(_dump(env))
    signed = {
        "header": members["header"],
        "body_digest": canonical_json(body_digest),
        "wraps": members["wraps"],
    }
    if env.groups is not None:
        signed["groups"] = members["groups"]
    return EnvelopeBytes(_SIGNED_PREFIX + join_members(signed), join_members(members))


def encode_envelope(env: Envelope) -> bytes:
    """Canonical bytes of an envelope, as published."""
    return canonical_json(_dump(env))


def envelope_digest(env: Envelope) -> str:
    """Hex SHA-256 of the canonical envelope: what receipts and records refer to."""
    return hashlib.sha256(encode_envelope(env)).hexdigest()


def parse_envelope(raw: bytes, *, max_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES) -> Envelope:
    """Parse ``raw`` into an Envelope, strictly.

    Raises:
        EnvelopeError: oversized, malformed, unknown version or unknown label.
    """
    return parse_model(Envelope, raw, max_bytes=max_bytes, what="envelope")


def seal(
    *,
    content: Content,
    labels: Labels,
    originator: AgencyId,
    signing_key: SigningKey,
    recipients: Mapping[AgencyId, EncryptionPublicKey],
    now: int,
    expires_at: int | None = None,
    not_before: int | None = None,
    bulletin_id: BulletinId | None = None,
    supersedes: BulletinId | None = None,
    groups: Sequence[EpochKey] = (),
    covered: Iterable[AgencyId] = (),
    members: Mapping[str, Collection[str]] | None = None,
    in_reply_to: BulletinId | None = None,
    thread: BulletinId | None = None,
    reply_all: bool = False,
    rfi_due: int | None = None,
    content_key: bytes | None = None,
    attachments: tuple[AttachmentRef, ...] | None = None,
    forward_of: Citation | None = None,
) -> Envelope:
    """Seal ``content`` for ``recipients`` and sign it as ``originator``.

    With ``groups`` and ``members`` (ADR 37), the bulletin is addressed to ``recipients``
    by name, each with a wrap, and to each group's epoch as a whole: the header's
    ``audience`` gives the epoch, the count and the digest of ``members[group]``, the
    members its manager signed, and each group gets one wrap under its epoch key. With
    ``groups`` and ``covered`` instead (ADR 18, the form before ADR 37), every member
    covered is listed in the header. Either way the caller (``clients.groups.cover``)
    has checked that the members of those epochs are all permitted, and the relay checks
    it again.

    Args:
        content: title and text; never leaves the SDK in clear.
        labels: the clear labels the broker routes on.
        originator: the publishing agency.
        signing_key: the originator's current Ed25519 key.
        recipients: each recipient's current encryption public key.
        now: creation time, epoch seconds.
        expires_at: optional expiry, epoch seconds.
        not_before: optional embargo, epoch seconds.
        bulletin_id: fixed id (tests, retries); a fresh random one by default.
        supersedes: the id of the originator's bulletin this one corrects (ADR 15).
        groups: the epoch keys of the groups used.
        covered: (ADR 18 form) the recipients the groups cover and no wrap does.
        members: (ADR 37 form) each group's signed members, by group name.
        in_reply_to: the bulletin this one answers, and ``thread`` the id of its thread's
            first bulletin (ADR 16); both or neither.
        reply_all: let replies to it reach every recipient, not only the originator.
        rfi_due: this is a request for information, its answers due then (epoch seconds).
        content_key: the content key (``new_content_key``), when attachments were sealed
            with keys derived from it before the envelope (ADR 17); a fresh one by default.
        attachments: the signed references of those attachments, in the order of
            ``content.attachments``.
        forward_of: for a forward, the bulletin it passes on and the consent (ADR 20),
            and the original's file references it passes on: ``content.attachments``
            then names those files, each with its key (``AttachmentMeta.key``).

    Returns:
        The signed envelope.

    Raises:
        ValueError: no recipients, ``covered`` without ``groups``, a content key that
            is not 32 bytes, or attachments that do not match ``content.attachments``.
    """
    extra = set(covered) - set(recipients)
    if (extra or members is not None) and not groups:
        raise ValueError("recipients covered by groups need the groups' keys")
    if members is not None and extra:
        raise ValueError("a group's members are addressed by its epoch or listed, not both")
    audience = _audience(groups, members) if members is not None else None
    if not recipients and not extra and audience is None:
        raise ValueError("a bulletin needs at least one recipient")
    cited = forward_of.attachments if forward_of is not None else None
    if forward_of is not None and attachments:
        raise ValueError("a forward passes on the original's files (forward_of.attachments)")
    if len(content.attachments or ()) != len(attachments or cited or ()):
        raise ValueError("content.attachments and attachments must name the same files")
    if not _keys_as_they_must_be(content, forward=forward_of is not None):
        raise ValueError("a forward's content gives each file's key; another bulletin's none")
    bid = bulletin_id or new_bulletin_id()
    order = sorted(recipients)
    addressed = tuple(sorted(set(order) | extra))
    key = content_key if content_key is not None else new_content_key()
    if len(key) != _KEY_BYTES:
        raise ValueError("a content key is 32 bytes")
    header = Header(
        v=1,
        bulletin_id=bid,
        originator=originator,
        created_at=now,
        not_before=not_before,
        expires_at=expires_at,
        supersedes=supersedes,
        in_reply_to=in_reply_to,
        thread=thread,
        reply_all=True if reply_all else None,
        rfi_due=rfi_due,
        forward_of=forward_of,
        labels=labels,
        attachments=attachments or None,
        recipients=addressed,
        audience=audience,
        aead="AES-256-GCM",
        key_commitment=b64e(_commitment(key)),
        signer=signing_key.verify_key.kid,
    )
    hd = header_digest(header)
    inner = InnerBulletin(
        bulletin_id=bid,
        originator=originator,
        recipients=addressed,
        audience=audience,
        content=content,
    )
    nonce = os.urandom(_NONCE_BYTES)
    # Absent optional fields stay absent, so an SDK that predates them still parses it.
    plain = canonical_json(inner.model_dump(mode="json", exclude_none=True))
    ct = AESGCM(key).encrypt(nonce, plain, hd)
    body = SealedBody(nonce=b64e(nonce), ct=b64e(ct))
    wraps = []
    for rid in order:
        pub = recipients[rid]
        enc = hpke_suite(pub.kem).encrypt(key, pub.hpke_public(), info=_wrap_info(hd, rid, pub.kid))
        wraps.append(Wrap(recipient=rid, kid=pub.kid, kem=pub.kem, enc=b64e(enc)))
    wrap_tuple = tuple(wraps)
    group_tuple = (
        tuple(seal_group_wrap(key, g, hd) for g in sorted(groups, key=lambda g: g.group))
        if groups
        else None
    )
    sig = signing_key.sign(_signed_bytes(header, body, wrap_tuple, group_tuple))
    return Envelope(
        v=1,
        header=header,
        body=body,
        wraps=wrap_tuple,
        groups=group_tuple,
        sig=Signature(alg="Ed25519", kid=header.signer, value=b64e(sig)),
    )


def _audience(
    groups: Sequence[EpochKey], members: Mapping[str, Collection[str]]
) -> tuple[Audience, ...]:
    """The header's ``audience`` (ADR 37): each group's epoch and its members' count and
    digest, as its manager signed them.

    Raises:
        ValueError: a group without its members, or members without a group key.
    """
    if set(members) != {g.group for g in groups}:
        raise ValueError("members must be given for exactly the groups sealed under")
    return tuple(
        Audience(
            group=g.group,
            epoch=g.epoch,
            member_count=len(set(members[g.group])),
            members_digest=members_digest(members[g.group]),
        )
        for g in sorted(groups, key=lambda g: g.group)
    )


def verify_envelope(env: Envelope, key: VerifyKey) -> EnvelopeBytes:
    """Check the originator's signature over header, ciphertext digest and wraps.

    Returns:
        The envelope's canonical encodings, made to verify it: its digest is
        ``envelope_digest(env)`` without a second encoding.

    Raises:
        SignatureError: wrong key id, bad length, or the signature does not verify.
        EnvelopeError: a binary field is not canonical base64.
    """
    if key.kid != env.sig.kid:
        raise SignatureError("envelope is signed by another key", code="key_not_bound_to_sender")
    value = b64d(env.sig.value, field="sig.value", max_bytes=64)
    encoded = envelope_bytes(env)
    key.verify(value, encoded.signed)
    return encoded


def new_content_key() -> bytes:
    """A fresh 32-byte content key."""
    return AESGCM.generate_key(bit_length=256)


def open_envelope(
    env: Envelope,
    *,
    recipient: AgencyId,
    key: EncryptionKey | None,
    sender_key: VerifyKey,
    epoch_keys: Sequence[EpochKey] = (),
) -> InnerBulletin:
    """Verify ``env`` and decrypt it for ``recipient`` (``open_envelope_keyed``'s steps)."""
    return open_envelope_keyed(
        env, recipient=recipient, key=key, sender_key=sender_key, epoch_keys=epoch_keys
    )[0]


def open_envelope_keyed(
    env: Envelope,
    *,
    recipient: AgencyId,
    key: EncryptionKey | None,
    sender_key: VerifyKey,
    epoch_keys: Sequence[EpochKey] = (),
) -> tuple[InnerBulletin, bytes]:
    """Verify ``env`` and decrypt it for ``recipient``; the inner bulletin and the content
    key, from which its attachments' keys derive (``schemas.attachments``).

    Steps, each failing closed before any plaintext is returned:
      1. the signature verifies under the originator's key;
      2. ``recipient`` is among the signed recipients (or, with an audience, is not the
         originator: ADR 37), and either its wrap names ``key``, or (no wrap of its own)
         one of ``epoch_keys`` is the key of a group wrap, which only a member holds;
      3. the HPKE wrap opens with the info bound to header digest, recipient and kid (or
         the group wrap opens under the epoch key, bound to header digest, group, epoch);
      4. the content key matches the signed commitment;
      5. the body opens under AES-256-GCM with the header digest as associated data;
      6. the inner ids equal the signed header's, and the inner attachments are as many
         as the signed ones (a forward's: as many as its citation's, each with its key;
         another bulletin's: none with a key).

    Raises:
        SignatureError: step 1.
        DecryptionError: steps 2-6, with one uniform message; ``code`` names the step.
    """
    verify_envelope(env, sender_key)
    header = env.header
    if not header.addresses(recipient):
        raise DecryptionError("bulletin does not open", code="not_a_recipient")
    hd = header_digest(header)
    wrap = next((w for w in env.wraps if w.recipient == recipient), None)
    if wrap is None:
        content_key = _open_by_group(env, epoch_keys, hd)
    else:
        if key is None or wrap.kid != key.public_key.kid or wrap.kem != key.kem:
            raise DecryptionError("bulletin does not open", code="recipient_key_unknown")
        try:
            enc = b64d(wrap.enc, field="wrap.enc", max_bytes=_MAX_WRAP_BYTES)
            content_key = hpke_suite(key.kem).decrypt(
                enc, key.hpke_private(), info=_wrap_info(hd, recipient, wrap.kid)
            )
        except (InvalidTag, ValueError, EnvelopeError) as exc:
            raise DecryptionError("bulletin does not open", code="wrap_invalid") from exc
    commitment = b64d(header.key_commitment, field="header.key_commitment", max_bytes=32)
    if len(content_key) != _KEY_BYTES or _commitment(content_key) != commitment:
        raise DecryptionError("bulletin does not open", code="key_commitment_mismatch")
    try:
        nonce = b64d(env.body.nonce, field="body.nonce", max_bytes=_NONCE_BYTES)
        ct = b64d(env.body.ct, field="body.ct", max_bytes=DEFAULT_MAX_ENVELOPE_BYTES)
        plain = AESGCM(content_key).decrypt(nonce, ct, hd)
    except (InvalidTag, ValueError, EnvelopeError) as exc:
        raise DecryptionError("bulletin does not open", code="body_invalid") from exc
    try:
        inner = parse_model(InnerBulletin, plain, max_bytes=len(plain), what="inner bulletin")
    except EnvelopeError as exc:
        raise DecryptionError("bulletin does not open", code="inner_malformed") from exc
    if (
        inner.bulletin_id != header.bulletin_id
        or inner.originator != header.originator
        or inner.recipients != header.recipients
        or inner.audience != header.audience
        or len(inner.content.attachments or ()) != len(header.file_refs())
        or not _keys_as_they_must_be(inner.content, forward=header.forward_of is not None)
    ):
        raise DecryptionError("bulletin does not open", code="inner_outer_mismatch")
    return inner, content_key


def _keys_as_they_must_be(content: Content, *, forward: bool) -> bool:
    """A forward's content gives every file's key (the original's chunks open with it,
    ADR 20); any other bulletin's gives none (its keys derive from its content key)."""
    return all((m.key is not None) == forward for m in content.attachments or ())


def _open_by_group(env: Envelope, epoch_keys: Sequence[EpochKey], hd: bytes) -> bytes:
    """The content key from a group wrap one of ``epoch_keys`` opens (step 2-3)."""
    held = {(k.group, k.epoch, k.kid): k for k in epoch_keys}
    for g in env.groups or ():
        k = held.get((g.group, g.epoch, g.kid))
        if k is not None:
            return open_group_wrap(g, k, hd)
    raise DecryptionError("bulletin does not open", code="no_group_key")


def check_envelope_shape(env: Envelope) -> None:
    """Length checks a broker can make without keys (commitment, nonce, wraps, signature).

    Raises:
        EnvelopeError: a binary field has the wrong length or is not canonical base64.
    """
    if len(b64d(env.header.key_commitment, field="header.key_commitment", max_bytes=32)) != 32:
        raise EnvelopeError("header.key_commitment must be 32 bytes")
    if len(b64d(env.body.nonce, field="body.nonce", max_bytes=_NONCE_BYTES)) != _NONCE_BYTES:
        raise EnvelopeError("body.nonce must be 12 bytes")
    for w in env.wraps:
        enc = b64d(w.enc, field="wrap.enc", max_bytes=_MAX_WRAP_BYTES)
        want = (1120 if w.kem == "MLKEM768-X25519" else 32) + _KEY_BYTES + 16
        if len(enc) != want:
            raise EnvelopeError(f"wrap for {w.recipient} has the wrong length", code="malformed")
    for g in env.groups or ():
        check_group_wrap_shape(g)
    if len(b64d(env.sig.value, field="sig.value", max_bytes=64)) != 64:
        raise SignatureError("signature must be 64 bytes")
