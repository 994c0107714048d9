"""HTTP error bodies never repeat the caller's input: a 404 for another agency's bulletin
does not name the id (issue 21, point 4)."""

from __future__ import annotations

import uuid

import httpx

from tests.api.conftest import Broker, assert_problem, bearer, token


async def test_error_bodies_do_not_echo_the_request(
    client: httpx.AsyncClient, broker: Broker
) -> None:
    gt = bearer(await token(client, broker, "gt-police"))
    admin = bearer(await token(client, broker, "admin"))
    bid = str(uuid.uuid4())  # missing, or another agency's: the same answer
    answers = [
        (await client.get(f"/v1/bulletins/{bid}/status", headers=gt), 404, bid),
        (await client.get(f"/v1/bulletins/{bid}/receipts", headers=gt), 404, bid),
        (await client.get("/v1/agencies/zz-canary", headers=admin), 404, "canary"),
        (await client.get("/v1/directory", params={"agency": "CANARY"}), 422, "CANARY"),
        (
            await client.post(
                "/v1/token",
                content=b"canaryfield=1&canaryfield=2",
                headers={"content-type": "application/x-www-form-urlencoded"},
            ),
            400,
            "canary",
        ),
    ]
    for r, status, canary in answers:
        assert_problem(r, status)
        assert canary not in r.text, r.text
