"""Schema migrations on both engines, and PostgreSQL's own guarantees.

- The migrated schema is exactly what the models describe (Alembic finds nothing to do),
  on SQLite and PostgreSQL; the newest migration is the revision the broker runs on.
- The broker refuses an un-migrated PostgreSQL database and a database from a newer Istmo,
  naming what to do; SQLite is upgraded on open, and a pre-migration SQLite file adopted.
- S-18: the audit tables refuse UPDATE, DELETE and TRUNCATE even to the superuser
  (triggers), and the broker's role made by ``istmo db upgrade --grant-role`` may only
  INSERT and SELECT them, triggers or not, while the whole broker store works under it.
- Audit appends are serialised: writers and two integrators running at once leave a log
  with no gap, no duplicate and every outbox row in ``seq`` order.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import BigInteger, Integer, create_engine, event, inspect, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import SQLModel

import broker.api.oauth
import broker.audit.log
import broker.directory.admins
import broker.directory.enrolment
from broker.audit.log import AuditLog
from broker.audit.sequencer import DEFAULT_ORIGIN
from broker.directory.admins import add_admin
from broker.store import db
from broker.store.registry import SCHEMA_VERSION, BulletinRow, Registry
from broker.store.roles import grant_statements
from broker.store.tables import AUDIT_TABLES, RECORD_TABLES, REGISTRY_TABLES
from schemas.audit import AuditEvent
from schemas.errors import AuditStoreError, ConfigError, IstmoError
from schemas.keys import SigningKey
from tests.storage_engines import PG_ADMIN_URL, Storage, pg_database
from tests.warm import run_istmo

_MODELS = (
    broker.directory.admins,
    broker.audit.log,
    broker.directory.enrolment,
    broker.api.oauth,
)  # their tables

KEY = SigningKey(bytes(range(32)))
ISTMO = str(Path(sys.executable).parent / "istmo")
ROOT = Path(__file__).resolve().parents[2]
KEY_COLUMN = {
    "audit_event": "seq",
    "log_entry": "event_seq",
    "merkle_node": "idx",
    "tree_head": "tree_size",
}


def events(n: int, tag: str) -> list[AuditEvent]:
    return [
        AuditEvent(
            event_id=f"{tag}-{i}",
            type="bulletin.accepted",
            time=1_767_225_600_000 + i,  # epoch ms: beyond 32 bits
            actor="gt-police",
            subject="gt-police",
            bulletin_id=None,
            data={"n": i},
        )
        for i in range(n)
    ]


def istmo(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_istmo([ISTMO, *args], timeout=120, env={**os.environ, **env})


# ---------------------------------------------------------------------- revisions
def test_the_newest_migration_is_the_revision_the_broker_runs_on() -> None:
    scripts = ScriptDirectory.from_config(db.alembic_config())
    assert scripts.get_heads() == [db.HEAD_REVISION] == [SCHEMA_VERSION]


def _same_integer(_ctx, _insp_col, _meta_col, inspected, metadata) -> bool | None:  # type: ignore[no-untyped-def]
    # Integer vs BigInteger is a width the models leave to the migration (BIGINT on
    # PostgreSQL for what outgrows 32 bits); every other type must match.
    if isinstance(inspected, Integer) and isinstance(metadata, Integer | BigInteger):
        return False
    return None


def test_the_migrated_schema_is_the_models(storage: Storage, tmp_path: Path) -> None:
    Registry(storage.url(tmp_path)).close()  # SQLite: upgraded on open
    engine = storage.admin_engine(tmp_path)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": _same_integer})
            diffs = compare_metadata(ctx, SQLModel.metadata)
            tables = set(conn.dialect.get_table_names(conn))
    finally:
        engine.dispose()
    assert diffs == []
    assert tables == {*REGISTRY_TABLES, *RECORD_TABLES, *AUDIT_TABLES, "alembic_version"}


@pytest.mark.postgres
def test_postgresql_is_upgraded_on_purpose_and_says_how() -> None:
    with pg_database(migrated=False) as url:
        for opener in (Registry, AuditLog):
            with pytest.raises(ConfigError, match=r"revision none.*run `istmo db upgrade`"):
                opener(url)
        env = {"ISTMO_DATABASE_URL": url}
        assert istmo("db", "current", env=env).returncode == 1
        up = istmo("db", "upgrade", env=env)
        assert up.returncode == 0, up.stderr
        assert f"upgraded from revision none to {db.HEAD_REVISION}" in up.stdout
        again = istmo("db", "upgrade", env=env)
        assert f"already at revision {db.HEAD_REVISION}" in again.stdout
        current = istmo("db", "current", env=env)
        assert current.returncode == 0
        assert f"revision {db.HEAD_REVISION}" in current.stdout
        Registry(url).close()


@pytest.mark.parametrize(
    "engine", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_two_upgrades_at_once_take_turns(engine: str, tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        if engine == "sqlite":
            url = f"sqlite:///{tmp_path / 'istmo.db'}"
        else:
            url = stack.enter_context(pg_database(migrated=False))
        results: list[tuple[str | None, str | None]] = []
        threads = [threading.Thread(target=lambda: results.append(db.upgrade(url))) for _ in "ab"]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        head = db.HEAD_REVISION
        assert set(results) == {(None, head), (head, head)}  # one made it, one found it
        Registry(url, auto_upgrade=False).close()


def test_a_region_at_0001_upgrades_to_console_sessions_in_place(
    storage: Storage, tmp_path: Path
) -> None:
    """A database the previous release made (revision 0001, no console tables) is
    upgraded with its rows kept: on SQLite when the registry opens it, on PostgreSQL by
    `istmo db upgrade`."""
    url = storage.url(tmp_path)
    if storage.pg_url:
        with pg_database(migrated=False) as fresh:
            assert db.upgrade(fresh, "0001") == (None, "0001")
            _upgrade_keeps_rows(fresh)
    else:
        tmp_path.mkdir(exist_ok=True)
        assert db.upgrade(url, "0001") == (None, "0001")
        _upgrade_keeps_rows(url)


def _upgrade_keeps_rows(url: str) -> None:
    engine = db.make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO agency (id, name, sector, status, clearance, communities) "
                    "VALUES ('gt-police', 'Guatemala: Police', 'police', 'active', 2, '')"
                )
            )
            assert "console_session" not in conn.dialect.get_table_names(conn)
    finally:
        engine.dispose()
    assert db.upgrade(url) == ("0001", db.HEAD_REVISION)
    reg = Registry(url, auto_upgrade=False)
    try:
        agency = reg.agency("gt-police")
        assert agency is not None
        assert agency.name == "Guatemala: Police"
        with reg.session() as s:
            tables = set(s.connection().dialect.get_table_names(s.connection()))
        assert {"console_session", "console_link"} <= tables
    finally:
        reg.close()


def test_a_database_from_a_newer_istmo_is_refused(storage: Storage, tmp_path: Path) -> None:
    url = storage.url(tmp_path)
    Registry(url).close()
    engine = storage.admin_engine(tmp_path)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0999'"))
    engine.dispose()
    for opener in (Registry, AuditLog):
        with pytest.raises(ConfigError, match=r"revision 0999.*newer Istmo"):
            opener(url)
    with pytest.raises(ConfigError, match="newer Istmo"):
        db.upgrade(url)


def test_a_sqlite_file_from_before_migrations_is_adopted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'istmo.db'}"
    engine = create_engine(url)
    SQLModel.metadata.create_all(engine)  # what the broker did before migrations
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO meta VALUES ('schema_version', '2')"))
        conn.execute(
            text("INSERT INTO agency VALUES ('gt-police','G','police','active',1,'GT','',NULL)")
        )
    engine.dispose()
    registry = Registry(url)
    assert registry.agency("gt-police") is not None  # kept
    registry.record([], events(3, "a"))  # and the append-only triggers are there now
    with pytest.raises(DBAPIError, match="append-only"), registry.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM audit_event")
    registry.close()
    older = tmp_path / "older.db"
    engine = create_engine(f"sqlite:///{older}")
    SQLModel.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO meta VALUES ('schema_version', '1')"))
    engine.dispose()
    with pytest.raises(ConfigError, match="older Istmo"):
        Registry(f"sqlite:///{older}")


def test_what_the_database_refuses_comes_out_as_the_stores_error(
    storage: Storage, tmp_path: Path
) -> None:
    """No SQLAlchemy error leaves the store: sessions, connections and the revision read
    raise AuditStoreError from the driver's error, naming its class, never its SQL."""
    url = storage.url(tmp_path)
    registry = Registry(url)
    try:
        registry.record([], events(1, "refused"))
        with (
            pytest.raises(AuditStoreError, match=r"refused a read or write: \w+Error$") as err,
            registry.session() as s,
        ):
            s.connection().execute(text("UPDATE audit_event SET data = '{}'"))  # append-only
        assert isinstance(err.value.__cause__, DBAPIError)
        assert "UPDATE" not in str(err.value)
        engine = storage.admin_engine(tmp_path)
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE subscription"))
        engine.dispose()
        with pytest.raises(AuditStoreError, match="refused a read or write") as err:
            registry.subscriptions()
        assert isinstance(err.value.__cause__, DBAPIError)
        with pytest.raises(AuditStoreError, match="refused a query"), registry.connect() as c:
            c.execute(text("SELECT * FROM subscription"))
        with pytest.raises(AuditStoreError, match="refused a transaction"), registry.begin() as c:
            c.execute(text("DELETE FROM subscription"))
        assert registry.agencies() == []  # the rest of the store still answers
    finally:
        registry.close()
    assert db.revision_at(url) == SCHEMA_VERSION
    with pytest.raises(AuditStoreError, match=r"refused a read of postgresql://u:\*\*\*@"):
        db.revision_at("postgresql://u:s3cret-canary@127.0.0.1:1/none")


