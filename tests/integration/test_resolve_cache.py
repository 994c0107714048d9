"""The SDK keeps resolve answers while the relays announce no change (ADR 0009): two
publishes with the same labels ask the relay once, and a recipient suspended in between is
not in the next bulletin's envelope. What the SDK asks and seals is watched from the
broker's own account (copies of its requests and of its ingest publishes), not from
inside the SDK."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from broker.directory.lifecycle import CONTROL_DIRECTORY_SUBJECT, set_agency_status
from broker.runtime.stack import Stack
from clients.resolve_cache import Versions
from clients.sdk import IstmoClient
from schemas.labels import Classification, Labels, Tlp
from schemas.sealing import parse_envelope
from schemas.subjects import api_subject, ingest_subject
from tests.integration.stack_inproc import client, nats_url, running_stack
from tests.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")
GT = "gt-police"
HN = "hn-police"
TO_HN = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("HN",),
)
TO_SV = TO_HN.model_copy(update={"rel_to": ("SV",)})


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path_factory.mktemp("resolve-cache") / "istmo") as s:
        yield s


@pytest_asyncio.fixture(loop_scope="module")
async def broker_nc(stack: Stack) -> AsyncIterator[NATS]:
    """A connection in the broker's account, as the relay's own user."""
    nc = await stack.connect_relay(nats_url(stack))
    yield nc
    await nc.close()


async def watch(nc: NATS, subject: str) -> Subscription:
    """Copies of what is published on ``subject`` in the broker's account, kept in the
    subscription's queue (``pending_msgs``; read after ``settled``)."""
    sub = await nc.subscribe(subject)
    await settled(nc)
    return sub


async def settled(nc: NATS) -> None:
    """Everything the server sent ``nc`` before now is in its subscriptions' queues: the
    second PONG comes back behind it (one can overtake what nats-py still buffers)."""
    await nc.flush()
    await nc.flush()


async def live(gt: IstmoClient) -> Versions:
    """Wait until ``gt`` has heard a relay's announcement; the versions it heard."""
    cache = gt.resolve_cache
    assert cache is not None
    heard = await eventually(lambda: cache.versions, what=f"{gt.agency} to hear an announcement")
    assert heard is not None
    return heard


async def test_two_publishes_with_the_same_labels_ask_the_relay_once(
    stack: Stack, broker_nc: NATS
) -> None:
    asked = await watch(broker_nc, api_subject(GT, "recipients"))
    async with await client(stack, GT) as gt:
        await live(gt)
        first = await gt.publish(title="one", text="first", labels=TO_SV)
        second = await gt.publish(title="two", text="second", labels=TO_SV)
        assert gt.resolve_cache is not None
        assert gt.resolve_cache.hits == 1
    await settled(broker_nc)
    assert asked.pending_msgs == 1
    assert (first.state, second.state) == ("accepted", "accepted")
    assert first.routed == second.routed
    assert first.routed  # someone received both

    # Turned off, every publish asks.
    async with await IstmoClient.connect(
        stack.settings.keys_dir / f"{GT}.json", nats_url(stack), resolve_cache=False
    ) as uncached:
        assert uncached.resolve_cache is None
        for n in range(2):
            await uncached.publish(title=f"u{n}", text="uncached", labels=TO_SV)
    await settled(broker_nc)
    assert asked.pending_msgs == 3


async def test_a_suspended_recipient_is_not_in_the_next_envelope(
    stack: Stack, broker_nc: NATS
) -> None:
    assert stack.registry is not None
    asked = await watch(broker_nc, api_subject(GT, "recipients"))
    sealed = await watch(broker_nc, ingest_subject(GT))
    async with await client(stack, GT) as gt:
        before = await live(gt)
        first = await gt.publish(title="before", text="hn may receive it", labels=TO_HN)
        assert HN in first.routed
        again = await gt.resolve(TO_HN)  # kept: the relay is not asked
        assert HN in again

        # As `istmo admin suspend` does: the change, then a word to the running stack.
        set_agency_status(stack.registry, HN, "suspended", actor="test", note="resolve cache")
        await broker_nc.publish(CONTROL_DIRECTORY_SUBJECT, b"{}")
        cache = gt.resolve_cache
        assert cache is not None
        await eventually(
            lambda: cache.versions != before, what="gt to hear the new directory version"
        )
        # The key store too (ADR 14): the record of hn held from before the change is
        # not used again.
        assert gt.directory.held(HN) is not None
        assert gt.directory.usable(HN, now=time.monotonic(), epoch=gt._epoch()) is None
        second = await gt.publish(title="after", text="hn is suspended", labels=TO_HN)
        assert gt.directory.usable(HN, now=time.monotonic(), epoch=gt._epoch()) is None
    await settled(broker_nc)

    assert asked.pending_msgs == 2  # once before the suspension, once after
    envelopes = [parse_envelope((await sealed.next_msg(timeout=1)).data) for _ in range(2)]
    assert [e.header.bulletin_id for e in envelopes] == [first.bulletin_id, second.bulletin_id]
    recipients = [set(e.header.recipients) for e in envelopes]
    assert HN in recipients[0]
    assert HN not in recipients[1]
    assert recipients[1]  # the others still receive it
    assert HN not in second.routed
