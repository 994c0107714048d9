"""Opening the broker's database: one URL, SQLite or PostgreSQL, and its schema revision.

The schema is versioned with Alembic (``broker/migrations``); the revision a database is at
is the row of its ``alembic_version`` table. The broker runs only on a database at exactly
``HEAD_REVISION``:

- SQLite (the embedded default, one file in the data directory) is upgraded on open, so
  ``istmo up`` on a fresh directory just works. A database made before Alembic (it has a
  ``meta.schema_version`` of 2 and no ``alembic_version``) is adopted: revision 0001 is
  today's schema, created only where missing.
- PostgreSQL is never changed on open: the broker's role may insert and select only, and an
  operator upgrades on purpose with ``istmo db upgrade`` (``broker.cli.db``).

Either way, a database at an older revision, at none, or at one this Istmo does not know
(made by a newer Istmo) is refused with a message that says what to run.

SQLAlchemy's errors stop here and in ``broker.store.registry``: what they raise is
``AuditStoreError`` (the database refused or is away) or ``ConfigError`` (it is the wrong
database), from the original. ``store_errors`` does the same for the other modules that
run their own SQL on an engine made here.

Left to others: the tables themselves (``broker.store.registry``, ``broker.audit.log``), the
command line (``broker.cli.db``).
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from schemas.errors import AuditStoreError, ConfigError

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "HEAD_REVISION",
    "MIGRATIONS_DIR",
    "alembic_config",
    "current_revision",
    "display_url",
    "engine_url",
    "is_sqlite",
    "make_engine",
    "open_schema",
    "revision_at",
    "sqlite_path",
    "store_error",
    "store_errors",
    "upgrade",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
HEAD_REVISION = "0013"  # the newest file in migrations/versions (a test checks they agree)
_LEGACY_SCHEMA_VERSION = "2"  # meta.schema_version of databases made before Alembic
_PG_MIGRATE_LOCK = 0x49_53_54_55  # pg_advisory_lock key held while upgrading ("ISTU")
_PG_CONNECT_TIMEOUT_S = 5
_PG_KEEPALIVE = {
    "keepalives": 1,
    "keepalives_idle": 10,  # seconds of silence before the first probe
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,  # ms a write may stay unacknowledged
}


def engine_url(url: str) -> URL:
    """``url`` parsed, with PostgreSQL pinned to psycopg 3 (the driver Istmo ships with).

    Raises:
        ConfigError: not a database URL, or a database Istmo does not run on.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError("the database URL is malformed (ISTMO_DATABASE_URL)") from exc
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
            return parsed.set(drivername="postgresql+psycopg")
        raise ConfigError(
            f"database driver {parsed.drivername!r}: use postgresql:// (psycopg 3 is the "
            "driver Istmo ships with)"
        )
    if backend == "sqlite":
        return parsed
    raise ConfigError(f"database {backend!r}: Istmo runs on SQLite or PostgreSQL")


