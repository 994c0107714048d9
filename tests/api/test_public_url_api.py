"""The API behind a TLS reverse proxy, ``ISTMO_PUBLIC_URL=https://istmo.example.org``: its
host is served; client assertions name its token endpoint (or the loopback one, for tools
on the broker's machine) and nothing else; tokens carry it as issuer; links start with it
whatever ``Host`` the request named. Wired as ``broker.runtime.stack`` wires it, from
``Settings``."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import pytest_asyncio
from authlib.oauth2.auth import ClientAuth
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from fastapi import FastAPI
from joserfc.jwk import OKPKey

from broker.api.oauth import TokenAuthority, load_token_key
from broker.config import Settings
from broker.runtime.app import create_app
from clients.oauth import IstmoHttp, token_form
from tests.api.conftest import BASE, AppFactory, Broker, assert_problem, bearer, form, signed
from tests.api.conftest import claims_for as base_claims

PUBLIC = "https://istmo.example.org"
SETTINGS = Settings.from_env({"ISTMO_PUBLIC_URL": PUBLIC + "/"}, api_port=8844)
LOOPBACK = SETTINGS.api_url  # http://127.0.0.1:8844: where the proxy forwards to
AUDITOR = "auditor"


@pytest.fixture
def public_app(broker: Broker) -> FastAPI:
    auth = TokenAuthority(
        broker.registry,
        load_token_key(broker.settings.broker_dir),
        issuer=SETTINGS.base_url,
        local_url=SETTINGS.api_url,
    )
    return create_app(
        broker.registry, broker.directory, lambda: True, auth=auth, base_url=SETTINGS.base_url
    )


def through(app: FastAPI, base: str) -> httpx.AsyncClient:
    """A client whose requests name ``base``'s host in ``Host`` (and its scheme)."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base)


