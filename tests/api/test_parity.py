"""Both doors give the same answers (ADR 0001): NATS request/reply and HTTP, over one
running broker (nats-server, relay) and a real bulletin."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from broker.api.oauth import TokenAuthority, load_token_key
from broker.runtime.app import create_app
from broker.runtime.stack import Stack
from clients.oauth import IstmoHttp
from schemas.canonical import canonical_json
from schemas.directory import open_excerpt
from schemas.labels import Classification, Labels, Tlp
from tests.api.conftest import BASE, connect
from tests.integration.stack_inproc import client, running_stack
from tests.waiting import eventually

LABELS = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("HN",),
)
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path_factory.mktemp("parity") / "istmo") as s:
        yield s


def http_for(stack: Stack, who: str, c) -> IstmoHttp:  # type: ignore[no-untyped-def]
    ks = stack.settings.keys_dir / f"{who}.json"
    from clients.keystore import load_keystore

    return IstmoHttp(BASE, load_keystore(ks), client=c)


async def test_resolve_explain_and_status_agree(stack: Stack) -> None:
    assert stack.registry is not None
    assert stack.directory is not None
    authority = TokenAuthority(
        stack.registry, load_token_key(stack.settings.broker_dir), issuer=BASE
    )
    app = create_app(stack.registry, stack.directory, lambda: True, auth=authority)
    labels = LABELS.model_dump(mode="json", exclude_none=True)
    async with await client(stack, "gt-police") as gt, connect(app) as c:
        api = http_for(stack, "gt-police", c)
        # resolve: the same recipients, in an excerpt signed by the pinned directory key
        over_nats = await gt.resolve(LABELS)
        over_http = await api.post("/v1/recipients/resolve", json={"labels": labels})
        excerpt = open_excerpt(canonical_json(over_http["directory"]), gt._pinned)
        assert set(over_http["recipients"]) == set(over_nats)
        assert "hn-police" in over_nats
        assert {a.id for a in excerpt.agencies} == set(over_nats)
        # explain: the same verdicts and reasons
        preview = await gt.preview(LABELS)
        explained = await api.post("/v1/recipients/explain", json={"labels": labels})
        assert explained["policy_version"] == preview.policy_version
        verdicts = [(c["agency"], c["allowed"], c["summary"]) for c in explained["candidates"]]
        assert verdicts == list(preview.candidates)
        # status: a real bulletin, published over NATS, seen over HTTP by its originator only
        result = await gt.publish(title="parity", text="parity body", labels=LABELS)
        assert result.state == "accepted"
        status = await api.get(f"/v1/bulletins/{result.bulletin_id}/status")
        assert status["state"] == "accepted"
        assert tuple(status["routed"]) == result.routed
        assert "hn-police" in result.routed
        hn = http_for(stack, "hn-police", c)
        r = await hn.request("GET", f"/v1/bulletins/{result.bulletin_id}/status")
        assert r.status_code == 404
        # receipts: hn-police receives it over NATS; its receipt shows over both doors
        async with await client(stack, "hn-police") as hn_nats:
            assert await hn_nats.receive(_ignore, count=1, timeout=10) == 1

        def received_by_hn(receipts: dict) -> bool:
            return any(
                r["agency"] == "hn-police" and r["received_at"] for r in receipts["recipients"]
            )

        receipts = await eventually(
            lambda: api.get(f"/v1/bulletins/{result.bulletin_id}/receipts"),
            until=received_by_hn,
            what="hn-police's receipt over HTTP",
        )
        got = {r["agency"]: r["received_at"] for r in receipts["recipients"]}
        report = await gt.receipts(result.bulletin_id)
        assert [(r["agency"], r["received_at"]) for r in receipts["recipients"]] == list(
            report.recipients
        )
        assert got["hn-police"] is not None


async def _ignore(_bulletin: object) -> None:
    return None
