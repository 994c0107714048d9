"""An agency revokes one of its own signing keys over NATS (``revoke-key``): what the key
signs from then on is refused, every relay learns of it, and the audit log names the
agency as the actor. Another agency's key cannot be touched."""

from __future__ import annotations

import json

import pytest
import pytest_asyncio

from broker.runtime.stack import Stack
from clients.errors import NotFound
from clients.sdk import PublishRejected
from schemas.canonical import canonical_json
from schemas.errors import EnvelopeError
from schemas.labels import Classification, Labels, Tlp
from tests.integration.stack_inproc import client, running_stack
from tests.storage_engines import Storage
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")
LABELS = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("HN",),
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory, storage_module: Storage):
    async with running_stack(
        tmp_path_factory.mktemp("self-revocation") / "istmo", database_url=storage_module.pg_url
    ) as s:
        yield s


def current_kid(stack: Stack, agency: str) -> str:
    assert stack.registry is not None
    live = [k for k in stack.registry.signing_keys(agency) if k.revoked_at is None]
    return max(live, key=lambda k: k.created_at).kid


async def test_an_agency_revokes_its_own_current_key(stack: Stack) -> None:
    assert stack.registry is not None
    async with await client(stack, "sv-police") as sv:
        kid = sv.keystore.signing_keys[-1].kid
        assert kid == current_kid(stack, "sv-police")
        before = await sv.publish(title="before", text="signed before revocation", labels=LABELS)
        assert before.state == "accepted"
        with pytest.raises(EnvelopeError) as last:
            await sv.revoke_key(kid)  # its only valid key: it would be left with nothing
        assert last.value.code == "last_key"
        assert (await sv.publish(title="still", text="still valid", labels=LABELS)).state == (
            "accepted"
        )
        revoked_at = await sv.revoke_key(kid, force=True)
        with pytest.raises(PublishRejected) as err:
            await sv.publish(title="after", text="signed after revocation", labels=LABELS)
        assert err.value.code == "key_revoked"
        with pytest.raises(EnvelopeError) as again:
            await sv.revoke_key(kid)
        assert again.value.code == "already_revoked"
    row = stack.registry.signing_key(kid)
    assert row is not None
    assert row.revoked_at == revoked_at
    (event,) = [
        e for e in stack.registry.audit_events(type_="key.revoked") if e.subject == "sv-police"
    ]
    assert (event.actor, event.to_event().data["kid"]) == ("sv-police", kid)
    # The relay told the stack (istmo.control.directory): its directory has the revocation.
    directory = stack.directory
    assert directory is not None

    def revoked() -> bool:
        keys = directory.records["sv-police"].signing_keys
        return any(k.kid == kid and k.revoked_at == revoked_at for k in keys)

    await eventually(revoked, what="the stack's directory to learn of the revocation")


async def test_another_agencys_key_is_refused_as_not_found(stack: Stack) -> None:
    assert stack.registry is not None
    theirs = current_kid(stack, "gt-police")
    async with await client(stack, "hn-police") as hn:
        # The error reply's code picks the exception (clients.errors), keeping code and
        # message: the same NotFound for another agency's key as for a missing one.
        with pytest.raises(NotFound) as err:
            await hn.revoke_key(theirs)
        assert err.value.code == "not_found"
        with pytest.raises(NotFound) as missing:
            await hn.revoke_key("sig-" + "0" * 32)
        assert missing.value.code == "not_found"
        assert str(missing.value) == "no such signing key of yours"  # the kid is not echoed
        assert str(err.value).replace(theirs, "K") == str(missing.value).replace(
            "sig-" + "0" * 32, "K"
        )
        for bad in ({"kid": "gt-police"}, {"kid": theirs, "agency": "gt-police"}, {}):
            reply = await hn._nc.request(
                "istmo.api.hn-police.revoke-key", canonical_json(bad), timeout=5
            )
            assert json.loads(reply.data)["error"]["code"] == "malformed"
    row = stack.registry.signing_key(theirs)
    assert row is not None
    assert row.revoked_at is None
    assert not [
        e for e in stack.registry.audit_events(type_="key.revoked") if e.subject == "gt-police"
    ]
    async with await client(stack, "gt-police") as gt:
        still = await gt.publish(title="still", text="gt's key is untouched", labels=LABELS)
        assert still.state == "accepted"
    rejected = stack.registry.audit_events(type_="request.rejected", actor="hn-police")
    assert [e.subject for e in rejected] == ["api.revoke-key"] * 3  # the malformed ones
