"""The audit log's store and sequencer, on a real SQLite file and on PostgreSQL.

Batches get consecutive indices in outbox order; proofs read from the store verify against
the stored signed heads; the tables refuse UPDATE and DELETE; the sequencer will not sign
over a tree it did not build; one sequencer per data directory; and a SIGKILLed
``istmo sequencer`` under a 20,000-row backlog integrates every outbox row exactly once
(S-25). Every test that touches the store runs on both engines (``storage``).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, bindparam, text
from sqlalchemy.exc import DBAPIError

from broker.audit import merkle
from broker.audit.log import AuditLog, Integrated, LogCorrupt, entry_bytes
from broker.audit.sequencer import (
    DEFAULT_ORIGIN,
    LOG_KEY_FILE,
    LOG_PUB_FILE,
    SequencerBusy,
    log_verify_key,
    open_sequencer,
    run_in_stack,
)
from broker.store.registry import Registry
from broker.store.tables import AUDIT_TABLES, RECORD_TABLES
from schemas.audit import AuditEvent
from schemas.canonical import b64e, canonical_json
from schemas.errors import ConfigError
from schemas.keys import SigningKey
from schemas.treehead import TreeHead, sign_tree_head
from tests.storage_engines import Storage
from tests.tamper import drop_append_only
from tests.waiting import eventually, eventually_sync

KEY = SigningKey(bytes(range(32)))
ISTMO = str(Path(sys.executable).parent / "istmo")
TYPES = ("bulletin.accepted", "bulletin.routed", "bulletin.denied", "bulletin.received")


def events(n: int, start: int = 0, tag: str = "e") -> list[AuditEvent]:
    return [
        AuditEvent(
            event_id=f"{tag}{i}",
            type=TYPES[i % len(TYPES)],  # type: ignore[arg-type]
            time=1_767_225_600_000 + i,
            actor="relay" if i % 2 else "gt-police",
            subject="jm-police",
            bulletin_id=f"00000000-0000-4000-8000-{i:012d}",
            reason="policy_deny" if i % 4 == 2 else None,
            data={"n": i, "policy_ids": ("base.a", "base.b")},
        )
        for i in range(start, start + n)
    ]


@pytest.fixture
def db(storage: Storage, tmp_path: Path) -> Iterator[tuple[Registry, AuditLog]]:
    url = storage.url(tmp_path)
    registry = Registry(url)
    log = AuditLog(url)
    yield registry, log
    log.close()
    registry.close()


def integrate_all(log: AuditLog, batch: int) -> list[Integrated]:
    done = []
    while (b := log.integrate(KEY, DEFAULT_ORIGIN, now_ms=1, max_entries=batch)) is not None:
        done.append(b)
    return done


def test_batches_get_consecutive_indices_in_outbox_order(db: tuple[Registry, AuditLog]) -> None:
    registry, log = db
    for start in (0, 1200, 1900):
        registry.record([], events(1200 if start == 0 else 700 if start == 1200 else 600, start))
    registry.record([], events(100))  # a retried write: the same event ids add nothing
    batches = integrate_all(log, 1000)
    assert [(b.first_index, b.count) for b in batches] == [(0, 1000), (1000, 1000), (2000, 500)]
    registry.record([], events(700, 2500))
    assert log.pending() == 700
    more = integrate_all(log, 1000)
    assert [(b.first_index, b.count) for b in more] == [(2500, 700)]

    entries = list(log.iter_entries(page=333))
    assert [e.index for e in entries] == list(range(3200))
    seqs = [e.event_seq for e in entries]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 3200
    rows = registry.audit_events(after_seq=seqs[1233] - 1, limit=1)
    assert entries[1233].leaf == entry_bytes(rows[0].to_event())
    assert entries[1233].leaf == canonical_json(events(1, 1233)[0].model_dump(mode="json"))
    assert entries[1233].leaf_hash == merkle.leaf_hash(entries[1233].leaf)

    report = log.verify_all(KEY.verify_key, DEFAULT_ORIGIN)
    assert report.ok, report.first
    assert (report.entries, report.heads, report.pending) == (3200, 4, 0)
    assert report.latest is not None
    assert report.latest.tree_size == 3200


def test_proofs_from_the_store_verify_against_signed_heads(
    db: tuple[Registry, AuditLog],
) -> None:
    registry, log = db
    rng = random.Random(4)
    registry.record([], events(1537))
    sizes = []
    while b := log.integrate(
        KEY, DEFAULT_ORIGIN, now_ms=1, max_entries=rng.choice([1, 2, 7, 64, 300])
    ):
        sizes.append(b.head.head.tree_size)
    assert sizes[-1] == 1537
    assert len(sizes) > 10
    mem = merkle.MemoryHashStore()
    mem.append(e.leaf_hash for e in log.iter_entries())
    heads = {}
    for n in sizes:
        sth = log.head(n)
        assert sth is not None
        heads[n] = sth.head.root()
        assert heads[n] == merkle.root(mem, n)
    for n in [*rng.sample(sizes, 12), sizes[0], sizes[-1]]:
        for i in {0, n - 1, n // 2, rng.randrange(n)}:
            proof = log.inclusion_proof(i, n)
            leaf = log.entry(i)
            assert leaf is not None
            merkle.verify_inclusion(leaf.leaf_hash, i, n, proof, heads[n])
            assert proof == merkle.inclusion_proof(mem, i, n)
            if proof:  # the same proof for another index must fail
                with pytest.raises(merkle.ProofError):
                    merkle.verify_inclusion(leaf.leaf_hash, i ^ 1, n, proof, heads[n])
    for old in rng.sample(sizes, 10):
        for new in rng.sample(sizes, 10):
            if old <= new:
                proof = log.consistency_proof(old, new)
                merkle.verify_consistency(old, new, heads[old], heads[new], proof)
    with pytest.raises(LookupError):
        log.inclusion_proof(0, 1536 if 1536 not in heads else 5)  # no head at this size
    with pytest.raises(ValueError, match="outside"):
        log.inclusion_proof(1537, 1537)


@pytest.mark.parametrize("table", ["log_entry", "merkle_node", "tree_head", "audit_event"])
def test_the_log_tables_are_append_only(db: tuple[Registry, AuditLog], table: str) -> None:
    registry, log = db
    registry.record([], events(10))
    integrate_all(log, 4)
    column = {"merkle_node": "idx", "log_entry": "event_seq"}.get(table, "time")
    if table == "tree_head":
        column = "timestamp"
    refused = [f"UPDATE {table} SET {column} = {column}", f"DELETE FROM {table}"]  # noqa: S608  # test constants
    if registry.engine.dialect.name == "postgresql":
        refused.append(f"TRUNCATE {table} CASCADE")  # as the superuser, still refused
    for sql in refused:
        with pytest.raises(DBAPIError, match="append-only"), registry.engine.begin() as conn:
            conn.exec_driver_sql(sql)
    assert log.verify_all(KEY.verify_key, DEFAULT_ORIGIN).ok


ROW_OF = {
    "agency_set": "INSERT INTO agency_set VALUES ('" + "0" * 64 + "', '[\"gt-police\"]', 1)",
    "decision": "INSERT INTO decision VALUES ('b1', 'gt-police', true, 'base.a', '[]')",
    "decision_record": "INSERT INTO decision_record VALUES ('b1', 'gt-police', '[]')",
}


@pytest.mark.parametrize(
    ("table", "column"),
    [("agency_set", "count"), ("decision", "allowed"), ("decision_record", "groups")],
)
def test_the_decision_records_are_append_only(
    db: tuple[Registry, AuditLog], table: str, column: str
) -> None:
    """Migration 0013: what the relay decided is kept as written, like the log."""
    registry, _ = db
    assert table in RECORD_TABLES
    with registry.engine.begin() as conn:  # one row each: a row trigger needs a row
        conn.exec_driver_sql(ROW_OF[table])
    refused = [f"UPDATE {table} SET {column} = {column}", f"DELETE FROM {table}"]  # noqa: S608  # test constants
    if registry.engine.dialect.name == "postgresql":
        refused.append(f"TRUNCATE {table} CASCADE")
    for sql in refused:
        with pytest.raises(DBAPIError, match="append-only"), registry.engine.begin() as conn:
            conn.exec_driver_sql(sql)


def _drop_triggers(engine: Engine) -> None:
    with engine.begin() as conn:
        drop_append_only(conn, AUDIT_TABLES)


def _delete(conn: Connection, *indices: int) -> None:
    conn.execute(
        text('DELETE FROM log_entry WHERE "index" IN :i').bindparams(
            bindparam("i", expanding=True)
        ),
        {"i": list(indices)},
    )


def _edit_bytes(conn: Connection, index: int) -> None:
    """Change one entry's bytes in place (its stored leaf hash left as it was)."""
    leaf = bytes(
        conn.execute(
            text('SELECT leaf FROM log_entry WHERE "index" = :i'), {"i": index}
        ).scalar_one()
    )
    conn.execute(
        text('UPDATE log_entry SET leaf = :l WHERE "index" = :i'),
        {"l": leaf.replace(b"jm-police", b"xx-nobody"), "i": index},
    )


