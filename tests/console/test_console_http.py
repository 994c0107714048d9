"""The console over HTTP (the real app, real data directory): sign-in by one-time link,
sessions and their cookies, CSRF refusals, scope refusals, the CSP, both languages, the
development login only when asked for, and the auditor's pages."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.api.conftest import Broker, bearer
from tests.console.conftest import (
    BASE,
    BULLETIN,
    DECIDED,
    connect,
    csrf_of,
    events_of,
    link_for,
    sign_in,
    token_for,
)


# ---------------------------------------------------------------------- sign-in
async def test_signin_page_without_session(web: httpx.AsyncClient) -> None:
    r = await web.get("/console/")
    assert r.status_code == 200
    assert "istmo console login" in r.text
    assert "dev-login" not in r.text  # not offered outside istmo up
    r = await web.get("/console/log")
    assert r.status_code == 303
    assert r.headers["location"] == "/console/"


async def test_link_signs_in_once(web: httpx.AsyncClient, console_broker: Broker) -> None:
    after = console_broker.last_seq()
    url = await link_for(web, console_broker, "auditor")
    r = await web.get(url.removeprefix(BASE))
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert "istmo_console=" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/console" in cookie
    assert "Secure" not in cookie  # plain http here; Secure over https
    logins = events_of(console_broker, "console.login", after)
    assert [(e.actor, e.to_event().data["via"]) for e in logins] == [("auditor", "link")]
    home = await web.get("/console/")
    assert "auditor" in home.text
    assert "/console/log" in home.text
    # The same link again, in a fresh browser: refused, audited.
    async with httpx.AsyncClient(transport=web._transport, base_url=BASE) as other:
        again = await other.get(url.removeprefix(BASE))
    assert again.status_code == 400
    assert "not valid" in again.text
    refused = events_of(console_broker, "auth.refused", after)
    assert any(e.reason == "link_invalid" for e in refused)


async def test_link_expires(web: httpx.AsyncClient, console_broker: Broker, console_app) -> None:
    app = web._transport.app
    url = await link_for(web, console_broker, "auditor")
    code = url.split("code=", 1)[1]
    console = app.state.console
    with pytest.raises(LookupError):
        console.links.redeem(code, now=time.time() + 61)
    # Spent by the failed attempt as well: a code is never tried twice.
    r = await web.get(url.removeprefix(BASE))
    assert r.status_code == 400


async def test_link_needs_a_console_scope(web: httpx.AsyncClient, console_broker: Broker) -> None:
    after = console_broker.last_seq()
    tok = await token_for(web, console_broker, "gt-police")
    r = await web.post("/console/session-link", headers=bearer(tok))
    assert r.status_code == 403
    assert r.json()["type"].endswith("/insufficient_scope")
    assert any(e.actor == "gt-police" for e in events_of(console_broker, "auth.refused", after))
    r = await web.post("/console/session-link")
    assert r.status_code == 401


async def test_bad_codes_refused(web: httpx.AsyncClient) -> None:
    for code in ("", "x", "A" * 65, "%00"):
        r = await web.get("/console/login", params={"code": code})
        assert r.status_code in (400, 422), code
        assert "istmo_console=" not in r.headers.get("set-cookie", "")


# ---------------------------------------------------------------------- scope, CSRF
async def test_admin_is_refused_auditor_pages(console_app, console_broker: Broker) -> None:
    async with connect(console_app()) as c:
        await sign_in(c, console_broker, "admin")
        after = console_broker.last_seq()
        r = await c.get("/console/log")
        assert r.status_code == 403
        assert "audit:read" in r.text
        assert "admin" in r.text
        refused = events_of(console_broker, "auth.refused", after)
        assert [(e.actor, e.reason, e.subject) for e in refused] == [
            ("admin", "insufficient_scope", "GET /console/log")
        ]


async def test_logout_needs_csrf(auditor: httpx.AsyncClient, console_broker: Broker) -> None:
    after = console_broker.last_seq()
    for token in (None, "", "wrong", "x" * 200):
        data = {} if token is None else {"csrf": token}
        r = await auditor.post("/console/logout", data=data)
        assert r.status_code == 403, token
    # Alike refusals from one address: the first is audited at once, the other three are
    # counted and written as one summary when the window closes (broker.api.refusals).
    app = auditor._transport.app  # type: ignore[attr-defined]  # httpx's ASGI transport
    refused = [e.to_event() for e in events_of(console_broker, "auth.refused", after)]
    assert [(e.reason, e.data.get("count")) for e in refused] == [("csrf_mismatch", None)]
    app.state.istmo.close_refusal_windows()
    refused = [e.to_event() for e in events_of(console_broker, "auth.refused", after)]
    assert [(e.reason, e.data.get("count")) for e in refused] == [
        ("csrf_mismatch", None),
        ("csrf_mismatch", 3),
    ]
    assert (await auditor.get("/console/log")).status_code == 200  # still signed in
    page = await auditor.get("/console/")
    cards = page.text.split('<ul class="cards">')[1].split("</ul>")[0].split("<li>")[1:]
    assert len(cards) == 4
    assert all("<p>" in card for card in cards)  # every card says what is behind it
    r = await auditor.post("/console/logout", data={"csrf": csrf_of(page.text)})
    assert r.status_code == 303
    assert events_of(console_broker, "console.logout", after)[-1].actor == "auditor"
    r = await auditor.get("/console/log")
    assert r.status_code == 303  # back to sign-in


async def test_verification_form_needs_csrf(auditor: httpx.AsyncClient) -> None:
    r = await auditor.post("/console/integrity/verify", data={"csrf": "nope"})
    assert r.status_code == 403
    r = await auditor.post(
        "/console/integrity/verify", content=b"csrf=x", headers={"content-type": "text/plain"}
    )
    assert r.status_code == 403


async def test_session_ends_when_agency_is_suspended(
    auditor: httpx.AsyncClient, console_broker: Broker
) -> None:
    console_broker.set_status("auditor", "suspended")
    try:
        r = await auditor.get("/console/log")
        assert r.status_code == 403
    finally:
        console_broker.set_status("auditor", "active")
    r = await auditor.get("/console/log")
    assert r.status_code == 303  # the session was ended, not just refused once


# ---------------------------------------------------------------------- headers, language
async def test_console_csp_and_api_csp(auditor: httpx.AsyncClient) -> None:
    r = await auditor.get("/console/log")
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "http" not in csp
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in r.text
    assert " style=" not in r.text
    api = await auditor.get("/healthz")
    assert api.headers["content-security-policy"].startswith("default-src 'none'")
    css = await auditor.get("/console/static/console.css")
    assert css.status_code == 200
    assert "text/css" in css.headers["content-type"]


async def test_language(web: httpx.AsyncClient) -> None:
    r = await web.get("/console/", headers={"Accept-Language": "es-GT,es;q=0.9,en;q=0.5"})
    assert 'lang="es"' in r.text
    assert "Iniciar sesión" in r.text
    r = await web.get("/console/", headers={"Accept-Language": "de, en;q=0.1"})
    assert 'lang="en"' in r.text
    assert "Sign in" in r.text
    r = await web.get("/console/lang/es", params={"next": "/console/"})
    assert r.status_code == 303
    assert r.headers["location"] == "/console/"
    assert "istmo_lang=es" in r.headers["set-cookie"]
    r = await web.get("/console/", headers={"Accept-Language": "en"})
    assert 'lang="es"' in r.text  # the cookie wins over the browser
    for bad in ("https://evil.example/", "//evil.example/", "/console/\\evil", "/other"):
        r = await web.get("/console/lang/en", params={"next": bad})
        assert r.headers["location"] == "/console/", bad
    assert (await web.get("/console/lang/de")).status_code == 404


async def test_french_and_dutch_pages(auditor: httpx.AsyncClient) -> None:
    """Accept-Language picks French or Dutch: the layout, the words for codes (event
    types, topics) and plural forms; the code stays in the option's value."""
    r = await auditor.get("/console/log", headers={"Accept-Language": "fr-HT,fr;q=0.9,en;q=0.5"})
    assert 'lang="fr"' in r.text
    assert "<h1>Journal d&#39;audit</h1>" in r.text
    assert '<option value="bulletin.decided">destinataires décidés</option>' in r.text
    assert '<option value="drug-trafficking">trafic de stupéfiants</option>' in r.text
    assert "Appliquer les filtres" in r.text
    r = await auditor.get(
        "/console/log", params={"agency": "hn-police"}, headers={"Accept-Language": "fr"}
    )
    assert "hn-police: acheminé" in r.text  # the outcome for the agency searched, in words
    r = await auditor.get("/console/log", headers={"Accept-Language": "nl-SR,nl;q=0.9"})
    assert 'lang="nl"' in r.text
    assert "<h1>Auditlogboek</h1>" in r.text
    assert '<option value="bulletin.decided">ontvangers bepaald</option>' in r.text
    r = await auditor.get("/console/charts", params={"days": 7}, headers={"Accept-Language": "nl"})
    assert "Laatste 7 dagen" in r.text
    assert "Laatste 30 dagen" in r.text
    r = await auditor.get("/console/charts", headers={"Accept-Language": "fr"})
    assert "7 derniers jours" in r.text
    r = await auditor.get("/console/log", params={"type": "x"}, headers={"Accept-Language": "nl"})
    assert r.status_code == 400
    assert "Het verzoek is niet geldig: type: geen soort gebeurtenis" in r.text


