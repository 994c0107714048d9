"""Seal, sign, verify and open envelopes: pure functions, keys and ``now`` passed in.

Construction (envelope v1):
  1. K = 32 random bytes; commitment = SHA-256("istmo/v1/commit" || 0 || K) goes in the header,
     so one ciphertext cannot open to two plaintexts under two keys.
  2. hd = SHA-256("istmo/v1/header" || 0 || canonical(header)).
  3. body = AES-256-GCM(K, nonce, canonical(inner), aad = hd).
  4. wrap_r = HPKE.Seal(pk_r, info = "istmo/v1/wrap" || 0 || hd || 0 || r || 0 || kid_r, K).
     The header names bulletin id and originator, so a wrap cannot move to another
     bulletin or recipient.
  5. sig = Ed25519("istmo/v1/envelope" || 0 || canonical({header, body_digest, wraps})).

Recipients open in the reverse order and check every binding before any plaintext leaves.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from schemas.canonical import b64d, b64e, canonical_json
from schemas.envelope import (
    Content,
    Envelope,
    Header,
    InnerBulletin,
    SealedBody,
    Signature,
    Wrap,
    parse_model,
)
from schemas.errors import DecryptionError, EnvelopeError, SignatureError
from schemas.ids import AgencyId, BulletinId, new_bulletin_id
from schemas.keys import EncryptionKey, EncryptionPublicKey, SigningKey, VerifyKey, hpke_suite
from schemas.labels import Labels

__all__ = [
    "DEFAULT_MAX_ENVELOPE_BYTES",
    "check_envelope_shape",
    "encode_envelope",
    "envelope_digest",
    "header_digest",
    "open_envelope",
    "parse_envelope",
    "seal",
    "verify_envelope",
]

DEFAULT_MAX_ENVELOPE_BYTES = 1024 * 1024
_KEY_BYTES = 32
_NONCE_BYTES = 12
_MAX_WRAP_BYTES = 4096


def _commitment(key: bytes) -> bytes:
    return hashlib.sha256(b"istmo/v1/commit\x00" + key).digest()


def header_digest(header: Header) -> bytes:
    """SHA-256 over the canonical header, with a domain prefix."""
    return hashlib.sha256(b"istmo/v1/header\x00" + canonical_json(_dump(header))).digest()


def _wrap_info(hd: bytes, recipient: str, kid: str) -> bytes:
    return b"istmo/v1/wrap\x00" + hd + b"\x00" + recipient.encode() + b"\x00" + kid.encode()


def _dump(model: Header | Wrap | SealedBody | Envelope) -> Any:
    return model.model_dump(mode="json", exclude_none=True)


def _signed_bytes(header: Header, body: SealedBody, wraps: tuple[Wrap, ...]) -> bytes:
    body_digest = hashlib.sha256(
        b64d(body.nonce, field="body.nonce", max_bytes=_NONCE_BYTES)
        + b64d(body.ct, field="body.ct", max_bytes=DEFAULT_MAX_ENVELOPE_BYTES)
    ).hexdigest()
    signed = {
        "header": _dump(header),
        "body_digest": body_digest,
        "wraps": [_dump(w) for w in wraps],
    }
    return b"istmo/v1/envelope\x00" + canonical_json(signed)


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
) -> Envelope:
    """Seal ``content`` for ``recipients`` and sign it as ``originator``.

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

    Returns:
        The signed envelope.

    Raises:
        ValueError: no recipients.
    """
    if not recipients:
        raise ValueError("a bulletin needs at least one recipient")
    bid = bulletin_id or new_bulletin_id()
    order = sorted(recipients)
    key = AESGCM.generate_key(bit_length=256)
    header = Header(
        v=1,
        bulletin_id=bid,
        originator=originator,
        created_at=now,
        not_before=not_before,
        expires_at=expires_at,
        supersedes=supersedes,
        labels=labels,
        recipients=tuple(order),
        aead="AES-256-GCM",
        key_commitment=b64e(_commitment(key)),
        signer=signing_key.verify_key.kid,
    )
    hd = header_digest(header)
    inner = InnerBulletin(
        bulletin_id=bid, originator=originator, recipients=tuple(order), content=content
    )
    nonce = os.urandom(_NONCE_BYTES)
    ct = AESGCM(key).encrypt(nonce, canonical_json(inner.model_dump(mode="json")), hd)
    body = SealedBody(nonce=b64e(nonce), ct=b64e(ct))
    wraps = []
    for rid in order:
        pub = recipients[rid]
        enc = hpke_suite(pub.kem).encrypt(key, pub.hpke_public(), info=_wrap_info(hd, rid, pub.kid))
        wraps.append(Wrap(recipient=rid, kid=pub.kid, kem=pub.kem, enc=b64e(enc)))
    wrap_tuple = tuple(wraps)
    sig = signing_key.sign(_signed_bytes(header, body, wrap_tuple))
    return Envelope(
        v=1,
        header=header,
        body=body,
        wraps=wrap_tuple,
        sig=Signature(alg="Ed25519", kid=header.signer, value=b64e(sig)),
    )


def verify_envelope(env: Envelope, key: VerifyKey) -> None:
    """Check the originator's signature over header, ciphertext digest and wraps.

    Raises:
        SignatureError: wrong key id, bad length, or the signature does not verify.
        EnvelopeError: a binary field is not canonical base64.
    """
    if key.kid != env.sig.kid:
        raise SignatureError("envelope is signed by another key", code="key_not_bound_to_sender")
    value = b64d(env.sig.value, field="sig.value", max_bytes=64)
    key.verify(value, _signed_bytes(env.header, env.body, env.wraps))


def open_envelope(
    env: Envelope, *, recipient: AgencyId, key: EncryptionKey, sender_key: VerifyKey
) -> InnerBulletin:
    """Verify ``env`` and decrypt it for ``recipient``.

    Steps, each failing closed before any plaintext is returned:
      1. the signature verifies under the originator's key;
      2. ``recipient`` is among the signed recipients and its wrap names ``key``;
      3. the HPKE wrap opens with the info bound to header digest, recipient and kid;
      4. the content key matches the signed commitment;
      5. the body opens under AES-256-GCM with the header digest as associated data;
      6. the inner ids equal the signed header's.

    Raises:
        SignatureError: step 1.
        DecryptionError: steps 2-6, with one uniform message; ``code`` names the step.
    """
    verify_envelope(env, sender_key)
    header = env.header
    wrap = next((w for w in env.wraps if w.recipient == recipient), None)
    if wrap is None:
        raise DecryptionError("bulletin does not open", code="not_a_recipient")
    pub = key.public_key
    if wrap.kid != pub.kid or wrap.kem != key.kem:
        raise DecryptionError("bulletin does not open", code="recipient_key_unknown")
    hd = header_digest(header)
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
    ):
        raise DecryptionError("bulletin does not open", code="inner_outer_mismatch")
    return inner


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
    if len(b64d(env.sig.value, field="sig.value", max_bytes=64)) != 64:
        raise SignatureError("signature must be 64 bytes")
