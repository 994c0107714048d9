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

A batch of receipts is judged at once (``read_batch``, then ``judge_batch`` against what
the registry holds of every bulletin they name, read in one query): each receipt gets a
``ReceiptVerdict``, the receipt row and ``bulletin.received`` event to record, or the
``receipt.rejected`` event that audits its refusal. A refused receipt never holds back the
good ones beside it.

For the originator's signed answer, ``attributed`` rebuilds a recorded receipt whole from
its row and the bulletin's: the fields the relay checked equal to the bulletin's, the
time, signature and key id the row keeps. A row recorded before the relay kept key ids
gets the first of the recipient's signing keys its signature verifies under, or None:
the broker never names a key it cannot show signed the receipt.

Left to others: pulling receipts and reading the bulletins and their decisions from the
registry, then committing a batch's rows and events in one transaction and acking it
(``broker.relay.worker``); the receipt's wire format and signature (``schemas.receipt``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass

from pydantic import ValidationError

from broker.audit import events
from broker.relay.checks import sender_of
from broker.store.registry import BulletinRow, ReceiptRow
from schemas.audit import AuditEvent
from schemas.directory import AgencyRecord, SigningKeyRecord
from schemas.errors import EnvelopeError, IstmoError, SignatureError
from schemas.ids import AgencyId
from schemas.receipt import Receipt, parse_receipt, verify_receipt
from schemas.receipt_requests import SignedReceiptEntry
from schemas.subjects import agency_of_gated

__all__ = [
    "IncomingReceipt",
    "ReceiptVerdict",
    "attributed",
    "check_receipt",
    "judge_batch",
    "read_batch",
    "read_receipt",
]


@dataclass(frozen=True)
class IncomingReceipt:
    """One message of the receipt stream: where it was stored and what it holds."""

    seq: int  # its stream sequence, which names a refusal's audit event
    subject: str
    raw: bytes
    # When JetStream stored it, epoch seconds (the server's clock, which the sender cannot
    # choose): a key revoked by then cannot have signed it (check_receipt, step 7).
    stored_at: int


@dataclass(frozen=True)
class ReceiptVerdict:
    """What to record of one receipt: its ``ReceiptRow`` (as column values, for
    ``Registry.record_receipts``) and ``bulletin.received`` event, or (row None) the
    ``receipt.rejected`` event of its refusal."""

    seq: int
    row: Mapping[str, object] | None
    event: AuditEvent

    @property
    def accepted(self) -> bool:
        return self.row is not None


Read = tuple[AgencyId, Receipt] | IstmoError


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


def read_batch(batch: Sequence[IncomingReceipt]) -> list[Read]:
    """``read_receipt`` on each of ``batch``: the sender and receipt, or why it is refused."""
    out: list[Read] = []
    for msg in batch:
        try:
            out.append(read_receipt(msg.raw, subject=msg.subject))
        except IstmoError as exc:
            out.append(exc)
    return out


def judge_batch(
    batch: Sequence[IncomingReceipt],
    read: Sequence[Read],
    *,
    bulletins: Mapping[str, BulletinRow],
    routed: Mapping[str, Set[str]],
    records: Mapping[str, AgencyRecord],
    at: int,
) -> list[ReceiptVerdict]:
    """The verdict on each receipt of ``batch`` (``read`` is ``read_batch(batch)``).

    Args:
        batch: the receipts as they came off the stream.
        read: what ``read_batch`` made of each.
        bulletins: every accepted bulletin the batch names, by id (a missing one was
            never accepted).
        routed: by bulletin id, the agencies the policy allowed it.
        records: the directory, by agency id.
        at: the time of the audit events and of ``recorded_at``, epoch milliseconds.

    Returns:
        One verdict per receipt, in order. A second receipt of the same recipient for the
        same bulletin in one batch is accepted like the first (its row and event are the
        same; the store keeps one).
    """
    verdicts: list[ReceiptVerdict] = []
    for msg, got in zip(batch, read, strict=True):
        try:
            if isinstance(got, IstmoError):
                raise got
            sender, receipt = got
            bid = receipt.bulletin_id
            check_receipt(
                receipt,
                sender=sender,
                bulletin=bulletins.get(bid),
                routed=routed.get(bid, frozenset()),
                records=records,
                stored_at=msg.stored_at,
            )
        except IstmoError as exc:
            verdicts.append(ReceiptVerdict(msg.seq, None, _refused(msg, exc, at)))
            continue
        # Plain values: a ReceiptRow each cost as much as verifying its signature.
        row = {
            "bulletin_id": bid,
            "recipient": sender,
            "received_at": receipt.received_at,
            "recorded_at": at // 1000,
            "signature": receipt.sig,
            "kid": receipt.kid,
        }
        received = events.bulletin_received(
            bid,
            sender,
            received_at=receipt.received_at,
            envelope_digest=receipt.envelope_digest,
            at=at,
        )
        verdicts.append(ReceiptVerdict(msg.seq, row, received))
    return verdicts


def attributed(
    agency: str, row: ReceiptRow | None, *, bulletin: BulletinRow, record: AgencyRecord | None
) -> SignedReceiptEntry:
    """What the originator's signed answer says of routed recipient ``agency``.

    Args:
        agency: the routed recipient.
        row: its recorded receipt, or None if it has sent none (yet).
        bulletin: the bulletin, as accepted.
        record: the recipient's directory record (its signing keys), or None.

    Returns:
        The entry: no receipt yet; the receipt whole, its ``kid`` the one the relay
        recorded or, for a row recorded before it kept them, the recipient's signing key
        that verifies it; or ``received_at`` alone when no key does (or the row is not one
        the relay wrote).
    """
    if row is None:
        return SignedReceiptEntry(agency=agency, received_at=None, receipt=None)
    kids = [row.kid] if row.kid is not None else _kids_to_try(record, row.received_at)
    for kid in kids:
        try:
            receipt = Receipt(
                v=1,
                bulletin_id=bulletin.id,
                originator=bulletin.originator,
                recipient=agency,
                envelope_digest=bulletin.envelope_digest,
                received_at=row.received_at,
                kid=kid,
                sig=row.signature,
            )
        except ValidationError:  # a row edited by hand: nothing to show signed
            break
        if row.kid is not None or _verifies(receipt, record):
            return SignedReceiptEntry(agency=agency, received_at=row.received_at, receipt=receipt)
    return SignedReceiptEntry(agency=agency, received_at=row.received_at, receipt=None)


def _kids_to_try(record: AgencyRecord | None, received_at: int) -> list[str]:
    """The recipient's signing keys, the likeliest first: the newest of those it held at
    ``received_at`` (the key it signed with then), then the rest, newest first. Each try
    is a signature check, so the usual row costs one."""
    if record is None:
        return []

    def held_then(k: SigningKeyRecord) -> bool:
        return k.created_at <= received_at and (k.revoked_at is None or k.revoked_at > received_at)

    order = sorted(record.signing_keys, key=lambda k: (not held_then(k), -k.created_at))
    return [k.kid for k in order]


def _verifies(receipt: Receipt, record: AgencyRecord | None) -> bool:
    key = next((k for k in record.signing_keys if k.kid == receipt.kid), None) if record else None
    if key is None:
        return False
    try:
        verify_receipt(receipt, key.verify_key())
    except IstmoError:
        return False
    return True


def _refused(msg: IncomingReceipt, exc: IstmoError, at: int) -> AuditEvent:
    return events.receipt_rejected(
        msg.seq,
        sender=sender_of(msg.subject, "receipt") or "unknown",
        reason=exc.code,
        message=str(exc),
        at=at,
    )
