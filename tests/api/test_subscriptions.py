"""Subscriptions over HTTP: an agency reads its own topics; administrators read and set an
agency's, one audit event per topic, and the change decides who is a candidate at once."""

from __future__ import annotations

import httpx
import pytest

from broker.directory.subscriptions import set_subscriptions, subscriptions_of
from schemas.errors import ConfigError
from schemas.labels import TOPICS
from tests.api.conftest import EXPLAIN_BODY, Broker, assert_problem, bearer, token

GT, HN = "gt-police", "hn-police"
POLICE = ["arms-trafficking", "border-incident", "drug-trafficking", "human-trafficking"]
POLICE_ALL = sorted([*POLICE, "organized-crime"], key=TOPICS.index)


@pytest.fixture
async def admin(client: httpx.AsyncClient, broker: Broker) -> dict[str, str]:
    return bearer(await token(client, broker, "admin"))


@pytest.fixture
async def gt(client: httpx.AsyncClient, broker: Broker) -> dict[str, str]:
    return bearer(await token(client, broker, GT))


def subs(agency: str) -> str:
    return f"/v1/agencies/{agency}/subscriptions"


async def test_an_agency_reads_its_own_topics(
    client: httpx.AsyncClient, broker: Broker, gt: dict[str, str]
) -> None:
    r = await client.get("/v1/subscriptions", headers=gt)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "agency": GT,
        "topics": list(subscriptions_of(broker.registry, GT) or ()),
    }
    assert r.json()["topics"] == POLICE_ALL


async def test_an_administrator_reads_any_agencys_topics(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    r = await client.get(subs("pa-foreign"), headers=admin)
    assert r.json() == {
        "agency": "pa-foreign",
        "topics": ["border-incident", "migration", "early-warning", "lessons-learned"],
    }
    assert_problem(await client.get(subs("xx-nobody"), headers=admin), 404, "not_found")
    r = await client.put(subs("xx-nobody"), json={"topics": []}, headers=admin)
    assert_problem(r, 404, "unknown_agency")


async def test_scopes_are_enforced_and_refusals_audited(
    client: httpx.AsyncClient, broker: Broker, admin: dict[str, str], gt: dict[str, str]
) -> None:
    body = {"topics": ["migration"]}
    for method, path, payload in (
        ("GET", "/v1/subscriptions", None),
        ("GET", subs(GT), None),
        ("PUT", subs(GT), body),
    ):
        assert_problem(await client.request(method, path, json=payload), 401, "missing_token")
    # Agencies do not set (nor read others') subscriptions: need-to-know is decided centrally.
    before = broker.last_seq()
    r = await client.put(subs(GT), json=body, headers=gt)
    assert_problem(r, 403, "insufficient_scope")
    assert_problem(await client.get(subs(HN), headers=gt), 403, "insufficient_scope")
    # An administrator is not an agency: it follows nothing and has no bulletins:read.
    assert_problem(await client.get("/v1/subscriptions", headers=admin), 403, "insufficient_scope")
    refused = broker.audit("auth.refused", after=before)
    assert [(e.actor, e.subject) for e in refused] == [
        (GT, "PUT /v1/agencies/{agency_id}/subscriptions"),
        (GT, "GET /v1/agencies/{agency_id}/subscriptions"),
        ("admin", "GET /v1/subscriptions"),
    ]
    publish_only = bearer(await token(client, broker, GT, scope="bulletins:publish"))
    r = await client.get("/v1/subscriptions", headers=publish_only)
    assert_problem(r, 403, "insufficient_scope")
    assert subscriptions_of(broker.registry, GT) == tuple(POLICE_ALL)  # nothing changed


async def test_a_change_is_one_audit_event_per_topic_with_the_admin_as_actor(
    client: httpx.AsyncClient, broker: Broker, admin: dict[str, str]
) -> None:
    before = broker.last_seq()
    wanted = ["migration", "drug-trafficking", "migration", "early-warning"]
    r = await client.put(subs("pa-foreign"), json={"topics": wanted}, headers=admin)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "agency": "pa-foreign",
        "topics": ["drug-trafficking", "migration", "early-warning"],
        "added": ["drug-trafficking"],
        "removed": ["border-incident", "lessons-learned"],
        "applied": False,  # no running stack here: only this app's directory refreshed
    }
    added = broker.audit("subscription.added", after=before)
    removed = broker.audit("subscription.removed", after=before)
    assert [(e.actor, e.subject, e.to_event().data) for e in added] == [
        ("admin", "pa-foreign", {"topic": "drug-trafficking"})
    ]
    assert [(e.actor, e.subject, e.to_event().data["topic"]) for e in removed] == [
        ("admin", "pa-foreign", "border-incident"),
        ("admin", "pa-foreign", "lessons-learned"),
    ]
    assert "pa-foreign" in broker.directory.candidates("drug-trafficking", ())
    # The same set again changes nothing and records nothing.
    again = broker.last_seq()
    r = await client.put(subs("pa-foreign"), json={"topics": wanted}, headers=admin)
    assert (r.json()["added"], r.json()["removed"]) == ([], [])
    assert broker.last_seq() == again
    restore = ["border-incident", "migration", "early-warning", "lessons-learned"]
    r = await client.put(subs("pa-foreign"), json={"topics": restore}, headers=admin)
    assert r.json()["topics"] == restore
    assert "pa-foreign" not in broker.directory.candidates("drug-trafficking", ())


