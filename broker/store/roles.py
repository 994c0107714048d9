"""The broker's own PostgreSQL role, confined to what the broker needs (S-18): it may log in,
read and write the registry's tables, and only INSERT and SELECT the audit tables and the
relay's decision records, so even with the append-only triggers dropped it could not
rewrite the log or a decision. The same statements are
in ``deploy/postgres/broker-role.sql`` for operators who grant by hand.

Left to others: the command that asks for it (``istmo db upgrade --grant-role``,
``broker.cli.db``).
"""

from __future__ import annotations

import re

from sqlalchemy import text

from broker.store import db
from broker.store.tables import AUDIT_TABLES, RECORD_TABLES, REGISTRY_TABLES, SEQUENCES
from schemas.errors import ConfigError

__all__ = ["grant_role", "grant_statements"]

_ROLE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def grant_statements(role: str, database: str) -> list[str]:
    """The SQL that confines ``role`` to what the broker needs in ``database``.

    Raises:
        ValueError: ``role`` is not a plain lower-case identifier.
    """
    if _ROLE.fullmatch(role) is None:
        raise ValueError(f"role {role[:70]!r}: use a-z, 0-9 and _, starting with a letter or _")
    if _ROLE.fullmatch(database) is None:
        raise ValueError(f"database {database[:70]!r}: not a plain identifier")
    registry, audit = ", ".join(REGISTRY_TABLES), ", ".join((*RECORD_TABLES, *AUDIT_TABLES))
    return [
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN "
        f"CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS; "
        "END IF; END $$",
        f"GRANT CONNECT ON DATABASE {database} TO {role}",
        f"GRANT USAGE ON SCHEMA public TO {role}",
        f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {registry} TO {role}",
        f"GRANT SELECT, INSERT ON {audit} TO {role}",
        f"GRANT SELECT ON alembic_version TO {role}",
        f"GRANT USAGE ON SEQUENCE {', '.join(SEQUENCES)} TO {role}",
    ]


def grant_role(url: str, role: str) -> None:
    """Make ``role`` (if missing) and confine it to ``grant_statements`` in the database at
    ``url``, as the role that owns the tables.

    Raises:
        ConfigError: ``role`` is not a plain identifier, is a superuser (or bypasses row
            security), or owns a table: no grant could confine it.
        AuditStoreError: the database refused.
    """
    engine = db.make_engine(url)
    try:
        with db.store_errors(f"a grant to role {role}"), engine.begin() as conn:
            database = str(conn.execute(text("SELECT current_database()")).scalar())
            try:
                statements = grant_statements(role, database)
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc
            found = conn.execute(
                text("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = :r"),
                {"r": role},
            ).first()
            if found is not None and (found[0] or found[1]):
                raise ConfigError(
                    f"role {role} is a superuser (or bypasses row security): no grant can "
                    "confine it; give the broker a role of its own"
                )
            owners = conn.execute(
                text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                    "AND tableowner = :r"
                ),
                {"r": role},
            ).all()
            if owners:
                raise ConfigError(
                    f"role {role} owns {owners[0][0]}: an owner can drop the append-only "
                    "triggers; run `istmo db upgrade` as another role, and grant to this one"
                )
            for sql in statements:
                conn.exec_driver_sql(sql)
    finally:
        engine.dispose()
