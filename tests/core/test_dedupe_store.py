"""The SDK's dedupe store commits what is queued a transaction at a time (group commit, on
its writer thread), shows queued records to every read before they are durable, fails
every future of a transaction that could not commit, and keeps what it committed across
a close. Real SQLite files; the writer is held back with a real write lock from a second
connection, and made to fail with a real trigger, never by replacing its code."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from clients.dedupe import DedupeStore, DedupeWriteError


@contextmanager
def write_locked(path: Path) -> Iterator[None]:
    """Another connection holds the database's write lock: the writer waits for it (its
    busy timeout), so nothing queued meanwhile is committed before this ends."""
    with closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            other.execute("COMMIT")


def handed(store: DedupeStore, n: int) -> list[str]:
    """Queue ``n`` bulletins handed over; their ids."""
    ids = [f"b-{i:03d}" for i in range(n)]
    for i, bid in enumerate(ids):
        store.queue_handed(bid, f"digest-{i}", 1_000 + i, "gt-police", b"sealed-" + bid.encode())
    return ids


def test_records_queued_together_are_committed_in_one_transaction(tmp_path: Path) -> None:
    path = tmp_path / "received.sqlite"
    store = DedupeStore(path)
    try:
        with write_locked(path):
            futures = [
                store.queue_handed(f"b-{i:03d}", f"d-{i}", 1_000 + i, "gt-police", b"sealed")
                for i in range(50)
            ]
            assert not any(f.done() for f in futures)  # not durable while the lock is held
        for f in futures:
            f.result(timeout=60)
        assert store.commits == 1
    finally:
        store.close()
    again = DedupeStore(path)
    try:
        assert again.count() == 50
        assert [again.handed_at(f"b-{i:03d}") for i in range(50)] == [1_000 + i for i in range(50)]
        assert again.held("b-049") == b"sealed"
    finally:
        again.close()


def test_queued_records_are_read_before_they_are_committed(tmp_path: Path) -> None:
    path = tmp_path / "received.sqlite"
    store = DedupeStore(path)
    try:
        store.handed("old", "d-old", 5, "gt-police", b"old envelope")  # durable on return
        with write_locked(path):
            record = store.queue_handed("new", "d-new", 7, "hn-police", b"new envelope")
            gone = store.queue_handed("gone", "d-gone", 8, "hn-police", b"gone envelope")
            withdrawal = store.queue_withdrawal("gone", "hn-police", 9)
            store.queue_withdrawal("old", "gt-police", 10)
            again = store.queue_handed("new", "d-later", 11, "sv-police", b"another")
            assert not record.done()
            assert store.handed_record("new") == (7, record)  # the first record counts
            assert store.handed_record("old") == (5, None)  # durable: nothing to wait for
            assert store.handed_record("never") == (None, None)
            assert store.handed_by("new") == (True, "hn-police")
            assert store.handed_by("never") == (False, None)
            assert store.seen("gone")
            assert store.held("new") == b"new envelope"
            assert store.held("gone") is None  # withdrawn after it was handed over
            assert store.held("old") is None  # committed, withdrawal queued
            assert store.withdrawn_by("gone") == "hn-police"
            assert store.withdrawn_by("new") is None
            assert store.count() == 3
        for f in (record, gone, withdrawal, again):
            f.result(timeout=60)
        # Committed: the same answers from the file.
        assert store.handed_record("new") == (7, None)
        assert store.handed_by("new") == (True, "hn-police")
        assert store.held("new") == b"new envelope"
        assert store.held("gone") is None
        assert store.held("old") is None
        assert store.withdrawn_by("gone") == "hn-police"
        assert store.withdrawn_by("old") == "gt-police"
        assert store.count() == 3
    finally:
        store.close()


def test_a_failed_commit_fails_every_record_of_it_and_keeps_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "received.sqlite"
    store = DedupeStore(path)
    try:
        with closing(sqlite3.connect(path, isolation_level=None)) as other:
            # A real failure inside the writer's transaction, on the third insert only.
            other.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON handed WHEN NEW.bulletin_id = 'b-002'"
                " BEGIN SELECT RAISE(ABORT, 'no room'); END"
            )
            with write_locked(path):  # the three in one transaction
                futures = [
                    store.queue_handed(f"b-{i:03d}", f"d-{i}", i, "gt-police", b"SECRET-sealed")
                    for i in range(3)
                ]
            for f in futures:
                with pytest.raises(DedupeWriteError):
                    f.result(timeout=60)
            # Not handed over as far as the store knows: each comes back and is handed again.
            assert [store.handed_at(f"b-{i:03d}") for i in range(3)] == [None, None, None]
            assert store.held("b-000") is None
            assert store.count() == 0
            with pytest.raises(DedupeWriteError):
                store.handed("b-002", "d", 1, "gt-police", b"x")  # the synchronous API too
            # The writer goes on once the cause is gone.
            other.execute("DROP TRIGGER refuse")
        store.handed("b-002", "d-2", 2, "gt-police", b"sealed")
        assert store.handed_at("b-002") == 2
    finally:
        store.close()
    failures = [r for r in caplog.records if "could not commit" in r.getMessage()]
    assert failures
    assert all("SECRET" not in r.getMessage() and "b-00" not in r.getMessage() for r in failures)
    again = DedupeStore(path)
    try:
        assert again.count() == 1
        assert again.handed_at("b-000") is None
    finally:
        again.close()


def test_close_commits_what_is_queued_and_a_reopened_store_has_it(tmp_path: Path) -> None:
    path = tmp_path / "received.sqlite"
    store = DedupeStore(path)
    ids = handed(store, 20)
    store.queue_withdrawal(ids[0], "gt-police", 99)
    store.close()  # without waiting for any future first
    store.close()  # a second close does nothing
    with pytest.raises(DedupeWriteError):
        store.queue_handed("late", "d", 1, "gt-police", b"x")
    again = DedupeStore(path)
    try:
        assert again.count() == 20
        assert again.handed_by(ids[5]) == (True, "gt-police")
        assert again.held(ids[5]) == b"sealed-" + ids[5].encode()
        assert again.held(ids[0]) is None
        assert again.withdrawn_by(ids[0]) == "gt-police"
        # The synchronous API of other callers, on the reopened file.
        again.remember("solo", "d-solo", 3)
        again.hold("solo", b"kept")
        again.remember_withdrawal("other", "sv-police", 4)
        assert again.handed_by("solo") == (True, None)
        assert again.held("solo") == b"kept"
        assert again.withdrawn_by("other") == "sv-police"
    finally:
        again.close()
