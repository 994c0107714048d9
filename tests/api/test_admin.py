"""The administrators' endpoints: policy read, validate, explain, simulate; agencies."""

from __future__ import annotations

import httpx
import pytest

from broker.config import default_policy_dir
from tests.api.conftest import EXPLAIN_BODY, Broker, assert_problem, bearer, token


def policy_files() -> dict[str, str]:
    root = default_policy_dir()
    files = {
        "schema.cedarschema": (root / "schema.cedarschema").read_text(),
        "base.cedar": (root / "base.cedar").read_text(),
    }
    for path in sorted((root / "overrides").glob("*.cedar")):
        files[f"overrides/{path.name}"] = path.read_text()
    return files


@pytest.fixture
async def admin(client: httpx.AsyncClient, broker: Broker) -> dict[str, str]:
    return bearer(await token(client, broker, "admin"))


async def test_the_bundle_in_force_is_its_versioned_text(
    client: httpx.AsyncClient, broker: Broker, admin: dict[str, str]
) -> None:
    r = await client.get("/v1/policy/bundle", headers=admin)
    body = r.json()
    assert body["version"] == broker.directory.bundle.version
    assert body["text"] == broker.directory.bundle.text
    public = (await client.get("/v1/policy")).json()
    assert public["policy_version"] == body["version"]


async def test_validate_the_active_files_and_a_broken_candidate(
    client: httpx.AsyncClient, broker: Broker, admin: dict[str, str]
) -> None:
    r = await client.post("/v1/policy/validate", json={"files": policy_files()}, headers=admin)
    assert r.json() == {
        "valid": True,
        "version": broker.directory.bundle.version,
        "files": list(broker.directory.bundle.files),
        "problems": [],
    }
    broken = {**policy_files(), "base.cedar": policy_files()["base.cedar"] + "\npermit(;\n"}
    r = await client.post("/v1/policy/validate", json={"files": broken}, headers=admin)
    body = r.json()
    assert body["valid"] is False
    assert body["problems"]
    assert body["problems"][0].startswith("base.cedar")
    r = await client.post(
        "/v1/policy/validate",
        json={"files": {"base.cedar": "permit(principal, action, resource);"}},
        headers=admin,
    )
    assert r.json()["valid"] is False  # no schema: refused, not guessed


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "overrides/../../x.cedar",
        "base.cedar\x00",
        "x.cedar",
        "overrides/A.cedar",
    ],
)
async def test_b45_file_names_outside_the_bundle_layout_are_400(
    client: httpx.AsyncClient, admin: dict[str, str], name: str
) -> None:
    files = {**policy_files(), name: "// nothing"}
    r = await client.post("/v1/policy/validate", json={"files": files}, headers=admin)
    assert_problem(r, 400, "bad_filename")


async def test_explain_for_any_originator(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    body = {
        "originator": "gt-police",
        **EXPLAIN_BODY,
        "agencies": ["hn-police", "jm-police", "zz-nobody"],
    }
    r = await client.post("/v1/policy/explain", json=body, headers=admin)
    answer = r.json()
    assert answer["publish"]["allowed"] is True
    rows = {c["agency"]: c for c in answer["candidates"]}
    assert rows["hn-police"]["allowed"] is True
    assert rows["jm-police"]["allowed"] is False  # not releasable to JM
    assert rows["zz-nobody"]["errors"] == ["unknown agency"]
    r = await client.post(
        "/v1/policy/explain", json={**body, "originator": "zz-nobody"}, headers=admin
    )
    assert_problem(r, 422, "unknown_agency")


async def test_simulate_a_candidate(
    client: httpx.AsyncClient, broker: Broker, admin: dict[str, str]
) -> None:
    r = await client.post(
        "/v1/policy/simulate", json={"files": policy_files(), "last": 10**5}, headers=admin
    )
    body = r.json()
    assert body["active"] == body["candidate"] == broker.directory.bundle.version
    assert body["changes"] == []
    broken = {**policy_files(), "base.cedar": "nonsense"}
    r = await client.post("/v1/policy/simulate", json={"files": broken}, headers=admin)
    assert_problem(r, 422, "invalid_policy")


async def test_one_agency_with_its_keys(
    client: httpx.AsyncClient, broker: Broker, admin: dict[str, str]
) -> None:
    r = await client.get("/v1/agencies/jm-justice", headers=admin)
    body = r.json()
    assert (body["id"], body["sector"], body["state"], body["status"]) == (
        "jm-justice",
        "justice",
        "JM",
        "active",
    )
    assert [k["kid"] for k in body["signing_keys"]] == [
        k.kid for k in broker.registry.signing_keys("jm-justice")
    ]
    assert body["encryption_keys"][0]["kem"] == "MLKEM768-X25519"
    assert body["nats_user"].startswith("U")
    assert body["topics"]
    assert_problem(await client.get("/v1/agencies/zz-nobody", headers=admin), 404, "not_found")
    assert_problem(await client.get("/v1/agencies/..%2Fadmin", headers=admin), 404)


async def test_expensive_calls_are_rate_limited(make_app, broker: Broker) -> None:
    from broker.api.guard import ApiLimits
    from tests.api.conftest import connect

    async with connect(
        make_app(limits=ApiLimits(expensive_rate_per_min=1, expensive_burst=2))
    ) as c:
        admin = bearer(await token(c, broker, "admin"))
        codes = [
            (
                await c.post("/v1/policy/validate", json={"files": policy_files()}, headers=admin)
            ).status_code
            for _ in range(3)
        ]
        assert codes == [200, 200, 429]
        # Cheap admin reads are not held up.
        assert (await c.get("/v1/agencies", headers=admin)).status_code == 200


async def test_an_administrator_revokes_an_agencys_key(
    client: httpx.AsyncClient, broker: Broker, admin: dict[str, str]
) -> None:
    keys = broker.registry.signing_keys("do-foreign")
    kid = keys[-1].kid
    agency = bearer(await token(client, broker, "do-police"))
    r = await client.post(f"/v1/agencies/do-foreign/keys/{kid}/revoke", headers=agency)
    assert r.status_code == 403  # an agency cannot
    last = await client.post(f"/v1/agencies/do-foreign/keys/{kid}/revoke", headers=admin)
    assert assert_problem(last, 409, "last_key")["detail"].startswith(
        "that is the agency's last valid signing key"
    )
    assert broker.registry.signing_key(kid).revoked_at is None  # type: ignore[union-attr]
    r = await client.post(
        f"/v1/agencies/do-foreign/keys/{kid}/revoke", params={"force": "true"}, headers=admin
    )
    assert r.status_code == 200, r.text
    assert r.json()["kid"] == kid
    assert broker.registry.signing_key(kid).revoked_at is not None  # type: ignore[union-attr]
    again = await client.post(
        f"/v1/agencies/do-foreign/keys/{kid}/revoke", params={"force": "true"}, headers=admin
    )
    assert_problem(again, 409)
    other = await client.post(f"/v1/agencies/do-police/keys/{kid}/revoke", headers=admin)
    assert_problem(other, 404)  # not that agency's key
    events = broker.registry.audit_events(type_="key.revoked", actor="admin")
    assert [e.subject for e in events] == ["do-foreign"]
