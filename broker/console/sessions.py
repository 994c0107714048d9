"""Console sessions, one-time session links and CSRF tokens, kept server-side.

A session is made only from an identity the API already trusts: a caller holding a valid
bearer token (``POST /console/session-link`` gives a one-time link, 60 s, single use) or,
under ``istmo up`` alone, the development login. The browser holds only a random session
id in an HTTP-only, SameSite=Strict cookie; the store keeps its SHA-256, the caller, the
scopes, a CSRF token and two expiries (idle and absolute). Every secret comparison is
constant-time; every store is bounded (the oldest entries go first).

Left to others: cookies and HTTP (``broker.console.web``), who may have a session
(``broker.console.auth``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

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


def new_secret() -> str:
    """A fresh random token, URL-safe (256 bits)."""
    return secrets.token_urlsafe(SECRET_BYTES)


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "replace")).digest()


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
    sid_hash: bytes = field(repr=False, default=b"")


class SessionStore:
    """Sessions by the SHA-256 of their id, with idle and absolute expiry. Thread-safe."""

    def __init__(
        self,
        *,
        idle_s: float = SESSION_IDLE_S,
        max_s: float = SESSION_MAX_S,
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        self.idle_s = idle_s
        self.max_s = max_s
        self.max_sessions = max_sessions
        self._by_hash: OrderedDict[bytes, Session] = OrderedDict()
        self._lock = threading.Lock()

    def create(
        self, who: str, kind: str, scopes: frozenset[str], via: str, now: float | None = None
    ) -> tuple[str, Session]:
        """A new session; returns its id (for the cookie, never stored) and the session."""
        now = time.time() if now is None else now
        sid = new_secret()
        h = _digest(sid)
        session = Session(
            who=who,
            kind=kind,
            scopes=scopes,
            csrf=new_secret(),
            via=via,
            created=now,
            expires=now + self.max_s,
            last_seen=now,
            sid_hash=h,
        )
        with self._lock:
            self._by_hash[h] = session
            while len(self._by_hash) > self.max_sessions:
                self._by_hash.popitem(last=False)
        return sid, session

    def get(self, sid: str | None, now: float | None = None) -> Session | None:
        """The live session of ``sid``, its idle clock restarted; None if none or expired."""
        if not sid or len(sid) > MAX_SECRET_CHARS:
            return None
        now = time.time() if now is None else now
        h = _digest(sid)
        with self._lock:
            session = self._by_hash.get(h)
            if session is None or not hmac.compare_digest(session.sid_hash, h):
                return None
            if now >= session.expires or now - session.last_seen >= self.idle_s:
                del self._by_hash[h]
                return None
            session.last_seen = now
            self._by_hash.move_to_end(h)
            return session

    def end(self, sid: str | None) -> Session | None:
        """End the session of ``sid`` (sign out); returns it if there was one."""
        if not sid or len(sid) > MAX_SECRET_CHARS:
            return None
        with self._lock:
            return self._by_hash.pop(_digest(sid), None)

    def end_all(self, who: str) -> int:
        """End every session of ``who`` (after a suspension, say); returns how many."""
        with self._lock:
            gone = [h for h, s in self._by_hash.items() if s.who == who]
            for h in gone:
                del self._by_hash[h]
            return len(gone)

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_hash)


@dataclass(frozen=True)
class _Link:
    code_hash: bytes
    who: str
    kind: str
    scopes: frozenset[str]
    expires: float


class LinkStore:
    """One-time sign-in codes: SHA-256 stored, ``LINK_LIFETIME_S`` to live, spent on use."""

    def __init__(self, *, lifetime_s: float = LINK_LIFETIME_S, max_links: int = MAX_LINKS):
        self.lifetime_s = lifetime_s
        self.max_links = max_links
        self._by_hash: OrderedDict[bytes, _Link] = OrderedDict()
        self._lock = threading.Lock()

    def issue(self, who: str, kind: str, scopes: frozenset[str], now: float | None = None) -> str:
        """A new code for ``who`` (shown once; only its hash is kept)."""
        now = time.time() if now is None else now
        code = new_secret()
        h = _digest(code)
        with self._lock:
            self._prune(now)
            self._by_hash[h] = _Link(h, who, kind, scopes, now + self.lifetime_s)
            while len(self._by_hash) > self.max_links:
                self._by_hash.popitem(last=False)
        return code

    def redeem(self, code: str | None, now: float | None = None) -> tuple[str, str, frozenset[str]]:
        """Spend ``code``: (who, kind, scopes).

        Raises:
            LookupError: unknown, already used, or expired (one message for all three).
        """
        if not code or len(code) > MAX_SECRET_CHARS:
            raise LookupError("this sign-in link is not valid: it was used, expired or mistyped")
        now = time.time() if now is None else now
        h = _digest(code)
        with self._lock:
            link = self._by_hash.pop(h, None)  # spent whatever happens next
        if link is None or not hmac.compare_digest(link.code_hash, h) or now >= link.expires:
            raise LookupError("this sign-in link is not valid: it was used, expired or mistyped")
        return link.who, link.kind, link.scopes

    def _prune(self, now: float) -> None:
        for h in [h for h, link in self._by_hash.items() if now >= link.expires]:
            del self._by_hash[h]