def test_the_relays_accepted_query_answers_alike_on_both_engines(
    storage: Storage, tmp_path: Path
) -> None:
    """``Registry.accepted`` (Core, one expanding IN): the ingest sequence and digest of
    each id accepted, nothing for an id never accepted or for no id at all."""
    ids = [f"00000000-0000-4000-8000-00000000000{n}" for n in (1, 2, 3)]
    registry = Registry(storage.url(tmp_path))
    try:
        rows = [
            BulletinRow(
                id=bid,
                originator="gt-police",
                labels="{}",
                envelope_digest=f"d{n}",
                ingest_seq=n,
                created_at=1,
                accepted_at=1,
                recipients="bz-police",
                policy_version="p1",
                directory_version="d1",
            )
            for n, bid in enumerate(ids[:2], start=1)
        ]
        registry.record(rows, [])
        assert registry.accepted(ids) == {ids[0]: (1, "d1"), ids[1]: (2, "d2")}
        assert registry.accepted([ids[2]]) == {}
        assert registry.accepted(set()) == {}
    finally:
        registry.close()


def test_only_a_sqlite_registry_is_local(storage: Storage, tmp_path: Path) -> None:
    """The relay commits on its event loop's thread only where the database is a local
    file (``Relay._write``); PostgreSQL is reached over the network."""
    registry = Registry(storage.url(tmp_path))
    try:
        assert registry.local is not storage.postgresql
    finally:
        registry.close()