async def test_an_unknown_topic_is_refused_by_place_and_changes_nothing(
    client: httpx.AsyncClient, broker: Broker, admin: dict[str, str]
) -> None:
    before = broker.last_seq()
    r = await client.put(subs(HN), json={"topics": ["migration", "space-piracy"]}, headers=admin)
    body = assert_problem(r, 422, "unknown_topic")
    assert "topics[1]" in body["detail"]  # where it is, not what was sent
    assert "space-piracy" not in body["detail"]
    assert "drug-trafficking" in body["detail"]
    assert subscriptions_of(broker.registry, HN) == tuple(POLICE_ALL)
    assert broker.audit("subscription.added", after=before) == []
    with pytest.raises(ConfigError) as err:
        set_subscriptions(broker.registry, HN, ["nope"], "test")
    assert err.value.code == "unknown_topic"
    with pytest.raises(ConfigError) as err:
        set_subscriptions(broker.registry, "xx-nobody", [], "test")
    assert err.value.code == "unknown_agency"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"topics": [*TOPICS, "migration"]}, 422),  # more topics than there are
        ({"topics": ["x" * 65]}, 422),
        ({"topics": [""]}, 422),
        ({"topics": "migration"}, 422),
        ({"topics": [1]}, 422),
        ({}, 422),
        ({"topics": [], "agency": GT}, 422),
    ],
    ids=["too-many", "too-long", "empty-string", "not-a-list", "not-strings", "missing", "extra"],
)
async def test_bounded_and_strict_input(
    client: httpx.AsyncClient,
    broker: Broker,
    admin: dict[str, str],
    body: dict[str, object],
    status: int,
) -> None:
    r = await client.put(subs(HN), json=body, headers=admin)
    assert_problem(r, status)
    assert subscriptions_of(broker.registry, HN) == tuple(POLICE_ALL)


async def test_an_oversized_body_is_413(
    client: httpx.AsyncClient, broker: Broker, admin: dict[str, str]
) -> None:
    big = b'{"topics": ["' + b"a" * 2_000_000 + b'"]}'
    headers = {**admin, "Content-Type": "application/json"}
    assert_problem(await client.put(subs(HN), content=big, headers=headers), 413)
    assert subscriptions_of(broker.registry, HN) == tuple(POLICE_ALL)


async def test_a_removed_topic_is_no_longer_a_candidate_for_resolve(
    client: httpx.AsyncClient, broker: Broker, admin: dict[str, str], gt: dict[str, str]
) -> None:
    r = await client.post("/v1/recipients/resolve", json=EXPLAIN_BODY, headers=gt)
    assert HN in r.json()["recipients"]
    r = await client.put(subs(HN), json={"topics": POLICE}, headers=admin)
    assert r.json()["removed"] == ["organized-crime"]  # not drug-trafficking: still there
    r = await client.put(
        subs(HN), json={"topics": [t for t in POLICE if t != "drug-trafficking"]}, headers=admin
    )
    assert r.json()["removed"] == ["drug-trafficking"]
    try:
        r = await client.post("/v1/recipients/resolve", json=EXPLAIN_BODY, headers=gt)
        assert r.status_code == 200, r.text
        assert HN not in r.json()["recipients"]
        explained = await client.post("/v1/recipients/explain", json=EXPLAIN_BODY, headers=gt)
        assert HN not in [c["agency"] for c in explained.json()["candidates"]]
        mine = await client.get(
            "/v1/subscriptions", headers=bearer(await token(client, broker, HN))
        )
        assert "drug-trafficking" not in mine.json()["topics"]
    finally:
        r = await client.put(subs(HN), json={"topics": POLICE_ALL}, headers=admin)
        assert r.json()["added"] == ["drug-trafficking", "organized-crime"]
    r = await client.post("/v1/recipients/resolve", json=EXPLAIN_BODY, headers=gt)
    assert HN in r.json()["recipients"]
