"""Applying an agency's key rotation to the registry.

Steps, each refusing with a reason code:
  1. strict parse; the request names the agency that sent it;
  2. the agency is active and the request is signed by its newest unrevoked signing key;
  3. both signatures verify (current key: it is the agency; new key: it holds it), and
     the new keys are well formed, not weak, and match their ids;
  4. issued within the clock skew, and the new keys are not registered already.
Then, in one transaction with its audit events: the new signing key is registered and the
old one is valid only for what was signed before now; the new encryption key becomes the
current one.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlmodel import Session

from broker.audit import events
from broker.clock import SYSTEM_CLOCK, Clock
from broker.store.registry import EncryptionKeyRow, Registry, SigningKeyRow
from schemas.canonical import b64d
from schemas.directory import AgencyRecord
from schemas.errors import EnvelopeError, SignatureError
from schemas.rotation import parse_rotation, verify_rotation

__all__ = ["apply_rotation"]


def apply_rotation(
    registry: Registry,
    records: Mapping[str, AgencyRecord],
    raw: bytes,
    *,
    caller: str,
    now: int,
    max_skew_s: int,
    clock: Clock = SYSTEM_CLOCK,
) -> dict[str, str]:
    """Verify and record a rotation sent by ``caller``; returns the new key ids.

    ``now`` (epoch seconds) is when the request is judged and the keys change; ``clock``
    stamps the audit events.

    Raises:
        EnvelopeError, SignatureError: the request is refused (``code`` says why).
    """
    req = parse_rotation(raw)  # 1
    if req.agency != caller:
        raise EnvelopeError(
            "a rotation must name the agency that sends it", code="originator_mismatch"
        )
    rec = records.get(caller)  # 2
    if rec is None or rec.status != "active":
        raise EnvelopeError(f"agency {caller} is not active", code="agency_not_active")
    live = [k for k in rec.signing_keys if k.revoked_at is None]
    current = max(live, key=lambda k: k.created_at) if live else None
    if current is None or current.kid != req.current_kid:
        raise SignatureError("rotation is not signed by the current key", code="key_not_current")
    verify_rotation(req, current.verify_key())  # 3
    if abs(req.issued_at - now) > max_skew_s:  # 4
        raise EnvelopeError(
            "rotation is outside the allowed clock skew", code="timestamp_out_of_window"
        )
    if registry.signing_key(req.signing.kid) is not None or any(
        k.kid == req.encryption.kid for k in registry.encryption_keys(caller)
    ):
        raise EnvelopeError("these keys are registered already", code="key_reused")

    current_enc = [k.kid for k in registry.encryption_keys(caller) if k.current]

    def apply(s: Session) -> None:
        old = s.get(SigningKeyRow, current.kid)
        if old is None or old.revoked_at is not None:
            raise EnvelopeError("the current key changed meanwhile", code="key_not_current")
        # Valid for what it signed up to the end of this second (times are whole seconds,
        # so a bulletin sealed in the same second as the rotation still verifies).
        old.revoked_at = now + 1
        s.add(old)
        s.add(
            SigningKeyRow(
                kid=req.signing.kid, agency=caller, public=req.signing.public, created_at=now
            )
        )
        for kid in current_enc:
            enc = s.get(EncryptionKeyRow, kid)
            if enc is not None:
                enc.current = False
                s.add(enc)
        e = req.encryption
        s.add(
            EncryptionKeyRow(kid=e.kid, agency=caller, kem=e.kem, public=e.public, created_at=now)
        )

    at = clock.now_ms()
    signing, encryption = req.signing, req.encryption
    trail = [
        events.key_rotated(
            caller, old_kid=current.kid, new_kid=signing.kid, encryption_kid=encryption.kid, at=at
        ),
        events.key_registered(
            caller,
            signing.kid,
            "signing",
            at=at,
            actor=caller,
            public=b64d(signing.public, field="signing key", max_bytes=32),
        ),
        events.key_registered(
            caller,
            encryption.kid,
            "encryption",
            at=at,
            actor=caller,
            kem=encryption.kem,
            public=b64d(encryption.public, field="kem key", max_bytes=1216),
        ),
    ]
    registry.change(apply, trail)
    return {"signing_kid": req.signing.kid, "encryption_kid": req.encryption.kid}
