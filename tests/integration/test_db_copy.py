"""``istmo db copy --from-sqlite``: a region's SQLite database moved into PostgreSQL.

The region is real: ``istmo up`` (in process) with its demo directory, bulletins published,
delivered and receipted, a policy adopted, more events integrated by the sequencer with the
region's log key. Each test copies it into a fresh PostgreSQL database (``pg_database``).

- Every row arrives (whole tables compared), the log verifies on PostgreSQL with the same
  root, the SQLite file is not changed, and the region goes on: new events continue the
  sequence numbers, the sequencer signs on with the same key, the log still verifies.
- Refused with no side effect: a non-empty target (naming the table), a target or source at
  another revision, a missing file, a file that is not SQLite or not Istmo's, a source a
  running stack holds, the broker's own role (it may not lock or rewind the audit tables).
- Rolled back whole, the target left empty: a tampered audit event (verification fails, the
  command exits 1), a row PostgreSQL refuses mid-copy, a write to the source mid-copy.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import MetaData, create_engine, select, text

from broker.audit.log import AuditLog
from broker.audit.sequencer import DEFAULT_ORIGIN, open_sequencer
from broker.audit.witnessing import CHECKPOINT_FILE
from broker.config import Settings
from broker.directory.policy_sets import adopt
from broker.files import signing_key_file
from broker.policy.engine import PolicyBundle
from broker.runtime.db_copy import (
    TABLES,
    CopyReport,
    copy_sqlite_region,
    log_key_for,
    region_database,
)
from broker.store.registry import Registry
from broker.store.roles import grant_statements
from broker.store.tables import SEQUENCES
from clients.sdk import ReceivedBulletin
from schemas.audit import AuditEvent
from schemas.canonical import b64e
from schemas.checkpoint import Checkpoint, cosign, sign_checkpoint
from schemas.errors import AuditStoreError, ConfigError
from schemas.keys import SigningKey
from schemas.labels import Classification, Labels, Tlp
from tests.integration.stack_inproc import client, running_stack
from tests.integration.test_postgres_storage import istmo
from tests.storage_engines import PG_ADMIN_URL, pg_database, require_postgres
from tests.waiting import eventually

pytestmark = pytest.mark.postgres

LABELS = Labels(
    topic="migration", classification=Classification.RESTRICTED, tlp=Tlp.AMBER, rel_to=("CR",)
)
BULLETINS = 3
LOG_KEY_ALONE = "--trust-log-key-alone"
EXTRA_EVENTS = 1500  # integrated after the stack, in batches of 1000: two more tree heads


def events(n: int, tag: str, start: int = 0) -> list[AuditEvent]:
    return [
        AuditEvent(
            event_id=f"{tag}-{i}",
            type="bulletin.accepted",
            time=1_767_225_600_000 + i,
            actor="gt-police",
            subject="gt-police",
            data={"n": i},
        )
        for i in range(start, start + n)
    ]


async def _live_region(data_dir: Path) -> None:
    async with running_stack(data_dir) as stack:
        async with await client(stack, "pa-foreign") as pa:
            for i in range(BULLETINS):
                done = await pa.publish(title=f"t{i}", text="for Costa Rica", labels=LABELS)
                assert done.state == "accepted"

        async def app(_b: ReceivedBulletin) -> None:
            return None

        async with await client(stack, "cr-foreign") as cr:
            assert await cr.receive(app, count=BULLETINS, timeout=20) == BULLETINS
        registry, log = Registry(stack.settings.db_url), AuditLog(stack.settings.db_url)

        def receipts_and_pending() -> tuple[int, int]:
            with registry.engine.connect() as conn:
                receipts = conn.execute(text("SELECT COUNT(*) FROM receipt")).scalar_one()
            return receipts, log.pending()

        try:
            await eventually(
                receipts_and_pending,
                until=lambda got: got == (BULLETINS, 0),
                what="every receipt recorded and every event integrated",
            )
        finally:
            log.close()
            registry.close()


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stopped region's data directory (SQLite), built once for the module."""
    require_postgres()  # every test copies into PostgreSQL
    data_dir = tmp_path_factory.mktemp("region") / "istmo"
    asyncio.run(_live_region(data_dir))
    settings = Settings(data_dir=data_dir)
    registry = Registry(settings.db_url)
    adopt(
        settings.policy_dir,
        settings=settings,
        registry=registry,
        active=PolicyBundle.load(settings.policy_dir),
        adopted_by="admin:test",
    )
    registry.record([], events(EXTRA_EVENTS, "extra"))
    registry.close()
    sequencer = open_sequencer(settings, out=lambda _line: None)
    while sequencer.step():
        pass
    sequencer.close()
    return data_dir


