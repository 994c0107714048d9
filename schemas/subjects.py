"""The NATS contract: stream, subject, consumer and account names.

Every name is built here, from an agency id that passed ``parse_agency_id``, so no caller
can build a subject out of unchecked text.
"""

from __future__ import annotations

from schemas.ids import AgencyId, parse_agency_id

__all__ = [
    "API_OPS",
    "AUDIT_STREAM",
    "DELIVER_STREAM",
    "INGEST_STREAM",
    "RECEIPT_STREAM",
    "RELAY_INGEST_DURABLE",
    "RELAY_RECEIPT_DURABLE",
    "account_name",
    "agency_of_subject",
    "api_subject",
    "deliver_durable",
    "deliver_subject",
    "inbox_prefix",
    "ingest_msg_id",
    "ingest_subject",
    "receipt_subject",
]

INGEST_STREAM = "ISTMO_INGEST"  # istmo.ingest.<agency>, work queue
DELIVER_STREAM = "ISTMO_DELIVER"  # istmo.deliver.<agency>, kept for offline agencies
RECEIPT_STREAM = "ISTMO_RECEIPTS"  # istmo.receipt.<agency>, work queue
AUDIT_STREAM = "ISTMO_AUDIT"  # istmo.audit.>, for the sequencer of the audit log
RELAY_INGEST_DURABLE = "relay-ingest"
RELAY_RECEIPT_DURABLE = "relay-receipts"
RELAY_ACCOUNT = "ISTMO"
# Request/reply operations an agency may call on the broker, on istmo.api.<agency>.<op>.
API_OPS = (
    "resolve",
    "explain",
    "directory",
    "status",
    "receipts",
    "rotate",
    "revoke-key",
    "dead-letters",
)


def _checked(agency: str) -> AgencyId:
    return parse_agency_id(agency)


def ingest_subject(agency: str) -> str:
    return f"istmo.ingest.{_checked(agency)}"


def deliver_subject(agency: str) -> str:
    return f"istmo.deliver.{_checked(agency)}"


def receipt_subject(agency: str) -> str:
    return f"istmo.receipt.{_checked(agency)}"


def api_subject(agency: str, op: str) -> str:
    if op not in API_OPS:
        raise ValueError(f"unknown API operation {op!r}")
    return f"istmo.api.{_checked(agency)}.{op}"


def deliver_durable(agency: str) -> str:
    return f"deliver-{_checked(agency)}"


def inbox_prefix(agency: str) -> str:
    """The only subscribe prefix an agency's NATS user is allowed."""
    return f"_INBOX_{_checked(agency)}"


def account_name(agency: str) -> str:
    """The NATS account that confines one agency (ids hold no '_', so this is 1:1)."""
    return "AG_" + _checked(agency).replace("-", "_").upper()


def ingest_msg_id(agency: str, envelope_digest: str) -> str:
    """JetStream dedupe id of an envelope on ingest (S-27).

    JetStream dedupes per stream, across every agency's subject, so an id another agency
    could predict would let it squat a bulletin: it publishes first with that id, and the
    real bulletin is dropped as a duplicate. The digest of the sealed envelope (fresh
    content key and nonce inside) is known to nobody before the originator publishes it,
    yet the same for every retry of that envelope.
    """
    return f"{_checked(agency)}:{envelope_digest}"


def agency_of_subject(subject: str, kind: str) -> AgencyId:
    """The agency token of ``istmo.<kind>.<agency>`` (EnvelopeError if it is not one)."""
    parts = subject.split(".")
    if len(parts) != 3 or parts[0] != "istmo" or parts[1] != kind:
        return parse_agency_id("")  # raises with a clear message
    return parse_agency_id(parts[2])
