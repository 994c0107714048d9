"""Community group keys on a live stack (ADR 18): nats-server, relay, SQLite, and the SDK
as agencies use it.

rc-drugs manages the group SICA-drugs: the SICA agencies that follow drug-trafficking, with
rc-drugs and rc-observatory (which takes only sources graded B2 or better). Proven here,
directly, the two properties of issue 16 point 4:

- **an agency the policy denies never holds a key that opens the bulletin**: for a
  bulletin without a source grade the policy denies rc-observatory, a member, so the SDK
  seals for everyone one by one; an envelope that uses the group anyway is refused by the
  relay (``group_member_denied``), audited, and delivered to nobody;
- **a suspended agency cannot open anything sealed after its suspension**, even holding the
  earlier epoch key and the envelope: the manager's next epoch leaves it out, the broker
  holds no wrap of it for that agency and refuses to hand it any key, an envelope still
  using the old epoch is refused (``stale_group_epoch``), and the earlier key does not open
  the new bulletin.

And the path end to end: a bulletin sealed under the group's key, one wrap section for a
dozen recipients, reaches them and opens with the key each fetches.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Collection
from typing import Any

import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from sqlmodel import select

from broker.directory.groups import define
from broker.directory.lifecycle import CONTROL_DIRECTORY_SUBJECT, set_agency_status
from broker.runtime.stack import Stack
from broker.store.groups import GroupWrapRow, current_epochs
from broker.store.registry import AuditRow
from clients.errors import PublishRejected
from clients.group_keys import Rotation
from clients.opening import open_delivery
from clients.requests import read_reply
from clients.sdk import IstmoClient
from schemas.agency import RecipientsReply, ResolveRequest, encode_request
from schemas.envelope import Content, Envelope
from schemas.errors import BusUnavailable, DecryptionError, PolicyDenied
from schemas.group_requests import EpochRef, GroupKeysReply, GroupKeysRequest
from schemas.ids import AgencyId
from schemas.labels import Classification, Labels, Tlp
from schemas.sealing import encode_envelope, parse_envelope, seal
from schemas.subjects import DELIVER_STREAM, api_subject
from tests.integration.recall_kit import take
from tests.integration.stack_inproc import client, running_stack
from tests.waiting import eventually

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.slow,
]  # slow: run first (tests/conftest.py)

GROUP = "SICA-drugs"
MANAGER = "rc-drugs"
GT, HN, SV = "gt-police", "hn-police", "sv-police"
NO_GRADE = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("SICA",),
)
GRADED = NO_GRADE.model_copy(update={"source_grade": "A1"})


async def define_group(s: Stack) -> list[Rotation]:
    """Define GROUP (SICA agencies following drug-trafficking, managed by MANAGER) and have
    the manager make its first epoch."""
    assert s.registry is not None
    define(
        s.registry,
        name=GROUP,
        manager=MANAGER,
        jurisdiction="SICA",
        topic="drug-trafficking",
        min_clearance=0,
        actor="test",
        at=int(time.time() * 1000),
    )
    async with await client(s, MANAGER) as rc:
        return await rc.rotate_groups()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path_factory.mktemp("groups") / "istmo") as s:
        made = await define_group(s)
        assert [(r.group, r.epoch, r.rotated) for r in made] == [(GROUP, 1, True)]
        yield s


@pytest_asyncio.fixture(loop_scope="module")
async def broker_nc(stack: Stack) -> AsyncIterator[NATS]:
    """A connection in the broker's account, as the relay's own user."""
    nc = await stack.connect_relay(stack.nats_urls[0])
    yield nc
    await nc.close()


def members(stack: Stack) -> frozenset[str]:
    assert stack.registry is not None
    return current_epochs(stack.registry, [GROUP])[GROUP].members


async def delivered_copy(stack: Stack, agency: str, bulletin_id: str) -> Envelope:
    """The envelope as the delivery stream holds it for ``agency``: on its own subject, or
    its group's (ADR 21). The verdict is recorded before the copies are stored: waited for."""
    found = await eventually(
        lambda: _stored_copy(stack, agency, bulletin_id),
        what=f"a copy of {bulletin_id} for {agency}",
    )
    assert found is not None
    return found


async def _stored_copy(stack: Stack, agency: str, bulletin_id: str) -> Envelope | None:
    nc = await stack.connect_relay(stack.nats_urls[0])
    try:
        js = nc.jetstream()
        # Its own copy, or its group's one copy (ADR 21) once the group's delivery is open.
        subjects = [
            f"istmo.deliver.{where}.{precedence}"
            for where in (agency, *(f"group.{GROUP}.{e}" for e in (1, 2, 3)))
            for precedence in ("routine", "priority", "immediate", "flash")
        ]
        for subject in subjects:
            try:
                msg = await js.get_last_msg(DELIVER_STREAM, subject)
            except Exception:  # noqa: S112 (not on this subject)
                continue
            env = parse_envelope(msg.data)
            if env.header.bulletin_id == bulletin_id and env.header.addresses(agency):
                return env
    finally:
        await nc.close()
    return None