def test_the_schema_comes_from_the_migrations_only(storage: Storage, tmp_path: Path) -> None:
    """No module makes a table beside Alembic: one missing from a migrated database stays
    missing, and what needs it fails as the store's error."""
    registry = Registry(storage.url(tmp_path))
    engine = storage.admin_engine(tmp_path)
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE admin_identity"))
        with pytest.raises(AuditStoreError):
            add_admin(registry, "ops", KEY.verify_key, name="Ops", now=1, actor="local:test")
        with engine.connect() as conn:
            assert "admin_identity" not in inspect(conn).get_table_names()
    finally:
        engine.dispose()
        registry.close()


def test_passwords_stay_out_of_messages() -> None:
    with pytest.raises(IstmoError) as err:  # nothing listens on port 1
        Registry("postgresql://istmo:s3cret-canary@127.0.0.1:1/none")
    assert "s3cret-canary" not in str(err.value)
    assert db.display_url("postgresql://u:s3cret-canary@h/d") == "postgresql://u:***@h/d"


# ---------------------------------------------------------------------- S-18
def test_the_deploy_role_sql_is_what_grant_role_runs() -> None:
    text_ = (ROOT / "deploy/postgres/broker-role.sql").read_text()
    body = [line for line in text_.splitlines() if line.strip() and not line.startswith("--")]
    assert [line.rstrip(";") for line in body] == grant_statements("istmo_broker", "istmo")


