"""The NATS contract: stream, subject, consumer and account names.

Every name is built here, from an agency id that passed ``parse_agency_id``, so no caller
can build a subject out of unchecked text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Literal, get_args

from schemas.envelope import GROUP_NAME_PATTERN
from schemas.errors import EnvelopeError
from schemas.ids import AgencyId, parse_agency_id, parse_bulletin_id
from schemas.labels import Precedence

__all__ = [
    "ANNOUNCE_SUBJECT",
    "API_OPS",
    "ATTACH_API_SUBJECTS",
    "ATTACH_OPS",
    "ATTACH_STREAM",
    "AUDIT_STREAM",
    "DELIVER_STREAM",
    "GATED_AT_HEADER",
    "GATED_KINDS",
    "INGEST_STREAM",
    "RECEIPT_STREAM",
    "RELAY_INGEST_DURABLE",
    "RELAY_RECEIPT_DURABLE",
    "URGENT_PRECEDENCES",
    "ApiOp",
    "AttachOp",
    "account_name",
    "agency_of_deliver_durable",
    "agency_of_delivery",
    "agency_of_gated",
    "agency_of_subject",
    "api_subject",
    "attach_api_subject",
    "chunk_subject",
    "chunks_prefix",
    "deliver_ack_subjects",
    "deliver_durable",
    "deliver_durables",
    "deliver_filter_subjects",
    "deliver_next_subject",
    "deliver_subject",
    "delivered_bulletin",
    "delivery_msg_id",
    "gated_at_of",
    "gated_msg_id",
    "gated_subject",
    "group_copy_id",
    "group_deliver_subject",
    "group_delivery_of",
    "group_filter_subjects",
    "group_token",
    "inbox_prefix",
    "ingest_msg_id",
    "ingest_subject",
    "is_delivery_to",
    "is_group_delivery",
    "legacy_deliver_subject",
    "precedence_of_delivery",
    "receipt_subject",
    "urgent_durable",
]

INGEST_STREAM = "ISTMO_INGEST"  # istmo.gated.ingest.<agency>, work queue
DELIVER_STREAM = "ISTMO_DELIVER"  # istmo.deliver.<agency>.<precedence>, kept while offline
RECEIPT_STREAM = "ISTMO_RECEIPTS"  # istmo.gated.receipt.<agency>, work queue
AUDIT_STREAM = "ISTMO_AUDIT"  # istmo.audit.>, for the sequencer of the audit log
# istmo.attach.<originator>.<bulletin>.<attachment>.<chunk>: attachment chunks (ADR 17),
# written and read by the relay only, for agencies' att.put and att.get requests.
ATTACH_STREAM = "ISTMO_ATTACH"
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
    "key-log",
    "status",
    "receipts",
    "rotate",
    "revoke-key",
    "dead-letters",
    "withheld",
    "recall",
    "groups",
    "group-roster",
    "group-epoch",
    "group-keys",
    "reply-context",
    "rfi-list",
    "rfi-close",
    "forward-request",
    "forward-requests",
    "forward-decide",
    "desk-summary",
    "push",
]
API_OPS: tuple[str, ...] = get_args(ApiOp)
# Chunk operations of attachments (ADR 17), on istmo.api.<agency>.att.<op>: one token
# deeper than the operations above, so the relays answer them on a subscription of their
# own, and inside the istmo.api.<agency>.> every agency already imports.
AttachOp = Literal["put", "have", "get"]
ATTACH_OPS: tuple[str, ...] = get_args(AttachOp)
ATTACH_API_SUBJECTS = "istmo.api.*.att.*"


def _checked(agency: str) -> AgencyId:
    return parse_agency_id(agency)


def ingest_subject(agency: str) -> str:
    return f"istmo.ingest.{_checked(agency)}"


@lru_cache(maxsize=1 << 15)
def deliver_subject(agency: str, precedence: Precedence) -> str:
    """Where the relay stores a delivery: ``istmo.deliver.<agency>.<precedence>``
    (lower-case), so that an agency's two consumers can split its queue (ADR 7).

    Remembered (two per agency of a directory of 10,000 and more): the relay names one
    for every copy it stores, and checking the id each time was 3 % of its work."""
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


def attach_api_subject(agency: str, op: str) -> str:
    """Where an agency asks for a chunk operation: ``istmo.api.<agency>.att.<op>``."""
    if op not in ATTACH_OPS:
        raise ValueError(f"unknown attachment operation {op!r}")
    return f"istmo.api.{_checked(agency)}.att.{op}"


def chunk_subject(originator: str, bulletin_id: str, attachment: int, chunk: int) -> str:
    """Where the relay stores one chunk: under its uploader (the bulletin's originator),
    so no agency can write or read chunks under another's name."""
    return f"{chunks_prefix(originator, bulletin_id)}.{int(attachment)}.{int(chunk)}"


def chunks_prefix(originator: str, bulletin_id: str) -> str:
    """``istmo.attach.<originator>.<bulletin>``: add ``.>`` for all its chunks."""
    return f"istmo.attach.{_checked(originator)}.{parse_bulletin_id(bulletin_id)}"


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


def deliver_filter_subjects(
    durable: str, groups: Iterable[tuple[str, int]] = ()
) -> tuple[str, ...]:
    """The subjects one of the two delivery consumers (by name) reads: the agency's own
    and, for each (group, epoch) of ``groups``, that epoch's group copies at the
    consumer's precedences (ADR 21).

    Raises:
        EnvelopeError: ``durable`` is not an agency's delivery consumer, or a group name
            is not one.
    """
    agency = agency_of_deliver_durable(durable)
    urgent = durable.startswith(_URGENT_PREFIX)
    mine = [p for p in Precedence if (p in URGENT_PRECEDENCES) == urgent]
    own = tuple(deliver_subject(agency, p) for p in mine)
    if not urgent:
        own = (*own, legacy_deliver_subject(agency))
    shared = tuple(group_deliver_subject(g, e, p) for g, e in sorted(set(groups)) for p in mine)
    return (*own, *shared)


def group_filter_subjects(durable: str, groups: Iterable[tuple[str, int]]) -> tuple[str, ...]:
    """Only the group-copy subjects ``deliver_filter_subjects`` adds for ``groups``."""
    everything = deliver_filter_subjects(durable, groups)
    return everything[len(deliver_filter_subjects(durable)) :]


# One copy of a group-covered bulletin per group epoch (ADR 21):
# istmo.deliver.group.<group token>.<epoch>.<precedence>. Six tokens, so no agency's
# istmo.deliver.<agency>[.<precedence>] (three or four) can be one, whatever its id.
_GROUP_DELIVER = "istmo.deliver.group"
_GROUP_RE = re.compile(GROUP_NAME_PATTERN)
_MAX_EPOCH = 2**40


def group_token(group: str) -> str:
    """A group name as one NATS token: '.' (allowed in names) becomes '~' (not allowed),
    so the mapping is one to one.

    Raises:
        EnvelopeError: ``group`` is not a group name.
    """
    if not isinstance(group, str) or _GROUP_RE.fullmatch(group) is None:
        raise EnvelopeError("invalid group name", code="bad_group")
    return group.replace(".", "~")


def group_deliver_subject(group: str, epoch: int, precedence: Precedence) -> str:
    """Where the relay stores the one copy of a bulletin for the members of ``group``'s
    ``epoch``: their consumers read it while that epoch's copies may be in the stream."""
    if not isinstance(epoch, int) or not 1 <= epoch <= _MAX_EPOCH:
        raise EnvelopeError("invalid group epoch", code="bad_group")
    level = Precedence(precedence).value.lower()
    return f"{_GROUP_DELIVER}.{group_token(group)}.{epoch}.{level}"


def delivery_msg_id(bulletin_id: str, agency: str) -> str:
    """The ``Nats-Msg-Id`` of a bulletin's copy to one agency: the stream keeps one copy per
    recipient, and the recipient's SDK may know the copy by it without parsing the bulletin
    (a copy of a bulletin it was pushed and has receipted, ADR 43)."""
    return f"{bulletin_id}:{agency}"


def delivered_bulletin(msg_id: str | None, agency: str) -> str | None:
    """The bulletin id a delivery's ``Nats-Msg-Id`` names for ``agency``, or None if it
    names none (a group copy, a republished copy, no header). Only as good as the broker
    that wrote it: use it to skip what is already handled, never to trust content."""
    if not msg_id:
        return None
    bulletin_id, sep, to = msg_id.rpartition(":")
    return bulletin_id if sep and to == agency and bulletin_id else None


def group_copy_id(bulletin_id: str, group: str, epoch: int) -> str:
    """The dedupe id of a bulletin's one copy for a group epoch (ADR 21). Its second part
    is never an agency id's shape alone (``group`` is followed by more parts), so no
    per-recipient reader takes it for a copy to an agency called ``group``."""
    return f"{parse_bulletin_id(bulletin_id)}:group:{group_token(group)}:{int(epoch)}"


def group_delivery_of(subject: str) -> tuple[str, int, Precedence]:
    """(group, epoch, precedence) of a group copy's subject.

    Raises:
        EnvelopeError: ``subject`` is not a group copy's subject.
    """
    parts = subject.split(".")
    if len(parts) != 6 or ".".join(parts[:3]) != _GROUP_DELIVER or not parts[4].isdigit():
        raise EnvelopeError("not a group delivery subject", code="malformed")
    group = parts[3].replace("~", ".")
    epoch = int(parts[4])
    if group_deliver_subject(group, epoch, _precedence_token(parts[5])) != subject:
        raise EnvelopeError("not a group delivery subject", code="malformed")
    return group, epoch, _precedence_token(parts[5])


def is_group_delivery(subject: str) -> bool:
    """Whether ``subject`` is a group copy's (``group_delivery_of`` parses it)."""
    try:
        group_delivery_of(subject)
    except EnvelopeError:
        return False
    return True


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
    """The precedence a delivery subject names, an agency's or a group copy's (ADR 21);
    None for the legacy subject (ADR 7).

    Raises:
        EnvelopeError: the precedence token is not a precedence.
    """
    parts = subject.split(".")
    if len(parts) == 6:
        return group_delivery_of(subject)[2]
    if len(parts) != 4:
        return None
    return _precedence_token(parts[3])


def _precedence_token(token: str) -> Precedence:
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
# When a gate first stored the message, in epoch milliseconds by the gate's clock (ADR 0034).
# The gate writes it and drops any header the agency sent, so no agency can set it; JetStream
# sourcing keeps it when a hub takes a state node's messages.
GATED_AT_HEADER = "Istmo-Gated-At"
_GATED_AT = re.compile(r"[0-9]{1,15}")  # up to the year 33658: bounded before int()
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


def gated_at_of(value: str | None) -> int | None:
    """The gate's stamp ``GATED_AT_HEADER`` in epoch seconds (rounded down), or None when
    there is none or it is not one (digits only, at most 15): the relay then judges the
    message by when JetStream stored it, as it would an unstamped one."""
    if value is None or _GATED_AT.fullmatch(value) is None:
        return None
    return int(value) // 1000