def display_url(url: str) -> str:
    """``url`` with any password masked, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<malformed database URL>"


def is_sqlite(url: str) -> bool:
    return engine_url(url).get_backend_name() == "sqlite"


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for PostgreSQL or an in-memory database)."""
    parsed = engine_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    if parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``. PostgreSQL connections are checked before use
    (``pool_pre_ping``), so a restarted server or a terminated backend costs one failed
    transaction, not a broken pool; connecting gives up after a few seconds, and TCP
    keepalives notice a server gone silent."""
    parsed = engine_url(url)
    if parsed.get_backend_name() == "postgresql":
        kwargs.setdefault("pool_pre_ping", True)
        connect_args = kwargs.setdefault("connect_args", {})
        connect_args.setdefault("connect_timeout", _PG_CONNECT_TIMEOUT_S)
        connect_args.setdefault("application_name", "istmo")
        # A server that vanished without closing the connection (a partition, a dead host)
        # is noticed in about 30 s instead of the kernel's two hours: the transaction fails,
        # nothing is acked, and the work is retried.
        for name, value in _PG_KEEPALIVE.items():
            connect_args.setdefault(name, value)
    return create_engine(parsed, **kwargs)


# ---------------------------------------------------------------------- errors
def store_error(doing: str, exc: Exception) -> AuditStoreError:
    """``exc`` as the store's error: what was being done and the error's class (never its
    text, which may hold the statement's parameters)."""
    return AuditStoreError(f"the store refused {doing}: {type(exc).__name__}")


@contextlib.contextmanager
def store_errors(doing: str) -> Iterator[None]:
    """Run the block; a SQLAlchemy error in it is raised as ``store_error(doing, exc)``."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise store_error(doing, exc) from exc


# ---------------------------------------------------------------------- revisions
# Alembic is imported only where the schema is changed or its scripts are read: a database
# at HEAD_REVISION (every command's case but the first) is checked with one query, and the
# import (about 0.1 s) is not paid by every command, a suspension among them (issue 16).


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, in code (no alembic.ini): the scripts packaged in
    ``broker/migrations``, run on ``connection``."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def _known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(alembic_config())
    return {s.revision for s in scripts.walk_revisions()}


def current_revision(conn: Connection) -> str | None:
    """The revision in ``alembic_version``, None if the table is missing or empty (as
    Alembic reads it: one row, Istmo's migrations having no branches)."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
    return None if row is None else str(row[0])


def revision_at(url: str) -> str | None:
    """The revision of the database at ``url`` (None: no ``alembic_version``), read without
    changing it.

    Raises:
        ConfigError: the URL is unusable.
        AuditStoreError: the database refused or is away.
    """
    engine = make_engine(url)
    try:
        with store_errors(f"a read of {display_url(url)}"), engine.connect() as conn:
            return current_revision(conn)
    finally:
        engine.dispose()


def _legacy_state(conn: Connection) -> str | None:
    """None for an empty database; else the pre-Alembic ``meta.schema_version`` (or '')."""
    names = set(inspect(conn).get_table_names())
    if not names & {"agency", "audit_event", "meta"}:
        return None
    if "meta" not in names:
        return ""
    row = conn.execute(text("SELECT value FROM meta WHERE \"key\" = 'schema_version'")).first()
    return "" if row is None else str(row[0])


def _state(conn: Connection, shown: str) -> tuple[str | None, bool]:
    """(revision, pre-Alembic database) of the database behind ``conn``."""
    rev = current_revision(conn)
    if rev is not None:
        return rev, False
    legacy = _legacy_state(conn)
    if legacy is None:
        return None, False
    if legacy != _LEGACY_SCHEMA_VERSION:
        raise ConfigError(
            f"the database {shown} was made by an older Istmo (schema "
            f"{legacy or 'unknown'}); start with a new --data-dir"
        )
    return None, True


def _check_known(rev: str | None, shown: str) -> None:
    if rev is not None and rev not in _known_revisions():
        raise ConfigError(
            f"the database {shown} is at schema revision {rev}, which this Istmo does not "
            f"know (it needs {HEAD_REVISION}): it was made by a newer Istmo; upgrade Istmo"
        )


@contextlib.contextmanager
def _migrate_lock(engine: Engine, url: str) -> Iterator[Connection]:
    """A connection holding the one-migration-at-a-time lock: a file lock beside a SQLite
    file, a session advisory lock on PostgreSQL."""
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with (path.parent / (path.name + ".migrate.lock")).open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            with engine.connect() as conn:
                yield conn
        return
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATE_LOCK})
            conn.commit()
        try:
            yield conn
        finally:
            if conn.dialect.name == "postgresql":
                conn.rollback()
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATE_LOCK})
                conn.commit()


def upgrade(url: str, revision: str = "head") -> tuple[str | None, str | None]:
    """Upgrade the database at ``url`` to ``revision``; one upgrade at a time per database.

    Returns:
        (revision before, revision after).

    Raises:
        ConfigError: the database is from a newer Istmo, or an older one Istmo cannot adopt.
        AuditStoreError: the database refused.
    """
    from alembic import command

    shown = display_url(url)
    engine = make_engine(url)
    try:
        with _migrate_lock(engine, url) as conn:
            rev, _legacy = _state(conn, shown)
            _check_known(rev, shown)
            command.upgrade(alembic_config(conn), revision)
            conn.commit()
            after = current_revision(conn)
        return rev, after
    except SQLAlchemyError as exc:
        raise AuditStoreError(
            f"cannot upgrade the database {shown}: {type(exc).__name__}: {_first_line(exc)}"
        ) from exc
    finally:
        engine.dispose()


def open_schema(engine: Engine, url: str, *, auto_upgrade: bool) -> None:
    """Make sure the database behind ``engine`` is at ``HEAD_REVISION``.

    Args:
        engine: the caller's engine on ``url``.
        url: the database URL (for messages and the migration lock).
        auto_upgrade: upgrade an empty, pre-Alembic or older database (the embedded SQLite
            default) instead of refusing it.

    Raises:
        ConfigError: the database is at another revision and may not be upgraded here; the
            message names ``istmo db upgrade`` or says Istmo itself is too old.
        AuditStoreError: the database refused.
    """
    shown = display_url(url)
    try:
        with engine.connect() as conn:
            rev, legacy = _state(conn, shown)
    except SQLAlchemyError as exc:
        raise AuditStoreError(
            f"cannot open the database {shown}: {type(exc).__name__}: {_first_line(exc)}"
        ) from exc
    if rev == HEAD_REVISION:
        return
    _check_known(rev, shown)
    if auto_upgrade:
        upgrade(url)
        return
    what = "made before schema migrations" if legacy else f"at schema revision {rev or 'none'}"
    raise ConfigError(
        f"the database {shown} is {what}; this Istmo needs revision {HEAD_REVISION}: "
        f"run `istmo db upgrade` (with ISTMO_DATABASE_URL set) first"
    )


def _first_line(exc: BaseException) -> str:
    """The driver's first line (the server's reason, never parameters), bounded."""
    orig = getattr(exc, "orig", None) or exc
    return str(orig).strip().splitlines()[0][:200] if str(orig).strip() else ""
