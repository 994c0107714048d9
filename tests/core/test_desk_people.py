"""The desk's analysts (clients.desk_people) and sessions (clients.desk_web.DeskState) on a
real archive file: password hashing, lockout, roles, session expiry, the access log's
chain and what breaking it looks like."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from clients.archive import Archive
from clients.archive_keys import ArchiveSecret
from clients.desk_people import (
    LOCK_SECONDS,
    MAX_FAILURES,
    DeskPeople,
    check_name,
    hash_password,
    locked_for,
    verify_password,
)
from clients.desk_web import DeskState
from schemas.errors import ConfigError

KEYFILE = ArchiveSecret("key-file", bytes(range(32)))
PW = "correct horse battery"
BID = "00000000-0000-4000-8000-000000000001"
T0 = 1_800_000_000


@pytest.fixture
def archive(tmp_path: Path):
    a = Archive.open(tmp_path / "a.sqlite", "sv-police", lambda: KEYFILE)
    yield a
    a.close()


@pytest.fixture
def people(archive: Archive):
    p = DeskPeople(archive.path, archive.subkey("desk-log"))
    yield p
    p.close()


def test_password_hash_round_trip_and_salted() -> None:
    one, two = hash_password(PW), hash_password(PW)
    assert one != two  # a fresh salt each time
    assert one.startswith("scrypt$32768$8$1$")
    assert verify_password(one, PW)
    assert not verify_password(one, PW + "x")
    assert PW not in one


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "bcrypt$1$2$3$00$00",
        "scrypt$32768$8$1$zz$00",
        "scrypt$2$8$1$00$00",  # a cost below the floor verifies nothing
        "scrypt$32768$8$1$00",
    ],
)
def test_damaged_hash_verifies_nothing(stored: str) -> None:
    assert not verify_password(stored, PW)


@pytest.mark.parametrize(
    ("failures", "until", "now", "locked"),
    [
        (0, 0, T0, 0),
        (MAX_FAILURES - 1, 0, T0, 0),
        (MAX_FAILURES, T0 + 60, T0, 60),
        (MAX_FAILURES, T0, T0, 0),  # the lock ran out
    ],
)
def test_locked_for(failures: int, until: int, now: int, locked: int) -> None:
    assert locked_for(failures, until, now) == locked


@pytest.mark.parametrize("name", ["a", "Ana", "ana perez", "-ana", "x" * 33, "ana/..", ""])
def test_bad_names_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="not an analyst name"):
        check_name(name)


def test_accounts_roles_and_refusals(people: DeskPeople) -> None:
    people.add("ana", "reader", PW, now=T0)
    people.add("ben", "releaser", PW, now=T0)
    assert [(a.name, a.role, a.active) for a in people.analysts()] == [
        ("ana", "reader", True),
        ("ben", "releaser", True),
    ]
    with pytest.raises(ConfigError, match="already"):
        people.add("ana", "reader", PW)
    with pytest.raises(ConfigError, match="no role"):
        people.add("cid", "admin", PW)
    with pytest.raises(ConfigError, match="12 to"):
        people.add("cid", "reader", "short")
    assert people.authenticate("ana", PW, now=T0) is None
    assert people.authenticate("nobody", PW, now=T0) == "unknown"
    people.disable("ana")
    assert people.authenticate("ana", PW, now=T0) == "disabled"
    assert not people.is_active("ana")
    with pytest.raises(ConfigError, match="no analyst"):
        people.disable("nobody")


def test_lockout_after_failures_then_it_lifts(people: DeskPeople) -> None:
    people.add("ana", "reader", PW, now=T0)
    for _ in range(MAX_FAILURES):
        assert people.authenticate("ana", "wrong password!", now=T0) == "password"
    # Locked: even the right password is refused until the lock runs out.
    assert people.authenticate("ana", PW, now=T0 + 1) == "locked"
    assert people.authenticate("ana", PW, now=T0 + LOCK_SECONDS + 1) is None
    # A success cleared the count: one failure does not lock again.
    assert people.authenticate("ana", "wrong password!", now=T0 + LOCK_SECONDS + 2) == "password"
    assert people.authenticate("ana", PW, now=T0 + LOCK_SECONDS + 3) is None


def test_sessions_expire_idle_and_absolute(archive: Archive, people: DeskPeople) -> None:
    now = [1000.0]
    state = DeskState(
        archive, people, frozenset({"h:1"}), idle=60, absolute=300, clock=lambda: now[0]
    )
    token = state.start("ana", "reader")
    assert state.session_of(token) is not None
    assert state.session_of(token + "x") is None
    now[0] += 59
    assert state.session_of(token) is not None  # each request restarts the idle clock
    now[0] += 61
    assert state.session_of(token) is None  # idle too long
    token = state.start("ana", "reader")
    for _ in range(7):  # 350 s, past 300
        now[0] += 50
        got = state.session_of(token)
    assert got is None  # active all along, but past the absolute limit
    token = state.start("ana", "reader")
    state.end_all("ana")
    assert state.session_of(token) is None


def test_log_chain_verifies_and_holds_no_content(people: DeskPeople) -> None:
    people.record("ana", "sign-in", None, now=T0)
    people.record("ana", "open", BID, now=T0 + 1)
    people.record("ana", "flag", BID, now=T0 + 2)
    check = people.verify()
    assert check.ok
    assert check.entries == 3
    assert [r[3] for r in people.entries(analyst="ana")] == ["flag", "open", "sign-in"]
    with pytest.raises(ValueError, match="by its id only"):
        people.record("ana", "open", "Cocaine shipment in Puerto Barrios")
    with pytest.raises(ValueError, match="no desk action"):
        people.record("ana", "shred", None)  # type: ignore[arg-type]  # not an action


def _tamper(archive: Archive, sql: str) -> None:
    with sqlite3.connect(archive.path) as db:
        db.execute(sql)


@pytest.mark.parametrize(
    ("attack", "first_bad", "reason"),
    [
        ("UPDATE desk_log SET analyst = 'ben' WHERE seq = 2", 2, "altered"),
        ("UPDATE desk_log SET at = at + 1 WHERE seq = 1", 1, "altered"),
        ("DELETE FROM desk_log WHERE seq = 2", 2, "missing"),
        ("DELETE FROM desk_log WHERE seq = 3", 3, "cut from the end"),
        ("DELETE FROM meta WHERE k = 'desk_log_head'", 1, "without a head"),
    ],
)
def test_tampered_log_detected(
    archive: Archive, people: DeskPeople, attack: str, first_bad: int, reason: str
) -> None:
    for n in range(3):
        people.record("ana", "open", BID, now=T0 + n)
    assert people.verify().ok
    _tamper(archive, attack)
    check = people.verify()
    assert not check.ok
    assert check.first_bad == first_bad
    assert reason in (check.reason or "")


def test_log_cannot_be_rewritten_without_the_archive_key(
    archive: Archive, people: DeskPeople
) -> None:
    """An attacker who rebuilds the chain under another key is caught: the key comes from
    the archive key, which needs the passphrase or key file."""
    people.record("ana", "open", BID, now=T0)
    forger = DeskPeople(archive.path, b"\x01" * 32)
    try:
        forger.record("mallory", "open", BID, now=T0 + 1)
    finally:
        forger.close()
    check = people.verify()
    assert not check.ok
    assert check.first_bad == 2