def _swap(conn: Connection, k: int) -> None:
    rows = conn.execute(
        text(
            "SELECT event_seq, leaf, leaf_hash FROM log_entry "
            'WHERE "index" IN (:a, :b) ORDER BY "index"'
        ),
        {"a": k, "b": k + 1},
    ).all()
    _delete(conn, k, k + 1)
    conn.execute(
        text('INSERT INTO log_entry ("index", event_seq, leaf, leaf_hash) VALUES (:i, :s, :l, :h)'),
        [
            {"i": k, "s": rows[1][0], "l": rows[1][1], "h": rows[1][2]},
            {"i": k + 1, "s": rows[0][0], "l": rows[0][1], "h": rows[0][2]},
        ],
    )


# Issue 21: verify named 2776 when 2778-2780 were deleted (a node over 2776..2779 beyond
# the log), and 0 when entry 1's bytes were edited (the node over entries 0..1).
ALTERED: dict[str, tuple[Callable[[Connection], None], int, str]] = {
    "deleted in the middle": (lambda c: _delete(c, 13), 13, "entry 13 is missing"),
    "deleted at the end": (lambda c: _delete(c, 37, 38, 39), 37, "entries from 37 on"),
    "one entry edited": (lambda c: _edit_bytes(c, 1), 1, "entry 1 "),
    "a pair reordered": (lambda c: _swap(c, 20), 20, "entry 20 holds audit event"),
}


