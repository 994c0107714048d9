"""Replies, threads and requests for information on a live stack (ADR 16): nats-server,
relay, sequencer, SQLite, and the SDK as agencies use it.

gt-police publishes bulletins releasable to Belize; the demo policy routes them to
bz-justice, bz-military and bz-police. What is proven: a reply reaches the originator
only, or every recipient when the originator allowed reply-all, carrying its link and
thread; a reply with weaker labels is refused by the policy, at resolve and at the relay
alike, saying which label; a reply to a bulletin the replier never received looks like one
to an unknown id, and is audited; an RFI goes open -> acknowledged -> answered -> closed;
its overdue alarm is raised once, by the relay's sweep and by a sweep at a clock the test
moves; an RFI to an agency the policy refuses is refused, audited, and nothing is sent;
and the audit log verifies after it all.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlmodel import select

from broker.relay.conversations import Conversations
from broker.runtime.stack import Stack
from broker.store.registry import AuditRow
from broker.store.rfi_book import overdue_count
from clients.errors import NotFound, PublishRejected
from schemas.envelope import Content
from schemas.errors import EnvelopeError, PolicyDenied
from schemas.ids import AgencyId, BulletinId
from schemas.labels import Classification, Labels, Tlp
from schemas.sealing import seal
from tests.clocks import ManualClock
from tests.integration.recall_kit import BZ, LABELS, audit_verifies, take
from tests.integration.stack_inproc import client, running_stack
from tests.waiting import eventually

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.slow,
]  # slow: run first (tests/conftest.py)
QUESTION = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("SICA",),
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    # The relay looks for overdue RFIs every second, so a test waits seconds, not 30.
    async with running_stack(tmp_path_factory.mktemp("conv") / "istmo", rfi_sweep_s=1) as s:
        yield s


def audit(stack: Stack, type_: str, bulletin_id: str | None = None) -> list[AuditRow]:
    assert stack.registry is not None
    with stack.registry.session() as s:
        q = select(AuditRow).where(AuditRow.type == type_)
        if bulletin_id is not None:
            q = q.where(AuditRow.bulletin_id == bulletin_id)
        return list(s.exec(q))


async def publish(stack: Stack, *, reply_all: bool = False) -> str:
    async with await client(stack, "gt-police") as gt:
        result = await gt.publish(
            title="boats", text="two boats", labels=LABELS, reply_all=reply_all
        )
    assert result.state == "accepted"
    assert tuple(sorted(result.routed)) == BZ
    return result.bulletin_id


async def drain(stack: Stack, *agencies: str) -> None:
    for agency in agencies:
        await take(stack, agency, count=100, timeout=1)


# --------------------------------------------------------------------------- replies
async def test_a_reply_reaches_the_originator_only_in_the_thread(stack: Stack) -> None:
    bid = await publish(stack)
    (got,) = (await take(stack, "bz-police")).bulletins
    assert (got.in_reply_to, got.thread, got.reply_all) == (None, None, False)
    async with await client(stack, "bz-police") as bz:
        answer = await bz.reply(bid, text="seen them too, off Punta Gorda")
        assert (answer.state, answer.routed) == ("accepted", ("gt-police",))
        # A reply to the reply stays in the first bulletin's thread.
    async with await client(stack, "gt-police") as gt:
        (reply,) = (await take(stack, "gt-police")).bulletins
        assert (reply.id, reply.in_reply_to, reply.thread) == (answer.bulletin_id, bid, bid)
        assert reply.body == "seen them too, off Punta Gorda"
        assert reply.labels.named == ("gt-police",)
        again = await gt.reply(answer.bulletin_id, text="thanks")
        assert again.routed == ("bz-police",)
    (back,) = (await take(stack, "bz-police")).bulletins
    assert (back.in_reply_to, back.thread) == (answer.bulletin_id, bid)
    # The other recipients of the first bulletin got the bulletin, never the replies.
    for agency in ("bz-justice", "bz-military"):
        inbox = await take(stack, agency, count=5, timeout=2)
        assert [b.id for b in inbox.bulletins] == [bid]
    (accepted,) = audit(stack, "bulletin.accepted", answer.bulletin_id)
    assert (accepted.to_event().data["in_reply_to"], accepted.to_event().data["thread"]) == (
        bid,
        bid,
    )
    assert await audit_verifies(stack.settings.data_dir)


async def test_reply_all_reaches_every_recipient(stack: Stack) -> None:
    bid = await publish(stack, reply_all=True)
    (got,) = (await take(stack, "bz-police")).bulletins
    assert got.reply_all is True
    async with await client(stack, "bz-police") as bz:
        answer = await bz.reply(bid, text="for everyone")
    assert tuple(sorted(answer.routed)) == ("bz-justice", "bz-military", "gt-police")
    await drain(stack, "gt-police", "bz-justice", "bz-military")


async def test_a_weaker_reply_is_refused_saying_which_label(stack: Stack) -> None:
    bid = await publish(stack)
    await take(stack, "bz-police")
    weaker = LABELS.model_copy(
        update={"classification": Classification.UNCLASSIFIED, "named": ("gt-police",)}
    )
    async with await client(stack, "bz-police") as bz:
        with pytest.raises(PolicyDenied) as refused:
            await bz.reply(bid, text="x", labels=weaker)
        assert "guard.reply-classification" in str(refused.value)
        assert "classified below the bulletin it answers" in str(refused.value)
        # The relay decides the same from what it recorded, whatever an SDK resolved:
        # sealed by hand past the resolve, it is refused at ingest and audited.
        gt_key = (await bz._directory(["gt-police"]))["gt-police"].encryption_key
        assert gt_key is not None
        env = seal(
            content=Content(title="t", text="x"),
            labels=weaker.model_copy(update={"tlp": Tlp.GREEN}),
            originator=AgencyId("bz-police"),
            signing_key=bz.keystore.signing_key(),
            recipients={AgencyId("gt-police"): gt_key.public_key()},
            now=int(time.time()),
            in_reply_to=BulletinId(bid),
            thread=BulletinId(bid),
        )
        await bz._publish_envelope(env)
        with pytest.raises(PublishRejected) as rejected:
            await bz.wait_for_verdict(env.header.bulletin_id)
    assert rejected.value.code == "policy_deny"
    assert "guard.reply-classification" in str(rejected.value)
    assert "guard.reply-tlp" in str(rejected.value)
    (event,) = audit(stack, "bulletin.rejected", env.header.bulletin_id)
    assert event.reason == "policy_deny"
    # Nothing reached gt-police.
    assert (await take(stack, "gt-police", timeout=1)).bulletins == []
    await drain(stack, "bz-justice", "bz-military")
    assert await audit_verifies(stack.settings.data_dir)


async def test_a_reply_to_a_bulletin_never_received_looks_unknown(stack: Stack) -> None:
    bid = await publish(stack)
    unknown = str(uuid.uuid4())
    async with await client(stack, "jm-police") as jm:  # never routed it
        with pytest.raises(NotFound) as not_mine:
            await jm.reply(bid, text="let me in")
        with pytest.raises(NotFound) as nowhere:
            await jm.reply(unknown, text="or here")
    assert str(not_mine.value) == str(nowhere.value)
    assert bid not in str(not_mine.value)
    refusals = [e for e in audit(stack, "request.rejected") if e.actor == "jm-police"]
    assert {e.bulletin_id for e in refusals} >= {bid, unknown}
    assert {e.subject for e in refusals} == {"api.reply-context"}
    await drain(stack, *BZ)
    assert await audit_verifies(stack.settings.data_dir)


# --------------------------------------------------------------------------- RFIs
async def test_an_rfi_goes_open_acknowledged_answered_closed(stack: Stack) -> None:
    async with await client(stack, "gt-police") as gt:
        asked = await gt.rfi(
            to=["rc-drugs"], title="Who owns the boats?", text="names?", labels=QUESTION,
            due_at=int(time.time()) + 3600,
        )  # fmt: skip
        assert asked.routed == ("rc-drugs",)
        (mine,) = [r for r in await gt.rfis() if r.id == asked.bulletin_id]
        assert (mine.state, mine.addressees, mine.asker) == ("open", ("rc-drugs",), "gt-police")
    (question,) = (await take(stack, "rc-drugs")).bulletins
    assert question.rfi_due == mine.due_at

    async def state() -> str:
        async with await client(stack, "gt-police") as gt:
            return next(r.state for r in await gt.rfis() if r.id == asked.bulletin_id)

    await eventually(state, until=lambda s: s == "acknowledged", what="the receipt to count")
    async with await client(stack, "rc-drugs") as rc:
        (seen,) = [r for r in await rc.rfis() if r.id == asked.bulletin_id]
        assert (seen.asker, seen.addressees) == ("gt-police", ())  # not its business
        answer = await rc.reply(asked.bulletin_id, text="Los Zetas")
        assert answer.routed == ("gt-police",)
    async with await client(stack, "gt-police") as gt:
        (done,) = [r for r in await gt.rfis() if r.id == asked.bulletin_id]
        assert (done.state, done.answered_by) == ("answered", ("rc-drugs",))
        closed = await gt.close_rfi(asked.bulletin_id)
        assert closed.state == "closed"
        assert asked.bulletin_id not in [r.id for r in await gt.rfis()]
        assert asked.bulletin_id in [r.id for r in await gt.rfis(closed=True)]
        with pytest.raises(EnvelopeError) as not_rfi:
            await gt.close_rfi(answer.bulletin_id)  # not its RFI: someone else's reply
    assert not_rfi.value.code == "not_found"
    (event,) = audit(stack, "rfi.closed", asked.bulletin_id)
    assert event.to_event().data["answered_by"] == ("rc-drugs",)
    await drain(stack, "gt-police")
    assert await audit_verifies(stack.settings.data_dir)


async def test_an_overdue_rfi_raises_its_alarm_once(stack: Stack) -> None:
    assert stack.registry is not None
    assert stack.directory is not None
    async with await client(stack, "gt-police") as gt:
        soon = await gt.rfi(
            to=["rc-drugs"], title="quick", text="?", labels=QUESTION,
            due_at=int(time.time()) + 2,
        )  # fmt: skip
        later = await gt.rfi(
            to=["rc-drugs"], title="later", text="?", labels=QUESTION,
            due_at=int(time.time()) + 3600,
        )  # fmt: skip

        # The relay's own sweep (every second here) raises the first one's alarm.
        async def overdue() -> dict[str, object]:
            return {r.id: r for r in await gt.rfis()}

        seen = await eventually(
            overdue,
            until=lambda rs: rs[soon.bulletin_id].overdue_since is not None,  # type: ignore[attr-defined]
            what="the relay's sweep to raise the overdue alarm",
            timeout=20,
        )
    assert seen[soon.bulletin_id].state == "overdue"  # type: ignore[attr-defined]
    assert seen[later.bulletin_id].state == "open"  # type: ignore[attr-defined]
    # A sweep at a clock moved past the second's due time raises that one, once.
    clock = ManualClock.at(int(time.time()) + 3601)
    sweep = Conversations(stack.settings, stack.registry, stack.directory, clock=clock)
    assert sweep.sweep() == 1
    assert sweep.sweep() == 0
    assert len(audit(stack, "rfi.overdue", soon.bulletin_id)) == 1
    (alarm,) = audit(stack, "rfi.overdue", later.bulletin_id)
    assert alarm.to_event().data["addressees"] == ("rc-drugs",)
    # `istmo health` counts them (what it reads).
    assert overdue_count(stack.registry, now=clock.now_s())[0] >= 2
    await drain(stack, "rc-drugs")
    assert await audit_verifies(stack.settings.data_dir)


async def test_an_rfi_to_an_agency_the_policy_refuses_sends_nothing(stack: Stack) -> None:
    secret = QUESTION.model_copy(update={"classification": Classification.SECRET})
    async with await client(stack, "gt-military") as mil:
        with pytest.raises(PolicyDenied) as refused:
            await mil.rfi(to=["rc-drugs"], title="t", text="?", labels=secret)
        with pytest.raises(EnvelopeError) as bad_due:
            await mil.rfi(
                to=["rc-drugs"], title="t", text="?", labels=QUESTION,
                due_at=int(time.time()) - 60,
            )  # fmt: skip
    assert refused.value.code == "rfi_addressee_denied"
    assert "rc-drugs" in str(refused.value)
    assert "guard.clearance" in str(refused.value)
    assert bad_due.value.code == "bad_due"
    events = [e for e in audit(stack, "request.rejected") if e.actor == "gt-military"]
    assert [e.reason for e in events] == ["rfi_addressee_denied"]
    assert (await take(stack, "rc-drugs", timeout=1)).bulletins == []
    assert await audit_verifies(stack.settings.data_dir)
