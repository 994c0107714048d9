"""Opening a delivered bulletin: check it against its sender's signing key as the
directory lists it, decrypt it with this agency's key, and hand back what the application
sees. Pure: the caller looks the key up (``IstmoClient.receive``) and passes ``now``.
"""

from __future__ import annotations

from collections.abc import Sequence

from clients.results import ForwardedFrom, ReceivedAttachment, ReceivedBulletin
from schemas.attachments import AttachmentMeta, attachment_key
from schemas.canonical import b64d
from schemas.directory import AgencyRecord, SigningKeyRecord
from schemas.envelope import Envelope, Header
from schemas.errors import DecryptionError, EnvelopeError, SignatureError
from schemas.forwarding import verify_grant
from schemas.groups import EpochKey
from schemas.ids import AgencyId
from schemas.keystore import KeystoreFile
from schemas.labels import Handling
from schemas.sealing import open_envelope_keyed

__all__ = ["CAVEATS", "check_forward_consent", "open_delivery", "signing_key_of"]

CAVEATS = {
    Handling.H0: "use only for the purpose it was provided for",
    Handling.H1: "no judicial use without the originator's consent",
    Handling.H2: "no further dissemination without the originator's consent",
    Handling.H3: "other restrictions, stated below: read and respect them",
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
    epoch_keys: Sequence[EpochKey] = (),
    grant_key: SigningKeyRecord | None = None,
) -> ReceivedBulletin:
    """Verify and decrypt ``env`` for ``agency``.

    Steps, each failing closed before any plaintext is returned:
      1. the directory lists the key the envelope names as its originator's;
      2. the key was not revoked when the bulletin was created;
      3. this agency has the key its wrap names, or (no wrap of its own) ``epoch_keys``
         holds the key of one of its group wraps (ADR 18);
      4. ``schemas.sealing.open_envelope``: signature, wrap, commitment, body, ids;
      5. it has not expired (its signed ``expires_at``): the originator said not to use
         it after then (ADR 15);
      6. a forward carrying the original's originator's grant: the grant is for exactly
         this forward and verifies (``check_forward_consent``, ADR 20);
      7. an acknowledgement answers a bulletin (ADR 27).

    Args:
        env: a parsed envelope, as delivered.
        sender_key: the originator's signing key ``env.sig.kid`` as the directory lists
            it (``signing_key_of``), or None if it does not.
        keystore: this agency's keys, older encryption keys included.
        agency: this agency.
        now: epoch seconds, the bulletin's ``received_at``.
        epoch_keys: community group epoch keys this agency holds, checked already
            (``clients.groups.held_key``).
        grant_key: for a forward with a grant, the original originator's signing key the
            grant names, as the directory lists it.

    Raises:
        SignatureError: steps 1, 2 and the signature of step 4.
        DecryptionError: step 3 and the rest of step 4.
        EnvelopeError: ``expired``, step 5.
        SignatureError: ``forward_consent_invalid``, step 6.
        EnvelopeError: ``malformed``, step 7.
    """
    h = env.header
    if sender_key is None:  # 1
        raise SignatureError("signed by a key the directory does not know")
    if sender_key.revoked_at is not None and sender_key.revoked_at <= h.created_at:  # 2
        raise SignatureError("signed after its key was revoked", code="key_revoked")
    wrap = next((w for w in env.wraps if w.recipient == agency), None)  # 3
    my_key = keystore.encryption_key(wrap.kid) if wrap else None
    if my_key is None and (wrap is not None or not epoch_keys):
        raise DecryptionError("bulletin does not open", code="recipient_key_unknown")
    inner, content_key = open_envelope_keyed(
        env,
        recipient=agency,
        key=my_key,
        sender_key=sender_key.verify_key(),
        epoch_keys=epoch_keys,
    )
    if h.expires_at is not None and h.expires_at <= now:  # 5
        raise EnvelopeError(f"bulletin expired {now - h.expires_at} s ago", code="expired")
    forwarded = check_forward_consent(env, agency=agency, grant_key=grant_key)  # 6
    acknowledges = bool(inner.content.acknowledges)
    if acknowledges and h.in_reply_to is None:  # 7
        raise EnvelopeError("an acknowledgement that answers no bulletin", code="malformed")
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
        in_reply_to=h.in_reply_to,
        thread=h.thread,
        reply_all=bool(h.reply_all),
        rfi_due=h.rfi_due,
        attachments=_files(h, inner.content.attachments or (), content_key),
        forwarded=forwarded,
        signed_kid=env.sig.kid,
        acknowledges=acknowledges,
    )


def _files(
    h: Header, metas: Sequence[AttachmentMeta], content_key: bytes
) -> tuple[ReceivedAttachment, ...]:
    """The files a bulletin carries: its own, with keys derived from its content key
    (ADR 17); or a forward's, the original's it cites, with the keys its body gives and
    the original's id, under which their chunks are sealed (ADR 20). ``open_envelope``
    checked that the names are as many as the references, and which give keys."""
    original = h.forward_of.bulletin_id if h.forward_of is not None else None
    return tuple(
        ReceivedAttachment(
            index=i,
            name=meta.name,
            media_type=meta.media_type,
            size=ref.size,
            chunks=ref.chunks,
            chunk_size=ref.chunk_size,
            digest=ref.digest,
            key=(
                attachment_key(content_key, h.bulletin_id, i)
                if meta.key is None
                else b64d(meta.key, field="attachment key", max_bytes=32)
            ),
            original=original,
        )
        for i, (ref, meta) in enumerate(zip(h.file_refs(), metas, strict=True))
    )


def check_forward_consent(
    env: Envelope, *, agency: str, grant_key: SigningKeyRecord | None
) -> ForwardedFrom | None:
    """Where a forward came from, once its consent checks out (None: not a forward).

    A grant must name the bulletin cited, its originator, the forwarder (the envelope's
    signer) and this agency, and verify under the originator's key, not revoked when it
    was issued. A forward without one was let through by the policy; the relay checked
    that, and the SDK says so.

    Raises:
        SignatureError: ``forward_consent_invalid``.
    """
    cite = env.header.forward_of
    if cite is None:
        return None
    grant = cite.grant
    if grant is None:
        return ForwardedFrom(cite.bulletin_id, cite.originator, env.header.originator, "policy")
    named = (grant.bulletin_id, grant.originator, grant.forwarder, grant.recipient)
    if named != (cite.bulletin_id, cite.originator, env.header.originator, agency):
        raise SignatureError("the grant is for another forward", code="forward_consent_invalid")
    revoked = grant_key is not None and grant_key.revoked_at is not None
    if grant_key is None or (revoked and grant_key.revoked_at <= grant.issued_at):  # type: ignore[operator]
        raise SignatureError(
            "the grant is not signed by a key of the originator's", code="forward_consent_invalid"
        )
    try:
        verify_grant(grant, grant_key.verify_key())
    except (SignatureError, EnvelopeError) as exc:
        raise SignatureError(
            "the grant's signature does not verify", code="forward_consent_invalid"
        ) from exc
    return ForwardedFrom(cite.bulletin_id, cite.originator, env.header.originator, "originator")