@pytest.mark.postgres
def test_the_broker_role_may_only_insert_and_select_the_audit_tables(tmp_path: Path) -> None:
    role = f"istmo_t_role_{secrets.token_hex(4)}"
    try:
        with pg_database() as url:
            env = {"ISTMO_DATABASE_URL": url}
            refused = istmo("db", "upgrade", "--grant-role", "postgres", env=env)
            assert refused.returncode != 0
            assert "superuser" in refused.stderr
            granted = istmo("db", "upgrade", "--grant-role", role, env=env)
            assert granted.returncode == 0, granted.stderr
            as_role = url.replace("//postgres@", f"//{role}@")

            # The broker's store works under the role: record, integrate, verify.
            registry = Registry(as_role)
            registry.record([], events(40, "r"))
            log = AuditLog(as_role)
            while log.integrate(KEY, DEFAULT_ORIGIN, now_ms=1, max_entries=16):
                pass
            assert log.verify_all(KEY.verify_key, DEFAULT_ORIGIN).ok
            log.close()
            registry.close()

            def role_refused(sql: str) -> None:
                with psycopg.connect(as_role.replace("+psycopg", "")) as conn:
                    with pytest.raises(psycopg.errors.InsufficientPrivilege) as err:
                        conn.execute(sql)  # type: ignore[arg-type]  # test constants
                    assert re.search("permission denied|must be owner", str(err.value))

            for table in AUDIT_TABLES:
                role_refused(f"UPDATE {table} SET {KEY_COLUMN[table]} = 0")  # noqa: S608  # constants
                role_refused(f"DELETE FROM {table}")  # noqa: S608  # constants
                role_refused(f"TRUNCATE {table} CASCADE")
                role_refused(f"DROP TRIGGER {table}_no_update ON {table}")
            for table in RECORD_TABLES:  # nor a decision (migration 0013)
                role_refused(f"DELETE FROM {table}")  # noqa: S608  # constants
                role_refused(f"TRUNCATE {table} CASCADE")
            # Even with every trigger gone, the role still cannot rewrite the log.
            with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as su:
                for table in AUDIT_TABLES:
                    for verb in ("update", "delete", "truncate"):
                        su.execute(f"DROP TRIGGER {table}_no_{verb} ON {table}")  # type: ignore[arg-type]
            for table in AUDIT_TABLES:
                role_refused(f"DELETE FROM {table}")  # noqa: S608  # constants
                role_refused(f"TRUNCATE {table} CASCADE")
            role_refused("UPDATE audit_event SET data = '{}'")
    finally:
        with psycopg.connect(
            PG_ADMIN_URL.replace("+psycopg", "") + "/postgres", autocommit=True
        ) as su:
            su.execute(f"DROP ROLE IF EXISTS {role}")  # type: ignore[arg-type]  # test-made name


# ---------------------------------------------------------------------- serialised appends
def test_concurrent_writers_and_two_integrators_leave_no_gap_and_no_duplicate(
    storage: Storage, tmp_path: Path
) -> None:
    url = storage.url(tmp_path)
    registry = Registry(url)
    jitter = random.Random(9)

    @event.listens_for(registry.engine, "commit")
    def slow_commit(_conn: object) -> None:
        # Widen the window between taking a seq and committing it, where a later writer
        # could commit first and the sequencer skip the earlier row for ever.
        time.sleep(jitter.uniform(0, 0.004))

    logs = [AuditLog(url), AuditLog(url)]
    writers_done = threading.Event()
    errors: list[BaseException] = []
    batches: list[list[int]] = [[], []]

    def write(w: int) -> None:
        try:
            for b in range(40):
                registry.record([], events(10, f"w{w}-b{b}"))
        except BaseException as exc:
            errors.append(exc)

    def integrate(i: int) -> None:
        rng = random.Random(i)
        try:
            while True:
                # Mostly whole batches, so the integrators keep up with the writers.
                batch = rng.choice((rng.randint(1, 40), 1000, 1000))
                done = logs[i].integrate(KEY, DEFAULT_ORIGIN, now_ms=1, max_entries=batch)
                if done is not None:
                    batches[i].append(done.count)
                elif writers_done.is_set():
                    if logs[i].integrate(KEY, DEFAULT_ORIGIN, now_ms=1, max_entries=1000) is None:
                        return
        except BaseException as exc:
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    integrators = [threading.Thread(target=integrate, args=(i,)) for i in range(2)]
    for t in [*integrators, *writers]:
        t.start()
    for t in writers:
        t.join(120)
    writers_done.set()
    for t in integrators:
        t.join(120)
    assert not errors, errors
    with registry.engine.connect() as conn:
        rows = conn.execute(text('SELECT "index", event_seq FROM log_entry ORDER BY "index"')).all()
        outbox = [r[0] for r in conn.execute(text("SELECT seq FROM audit_event ORDER BY seq"))]
    assert len(outbox) == 1600
    assert [r[0] for r in rows] == list(range(1600))  # no gap, no duplicate index
    assert [r[1] for r in rows] == outbox  # every outbox row once, in seq order
    report = logs[0].verify_all(KEY.verify_key, DEFAULT_ORIGIN)
    assert report.ok, report.first
    assert (report.entries, report.pending) == (1600, 0)
    print(f"\n{storage.name}: batches by integrator {[len(b) for b in batches]}")
    for log in logs:
        log.close()
    registry.close()
