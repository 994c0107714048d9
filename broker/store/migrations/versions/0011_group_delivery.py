"""Group delivery (ADR 21): when a group epoch's shared copies may be used.

``group_epoch.delivery_at`` is set once every member's two delivery consumers read the
epoch's group subjects; until then the relay delivers that epoch's bulletins one copy per
recipient, as before. Nullable, no default: every existing epoch starts without it, and
the relays' sweep brings it in.

Revision ID: 0010
Revises: 0008
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # Only where missing: a SQLite file made from the models (``create_all``) has it.
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("group_epoch")}
    if "delivery_at" not in columns:
        op.add_column("group_epoch", sa.Column("delivery_at", BIGINT, nullable=True))


def downgrade() -> None:
    op.drop_column("group_epoch", "delivery_at")
