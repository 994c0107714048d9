"""Community groups and their epoch keys (ADR 18).

``community_group`` holds the groups administrators define (manager, jurisdiction, topic,
least clearance); ``group_epoch`` each epoch a manager posted (signed statement, members,
the roster digest it was made for, when it became current); ``group_wrap`` each member's
wrap of an epoch key, HPKE ciphertext the broker cannot open. Not audit tables: an epoch
becomes current later than it is posted (the audit log has ``group.rotated``).

Revision ID: 0009
Revises: 0006
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "community_group",
        sa.Column("name", sa.String(48), nullable=False),
        sa.Column("manager", sa.String(32), nullable=False),
        sa.Column("jurisdiction", sa.String(16), nullable=True),
        sa.Column("topic", sa.String(64), nullable=True),
        sa.Column("min_clearance", sa.Integer(), nullable=False),
        sa.Column("defined_at", BIGINT, nullable=False),
        sa.PrimaryKeyConstraint("name"),
        if_not_exists=True,
    )
    op.create_table(
        "group_epoch",
        sa.Column("group", sa.String(48), nullable=False),
        sa.Column("epoch", BIGINT, nullable=False),
        sa.Column("manager", sa.String(32), nullable=False),
        sa.Column("kid", sa.String(35), nullable=False),
        sa.Column("statement", sa.String(), nullable=False),
        sa.Column("members", sa.String(), nullable=False),
        sa.Column("roster", sa.String(64), nullable=False),
        sa.Column("posted_at", BIGINT, nullable=False),
        sa.Column("current_at", BIGINT, nullable=True),
        sa.PrimaryKeyConstraint("group", "epoch"),
        if_not_exists=True,
    )
    op.create_table(
        "group_wrap",
        sa.Column("group", sa.String(48), nullable=False),
        sa.Column("epoch", BIGINT, nullable=False),
        sa.Column("agency", sa.String(32), nullable=False),
        sa.Column("kid", sa.String(36), nullable=False),
        sa.Column("kem", sa.String(16), nullable=False),
        sa.Column("enc", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("group", "epoch", "agency"),
        if_not_exists=True,
    )
    op.create_index("ix_group_wrap_agency", "group_wrap", ["agency"], if_not_exists=True)


def downgrade() -> None:
    op.drop_index("ix_group_wrap_agency", table_name="group_wrap")
    op.drop_table("group_wrap")
    op.drop_table("group_epoch")
    op.drop_table("community_group")
