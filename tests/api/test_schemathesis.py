"""A schemathesis run against the app's own OpenAPI document: no 5xx, and every response
(status, content type, headers, body) conforms to what the document says.

Each operation is called with a token that has its scope (so generated data reaches the
endpoint, not only the 401), and once without. Hypothesis' database is off so the run
is the same every time; about 25 cases per operation keep it well under a minute.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from broker.api.guard import ApiLimits
from broker.api.oauth import ADMIN_SCOPES, AGENCY_SCOPES, Client
from broker.config import Settings
from broker.directory.policy_sets import adopt
from tests.api.conftest import SCHEMATHESIS_HOST, Broker

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def api_schema(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from broker.runtime.app import create_app

    # Generous rate limits: the run is hundreds of calls a second from one caller.
    limits = ApiLimits(
        api_rate_per_s=1e6,
        api_burst=10**6,
        refusal_rate_per_min=1e9,
        refusal_burst=10**6,
        token_rate_per_min=1e6,
        token_burst=10**6,
        peer_token_rate_per_min=1e6,
        expensive_rate_per_min=1e6,
        expensive_burst=10**6,
    )
    app = create_app(
        broker.registry,
        broker.directory,
        lambda: True,
        auth=broker.authority(),
        limits=limits,
        allowed_hosts=(SCHEMATHESIS_HOST,),
    )
    archive = Settings(data_dir=tmp_path_factory.mktemp("adopt"))  # pytest removes it

    async def adopt_hook(root: Path, who: str) -> tuple[str, str]:
        # The real adoption path (validate, archive, audit), without switching the engine:
        # a generated candidate is almost always refused (422), which is what is checked.
        done = adopt(
            root,
            settings=archive,
            registry=broker.registry,
            active=broker.directory.bundle,
            adopted_by=who,
            check=broker.directory.engine_for,
        )
        return done.previous or "", done.version

    app.state.istmo.adopt_policy = adopt_hook
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.fixture(scope="module")
def tokens(broker: Broker) -> dict[str, str]:
    authority = broker.authority()
    now = int(time.time())
    return {
        "admin": authority.issue(
            Client("admin", "admin", ADMIN_SCOPES, "t"), None, now
        ).access_token,
        "agency": authority.issue(
            Client("gt-police", "agency", AGENCY_SCOPES, "t"), None, now
        ).access_token,
    }


def _token_for(path: str, tokens: dict[str, str]) -> str | None:
    if path.startswith(("/v1/policy/", "/v1/agencies")):
        return tokens["admin"]
    if path.startswith(("/v1/recipients", "/v1/bulletins", "/v1/subscriptions")):
        return tokens["agency"]
    return None


def test_the_api_conforms_to_its_openapi_document(api_schema: Any, tokens: dict[str, str]) -> None:
    # schemathesis' own pytest integration (schema.parametrize with a fixture) breaks on
    # pytest 9 (it reads a private attribute pytest removed), so drive its strategies here.
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 16
    started = time.process_time()  # CPU (the app runs in this process): load-proof
    statuses: dict[tuple[str, str, int], int] = {}
    for operation in operations:
        _run(operation, _token_for(operation.path, tokens), statuses)
    assert time.process_time() - started < 60
    called = {(method, path) for method, path, _ in statuses}
    assert called == {(op.method.upper(), op.path) for op in operations}
    assert any(status == 200 for _, _, status in statuses)


def _run(operation: Any, token: str | None, statuses: dict[tuple[str, str, int], int]) -> None:
    """Up to 25 generated cases of one operation, with ``token`` and then without."""

    @given(case=operation.as_strategy())
    @settings(
        max_examples=25,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        response = case.call_and_validate(headers=headers, checks=CHECKS)
        key = (case.method, case.path, response.status_code)
        statuses[key] = statuses.get(key, 0) + 1
        if token:  # the same case without the token: a documented 401 problem
            bare = case.call_and_validate(checks=CHECKS)
            assert bare.status_code == 401, (case.method, case.path, bare.status_code)

    run()
