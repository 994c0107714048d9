"""Alembic's environment for Istmo: run the scripts in ``versions/`` on the connection
``broker.store.db`` hands over (``config.attributes["connection"]``), or, for Alembic's own
command line, on ``ISTMO_DATABASE_URL``. Offline (SQL script) mode is not supported: the
triggers differ by dialect and are written against a live connection.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy.engine import Connection

from broker.store.db import make_engine

config = context.config


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=None, render_as_batch=False)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = os.environ.get("ISTMO_DATABASE_URL")
    if not url:
        raise SystemExit("set ISTMO_DATABASE_URL, or run `istmo db upgrade`")
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("Istmo's migrations run online only: use `istmo db upgrade`")
run_migrations_online()
