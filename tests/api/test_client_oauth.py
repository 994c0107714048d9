"""The SDK's side: client assertions from a keystore, cached tokens, ``IstmoHttp``."""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest

from broker.api.oauth import AGENCY_SCOPES, Client
from clients.oauth import (
    ApiError,
    ApiUnavailable,
    CachedToken,
    IstmoHttp,
    TokenRefused,
    client_assertion,
)
from tests.api.conftest import BASE, EXPLAIN_BODY, TOKEN_URL, AppFactory, Broker


def decode_segment(segment: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def test_the_assertion_is_an_eddsa_jwt_with_the_rfc7523_claims(broker: Broker) -> None:
    ks = broker.keystore("gt-police")
    jwt = client_assertion(ks, TOKEN_URL, now=1_800_000_000)
    head, claims = decode_segment(jwt.split(".")[0]), decode_segment(jwt.split(".")[1])
    assert head == {"alg": "EdDSA", "typ": "JWT", "kid": ks.signing_keys[-1].kid}
    assert claims["iss"] == claims["sub"] == "gt-police"
    assert claims["aud"] == TOKEN_URL
    assert claims["exp"] - claims["iat"] == 60
    assert client_assertion(ks, TOKEN_URL, now=1)[-20:] != jwt[-20:]  # a fresh jti each time


def http(app_client: httpx.AsyncClient, broker: Broker, who: str, **kw: object) -> IstmoHttp:
    return IstmoHttp(BASE, broker.keystore(who), client=app_client, **kw)  # type: ignore[arg-type]


async def test_one_token_serves_many_calls(client: httpx.AsyncClient, broker: Broker) -> None:
    before = broker.last_seq()
    async with http(client, broker, "gt-police") as api:
        for _ in range(3):
            answer = await api.post("/v1/recipients/explain", json=EXPLAIN_BODY)
            assert answer["publish"]["allowed"] is True
    assert len(broker.audit("token.issued", after=before)) == 1


async def test_a_token_is_renewed_before_it_expires(
    client: httpx.AsyncClient, broker: Broker
) -> None:
    before = broker.last_seq()
    api = http(client, broker, "gt-police")
    asked = time.monotonic()
    await api.post("/v1/recipients/explain", json=EXPLAIN_BODY)
    answered = time.monotonic()
    assert api._token is not None
    # 30 s before the 300 s lifetime ends, counted from when the token was asked for.
    assert asked + 300 - 30 <= api._token.refresh_at <= answered + 300 - 30
    api._token = CachedToken(api._token.value, api._token.scope, time.monotonic() - 1)
    await api.post("/v1/recipients/explain", json=EXPLAIN_BODY)
    assert len(broker.audit("token.issued", after=before)) == 2


async def test_a_token_refused_by_the_api_is_replaced_once(
    client: httpx.AsyncClient, broker: Broker
) -> None:
    expired = broker.authority().issue(
        Client("gt-police", "agency", AGENCY_SCOPES, "t"), None, now=int(time.time()) - 400
    )
    api = http(client, broker, "gt-police")
    api._token = CachedToken(expired.access_token, expired.scope, time.monotonic() + 999)
    answer = await api.post("/v1/recipients/explain", json=EXPLAIN_BODY)
    assert answer["policy_version"] == broker.directory.bundle.version


async def test_refusals_are_typed_errors(client: httpx.AsyncClient, broker: Broker) -> None:
    api = http(client, broker, "gt-police", scope="bulletins:read")
    with pytest.raises(ApiError) as err:
        await api.post("/v1/recipients/explain", json=EXPLAIN_BODY)
    assert (err.value.status, err.value.code) == (403, "insufficient_scope")
    with pytest.raises(ApiError) as err:
        await api.get("/v1/bulletins/00000000-0000-4000-8000-000000000000/status")
    assert (err.value.status, err.value.code) == (404, "not_found")
    api = http(client, broker, "gt-police", scope="admin")
    with pytest.raises(TokenRefused) as refused:
        await api.token()
    assert (refused.value.status, refused.value.code) == (400, "invalid_scope")
    api = http(client, broker, "gt-police", audience=BASE + "/token")
    with pytest.raises(TokenRefused) as refused:
        await api.token()
    assert refused.value.code == "audience_mismatch"
    assert TOKEN_URL in str(refused.value)  # it says which audience to use


async def test_an_unreachable_api_is_api_unavailable(broker: Broker) -> None:
    async with IstmoHttp("http://127.0.0.1:1", broker.keystore("gt-police"), timeout=2) as api:
        with pytest.raises(ApiUnavailable):
            await api.get("/v1/agencies")


async def test_admin_reads_agencies(make_app: AppFactory, broker: Broker) -> None:
    from tests.api.conftest import connect

    async with connect(make_app()) as c, http(c, broker, "admin") as api:
        page = await api.get("/v1/agencies", limit=2)
        assert [a["id"] for a in page["agencies"]] == ["ag-foreign", "ag-justice"]


async def test_a_token_asked_for_too_often_waits_out_a_short_retry_after(
    make_app: AppFactory, broker: Broker
) -> None:
    """Commands run one after another each ask for a token: past the burst, the one that
    meets a 429 with a short Retry-After waits it out; a long one is the caller's error."""
    from broker.api.guard import ApiLimits
    from tests.api.conftest import connect

    before = broker.last_seq()
    async with connect(make_app(limits=ApiLimits(token_rate_per_min=60, token_burst=1))) as c:
        first, second = http(c, broker, "sv-police"), http(c, broker, "sv-police")
        await first.token()
        asked = time.monotonic()
        await second.token()  # refused once (retry in 1 s), then issued
        assert time.monotonic() - asked >= 0.9
        assert 'istmo_rate_limited_total{limit="token"} 1.0' in (await c.get("/metrics")).text
    assert len(broker.audit("token.issued", after=before)) == 2
    async with connect(make_app(limits=ApiLimits(token_rate_per_min=1, token_burst=1))) as c:
        await http(c, broker, "sv-justice").token()
        asked = time.monotonic()
        with pytest.raises(TokenRefused) as refused:
            await http(c, broker, "sv-justice").token()  # retry in 60 s: not waited
        assert (refused.value.status, refused.value.code) == (429, "rate_limited")
        assert time.monotonic() - asked < 30
