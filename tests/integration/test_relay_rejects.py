"""The relay refuses bad bulletins with an audit entry naming the reason, and delivers
nothing; the publisher's SDK sees the refusal as a clear error.

One smoke test per path through the running stack (accept, refuse, refuse what does not
parse, replay and conflict across batches); every refusal code and denial is decided in
``tests/core/test_relay_plan.py`` without NATS or a database."""

from __future__ import annotations

import json
import time

import pytest
import pytest_asyncio
from sqlmodel import select

from broker.runtime.stack import Stack
from broker.store.registry import AuditRow, SigningKeyRow
from clients.sdk import IstmoClient, PublishRejected, ReceivedBulletin
from schemas.canonical import b64d, b64e, canonical_json
from schemas.envelope import Content, Envelope
from schemas.ids import AgencyId, BulletinId
from schemas.keys import SigningKey
from schemas.labels import Classification, Labels, Tlp
from schemas.receipt import sign_receipt
from schemas.sealing import encode_envelope, seal
from schemas.subjects import (
    DELIVER_STREAM,
    INGEST_STREAM,
    RELAY_INGEST_DURABLE,
    ingest_msg_id,
    ingest_subject,
    receipt_subject,
)
from tests.integration.stack_inproc import client, nats_url, running_stack
from tests.storage_engines import Storage
from tests.waiting import eventually

LABELS = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("HN",),
)


# One stack for the module: every test uses fresh bulletins.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory, storage_module: Storage):
    async with running_stack(
        tmp_path_factory.mktemp("rejects") / "istmo", database_url=storage_module.pg_url
    ) as s:
        yield s


async def sealed(gt: IstmoClient, *, labels: Labels = LABELS, **kw: object) -> Envelope:
    recipients = await gt.resolve(labels)
    assert recipients, "HN police should be permitted"
    args: dict = {
        "content": Content(title="canary title", text="canary body"),
        "labels": labels,
        "originator": gt.agency,
        "signing_key": gt.keystore.signing_key(),
        "recipients": recipients,
        "now": int(time.time()),
    }
    args.update(kw)
    return seal(**args)


def flip_ct(env: Envelope) -> Envelope:
    ct = bytearray(b64d(env.body.ct, field="ct", max_bytes=10**6))
    ct[0] ^= 1
    return env.model_copy(update={"body": env.body.model_copy(update={"ct": b64e(bytes(ct))})})


async def deliver_count(stack: Stack) -> int:
    nc = await stack.connect_relay(nats_url(stack))
    try:
        info = await nc.jetstream().stream_info(DELIVER_STREAM)
        return int(info.state.messages)
    finally:
        await nc.close()


async def relay_idle(stack: Stack) -> None:
    """Wait until the relay has acked everything on ingest: a bulletin's verdict is
    recorded before its deliveries are published, so a count taken at the verdict races
    them."""
    nc = await stack.connect_relay(nats_url(stack))

    async def backlog() -> tuple[int, int]:
        info = await nc.jetstream().consumer_info(INGEST_STREAM, RELAY_INGEST_DURABLE)
        return info.num_pending, info.num_ack_pending

    try:
        await eventually(backlog, until=lambda b: b == (0, 0), what="the relay's ingest backlog")
    finally:
        await nc.close()


def audit_reasons(stack: Stack, bulletin_id: str | None = None) -> list[str]:
    assert stack.registry is not None
    with stack.registry.session() as s:
        q = select(AuditRow).where(AuditRow.type == "bulletin.rejected")
        if bulletin_id:
            q = q.where(AuditRow.bulletin_id == bulletin_id)
        return [r.reason or "" for r in s.exec(q)]


async def test_valid_bulletin_is_accepted_and_delivered(stack: Stack) -> None:
    async with await client(stack, "gt-police") as gt:
        result = await gt.publish(title="t", text="canary body", labels=LABELS)
    assert result.state == "accepted"
    assert "hn-police" in result.routed
    # Releasable to HN only: every agency it went to is Honduran (no regional centre).
    assert all(r.startswith("hn-") for r in result.routed)
    got: list[ReceivedBulletin] = []

    async def keep(b: ReceivedBulletin) -> None:
        got.append(b)

    async with await client(stack, "hn-police") as hn:
        assert await hn.receive(keep, count=1, timeout=10) == 1
    assert got[0].id == result.bulletin_id
    assert got[0].body == "canary body"


async def test_refused_with_reason_and_no_delivery(stack: Stack) -> None:
    before = await deliver_count(stack)
    async with await client(stack, "gt-police") as gt:
        env = flip_ct(await sealed(gt))  # the signature no longer covers the ciphertext
        await gt._publish_envelope(env)
        with pytest.raises(PublishRejected) as err:
            await gt.wait_for_verdict(env.header.bulletin_id, timeout=10)
    assert err.value.code == "signature_invalid"
    assert "signature_invalid" in audit_reasons(stack, env.header.bulletin_id)
    assert await deliver_count(stack) == before
    assert stack.registry is not None
    assert stack.registry.bulletin(env.header.bulletin_id) is None


