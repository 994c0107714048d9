"""The relay's checks on a recipient's signed receipt: pure, every input passed in.

A receipt counts only if the agency that sent it is the recipient it names, the bulletin
was routed to that agency and addressed to it, it names the bulletin's originator and
envelope digest, and it is signed by one of the agency's registered signing keys that was
not revoked by the time JetStream stored the receipt, nor by the time the receipt claims.
Each failure raises EnvelopeError (or SignatureError) whose ``code`` goes to the audit log.

A revoked key signs nothing the relay counts from its revocation on, even a receipt that
says it was signed before: a key is revoked because it may be in someone else's hands,
and whoever holds it writes any ``received_at`` they like. A true receipt signed just
before the revocation and sent after it is lost with the forgeries; the bulletin then
shows no receipt from that agency.

Left to others: pulling receipts and reading the bulletin and its decisions from the
registry, then committing the receipt row and its ``bulletin.received`` event
(``broker.relay.worker``); the receipt's wire format and signature (``schemas.receipt``).
"""

from __future__ import annotations

from collections.abc import Mapping, Set

from broker.store.registry import BulletinRow
from schemas.directory import AgencyRecord
from schemas.errors import EnvelopeError, SignatureError
from schemas.ids import AgencyId
from schemas.receipt import Receipt, parse_receipt, verify_receipt
from schemas.subjects import agency_of_gated

__all__ = ["check_receipt", "read_receipt"]


def read_receipt(raw: bytes, *, subject: str) -> tuple[AgencyId, Receipt]:
    """Steps 1-3: who sent it, a strict parse, and the sender is the recipient it names.

    Raises:
        EnvelopeError: not a receipt subject, malformed, or another agency's receipt.
    """
    # 1. The subject names the sending agency (the gate stored it on
    #    istmo.gated.receipt.<agency>).
    sender = agency_of_gated(subject, "receipt")
    # 2. A strict parse.
    receipt = parse_receipt(raw)
    # 3. An agency acknowledges only what it received itself.
    if receipt.recipient != sender:
        raise EnvelopeError("receipt recipient differs from its sender", code="originator_mismatch")
    return sender, receipt


def check_receipt(
    receipt: Receipt,
    *,
    sender: AgencyId,
    bulletin: BulletinRow | None,
    routed: Set[str],
    records: Mapping[str, AgencyRecord],
    stored_at: int,
) -> None:
    """Steps 4-7, against what the registry holds of the bulletin.

    Args:
        receipt: the parsed receipt.
        sender: the agency that sent it (``read_receipt``).
        bulletin: the bulletin as accepted, or None if no such bulletin was.
        routed: the agencies the policy allowed it.
        records: the directory, by agency id.
        stored_at: when JetStream stored the receipt, epoch seconds (the server's clock,
            which the sender cannot choose).

    Raises:
        EnvelopeError: with ``code`` naming the failed step.
        SignatureError: the signature does not verify under the named key, or that
            key was revoked (``key_revoked``).
    """
    # 4. The bulletin exists and went to the sender.
    if bulletin is None or sender not in routed or sender not in bulletin.recipients.split(","):
        raise EnvelopeError(
            "receipt for a bulletin not routed to its sender", code="unknown_bulletin"
        )
    # 5. It is about that bulletin, as accepted.
    if (
        receipt.originator != bulletin.originator
        or receipt.envelope_digest != bulletin.envelope_digest
    ):
        raise EnvelopeError("receipt does not match the bulletin", code="receipt_mismatch")
    # 6. It is signed by a key registered to the sender.
    record = records.get(sender)
    key = next((k for k in record.signing_keys if k.kid == receipt.kid), None) if record else None
    if key is None:
        raise EnvelopeError("receipt signed by an unknown key", code="key_not_bound_to_sender")
    # 7. That key was not revoked when the receipt was stored, nor when it claims to be
    #    from (a revoked key may be a stolen one: its holder backdates at will).
    if key.revoked_at is not None and key.revoked_at <= max(stored_at, receipt.received_at):
        raise SignatureError("receipt signed by a revoked key", code="key_revoked")
    verify_receipt(receipt, key.verify_key())