# ---------------------------------------------------------------------- dev login
async def test_dev_login_only_when_enabled(console_app, console_broker: Broker) -> None:
    async with connect(console_app()) as c:
        assert (await c.post("/console/dev-login", data={"who": "auditor"})).status_code in (
            404,
            405,
        )
    async with connect(console_app(dev_login=True)) as c:
        page = await c.get("/console/")
        assert 'id="dev-auditor"' in page.text
        assert 'id="dev-admin"' in page.text
        assert 'id="dev-gt-police"' not in page.text
        # Without the double-submit token: refused.
        r = await c.post("/console/dev-login", data={"who": "auditor", "pre": "guess"})
        assert r.status_code == 403
        pre = c.cookies.get("istmo_console_pre")
        r = await c.post("/console/dev-login", data={"who": "gt-police", "pre": pre})
        assert r.status_code == 403  # not an auditor or administrator
        r = await c.post("/console/dev-login", data={"who": "auditor", "pre": pre})
        assert r.status_code == 303
        assert (await c.get("/console/log")).status_code == 200


# ---------------------------------------------------------------------- auditor pages
async def test_log_filters_and_audit_of_views(
    auditor: httpx.AsyncClient, console_broker: Broker
) -> None:
    after = console_broker.last_seq()
    r = await auditor.get("/console/log", params={"decision": "denied"})
    assert r.status_code == 200
    assert "jm-police" in r.text
    assert "bulletin.denied" in r.text
    assert "bulletin.routed" not in r.text.split("<tbody>")[1]
    r = await auditor.get(
        "/console/log", params={"topic": "drug-trafficking", "type": "bulletin.received"}
    )
    body = r.text.split("<tbody>")[1]
    assert "rc-drugs" in body
    assert "bulletin.accepted" not in body
    r = await auditor.get("/console/log", params={"state": "JM"})
    assert "jm-police" in r.text
    # An agency is found among the candidates of a bulletin.decided event too (ADR 8).
    r = await auditor.get("/console/log", params={"agency": "jm-police"})
    body = r.text.split("<tbody>")[1]
    assert 'title="bulletin.decided">recipients decided' in body
    assert "jm-police: releasability" in body  # what was decided for it, on the row
    assert 'title="bulletin.denied">bulletin denied' in body
    queried = events_of(console_broker, "audit.queried", after)
    assert [e.subject for e in queried] == ["console.log"] * 4
    for bad in (
        {"type": "nope"},
        {"since": "yesterday"},
        {"topic": "x"},
        {"agency": "A B"},
        {"before": "-5"},
    ):
        assert (await auditor.get("/console/log", params=bad)).status_code in (400, 422), bad


