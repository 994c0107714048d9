"""The token endpoint: client credentials with private_key_jwt, hardened (B-35..B-39, S-15).

Every refusal is a 401 (or 400 for a malformed request) problem with the OAuth ``error``,
an ``auth.refused`` audit entry naming the reason, and no token.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from broker.api.guard import ApiLimits
from broker.store.registry import Registry, SigningKeyRow
from schemas.canonical import b64d
from schemas.keys import SigningKey
from schemas.keystore import KeystoreFile, StoredSigningKey
from tests.api.conftest import (
    HOST,
    TOKEN_URL,
    AppFactory,
    Broker,
    assert_problem,
    claims_for,
    connect,
    form,
    hs256,
    signed,
    unsigned,
)

GT = "gt-police"


async def refused(
    client: httpx.AsyncClient,
    broker: Broker,
    data: dict[str, str],
    code: str,
    *,
    status: int = 401,
    error: str = "invalid_client",
    actor: str = GT,
    alike: bool = False,
) -> dict[str, Any]:
    """Refused, with an audit entry; or, ``alike`` one refused just before (same reason,
    client and route, from the same address), counted in its aggregation window instead
    (``broker.api.refusals``)."""
    before = broker.last_seq()
    r = await client.post("/v1/token", data=data)
    body = assert_problem(r, status, code)
    assert body["error"] == error
    assert "access_token" not in r.text
    events = broker.audit("auth.refused", after=before)
    audited = [] if alike else [(actor, "POST /v1/token", code)]
    assert [(e.actor, e.subject, e.reason) for e in events] == audited
    assert broker.audit("token.issued", after=before) == []
    return body


async def test_a_signed_assertion_gets_a_short_lived_token(
    client: httpx.AsyncClient, broker: Broker
) -> None:
    before = broker.last_seq()
    ks = broker.keystore(GT)
    r = await client.post("/v1/token", data=form(signed(ks, claims_for(GT))))
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["pragma"] == "no-cache"
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300
    assert body["scope"] == "bulletins:publish bulletins:read"
    issued = broker.audit("token.issued", after=before)
    assert [(e.actor, e.subject) for e in issued] == [(GT, GT)]
    assert body["access_token"] not in issued[0].data  # the token itself is never stored


@pytest.mark.parametrize(
    ("who", "scope"),
    [
        ("rc-drugs", "bulletins:publish bulletins:read"),
        ("auditor", "audit:read"),
        ("admin", "admin"),
    ],
)
async def test_scopes_follow_who_the_client_is(
    client: httpx.AsyncClient, broker: Broker, who: str, scope: str
) -> None:
    r = await client.post("/v1/token", data=form(signed(broker.keystore(who), claims_for(who))))
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == scope


async def test_a_client_may_ask_for_a_subset_of_its_scopes(
    client: httpx.AsyncClient, broker: Broker
) -> None:
    ks = broker.keystore(GT)
    r = await client.post(
        "/v1/token", data=form(signed(ks, claims_for(GT)), scope="bulletins:read")
    )
    assert r.status_code == 200
    assert r.json()["scope"] == "bulletins:read"
    await refused(
        client,
        broker,
        form(signed(ks, claims_for(GT)), scope="bulletins:read admin"),
        "invalid_scope",
        status=400,
        error="invalid_scope",
    )


# ---------------------------------------------------------------------- B-35, B-36
async def test_b35_alg_none_is_refused(client: httpx.AsyncClient, broker: Broker) -> None:
    await refused(client, broker, form(unsigned(claims_for(GT))), "alg_not_allowed")


async def test_b36_hs256_with_the_public_key_as_secret_is_refused(
    client: httpx.AsyncClient, broker: Broker
) -> None:
    row = broker.registry.signing_keys(GT)[0]
    public = b64d(row.public, field="public", max_bytes=32)
    for i, secret in enumerate((public, row.public.encode())):  # raw bytes, base64 text
        assertion = form(hs256(secret, claims_for(GT)))
        await refused(client, broker, assertion, "alg_not_allowed", alike=i > 0)


@pytest.mark.parametrize("alg", ["RS256", "ES256", "HS512", "EdDSA ", "eddsa", ""])
async def test_only_eddsa_is_accepted(client: httpx.AsyncClient, broker: Broker, alg: str) -> None:
    ks = broker.keystore(GT)
    await refused(client, broker, form(signed(ks, claims_for(GT), alg=alg)), "alg_not_allowed")


async def test_keys_are_never_taken_from_the_assertion(
    client: httpx.AsyncClient, broker: Broker
) -> None:
    ks = broker.keystore(GT)
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}
    headers = ({"jwk": jwk}, {"jku": "http://evil.example/jwks"}, {"crit": ["exp"]})
    for i, header in enumerate(headers):
        await refused(
            client,
            broker,
            form(signed(ks, claims_for(GT), **header)),
            "header_not_allowed",
            alike=i > 0,
        )


# ---------------------------------------------------------------------- B-37, S-15
async def test_b37_a_replayed_jti_is_refused(client: httpx.AsyncClient, broker: Broker) -> None:
    assertion = signed(broker.keystore(GT), claims_for(GT))
    first = await client.post("/v1/token", data=form(assertion))
    assert first.status_code == 200
    await refused(client, broker, form(assertion), "replayed_jti")


async def test_b37_a_replay_after_a_restart_is_refused(
    make_app: AppFactory, broker: Broker
) -> None:
    assertion = signed(broker.keystore(GT), claims_for(GT))
    async with connect(make_app()) as before_restart:
        assert (await before_restart.post("/v1/token", data=form(assertion))).status_code == 200
    reopened = Registry(broker.settings.db_url)  # a new process would open it like this
    try:
        async with connect(make_app(registry=reopened)) as after_restart:
            await refused(after_restart, broker, form(assertion), "replayed_jti")
    finally:
        reopened.close()


async def test_the_same_jti_from_two_agencies_is_two_assertions(
    client: httpx.AsyncClient, broker: Broker
) -> None:
    jti = uuid.uuid4().hex
    for who in ("gt-justice", "hn-police"):
        data = form(signed(broker.keystore(who), claims_for(who, jti=jti)))
        assert (await client.post("/v1/token", data=data)).status_code == 200


# ---------------------------------------------------------------------- B-38
@pytest.mark.parametrize(
    "aud",
    [
        "http://istmo.test/v1/other",
        "http://istmo.test/v1/token/",
        "http://istmo.test",
        "HTTP://istmo.test/v1/token",
        [TOKEN_URL],
        [TOKEN_URL, "https://other.example/token"],
        None,
    ],
    ids=["other-endpoint", "trailing-slash", "issuer", "case", "array-1", "array-2", "missing"],
)
async def test_b38_the_audience_must_be_exactly_the_token_endpoint(
    client: httpx.AsyncClient, broker: Broker, aud: Any
) -> None:
    claims = claims_for(GT, aud=aud)
    if aud is None:
        claims.pop("aud", None)
    await refused(client, broker, form(signed(broker.keystore(GT), claims)), "audience_mismatch")


# ---------------------------------------------------------------------- B-39
@pytest.mark.parametrize(
    ("shift", "overrides", "code"),
    [
        (0, {"exp_after": 365 * 24 * 3600}, "assertion_lifetime"),
        (0, {"exp_after": 3601}, "assertion_lifetime"),
        (0, {"exp_after": 0}, "assertion_lifetime"),
        (120, {}, "issued_in_future"),
        (-400, {"exp_after": 300}, "assertion_expired"),
        (0, {"iat": None}, "missing_claim"),
        (0, {"iat": "now"}, "missing_claim"),
        (0, {"iat": True}, "missing_claim"),
        (0, {"jti": None}, "missing_claim"),
        (0, {"jti": "x" * 129}, "missing_claim"),
        (0, {"nbf_after": 600}, "not_yet_valid"),
    ],
    ids=[
        "one-year",
        "3601-s",
        "zero-s",
        "iat-in-future",
        "expired",
        "no-iat",
        "iat-string",
        "iat-bool",
        "no-jti",
        "long-jti",
        "nbf-future",
    ],
)
async def test_b39_lifetimes_and_times_are_checked(
    client: httpx.AsyncClient, broker: Broker, shift: int, overrides: dict[str, Any], code: str
) -> None:
    overrides = dict(overrides)  # the parameter is shared by every engine's run: keep it whole
    now = int(time.time()) + shift
    claims = claims_for(GT, now=now)
    if "exp_after" in overrides:
        claims["exp"] = now + overrides.pop("exp_after")
    if "nbf_after" in overrides:
        claims["nbf"] = now + overrides.pop("nbf_after")
    for k, v in overrides.items():
        if v is None:
            claims.pop(k, None)
        else:
            claims[k] = v
    await refused(client, broker, form(signed(broker.keystore(GT), claims)), code)


async def test_a_skew_of_up_to_30_s_is_tolerated(client: httpx.AsyncClient, broker: Broker) -> None:
    claims = claims_for(GT, now=int(time.time()) + 25)
    r = await client.post("/v1/token", data=form(signed(broker.keystore(GT), claims)))
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------------- who signs
async def test_an_assertion_signed_by_another_key_is_refused(
    client: httpx.AsyncClient, broker: Broker
) -> None:
    ks = broker.keystore(GT)
    # hn-police's key, claiming to be gt-police, with and without gt-police's kid.
    other = broker.keystore("hn-police")
    forged = other.model_copy(update={"agency": GT})
    await refused(
        client,
        broker,
        form(signed(forged, claims_for(GT), kid=ks.signing_keys[-1].kid)),
        "bad_signature",
    )
    await refused(
        client,
        broker,
        form(signed(forged, claims_for(GT), kid=None)),
        "bad_signature",
        alike=True,
    )
    await refused(client, broker, form(signed(forged, claims_for(GT))), "unknown_key")


async def test_iss_must_be_the_client(client: httpx.AsyncClient, broker: Broker) -> None:
    ks = broker.keystore(GT)
    await refused(
        client, broker, form(signed(ks, claims_for(GT, iss="hn-police"))), "issuer_mismatch"
    )


async def test_an_unknown_agency_is_refused(client: httpx.AsyncClient, broker: Broker) -> None:
    ks = broker.keystore(GT).model_copy(update={"agency": "xx-police"})
    await refused(
        client,
        broker,
        form(signed(ks, claims_for("xx-police"))),
        "unknown_client",
        actor="xx-police",
    )
    await refused(
        client,
        broker,
        form(signed(ks, claims_for("../../etc"))),
        "unknown_client",
        actor="unknown",
    )


async def test_a_suspended_or_revoked_agency_gets_no_token(
    client: httpx.AsyncClient, broker: Broker
) -> None:
    who = "bz-police"
    ks = broker.keystore(who)
    broker.set_status(who, "suspended")
    try:
        await refused(
            client, broker, form(signed(ks, claims_for(who))), "client_suspended", actor=who
        )
    finally:
        broker.set_status(who, "active")
    assert (
        await client.post("/v1/token", data=form(signed(ks, claims_for(who))))
    ).status_code == 200
    broker.set_status("bz-justice", "revoked")
    ks = broker.keystore("bz-justice")
    await refused(
        client,
        broker,
        form(signed(ks, claims_for("bz-justice"))),
        "client_revoked",
        actor="bz-justice",
    )


async def test_a_revoked_key_signs_nothing_and_a_new_key_works(
    client: httpx.AsyncClient, broker: Broker
) -> None:
    who = "bz-foreign"
    ks = broker.keystore(who)
    now = int(time.time())
    # Rotate: register a second key, then revoke the first.
    new = SigningKey.generate()
    broker.registry.record(
        [
            SigningKeyRow(
                kid=new.verify_key.kid,
                agency=who,
                public=__import__("base64").b64encode(new.verify_key.public).decode(),
                created_at=now,
            )
        ],
        [],
    )
    rotated = ks.model_copy(
        update={
            "signing_keys": (
                *ks.signing_keys,
                StoredSigningKey(
                    kid=new.verify_key.kid,
                    private=__import__("base64").b64encode(new.private).decode(),
                    created_at=now,
                ),
            )
        }
    )
    old_kid = ks.signing_keys[-1].kid
    with broker.registry.session() as s:
        row = s.get(SigningKeyRow, old_kid)
        assert row is not None
        row.revoked_at = now - 1
        s.add(row)
        s.commit()
    await refused(client, broker, form(signed(ks, claims_for(who))), "unknown_key", actor=who)
    await refused(
        client, broker, form(signed(ks, claims_for(who), kid=None)), "bad_signature", actor=who
    )
    assert isinstance(rotated, KeystoreFile)
    r = await client.post("/v1/token", data=form(signed(rotated, claims_for(who))))
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------------- the request itself
async def test_malformed_requests_are_400_or_401(client: httpx.AsyncClient, broker: Broker) -> None:
    ks = broker.keystore(GT)
    good = signed(ks, claims_for(GT))
    r = await client.post("/v1/token", json=form(good))
    assert_problem(r, 400, "invalid_request")
    r = await client.post("/v1/token", data={**form(good), "grant_type": "password"})
    assert assert_problem(r, 400, "unsupported_grant_type")["error"] == "unsupported_grant_type"
    r = await client.post("/v1/token", data={**form(good), "client_assertion_type": "x"})
    assert_problem(r, 400, "unsupported_client_auth")
    dup = "grant_type=client_credentials&grant_type=client_credentials"
    r = await client.post(
        "/v1/token", content=dup, headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert_problem(r, 400, "invalid_request")
    for junk in ("", "a.b", "a.b.c", "x" * 5000):
        r = await client.post("/v1/token", data=form(junk))
        assert_problem(r, 401, "malformed_assertion")
    r = await client.post("/v1/token", data=form(good, client_id="hn-police"))
    assert_problem(r, 401, "client_id_mismatch")


async def test_token_requests_are_rate_limited_per_agency(
    make_app: AppFactory, broker: Broker
) -> None:
    limits = ApiLimits(token_rate_per_min=1, token_burst=3)
    ks = broker.keystore("sv-police")
    async with connect(make_app(limits=limits)) as client:
        codes = []
        for _ in range(4):
            r = await client.post("/v1/token", data=form(signed(ks, claims_for("sv-police"))))
            codes.append(r.status_code)
        assert codes == [200, 200, 200, 429]
        assert int(r.headers["retry-after"]) >= 1
        assert_problem(r, 429, "rate_limited")
        # Another agency is not held up.
        other = broker.keystore("sv-justice")
        r = await client.post("/v1/token", data=form(signed(other, claims_for("sv-justice"))))
        assert r.status_code == 200
        metrics = (await client.get("/metrics")).text
        assert 'istmo_rate_limited_total{limit="token"} 1.0' in metrics


async def test_an_api_without_a_token_key_answers_503(broker: Broker) -> None:
    from broker.runtime.app import create_app

    app = create_app(broker.registry, broker.directory, lambda: True, allowed_hosts=[HOST])
    async with connect(app) as client:
        r = await client.post("/v1/token", data=form("a.b.c"))
        assert_problem(r, 503, "auth_not_configured")
        assert (await client.get("/v1/directory")).status_code == 200
