"""Opening a delivered bulletin: check it against its sender's signing key as the
directory lists it, decrypt it with this agency's key, and hand back what the application
sees. Pure: the caller looks the key up (``IstmoClient.receive``) and passes ``now``.
"""

from __future__ import annotations

from clients.results import ReceivedBulletin
from schemas.directory import AgencyRecord, SigningKeyRecord
from schemas.envelope import Envelope
from schemas.errors import DecryptionError, EnvelopeError, SignatureError
from schemas.ids import AgencyId
from schemas.keystore import KeystoreFile
from schemas.labels import Handling
from schemas.sealing import open_envelope

__all__ = ["CAVEATS", "open_delivery", "signing_key_of"]

CAVEATS = {
    Handling.H0: "use only for the purpose it was provided for",
    Handling.H1: "no judicial use without the originator's consent",
    Handling.H2: "no further dissemination without the originator's consent",
}


def signing_key_of(record: AgencyRecord | None, kid: str) -> SigningKeyRecord | None:
    """The signing key ``kid`` of the agency ``record`` describes, if it lists it."""
    if record is None:
        return None
    return next((k for k in record.signing_keys if k.kid == kid), None)


def open_delivery(
    env: Envelope,
    *,
    sender_key: SigningKeyRecord | None,
    keystore: KeystoreFile,
    agency: AgencyId,
    now: int,
) -> ReceivedBulletin:
    """Verify and decrypt ``env`` for ``agency``.

    Steps, each failing closed before any plaintext is returned:
      1. the directory lists the key the envelope names as its originator's;
      2. the key was not revoked when the bulletin was created;
      3. this agency has the key its wrap names;
      4. ``schemas.sealing.open_envelope``: signature, wrap, commitment, body, ids;
      5. it has not expired (its signed ``expires_at``): the originator said not to use
         it after then (ADR 15).

    Args:
        env: a parsed envelope, as delivered.
        sender_key: the originator's signing key ``env.sig.kid`` as the directory lists
            it (``signing_key_of``), or None if it does not.
        keystore: this agency's keys, older encryption keys included.
        agency: this agency.
        now: epoch seconds, the bulletin's ``received_at``.

    Raises:
        SignatureError: steps 1, 2 and the signature of step 4.
        DecryptionError: step 3 and the rest of step 4.
        EnvelopeError: ``expired``, step 5.
    """
    h = env.header
    if sender_key is None:  # 1
        raise SignatureError("signed by a key the directory does not know")
    if sender_key.revoked_at is not None and sender_key.revoked_at <= h.created_at:  # 2
        raise SignatureError("signed after its key was revoked", code="key_revoked")
    wrap = next((w for w in env.wraps if w.recipient == agency), None)  # 3
    my_key = keystore.encryption_key(wrap.kid) if wrap else None
    if my_key is None:
        raise DecryptionError("bulletin does not open", code="recipient_key_unknown")
    inner = open_envelope(env, recipient=agency, key=my_key, sender_key=sender_key.verify_key())
    if h.expires_at is not None and h.expires_at <= now:  # 5
        raise EnvelopeError(f"bulletin expired {now - h.expires_at} s ago", code="expired")
    caveats = [CAVEATS[c] for c in h.labels.handling if c in CAVEATS]
    if h.labels.handling_note:
        caveats.append(h.labels.handling_note)
    return ReceivedBulletin(
        id=h.bulletin_id,
        originator=h.originator,
        labels=h.labels,
        title=inner.content.title,
        body=inner.content.text,
        created_at=h.created_at,
        received_at=now,
        caveats=tuple(caveats),
        expires_at=h.expires_at,
        supersedes=h.supersedes,
    )
