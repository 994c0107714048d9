"""The SDK seals for keys from the signed directory records it keeps, never from the answer
to "who may receive this?" (ADR 14), on a running stack (nats-server, relay, SQLite).

The answer is ids and versions only, its size set by how many recipients and not by their
keys; the records come a page at a time and are fetched again only for agencies that
changed: a rotated key is used once its rotation is announced, a suspended recipient is
never sealed for, and an answer not signed by the pinned directory key is refused, saying
so. What the SDK asks and publishes is watched from the broker's own account."""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from broker.directory.lifecycle import CONTROL_DIRECTORY_SUBJECT, set_agency_status
from broker.runtime.stack import Stack
from clients.keystore import load_keystore, save_keystore
from clients.results import ReceivedBulletin
from clients.sdk import IstmoClient, _sealable
from schemas.agency import (
    DirectoryRequest,
    RecipientsReply,
    ResolveReply,
    ResolveRequest,
    encode_request,
)
from schemas.canonical import b64e, canonical_json
from schemas.directory import verify_excerpt
from schemas.envelope import parse_model
from schemas.errors import SignatureError
from schemas.keys import SigningKey
from schemas.keystore import PinnedKey
from schemas.labels import Classification, Labels, Tlp
from schemas.sealing import parse_envelope
from schemas.subjects import api_subject, ingest_subject
from tests.integration.stack_inproc import client, nats_url, running_stack
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")
GT, HN, SV = "gt-police", "hn-police", "sv-police"
TO_SICA = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("SICA",),
)
TO_HN = TO_SICA.model_copy(update={"rel_to": ("HN",)})
TO_SV = TO_SICA.model_copy(update={"rel_to": ("SV",)})


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path_factory.mktemp("dirkeys") / "istmo") as s:
        yield s


@pytest_asyncio.fixture(loop_scope="module")
async def broker_nc(stack: Stack) -> AsyncIterator[NATS]:
    """A connection in the broker's account, as the relay's own user."""
    nc = await stack.connect_relay(nats_url(stack))
    yield nc
    await nc.close()


async def watch(nc: NATS, subject: str) -> Subscription:
    """Copies of what is published on ``subject`` in the broker's account."""
    sub = await nc.subscribe(subject)
    await settled(nc)
    return sub


async def settled(nc: NATS) -> None:
    """Everything the server sent ``nc`` before now is in its subscriptions' queues."""
    await nc.flush()
    await nc.flush()


async def drained(sub: Subscription) -> list[bytes]:
    """What ``sub`` has received so far (after ``settled``)."""
    return [(await sub.next_msg(timeout=1)).data for _ in range(sub.pending_msgs)]


async def heard_newer(c: IstmoClient, serial: int) -> None:
    """Wait until ``c`` has heard of a directory newer than ``serial``."""
    await eventually(
        lambda: c.directory.required() > serial, what=f"{c.agency} to hear the new directory"
    )


async def test_the_answer_names_ids_and_the_keys_come_from_the_records(
    stack: Stack, broker_nc: NATS
) -> None:
    ask = encode_request(ResolveRequest(labels=TO_SICA))
    asked_for = await watch(broker_nc, api_subject(GT, "directory"))
    async with await client(stack, GT) as gt:
        # 1. The answer: ids and versions, nothing else; the old one carried every key.
        raw = (await gt._nc.request(api_subject(GT, "recipients"), ask, timeout=5)).data
        answer = parse_model(RecipientsReply, raw, max_bytes=1 << 20, what="answer")
        n = len(answer.recipients)
        assert n >= 5
        assert raw == canonical_json(
            {
                "recipients": list(answer.recipients),
                "policy_version": answer.policy_version,
                "directory_version": answer.directory_version,
            }
        )
        assert b"public" not in raw
        assert len(raw) <= 200 + 40 * n
        old = (await gt._nc.request(api_subject(GT, "resolve"), ask, timeout=5)).data
        with_keys = parse_model(ResolveReply, old, max_bytes=1 << 22, what="old answer")
        assert set(with_keys.recipients) == set(answer.recipients)
        assert len(old) > 1000 * n > 20 * len(raw)
        # The relay sends the bytes of the excerpt it keeps: those of the answer, signed.
        assert old == canonical_json(with_keys.model_dump(mode="json"))
        assert stack.directory is not None
        verify_excerpt(with_keys.directory, stack.directory.directory_key.verify_key)

        # 2. Publishing fetches the records a page at a time, then seals for each.
        gt._records.page = 4
        sealed = await watch(broker_nc, ingest_subject(GT))
        first = await gt.publish(title="one", text="to SICA", labels=TO_SICA)
        assert first.state == "accepted"
        assert set(first.routed) == set(answer.recipients)
        await settled(broker_nc)
        envelope = parse_envelope((await drained(sealed))[0])
        assert set(envelope.header.recipients) == set(answer.recipients)
        pages = [parse_model(DirectoryRequest, m, max_bytes=1 << 16, what="request") for m in (
            await drained(asked_for)
        )]  # fmt: skip
        assert len(pages) == math.ceil(n / 4)
        assert sorted(a for p in pages for a in p.agencies) == sorted(answer.recipients)

        # 3. A narrower audience asks for no record: those held are current.
        narrower = await gt.publish(title="two", text="to SV", labels=TO_SV)
        assert narrower.state == "accepted"
        assert SV in narrower.routed
        await settled(broker_nc)
        assert asked_for.pending_msgs == 0
        assert gt._records.asked["changes"] == 0


