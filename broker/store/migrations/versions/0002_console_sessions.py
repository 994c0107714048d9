"""Console sessions and one-time sign-in links in the database.

They lived in one API process's memory: a restart signed everyone out, and with two API
replicas (deploy/k8s) a link issued by one was refused by the other. Only SHA-256 digests
of session ids and link codes are stored. Not audit tables: sessions end and links are
spent, so the broker's role may update and delete them (``istmo db upgrade --grant-role``
grants it, as for every registry table).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "console_session",
        sa.Column("sid_hash", sa.String(64), nullable=False),
        sa.Column("who", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("scopes", sa.String(200), nullable=False),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("via", sa.String(16), nullable=False),
        sa.Column("created", BIGINT, nullable=False),
        sa.Column("expires", BIGINT, nullable=False),
        sa.Column("last_seen", BIGINT, nullable=False),
        sa.PrimaryKeyConstraint("sid_hash"),
        if_not_exists=True,
    )
    op.create_index("ix_console_session_who", "console_session", ["who"], if_not_exists=True)
    op.create_index(
        "ix_console_session_expires", "console_session", ["expires"], if_not_exists=True
    )
    op.create_table(
        "console_link",
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("who", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("scopes", sa.String(200), nullable=False),
        sa.Column("expires", BIGINT, nullable=False),
        sa.PrimaryKeyConstraint("code_hash"),
        if_not_exists=True,
    )
    op.create_index("ix_console_link_expires", "console_link", ["expires"], if_not_exists=True)


def downgrade() -> None:
    op.drop_table("console_link")
    op.drop_table("console_session")
