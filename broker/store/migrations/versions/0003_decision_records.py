"""One decision record per bulletin instead of one decision row per candidate (ADR 8).

The relay wrote a ``decision`` row for every candidate of a bulletin (61 on a popular
topic); it now writes one ``decision_record`` row per bulletin: who got it, and every
candidate refused with the policies and reasons, grouped. The ``decision`` table stays:
the bulletins of older data directories are read from it (``Registry.decisions``); no
row is moved or rewritten.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "decision_record",
        sa.Column("bulletin_id", sa.String(36), nullable=False),
        sa.Column("routed", sa.String(), nullable=False),
        sa.Column("groups", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("bulletin_id"),
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_table("decision_record")