@pytest.fixture
def source(region: Path, tmp_path: Path) -> Path:
    """This test's own copy of the region's data directory; its istmo.db."""
    data_dir = tmp_path / "istmo"
    shutil.copytree(region, data_dir, ignore=shutil.ignore_patterns("nats", "keys"))
    return data_dir / "istmo.db"


def rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, by primary key."""
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            meta = MetaData()
            meta.reflect(conn, only=list(TABLES))
            return {
                name: [
                    tuple(r) for r in conn.execute(select(t).order_by(*t.primary_key.columns)).all()
                ]
                for name, t in meta.tables.items()
            }
    finally:
        engine.dispose()


def target_state(url: str) -> dict[str, object]:
    """Row counts and sequence positions: what a refused or rolled-back copy must not move."""
    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        state: dict[str, object] = {
            t: conn.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0]  # type: ignore[index]  # noqa: S608  # test constants (a row is there)
            for t in TABLES
        }
        for s in SEQUENCES:
            state[s] = conn.execute(f"SELECT last_value, is_called FROM {s}").fetchone()  # noqa: S608  # test constants
    return state


EMPTY = {**dict.fromkeys(TABLES, 0), **dict.fromkeys(SEQUENCES, (1, False))}  # as migrated


def copy(source: Path, url: str, **kw: object) -> CopyReport:
    """The copy on the log key alone: these tests are about the copy, not its witnesses
    (test_the_copy_requires_the_witness_quorum is)."""
    kw = {"trust_log_key_alone": True, "out": lambda _l: None, **kw}
    return copy_sqlite_region(source, url, log_key_for(source, None), **kw)  # type: ignore[arg-type]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rewrite(source: Path, *statements: str) -> None:
    """Change the source behind Istmo's back, as an intruder with the file would."""
    with sqlite3.connect(source, isolation_level=None) as conn:
        for sql in statements:
            conn.execute(sql)
    conn.close()