async def test_replay_and_id_conflict(stack: Stack) -> None:
    async with await client(stack, "gt-police") as gt:
        env = await sealed(gt)
        await gt._publish_envelope(env)
        assert (await gt.wait_for_verdict(env.header.bulletin_id)).state == "accepted"
        await relay_idle(stack)
        before = await deliver_count(stack)
        # The same envelope again, past NATS dedupe (another Nats-Msg-Id): a replay.
        raw = encode_envelope(env)
        await gt._js.publish(ingest_subject("gt-police"), raw, headers={"Nats-Msg-Id": "again"})
        # The same id on other content: a conflict.
        other = await sealed(gt, bulletin_id=env.header.bulletin_id)
        await gt._js.publish(
            ingest_subject("gt-police"),
            encode_envelope(other),
            headers={"Nats-Msg-Id": ingest_msg_id("gt-police", "x")},
        )
        reasons = await eventually(
            lambda: audit_reasons(stack, env.header.bulletin_id),
            until=lambda r: len(r) == 2,
            what="both rejections audited",
        )
    assert sorted(reasons) == ["id_conflict", "replay"]
    assert await deliver_count(stack) == before


async def test_malformed_input_is_audited_and_terminated(stack: Stack) -> None:
    # Over the envelope limit, under NATS's: it reaches the relay and is refused there.
    payload, code = b'{"v":1,"pad":"' + b"A" * (1024 * 1024 + 10) + b'"}', "oversized"
    before = len(audit_reasons(stack))
    async with await client(stack, "gt-police") as gt:
        await gt._js.publish(ingest_subject("gt-police"), payload, timeout=10)
    reasons = await eventually(
        lambda: audit_reasons(stack), until=lambda r: len(r) > before, what="the rejection"
    )
    assert reasons[before:] == [code]
    # Terminated, not redelivered: the ingest consumer has nothing pending.
    nc = await stack.connect_relay(nats_url(stack))
    try:
        info = await nc.jetstream().consumer_info("ISTMO_INGEST", "relay-ingest")
        assert info.num_pending == 0
        assert info.num_ack_pending == 0
    finally:
        await nc.close()
    # The audit entry names the reason and the sender, and carries no payload.
    assert stack.registry is not None
    row = stack.registry.audit_events(type_="bulletin.rejected")[-1]
    assert row.actor == "gt-police"
    assert "AAAA" not in row.data
    assert json.loads(row.data)["size"] == len(payload)


async def test_sdk_drops_non_istmo_and_tampered_deliveries(stack: Stack) -> None:
    """Whatever lands on a delivery subject, only verified bulletins reach the app."""

    async def ignore(_b: ReceivedBulletin) -> None:
        return None

    async with await client(stack, "hn-police") as hn:  # what earlier tests left for it
        await hn.receive(ignore, count=100, timeout=1)
    async with await client(stack, "gt-police") as gt:
        good = await sealed(gt)
    tampered = flip_ct(good)
    nc = await stack.connect_relay(nats_url(stack))
    js = nc.jetstream()
    try:
        await js.publish("istmo.deliver.hn-police", b'{"stream":"ISTMO_INGEST","seq":1}')
        await js.publish("istmo.deliver.hn-police", b"")
        await js.publish("istmo.deliver.hn-police", encode_envelope(tampered))
        await js.publish("istmo.deliver.hn-police", encode_envelope(good))
    finally:
        await nc.close()
    got: list[ReceivedBulletin] = []

    async def keep(b: ReceivedBulletin) -> None:
        got.append(b)

    async with await client(stack, "hn-police") as hn:
        await hn.receive(keep, count=2, timeout=4)
    assert [b.id for b in got] == [good.header.bulletin_id]


def receipt_rejections(stack: Stack) -> list[str]:
    assert stack.registry is not None
    return [r.reason or "" for r in stack.registry.audit_events(type_="receipt.rejected")]


