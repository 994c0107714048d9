"""The NATS contract: stream, subject, consumer and account names.

Every name is built here, from an agency id that passed ``parse_agency_id``, so no caller
can build a subject out of unchecked text.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

from schemas.errors import EnvelopeError
from schemas.ids import AgencyId, parse_agency_id
from schemas.labels import Precedence

__all__ = [
    "ANNOUNCE_SUBJECT",
    "API_OPS",
    "AUDIT_STREAM",
    "DELIVER_STREAM",
    "GATED_KINDS",
    "INGEST_STREAM",
    "RECEIPT_STREAM",
    "RELAY_INGEST_DURABLE",
    "RELAY_RECEIPT_DURABLE",
    "URGENT_PRECEDENCES",
    "ApiOp",
    "account_name",
    "agency_of_deliver_durable",
    "agency_of_delivery",
    "agency_of_gated",
    "agency_of_subject",
    "api_subject",
    "deliver_ack_subjects",
    "deliver_durable",
    "deliver_durables",
    "deliver_filter_subjects",
    "deliver_next_subject",
    "deliver_subject",
    "gated_msg_id",
    "gated_subject",
    "inbox_prefix",
    "ingest_msg_id",
    "ingest_subject",
    "is_delivery_to",
    "legacy_deliver_subject",
    "precedence_of_delivery",
    "receipt_subject",
    "urgent_durable",
]

INGEST_STREAM = "ISTMO_INGEST"  # istmo.gated.ingest.<agency>, work queue
DELIVER_STREAM = "ISTMO_DELIVER"  # istmo.deliver.<agency>.<precedence>, kept while offline
RECEIPT_STREAM = "ISTMO_RECEIPTS"  # istmo.gated.receipt.<agency>, work queue
AUDIT_STREAM = "ISTMO_AUDIT"  # istmo.audit.>, for the sequencer of the audit log
RELAY_INGEST_DURABLE = "relay-ingest"
RELAY_RECEIPT_DURABLE = "relay-receipts"
RELAY_ACCOUNT = "ISTMO"
# The relays' announcements of the directory and policy versions (schemas.agency
# Announcement): exported by ISTMO as a stream every agency account imports, unchanged.
ANNOUNCE_SUBJECT = "istmo.announce"
# Request/reply operations an agency may call on the broker, on istmo.api.<agency>.<op>.
ApiOp = Literal[
    "recipients",
    "resolve",
    "explain",
    "directory",
    "changes",
    "status",
    "receipts",
    "rotate",
    "revoke-key",
    "dead-letters",
    "withheld",
    "recall",
]
API_OPS: tuple[str, ...] = get_args(ApiOp)


def _checked(agency: str) -> AgencyId:
    return parse_agency_id(agency)


def ingest_subject(agency: str) -> str:
    return f"istmo.ingest.{_checked(agency)}"


def deliver_subject(agency: str, precedence: Precedence) -> str:
    """Where the relay stores a delivery: ``istmo.deliver.<agency>.<precedence>``
    (lower-case), so that an agency's two consumers can split its queue (ADR 7)."""
    return f"istmo.deliver.{_checked(agency)}.{Precedence(precedence).value.lower()}"


def legacy_deliver_subject(agency: str) -> str:
    """``istmo.deliver.<agency>``: where an Istmo before ADR 7 stored every delivery. The
    stream keeps it, and ``deliver-<agency>`` reads it, so nothing queued there is lost."""
    return f"istmo.deliver.{_checked(agency)}"


def receipt_subject(agency: str) -> str:
    return f"istmo.receipt.{_checked(agency)}"


def api_subject(agency: str, op: str) -> str:
    if op not in API_OPS:
        raise ValueError(f"unknown API operation {op!r}")
    return f"istmo.api.{_checked(agency)}.{op}"


# An agency drains two durable consumers on DELIVER_STREAM, the urgent one first (ADR 7):
# urgent-<agency> (FLASH, IMMEDIATE) and deliver-<agency> (PRIORITY, ROUTINE and the legacy
# subject). The prefixes differ before the first '-', so no agency id can make one
# agency's consumer name equal to another's ("deliver-urgent-x" would be agency urgent-x's).
URGENT_PRECEDENCES = frozenset({Precedence.FLASH, Precedence.IMMEDIATE})
_NORMAL_PREFIX = "deliver-"
_URGENT_PREFIX = "urgent-"


def deliver_durable(agency: str) -> str:
    """The consumer of an agency's PRIORITY and ROUTINE deliveries (and legacy ones)."""
    return f"{_NORMAL_PREFIX}{_checked(agency)}"


def urgent_durable(agency: str) -> str:
    """The consumer of an agency's FLASH and IMMEDIATE deliveries."""
    return f"{_URGENT_PREFIX}{_checked(agency)}"


def deliver_durables(agency: str) -> tuple[str, str]:
    """An agency's two delivery consumers, in the order it drains them: urgent first."""
    return urgent_durable(agency), deliver_durable(agency)


def deliver_filter_subjects(durable: str) -> tuple[str, ...]:
    """The subjects one of the two delivery consumers (by name) reads.

    Raises:
        EnvelopeError: ``durable`` is not an agency's delivery consumer.
    """
    agency = agency_of_deliver_durable(durable)
    if durable.startswith(_URGENT_PREFIX):
        return tuple(deliver_subject(agency, p) for p in Precedence if p in URGENT_PRECEDENCES)
    normal = tuple(deliver_subject(agency, p) for p in Precedence if p not in URGENT_PRECEDENCES)
    return (*normal, legacy_deliver_subject(agency))