async def test_log_pages_newest_first(auditor: httpx.AsyncClient) -> None:
    r = await auditor.get("/console/log")
    import re

    indices = [int(i) for i in re.findall(r'href="/console/log/(\d+)"', r.text)]
    assert indices == sorted(indices, reverse=True)
    assert len(indices) == 50
    older = re.search(r'id="older" href="([^"]+)"', r.text)
    assert older
    r2 = await auditor.get(older.group(1).replace("&amp;", "&"))
    more = [int(i) for i in re.findall(r'href="/console/log/(\d+)"', r2.text)]
    assert more
    assert max(more) < min(indices)


async def test_entry_page_carries_its_proof(auditor: httpx.AsyncClient) -> None:
    r = await auditor.get("/console/log/0")
    assert r.status_code == 200
    assert 'id="proof-data"' in r.text
    assert "data-proof=" in r.text
    assert "/console/static/verify.js" in r.text
    assert (await auditor.get("/console/log/99999999")).status_code == 404


async def test_integrity_verify_and_consistency(auditor: httpx.AsyncClient) -> None:
    page = await auditor.get("/console/integrity")
    assert "Ed25519 ✓" in page.text
    r = await auditor.post("/console/integrity/verify", data={"csrf": csrf_of(page.text)})
    assert r.status_code == 303
    page = await auditor.get("/console/integrity")
    assert 'data-result="verified"' in page.text
    import re

    sizes = [int(s) for s in re.findall(r"<tr><td>(\d+)</td>", page.text)]
    assert len(sizes) >= 2
    assert sizes == sorted(sizes, reverse=True)
    new, old = sizes[0], sizes[-1]
    r = await auditor.get("/console/integrity", params={"old": old, "new": new})
    assert 'data-result="consistent"' in r.text
    assert 'id="consistency-data"' in r.text  # checked again in the browser
    assert "both tree heads" in r.text  # with the step names in the page's language
    assert "/console/static/verify.js" in r.text
    r = await auditor.get("/console/integrity", params={"old": new, "new": old})
    assert 'data-result="inconsistent"' in r.text
    r = await auditor.get("/console/integrity", params={"old": old + 1, "new": new})
    assert 'data-result="inconsistent"' in r.text
    assert "no tree head" in r.text


