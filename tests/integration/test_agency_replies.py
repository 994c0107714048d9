"""The agency API over a real nats-server and relay keeps its contract (``schemas.agency``):
every answer is its operation's reply model, byte for byte as the model encodes it, and
every refusal is an ``ErrorReply`` that the SDK raises as the exception of its code."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import TypeVar

import pytest
import pytest_asyncio
from pydantic import BaseModel

from broker.runtime.stack import Stack
from clients.errors import NotFound
from clients.sdk import IstmoClient
from schemas.agency import (
    DeadLettersReply,
    ErrorReply,
    ExplainReply,
    ReceiptsReply,
    ResolveReply,
    StatusAccepted,
    StatusPending,
    StatusReply,
)
from schemas.canonical import canonical_json
from schemas.directory import SignedExcerpt
from schemas.envelope import parse_model
from schemas.errors import EnvelopeError, PolicyDenied
from schemas.labels import Classification, Labels, Tlp
from tests.integration.stack_inproc import client, running_stack

pytestmark = pytest.mark.asyncio(loop_scope="module")
LABELS = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("HN",),
)
LABELS_JSON = LABELS.model_dump(mode="json", exclude_none=True)
M = TypeVar("M", bound=BaseModel)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path_factory.mktemp("contract") / "istmo") as s:
        yield s


async def ask_raw(gt: IstmoClient, op: str, request: object) -> bytes:
    """A request as any SDK (or none) sends it: canonical JSON on the agency's subject."""
    subject = f"istmo.api.gt-police.{op}"  # any token: nats-server lets it through
    reply = await gt._nc.request(subject, canonical_json(request), timeout=5)
    data: bytes = reply.data
    return data


def read(model: type[M], raw: bytes) -> M:
    """``raw`` as ``model``, and exactly the bytes the model encodes to."""
    parsed = parse_model(model, raw, max_bytes=1 << 23, what="reply")
    assert canonical_json(parsed.model_dump(mode="json")) == raw
    return parsed


async def test_every_answer_is_its_reply_model_on_the_wire(stack: Stack) -> None:
    async with await client(stack, "gt-police") as gt:
        sent = await gt.publish(title="contract", text="contract body", labels=LABELS)
        assert sent.state == "accepted"
        resolved = read(ResolveReply, await ask_raw(gt, "resolve", {"labels": LABELS_JSON}))
        assert "hn-police" in resolved.recipients
        explained = read(ExplainReply, await ask_raw(gt, "explain", {"labels": LABELS_JSON}))
        assert explained.publish.allowed
        excerpt = read(SignedExcerpt, await ask_raw(gt, "directory", {"agencies": ["hn-police"]}))
        assert [a.id for a in excerpt.excerpt.agencies] == ["hn-police"]
        status = read(StatusReply, await ask_raw(gt, "status", {"bulletin_id": sent.bulletin_id}))
        assert isinstance(status.root, StatusAccepted)
        assert status.root.routed == sent.routed
        embargoed = await gt.publish(
            title="later", text="later body", labels=LABELS, not_before=int(time.time()) + 3600
        )
        assert embargoed.state == "embargoed"
        waiting = {"bulletin_id": embargoed.bulletin_id}
        pending = read(StatusReply, await ask_raw(gt, "status", waiting))
        assert pending.root == StatusPending(state="pending", bulletin_id=embargoed.bulletin_id)
        receipts = read(
            ReceiptsReply, await ask_raw(gt, "receipts", {"bulletin_id": sent.bulletin_id})
        )
        assert {r.agency for r in receipts.recipients} == set(sent.routed)
        assert read(DeadLettersReply, await ask_raw(gt, "dead-letters", {})).dead_letters == ()


async def test_every_refusal_is_an_error_reply_of_the_contract(stack: Stack) -> None:
    async with await client(stack, "gt-police") as gt:
        missing = read(
            ErrorReply, await ask_raw(gt, "receipts", {"bulletin_id": str(uuid.uuid4())})
        )
        assert missing.error.code == "not_found"
        unknown_op = read(ErrorReply, await ask_raw(gt, "frobnicate", {}))
        assert unknown_op.error.code == "bad_request"
        assert "frobnicate" not in unknown_op.error.message  # the caller's token, not echoed
        extra = read(ErrorReply, await ask_raw(gt, "dead-letters", {"agency": "hn-police"}))
        assert extra.error.code == "malformed"
        # No error reply repeats what the caller sent (a bulletin id, a key id, a label).
        bid = str(uuid.uuid4())
        kid = "sig-" + "c0ffee00" * 4
        for op, body, canary in [
            ("receipts", {"bulletin_id": bid}, bid),
            ("revoke-key", {"kid": kid}, "c0ffee00"),
            ("resolve", {"labels": {**LABELS_JSON, "rel_to": ["QZ"]}}, "QZ"),
            ("resolve", {"labels": {**LABELS_JSON, "named": ["canary-agency"]}}, "canary"),
            ("status", {"bulletin_id": "CANARY"}, "CANARY"),
        ]:
            raw = await ask_raw(gt, op, body)
            reply = read(ErrorReply, raw)
            assert canary.encode() not in raw, (op, reply.error)


async def test_the_sdk_raises_the_exception_of_each_code(stack: Stack) -> None:
    async with await client(stack, "gt-police") as gt:
        with pytest.raises(NotFound) as missing:
            await gt.receipts(str(uuid.uuid4()))
        assert missing.value.code == "not_found"
        assert str(missing.value) == "no such bulletin of yours"  # the id is not echoed
        # The policy forbids publishing what has already expired.
        with pytest.raises(PolicyDenied) as denied:
            await gt.resolve(LABELS, expires_at=1)
        assert denied.value.code == "policy_deny"
        assert "guard.publish-expired" in str(denied.value)
        named = LABELS.model_copy(update={"named": ("zz-nobody",)})
        with pytest.raises(EnvelopeError) as unknown:
            await gt.resolve(named)
        assert unknown.value.code == "unknown_recipient"
        assert await gt.dead_letters() == []


async def test_another_agencys_bulletin_is_not_found_by_status(stack: Stack) -> None:
    """hn-police has nothing waiting for the relay (gt-police's embargoed bulletin of the
    first test is gt's): any id it asks about is decided, or not its."""
    async with (
        await client(stack, "gt-police") as gt,
        await client(stack, "hn-police") as hn,
    ):
        sent = await gt.publish(title="mine", text="mine body", labels=LABELS)
        assert (await gt.status(sent.bulletin_id))["state"] == "accepted"
        with pytest.raises(NotFound) as theirs:
            await hn.status(sent.bulletin_id)
        with pytest.raises(NotFound) as never:
            await hn.status(str(uuid.uuid4()))
        assert never.value.code == "not_found"
        assert str(theirs.value) == str(never.value)  # the same answer: nothing told apart
        assert sent.bulletin_id not in str(theirs.value)
