"""How many bulletins the policy withheld from each agency, one row per agency.

A recipient with an empty queue could not tell "nothing was sent to me" from "the policy
refused me what was sent" (issue 21). The relay now counts, per refused agency, the
bulletins withheld from it and when the first and the latest were decided, in the
transaction that records the decisions (``broker.store.withheld``). Reading an agency's
count off the decision records would mean reading all of them: a record lists its refused
candidates inside its JSON (ADR 8).

The counters start from what the database already holds: every refusal in a decision
record (its groups whose outcome is not ``routed`` or ``unaddressed``) and every refused
row of the older ``decision`` table, dated by the bulletin's ``accepted_at``. This is one
statement on each engine (SQLite's ``json_each``, PostgreSQL's ``jsonb_array_elements``),
so the upgrade reads each record once, in the database.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# (agency, accepted_at) of every refusal the database holds, for each dialect: in the
# decision records, then in the per-candidate rows an Istmo before ADR 8 wrote.
_REFUSALS = {
    "sqlite": """
        SELECT a.value AS agency, b.accepted_at AS at
        FROM decision_record d
        JOIN bulletin b ON b.id = d.bulletin_id,
             json_each(d.groups) g,
             json_each(g.value, '$.agencies') a
        WHERE json_extract(g.value, '$.outcome') NOT IN ('routed', 'unaddressed')
    """,
    "postgresql": """
        SELECT a.value AS agency, b.accepted_at AS at
        FROM decision_record d
        JOIN bulletin b ON b.id = d.bulletin_id
        CROSS JOIN LATERAL jsonb_array_elements(d.groups::jsonb) g
        CROSS JOIN LATERAL jsonb_array_elements_text(g -> 'agencies') a
        WHERE g ->> 'outcome' NOT IN ('routed', 'unaddressed')
    """,
}
_OLD_REFUSALS = """
    SELECT d.agency AS agency, b.accepted_at AS at
    FROM decision d JOIN bulletin b ON b.id = d.bulletin_id
    WHERE NOT d.allowed
"""


def upgrade() -> None:
    op.create_table(
        "withheld_count",
        sa.Column("agency", sa.String(32), nullable=False),
        sa.Column("bulletins", BIGINT, nullable=False),
        sa.Column("first_at", BIGINT, nullable=False),
        sa.Column("latest_at", BIGINT, nullable=False),
        sa.PrimaryKeyConstraint("agency"),
        if_not_exists=True,
    )
    refusals = _REFUSALS[op.get_bind().dialect.name]
    op.execute(
        "INSERT INTO withheld_count (agency, bulletins, first_at, latest_at) "  # noqa: S608  # fixed SQL
        "SELECT agency, count(*), min(at), max(at) "
        f"FROM ({refusals} UNION ALL {_OLD_REFUSALS}) refusals "
        "GROUP BY agency "
        "ON CONFLICT (agency) DO NOTHING"
    )


def downgrade() -> None:
    op.drop_table("withheld_count")