@pytest_asyncio.fixture
async def proxied(public_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Requests as the reverse proxy forwards them: Host istmo.example.org, over https."""
    async with through(public_app, PUBLIC) as c:
        yield c


def payload(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


async def token_named(
    client: httpx.AsyncClient, broker: Broker, who: str, audience: str
) -> httpx.Response:
    data = token_form(broker.keystore(who), audience, now=int(time.time()))
    return await client.post("/v1/token", data=data)


async def test_the_public_host_is_served_besides_loopback(
    public_app: FastAPI, proxied: httpx.AsyncClient
) -> None:
    assert SETTINGS.public_url == PUBLIC  # kept without the trailing slash
    assert (await proxied.get("/healthz")).status_code == 200
    async with through(public_app, LOOPBACK) as local:
        assert (await local.get("/healthz")).status_code == 200
    async with through(public_app, "https://evil.example") as foreign:
        assert_problem(await foreign.get("/healthz"), 400, "unknown_host")


async def test_an_assertion_for_the_public_token_endpoint_gets_a_public_token(
    proxied: httpx.AsyncClient, broker: Broker
) -> None:
    before = broker.last_seq()
    r = await token_named(proxied, broker, AUDITOR, PUBLIC + "/v1/token")
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    claims = payload(token)
    assert claims["iss"] == claims["aud"] == PUBLIC
    assert [e.actor for e in broker.audit("token.issued", after=before)] == [AUDITOR]
    page = await proxied.get("/v1/audit/entries", params={"limit": 1}, headers=bearer(token))
    assert page.status_code == 200, page.text


async def test_tools_on_the_broker_machine_may_name_the_loopback_endpoint(
    public_app: FastAPI, broker: Broker
) -> None:
    async with through(public_app, LOOPBACK) as local:
        r = await token_named(local, broker, AUDITOR, LOOPBACK + "/v1/token")
        assert r.status_code == 200, r.text
        assert payload(r.json()["access_token"])["iss"] == PUBLIC  # one issuer, always
    # Named at loopback, used through the proxy: the same token.
    async with through(public_app, PUBLIC) as proxied:
        tok = r.json()["access_token"]
        page = await proxied.get("/v1/audit/entries", params={"limit": 1}, headers=bearer(tok))
        assert page.status_code == 200, page.text


@pytest.mark.parametrize(
    "aud",
    [
        "https://evil.example/v1/token",  # another server's
        BASE + "/v1/token",  # a name the broker does not issue as
        PUBLIC,  # the bare issuer
        PUBLIC + "/v1/token/",
        "http://istmo.example.org/v1/token",  # the scheme matters
        "https://istmo.example.org:443/v1/token",  # exact strings: no second form
        "http://localhost:8844/v1/token",  # a loopback name that is not the configured one
        [PUBLIC + "/v1/token"],  # an array, even of the right one
    ],
    ids=["foreign", "other-name", "issuer", "slash", "http", "port", "localhost", "array"],
)
async def test_any_other_audience_is_refused_and_audited(
    proxied: httpx.AsyncClient, broker: Broker, aud: Any
) -> None:
    before = broker.last_seq()
    claims = base_claims(AUDITOR, aud=aud)
    r = await proxied.post("/v1/token", data=form(signed(broker.keystore(AUDITOR), claims)))
    body = assert_problem(r, 401, "audience_mismatch")
    assert body["error"] == "invalid_client"
    assert PUBLIC + "/v1/token" in body["detail"]  # what to name instead
    assert "access_token" not in r.text
    refused = broker.audit("auth.refused", after=before)
    assert [(e.actor, e.subject, e.reason) for e in refused] == [
        (AUDITOR, "POST /v1/token", "audience_mismatch")
    ]
    assert broker.audit("token.issued", after=before) == []


async def test_the_session_link_starts_with_the_public_url_whatever_the_host(
    public_app: FastAPI, broker: Broker
) -> None:
    async with through(public_app, "http://127.0.0.1:8844") as local:
        r = await token_named(local, broker, AUDITOR, LOOPBACK + "/v1/token")
        r = await local.post("/console/session-link", headers=bearer(r.json()["access_token"]))
        assert r.status_code == 200, r.text
        link = r.json()["url"]
        assert link.startswith(PUBLIC + "/console/login?code=")
        page = await local.get("/console/")
        assert f"--url {PUBLIC} " in page.text  # the sign-in page's command, too
    async with through(public_app, PUBLIC) as browser:
        r = await browser.get(link.removeprefix(PUBLIC))
        assert r.status_code == 303, r.text
        assert "secure" in r.headers["set-cookie"].lower()  # https: a Secure cookie


async def test_console_cookies_are_secure_for_the_public_host_even_over_plain_http(
    public_app: FastAPI, broker: Broker
) -> None:
    # A TLS proxy that forwards plain http and no X-Forwarded-Proto: the request names the
    # public host, which only the proxy serves, so the browser is on https.
    for origin, secure in (("http://istmo.example.org", True), ("http://127.0.0.1:8844", False)):
        async with through(public_app, "http://127.0.0.1:8844") as local:
            r = await token_named(local, broker, AUDITOR, LOOPBACK + "/v1/token")
            r = await local.post("/console/session-link", headers=bearer(r.json()["access_token"]))
            link = r.json()["url"]
        async with through(public_app, origin) as browser:
            r = await browser.get(link.removeprefix(PUBLIC))
            assert r.status_code == 303, r.text
            assert ("secure" in r.headers["set-cookie"].lower()) is secure, origin


async def test_without_a_public_url_links_ignore_the_host_too(
    make_app: AppFactory, broker: Broker
) -> None:
    # The issuer (and base URL) is http://istmo.test; the request names localhost.
    async with through(make_app(), "http://localhost:8844") as local:
        r = await token_named(local, broker, AUDITOR, BASE + "/v1/token")
        r = await local.post("/console/session-link", headers=bearer(r.json()["access_token"]))
        assert r.json()["url"].startswith(BASE + "/console/login?code=")
        r = await token_named(local, broker, AUDITOR, "http://localhost:8844/v1/token")
        assert_problem(r, 401, "audience_mismatch")


@pytest.mark.parametrize("given", [PUBLIC, "https://Istmo.Example.org:443/"])
async def test_the_sdk_names_the_url_it_is_given(
    public_app: FastAPI, broker: Broker, given: str
) -> None:
    """What ``istmo audit verify --from-url`` and ``istmo console login --url`` do."""
    async with through(public_app, PUBLIC) as c:
        ks = broker.keystore(AUDITOR)
        async with IstmoHttp(given, ks, scope="audit:read", client=c) as api:
            assert api.audience == PUBLIC + "/v1/token"
            assert await api.get("/v1/audit/entries", limit=1) is not None


async def test_authlibs_own_client_with_the_public_token_endpoint(
    proxied: httpx.AsyncClient, broker: Broker
) -> None:
    """A standard OAuth client, told only the token endpoint, names it as the audience
    (authlib's client side; its httpx integration is deprecated, so httpx sends it)."""
    key = broker.keystore(AUDITOR).signing_key()

    def b64u(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    okp = OKPKey.import_key(
        {"kty": "OKP", "crv": "Ed25519", "x": b64u(key.verify_key.public), "d": b64u(key.private)}
    )
    # Stock settings: authlib signs assertions that last an hour, a fresh jti each.
    method = PrivateKeyJWT(alg="Ed25519")
    for _ in range(2):  # and the next request is not taken for a replay
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        url, headers, body = ClientAuth(AUDITOR, okp, method).prepare(
            "POST", PUBLIC + "/v1/token", headers, "grant_type=client_credentials"
        )
        assertion = parse_qs(body)["client_assertion"][0]
        claims = payload(assertion)
        assert claims["exp"] - claims["iat"] == 3600
        r = await proxied.post(url, content=body, headers=headers)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["scope"] == "audit:read"
        assert payload(answer["access_token"])["iss"] == PUBLIC
    assert_problem(await proxied.post(url, content=body, headers=headers), 401, "replayed_jti")
