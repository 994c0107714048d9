"""Requests to forward a bulletin, and which bulletin a forward passes on (ADR 20).

``forward_request`` holds one row per (bulletin, forwarder, new recipient): the
forwarder's reason, when it asked, and the originator's answer (its signed grant, or its
refusal). Not an audit table: the answer is filled in afterwards (the audit log has
``forward.requested``, ``forward.granted`` and ``forward.refused``).

``bulletin.forward_of`` names the bulletin a forward passes on (NULL for every other, and
for every bulletin accepted before), so a forward of a forward can be refused.

Revision ID: 0010
Revises: 0006
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "forward_request",
        sa.Column("id", sa.String(20), nullable=False),
        sa.Column("bulletin_id", sa.String(36), nullable=False),
        sa.Column("originator", sa.String(32), nullable=False),
        sa.Column("forwarder", sa.String(32), nullable=False),
        sa.Column("recipient", sa.String(32), nullable=False),
        sa.Column("reason", sa.String(280), nullable=True),
        sa.Column("requested_at", BIGINT, nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("decided_at", BIGINT, nullable=True),
        sa.Column("signed_grant", sa.String(4096), nullable=True),
        sa.Column("refusal", sa.String(280), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        if_not_exists=True,
    )
    op.create_index(
        "ix_forward_request_originator", "forward_request", ["originator"], if_not_exists=True
    )
    # Only where missing: a SQLite file made before migrations was made from the models
    # of the Istmo that adopts it (``create_all``), which have the column already.
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("bulletin")}
    if "forward_of" not in columns:
        op.add_column("bulletin", sa.Column("forward_of", sa.String(36), nullable=True))


def downgrade() -> None:
    op.drop_column("bulletin", "forward_of")
    op.drop_index("ix_forward_request_originator", table_name="forward_request")
    op.drop_table("forward_request")
