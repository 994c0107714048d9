"""Sets of agencies that decision records and ``bulletin.decided`` events name by
digest (ADR 36).

``agency_set`` holds one row per set: its digest (SHA-256 of the sorted ids as a JSON
array), the ids as that JSON array, and how many. Written once, by the relay, in the
transaction of the first decision record that refers to it; never updated. The audit log
holds the same sets as ``agencies.listed`` events.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agency_set",
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("agencies", sa.String(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("digest"),
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_table("agency_set")