async def test_receipts_are_verified_before_they_count(stack: Stack) -> None:
    async with await client(stack, "gt-police") as gt:
        result = await gt.publish(title="t", text="receipt canary", labels=LABELS)
    bid = result.bulletin_id
    assert stack.registry is not None
    digest = stack.registry.bulletin(bid).envelope_digest  # type: ignore[union-attr]
    now = int(time.time())

    def receipt(recipient: str, key: SigningKey, **kw: str) -> bytes:
        r = sign_receipt(
            bulletin_id=BulletinId(bid),
            originator=AgencyId("gt-police"),
            recipient=AgencyId(recipient),
            envelope_digest=kw.get("digest", digest),
            received_at=now,
            key=key,
        )
        return canonical_json(r.model_dump(mode="json"))

    before = len(receipt_rejections(stack))
    async with await client(stack, "jm-police") as jm:
        # jm was never routed this bulletin: its own signed receipt does not count.
        await jm._js.publish(
            receipt_subject("jm-police"), receipt("jm-police", jm.keystore.signing_key())
        )
    async with await client(stack, "hn-police") as hn:
        own = hn.keystore.signing_key()
        await hn._js.publish(
            receipt_subject("hn-police"), receipt("hn-police", SigningKey.generate())
        )
        await hn._js.publish(receipt_subject("hn-police"), receipt("hn-military", own))
        await hn._js.publish(
            receipt_subject("hn-police"), receipt("hn-police", own, digest="0" * 64)
        )
        await hn._js.publish(receipt_subject("hn-police"), b'{"stream":"ISTMO_INGEST","seq":1}')
        got = await eventually(
            lambda: receipt_rejections(stack)[before:],
            until=lambda r: len(r) == 5,
            what="five receipt rejections",
        )
        assert sorted(got) == sorted(
            [
                "unknown_bulletin",
                "key_not_bound_to_sender",
                "originator_mismatch",
                "receipt_mismatch",
                "malformed",
            ]
        )
        assert stack.registry.receipts(bid) == []
        # The real one counts, once, even if sent twice.
        await hn._js.publish(receipt_subject("hn-police"), receipt("hn-police", own))
        await hn._js.publish(receipt_subject("hn-police"), receipt("hn-police", own))
        await eventually(lambda: stack.registry.receipts(bid), what="hn-police's receipt")
    rows = stack.registry.receipts(bid)
    assert [r.recipient for r in rows] == ["hn-police"]
    events = stack.registry.audit_events(bulletin_id=bid, type_="bulletin.received")
    assert [e.actor for e in events] == ["hn-police"]


async def test_a_receipt_signed_by_a_revoked_key_is_refused_and_audited(stack: Stack) -> None:
    """A second signing key of hn-police's, revoked an hour ago (its current key stays):
    a receipt it signs, even one dated before the revocation, does not count."""
    assert stack.registry is not None
    assert stack.directory is not None
    async with await client(stack, "gt-police") as gt:
        result = await gt.publish(title="t", text="revoked-key receipt", labels=LABELS)
    bid = result.bulletin_id
    digest = stack.registry.bulletin(bid).envelope_digest  # type: ignore[union-attr]
    stolen = SigningKey.generate()
    now = int(time.time())
    stack.registry.record(
        [
            SigningKeyRow(
                kid=stolen.verify_key.kid,
                agency="hn-police",
                public=b64e(stolen.verify_key.public),
                created_at=now - 7200,
                revoked_at=now - 3600,
            )
        ],
        [],
    )
    stack.directory.refresh()  # the relay decides with this directory
    backdated = sign_receipt(
        bulletin_id=BulletinId(bid),
        originator=AgencyId("gt-police"),
        recipient=AgencyId("hn-police"),
        envelope_digest=digest,
        received_at=now - 5400,  # "before the revocation"
        key=stolen,
    )
    before = len(receipt_rejections(stack))
    async with await client(stack, "hn-police") as hn:
        await hn._js.publish(
            receipt_subject("hn-police"), canonical_json(backdated.model_dump(mode="json"))
        )
        got = await eventually(
            lambda: receipt_rejections(stack)[before:], what="the receipt's rejection"
        )
    assert got == ["key_revoked"]
    assert stack.registry.receipts(bid) == []


@pytest.mark.parametrize(
    ("op", "payload", "code"),
    [
        ("resolve", b"{not json", "malformed"),
        ("resolve", b'{"labels":{"topic":"cyber"}}', "unknown_label"),
        ("status", b'{"bulletin_id":"../../etc/passwd"}', "malformed"),
        ("directory", b'{"agencies":["' + b"a" * 70_000 + b'"]}', "oversized"),
        ("receipts", b'{"bulletin_id":"x","extra":1}', "malformed"),
    ],
    ids=["not-json", "unknown-topic", "bad-id", "oversized", "extra-field"],
)
async def test_bad_requests_are_refused_with_a_reason_and_audited(
    stack: Stack, op: str, payload: bytes, code: str
) -> None:
    assert stack.registry is not None
    before = len(stack.registry.audit_events(type_="request.rejected", limit=1000))
    async with await client(stack, "gt-police") as gt:
        reply = await gt._nc.request(f"istmo.api.gt-police.{op}", payload, timeout=5)
    assert json.loads(reply.data)["error"]["code"] == code
    rows = stack.registry.audit_events(type_="request.rejected", limit=1000)[before:]
    assert [(r.actor, r.subject, r.reason) for r in rows] == [("gt-police", f"api.{op}", code)]