def rejections(stack: Stack, bulletin_id: str) -> list[AuditRow]:
    assert stack.registry is not None
    with stack.registry.session() as s:
        q = select(AuditRow).where(
            AuditRow.type == "bulletin.rejected", AuditRow.bulletin_id == bulletin_id
        )
        return list(s.exec(q))


async def _publish_under_group(gt: IstmoClient, labels: Labels, **addressing: Any) -> str:
    """An envelope sealed under the group's current key and addressed as ``addressing``
    says (``seal``'s ``covered`` or ``members``), whatever the policy says."""
    known = {k.key.group: k for k in await gt.groups.known()}[GROUP]
    env = seal(
        content=Content(title="by hand", text="sealed under the group key regardless"),
        labels=labels,
        originator=AgencyId(GT),
        signing_key=gt.keystore.signing_key(),
        recipients={},
        now=int(time.time()),
        groups=[known.key],
        **addressing,
    )
    await gt._publish_envelope(env)
    return env.header.bulletin_id


async def publish_by_hand(gt: IstmoClient, labels: Labels, *, leave_out: set[str]) -> str:
    """Every member but ``leave_out`` listed (the form before ADR 37): what a publisher
    that ignores its SDK's cover check could send."""
    known = {k.key.group: k for k in await gt.groups.known()}[GROUP]
    listed = [AgencyId(a) for a in sorted(known.members - {GT} - leave_out)]
    return await _publish_under_group(gt, labels, covered=listed)


async def publish_by_epoch(gt: IstmoClient, labels: Labels, members: Collection[str]) -> str:
    """The group's current epoch addressed as a whole (ADR 37), naming ``members`` as its
    members (their count and digest)."""
    return await _publish_under_group(gt, labels, members={GROUP: members})


async def test_a_bulletin_sealed_under_the_group_key_reaches_and_opens_for_its_members(
    stack: Stack,
) -> None:
    group = members(stack)
    assert {GT, HN, SV, MANAGER, "rc-observatory"} <= group
    async with await client(stack, GT) as gt:
        result = await gt.publish(title="graded", text="A1 source", labels=GRADED, groups=True)
    assert result.state == "accepted"
    assert set(result.routed) == group - {GT}
    env = await delivered_copy(stack, HN, result.bulletin_id)
    assert env.groups is not None
    assert [g.group for g in env.groups] == [GROUP]
    assert env.wraps == ()  # every recipient opens it with the group key
    got = await take(stack, HN, count=1, timeout=10)
    assert [b.title for b in got.bulletins] == ["graded"]
    got = await take(stack, "rc-observatory", count=1, timeout=10)
    assert [b.id for b in got.bulletins] == [result.bulletin_id]


async def test_an_agency_the_policy_denies_never_gets_a_bulletin_its_group_key_opens(
    stack: Stack,
) -> None:
    assert "rc-observatory" in members(stack)
    async with await client(stack, GT) as gt:
        # The SDK sees that a member (rc-observatory, no source grade) is not permitted:
        # it seals for the permitted ones one by one.
        answer = await gt._ask("recipients", ResolveRequest(labels=NO_GRADE), RecipientsReply)
        assert "rc-observatory" not in answer.recipients
        result = await gt.publish(title="ungraded", text="no grade", labels=NO_GRADE, groups=True)
        assert result.state == "accepted"
        env = await delivered_copy(stack, HN, result.bulletin_id)
        assert env.groups is None
        assert "rc-observatory" not in env.header.recipients
        # Sealed under the group anyway: refused, audited, delivered to nobody.
        for leave_out in (set(), {"rc-observatory"}):
            bid = await publish_by_hand(gt, NO_GRADE, leave_out=leave_out)
            with pytest.raises(PublishRejected) as refused:
                await gt.wait_for_verdict(bid, timeout=10)
            assert refused.value.code == "group_member_denied"
            assert [r.reason for r in rejections(stack, bid)] == ["group_member_denied"]
            assert stack.registry is not None
            assert stack.registry.decisions(bid) == []
    await take(stack, HN, count=10, timeout=1)