@pytest.mark.parametrize("case", list(ALTERED))
def test_verify_names_the_first_entry_altered_or_missing(
    db: tuple[Registry, AuditLog], case: str
) -> None:
    registry, log = db
    registry.record([], events(40))
    integrate_all(log, 8)  # signed heads at 8, 16, ..., 40
    assert log.verify_all(KEY.verify_key, DEFAULT_ORIGIN).ok
    change, index, what = ALTERED[case]
    _drop_triggers(registry.engine)
    with registry.engine.begin() as conn:
        change(conn)
    report = log.verify_all(KEY.verify_key, DEFAULT_ORIGIN)
    assert report.first is not None
    assert (report.first.index, what in report.first.message) == (index, True), report.first


def test_the_sequencer_never_signs_over_a_tree_it_did_not_build(
    db: tuple[Registry, AuditLog],
) -> None:
    registry, log = db
    registry.record([], events(300))
    integrate_all(log, 100)
    registry.record([], events(10, 300))
    _drop_triggers(registry.engine)
    with registry.engine.begin() as conn:  # a frontier node the next batch hashes onto
        conn.execute(
            text("UPDATE merkle_node SET hash = :h WHERE level = 8 AND idx = 0"), {"h": bytes(32)}
        )
    with pytest.raises(LogCorrupt, match="does not fold to the signed root"):
        log.integrate(KEY, DEFAULT_ORIGIN, now_ms=1, max_entries=100)
    with pytest.raises(LogCorrupt, match="does not verify"):  # not the key that signed
        log.integrate(SigningKey.generate(), DEFAULT_ORIGIN, now_ms=1, max_entries=100)
    assert log.size() == 300


def test_a_forged_head_stops_the_sequencer(db: tuple[Registry, AuditLog]) -> None:
    registry, log = db
    registry.record([], events(50))
    integrate_all(log, 50)
    forged = sign_tree_head(
        TreeHead(v=1, origin=DEFAULT_ORIGIN, tree_size=60, root_hash=b64e(bytes(32)), timestamp=2),
        SigningKey.generate(),
    )
    with registry.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO tree_head (tree_size, root, timestamp, kid, sig, raw) "
                "VALUES (60, :r, 2, :k, :s, :raw)"
            ),
            {
                "r": bytes(32),
                "k": forged.kid,
                "s": forged.sig,
                "raw": forged.model_dump_json().encode(),
            },
        )
    registry.record([], events(5, 50))
    with pytest.raises(LogCorrupt, match="tree head"):
        log.integrate(KEY, DEFAULT_ORIGIN, now_ms=1, max_entries=10)


def test_one_sequencer_per_data_directory(storage: Storage, tmp_path: Path) -> None:
    settings = storage.settings(tmp_path / "istmo")
    settings.data_dir.mkdir()
    Registry(settings.db_url).close()
    first = open_sequencer(settings, out=lambda _: None)
    try:
        with pytest.raises(SequencerBusy, match="another sequencer"):
            open_sequencer(settings, out=lambda _: None)
    finally:
        first.close()
    second = open_sequencer(settings, out=lambda _: None)
    second.close()
    key_file = settings.broker_dir / LOG_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert (settings.broker_dir / LOG_PUB_FILE).read_text().strip() == b64e(
        first.key.verify_key.public
    )
    assert second.key == first.key  # made once, then kept