def agency_of_deliver_durable(durable: str) -> AgencyId:
    """The agency whose delivery consumer is named ``durable`` (EnvelopeError if none)."""
    for prefix in (_URGENT_PREFIX, _NORMAL_PREFIX):
        if durable.startswith(prefix):
            return parse_agency_id(durable.removeprefix(prefix))
    return parse_agency_id("")  # raises with a clear message


def deliver_next_subject(durable: str) -> str:
    """The JetStream request that pulls from one delivery consumer (``MSG.NEXT``)."""
    agency_of_deliver_durable(durable)
    return f"$JS.API.CONSUMER.MSG.NEXT.{DELIVER_STREAM}.{durable}"


def deliver_ack_subjects(durable: str) -> str:
    """Every ack (ack, nak, in progress, term) of one delivery consumer's messages."""
    agency_of_deliver_durable(durable)
    return f"$JS.ACK.{DELIVER_STREAM}.{durable}.>"


def agency_of_delivery(subject: str) -> AgencyId:
    """The recipient of a delivery on ``istmo.deliver.<agency>[.<precedence>]``.

    Raises:
        EnvelopeError: ``subject`` is not a delivery subject.
    """
    parts = subject.split(".")
    if parts[:2] != ["istmo", "deliver"] or len(parts) not in (3, 4):
        return parse_agency_id("")  # raises with a clear message
    agency = parse_agency_id(parts[2])
    if len(parts) == 4:
        precedence_of_delivery(subject)
    return agency


def is_delivery_to(subject: str, agency: str) -> bool:
    """Whether ``subject`` is a delivery subject of ``agency`` (per precedence, or legacy)."""
    try:
        return agency_of_delivery(subject) == agency
    except EnvelopeError:
        return False


def precedence_of_delivery(subject: str) -> Precedence | None:
    """The precedence a delivery subject names; None for the legacy subject (ADR 7).

    Raises:
        EnvelopeError: the fourth token is not a precedence.
    """
    parts = subject.split(".")
    if len(parts) != 4:
        return None
    token = parts[3]
    if token != token.lower() or token.upper() not in Precedence.__members__:
        raise EnvelopeError(f"not a delivery precedence: {token[:16]!r}", code="malformed")
    return Precedence[token.upper()]


def inbox_prefix(agency: str) -> str:
    """The only subscribe prefix an agency's NATS user is allowed."""
    return f"_INBOX_{_checked(agency)}"


def account_name(agency: str) -> str:
    """The NATS account that confines one agency (ids hold no '_', so this is 1:1)."""
    return "AG_" + _checked(agency).replace("-", "_").upper()


def ingest_msg_id(agency: str, envelope_digest: str) -> str:
    """The JetStream dedupe id the SDK proposes for an envelope on ingest (S-27).

    The digest of the sealed envelope (fresh content key and nonce inside) is the same for
    every retry of that envelope and known to nobody before the originator publishes it.
    The gate stores it under the sender's own namespace (``gated_msg_id``), so another
    agency could not squat it even if it could predict it.
    """
    return f"{_checked(agency)}:{envelope_digest}"


def agency_of_subject(subject: str, kind: str) -> AgencyId:
    """The agency token of ``istmo.<kind>.<agency>`` (EnvelopeError if it is not one)."""
    parts = subject.split(".")
    if len(parts) != 3 or parts[0] != "istmo" or parts[1] != kind:
        return parse_agency_id("")  # raises with a clear message
    return parse_agency_id(parts[2])


# What an agency publishes on istmo.<kind>.<agency> reaches JetStream only through the
# broker's gate (broker.bus.gate), which stores it on istmo.gated.<kind>.<agency> with headers
# of its own: nats-server acts on headers an agency could send (Nats-Expected-*, Nats-Rollup,
# Nats-TTL, ...) and account permissions cannot filter them.
GATED_KINDS = ("ingest", "receipt")
_GATED = "istmo.gated"
# The dedupe id an agency proposes: the SDK's ids fit this; anything else is not used.
_CLIENT_MSG_ID = re.compile(r"[A-Za-z0-9:._-]{1,128}")


def gated_subject(kind: str, agency: str) -> str:
    """Where the gate stores what ``agency`` published on ``istmo.<kind>.<agency>``."""
    if kind not in GATED_KINDS:
        raise ValueError(f"not a gated kind: {kind!r}")
    return f"{_GATED}.{kind}.{_checked(agency)}"


def agency_of_gated(subject: str, kind: str) -> AgencyId:
    """The agency token of ``istmo.gated.<kind>.<agency>`` (EnvelopeError if not one)."""
    head, _, agency = subject.rpartition(".")
    if head != f"{_GATED}.{kind}":
        return parse_agency_id("")  # raises with a clear message
    return parse_agency_id(agency)


def gated_msg_id(agency: str, kind: str, proposed: str | None, digest: str) -> str:
    """The JetStream dedupe id the gate stores a message under (S-27).

    Every id lives in the sending agency's own namespace, so no agency can squat another's
    (JetStream dedupes per stream, across every subject). Within it the agency's proposed
    ``Nats-Msg-Id`` is kept when well formed (the SDK's retries of one receipt then dedupe
    even if re-signed); otherwise the digest of the payload stands in, so an identical retry
    still dedupes.
    """
    if kind not in GATED_KINDS:
        raise ValueError(f"not a gated kind: {kind!r}")
    own = proposed if proposed and _CLIENT_MSG_ID.fullmatch(proposed) else f"sha256:{digest}"
    return f"{_checked(agency)}/{kind}/{own}"
