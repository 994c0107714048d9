"""The console's sessions and one-time links (in the registry's database, on both
engines), CSRF comparison, language choice, the catalogs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import select

from broker.console.i18n import negotiate
from broker.console.sessions import LinkStore, SessionStore, csrf_ok
from broker.store.registry import ConsoleSessionRow, Registry
from tests.storage_engines import Storage

AUDIT = frozenset({"audit:read"})


@pytest.fixture
def registry(storage: Storage, tmp_path: Path) -> Iterator[Registry]:
    """The registry's database on each engine (sessions and links live there)."""
    (tmp_path / "istmo").mkdir()
    reg = Registry(storage.url(tmp_path / "istmo"))
    try:
        yield reg
    finally:
        reg.close()


def test_session_idle_and_absolute_expiry(registry: Registry) -> None:
    store = SessionStore(registry, idle_s=100, max_s=1000)
    sid, s = store.create("auditor", "agency", AUDIT, "link", now=0)
    got = store.get(sid, now=99)  # restarts the idle clock
    assert got is not None
    assert (got.who, got.scopes, got.csrf) == ("auditor", AUDIT, s.csrf)
    assert store.get(sid, now=198) is not None
    assert store.get(sid, now=298) is None  # idle for 100 s
    sid, s = store.create("auditor", "agency", AUDIT, "link", now=0)
    for t in range(50, 1000, 50):
        assert store.get(sid, now=t) is not None
    assert store.get(sid, now=1000) is None  # 8 h (here 1000 s) at most, however active


def test_session_ids_are_random_and_not_stored(registry: Registry) -> None:
    store = SessionStore(registry)
    sid1, s1 = store.create("a", "agency", AUDIT, "link")
    sid2, _ = store.create("a", "agency", AUDIT, "link")
    assert sid1 != sid2
    assert len(sid1) >= 43
    assert sid1 not in s1.sid_hash
    assert sid1 not in repr(s1)
    assert s1.csrf not in repr(s1)
    with registry.session() as db:
        stored = [r.sid_hash for r in db.exec(select(ConsoleSessionRow))]
    assert s1.sid_hash in stored
    assert sid1 not in stored  # only its SHA-256
    assert store.get("x" * 65) is None
    assert store.get(sid1[:-1] + ("A" if sid1[-1] != "A" else "B")) is None


def test_session_store_is_bounded_and_ends(registry: Registry) -> None:
    store = SessionStore(registry, max_sessions=3)
    sids = [store.create(f"u{i}", "agency", AUDIT, "dev", now=100 + i)[0] for i in range(5)]
    assert len(store) == 3
    assert store.get(sids[0], now=110) is None  # the oldest went first
    assert store.get(sids[4], now=110) is not None
    assert store.end_all("u4") == 1
    assert store.get(sids[4], now=110) is None
    assert store.end(sids[3]) is True
    assert store.end(sids[3]) is False


def test_links_are_single_use_and_short_lived(registry: Registry) -> None:
    links = LinkStore(registry, lifetime_s=60)
    code = links.issue("auditor", "agency", AUDIT, now=0)
    assert links.redeem(code, now=59) == ("auditor", "agency", AUDIT)
    with pytest.raises(LookupError):
        links.redeem(code, now=59)
    late = links.issue("auditor", "agency", AUDIT, now=0)
    with pytest.raises(LookupError):
        links.redeem(late, now=60)
    for bad in (None, "", "x", "y" * 500):
        with pytest.raises(LookupError):
            links.redeem(bad, now=0)


def test_links_store_is_bounded(registry: Registry) -> None:
    links = LinkStore(registry, max_links=2)
    codes = [links.issue("a", "agency", AUDIT, now=100 + i) for i in range(3)]
    with pytest.raises(LookupError):
        links.redeem(codes[0], now=110)
    assert links.redeem(codes[2], now=110)[0] == "a"


def test_two_api_replicas_share_sessions_and_links(
    registry: Registry, storage: Storage, tmp_path: Path
) -> None:
    """Two API processes over one database (deploy/k8s runs two): a link issued by one is
    redeemed by the other, once; a session made by one is known to the other, survives a
    restart, and ends for both."""
    other = Registry(storage.url(tmp_path / "istmo"))
    try:
        a_links, b_links = LinkStore(registry), LinkStore(other)
        code = a_links.issue("auditor", "agency", AUDIT)
        assert b_links.redeem(code) == ("auditor", "agency", AUDIT)
        with pytest.raises(LookupError):
            a_links.redeem(code)  # spent, whichever replica saw it first
        a, b = SessionStore(registry), SessionStore(other)
        sid, made = a.create("auditor", "agency", AUDIT, "link")
        seen = b.get(sid)
        assert seen is not None
        assert seen.csrf == made.csrf  # a form rendered by one replica posts to the other
    finally:
        other.close()
    restarted = Registry(storage.url(tmp_path / "istmo"))
    try:
        again = SessionStore(restarted)
        assert again.get(sid) is not None  # a restart signs nobody out
        assert again.end(sid) is True
        assert SessionStore(registry).get(sid) is None
    finally:
        restarted.close()


@pytest.mark.parametrize(
    ("expected", "sent", "ok"),
    [
        ("abc", "abc", True),
        ("abc", "abd", False),
        ("abc", "", False),
        ("abc", None, False),
        ("", "", False),
        ("abc", "abc" + "x" * 100, False),
        ("abc", "ab\udcff", False),
    ],
)
def test_csrf_compare(expected: str, sent: str | None, ok: bool) -> None:
    assert csrf_ok(expected, sent) is ok


@pytest.mark.parametrize(
    ("cookie", "header", "lang"),
    [
        (None, None, "en"),
        (None, "es-GT,es;q=0.9,en;q=0.8", "es"),
        (None, "en-US,en;q=0.9,es;q=0.8", "en"),
        (None, "fr-FR,fr;q=0.9,es;q=0.5", "fr"),
        (None, "de-DE,nl;q=0.7,fr;q=0.5", "nl"),
        (None, "ht,fr;q=0.8", "fr"),  # Haitian Creole: no catalogue, French next
        (None, "es;q=0,en", "en"),
        (None, "de", "en"),
        (None, "es;q=abc", "en"),
        ("es", "en", "es"),
        ("fr", "es", "fr"),
        ("de", "es", "es"),  # an unknown cookie is ignored
        (None, "es," * 5000, "es"),  # long headers are cut, not parsed whole
    ],
)
def test_negotiate(cookie: str | None, header: str | None, lang: str) -> None:
    assert negotiate(cookie, header) == lang
