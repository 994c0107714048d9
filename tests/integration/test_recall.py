"""Recall, correction and expiry on a live stack (ADR 15): nats-server, relay, sequencer,
SQLite, and the SDK as agencies use it.

gt-police publishes bulletins releasable to Belize; the demo policy routes them to
bz-justice, bz-military and bz-police. bz-police reads its queue; the other two stay
offline unless a test says otherwise. What is proven: a recall removes the copies nobody
fetched (read off the delivery stream itself) and tells only who had it, with a withdrawal
the SDK verifies; nobody but the originator can recall, and trying is audited and changes
nothing; a forged withdrawal is refused by the SDK; a correction's link reaches the
recipient and the originator's status; an expiring bulletin's undelivered copies go with
its TTL and reconcile does not bring them back; and the audit log verifies after it all.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlmodel import select

from broker.relay.reconcile import reconcile
from broker.runtime.stack import Stack
from broker.store.recalls import withdrawal
from broker.store.registry import AuditRow
from clients.errors import NotFound, PublishRejected
from clients.keystore import load_keystore
from schemas.agency import ErrorReply
from schemas.envelope import parse_model
from schemas.errors import EnvelopeError
from schemas.ids import AgencyId, BulletinId
from schemas.labels import Precedence
from schemas.subjects import DELIVER_STREAM, api_subject, deliver_subject
from schemas.withdrawal import WITHDRAWAL_KIND, encode_withdrawal, sign_withdrawal
from tests.integration.recall_kit import (
    BZ,
    LABELS,
    audit_verifies,
    copies,
    take,
    waiting,
)
from tests.integration.stack_inproc import client, nats_url, running_stack
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")
REASON = "sent in error: wrong vessel, see the correction"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path_factory.mktemp("recall") / "istmo") as s:
        yield s


async def publish(stack: Stack, title: str, **kw: object) -> str:
    async with await client(stack, "gt-police") as gt:
        result = await gt.publish(title=title, text=f"body of {title}", labels=LABELS, **kw)  # type: ignore[arg-type]
    assert result.state == "accepted"
    assert tuple(sorted(result.routed)) == BZ
    return result.bulletin_id


def events_of(stack: Stack, type_: str, bulletin_id: str) -> list[AuditRow]:
    assert stack.registry is not None
    with stack.registry.session() as s:
        q = select(AuditRow).where(AuditRow.type == type_, AuditRow.bulletin_id == bulletin_id)
        return list(s.exec(q))


async def drain(stack: Stack, *agencies: str) -> None:
    """Take whatever waits for ``agencies`` (left by a test, not to confuse the next)."""
    for agency in agencies:
        await take(stack, agency, count=100, timeout=1)


# --------------------------------------------------------------------------- recall
async def test_a_recall_removes_undelivered_copies_and_tells_who_had_it(stack: Stack) -> None:
    bid = await publish(stack, "recalled")
    got = await take(stack, "bz-police")  # bz-police has it; the other two are offline
    assert [b.id for b in got.bulletins] == [bid]
    assert await copies(stack, bid) == dict.fromkeys(BZ, 1)

    async with await client(stack, "gt-police") as gt:
        result = await gt.recall(bid, reason=REASON)
        assert (result.state, result.removed, result.notified, result.copies_kept) == (
            "done",
            ("bz-justice", "bz-military"),
            ("bz-police",),
            0,
        )
        # Asking again is the same answer, and records nothing new.
        assert await gt.recall(bid, reason="another reason") == result
        status = await gt.status(bid)
        receipts = await gt.receipts(bid)
    assert status["withdrawn_at"] == result.withdrawn_at
    # Receipts still say who had it.
    assert {a for a, at in receipts.recipients if at is not None} <= {"bz-police"}

    # Every copy left the stream, the fetched one too; nothing waits for the offline two.
    assert await copies(stack, bid) == {}
    for agency in ("bz-justice", "bz-military"):
        assert await waiting(stack, agency) == (0, 0)
        assert await waiting(stack, agency, Precedence.IMMEDIATE) == (0, 0)
    # bz-police's SDK gets the signed withdrawal and tells its application, once.
    told = await take(stack, "bz-police")
    assert told.bulletins == []
    (w,) = told.withdrawals
    assert (w.id, w.originator, w.reason, w.had_it) == (bid, "gt-police", REASON, True)
    assert (await take(stack, "bz-police", timeout=1)).withdrawals == []
    # The offline two come back to nothing: not the bulletin, not a word about it.
    for agency in ("bz-justice", "bz-military"):
        nothing = await take(stack, agency, timeout=1)
        assert (nothing.bulletins, nothing.withdrawals) == ([], [])

    # Audited: the originator's act (the reason's digest, never its words) and its outcome.
    (withdrawn,) = events_of(stack, "bulletin.withdrawn", bid)
    data = json.loads(withdrawn.data)
    assert withdrawn.actor == "gt-police"
    assert data["reason_sha256"] == hashlib.sha256(REASON.encode()).hexdigest()
    assert REASON not in withdrawn.data
    (done,) = events_of(stack, "delivery.withdrawn", bid)
    assert json.loads(done.data) == {
        "removed": ["bz-justice", "bz-military"],
        "notified": ["bz-police"],
        "copies_removed": 3,
        "copies_kept": 0,
    }
    assert await audit_verifies(stack.settings.data_dir)


async def test_only_the_originator_may_recall_and_trying_changes_nothing(stack: Stack) -> None:
    bid = await publish(stack, "not yours to recall")
    unknown = "0b1e5a8c-1111-4222-8333-444455556666"
    answers = []
    async with await client(stack, "bz-police") as bz:  # a recipient of it
        for target in (bid, unknown):
            with pytest.raises(NotFound) as caught:
                await bz.recall(target, reason="let me")
            answers.append(str(caught.value))
        # A withdrawal naming the originator, signed by bz-police: refused before any lookup.
        forged = sign_withdrawal(
            bulletin_id=BulletinId(bid),
            originator=AgencyId("gt-police"),
            reason="let me",
            issued_at=int(time.time()),
            key=bz.keystore.signing_key(),
        )
        raw = await bz._nc.request(
            api_subject("bz-police", "recall"), encode_withdrawal(forged), timeout=10
        )
    # Another agency's bulletin and one that does not exist: the same answer.
    assert answers[0] == answers[1]
    assert bid not in answers[0]
    refusal = parse_model(ErrorReply, raw.data, max_bytes=4096, what="reply")
    assert refusal.error.code == "originator_mismatch"

    # Nothing changed: every copy is where it was, nothing recorded as withdrawn.
    assert stack.registry is not None
    assert await copies(stack, bid) == dict.fromkeys(BZ, 1)
    assert withdrawal(stack.registry, bid) is None
    assert events_of(stack, "bulletin.withdrawn", bid) == []
    # Each attempt is audited, naming the bulletin it was for.
    refused = events_of(stack, "request.rejected", bid)
    assert sorted((r.actor, r.subject, r.reason) for r in refused) == [
        ("bz-police", "api.recall", "not_found"),
        ("bz-police", "api.recall", "originator_mismatch"),
    ]
    assert len(events_of(stack, "request.rejected", unknown)) == 1
    await drain(stack, *BZ)
    assert await audit_verifies(stack.settings.data_dir)


async def test_the_sdk_refuses_a_withdrawal_its_originator_did_not_sign(stack: Stack) -> None:
    """Whoever writes on a recipient's queue (here: the broker's own account) cannot make
    its SDK withdraw a bulletin: not with a forged signature, and not with another agency's
    genuine withdrawal."""
    bid = await publish(stack, "kept despite forgeries")
    assert [b.id for b in (await take(stack, "bz-police")).bulletins] == [bid]
    keys = stack.settings.keys_dir
    hn_key = load_keystore(keys / "hn-police.json").signing_key()
    gt_kid = load_keystore(keys / "gt-police.json").signing_key().verify_key.kid
    now = int(time.time())
    forged_signature = sign_withdrawal(
        bulletin_id=BulletinId(bid),
        originator=AgencyId("gt-police"),
        reason="forged",
        issued_at=now,
        key=hn_key,
    ).model_copy(update={"kid": gt_kid})
    anothers = sign_withdrawal(
        bulletin_id=BulletinId(bid),
        originator=AgencyId("hn-police"),
        reason="not mine to withdraw",
        issued_at=now,
        key=hn_key,
    )
    nc = await stack.connect_relay(nats_url(stack))
    try:
        js = nc.jetstream(timeout=10)
        for n, forged in enumerate((forged_signature, anothers)):
            await js.publish(
                deliver_subject("bz-police", Precedence.IMMEDIATE),
                encode_withdrawal(forged),
                stream=DELIVER_STREAM,
                headers={"Nats-Msg-Id": f"forged-{bid}-{n}", "Istmo-Kind": WITHDRAWAL_KIND},
            )
    finally:
        await nc.close()
    refused = await take(stack, "bz-police", count=2, timeout=3)
    assert refused.withdrawals == []
    # Refused, not left to come back: the queue is empty.
    await eventually(
        lambda: waiting(stack, "bz-police", Precedence.IMMEDIATE),
        until=lambda w: w == (0, 0),
        what="the forged withdrawals settled",
    )
    # The genuine one still applies.
    async with await client(stack, "gt-police") as gt:
        assert (await gt.recall(bid, reason=REASON)).notified == ("bz-police",)
    (w,) = (await take(stack, "bz-police")).withdrawals
    assert (w.id, w.originator, w.had_it) == (bid, "gt-police", True)


# --------------------------------------------------------------------------- correction
async def test_a_correction_hands_the_link_to_the_recipient_and_the_originator(
    stack: Stack,
) -> None:
    first = await publish(stack, "first version")
    fix = await publish(stack, "corrected version", supersedes=first)
    got = await take(stack, "bz-police", count=2)
    assert [(b.id, b.supersedes) for b in got.bulletins] == [(first, None), (fix, first)]
    async with await client(stack, "gt-police") as gt:
        old, new = await gt.status(first), await gt.status(fix)
    assert (old["superseded_by"], old.get("supersedes"), old.get("withdrawn_at")) == (
        [fix],
        None,
        None,
    )
    assert (new["supersedes"], new.get("superseded_by")) == (first, None)
    # A correction does not withdraw what it corrects.
    assert (await copies(stack, first)).keys() == set(BZ)

    # Only the originator's own accepted bulletin can be corrected; an unknown id is
    # refused alike.
    async with await client(stack, "bz-police") as bz:
        bz_labels = LABELS.model_copy(update={"rel_to": ("BZ",)})
        for target in (first, "0b1e5a8c-1111-4222-8333-444455556666"):
            with pytest.raises(PublishRejected) as caught:
                await bz.publish(title="hijack", text="x", labels=bz_labels, supersedes=target)
            assert caught.value.code == "unknown_superseded"
    await drain(stack, *BZ)


# --------------------------------------------------------------------------- expiry
async def test_expiry_removes_undelivered_copies_and_reconcile_leaves_them_out(
    stack: Stack,
) -> None:
    bid = await publish(stack, "short-lived", expires_at=int(time.time()) + 5)
    assert (await copies(stack, bid)).keys() == set(BZ)
    recalled = await publish(stack, "recalled before anyone read it")
    async with await client(stack, "gt-police") as gt:
        assert (await gt.recall(recalled, reason=REASON)).removed == BZ
    # JetStream removes them with their TTL: nobody took them.
    await eventually(
        lambda: copies(stack, bid), until=lambda c: c == {}, what="the expired copies gone"
    )
    for agency in BZ:
        assert (await take(stack, agency, timeout=1)).bulletins == []
    # Reconcile finds the missing deliveries of expired and withdrawn bulletins, and
    # restores none of them.
    assert stack.registry is not None
    nc = await stack.connect_relay(nats_url(stack))
    try:
        report = await reconcile(nc.jetstream(timeout=10), stack.registry, since_ms=0)
    finally:
        await nc.close()
    assert report.expired >= len(BZ)
    assert report.withdrawn >= len(BZ)
    assert (report.gaps, report.republished) == (0, 0)
    # Recalled once expired: no copy is left to look for, and any recipient may have had
    # it, so all are told (their SDKs say they never had it).
    async with await client(stack, "gt-police") as gt:
        late = await gt.recall(bid, reason="expired anyway")
    assert (late.removed, late.notified, late.copies_kept) == ((), BZ, 0)
    (w,) = (await take(stack, "bz-justice")).withdrawals
    assert (w.id, w.had_it) == (bid, False)
    await drain(stack, *BZ)
    assert await audit_verifies(stack.settings.data_dir)


async def test_a_bad_reason_is_refused_before_anything_is_sent(stack: Stack) -> None:
    bid = await publish(stack, "reason checks")
    async with await client(stack, "gt-police") as gt:
        for reason in ("", "x" * 281, "line\nbreak", "\x1b[31mred"):
            with pytest.raises(EnvelopeError) as caught:
                await gt.recall(bid, reason=reason)
            assert caught.value.code == "malformed"
    assert stack.registry is not None
    assert withdrawal(stack.registry, bid) is None
    await drain(stack, *BZ)
