"""Console sessions, one-time session links and CSRF tokens, kept server-side (in the
broker's database, so every API replica knows them and a restart signs nobody out).

A session is made only from an identity the API already trusts: a caller holding a valid
bearer token (``POST /console/session-link`` gives a one-time link, 60 s, single use) or,
under ``istmo up`` alone, the development login. The browser holds only a random session
id in an HTTP-only, SameSite=Strict cookie; the store keeps its SHA-256, the caller, the
scopes, a CSRF token and two expiries (idle and absolute). Every secret comparison is
constant-time; every store is bounded (the oldest entries go first). A session's idle
clock is written back at most once a minute (``TOUCH_EVERY_S``), not on every request.

Left to others: cookies and HTTP (``broker.console.web``), who may have a session
(``broker.console.auth``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func
from sqlmodel import col, select

from broker.store.registry import ConsoleLinkRow, ConsoleSessionRow, Registry

__all__ = [
    "LINK_LIFETIME_S",
    "LinkStore",
    "Session",
    "SessionStore",
    "csrf_ok",
    "new_secret",
]

LINK_LIFETIME_S = 60
SESSION_IDLE_S = 30 * 60
SESSION_MAX_S = 8 * 3600
MAX_SESSIONS = 10_000
MAX_LINKS = 10_000
SECRET_BYTES = 32
MAX_SECRET_CHARS = 64  # anything longer than a token we issue is refused unread
TOUCH_EVERY_S = 60  # how stale a session's stored idle clock may get


def new_secret() -> str:
    """A fresh random token, URL-safe (256 bits)."""
    return secrets.token_urlsafe(SECRET_BYTES)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def csrf_ok(expected: str, sent: str | None) -> bool:
    """Constant-time comparison of a CSRF token (False for none or an oversized one)."""
    if not sent or len(sent) > MAX_SECRET_CHARS or not expected:
        return False
    return hmac.compare_digest(expected.encode(), sent.encode("utf-8", "replace"))


@dataclass
class Session:
    """A signed-in console user.

    Attributes:
        who: the agency or administrator id.
        kind: ``agency`` or ``admin`` (as in access tokens).
        scopes: the scopes the identity had when the session began (``audit:read``,
            ``admin``); the holder's status is checked again on every request.
        csrf: the synchronizer token every state-changing form must carry.
        via: how it signed in (``link`` or ``dev``).
        created: epoch seconds.
        expires: absolute end, epoch seconds.
        last_seen: epoch seconds of the last request (idle expiry).
    """

    who: str
    kind: str
    scopes: frozenset[str]
    csrf: str = field(repr=False)
    via: str
    created: float
    expires: float
    last_seen: float
    sid_hash: str = field(repr=False, default="")


def _delete(s: Any, where: Any, table: Any) -> int:
    """DELETE the rows of ``table`` matching ``where`` in session ``s``; how many went."""
    result = s.execute(delete(table).where(where))
    return int(result.rowcount or 0)


class SessionStore:
    """Sessions by the SHA-256 of their id, with idle and absolute expiry, in the
    registry's database (table ``console_session``)."""

    def __init__(
        self,
        registry: Registry,
        *,
        idle_s: float = SESSION_IDLE_S,
        max_s: float = SESSION_MAX_S,
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        self.registry = registry
        self.idle_s = idle_s
        self.max_s = max_s
        self.max_sessions = max_sessions

    def create(
        self, who: str, kind: str, scopes: frozenset[str], via: str, now: float | None = None
    ) -> tuple[str, Session]:
        """A new session; returns its id (for the cookie, never stored) and the session."""
        now = time.time() if now is None else now
        sid = new_secret()
        session = Session(
            who=who,
            kind=kind,
            scopes=scopes,
            csrf=new_secret(),
            via=via,
            created=now,
            expires=now + self.max_s,
            last_seen=now,
            sid_hash=_digest(sid),
        )
        with self.registry.session() as s:
            s.add(
                ConsoleSessionRow(
                    sid_hash=session.sid_hash,
                    who=who,
                    kind=kind,
                    scopes=" ".join(sorted(scopes)),
                    csrf=session.csrf,
                    via=via,
                    created=_ms(now),
                    expires=_ms(session.expires),
                    last_seen=_ms(now),
                )
            )
            s.commit()
            self._prune(s, now)
        return sid, session

    def _prune(self, s: Any, now: float) -> None:
        """Drop expired sessions, then the least recently seen beyond ``max_sessions``."""
        s.execute(
            delete(ConsoleSessionRow).where(
                (col(ConsoleSessionRow.expires) <= _ms(now))
                | (col(ConsoleSessionRow.last_seen) <= _ms(now - self.idle_s))
            )
        )
        over = s.exec(select(func.count()).select_from(ConsoleSessionRow)).one()
        over = int(over) - self.max_sessions
        if over > 0:
            oldest = select(ConsoleSessionRow.sid_hash).order_by(
                col(ConsoleSessionRow.last_seen), col(ConsoleSessionRow.sid_hash)
            )
            gone = list(s.exec(oldest.limit(over)))
            s.execute(delete(ConsoleSessionRow).where(col(ConsoleSessionRow.sid_hash).in_(gone)))
        s.commit()

    def get(self, sid: str | None, now: float | None = None) -> Session | None:
        """The live session of ``sid``, its idle clock restarted; None if none or expired."""
        if not sid or len(sid) > MAX_SECRET_CHARS:
            return None
        now = time.time() if now is None else now
        h = _digest(sid)
        with self.registry.session() as s:
            row = s.get(ConsoleSessionRow, h)
            if row is None or not hmac.compare_digest(row.sid_hash, h):
                return None
            if _ms(now) >= row.expires or _ms(now) - row.last_seen >= _ms(self.idle_s):
                s.delete(row)
                s.commit()
                return None
            if _ms(now) - row.last_seen >= _ms(min(TOUCH_EVERY_S, self.idle_s / 2)):
                row.last_seen = _ms(now)
                s.add(row)
                s.commit()
            return Session(
                who=row.who,
                kind=row.kind,
                scopes=frozenset(row.scopes.split()),
                csrf=row.csrf,
                via=row.via,
                created=row.created / 1000,
                expires=row.expires / 1000,
                last_seen=now,
                sid_hash=row.sid_hash,
            )

    def end(self, sid: str | None) -> bool:
        """End the session of ``sid`` (sign out); whether there was one."""
        if not sid or len(sid) > MAX_SECRET_CHARS:
            return False
        with self.registry.session() as s:
            done = _delete(s, col(ConsoleSessionRow.sid_hash) == _digest(sid), ConsoleSessionRow)
            s.commit()
            return done > 0

    def end_all(self, who: str) -> int:
        """End every session of ``who`` (after a suspension, say); returns how many."""
        with self.registry.session() as s:
            done = _delete(s, col(ConsoleSessionRow.who) == who, ConsoleSessionRow)
            s.commit()
            return done

    def __len__(self) -> int:
        with self.registry.session() as s:
            return int(s.exec(select(func.count()).select_from(ConsoleSessionRow)).one())


class LinkStore:
    """One-time sign-in codes: SHA-256 stored (table ``console_link``),
    ``LINK_LIFETIME_S`` to live, spent on use by whichever API replica sees it first."""

    def __init__(
        self,
        registry: Registry,
        *,
        lifetime_s: float = LINK_LIFETIME_S,
        max_links: int = MAX_LINKS,
    ) -> None:
        self.registry = registry
        self.lifetime_s = lifetime_s
        self.max_links = max_links

    def issue(self, who: str, kind: str, scopes: frozenset[str], now: float | None = None) -> str:
        """A new code for ``who`` (shown once; only its hash is kept)."""
        now = time.time() if now is None else now
        code = new_secret()
        with self.registry.session() as s:
            s.execute(delete(ConsoleLinkRow).where(col(ConsoleLinkRow.expires) <= _ms(now)))
            s.add(
                ConsoleLinkRow(
                    code_hash=_digest(code),
                    who=who,
                    kind=kind,
                    scopes=" ".join(sorted(scopes)),
                    expires=_ms(now + self.lifetime_s),
                )
            )
            s.commit()
            over = int(s.exec(select(func.count()).select_from(ConsoleLinkRow)).one())
            if over > self.max_links:
                oldest = select(ConsoleLinkRow.code_hash).order_by(
                    col(ConsoleLinkRow.expires), col(ConsoleLinkRow.code_hash)
                )
                gone = list(s.exec(oldest.limit(over - self.max_links)))
                s.execute(delete(ConsoleLinkRow).where(col(ConsoleLinkRow.code_hash).in_(gone)))
                s.commit()
        return code

    def redeem(self, code: str | None, now: float | None = None) -> tuple[str, str, frozenset[str]]:
        """Spend ``code``: (who, kind, scopes).

        Raises:
            LookupError: unknown, already used, or expired (one message for all three).
        """
        refused = LookupError("this sign-in link is not valid: it was used, expired or mistyped")
        if not code or len(code) > MAX_SECRET_CHARS:
            raise refused
        now = time.time() if now is None else now
        h = _digest(code)
        with self.registry.session() as s:
            row = s.get(ConsoleLinkRow, h)
            if row is None:
                raise refused
            # Spent whatever happens next; of two replicas redeeming it at once, only the
            # one whose delete removed the row may use it.
            done = _delete(s, col(ConsoleLinkRow.code_hash) == h, ConsoleLinkRow)
            s.commit()
        if not done or not hmac.compare_digest(row.code_hash, h):
            raise refused
        if _ms(now) >= row.expires:
            raise refused
        return row.who, row.kind, frozenset(row.scopes.split())
