"""Storage tests on both engines: the ``storage`` fixture, SQLite and PostgreSQL.

``storage`` is parametrised: ``[sqlite]`` uses the data directory's file, as ``istmo up``
does; ``[postgresql]`` (marked ``postgres``) gets a database of its own on the machine's
server, ``istmo_t_<random>`` at 127.0.0.1:5432 (user postgres), at the head revision and
dropped after the test. Where that server is not reachable, the PostgreSQL half skips and
says so in the summary (``-ra``).

Migrating a database takes about a second; copying one takes a tenth of that. So each test
session (each pytest-xdist worker) migrates one template, ``istmo_tpl_<worker>_<random>``,
with ``broker.store.db.upgrade`` the first time a migrated database is asked for, and every
migrated database is a ``CREATE DATABASE ... TEMPLATE`` copy of it. No one connects to the
template (connections to it are refused), and ``drop_template`` drops it when the session
ends (``tests/conftest.py``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, create_engine

from broker.config import Settings
from broker.store.db import upgrade

__all__ = [
    "PG_ADMIN_URL",
    "PG_UNREACHABLE",
    "Storage",
    "drop_template",
    "pg_database",
    "postgres_reachable",
    "require_postgres",
    "storage",
    "storage_module",
]

PG_HOST, PG_PORT = "127.0.0.1", 5432
PG_ADMIN_URL = f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}"
PG_UNREACHABLE = f"PostgreSQL at {PG_HOST}:{PG_PORT} not reachable: PostgreSQL tests did not run"
_ADMIN_DSN = f"host={PG_HOST} port={PG_PORT} user=postgres dbname=postgres connect_timeout=3"


@functools.cache
def postgres_reachable() -> bool:
    try:
        with psycopg.connect(_ADMIN_DSN) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def require_postgres() -> None:
    """Skip the calling test, saying why, when the server is not there."""
    if not postgres_reachable():
        pytest.skip(PG_UNREACHABLE)


def _admin(sql: str) -> None:
    with psycopg.connect(_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]  # test-made identifiers only


_template: str | None = None  # this session's migrated template, once made


def _migrated_template() -> str:
    """The name of this session's template database at the head revision (made on the
    first call)."""
    global _template
    if _template is None:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        name = f"istmo_tpl_{worker}_{secrets.token_hex(4)}"
        _admin(f"CREATE DATABASE {name}")
        try:
            upgrade(f"{PG_ADMIN_URL}/{name}")
            # A connection to a template makes every CREATE DATABASE from it fail.
            _admin(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false")
        except BaseException:
            _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            raise
        _template = name
    return _template


def drop_template() -> None:
    """Drop this session's template database, if one was made (at the session's end)."""
    global _template
    if _template is not None:
        _admin(f"DROP DATABASE IF EXISTS {_template} WITH (FORCE)")
        _template = None


@contextlib.contextmanager
def pg_database(*, migrated: bool = True) -> Iterator[str]:
    """A fresh database ``istmo_t_<hex>`` (at the head revision unless told otherwise: a
    copy of the session's template); its URL, then it is dropped with whatever is still
    connected to it."""
    require_postgres()
    name = f"istmo_t_{secrets.token_hex(6)}"
    template = f" TEMPLATE {_migrated_template()}" if migrated else ""
    _admin(f"CREATE DATABASE {name}{template}")
    try:
        yield f"{PG_ADMIN_URL}/{name}"
    finally:
        _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@dataclass(frozen=True)
class Storage:
    """One engine under test.

    Attributes:
        name: ``sqlite`` or ``postgresql``.
        pg_url: the test's own PostgreSQL database (None for SQLite: the data dir's file).
    """

    name: str
    pg_url: str | None = None

    @property
    def postgresql(self) -> bool:
        return self.pg_url is not None

    def settings(self, data_dir: Path, **kwargs: Any) -> Settings:
        return Settings(data_dir=data_dir, database_url=self.pg_url, **kwargs)

    def url(self, data_dir: Path) -> str:
        """The database URL the broker uses for ``data_dir``."""
        return self.settings(data_dir).db_url

    def env(self) -> dict[str, str]:
        """Environment for an ``istmo`` subprocess on this engine."""
        return {"ISTMO_DATABASE_URL": self.pg_url} if self.pg_url else {}

    def admin_engine(self, data_dir: Path) -> Engine:
        """A plain engine as the database's owner (PostgreSQL: the superuser), for tests
        that poke at the tables behind the broker's back."""
        return create_engine(self.url(data_dir).replace("postgresql://", "postgresql+psycopg://"))


ENGINES = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


def _storage(request: pytest.FixtureRequest) -> Iterator[Storage]:
    if request.param == "sqlite":
        yield Storage("sqlite")
        return
    with pg_database() as url:
        yield Storage("postgresql", url)


@pytest.fixture(params=ENGINES)
def storage(request: pytest.FixtureRequest) -> Iterator[Storage]:
    """Each engine in turn; the PostgreSQL one with a fresh, migrated database."""
    yield from _storage(request)


@pytest.fixture(scope="module", params=ENGINES)
def storage_module(request: pytest.FixtureRequest) -> Iterator[Storage]:
    """``storage`` for a module's shared stack: one database per engine per module."""
    yield from _storage(request)
