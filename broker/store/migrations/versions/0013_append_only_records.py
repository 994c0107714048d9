"""The relay's decision records are append-only at the database level, as the audit
tables are (0001): ``agency_set`` (ADR 36), ``decision_record`` and the per-candidate
``decision`` rows of older relays. The relay writes each once, in the transaction of its
decision, and never changes or removes one; now nothing else may either. SQLite triggers
abort UPDATE and DELETE; PostgreSQL triggers (0001's ``istmo_append_only``) refuse
UPDATE, DELETE and TRUNCATE for every role and stay on in replication mode. The broker's
own role is granted INSERT and SELECT on them only (``broker.store.roles``).

An edit made anyway (the triggers dropped by the tables' owner) is still caught where the
records are read: a set that does not match its digest, or a record that does not parse,
is a store error, never an answer (tests/integration/test_agency_sets_stored.py).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

RECORD_TABLES = ("agency_set", "decision", "decision_record")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for t in RECORD_TABLES:
            for verb, each in (("UPDATE", "ROW"), ("DELETE", "ROW"), ("TRUNCATE", "STATEMENT")):
                name = f"{t}_no_{verb.lower()}"
                op.execute(f"DROP TRIGGER IF EXISTS {name} ON {t}")
                op.execute(
                    f"CREATE TRIGGER {name} BEFORE {verb} ON {t} "
                    f"FOR EACH {each} EXECUTE FUNCTION istmo_append_only()"
                )
                op.execute(f"ALTER TABLE {t} ENABLE ALWAYS TRIGGER {name}")
        return
    for t in RECORD_TABLES:
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER IF NOT EXISTS {t}_no_{verb.lower()} BEFORE {verb} ON {t} "
                f"BEGIN SELECT RAISE(ABORT, '{t} is append-only'); END"
            )


def downgrade() -> None:
    raise RuntimeError("revision 0013 is not downgraded: decision records are append-only")