async def test_a_rotated_key_is_used_once_announced(stack: Stack, broker_nc: NATS) -> None:
    asked_for = await watch(broker_nc, api_subject(GT, "directory"))
    changes = await watch(broker_nc, api_subject(GT, "changes"))
    sealed = await watch(broker_nc, ingest_subject(GT))
    keystore = stack.settings.keys_dir / f"{HN}.json"
    async with await client(stack, GT) as gt, await client(stack, HN) as hn:
        await gt.publish(title="before", text="old key", labels=TO_HN)
        held = gt.directory.held(HN)
        assert held is not None
        serial = gt.directory.required()
        await settled(broker_nc)
        await drained(asked_for)

        _, new_kem = await hn.rotate_keys()
        await heard_newer(gt, serial)
        after = await gt.publish(title="after", text="new key", labels=TO_HN)
        assert HN in after.routed
        await settled(broker_nc)

        # The one record that changed was fetched again, after one change list.
        assert changes.pending_msgs == 1
        refetched = [
            parse_model(DirectoryRequest, m, max_bytes=1 << 16, what="request").agencies
            for m in await drained(asked_for)
        ]
        assert refetched == [(HN,)]
        envelopes = [parse_envelope(m) for m in await drained(sealed)]
        wraps = [{w.recipient: w.kid for w in e.wraps} for e in envelopes]
        assert held.record.encryption_key is not None
        assert wraps[0][HN] == held.record.encryption_key.kid
        assert wraps[1][HN] == new_kem

        # hn opens both: the old bulletin with its old key, the new one with the new.
        got: list[ReceivedBulletin] = []

        async def keep(b: ReceivedBulletin) -> None:
            got.append(b)

        while "after" not in {b.title for b in got}:  # behind what earlier tests sent it
            assert await hn.receive(keep, count=1, timeout=10) == 1
        assert {b.title for b in got} >= {"before", "after"}
    assert load_keystore(keystore).encryption_keys[-1].kid == new_kem


async def test_a_suspended_recipient_is_never_sealed_for(stack: Stack, broker_nc: NATS) -> None:
    assert stack.registry is not None
    sealed = await watch(broker_nc, ingest_subject(GT))
    async with await client(stack, GT) as gt:
        first = await gt.publish(title="before", text="sv may receive it", labels=TO_SV)
        assert SV in first.routed
        decided_at = gt.directory.held(SV)
        assert decided_at is not None
        serial = gt.directory.required()

        set_agency_status(stack.registry, SV, "suspended", actor="test", note="dirkeys")
        await broker_nc.publish(CONTROL_DIRECTORY_SUBJECT, b"{}")
        await heard_newer(gt, serial)

        # The record held from before is not used; the one fetched says suspended. So even
        # an answer decided before the suspension (a relay not yet rebuilt) names sv in
        # vain: sv is not sealed for.
        assert gt.directory.usable(SV, now=time.monotonic(), epoch=gt._epoch()) is None
        records = await gt._directory([SV], floor=decided_at.version)
        assert records[SV].status == "suspended"
        assert _sealable((SV,), records) == {}
        after = await gt.publish(title="after", text="sv is suspended", labels=TO_SV)
        assert SV not in after.routed
    await settled(broker_nc)
    envelopes = [parse_envelope(m) for m in await drained(sealed)]
    assert [SV in e.header.recipients for e in envelopes] == [True, False]
    assert envelopes[1].header.recipients  # the others in SV still receive it
    set_agency_status(stack.registry, SV, "active", actor="test", note="dirkeys")
    await broker_nc.publish(CONTROL_DIRECTORY_SUBJECT, b"{}")


async def test_a_forged_directory_is_refused_clearly(
    stack: Stack, broker_nc: NATS, tmp_path: Path
) -> None:
    """A keystore that pins another directory key sees every answer of this broker as a
    forgery: nothing is sealed, and the error says what is wrong."""
    other = SigningKey.generate().verify_key
    keystore = load_keystore(stack.settings.keys_dir / f"{GT}.json")
    pinned_elsewhere = keystore.model_copy(
        update={"directory_key": PinnedKey(kid=other.kid, public=b64e(other.public))}
    )
    path = tmp_path / f"{GT}.json"
    save_keystore(path, pinned_elsewhere)
    sealed = await watch(broker_nc, ingest_subject(GT))
    async with await IstmoClient.connect(path, nats_url(stack)) as gt:
        with pytest.raises(SignatureError) as refused:
            await gt.publish(title="never", text="sealed", labels=TO_HN)
        assert len(gt.directory) == 0
    assert refused.value.code == "directory_untrusted"
    assert "not signed by the directory key pinned in this keystore" in str(refused.value)
    assert refused.value.hint is not None
    await settled(broker_nc)
    assert sealed.pending_msgs == 0
    assert json.dumps(str(refused.value)).isascii()
