"""A flood of refused requests: rate limited per client address, and audited as the first
of each kind plus one summary per window with the count (``broker.api.refusals``)."""

from __future__ import annotations

import time

import httpx
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from broker.api.context import ApiState
from broker.api.guard import ApiLimits
from broker.config import Settings
from broker.runtime.app import create_app
from broker.runtime.stack import uvicorn_config
from schemas.audit import AuditEvent
from tests.api.conftest import Broker, assert_problem, bearer, connect
from tests.clocks import ManualClock

JUNK = bearer("junk.junk.junk")


def app_at(broker: Broker, clock: ManualClock, **limits: int) -> FastAPI:
    return create_app(
        broker.registry,
        broker.directory,
        lambda: True,
        auth=broker.authority(),
        limits=ApiLimits(**limits),
        clock=clock,
    )


def rows(broker: Broker, type_: str, after: int) -> list[AuditEvent]:
    return [r.to_event() for r in broker.audit(type_, after=after)]


def counted(events: list[AuditEvent]) -> int:
    return sum(int(e.data.get("count", 1) or 1) for e in events)


async def test_a_thousand_junk_tokens_are_429_and_two_audit_entries(broker: Broker) -> None:
    clock = ManualClock.at(int(time.time()))
    app = app_at(broker, clock)
    before = broker.last_seq()
    async with connect(app) as c:
        codes = [(await c.get("/v1/agencies", headers=JUNK)).status_code for _ in range(1000)]
        r = await c.get("/v1/agencies", headers=JUNK)
        assert_problem(r, 429, "rate_limited")
        assert int(r.headers["retry-after"]) >= 1
        # The first refusal is in the log at once; the others are counted, not written.
        (first,) = rows(broker, "auth.refused", before)
        assert (first.reason, first.data["peer"]) == ("malformed_token", "127.0.0.1")
        (limited,) = rows(broker, "request.rejected", before)
        assert (limited.reason, limited.data["status"]) == ("rate_limited", 429)
        # The window closes: the next refusal writes the summary, then opens a new one.
        clock.advance(61)
        assert (await c.get("/v1/agencies", headers=JUNK)).status_code == 401
    assert codes[:20] == [401] * 20  # the refusal burst
    assert set(codes[20:]) == {429}
    written = [r.to_event() for r in broker.registry.audit_events(after_seq=before)]
    assert [(e.reason, e.data.get("count")) for e in written] == [
        ("malformed_token", None),  # the first, at once
        ("rate_limited", None),  # the first answered 429, at once
        ("malformed_token", 19),  # the summaries, when the window closed
        ("rate_limited", 980),
        ("malformed_token", None),  # the first of the next window
    ]
    assert counted(written) == 1002  # every refusal accounted for


async def test_a_good_token_from_a_refused_address_still_works(broker: Broker) -> None:
    """Only refusals are limited: an agency behind the same address is not locked out."""
    from tests.api.conftest import token

    # A minute ahead: the token the endpoint issues by the machine's clock is valid by it.
    app = app_at(broker, ManualClock.at(int(time.time()) + 60), refusal_burst=2)
    async with connect(app) as c:
        for _ in range(5):
            await c.get("/v1/agencies", headers=JUNK)
        assert (await c.get("/v1/agencies", headers=JUNK)).status_code == 429
        good = await token(c, broker, "gt-police")
        r = await c.get(
            "/v1/bulletins/00000000-0000-4000-8000-000000000000/receipts", headers=bearer(good)
        )
        assert_problem(r, 404)


async def test_stopping_the_app_writes_the_summaries_still_owed(broker: Broker) -> None:
    clock = ManualClock.at(int(time.time()))
    app = app_at(broker, clock)
    before = broker.last_seq()
    async with app.router.lifespan_context(app), connect(app) as c:
        for _ in range(5):
            await c.get("/v1/agencies")  # no token at all
        assert len(rows(broker, "auth.refused", before)) == 1
    written = rows(broker, "auth.refused", before)
    assert [(e.reason, e.data.get("count")) for e in written] == [
        ("missing_token", None),
        ("missing_token", 4),
    ]


async def test_foreign_host_refusals_are_audited_and_limited_too(broker: Broker) -> None:
    clock = ManualClock.at(int(time.time()))
    app = app_at(broker, clock, refusal_burst=3)
    before = broker.last_seq()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://rebind.evil.example") as c:
        codes = [(await c.get("/v1/evil-path-x")).status_code for _ in range(10)]
    state: ApiState = app.state.istmo
    state.close_refusal_windows()
    assert codes == [400] * 3 + [429] * 7
    written = rows(broker, "request.rejected", before)
    assert [(e.reason, e.subject, e.data.get("count")) for e in written] == [
        ("unknown_host", "GET <unmatched>", None),
        ("rate_limited", "GET <unmatched>", None),
        ("unknown_host", "GET <unmatched>", 2),
        ("rate_limited", "GET <unmatched>", 6),
    ]
    text = "".join(e.model_dump_json() for e in written)
    assert "evil" not in text  # neither the name nor the path the caller sent


async def test_x_forwarded_for_is_believed_only_from_a_configured_proxy() -> None:
    """The address the limits and the log see: the TCP peer's, unless the operator named
    the proxy whose X-Forwarded-For to believe."""
    seen: list[str] = []

    async def echo(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["client"][0])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def peer_for(settings: Settings) -> str:
        config = uvicorn_config(echo, settings)
        config.load()
        transport = httpx.ASGITransport(app=config.loaded_app, client=("127.0.0.1", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as c:
            await c.get("/", headers={"X-Forwarded-For": "203.0.113.9"})
        return seen.pop()

    assert await peer_for(Settings()) == "127.0.0.1"
    assert await peer_for(Settings(trusted_proxies=("127.0.0.1",))) == "203.0.113.9"
