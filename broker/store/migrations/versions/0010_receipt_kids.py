"""The key id of each receipt, so the originator can verify it (issue 19).

A receipt row kept its signature, not the signing key it names, so the broker could not
give the originator a receipt whole to verify. ``receipt.kid`` holds it from now on; rows
recorded before keep NULL, and the broker finds their key when asked by trying the
recipient's signing keys (``broker.relay.receipts.attributed``): never written back, so
the row stays what the relay recorded.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Only where missing: a SQLite file made before migrations was made from the models
    # of the Istmo that adopts it (``create_all``), which have the column already.
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("receipt")}
    if "kid" not in columns:
        op.add_column("receipt", sa.Column("kid", sa.String(40), nullable=True))


def downgrade() -> None:
    op.drop_column("receipt", "kid")