async def test_a_suspended_agency_cannot_open_what_is_sealed_after_its_suspension(
    stack: Stack,
    broker_nc: NATS,
) -> None:
    assert stack.registry is not None
    assert SV in members(stack)
    async with await client(stack, SV) as sv:
        before = await sv.groups.keys_for([(GROUP, 1)])  # the key it held as a member
        sv_keystore = sv.keystore
    assert [k.epoch for k in before] == [1]

    set_agency_status(stack.registry, SV, "suspended", actor="test", note="groups")
    await broker_nc.publish(CONTROL_DIRECTORY_SUBJECT, b"{}")
    async with await client(stack, MANAGER) as rc:

        async def rotated() -> bool:
            return any(r.rotated for r in await rc.rotate_groups())

        await eventually(rotated, what="the manager to make the next epoch")
    assert SV not in members(stack)
    with stack.registry.session() as s:
        wraps = s.exec(select(GroupWrapRow).where(GroupWrapRow.agency == SV)).all()
    assert [w.epoch for w in wraps] == [1]  # none of epoch 2 for the suspended agency

    async with await client(stack, GT) as gt:
        result = await gt.publish(title="after", text="sealed after", labels=GRADED, groups=True)
        assert result.state == "accepted"
        assert SV not in result.routed
        env = await delivered_copy(stack, HN, result.bulletin_id)
        assert env.groups is not None
        assert [(g.group, g.epoch) for g in env.groups] == [(GROUP, 2)]
        # An envelope still under epoch 1 (which the suspended agency holds) is refused.
        stale = seal(
            content=Content(title="stale", text="under the old epoch"),
            labels=GRADED,
            originator=AgencyId(GT),
            signing_key=gt.keystore.signing_key(),
            recipients={},
            now=int(time.time()),
            groups=before,
            covered=[AgencyId(a) for a in sorted(members(stack) - {GT})],
        )
        await gt._publish_envelope(stale)
        with pytest.raises(PublishRejected) as refused:
            await gt.wait_for_verdict(stale.header.bulletin_id, timeout=10)
        assert refused.value.code == "stale_group_epoch"
        sender = (await gt._directory([GT]))[GT]
    # The suspended agency captured the envelope and holds every earlier epoch key.
    sender_key = next(k for k in sender.signing_keys if k.kid == env.sig.kid)
    with pytest.raises(DecryptionError):
        open_delivery(
            env,
            sender_key=sender_key,
            keystore=sv_keystore,
            agency=AgencyId(SV),
            now=int(time.time()),
            epoch_keys=before,
        )
    # NATS no longer admits it, and a request in its name (as over a connection it kept)
    # gets no key, of epoch 2 or of epoch 1.
    with pytest.raises(BusUnavailable):
        await client(stack, SV)
    for epoch in (1, 2):
        ask = encode_request(GroupKeysRequest(wanted=(EpochRef(group=GROUP, epoch=epoch),)))
        raw = (await broker_nc.request(api_subject(SV, "group-keys"), ask, timeout=5)).data
        with pytest.raises(PolicyDenied):
            read_reply(raw, GroupKeysReply, op="group-keys")

    set_agency_status(stack.registry, SV, "active", actor="test", note="groups")
    await broker_nc.publish(CONTROL_DIRECTORY_SUBJECT, b"{}")


async def test_an_epoch_addressed_whole_is_checked_against_its_record(stack: Stack) -> None:
    """ADR 37: the relay expands an epoch from its own record of the members, refuses one
    naming other members than that record, and still refuses one a member may not have."""
    async with await client(stack, GT) as gt:
        known = {k.key.group: k for k in await gt.groups.known()}[GROUP]
        cases = [
            (NO_GRADE, known.members, "group_member_denied"),
            (GRADED, known.members - {HN}, "audience_mismatch"),
            (GRADED, known.members | {"ag-police"}, "audience_mismatch"),  # not a member
        ]
        for labels, named, code in cases:
            bid = await publish_by_epoch(gt, labels, named)
            with pytest.raises(PublishRejected) as refused:
                await gt.wait_for_verdict(bid, timeout=10)
            assert refused.value.code == code
            assert [r.reason for r in rejections(stack, bid)] == [code]
            assert stack.registry is not None
            assert stack.registry.decisions(bid) == []
        # As recorded: every member but the originator is routed it, and opens it.
        bid = await publish_by_epoch(gt, GRADED, known.members)
        verdict = await gt.wait_for_verdict(bid, timeout=10)
    assert verdict.state == "accepted"
    assert set(verdict.routed) == members(stack) - {GT}
    env = await delivered_copy(stack, HN, bid)
    assert env.header.recipients == ()
    assert env.header.audience is not None
    assert len(encode_envelope(env)) < 8_000
    seen: list[str] = []

    async def opened() -> bool:
        seen.extend(b.id for b in (await take(stack, HN, count=1, timeout=5)).bulletins)
        return bid in seen

    await eventually(opened, what="hn-police to open the bulletin addressed by epoch")
