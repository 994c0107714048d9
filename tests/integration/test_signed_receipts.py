"""An originator verifies its receipts itself, through a live stack: a receipt the relay
recorded with its kid, one recorded as a relay before migration 0010 did (no kid), one
the broker altered, another envelope's digest, and a broker older than the SDK."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from nats.aio.msg import Msg
from sqlmodel import select

from broker.relay.agency_api import error_reply
from broker.relay.worker import Relay
from broker.store.registry import ReceiptRow
from clients.keystore import load_keystore
from schemas.agency import BulletinRequest, encode_reply
from schemas.envelope import parse_model
from schemas.errors import EnvelopeError
from schemas.ids import AgencyId, BulletinId
from schemas.labels import Classification, Labels, Tlp
from schemas.receipt import sign_receipt
from schemas.subjects import api_subject
from tests.integration.stack_inproc import client, nats_url, running_stack
from tests.waiting import eventually

# Tens of seconds of stack start-up: run among the first files (tests/conftest.py).
pytestmark = pytest.mark.slow

LABELS = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("HN",),
)


async def _ignore(_bulletin: object) -> None:
    return None


async def test_the_originator_verifies_its_receipts_and_finds_what_was_altered(
    tmp_path: Path,
) -> None:
    async with running_stack(tmp_path / "istmo", with_relay=False) as stack:
        registry, directory = stack.registry, stack.directory
        assert registry is not None
        assert directory is not None
        nc = await stack.connect_relay(nats_url(stack))
        relay = Relay(stack.settings, registry, directory, nc)
        stop = asyncio.Event()
        running = asyncio.create_task(relay.run(stop))
        try:
            gt = await client(stack, "gt-police")
            async with gt:
                result = await gt.publish(title="t", text="receipts to verify", labels=LABELS)
                bid = result.bulletin_id
                assert result.state == "accepted"
                # publish returns the digest the relay recorded (and receipts must name).
                assert result.envelope_digest == registry.bulletin(bid).envelope_digest  # type: ignore[union-attr]
                old = next(a for a in sorted(result.routed) if a != "hn-police")

                # 1. hn-police receives it; the relay records its receipt with the kid.
                async with await client(stack, "hn-police") as hn:
                    assert await hn.receive(_ignore, count=1, timeout=20) == 1
                    hn_kid = hn.keystore.signing_key().verify_key.kid
                (row,) = await eventually(
                    lambda: registry.receipts(bid), what="hn-police's receipt recorded"
                )
                assert (row.recipient, row.kid) == ("hn-police", hn_kid)

                # 2. Another recipient's receipt, as a relay before migration 0010 kept it.
                key = load_keystore(stack.settings.keys_dir / f"{old}.json").signing_key()
                before = sign_receipt(
                    bulletin_id=BulletinId(bid),
                    originator=AgencyId("gt-police"),
                    recipient=AgencyId(old),
                    envelope_digest=result.envelope_digest or "",
                    received_at=int(time.time()),
                    key=key,
                )
                registry.record_receipts(
                    [
                        {
                            "bulletin_id": bid,
                            "recipient": old,
                            "received_at": before.received_at,
                            "recorded_at": before.received_at,
                            "signature": before.sig,
                        }
                    ],
                    [],
                )

                checked = await gt.verify_receipts(bid, envelope_digest=result.envelope_digest)
                by = {r.agency: r for r in checked.recipients}
                assert checked.failed == ()
                assert checked.digest_from == "publisher"
                assert set(by) == set(result.routed)
                assert (by["hn-police"].state, by["hn-police"].kid) == ("verified", hn_kid)
                assert (by[old].state, by[old].kid) == ("verified", key.verify_key.kid)
                assert {r.state for a, r in by.items() if a not in ("hn-police", old)} == {
                    "not_received"
                }

                # 3. Receipts of another envelope than the one published fail, each.
                other = await gt.verify_receipts(bid, envelope_digest="0" * 64)
                assert sorted((r.agency, r.reason) for r in other.failed) == sorted(
                    [("hn-police", "digest_mismatch"), (old, "digest_mismatch")]
                )

                # 4. The broker alters the receipt it recorded: the originator sees it.
                with registry.session() as s:
                    hn_row = s.exec(
                        select(ReceiptRow).where(
                            ReceiptRow.bulletin_id == bid, ReceiptRow.recipient == "hn-police"
                        )
                    ).one()
                    hn_row.received_at -= 60
                    s.add(hn_row)
                    s.commit()
                altered = await gt.verify_receipts(bid, envelope_digest=result.envelope_digest)
                assert [(r.agency, r.reason) for r in altered.failed] == [
                    ("hn-police", "signature_invalid")
                ]
        finally:
            stop.set()
            await running
            await nc.close()


async def test_a_broker_before_signed_receipts_is_named_as_such(tmp_path: Path) -> None:
    """The answer a broker that reads ``receipts`` as a plain ``BulletinRequest`` gives
    (the broker's own parser and error reply, as before this change) is told apart from
    any other refusal."""
    async with running_stack(tmp_path / "istmo", with_relay=False) as stack:
        nc = await stack.connect_relay(nats_url(stack))

        async def old_broker(msg: Msg) -> None:
            try:
                parse_model(BulletinRequest, msg.data, max_bytes=65536, what="request")
            except EnvelopeError as exc:
                await msg.respond(encode_reply(error_reply(exc)))

        sub = await nc.subscribe(api_subject("gt-police", "receipts"), cb=old_broker)
        await nc.flush()
        try:
            async with await client(stack, "gt-police") as gt:
                with pytest.raises(EnvelopeError) as refused:
                    await gt.verify_receipts("00000000-0000-4000-8000-000000000000")
        finally:
            await sub.unsubscribe()
            await nc.close()
    assert refused.value.code == "broker_too_old"
    assert "older than this SDK" in str(refused.value)
    assert refused.value.hint is not None
