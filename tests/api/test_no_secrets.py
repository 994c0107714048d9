"""S-19: no private key, token, assertion or plaintext in logs, error bodies or audit rows.

Canaries go in through every door of the API (valid and invalid assertions, tokens, JSON
and form fields); none may come back out, at any log level.
"""

from __future__ import annotations

import logging
import time

import httpx
import pytest

from tests.api.conftest import (
    TOKEN_URL,
    Broker,
    bearer,
    claims_for,
    form,
    hs256,
    signed,
)

CANARY = "CANARY-7f3a9c-PLAINTEXT"


async def test_s19_nothing_secret_reaches_logs_bodies_or_the_audit_log(
    client: httpx.AsyncClient, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    before = broker.last_seq()
    ks = broker.keystore("cr-police")
    secrets = [ks.signing_keys[-1].private, ks.encryption_keys[-1].private, ks.nats_seed, CANARY]
    outputs: list[str] = []

    async def send(method: str, path: str, **kw: object) -> httpx.Response:
        r = await client.request(method, path, **kw)  # type: ignore[arg-type]
        if r.status_code >= 400:  # error bodies and headers (a token response holds one)
            outputs.append(r.text)
            outputs.append(repr(dict(r.headers)))
        return r

    good = signed(ks, claims_for("cr-police"))
    r = await send("POST", "/v1/token", data=form(good))
    access = r.json()["access_token"]
    secrets += [good, access, access.split(".")[2], good.split(".")[2]]
    # Refused assertions: replayed, forged, with a canary in every field.
    bad = [
        good,
        signed(ks, claims_for("cr-police", jti=CANARY)),
        signed(ks, claims_for("cr-police", aud=CANARY)),
        signed(ks, claims_for("cr-police", iat=CANARY)),
        signed(ks, claims_for("cr-police"), kid=CANARY),
        hs256(CANARY.encode(), claims_for("cr-police")),
        CANARY + "." + CANARY + "." + CANARY,
    ]
    secrets += [b for b in bad if b != good]
    for assertion in bad:
        await send("POST", "/v1/token", data=form(assertion))
    await send("POST", "/v1/token", data=form(good, scope=CANARY, client_id=CANARY))
    await send("POST", "/v1/token", data={"grant_type": CANARY})
    # Tokens: a good one on the wrong endpoint, a canary one, an expired-looking one.
    await send("GET", "/v1/agencies", headers=bearer(access))
    await send("GET", "/v1/agencies", headers=bearer(CANARY))
    await send("GET", "/v1/agencies", headers=bearer(f"{CANARY}.{CANARY}.{CANARY}"))
    # Plaintext canaries in JSON bodies, query strings and paths.
    await send(
        "POST",
        "/v1/recipients/resolve",
        headers=bearer(access),
        json={"labels": {"topic": CANARY, "title": CANARY}, "body": CANARY},
    )
    await send("POST", "/v1/recipients/explain", headers=bearer(access), content=CANARY.encode())
    await send("GET", f"/v1/bulletins/{CANARY}/status", headers=bearer(access))
    await send("GET", "/v1/directory", params={"agency": CANARY})
    await send("GET", f"/{CANARY}")

    # The server side's records (httpx's own lines are this test's client talking).
    server = [rec for rec in caplog.records if not rec.name.startswith(("httpx", "httpcore"))]
    logged = "\n".join(f"{rec.getMessage()} {rec.exc_text or ''}" for rec in server)
    audit = "\n".join(
        f"{row.actor} {row.subject} {row.reason} {row.data}"
        for row in broker.registry.audit_events(after_seq=before, limit=1000)
    )
    assert len(outputs) > 25
    assert server, "the API logged nothing at all: the test would prove nothing"
    for secret in secrets:
        assert secret not in logged
        assert secret not in audit
        for out in outputs:
            assert secret not in out


async def test_repr_of_credentials_shows_no_secret(broker: Broker) -> None:
    from broker.api.oauth import IssuedToken
    from clients.oauth import CachedToken

    issued = IssuedToken("eyJsecret", 300, "admin", "abc", "admin")
    assert "eyJsecret" not in repr(issued)
    assert "eyJsecret" not in repr(CachedToken("eyJsecret", "admin", time.monotonic()))
    assert broker.keystore("admin").signing_keys[-1].private not in repr(broker.keystore("admin"))
    assert TOKEN_URL in repr(broker.authority()) or "istmo.test" in repr(broker.authority())
