"""Named constructors of the broker's audit events: one shape per kind of event.

Each function builds one ``schemas.audit.AuditEvent`` with its id, actor, subject and data
laid out the same way wherever it is written (``key.registered`` is written by the demo
loader, enrolment, rotation and the administrators' registration). Pure: the time is an
argument (``at``, epoch milliseconds, from the caller's ``broker.clock.Clock``); only the
one-off events whose id must be unique draw a random UUID. Free text (notes, messages,
operator names) is cut to the schema's 200 characters here, so callers need not.

Left to others: writing the events (``broker.store.registry.Registry.record`` and
``change``, in the same transaction as what they describe), their Merkle log
(``broker.audit.log``), and what may go into them: metadata only, never a title, a body,
a key or a token (the schema's docstring).

One module per domain (``bulletins``, ``dead_letters``, ``directory``, ``access``); this
package names them all, so a caller writes ``events.key_registered(...)``.
"""

from __future__ import annotations

from broker.audit.events._common import KeyUse, Refusal
from broker.audit.events.access import (
    audit_queried,
    console_login,
    console_logout,
    console_refused,
    http_refused,
    refusals_summarized,
    token_issued,
)
from broker.audit.events.bulletins import (
    MAX_DECIDED_BYTES,
    MAX_DECIDED_GROUPS,
    SET_MIN_AGENCIES,
    DecisionGroup,
    UnknownSet,
    agencies_listed,
    agency_set_digest,
    bulletin_accepted,
    bulletin_decided,
    bulletin_received,
    bulletin_rejected,
    bulletin_withdrawn,
    decided_groups,
    delivery_withdrawn,
    receipt_rejected,
    request_rejected,
)
from broker.audit.events.conversations import rfi_closed, rfi_overdue
from broker.audit.events.dead_letters import (
    delivery_dead_lettered,
    delivery_redriven,
    delivery_republished,
    delivery_unrecoverable,
    ingest_dead_lettered,
    ingest_redriven,
)
from broker.audit.events.desk import desk_summary, desk_summary_subject
from broker.audit.events.directory import (
    agency_created,
    agency_enrolled,
    agency_status_changed,
    demo_agency_enrolled,
    enrolment_token_issued,
    jurisdiction_added,
    key_registered,
    key_revoked,
    key_rotated,
    policy_adopted,
    policy_rejected,
    subscription_added,
    subscription_removed,
)
from broker.audit.events.federation import (
    federation_arrived,
    federation_blocked,
    federation_mismatch,
    federation_passed,
    federation_refused,
    federation_subject,
)
from broker.audit.events.forwards import (
    bulletin_forwarded,
    forward_granted,
    forward_refused,
    forward_requested,
)
from broker.audit.events.groups import group_defined, group_rotated

__all__ = [
    "MAX_DECIDED_BYTES",
    "MAX_DECIDED_GROUPS",
    "SET_MIN_AGENCIES",
    "DecisionGroup",
    "KeyUse",
    "Refusal",
    "UnknownSet",
    "agencies_listed",
    "agency_created",
    "agency_enrolled",
    "agency_set_digest",
    "agency_status_changed",
    "audit_queried",
    "bulletin_accepted",
    "bulletin_decided",
    "bulletin_forwarded",
    "bulletin_received",
    "bulletin_rejected",
    "bulletin_withdrawn",
    "console_login",
    "console_logout",
    "console_refused",
    "decided_groups",
    "delivery_dead_lettered",
    "delivery_redriven",
    "delivery_republished",
    "delivery_unrecoverable",
    "delivery_withdrawn",
    "demo_agency_enrolled",
    "desk_summary",
    "desk_summary_subject",
    "enrolment_token_issued",
    "federation_arrived",
    "federation_blocked",
    "federation_mismatch",
    "federation_passed",
    "federation_refused",
    "federation_subject",
    "forward_granted",
    "forward_refused",
    "forward_requested",
    "group_defined",
    "group_rotated",
    "http_refused",
    "ingest_dead_lettered",
    "ingest_redriven",
    "jurisdiction_added",
    "key_registered",
    "key_revoked",
    "key_rotated",
    "policy_adopted",
    "policy_rejected",
    "receipt_rejected",
    "refusals_summarized",
    "request_rejected",
    "rfi_closed",
    "rfi_overdue",
    "subscription_added",
    "subscription_removed",
    "token_issued",
]