def _log_size(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT COALESCE(MAX(tree_size), 0) FROM tree_head")).scalar())


def _integrated(
    engine: Engine, proc: subprocess.Popen[bytes], out: Path, size: int, interval: float
) -> None:
    """Wait until the running sequencer ``proc`` has integrated ``size`` entries."""

    def log_size() -> int:
        assert proc.poll() is None, out.read_text()[-2000:]
        return _log_size(engine)

    eventually_sync(
        log_size,
        until=lambda n: n >= size,
        what=f"the sequencer to integrate {size} entries",
        timeout=120,
        interval=interval,
    )


def _start(storage: Storage, data_dir: Path, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as out:
        return subprocess.Popen(
            [ISTMO, "sequencer", "--data-dir", str(data_dir), "--batch", "250"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **storage.env()},
        )


@pytest.mark.slow
def test_sigkill_under_a_backlog_integrates_each_outbox_row_exactly_once(
    storage: Storage, tmp_path: Path
) -> None:
    data_dir = tmp_path / "istmo"
    data_dir.mkdir()
    settings = storage.settings(data_dir)
    registry = Registry(settings.db_url)
    for start in range(0, 20_000, 5000):
        registry.record([], events(5000, start))
    engine = registry.engine
    out = tmp_path / "sequencer.log"
    rng = random.Random(7)
    killed_at = []
    try:
        for round_, size in enumerate((1, 6000, 13_000)):
            proc = _start(storage, data_dir, out)
            _integrated(engine, proc, out, size, interval=0.002)
            time.sleep(rng.uniform(0, 0.02))  # somewhere inside the next batch's transaction
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed_at.append(_log_size(engine))
            # Writers go on while no sequencer runs: the outbox just grows.
            registry.record([], events(500, 30_000 + 500 * round_, tag="late"))
        proc = _start(storage, data_dir, out)
        total = 21_500
        _integrated(engine, proc, out, total, interval=0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0, out.read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert all(0 < k < total for k in killed_at), killed_at
    with registry.engine.connect() as conn:
        rows = conn.execute(text('SELECT "index", event_seq FROM log_entry ORDER BY "index"')).all()
        outbox = [r[0] for r in conn.execute(text("SELECT seq FROM audit_event ORDER BY seq"))]
    assert [r[0] for r in rows] == list(range(total))  # no gaps
    assert [r[1] for r in rows] == outbox  # every outbox row once, in seq order
    log = AuditLog(settings.db_url)
    try:
        key = log_verify_key(settings.broker_dir)
        assert key is not None
        report = log.verify_all(key, DEFAULT_ORIGIN)
    finally:
        log.close()
        registry.close()
    assert report.ok, report.first
    assert (report.entries, report.pending) == (total, 0)


def test_a_database_without_a_registry_is_refused(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "other.db") as conn:
        conn.execute("CREATE TABLE unrelated (x)")
    with pytest.raises(ConfigError, match="no Istmo registry"):
        AuditLog(f"sqlite:///{tmp_path / 'other.db'}")


async def test_the_stack_sequencer_stands_by_then_takes_over(
    storage: Storage, tmp_path: Path
) -> None:
    settings = storage.settings(tmp_path / "istmo")
    settings.data_dir.mkdir()
    registry = Registry(settings.db_url)
    registry.record([], events(30))
    lines: list[str] = []
    holder = open_sequencer(settings, out=lines.append)
    stop = asyncio.Event()
    task = asyncio.create_task(run_in_stack(settings, stop, lines.append))
    try:
        await eventually(
            lambda: any("standing by" in line for line in lines), what="the sequencer standing by"
        )
        assert holder.log.size() == 0
        holder.close()  # the other sequencer goes away
        log = AuditLog(settings.db_url)
        await eventually(log.size, until=lambda n: n == 30, what="the 30 events integrated")
        log.close()
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        registry.close()


async def test_the_stack_sequencer_stops_loudly_on_a_tampered_tree(
    storage: Storage, tmp_path: Path
) -> None:
    settings = storage.settings(tmp_path / "istmo")
    settings.data_dir.mkdir()
    registry = Registry(settings.db_url)
    registry.record([], events(64))
    seq = open_sequencer(settings, out=lambda _: None)
    seq.drain()
    seq.close()
    _drop_triggers(registry.engine)
    with registry.engine.begin() as conn:
        conn.execute(text("UPDATE merkle_node SET hash = :h WHERE level = 6"), {"h": bytes(32)})
    registry.record([], events(5, 64))
    lines: list[str] = []
    # It returns (the broker goes on serving) after one loud line; events stay in the outbox.
    await asyncio.wait_for(run_in_stack(settings, asyncio.Event(), lines.append), 10)
    assert any(line.startswith("sequencer: STOPPED: ") for line in lines), lines
    log = AuditLog(settings.db_url)
    assert (log.size(), log.pending()) == (64, 5)
    log.close()
    registry.close()
