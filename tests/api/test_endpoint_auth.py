"""Every protected endpoint refuses: no token, an expired or forged token, a token
without the scope, a suspended holder, and another agency's bulletin (BOLA, B-40). Each
401/403 is a problem naming the reason and an audit entry."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import pytest

from broker.api.oauth import ADMIN_SCOPES, AGENCY_SCOPES, Client
from broker.runtime.app import create_app
from broker.store.registry import BulletinRow, DecisionRow, ReceiptRow, RejectionRow
from schemas.canonical import canonical_json
from tests.api.conftest import (
    EXPLAIN_BODY,
    Broker,
    assert_problem,
    bearer,
    claims_for,
    connect,
    signed,
    token,
)
from tests.clocks import ManualClock

GT, HN = "gt-police", "hn-police"


def _policy_files() -> dict[str, str]:
    from broker.config import default_policy_dir

    root = default_policy_dir()
    return {
        "schema.cedarschema": (root / "schema.cedarschema").read_text(),
        "base.cedar": (root / "base.cedar").read_text(),
    }


# (method, path, scope, json body)
ENDPOINTS: list[tuple[str, str, str, Any]] = [
    ("POST", "/v1/recipients/resolve", "bulletins:publish", EXPLAIN_BODY),
    ("POST", "/v1/recipients/explain", "bulletins:publish", EXPLAIN_BODY),
    ("GET", "/v1/bulletins/{gt_bulletin}/status", "bulletins:read", None),
    ("GET", "/v1/bulletins/{gt_bulletin}/receipts", "bulletins:read", None),
    ("GET", "/v1/policy/bundle", "admin", None),
    ("POST", "/v1/policy/validate", "admin", {"files": _policy_files()}),
    ("POST", "/v1/policy/explain", "admin", {"originator": GT, **EXPLAIN_BODY}),
    ("POST", "/v1/policy/simulate", "admin", {"files": _policy_files(), "last": 10}),
    ("GET", "/v1/agencies", "admin", None),
    ("GET", "/v1/agencies/gt-police", "admin", None),
    ("GET", "/v1/subscriptions", "bulletins:read", None),
    ("GET", "/v1/agencies/gt-police/subscriptions", "admin", None),
]
IDS = [f"{m} {p}" for m, p, _, _ in ENDPOINTS]


@pytest.fixture(scope="module")
def gt_bulletin(broker: Broker) -> str:
    """An accepted bulletin of gt-police, routed to hn-police (who sent a receipt)."""
    bid = str(uuid.uuid4())
    now = int(time.time())
    labels = canonical_json(EXPLAIN_BODY["labels"]).decode()
    broker.registry.record(
        [
            BulletinRow(
                id=bid,
                originator=GT,
                labels=labels,
                envelope_digest="0" * 64,
                ingest_seq=1,
                created_at=now,
                accepted_at=now,
                recipients="hn-police,sv-police",
                policy_version=broker.directory.bundle.version,
                directory_version=broker.directory.version,
            ),
            DecisionRow(
                bulletin_id=bid, agency=HN, allowed=True, policy_ids="grant.x", reasons="[]"
            ),
            DecisionRow(
                bulletin_id=bid,
                agency="sv-police",
                allowed=False,
                policy_ids="guard.y",
                reasons=json.dumps(["because"]),
            ),
            ReceiptRow(
                bulletin_id=bid, recipient=HN, received_at=now, recorded_at=now, signature="c2ln"
            ),
        ],
        [],
    )
    return bid


def route_of(template: str) -> str:
    """The route template the audit entry names."""
    return template.replace("{gt_bulletin}", "{bulletin_id}").replace(
        "/agencies/gt-police", "/agencies/{agency_id}"
    )


def path_of(template: str, bid: str) -> str:
    return template.replace("{gt_bulletin}", bid)


async def call(
    client: httpx.AsyncClient, method: str, path: str, body: Any, headers: dict[str, str]
) -> httpx.Response:
    return await client.request(method, path, json=body, headers=headers)


async def right_token(client: httpx.AsyncClient, broker: Broker, scope: str) -> str:
    return await token(client, broker, "admin" if scope == "admin" else GT)


async def wrong_scope_token(client: httpx.AsyncClient, broker: Broker, scope: str) -> str:
    if scope == "admin":
        return await token(client, broker, GT)
    if scope == "bulletins:read":
        return await token(client, broker, GT, scope="bulletins:publish")
    return await token(client, broker, GT, scope="bulletins:read")


def audited(broker: Broker, before: int, actor: str, reason: str, route: str) -> None:
    rows = broker.audit("auth.refused", after=before)
    assert [(r.actor, r.reason, r.subject.split(" ", 1)[1]) for r in rows] == [
        (actor, reason, route)
    ], rows


@pytest.mark.parametrize(("method", "template", "scope", "body"), ENDPOINTS, ids=IDS)
async def test_the_right_token_works(
    client: httpx.AsyncClient,
    broker: Broker,
    gt_bulletin: str,
    method: str,
    template: str,
    scope: str,
    body: Any,
) -> None:
    tok = await right_token(client, broker, scope)
    r = await call(client, method, path_of(template, gt_bulletin), body, bearer(tok))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(("method", "template", "scope", "body"), ENDPOINTS, ids=IDS)
async def test_no_token_is_401(
    client: httpx.AsyncClient,
    broker: Broker,
    gt_bulletin: str,
    method: str,
    template: str,
    scope: str,
    body: Any,
) -> None:
    before = broker.last_seq()
    r = await call(client, method, path_of(template, gt_bulletin), body, {})
    assert_problem(r, 401, "missing_token")
    assert r.headers["www-authenticate"] == 'Bearer realm="istmo"'
    audited(
        broker,
        before,
        "unknown",
        "missing_token",
        route_of(template),
    )


@pytest.mark.parametrize(("method", "template", "scope", "body"), ENDPOINTS, ids=IDS)
async def test_an_expired_token_is_401(
    client: httpx.AsyncClient,
    broker: Broker,
    gt_bulletin: str,
    method: str,
    template: str,
    scope: str,
    body: Any,
) -> None:
    who, scopes = ("admin", ADMIN_SCOPES) if scope == "admin" else (GT, AGENCY_SCOPES)
    kind = "admin" if scope == "admin" else "agency"
    old = broker.authority().issue(
        Client(who, kind, scopes, "test"), None, now=int(time.time()) - 301
    )
    before = broker.last_seq()
    r = await call(client, method, path_of(template, gt_bulletin), body, bearer(old.access_token))
    assert_problem(r, 401, "token_expired")
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    audited(broker, before, who, "token_expired", route_of(template))


@pytest.mark.parametrize(("method", "template", "scope", "body"), ENDPOINTS, ids=IDS)
async def test_a_token_without_the_scope_is_403(
    client: httpx.AsyncClient,
    broker: Broker,
    gt_bulletin: str,
    method: str,
    template: str,
    scope: str,
    body: Any,
) -> None:
    tok = await wrong_scope_token(client, broker, scope)
    before = broker.last_seq()
    r = await call(client, method, path_of(template, gt_bulletin), body, bearer(tok))
    assert_problem(r, 403, "insufficient_scope")
    assert f'scope="{scope}"' in r.headers["www-authenticate"]
    audited(broker, before, GT, "insufficient_scope", route_of(template))


@pytest.mark.parametrize(("method", "template", "scope", "body"), ENDPOINTS, ids=IDS)
async def test_forged_tokens_are_401(
    client: httpx.AsyncClient,
    broker: Broker,
    gt_bulletin: str,
    method: str,
    template: str,
    scope: str,
    body: Any,
) -> None:
    path = path_of(template, gt_bulletin)
    # A client assertion is not an access token, even signed by a registered key.
    assertion = signed(broker.keystore(GT), claims_for(GT))
    forged = {
        "garbage": ("Bearer not.a.jwt", "malformed_token"),
        "assertion": (f"Bearer {assertion}", "bad_signature"),
        "basic": ("Basic Z3Q6eA==", "not_bearer"),
    }
    for header, code in forged.values():
        r = await call(client, method, path, body, {"Authorization": header})
        assert_problem(r, 401, code)


async def test_an_auditor_token_reaches_no_bulletin_or_admin_endpoint(
    client: httpx.AsyncClient, broker: Broker, gt_bulletin: str
) -> None:
    tok = await token(client, broker, "auditor")
    for method, template, _scope, body in ENDPOINTS:
        r = await call(client, method, path_of(template, gt_bulletin), body, bearer(tok))
        assert_problem(r, 403, "insufficient_scope")


async def test_a_suspension_takes_effect_on_live_tokens(
    client: httpx.AsyncClient, broker: Broker
) -> None:
    who = "ni-police"
    tok = await token(client, broker, who)
    ok = await client.post("/v1/recipients/explain", json=EXPLAIN_BODY, headers=bearer(tok))
    assert ok.status_code == 200
    broker.set_status(who, "suspended")
    try:
        before = broker.last_seq()
        r = await client.post("/v1/recipients/explain", json=EXPLAIN_BODY, headers=bearer(tok))
        assert_problem(r, 401, "client_suspended")
        audited(broker, before, who, "client_suspended", "/v1/recipients/explain")
    finally:
        broker.set_status(who, "active")
    r = await client.post("/v1/recipients/explain", json=EXPLAIN_BODY, headers=bearer(tok))
    assert r.status_code == 200


# ---------------------------------------------------------------------- BOLA (B-40)
async def test_b40_another_agencys_bulletin_is_the_same_404_as_a_missing_one(
    client: httpx.AsyncClient, broker: Broker, gt_bulletin: str
) -> None:
    tok = await token(client, broker, HN)  # hn-police even received it
    missing = str(uuid.uuid4())
    for what in ("status", "receipts"):
        theirs = await client.get(f"/v1/bulletins/{gt_bulletin}/{what}", headers=bearer(tok))
        nothing = await client.get(f"/v1/bulletins/{missing}/{what}", headers=bearer(tok))
        assert_problem(theirs, 404)
        assert theirs.status_code == nothing.status_code == 404
        assert theirs.text.replace(gt_bulletin, "ID") == nothing.text.replace(missing, "ID")
        assert dict(theirs.headers) == dict(nothing.headers)


async def test_a_rejected_bulletin_of_another_agency_is_also_404(
    client: httpx.AsyncClient, broker: Broker
) -> None:
    bid = str(uuid.uuid4())
    broker.registry.record(
        [
            RejectionRow(
                ingest_seq=10**9,
                originator=GT,
                bulletin_id=bid,
                reason="signature_invalid",
                message="x",
                time=int(time.time()),
            )
        ],
        [],
    )
    mine = await client.get(
        f"/v1/bulletins/{bid}/status", headers=bearer(await token(client, broker, GT))
    )
    assert mine.json() == {
        "state": "rejected",
        "bulletin_id": bid,
        "reason": "signature_invalid",
        "message": "x",
    }
    theirs = await client.get(
        f"/v1/bulletins/{bid}/status", headers=bearer(await token(client, broker, HN))
    )
    assert_problem(theirs, 404, "not_found")


async def test_the_originator_sees_status_and_receipts(
    client: httpx.AsyncClient, broker: Broker, gt_bulletin: str
) -> None:
    tok = await token(client, broker, GT)
    status = (await client.get(f"/v1/bulletins/{gt_bulletin}/status", headers=bearer(tok))).json()
    assert status["state"] == "accepted"
    assert status["routed"] == [HN]
    assert status["denied"] == [
        {"agency": "sv-police", "policy_ids": ["guard.y"], "reasons": ["because"]}
    ]
    receipts = await client.get(f"/v1/bulletins/{gt_bulletin}/receipts", headers=bearer(tok))
    [entry] = receipts.json()["recipients"]  # routed recipients only: not sv-police
    assert (entry["agency"], entry["signature"]) == (HN, "c2ln")
    assert isinstance(entry["received_at"], int)


async def test_a_bad_bulletin_id_is_refused_without_a_lookup(
    client: httpx.AsyncClient, broker: Broker
) -> None:
    tok = await token(client, broker, GT)
    for bad in ("..%2F..%2Fetc%2Fpasswd", "' OR 1=1 --", "x" * 100):
        r = await client.get(f"/v1/bulletins/{bad}/status", headers=bearer(tok))
        assert r.status_code in (404, 422)
        assert_problem(r, r.status_code)


async def test_the_api_reads_the_time_from_its_clock(broker: Broker) -> None:
    """A token is judged, and its refusal stamped, by the clock the app is given: a test
    moves it past the token's lifetime instead of waiting."""
    issued_at = int(time.time())
    fresh = broker.authority().issue(
        Client(GT, "agency", AGENCY_SCOPES, "test"), None, now=issued_at
    )
    clock = ManualClock.at(issued_at)
    app = create_app(
        broker.registry, broker.directory, lambda: True, auth=broker.authority(), clock=clock
    )
    async with connect(app) as c:
        assert (await c.get("/v1/subscriptions", headers=bearer(fresh.access_token))).is_success
        clock.advance(fresh.expires_in + 1)
        before = broker.last_seq()
        r = await c.get("/v1/subscriptions", headers=bearer(fresh.access_token))
    assert_problem(r, 401, "token_expired")
    (refused,) = broker.audit("auth.refused", after=before)
    assert refused.time == clock.now_ms()
