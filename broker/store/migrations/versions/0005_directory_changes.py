"""A journal of which agencies' directory records changed, in commit order (ADR 14).

Clients keep the signed records of the agencies they seal for and, when the directory
changes, ask which to fetch again. The directory version was a digest that said neither
what changed nor which of two versions is newer; ``directory_change(serial, agency)`` says
both (``broker.store.journal``). It starts empty: the directory as it stands is serial 0,
and every change from now on is journaled by the transaction that makes it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "directory_change",
        sa.Column("serial", BIGINT, nullable=False, autoincrement=True),
        sa.Column("agency", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("serial"),
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_table("directory_change")
