"""Bounded inputs (B-42, B-43, B-45), security headers, problems without traces, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from broker.api.guard import ApiLimits, RateLimiter
from broker.store.registry import Registry, SigningKeyRow
from tests.api.conftest import (
    EXPLAIN_BODY,
    HOST,
    AppFactory,
    Broker,
    assert_problem,
    bearer,
    connect,
    token,
)


async def test_b43_a_50_mb_body_is_413_before_anything_reads_it(
    client: httpx.AsyncClient, broker: Broker
) -> None:
    tok = await token(client, broker, "gt-police")
    before = broker.last_seq()
    body = b"{" + b" " * (50 * 1024 * 1024) + b"}"
    r = await client.post(
        "/v1/recipients/resolve",
        content=body,
        headers={**bearer(tok), "content-type": "application/json"},
    )
    assert_problem(r, 413, "body_too_large")
    assert broker.last_seq() == before  # refused before auth, parsing or any write
    # Unauthenticated, and on the token endpoint, the same.
    r = await client.post("/v1/token", content=b"x" * 70_000)
    assert_problem(r, 413, "body_too_large")


async def test_a_streamed_body_without_a_length_is_cut_off_at_the_limit(
    client: httpx.AsyncClient, broker: Broker
) -> None:
    tok = await token(client, broker, "gt-police")
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(1000):
            sent += 1
            yield b" " * 16_384

    r = await client.post("/v1/recipients/resolve", content=chunks(), headers=bearer(tok))
    assert_problem(r, 413, "body_too_large")
    assert sent < 10  # it stopped reading at 64 KiB, not at 16 MB


async def test_json_bodies_are_parsed_strictly(client: httpx.AsyncClient, broker: Broker) -> None:
    tok = await token(client, broker, "gt-police")
    cases = {
        b"{not json": "malformed",
        b'{"labels": {"topic": "cyber"}}': "unknown_label",
        b'{"labels": {"topic": "migration", "classification": "RESTRICTED", "tlp": "AMBER", '
        b'"rel_to": ["HN"]}, "extra": 1}': "malformed",
        b'{"a": 1, "a": 2}': "malformed",
        b'{"labels": 1.5}': "malformed",
    }
    for raw, code in cases.items():
        r = await client.post(
            "/v1/recipients/resolve",
            content=raw,
            headers={**bearer(tok), "content-type": "application/json"},
        )
        body = assert_problem(r, 422, code)
        assert "cyber" not in body["detail"]  # names the field, never echoes the value


async def test_b42_page_size_is_capped(client: httpx.AsyncClient, broker: Broker) -> None:
    tok = await token(client, broker, "admin")
    r = await client.get("/v1/agencies", params={"limit": 1_000_000_000}, headers=bearer(tok))
    assert r.status_code == 200
    page = r.json()
    assert page["limit"] == 500
    assert len(page["agencies"]) == 85  # the whole demo directory fits in one page
    assert page["next_after"] is None
    seen: list[str] = []
    after = None
    while True:
        params = {"limit": 40, **({"after": after} if after else {})}
        page = (await client.get("/v1/agencies", params=params, headers=bearer(tok))).json()
        seen += [a["id"] for a in page["agencies"]]
        after = page["next_after"]
        if after is None:
            break
    assert len(seen) == 85 == len(set(seen))
    for bad in ({"limit": 0}, {"limit": "x"}, {"after": "' OR 1=1 --"}, {"after": "%00"}):
        r = await client.get("/v1/agencies", params=bad, headers=bearer(tok))
        assert_problem(r, 422)


async def test_list_parameters_are_bounded(client: httpx.AsyncClient) -> None:
    many = [("agency", f"zz-{i:04d}") for i in range(501)]
    assert_problem(await client.get("/v1/directory", params=many), 422)
    r = await client.get("/v1/directory", params=[("agency", "gt-police"), ("agency", "nope-x")])
    assert r.status_code == 200
    assert [a["id"] for a in r.json()["excerpt"]["agencies"]] == ["gt-police"]
    assert_problem(await client.get("/v1/directory", params={"agency": "../etc"}), 422)


async def test_security_headers_on_every_response(
    client: httpx.AsyncClient, broker: Broker
) -> None:
    tok = await token(client, broker, "gt-police")
    responses = [
        await client.get("/healthz"),
        await client.get("/v1/directory"),
        await client.get("/nope"),
        await client.post("/v1/recipients/explain", json=EXPLAIN_BODY, headers=bearer(tok)),
        await client.post("/v1/recipients/explain", json=EXPLAIN_BODY),
    ]
    for r in responses:
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["content-security-policy"].startswith("default-src 'none'")
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["x-frame-options"] == "DENY"
    assert "content-security-policy" not in (await client.get("/docs")).headers


async def test_unknown_routes_and_methods_are_problems(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v1/nothing-here"), 404, "no_such_route")
    assert_problem(await client.delete("/v1/directory"), 405, "method_not_allowed")


async def test_an_internal_fault_is_a_bare_500_with_no_trace(
    client: httpx.AsyncClient, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    # A damaged public key in the registry: the broker cannot answer, and says no more.
    who = "pa-police"
    broker.registry.record(
        [SigningKeyRow(kid="sig-" + "0" * 32, agency=who, public="!!", created_at=1)], []
    )
    from tests.api.conftest import claims_for, form, signed

    r = await client.post(
        "/v1/token", data=form(signed(broker.keystore(who), claims_for(who), kid=None))
    )
    body = assert_problem(r, 500, "internal")
    assert body["detail"] == "the broker failed to answer; it is logged"
    assert "Error" not in r.text
    assert "File " not in r.text


async def test_metrics_count_requests_tokens_and_refusals(
    client: httpx.AsyncClient, broker: Broker
) -> None:
    tok = await token(client, broker, "gt-police")
    await client.post("/v1/recipients/explain", json=EXPLAIN_BODY, headers=bearer(tok))
    await client.get("/v1/agencies", headers=bearer(tok))
    await client.get("/v1/agencies")
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.text
    assert 'istmo_tokens_issued_total{kind="agency"} 1.0' in text
    assert 'istmo_auth_refusals_total{reason="insufficient_scope",status="403"} 1.0' in text
    assert 'istmo_auth_refusals_total{reason="missing_token",status="401"} 1.0' in text
    assert (
        'istmo_http_requests_total{method="POST",route="/v1/recipients/explain",status="200"} 1.0'
        in text
    )
    assert 'istmo_http_request_duration_seconds_count{method="POST",route="/v1/token"} 1.0' in text
    assert tok not in text


async def test_s21_callers_over_their_rate_get_429(make_app: AppFactory, broker: Broker) -> None:
    app = make_app(limits=ApiLimits(api_rate_per_s=1, api_burst=5))
    async with connect(app) as client:
        tok = await token(client, broker, "gt-police")
        other = await token(client, broker, "hn-police")
        codes = []
        for _ in range(7):
            r = await client.post("/v1/recipients/explain", json=EXPLAIN_BODY, headers=bearer(tok))
            codes.append(r.status_code)
        assert codes[:5] == [200] * 5
        assert 429 in codes[5:]
        r = await client.post("/v1/recipients/explain", json=EXPLAIN_BODY, headers=bearer(tok))
        assert_problem(r, 429, "rate_limited")
        assert int(r.headers["retry-after"]) >= 1
        # Another agency is not affected.
        r = await client.post("/v1/recipients/explain", json=EXPLAIN_BODY, headers=bearer(other))
        assert r.status_code == 200


def test_rate_limiter_refills_and_forgets_old_keys() -> None:
    limiter = RateLimiter(rate_per_s=2, burst=2, max_keys=3)
    assert limiter.take("a", now=0) is None
    assert limiter.take("a", now=0) is None
    assert limiter.take("a", now=0) == 1
    assert limiter.take("a", now=0.5) is None  # one token back after 0.5 s
    for key in "bcde":
        limiter.take(key, now=1)
    assert len(limiter._buckets) == 3


async def test_readyz_reports_the_bus(broker: Broker) -> None:
    from broker.runtime.app import create_app

    app = create_app(broker.registry, broker.directory, lambda: False, allowed_hosts=[HOST])
    async with connect(app) as client:
        r = await client.get("/readyz")
    assert r.status_code == 503
    assert r.json() == {"nats": "down", "database": "ok"}
    await asyncio.sleep(0)


async def test_readyz_reports_a_database_that_refuses(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The store's own error: the database is down, said once, without a traceback (an
    outage, not a bug; a probe asks every few seconds)."""
    from broker.runtime.app import create_app

    registry = Registry(f"sqlite:///{tmp_path / 'istmo.db'}")
    try:
        with registry.engine.begin() as conn:  # behind the store's back
            conn.execute(text("PRAGMA foreign_keys=OFF"))
            conn.execute(text("DROP TABLE agency"))
        app = create_app(registry, broker.directory, lambda: True, allowed_hosts=[HOST])
        async with connect(app) as client:
            r = await client.get("/readyz")
    finally:
        registry.close()
    assert r.status_code == 503
    assert r.json() == {"nats": "ok", "database": "down"}
    said = [rec for rec in caplog.records if rec.getMessage().startswith("readiness")]
    assert [(rec.levelname, rec.exc_info) for rec in said] == [("WARNING", None)]