# ---------------------------------------------------------------------- the copy
def test_a_region_moves_to_postgresql_whole_and_goes_on(source: Path) -> None:
    settings = Settings(data_dir=source.parent)
    before = AuditLog(settings.db_url)
    key = log_key_for(source, None)
    assert key is not None
    expected = before.verify_all(key, DEFAULT_ORIGIN)
    before.close()
    assert expected.ok
    assert expected.latest is not None
    assert expected.entries > EXTRA_EVENTS + BULLETINS
    assert expected.heads >= 3
    wanted, digest = rows(settings.db_url), sha256(source)
    assert len(wanted["receipt"]) == len(wanted["bulletin"]) == BULLETINS
    assert wanted["policy_set"]

    with pg_database() as url:
        canary = url.replace("postgres@", "postgres:s3cret-canary@")  # trust auth ignores it
        done = istmo(
            "db", "copy", "--from-sqlite", str(source.parent), LOG_KEY_ALONE,
            env={"ISTMO_DATABASE_URL": canary},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "WARNING: checked on the log key alone" in done.stderr
        assert "s3cret-canary" not in done.stdout + done.stderr
        assert "postgres:***@" in done.stdout
        for name in TABLES:
            assert f"  {name} " in done.stdout
        assert f"{expected.entries} entries and {expected.heads} signed tree heads" in done.stdout
        assert f"size {expected.latest.tree_size}, root {expected.latest.root_hash}" in done.stdout

        assert rows(url) == wanted  # every row, byte for byte
        assert sha256(source) == digest  # the source was only read

        # The region goes on from where it was: the next event gets the next seq, the
        # sequencer signs on with the region's log key, and the log verifies.
        last_seq = max(r[0] for r in wanted["audit_event"])
        on_pg = Settings(data_dir=source.parent, database_url=url)
        registry = Registry(url)
        registry.record([], events(5, "after"))
        with registry.engine.connect() as conn:
            seqs = conn.execute(text("SELECT seq FROM audit_event WHERE seq > :s"), {"s": last_seq})
            assert [r[0] for r in seqs] == list(range(last_seq + 1, last_seq + 6))
        adopt(
            on_pg.policy_dir,
            settings=on_pg,
            registry=registry,
            active=PolicyBundle.load(on_pg.policy_dir),
            adopted_by="admin:test",
        )
        with registry.engine.connect() as conn:
            policy_seqs = conn.execute(text("SELECT seq FROM policy_set ORDER BY seq")).all()
        assert policy_seqs[-1][0] == max(r[0] for r in wanted["policy_set"]) + 1
        registry.close()
        sequencer = open_sequencer(on_pg, out=lambda _line: None)
        assert sequencer.step() == 6
        sequencer.close()
        log = AuditLog(url)
        report = log.verify_all(key, DEFAULT_ORIGIN)
        log.close()
        assert report.ok, report.first
        assert report.entries == expected.entries + 6
        assert report.heads == expected.heads + 1

        # The append-only triggers came through: the copy inserted, nothing may update.
        with psycopg.connect(url.replace("+psycopg", "")) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute("UPDATE audit_event SET data = '{}' WHERE seq = 1")


def test_small_batches_copy_every_row(source: Path) -> None:
    wanted = rows(Settings(data_dir=source.parent).db_url)
    with pg_database() as url:
        lines: list[str] = []
        report = copy_sqlite_region(
            source,
            url,
            log_key_for(source, None),
            batch_rows=7,
            out=lines.append,
            trust_log_key_alone=True,
        )
        assert report.rows == {name: len(wanted[name]) for name in report.rows}
        assert list(report.rows)[-1] == "log_entry"  # after audit_event, its parent
        assert report.log is not None
        assert report.log.ok
        assert report.next_values["audit_event.seq"] == max(r[0] for r in wanted["audit_event"]) + 1
        assert report.next_values["policy_set.seq"] == max(r[0] for r in wanted["policy_set"]) + 1
        assert rows(url) == wanted
        assert len(lines) == 2 + len(TABLES)  # a line to start, one a table, one to verify


def _cosigned(source: Path, root: bytes | None = None) -> Path:
    """Witness the region's latest head as two witnesses would (quorum 2): its checkpoint,
    cosigned, in broker/checkpoint and their keys in broker/witnesses.json. ``root``: a
    checkpoint of another tree (what the log key's holder could not make them cosign)."""
    broker_dir = source.parent / "broker"
    log = AuditLog(Settings(data_dir=source.parent).db_url)
    latest = log.latest_head()
    log.close()
    assert latest is not None
    cp = Checkpoint(DEFAULT_ORIGIN, latest.head.tree_size, root or latest.head.root())
    note = sign_checkpoint(cp, signing_key_file(broker_dir / "log.key", "log key"))
    ws = {f"witness.w{i}.test": SigningKey.generate() for i in (1, 2)}
    note = note.with_signatures(cosign(cp.body(), n, k, 1_700_000_000) for n, k in ws.items())
    (broker_dir / CHECKPOINT_FILE).write_bytes(note.encode())
    listed = [{"name": n, "key": b64e(k.verify_key.public)} for n, k in ws.items()]
    trust = broker_dir / "witnesses.json"
    trust.write_text(json.dumps({"quorum": 2, "witnesses": listed}))
    return trust


def test_the_copy_requires_the_witness_quorum(source: Path, tmp_path: Path) -> None:
    env = {"ISTMO_WITNESSES_FILE": "", "ISTMO_AUDIT_WITNESSES": ""}
    with pg_database() as url:
        env["ISTMO_DATABASE_URL"] = url
        # No witnesses given, none in $ISTMO_AUDIT_WITNESSES, none in the region: refused.
        refused = istmo("db", "copy", "--from-sqlite", str(source), env=env)
        assert refused.returncode == 1
        assert "no witnesses to check the audit log against" in refused.stderr
        assert "--trust-log-key-alone" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert target_state(url) == EMPTY
        with pytest.raises(ConfigError, match="no witnesses to check the copied audit log"):
            copy_sqlite_region(source, url, log_key_for(source, None), out=lambda _l: None)
        # A checkpoint of another tree, cosigned: the copy is not the log they witnessed.
        _cosigned(source, root=bytes(32))
        forged = istmo("db", "copy", "--from-sqlite", str(source), env=env)
        assert forged.returncode == 1
        assert "not the one the witnesses cosigned, so the copy was rolled back" in forged.stderr
        assert "its history was rewritten" in forged.stderr
        assert target_state(url) == EMPTY
        # The quorum met, with the auditor's own trust file (not the region's: none left).
        trust = _cosigned(source)
        mine = tmp_path / "mine.json"
        trust.rename(mine)
        done = istmo("db", "copy", "--from-sqlite", str(source), "--witnesses", str(mine), env=env)
        assert done.returncode == 0, done.stderr
        assert "witnessed: size" in done.stdout
        assert "cosigned by 2 of 2 witnesses (quorum 2" in done.stdout
        assert done.stderr == ""


# ---------------------------------------------------------------------- refused, no side effect
def test_a_non_empty_target_is_refused_and_left_as_it_was(source: Path) -> None:
    with pg_database() as url:
        registry = Registry(url)
        registry.record([], events(2, "already"))
        registry.close()
        before = target_state(url)
        with pytest.raises(ConfigError, match=r"not empty \(table audit_event has rows\)"):
            copy(source, url)
        assert target_state(url) == before


def test_another_revision_is_refused(source: Path) -> None:
    with pg_database(migrated=False) as url:
        with pytest.raises(ConfigError, match=r"revision none.*run `istmo db upgrade`"):
            copy(source, url)
    with pg_database() as url:
        rewrite(source, "UPDATE alembic_version SET version_num = '0999'")
        with pytest.raises(ConfigError, match=r"revision 0999, made by a newer Istmo"):
            copy(source, url)
        rewrite(source, "DELETE FROM alembic_version")
        with pytest.raises(
            ConfigError, match=r"revision none.*ISTMO_DATABASE_URL= istmo db upgrade"
        ):
            copy(source, url)
        assert target_state(url) == EMPTY


def test_what_is_not_an_istmo_sqlite_database_is_refused(source: Path, tmp_path: Path) -> None:
    with pg_database() as url:
        for gone in (tmp_path / "nowhere.db", tmp_path):  # a file, a data directory
            with pytest.raises(ConfigError, match="no SQLite database at"):
                region_database(gone)
        junk = tmp_path / "junk.db"
        junk.write_bytes(b"not sqlite at all, " * 200)
        with pytest.raises(ConfigError, match="is not a SQLite database"):
            copy(junk, url)
        other = tmp_path / "other.db"
        rewrite(other, "CREATE TABLE agency (id TEXT)")
        with pytest.raises(ConfigError, match="not an Istmo database: it has no admin_identity"):
            copy(other, url)
        shutil.rmtree(source.parent / "broker")  # the log key with it
        with pytest.raises(ConfigError, match=r"no log key .* --log-key FILE"):
            copy(source, url)
        assert target_state(url) == EMPTY


async def test_a_source_a_running_stack_holds_is_refused(source: Path) -> None:
    with pg_database() as url:
        async with running_stack(source.parent, with_relay=False):
            with pytest.raises(ConfigError, match=r"istmo up is running .*stop istmo up first"):
                await asyncio.to_thread(copy, source, url)
        assert target_state(url) == EMPTY


# ---------------------------------------------------------------------- rolled back whole
def test_a_tampered_event_fails_verification_and_nothing_lands(source: Path) -> None:
    rewrite(
        source,
        "DROP TRIGGER audit_event_no_update",
        "UPDATE audit_event SET data = '{\"n\": 666}' WHERE event_id = 'extra-100'",
    )
    with pg_database() as url:
        done = istmo(
            "db", "copy", "--from-sqlite", str(source), LOG_KEY_ALONE,
            env={"ISTMO_DATABASE_URL": url},
        )  # fmt: skip
        assert done.returncode == 1
        assert "copied audit log does not verify, so the copy was rolled back" in done.stderr
        assert "first bad index" in done.stderr
        assert "differs from audit event" in done.stderr
        assert target_state(url) == EMPTY


def test_a_row_postgresql_refuses_late_in_the_copy_rolls_everything_back(source: Path) -> None:
    # SQLite does not enforce VARCHAR lengths; PostgreSQL does. subscription is copied after
    # audit_event and merkle_node, so much is already inserted when it fails.
    rewrite(source, "UPDATE subscription SET topic = topic || printf('%065d', 0) WHERE rowid = 1")
    with pg_database() as url:
        lines: list[str] = []
        with pytest.raises(AuditStoreError, match="refused a row of table subscription") as err:
            copy(source, url, out=lines.append)
        assert "value too long" in str(err.value)
        assert "still empty" in str(err.value)
        assert any(line.split()[:1] == ["merkle_node"] for line in lines)  # copied, then undone
        assert target_state(url) == EMPTY


def test_a_write_to_the_source_mid_copy_rolls_everything_back(source: Path) -> None:
    def meanwhile(line: str) -> None:  # another process writes while the copy reads
        if line.split()[:1] == ["audit_event"]:
            registry = Registry(Settings(data_dir=source.parent).db_url)
            registry.record([], events(1, "late"))
            registry.close()

    with pg_database() as url:
        with pytest.raises(ConfigError, match="changed while it was copied"):
            copy(source, url, out=meanwhile)
        assert target_state(url) == EMPTY


def test_the_brokers_own_role_may_not_copy(source: Path) -> None:
    role = f"istmo_t_role_{secrets.token_hex(4)}"
    try:
        with pg_database() as url:
            with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as su:
                for sql in grant_statements(role, url.rsplit("/", 1)[1]):
                    su.execute(sql)  # our own statements
            as_role = url.replace("//postgres@", f"//{role}@")
            with pytest.raises(ConfigError, match=r"permission denied .*the role that owns"):
                copy(source, as_role)
            assert target_state(url) == EMPTY
    finally:
        with psycopg.connect(
            PG_ADMIN_URL.replace("+psycopg", "") + "/postgres", autocommit=True
        ) as su:
            su.execute(f"DROP ROLE IF EXISTS {role}")  # test-made name
