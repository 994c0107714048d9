"""The relay's checks on a recipient's signed receipt: pure, every input passed in.

A receipt counts only if the agency that sent it is the recipient it names, the bulletin
was routed to that agency and addressed to it, it names the bulletin's originator and
envelope digest, and it is signed by one of the agency's registered signing keys. Each
failure raises EnvelopeError (or SignatureError) whose ``code`` goes to the audit log.

Left to others: pulling receipts and reading the bulletin and its decisions from the
registry, then committing the receipt row and its ``bulletin.received`` event
(``broker.relay.worker``); the receipt's wire format and signature (``schemas.receipt``).
"""

from __future__ import annotations

from collections.abc import Mapping, Set

from broker.store.registry import BulletinRow
from schemas.directory import AgencyRecord
from schemas.errors import EnvelopeError
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
) -> None:
    """Steps 4-6, against what the registry holds of the bulletin.

    Args:
        receipt: the parsed receipt.
        sender: the agency that sent it (``read_receipt``).
        bulletin: the bulletin as accepted, or None if no such bulletin was.
        routed: the agencies the policy allowed it.
        records: the directory, by agency id.

    Raises:
        EnvelopeError: with ``code`` naming the failed step.
        SignatureError: the signature does not verify under the named key.
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
    verify_receipt(receipt, key.verify_key())
