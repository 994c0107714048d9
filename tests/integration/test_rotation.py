"""Key rotation: new keys vouched for by the current one; history keeps verifying."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import pytest_asyncio

from broker.runtime.stack import Stack
from clients.errors import ERRORS_BY_CODE
from clients.sdk import PublishRejected, ReceivedBulletin
from schemas.agency import RotateReply
from schemas.canonical import b64e, canonical_json
from schemas.directory import EncryptionKeyRecord
from schemas.envelope import Content
from schemas.errors import IstmoError
from schemas.keys import EncryptionKey, SigningKey
from schemas.labels import Classification, Labels, Tlp
from schemas.rotation import RotationRequest, sign_rotation
from schemas.sealing import seal
from tests.integration.stack_inproc import client, running_stack
from tests.storage_engines import Storage

pytestmark = pytest.mark.asyncio(loop_scope="module")
LABELS = Labels(
    topic="migration", classification=Classification.RESTRICTED, tlp=Tlp.AMBER, rel_to=("CR",)
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory, storage_module: Storage):
    async with running_stack(
        tmp_path_factory.mktemp("rotation") / "istmo", database_url=storage_module.pg_url
    ) as s:
        yield s


async def test_rotation_keeps_history_and_refuses_the_old_key(stack: Stack) -> None:
    keys_dir = stack.settings.keys_dir
    async with await client(stack, "pa-foreign") as pa:
        recipients = await pa.resolve(LABELS)
        old_signer = pa.keystore.signing_key()
        before = await pa.publish(title="before", text="sealed before rotation", labels=LABELS)
        assert before.state == "accepted"
        signing, _encryption = await pa.rotate_keys()
        stored = json.loads((keys_dir / "pa-foreign.json").read_text())
        assert [k["kid"] for k in stored["signing_keys"]][-1] == signing
        assert len(stored["encryption_keys"]) == 2  # the old one stays: old bulletins open
        after = await pa.publish(title="after", text="sealed with the new key", labels=LABELS)
        assert after.state == "accepted"
        await asyncio.sleep(1.1)  # the old key is valid through the second of rotation
        late = seal(
            content=Content(title="t", text="old key, after rotation"),
            labels=LABELS,
            originator=pa.agency,
            signing_key=old_signer,
            recipients=recipients,
            now=int(time.time()),
        )
        await pa._publish_envelope(late)
        with pytest.raises(PublishRejected) as err:
            await pa.wait_for_verdict(late.header.bulletin_id)
    assert err.value.code == "key_revoked"
    got: list[str] = []

    async def app(b: ReceivedBulletin) -> None:
        got.append(b.title)

    async with await client(stack, "cr-foreign") as cr:
        assert await cr.receive(app, count=2, timeout=10) == 2
    assert got == ["before", "after"]  # the old signature still verifies for what it signed


async def test_recipient_rotation_still_opens_queued_bulletins(stack: Stack) -> None:
    async with await client(stack, "cr-foreign") as cr:
        await cr.receive(lambda _b: _none(), count=100, timeout=1)
    async with await client(stack, "pa-foreign") as pa:
        queued = await pa.publish(title="queued", text="for the old key", labels=LABELS)
    async with await client(stack, "cr-foreign") as cr:
        await cr.rotate_keys()
    async with await client(stack, "pa-foreign") as pa:
        fresh = await pa.publish(title="fresh", text="for the new key", labels=LABELS)
    got: list[str] = []

    async def app(b: ReceivedBulletin) -> None:
        got.append(b.id)

    async with await client(stack, "cr-foreign") as cr:
        assert await cr.receive(app, count=2, timeout=10) == 2
    assert got == [queued.bulletin_id, fresh.bulletin_id]


async def _none() -> None:
    return None


async def test_hostile_rotations_are_refused(stack: Stack) -> None:
    async with await client(stack, "ni-justice") as ni:
        current = ni.keystore.signing_key()
        enc = EncryptionKey.generate().public_key
        record = EncryptionKeyRecord(
            kid=enc.kid, kem=enc.kem, public=b64e(enc.public), created_at=1
        )

        async def send(req: RotationRequest) -> str:
            with pytest.raises(IstmoError) as refused:
                await ni._ask("rotate", req, RotateReply)
            assert isinstance(refused.value, ERRORS_BY_CODE[refused.value.code])  # the table's
            return refused.value.code

        now = int(time.time())
        stranger = sign_rotation(
            agency="ni-justice",
            issued_at=now,
            current=SigningKey.generate(),
            new=SigningKey.generate(),
            encryption=record,
        )
        assert await send(stranger) == "key_not_current"
        other = sign_rotation(
            agency="ni-police",
            issued_at=now,
            current=current,
            new=SigningKey.generate(),
            encryption=record,
        )
        assert await send(other) == "originator_mismatch"
        stale = sign_rotation(
            agency="ni-justice",
            issued_at=now - 3600,
            current=current,
            new=SigningKey.generate(),
            encryption=record,
        )
        assert await send(stale) == "timestamp_out_of_window"
        good = sign_rotation(
            agency="ni-justice",
            issued_at=now,
            current=current,
            new=SigningKey.generate(),
            encryption=record,
        )
        forged = good.model_copy(update={"sig_new": good.sig_current})  # no proof of possession
        assert await send(forged) == "signature_invalid"
        reply = await ni._nc.request(
            "istmo.api.ni-justice.rotate", canonical_json({"v": 1}), timeout=5
        )
        assert json.loads(reply.data)["error"]["code"] == "malformed"
    assert stack.registry is not None
    events = [
        r.reason for r in stack.registry.audit_events(type_="request.rejected", actor="ni-justice")
    ]
    assert len(events) == 5
