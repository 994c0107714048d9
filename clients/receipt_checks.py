"""The originator's own check of its bulletin's receipts (issue 19). Pure: the caller
fetches the broker's signed answer and the recipients' records from the signed directory
(``IstmoClient.verify_receipts``).

The broker relays receipts; the originator need not trust it with them. Each routed
recipient's entry is checked, each step failing that entry alone:
  1. a receipt at all: none and no time is ``not_received``; a time the broker recorded
     without a receipt it can show signed fails (``no_signed_receipt``);
  2. the recipient listed once (``listed_twice``);
  3. the receipt names the recipient it is listed for (``recipient_mismatch``), this
     bulletin and this originator, and the time the broker listed (``receipt_mismatch``);
  4. it names the envelope digest expected: the one the originator published, if it gave
     it, else the one the broker recorded (``digest_mismatch``);
  5. the signed directory lists the key it names as the recipient's
     (``key_not_bound_to_sender``);
  6. that key was not revoked by the time the receipt claims (``key_revoked``);
  7. the signature verifies (``signature_invalid``).

The relay also refuses a receipt stored after its key was revoked, whatever time it
claims; the originator cannot see when it was stored, so a receipt verified under a key
revoked since is reported with the revocation time.

What this cannot catch: a receipt the broker leaves out shows as not received, and who was
routed is the broker's word (``istmo status`` and the audit log say the same).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from clients.results import ReceiptCheck, VerifiedReceipts
from schemas.directory import AgencyRecord, SigningKeyRecord
from schemas.errors import IstmoError
from schemas.receipt import verify_receipt
from schemas.receipt_requests import SignedReceiptEntry, SignedReceiptsReply

__all__ = ["check_receipts", "keys_named"]


def keys_named(pages: Sequence[SignedReceiptsReply]) -> dict[str, str]:
    """The recipients whose records the check needs, and the key each receipt names."""
    return {e.agency: e.receipt.kid for p in pages for e in p.recipients if e.receipt is not None}


def check_receipts(
    pages: Sequence[SignedReceiptsReply],
    *,
    bulletin_id: str,
    originator: str,
    records: Mapping[str, AgencyRecord],
    envelope_digest: str | None = None,
) -> VerifiedReceipts:
    """Check every receipt of the broker's signed answer (all its pages).

    Args:
        pages: the answer, page by page, for ``bulletin_id``.
        bulletin_id: the bulletin asked about.
        originator: this agency, its originator.
        records: the recipients' records from the signed directory, by agency id.
        envelope_digest: the digest of the envelope as published (``PublishResult``);
            None to check the receipts against the broker's recorded digest instead.

    Returns:
        One ``ReceiptCheck`` per recipient listed, in the order listed.
    """
    broker_digest = pages[0].envelope_digest if pages else ""
    expected = envelope_digest or broker_digest
    seen: set[str] = set()
    checks = []
    for page in pages:
        for entry in page.recipients:
            if entry.agency in seen:  # 2
                checks.append(_failed(entry, "listed_twice", "listed twice by the broker"))
                continue
            seen.add(entry.agency)
            checks.append(
                _check(entry, bulletin_id, originator, expected, records.get(entry.agency))
            )
    return VerifiedReceipts(
        bulletin_id=bulletin_id,
        envelope_digest=expected,
        digest_from="publisher" if envelope_digest else "broker",
        broker_digest=broker_digest,
        recipients=tuple(checks),
    )


def _check(
    entry: SignedReceiptEntry,
    bulletin_id: str,
    originator: str,
    digest: str,
    record: AgencyRecord | None,
) -> ReceiptCheck:
    r = entry.receipt
    if r is None:  # 1
        if entry.received_at is None:
            return ReceiptCheck(entry.agency, "not_received")
        return _failed(
            entry,
            "no_signed_receipt",
            "the broker recorded a receipt but shows none signed by a key of this agency",
        )
    if r.recipient != entry.agency:  # 3
        return _failed(entry, "recipient_mismatch", f"the receipt is {r.recipient}'s")
    if r.bulletin_id != bulletin_id or r.originator != originator:
        return _failed(entry, "receipt_mismatch", "the receipt is for another bulletin")
    if r.received_at != entry.received_at:
        return _failed(entry, "receipt_mismatch", "the broker lists another time than signed")
    if r.envelope_digest != digest:  # 4
        return _failed(
            entry,
            "digest_mismatch",
            f"the receipt names envelope digest {r.envelope_digest[:16]}..., not {digest[:16]}...",
        )
    key = _key(record, r.kid)
    if key is None:  # 5
        return _failed(
            entry, "key_not_bound_to_sender", f"{r.kid} is not a signing key of {entry.agency}"
        )
    if key.revoked_at is not None and key.revoked_at <= r.received_at:  # 6
        return _failed(entry, "key_revoked", f"{r.kid} was revoked before the time signed")
    try:  # 7
        verify_receipt(r, key.verify_key())
    except IstmoError:
        return _failed(entry, "signature_invalid", f"the signature does not verify under {r.kid}")
    return ReceiptCheck(
        entry.agency,
        "verified",
        received_at=r.received_at,
        kid=r.kid,
        key_revoked_at=key.revoked_at,
    )


def _key(record: AgencyRecord | None, kid: str) -> SigningKeyRecord | None:
    if record is None:
        return None
    return next((k for k in record.signing_keys if k.kid == kid), None)


def _failed(entry: SignedReceiptEntry, reason: str, message: str) -> ReceiptCheck:
    return ReceiptCheck(
        entry.agency, "failed", received_at=entry.received_at, reason=reason, message=message
    )