async def test_charts_and_flow(auditor: httpx.AsyncClient) -> None:
    r = await auditor.get("/console/charts")
    assert r.status_code == 200
    assert r.text.count('role="img"') == 3
    assert "<title" in r.text
    assert "<desc" in r.text
    assert "drug trafficking" in r.text
    # The flow of a bulletin recorded per candidate, and of one recorded in one event.
    for bulletin in (BULLETIN, DECIDED):
        r = await auditor.get("/console/flow", params={"bulletin": bulletin})
        table = r.text.split('id="candidates"')[1]
        assert table.index("hn-police") < table.index("jm-police")  # permitted first
        assert "forbid-rel-to" in table
        assert "releasability" in table
    assert (await auditor.get("/console/flow", params={"bulletin": "nope"})).status_code == 400


async def test_full_verification_is_rate_limited(auditor: httpx.AsyncClient) -> None:
    page = await auditor.get("/console/integrity")
    csrf = csrf_of(page.text)
    statuses = [
        (await auditor.post("/console/integrity/verify", data={"csrf": csrf})).status_code
        for _ in range(6)
    ]
    assert statuses[:5] == [303] * 5
    assert statuses[5] == 429
    r = await auditor.post("/console/integrity/verify", data={"csrf": csrf})
    assert r.status_code == 429
    assert "try again in" in r.text
    assert "text/html" in r.headers["content-type"]


async def test_entry_without_log_key_is_unchecked_not_failed(
    auditor: httpx.AsyncClient, console_broker: Broker
) -> None:
    pub = console_broker.settings.broker_dir / "log.pub"
    key = console_broker.settings.broker_dir / "log.key"
    saved = {p: p.read_bytes() for p in (pub, key) if p.exists()}
    for p in saved:
        p.rename(p.with_name(p.name + ".moved"))
    try:
        r = await auditor.get("/console/log/0")
        assert '"log_key":null' in r.text.replace("&#34;", '"')
        assert "data-nokey=" in r.text
        page = await auditor.get("/console/integrity")
        assert "not available" in page.text
    finally:
        for p in saved:
            p.with_name(p.name + ".moved").rename(p)


# ---------------------------------------------------------------------- Host (DNS rebinding)
async def test_a_foreign_host_reaches_neither_the_console_nor_the_api(console_app) -> None:
    """A DNS-rebinding page in an administrator's browser talks to 127.0.0.1 with its own
    name in Host: it gets neither the dev login, nor a CSRF token, nor any API answer."""
    app = console_app(dev_login=True)
    async with connect(app, base="http://rebind.evil.example:8844") as c:
        for r in (
            await c.get("/console/"),
            await c.post("/console/dev-login", data={"who": "admin", "pre": "x"}),
            await c.get("/v1/directory"),
            await c.get("/healthz"),
        ):
            assert r.status_code == 400
            assert r.json()["type"].endswith("/unknown_host")
            assert "evil" not in r.text  # never echoed
            assert "set-cookie" not in r.headers
    # The same app still answers to loopback and to its token issuer's name.
    async with connect(app, base="http://127.0.0.1:8844") as c:
        assert (await c.get("/healthz")).status_code == 200
    async with connect(app, base="http://[::1]:8844") as c:
        assert (await c.get("/healthz")).status_code == 200
    async with connect(app) as c:
        assert 'id="dev-admin"' in (await c.get("/console/")).text
