"""The database's table and sequence names, by who may write them.

Only names, no imports: ``istmo db`` (which loads nothing heavy at start) and the
SQLite -> PostgreSQL copy both read them, and the grants of ``deploy/postgres`` follow them.
"""

from __future__ import annotations

__all__ = ["AUDIT_TABLES", "RECORD_TABLES", "REGISTRY_TABLES", "SEQUENCES"]

# Append-only: the broker's role may INSERT and SELECT these, nothing else.
AUDIT_TABLES = ("audit_event", "log_entry", "merkle_node", "tree_head")
# The relay's decision records, append-only likewise (migration 0013).
RECORD_TABLES = ("agency_set", "decision", "decision_record")
# Read and written.
REGISTRY_TABLES = (
    "admin_identity",
    "agency",
    "assertion_jti",
    "bulletin",
    "community_group",
    "console_link",
    "console_session",
    "directory_change",
    "encryption_key",
    "enrolment_token",
    "group_epoch",
    "group_wrap",
    "forward_request",
    "jurisdiction",
    "meta",
    "nats_user",
    "policy_set",
    "receipt",
    "rejection",
    "rfi",
    "rfi_addressee",
    "signing_key",
    "subscription",
    "withheld_count",
    "withdrawal",
)
SEQUENCES = ("audit_event_seq_seq", "directory_change_serial_seq", "policy_set_seq_seq")
