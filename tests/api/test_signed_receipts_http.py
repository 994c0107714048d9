"""``GET /v1/bulletins/{id}/receipts?signed=true``: each receipt whole, for the originator
to verify, over the real app and registry (SQLite and PostgreSQL). Rows are written as
the relay writes them, and as a relay before migration 0010 did (no kid)."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from broker.store.registry import BulletinRow, DecisionRow, ReceiptRow
from schemas.canonical import canonical_json
from schemas.envelope import parse_model
from schemas.ids import AgencyId, BulletinId
from schemas.keys import SigningKey
from schemas.receipt import Receipt, sign_receipt, verify_receipt
from schemas.receipt_requests import SignedReceiptsReply
from tests.api.conftest import EXPLAIN_BODY, Broker, assert_problem, bearer, token

GT = "gt-police"
# hn-police's receipt recorded with its kid; sv-police's by a relay before 0010 (no kid);
# ni-police's without a kid and a signature no key of its verifies; bz-police has none.
ROUTED = ("bz-police", "hn-police", "ni-police", "sv-police")
DIGEST = "5e" * 32


def signed_by(broker: Broker, who: str, bid: str, key: SigningKey | None = None) -> Receipt:
    return sign_receipt(
        bulletin_id=BulletinId(bid),
        originator=AgencyId(GT),
        recipient=AgencyId(who),
        envelope_digest=DIGEST,
        received_at=int(time.time()) - 5,
        key=key or broker.keystore(who).signing_key(),
    )


@pytest.fixture(scope="module")
def receipted(broker: Broker) -> tuple[str, dict[str, Receipt]]:
    """gt-police's bulletin, routed to ``ROUTED``, and the receipts recorded of it."""
    bid = str(uuid.uuid4())
    now = int(time.time())
    got = {
        "hn-police": signed_by(broker, "hn-police", bid),
        "sv-police": signed_by(broker, "sv-police", bid),
        "ni-police": signed_by(broker, "ni-police", bid, key=SigningKey.generate()),
    }
    broker.registry.record(
        [
            BulletinRow(
                id=bid,
                originator=GT,
                labels=canonical_json(EXPLAIN_BODY["labels"]).decode(),
                envelope_digest=DIGEST,
                ingest_seq=1,
                created_at=now,
                accepted_at=now,
                recipients=",".join(ROUTED),
                policy_version=broker.directory.bundle.version,
                directory_version=broker.directory.version,
            ),
            *(
                DecisionRow(bulletin_id=bid, agency=a, allowed=True, policy_ids="p", reasons="[]")
                for a in ROUTED
            ),
            *(
                ReceiptRow(
                    bulletin_id=bid,
                    recipient=who,
                    received_at=r.received_at,
                    recorded_at=now,
                    signature=r.sig,
                    kid=r.kid if who == "hn-police" else None,
                )
                for who, r in got.items()
            ),
        ],
        [],
    )
    return bid, got


async def test_the_signed_answer_gives_each_receipt_whole(
    client: httpx.AsyncClient, broker: Broker, receipted: tuple[str, dict[str, Receipt]]
) -> None:
    bid, got = receipted
    gt = bearer(await token(client, broker, GT))
    r = await client.get(f"/v1/bulletins/{bid}/receipts", params={"signed": "true"}, headers=gt)
    assert r.status_code == 200, r.text
    # The body is the NATS door's reply model, read as strictly as the SDK reads it.
    answer = parse_model(SignedReceiptsReply, r.content, max_bytes=1 << 20, what="answer")
    assert (answer.bulletin_id, answer.originator, answer.envelope_digest) == (bid, GT, DIGEST)
    assert answer.next is None
    by = {e.agency: e for e in answer.recipients}
    assert tuple(by) == ROUTED
    assert (by["bz-police"].received_at, by["bz-police"].receipt) == (None, None)
    for who in ("hn-police", "sv-police"):  # with its kid, and with the kid found
        receipt = by[who].receipt
        assert receipt == got[who]
        verify_receipt(receipt, broker.keystore(who).signing_key().verify_key)
    # Recorded, but no key of ni-police verifies it: said so, no key named.
    assert (by["ni-police"].received_at, by["ni-police"].receipt) == (
        got["ni-police"].received_at,
        None,
    )


async def test_the_plain_answer_keeps_its_shape_and_after_pages_the_signed_one(
    client: httpx.AsyncClient, broker: Broker, receipted: tuple[str, dict[str, Receipt]]
) -> None:
    bid, _ = receipted
    gt = bearer(await token(client, broker, GT))
    plain = (await client.get(f"/v1/bulletins/{bid}/receipts", headers=gt)).json()
    assert [set(e) for e in plain["recipients"]] == [{"agency", "received_at", "signature"}] * 4
    page = await client.get(
        f"/v1/bulletins/{bid}/receipts", params={"signed": "true", "after": "ni-police"}, headers=gt
    )
    assert [e["agency"] for e in page.json()["recipients"]] == ["sv-police"]
    unpaged = await client.get(
        f"/v1/bulletins/{bid}/receipts", params={"after": "ni-police"}, headers=gt
    )
    assert "signed=true" in assert_problem(unpaged, 422, "invalid_request")["detail"]


async def test_another_agencys_bulletin_is_not_found_signed_or_not(
    client: httpx.AsyncClient, broker: Broker, receipted: tuple[str, dict[str, Receipt]]
) -> None:
    bid, _ = receipted
    hn = bearer(await token(client, broker, "hn-police"))
    r = await client.get(f"/v1/bulletins/{bid}/receipts", params={"signed": "true"}, headers=hn)
    assert_problem(r, 404, "not_found")
