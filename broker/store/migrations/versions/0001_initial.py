"""The schema of Istmo before migrations: registry, bulletins, audit outbox and Merkle log.

Exactly the tables, indexes and triggers the models made with ``create_all`` (schema_version
2), written out so later models cannot change what 0001 means. Integers that grow without
bound (sequence numbers, epoch milliseconds, stream positions, tree sizes) are BIGINT on
PostgreSQL; SQLite keeps INTEGER (an ``INTEGER PRIMARY KEY`` is its rowid).

Every table and index is created only if missing, so a SQLite database made before
migrations is adopted as it is. The audit tables are append-only at the database level:
SQLite triggers abort UPDATE and DELETE; PostgreSQL triggers refuse UPDATE, DELETE and
TRUNCATE for every role, superusers included, and stay on in replication mode (``ENABLE
ALWAYS``). Granting the broker's role INSERT and SELECT only is ``istmo db upgrade
--grant-role``.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
AUDIT_TABLES = ("audit_event", "log_entry", "merkle_node", "tree_head")


def _table(name: str, *items: sa.schema.SchemaItem, **kw: object) -> None:
    op.create_table(name, *items, if_not_exists=True, **kw)


def _index(table: str, column: str) -> None:
    op.create_index(f"ix_{table}_{column}", table, [column], if_not_exists=True)


def upgrade() -> None:
    _table(
        "jurisdiction",
        sa.Column("code", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("parents", sa.String(400), nullable=False),
        sa.PrimaryKeyConstraint("code"),
    )
    _table(
        "agency",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("sector", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("clearance", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=True),
        sa.Column("communities", sa.String(400), nullable=False),
        sa.Column("min_source_grade", sa.String(2), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    _table(
        "subscription",
        sa.Column("agency", sa.String(32), nullable=False),
        sa.Column("topic", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("agency", "topic"),
    )
    _table(
        "signing_key",
        sa.Column("kid", sa.String(40), nullable=False),
        sa.Column("agency", sa.String(32), nullable=False),
        sa.Column("public", sa.String(64), nullable=False),
        sa.Column("created_at", BIGINT, nullable=False),
        sa.Column("revoked_at", BIGINT, nullable=True),
        sa.PrimaryKeyConstraint("kid"),
    )
    _index("signing_key", "agency")
    _table(
        "encryption_key",
        sa.Column("kid", sa.String(40), nullable=False),
        sa.Column("agency", sa.String(32), nullable=False),
        sa.Column("kem", sa.String(32), nullable=False),
        sa.Column("public", sa.String(2048), nullable=False),
        sa.Column("created_at", BIGINT, nullable=False),
        sa.Column("current", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("kid"),
    )
    _index("encryption_key", "agency")
    _table(
        "nats_user",
        sa.Column("agency", sa.String(32), nullable=False),
        sa.Column("nkey_public", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("agency"),
    )
    _table(
        "bulletin",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("originator", sa.String(32), nullable=False),
        sa.Column("labels", sa.String(), nullable=False),
        sa.Column("envelope_digest", sa.String(64), nullable=False),
        sa.Column("ingest_seq", BIGINT, nullable=False),
        sa.Column("created_at", BIGINT, nullable=False),
        sa.Column("accepted_at", BIGINT, nullable=False),
        sa.Column("not_before", BIGINT, nullable=True),
        sa.Column("expires_at", BIGINT, nullable=True),
        sa.Column("recipients", sa.String(), nullable=False),
        sa.Column("policy_version", sa.String(64), nullable=False),
        sa.Column("directory_version", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    _index("bulletin", "originator")
    _table(
        "policy_set",
        sa.Column("seq", BIGINT, nullable=False, autoincrement=True),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("adopted_at", BIGINT, nullable=False),
        sa.Column("adopted_by", sa.String(200), nullable=False),
        sa.Column("previous", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
    )
    _index("policy_set", "version")
    _table(
        "meta",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    _table(
        "decision",
        sa.Column("bulletin_id", sa.String(36), nullable=False),
        sa.Column("agency", sa.String(32), nullable=False),
        sa.Column("allowed", sa.Boolean(), nullable=False),
        sa.Column("policy_ids", sa.String(), nullable=False),
        sa.Column("reasons", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("bulletin_id", "agency"),
    )
    _table(
        "receipt",
        sa.Column("bulletin_id", sa.String(36), nullable=False),
        sa.Column("recipient", sa.String(32), nullable=False),
        sa.Column("received_at", BIGINT, nullable=False),
        sa.Column("recorded_at", BIGINT, nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("bulletin_id", "recipient"),
    )
    _table(
        "rejection",
        sa.Column("ingest_seq", BIGINT, nullable=False, autoincrement=False),
        sa.Column("originator", sa.String(32), nullable=False),
        sa.Column("bulletin_id", sa.String(36), nullable=True),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("message", sa.String(300), nullable=False),
        sa.Column("time", BIGINT, nullable=False),
        sa.PrimaryKeyConstraint("ingest_seq"),
    )
    _index("rejection", "bulletin_id")
    _index("rejection", "originator")
    _table(
        "audit_event",
        sa.Column("seq", BIGINT, nullable=False, autoincrement=True),
        sa.Column("event_id", sa.String(160), nullable=False),
        sa.Column("type", sa.String(40), nullable=False),
        sa.Column("time", BIGINT, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("bulletin_id", sa.String(36), nullable=True),
        sa.Column("reason", sa.String(200), nullable=True),
        sa.Column("data", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("event_id"),
    )
    for column in ("time", "type", "bulletin_id", "actor", "subject"):
        _index("audit_event", column)
    _table(
        "admin_identity",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kid", sa.String(40), nullable=False),
        sa.Column("public", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", BIGINT, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("kid"),
    )
    _table(
        "enrolment_token",
        sa.Column("id", sa.String(24), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("agency", sa.String(32), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", BIGINT, nullable=False),
        sa.Column("expires_at", BIGINT, nullable=False),
        sa.Column("used_at", BIGINT, nullable=True),
        sa.Column("revoked_at", BIGINT, nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    _index("enrolment_token", "agency")
    _table(
        "assertion_jti",
        sa.Column("client", sa.String(32), nullable=False),
        sa.Column("jti", sa.String(128), nullable=False),
        sa.Column("expires_at", BIGINT, nullable=False),
        sa.PrimaryKeyConstraint("client", "jti"),
    )
    _index("assertion_jti", "expires_at")
    _table(
        "merkle_node",
        sa.Column("level", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("idx", BIGINT, nullable=False, autoincrement=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("level", "idx"),
        sqlite_with_rowid=False,
    )
    _table(
        "tree_head",
        sa.Column("tree_size", BIGINT, nullable=False, autoincrement=False),
        sa.Column("root", sa.LargeBinary(), nullable=False),
        sa.Column("timestamp", BIGINT, nullable=False),
        sa.Column("kid", sa.String(40), nullable=False),
        sa.Column("sig", sa.String(100), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("tree_size"),
    )
    _table(
        "log_entry",
        sa.Column("index", BIGINT, nullable=False, autoincrement=False),
        sa.Column("event_seq", BIGINT, nullable=False),
        sa.Column("leaf", sa.LargeBinary(), nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("index"),
        sa.UniqueConstraint("event_seq"),
        sa.ForeignKeyConstraint(["event_seq"], ["audit_event.seq"]),
    )
    if op.get_bind().dialect.name == "postgresql":
        _postgresql_append_only()
    else:
        _sqlite_append_only()


def _sqlite_append_only() -> None:
    for t in AUDIT_TABLES:
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER IF NOT EXISTS {t}_no_{verb.lower()} BEFORE {verb} ON {t} "
                f"BEGIN SELECT RAISE(ABORT, '{t} is append-only'); END"
            )


def _postgresql_append_only() -> None:
    op.execute(
        "CREATE OR REPLACE FUNCTION istmo_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN RAISE EXCEPTION '% is append-only (% refused)', TG_TABLE_NAME, TG_OP "
        "USING ERRCODE = 'insufficient_privilege'; END $$"
    )
    for t in AUDIT_TABLES:
        for verb, each in (("UPDATE", "ROW"), ("DELETE", "ROW"), ("TRUNCATE", "STATEMENT")):
            name = f"{t}_no_{verb.lower()}"
            op.execute(
                f"CREATE TRIGGER {name} BEFORE {verb} ON {t} "
                f"FOR EACH {each} EXECUTE FUNCTION istmo_append_only()"
            )
            # Fire even with session_replication_role = replica.
            op.execute(f"ALTER TABLE {t} ENABLE ALWAYS TRIGGER {name}")


def downgrade() -> None:
    raise RuntimeError("revision 0001 is not downgraded: the audit log is append-only")
