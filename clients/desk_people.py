"""The desk's analysts and its record of who did what, kept in the agency's archive file.

Accounts are local to the agency: a name, a role (``reader``, ``drafter``, ``releaser``),
a password hashed with scrypt (a fresh 16-byte salt, the cost stored with the hash so it
can rise later), whether the account is active, and the failed sign-ins that lock it
(``MAX_FAILURES`` in a row lock it for ``LOCK_SECONDS``). Every role reads and flags;
drafters and releasers compose, answer and ask (a draft), releasers release another's
draft (ADR 27).

The access log is a hash chain of entries (when, who, what action, which bulletin id:
never a title, body, search words or password), each MAC'd with HMAC-SHA256 under a key
derived from the archive key over the entry and the previous entry's MAC. Someone who
can write the file but lacks the passphrase or key file can neither alter, drop nor
insert an entry unseen, nor cut the chain's tail, because the last MAC and the count are
also kept sealed in ``meta``. ``verify`` walks it. The pure parts (hashing, the lockout
rule, an entry's MAC) take ``now`` and keys as arguments; ``DeskPeople`` is the SQLite
shell. What an analyst may see on a page is the web app's (``clients.desk_web``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, get_args

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from schemas.errors import ConfigError

__all__ = [
    "ACTIONS",
    "LOCK_SECONDS",
    "MAX_FAILURES",
    "ROLES",
    "Action",
    "Analyst",
    "DeskPeople",
    "LogCheck",
    "check_name",
    "check_password",
    "entry_mac",
    "hash_password",
    "locked_for",
    "open_desk_tables",
    "verify_password",
]

Role = Literal["reader", "drafter", "releaser"]
ROLES: Final[tuple[str, ...]] = get_args(Role)
Action = Literal[
    "sign-in",
    "sign-in-refused",
    "sign-out",
    "request-refused",
    "open",
    "flag",
    "unflag",
    "mark-read",
    "mark-unread",
    "download",
    "print",
    "sync",
    "sync-auto",
    "notify-webhook",
    "notify-email",
    "notify-failed",
    "compose",
    "answer",
    "ask",
    "release",
    "release-failed",
    "discard",
    "acknowledge",
    "account-added",
    "account-disabled",
    "account-notify",
]
ACTIONS: Final[tuple[str, ...]] = get_args(Action)
MAX_FAILURES: Final = 5
LOCK_SECONDS: Final = 15 * 60
MIN_PASSWORD = 12
MAX_PASSWORD = 1024
SCRYPT_COST: Final = (2**15, 8, 1)  # n, r, p: 32 MiB, 0.2 s a hash on the test machine
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,31}$")
_BULLETIN = re.compile(r"^[0-9a-f-]{36}$")
_GENESIS = b"\x00" * 32

_SCHEMA = """
CREATE TABLE IF NOT EXISTS desk_analysts (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    password TEXT NOT NULL,
    active INTEGER NOT NULL DEFAULT 1,
    failures INTEGER NOT NULL DEFAULT 0,
    locked_until INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS desk_log (
    seq INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    analyst TEXT NOT NULL,
    action TEXT NOT NULL,
    bulletin TEXT,
    mac BLOB NOT NULL
);
"""


# ---------------------------------------------------------------------- pure
def check_name(name: str) -> str:
    """``name`` if it is an analyst name (2-32 of a-z, 0-9, ``.``, ``_``, ``-``).

    Raises:
        ConfigError: it is not.
    """
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"{name[:40]!r} is not an analyst name",
            hint="use 2 to 32 lower-case letters, digits, '.', '_' or '-', e.g. ana.perez",
        )
    return name


def check_password(password: str) -> str:
    """``password`` if it is long enough (12 characters) and not absurdly long.

    Raises:
        ConfigError: it is not.
    """
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ConfigError(
            f"a password is {MIN_PASSWORD} to {MAX_PASSWORD} characters",
            hint="a few unrelated words make a long password that is easy to type",
        )
    return password


def hash_password(
    password: str, *, salt: bytes | None = None, cost: tuple[int, int, int] = SCRYPT_COST
) -> str:
    """``password`` hashed for storage: ``scrypt$n$r$p$salt-hex$hash-hex``."""
    salt = os.urandom(16) if salt is None else salt
    n, r, p = cost
    digest = Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(password.encode())
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def verify_password(stored: str, password: str) -> bool:
    """Whether ``password`` is the one ``stored`` was hashed from (constant-time compare).
    A damaged or unknown stored value verifies nothing."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt" or len(password) > MAX_PASSWORD:
        return False
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, want = bytes.fromhex(parts[4]), bytes.fromhex(parts[5])
    except ValueError:
        return False
    if not (2**14 <= n <= 2**20 and 1 <= r <= 32 and 1 <= p <= 16):
        return False
    got = Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(password.encode())
    return hmac.compare_digest(got, want)


def locked_for(failures: int, locked_until: int, now: int) -> int:
    """Seconds an account stays locked (0: it is not), given its failures in a row."""
    if failures >= MAX_FAILURES and locked_until > now:
        return locked_until - now
    return 0


def entry_mac(
    key: bytes, prev: bytes, seq: int, at: int, analyst: str, action: str, bulletin: str | None
) -> bytes:
    """An access-log entry's MAC: HMAC-SHA256 over the previous MAC and the entry."""
    body = json.dumps(
        [seq, at, analyst, action, bulletin], separators=(",", ":"), ensure_ascii=True
    ).encode()
    return hmac.new(key, b"istmo/v1/desk-log\x00" + prev + body, hashlib.sha256).digest()


@dataclass(frozen=True)
class Analyst:
    name: str
    role: str
    active: bool
    failures: int
    locked_until: int
    created_at: int


@dataclass(frozen=True)
class LogCheck:
    """What ``DeskPeople.verify`` found: the entries checked and the first bad one."""

    entries: int
    first_bad: int | None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.first_bad is None


# ---------------------------------------------------------------------- shell
def open_desk_tables(path: Path, schema: str) -> sqlite3.Connection:
    """A connection of the desk's own to the archive file at ``path`` (the archive's is
    the archive's), with the desk's tables of ``schema`` created if missing. Writes wait
    for one another and are durable, as the archive's are.

    Raises:
        ConfigError: ``path`` is not an SQLite file.
    """
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout = 10000")
        db.execute("PRAGMA synchronous = FULL")
        db.executescript(schema)
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{path} is not an Istmo archive ({exc})") from exc
    return db


class DeskPeople:
    """The analysts and the access log in an archive file (its own SQLite connection).

    Args:
        path: the archive file, already opened once by ``clients.archive.Archive`` (which
            checked its mode and its key).
        log_key: ``Archive.subkey("desk-log")``.
    """

    def __init__(self, path: Path, log_key: bytes) -> None:
        self._key = log_key
        self._dummy = hash_password("not anyone's password")
        self._db = open_desk_tables(path, _SCHEMA)

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ accounts
    def add(self, name: str, role: str, password: str, *, now: int | None = None) -> None:
        """Add an analyst.

        Raises:
            ConfigError: a bad name, role or password, or the name is taken.
        """
        check_name(name)
        check_password(password)
        if role not in ROLES:
            raise ConfigError(f"no role {role[:20]!r}", hint=f"roles are {', '.join(ROLES)}")
        at = int(time.time()) if now is None else now
        try:
            self._db.execute(
                "INSERT INTO desk_analysts (name, role, password, created_at) VALUES (?, ?, ?, ?)",
                (name, role, hash_password(password), at),
            )
        except sqlite3.IntegrityError as exc:
            raise ConfigError(
                f"there is an analyst {name} already",
                hint="pick another name, or `istmo desk user list` to see who there is",
            ) from exc
        self.record("-", "account-added", None, now=at, subject=name)

    def analysts(self) -> list[Analyst]:
        rows = self._db.execute(
            "SELECT name, role, active, failures, locked_until, created_at"
            " FROM desk_analysts ORDER BY name"
        )
        return [Analyst(r[0], r[1], bool(r[2]), r[3], r[4], r[5]) for r in rows]

    def analyst(self, name: str) -> Analyst | None:
        row = self._db.execute(
            "SELECT name, role, active, failures, locked_until, created_at"
            " FROM desk_analysts WHERE name = ?",
            (name,),
        ).fetchone()
        return None if row is None else Analyst(row[0], row[1], bool(row[2]), *row[3:])

    def disable(self, name: str, *, now: int | None = None) -> None:
        """Disable an analyst: no sign-in, and open sessions end at their next request.

        Raises:
            ConfigError: no such analyst.
        """
        cur = self._db.execute("UPDATE desk_analysts SET active = 0 WHERE name = ?", (name,))
        if cur.rowcount != 1:
            raise ConfigError(
                f"there is no analyst {name[:40]}", hint="`istmo desk user list` shows them"
            )
        self.record("-", "account-disabled", None, now=now, subject=name)

    def authenticate(self, name: str, password: str, *, now: int | None = None) -> str | None:
        """Check a sign-in; None if it succeeds, else the reason it is refused
        (``unknown``, ``disabled``, ``locked``, ``password``). The caller shows one
        uniform message whatever the reason; the reason goes to the access log.

        A wrong password counts a failure; the ``MAX_FAILURES``-th in a row locks the
        account for ``LOCK_SECONDS``; a success clears the count. An unknown name costs
        the same scrypt as a known one."""
        at = int(time.time()) if now is None else now
        row = self._db.execute(
            "SELECT password, active, failures, locked_until FROM desk_analysts WHERE name = ?",
            (name,),
        ).fetchone()
        if row is None:
            verify_password(self._dummy, password)
            return "unknown"
        stored, active, failures, locked_until = row
        good = verify_password(stored, password)
        if not active:
            return "disabled"
        if locked_for(failures, locked_until, at):
            return "locked"
        if not good:
            failures += 1
            until = at + LOCK_SECONDS if failures >= MAX_FAILURES else 0
            self._db.execute(
                "UPDATE desk_analysts SET failures = ?, locked_until = ? WHERE name = ?",
                (failures, until, name),
            )
            return "password"
        self._db.execute(
            "UPDATE desk_analysts SET failures = 0, locked_until = 0 WHERE name = ?", (name,)
        )
        return None

    def is_active(self, name: str) -> bool:
        row = self._db.execute("SELECT active FROM desk_analysts WHERE name = ?", (name,))
        found = row.fetchone()
        return found is not None and bool(found[0])

    # ------------------------------------------------------------------ the access log
    def record(
        self,
        analyst: str,
        action: Action,
        bulletin: str | None,
        *,
        now: int | None = None,
        subject: str | None = None,
    ) -> int:
        """Append an entry; its sequence number. ``bulletin`` is an id (checked), never
        content; ``subject`` names the account an account action is about."""
        if action not in ACTIONS:
            raise ValueError(f"no desk action {action!r}")
        if bulletin is not None and not _BULLETIN.fullmatch(bulletin):
            raise ValueError("a desk log entry names a bulletin by its id only")
        who = analyst if subject is None else f"{analyst}>{subject}"
        at = int(time.time()) if now is None else now
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            last = db.execute("SELECT seq, mac FROM desk_log ORDER BY seq DESC LIMIT 1")
            row = last.fetchone()
            seq, prev = (1, _GENESIS) if row is None else (row[0] + 1, bytes(row[1]))
            mac = entry_mac(self._key, prev, seq, at, who[:80], action, bulletin)
            db.execute(
                "INSERT INTO desk_log (seq, at, analyst, action, bulletin, mac)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (seq, at, who[:80], action, bulletin, mac),
            )
            head = hmac.new(self._key, b"head" + seq.to_bytes(8, "big") + mac, "sha256")
            db.execute(
                "INSERT OR REPLACE INTO meta (k, v) VALUES ('desk_log_head', ?)",
                (json.dumps({"seq": seq, "mac": mac.hex(), "tag": head.hexdigest()}),),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return seq

    def entries(
        self, *, analyst: str | None = None, limit: int = 100
    ) -> list[tuple[int, int, str, str, str | None]]:
        """The newest entries (seq, at, analyst, action, bulletin), newest first."""
        cond, params = ("analyst = ?", [analyst]) if analyst else ("1", [])
        rows = self._db.execute(
            f"SELECT seq, at, analyst, action, bulletin FROM desk_log WHERE {cond}"  # noqa: S608 -- one of two fixed strings
            " ORDER BY seq DESC LIMIT ?",
            [*params, max(1, min(limit, 1000))],
        )
        return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    # ------------------------------------------------------------------ summaries (ADR 31)
    @property
    def log_key(self) -> bytes:
        """The access log's key (the pseudonyms and the log id of summaries derive from it)."""
        return self._key

    def _summary_state(self) -> dict[str, int | str]:
        row = self._db.execute("SELECT v FROM meta WHERE k = 'desk_log_summarised'").fetchone()
        state: dict[str, int | str] = {"seq": 0, "mac": _GENESIS.hex(), "at": 0, "chain": 0}
        if row is not None:
            state |= json.loads(row[0])
        return state

    def _set_summary_state(self, state: dict[str, int | str]) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO meta (k, v) VALUES ('desk_log_summarised', ?)",
            (json.dumps(state),),
        )

    def summarised(self) -> tuple[int, str, int]:
        """How far the log was summarised to the broker: the last entry, its MAC (hex;
        zeros for none) and when (epoch seconds; 0 for never)."""
        got = self._summary_state()
        return int(got["seq"]), str(got["mac"]), int(got["at"])

    def summary_chain(self) -> int:
        """The number of the chain of summaries the desk sends (0 at first)."""
        return int(self._summary_state()["chain"])

    def mark_summarised(self, seq: int, mac: str, *, now: int | None = None) -> None:
        """Remember that the broker recorded the summary up to entry ``seq`` (MAC ``mac``).
        Not sealed: an edit only makes the next summary one the broker refuses."""
        at = int(time.time()) if now is None else now
        self._set_summary_state(self._summary_state() | {"seq": seq, "mac": mac, "at": at})

    def new_summary_chain(self) -> int:
        """Start a new chain of summaries from entry 1 (the broker refuses to continue the
        old one: the archive was restored from a backup older than the last summary);
        the new chain's number. The broker keeps both, so the restart shows."""
        chain = self.summary_chain() + 1
        self._set_summary_state({"seq": 0, "mac": _GENESIS.hex(), "at": 0, "chain": chain})
        return chain

    def rows_after(self, after: int, limit: int) -> list[tuple[int, int, str, str, bytes]]:
        """Entries after ``after`` (seq, at, analyst, action, mac), oldest first."""
        rows = self._db.execute(
            "SELECT seq, at, analyst, action, mac FROM desk_log WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, max(1, limit)),
        )
        return [(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows]

    def mac_at(self, seq: int) -> str | None:
        """The chain MAC of entry ``seq`` (hex), to compare with a summary's ``head_mac``."""
        row = self._db.execute("SELECT mac FROM desk_log WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else bytes(row[0]).hex()

    def waiting(self) -> int:
        """Entries not summarised yet."""
        after = self.summarised()[0]
        row = self._db.execute("SELECT COUNT(*) FROM desk_log WHERE seq > ?", (after,)).fetchone()
        return int(row[0])

    def verify(self) -> LogCheck:
        """Walk the chain from the start: every MAC, the numbering, and the sealed head."""
        prev, count, expected = _GENESIS, 0, 1
        rows: Sequence[tuple[int, int, str, str, str | None, bytes]]
        cur = self._db.execute(
            "SELECT seq, at, analyst, action, bulletin, mac FROM desk_log ORDER BY seq"
        )
        while rows := cur.fetchmany(500):
            for seq, at, who, action, bulletin, mac in rows:
                if seq != expected:
                    return LogCheck(count, expected, "an entry is missing")
                want = entry_mac(self._key, prev, seq, at, who, action, bulletin)
                if not hmac.compare_digest(want, bytes(mac)):
                    return LogCheck(count, seq, "the entry was altered")
                prev, count, expected = bytes(mac), count + 1, seq + 1
        row = self._db.execute("SELECT v FROM meta WHERE k = 'desk_log_head'").fetchone()
        if row is None:
            return LogCheck(0, 1, "entries without a head") if count else LogCheck(0, None)
        try:
            head = json.loads(row[0])
            seq, mac = int(head["seq"]), bytes.fromhex(head["mac"])
            tag = hmac.new(self._key, b"head" + seq.to_bytes(8, "big") + mac, "sha256")
            sound = hmac.compare_digest(tag.hexdigest(), str(head["tag"]))
        except (ValueError, KeyError, TypeError):
            sound = False
        if not sound:
            return LogCheck(count, count or 1, "the log's head was altered")
        if seq != count or mac != prev:
            return LogCheck(count, min(seq, count) + 1, "entries were cut from the end")
        return LogCheck(count, None)
