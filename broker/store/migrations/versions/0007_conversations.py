"""Replies, threads and requests for information (ADR 16).

``bulletin`` gains the links of a reply, as the relay accepted them from its signed header:
``in_reply_to`` (indexed: an RFI's answers are the replies to it), ``thread`` (the id of
the thread's first bulletin) and ``reply_all`` (its originator lets replies reach every
recipient). NULL for every other bulletin and for every bulletin accepted before.

``rfi`` holds one row per request for information: who asked, its topic and precedence,
when it was created and when answers are due, and, filled in later, when its asker closed
it and when the broker raised its overdue alarm. ``rfi_addressee`` names whom it was
routed to, indexed by agency so an addressee finds what was asked of it. Metadata only:
the question itself is in the sealed bulletin, never here.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # Only where missing: a SQLite file made before migrations was made from the models
    # of the Istmo that adopts it (``create_all``), which have the columns already.
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("bulletin")}
    if "in_reply_to" not in columns:
        op.add_column("bulletin", sa.Column("in_reply_to", sa.String(36), nullable=True))
    if "thread" not in columns:
        op.add_column("bulletin", sa.Column("thread", sa.String(36), nullable=True))
    if "reply_all" not in columns:
        op.add_column("bulletin", sa.Column("reply_all", sa.Boolean(), nullable=True))
    op.create_index("ix_bulletin_in_reply_to", "bulletin", ["in_reply_to"], if_not_exists=True)
    op.create_table(
        "rfi",
        sa.Column("bulletin_id", sa.String(36), nullable=False),
        sa.Column("asker", sa.String(32), nullable=False),
        sa.Column("topic", sa.String(64), nullable=False),
        sa.Column("precedence", sa.String(16), nullable=False),
        sa.Column("created_at", BIGINT, nullable=False),
        sa.Column("due_at", BIGINT, nullable=False),
        sa.Column("closed_at", BIGINT, nullable=True),
        sa.Column("overdue_at", BIGINT, nullable=True),
        sa.PrimaryKeyConstraint("bulletin_id"),
        if_not_exists=True,
    )
    op.create_index("ix_rfi_asker", "rfi", ["asker"], if_not_exists=True)
    op.create_index("ix_rfi_due_at", "rfi", ["due_at"], if_not_exists=True)
    op.create_table(
        "rfi_addressee",
        sa.Column("rfi_id", sa.String(36), nullable=False),
        sa.Column("agency", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("rfi_id", "agency"),
        if_not_exists=True,
    )
    op.create_index("ix_rfi_addressee_agency", "rfi_addressee", ["agency"], if_not_exists=True)


def downgrade() -> None:
    op.drop_table("rfi_addressee")
    op.drop_table("rfi")
    op.drop_index("ix_bulletin_in_reply_to", table_name="bulletin")
    op.drop_column("bulletin", "reply_all")
    op.drop_column("bulletin", "thread")
    op.drop_column("bulletin", "in_reply_to")
