"""The receiving side's checks of a transfer over a partner link (ADR 33), one step of
``broker.relay.link_transfer.receive`` at a time: each refusal is audited
``federation.refused`` with its reason and never counted as arrived; a transfer that
passes every check meets the link's rules (arrived, or blocked); the ingest's HTTP answers
for each outcome, an arrival stored once on a real nats-server. Real sealed envelopes,
real signatures, a real SQLite registry; the live link is test_partner_link_live."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from broker.bus.streams import ensure_deliver_stream
from broker.config import Settings
from broker.relay.link_transfer import MAX_RECORD_AGE_S, receive
from broker.runtime.federation import ingest_app, transfers_path
from broker.store.registry import Registry
from schemas.canonical import b64e, canonical_json
from schemas.directory import (
    AgencyRecord,
    DirectoryExcerpt,
    SignedExcerpt,
    SigningKeyRecord,
    directory_version,
    sign_excerpt,
)
from schemas.keys import SigningKey
from schemas.labels import Tlp
from schemas.link_transfer import encode_transfer, max_transfer_bytes, sign_transfer
from schemas.subjects import DELIVER_STREAM
from tests.clocks import ManualClock
from tests.conftest import NatsStack
from tests.core.federation_kit import GATEWAY, LABELS, LINK, LOCAL, NOW, SIGNER, sealed

LINK_KEY = SigningKey.generate()
DIRECTORY_KEY = SigningKey.generate()
AT = NOW * 1000


def _record(
    *, status: str = "active", revoked_at: int | None = None, signer: SigningKey = SIGNER
) -> AgencyRecord:
    vk = signer.verify_key
    return AgencyRecord(
        id=LOCAL,
        name="Guatemala: police",
        state="GT",
        sector="police",
        status=status,  # type: ignore[arg-type]  # the test's literal
        signing_keys=(
            SigningKeyRecord(
                kid=vk.kid, public=b64e(vk.public), created_at=NOW - 86400, revoked_at=revoked_at
            ),
        ),
    )


def _excerpt(
    *, record: AgencyRecord | None = None, issued_at: int = NOW, key: SigningKey = DIRECTORY_KEY
) -> SignedExcerpt:
    agencies = (record or _record(),)
    ex = DirectoryExcerpt(
        v=1,
        directory_version=directory_version(1, "0" * 32),
        issued_at=issued_at,
        agencies=agencies,
    )
    return sign_excerpt(ex, key)


def _transfer(
    envelope: bytes,
    *,
    link: str = LINK.name,
    excerpt: SignedExcerpt | None = None,
    key: SigningKey = LINK_KEY,
) -> bytes:
    bid = json.loads(envelope)["header"]["bulletin_id"]
    return encode_transfer(
        sign_transfer(
            link=link,
            bulletin_id=bid,
            envelope=envelope,
            directory=excerpt or _excerpt(),
            issued_at=NOW,
            key=key,
        )
    )


def _tampered(body: bytes) -> bytes:
    doc = json.loads(body)
    doc["issued_at"] += 1
    return canonical_json(doc)


def _widened(envelope: bytes) -> bytes:
    env = json.loads(envelope)
    env["header"]["labels"]["tlp"] = "CLEAR"
    return canonical_json(env)


ENV = sealed()
CASES: dict[str, Callable[[], bytes]] = {
    "malformed": lambda: b'{"v": 1}',
    "wrong_link": lambda: _transfer(ENV, link="other-link"),
    "link_signature": lambda: _transfer(ENV, key=SigningKey.generate()),
    "tampered": lambda: _tampered(_transfer(ENV)),
    "directory_signature": lambda: _transfer(ENV, excerpt=_excerpt(key=SigningKey.generate())),
    "stale_record": lambda: _transfer(ENV, excerpt=_excerpt(issued_at=NOW - MAX_RECORD_AGE_S - 1)),
    "unknown_originator": lambda: _transfer(
        ENV, excerpt=_excerpt(record=_record(status="suspended"))
    ),
    "unknown_key": lambda: _transfer(
        ENV, excerpt=_excerpt(record=_record(signer=SigningKey.generate()))
    ),
    "key_revoked": lambda: _transfer(ENV, excerpt=_excerpt(record=_record(revoked_at=NOW - 3600))),
    "originator_signature": lambda: _transfer(_widened(ENV)),
}
REASON = {"tampered": "link_signature"}


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(Settings.from_env(env={}, data_dir=tmp_path).db_url)


@pytest.mark.parametrize("case", list(CASES))
def test_a_transfer_failing_a_check_is_refused_and_audited(case: str, registry: Registry) -> None:
    body = CASES[case]()
    arrival = receive(
        registry,
        LINK,
        body,
        sender_key=LINK_KEY.verify_key,
        directory_key=DIRECTORY_KEY.verify_key,
        at_ms=AT,
    )
    reason = REASON.get(case, case)
    assert (arrival.outcome, arrival.reasons) == ("refused", (reason,))
    refused = registry.audit_events(type_="federation.refused")
    assert [e.reason for e in refused] == [reason]
    assert registry.audit_events(type_="federation.arrived") == []
    # The same bytes again: one event.
    receive(
        registry,
        LINK,
        body,
        sender_key=LINK_KEY.verify_key,
        directory_key=DIRECTORY_KEY.verify_key,
        at_ms=AT + 1000,
    )
    assert len(registry.audit_events(type_="federation.refused")) == 1
    registry.close()


def test_a_good_transfer_arrives_once_and_the_rules_still_apply(registry: Registry) -> None:
    def offer(envelope: bytes) -> tuple[str, tuple[str, ...]]:
        a = receive(
            registry,
            LINK,
            _transfer(envelope),
            sender_key=LINK_KEY.verify_key,
            directory_key=DIRECTORY_KEY.verify_key,
            at_ms=AT,
        )
        return a.outcome, a.reasons

    assert offer(ENV) == ("arrived", ())
    assert offer(ENV) == ("arrived", ())  # sent again: counted once
    red = sealed(labels=LABELS.model_copy(update={"tlp": Tlp.RED, "named": (GATEWAY,)}))
    assert offer(red) == ("blocked", ("tlp_red",))
    assert len(registry.audit_events(type_="federation.arrived")) == 1
    assert len(registry.audit_events(type_="federation.blocked")) == 1
    assert registry.audit_events(type_="federation.refused") == []
    registry.close()


async def test_the_ingest_answers_each_outcome_and_stores_an_arrival_once(
    tmp_path: Path, nats_stack: Callable[..., Awaitable[NatsStack]]
) -> None:
    """``istmo federation ingest``'s HTTP shell over a real nats-server: 200 and stored
    once (sent twice), 422 blocked, 400 refused, 413 too large, 404 another link."""
    stack = await nats_stack([GATEWAY])
    nc = await stack.connect_relay()
    await ensure_deliver_stream(nc.jetstream())
    registry = Registry(Settings.from_env(env={}, data_dir=tmp_path).db_url)
    app = ingest_app(
        registry,
        LINK,
        nc=nc,
        sender_key=LINK_KEY.verify_key,
        directory_key=DIRECTORY_KEY.verify_key,
        clock=ManualClock(AT),
        allowed_hosts={"ingest"},
    )
    url = f"http://ingest{transfers_path(LINK.name)}"
    red = sealed(labels=LABELS.model_copy(update={"tlp": Tlp.RED, "named": (GATEWAY,)}))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
            for _ in range(2):
                ok = await http.post(url, content=_transfer(ENV))
                assert ok.status_code == 200, ok.text
            assert ok.json()["to"] == [GATEWAY]
            blocked = await http.post(url, content=_transfer(red))
            assert (blocked.status_code, blocked.json()["reasons"]) == (422, ["tlp_red"])
            refused = await http.post(url, content=_tampered(_transfer(ENV)))
            assert (refused.status_code, refused.json()) == (400, {"outcome": "refused"})
            huge = b"x" * (max_transfer_bytes(LINK.max_envelope_bytes) + 1)
            assert (await http.post(url, content=huge)).status_code == 413
            other = await http.post(url.replace(LINK.name, "other-link"), content=b"{}")
            assert other.status_code == 404
            # Another Host (a page rebinding a name to the ingest): refused, nothing read.
            elsewhere = await http.post(
                url.replace("//ingest", "//attacker.example"), content=b"{}"
            )
            assert elsewhere.status_code == 421
        info = await nc.jetstream().stream_info(
            DELIVER_STREAM, subjects_filter=f"istmo.deliver.{GATEWAY}.>"
        )
        assert info.state.subjects == {f"istmo.deliver.{GATEWAY}.routine": 1}
        stored = await nc.jetstream().get_last_msg(
            DELIVER_STREAM, f"istmo.deliver.{GATEWAY}.routine"
        )
        assert stored.data == ENV  # unchanged, byte for byte
    finally:
        registry.close()
        await nc.close()
