"""Withdrawn and corrected bulletins (ADR 15).

``withdrawal`` holds one row per bulletin its originator recalled: the signed withdrawal
(forwarded to recipients, so any relay can finish the work), when it was recorded, and,
once the copies are removed and the recipients told, when that was done and whom it
reached. Not an audit table: ``completed_at`` and the lists are filled in afterwards (the
audit log has ``bulletin.withdrawn`` and ``delivery.withdrawn``).

``bulletin.supersedes`` names the bulletin a correction corrects (NULL for every other,
and for every bulletin accepted before), indexed so a status finds the corrections of a
bulletin.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "withdrawal",
        sa.Column("bulletin_id", sa.String(36), nullable=False),
        sa.Column("originator", sa.String(32), nullable=False),
        sa.Column("notice", sa.String(4096), nullable=False),
        sa.Column("withdrawn_at", BIGINT, nullable=False),
        sa.Column("completed_at", BIGINT, nullable=True),
        sa.Column("removed", sa.String(), nullable=False),
        sa.Column("notified", sa.String(), nullable=False),
        sa.Column("copies_kept", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("bulletin_id"),
        if_not_exists=True,
    )
    op.create_index(
        "ix_withdrawal_completed_at", "withdrawal", ["completed_at"], if_not_exists=True
    )
    # Only where missing: a SQLite file made before migrations was made from the models
    # of the Istmo that adopts it (``create_all``), which have the column already.
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("bulletin")}
    if "supersedes" not in columns:
        op.add_column("bulletin", sa.Column("supersedes", sa.String(36), nullable=True))
    op.create_index("ix_bulletin_supersedes", "bulletin", ["supersedes"], if_not_exists=True)


def downgrade() -> None:
    op.drop_index("ix_bulletin_supersedes", table_name="bulletin")
    op.drop_column("bulletin", "supersedes")
    op.drop_table("withdrawal")
