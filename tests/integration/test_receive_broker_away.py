"""``IstmoClient.receive`` when NATS, the broker or its own dedupe store does not answer:
the SDK's own errors come out (never nats-py's), and no bulletin is lost or handed over
twice once recorded.

Opening a delivery asks the broker's directory for its sender's key. With no relay to
answer, the lookup fails at once (no responders); with a relay that hangs, it times out.
Either way ``receive`` raises ``BusUnavailable`` and leaves the bulletin unsettled (no nak,
which would spend a delivery attempt), and a later
``receive`` gets it. An ack NATS does not confirm is not an error either: the bulletin
was handed over, and if it comes back the dedupe store recognises it. A dedupe record
that does not commit (a full disk) leaves its bulletin unacked, without a receipt: it
comes back and is handed over again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import nats.errors
import pytest
from nats.aio.msg import Msg

from broker.bus.streams import AGENCY_MAX_DELIVER, ensure_agency_consumer
from broker.relay.worker import Relay
from broker.runtime.stack import Stack
from clients.dedupe import DedupeStore
from clients.sdk import IstmoClient, ReceivedBulletin
from schemas.envelope import Envelope
from schemas.errors import BusUnavailable
from schemas.labels import Classification, Labels, Tlp
from schemas.subjects import DELIVER_STREAM, deliver_durables
from tests.integration.stack_inproc import client, nats_url, running_stack
from tests.stackproc import pause
from tests.waiting import eventually

LABELS = Labels(
    topic="border-incident",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("NI",),
)


@contextlib.asynccontextmanager
async def relay(stack: Stack) -> AsyncIterator[None]:
    """A relay worker of the stack's own (``istmo relay``), for as long as the block runs;
    yields once it answers agency requests."""
    assert stack.registry is not None
    assert stack.directory is not None
    nc = await stack.connect_relay(nats_url(stack), reconnects=0)
    stop = asyncio.Event()
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(Relay(stack.settings, stack.registry, stack.directory, nc).run(stop))
            try:
                await eventually(  # until its subscriptions are in place
                    lambda: nc.request("istmo.api.gt-police.status", b"{}", timeout=5),
                    what="the relay to answer agency requests",
                    ignoring=(nats.errors.NoRespondersError,),
                )
                yield
            finally:
                stop.set()
    finally:
        await nc.close()


async def test_a_directory_nobody_answers_is_bus_unavailable_and_loses_nothing(
    tmp_path: Path,
) -> None:
    seen: list[str] = []

    async def keep(b: ReceivedBulletin) -> None:
        seen.append(b.id)

    async with running_stack(tmp_path / "istmo", with_relay=False) as stack:
        async with relay(stack), await client(stack, "hn-police") as hn:
            sent = await hn.publish(title="while the relay is away", text="x", labels=LABELS)
        assert sent.state == "accepted"
        # A delivery nobody settles comes back on the consumer's backoff: 1 s here.
        broker = await stack.connect_relay(nats_url(stack), reconnects=0)
        try:
            await ensure_agency_consumer(
                broker.jetstream(timeout=10), "ni-police", backoff_s=(1.0,)
            )
        finally:
            await broker.close()
        # No relay: nobody serves istmo.api.*, and NATS says so at once.
        async with await client(stack, "ni-police") as ni:
            with pytest.raises(BusUnavailable, match="did not answer 'directory'"):
                await ni.receive(keep, count=1, timeout=30)
            # An application that retries through the outage, faster than the backoff: an
            # immediate hand-back (nak) would spend a delivery attempt on each retry and
            # dead-letter the bulletin after the 10th (AGENCY_MAX_DELIVER).
            for _ in range(AGENCY_MAX_DELIVER + 2):
                with contextlib.suppress(BusUnavailable):
                    await ni.receive(keep, count=1, timeout=0.3)
        # A relay that hangs: the lookup times out.
        hung = await stack.connect_relay(nats_url(stack), reconnects=0)

        async def never_answer(_msg: Msg) -> None:
            return None

        try:
            await hung.subscribe("istmo.api.*.*", queue="relay-api", cb=never_answer)
            await hung.flush()
            async with await client(stack, "ni-police") as ni:
                with pytest.raises(BusUnavailable, match="did not answer 'directory'"):
                    await ni.receive(keep, count=1, timeout=30)
        finally:
            await hung.close()
        assert seen == []
        # Not lost and not dead-lettered: with a relay again, a receive gets it, once.
        async with relay(stack), await client(stack, "ni-police") as ni:
            assert await ni.receive(keep, count=1, timeout=60) == 1
            assert await ni.receive(keep, timeout=1) == 0
    assert seen == [sent.bulletin_id]


class _AckUnconfirmed(IstmoClient):
    """The real SDK, with nats-server paused (SIGSTOP) once a receipt is stored, so the
    ack that follows it is never confirmed."""

    nats_pid: int

    async def _send_receipt(self, env: Envelope, digest: str, received_at: int) -> bool:
        stored = await super()._send_receipt(env, digest, received_at)
        pause(self.nats_pid)
        return stored


async def test_an_ack_nats_does_not_confirm_is_not_an_error(tmp_path: Path) -> None:
    async with running_stack(tmp_path / "istmo") as stack:
        async with await client(stack, "hn-police") as hn:
            sent = await hn.publish(title="acked in the dark", text="x", labels=LABELS)
        assert stack.nats is not None
        pid = stack.nats.pid
        assert isinstance(pid, int)
        seen: list[str] = []

        async def keep(b: ReceivedBulletin) -> None:
            seen.append(b.id)

        keys = stack.settings.keys_dir / "ni-police.json"
        ni = await _AckUnconfirmed.connect(keys, nats_url(stack))
        ni.nats_pid = pid
        try:
            assert await ni.receive(keep, count=1, timeout=30) == 1
        finally:
            os.kill(pid, signal.SIGCONT)
        try:
            # Whether the ack landed late or the bulletin comes back, it is not handed twice.
            assert await IstmoClient.receive(ni, keep, timeout=2) == 0
        finally:
            await ni.close()
        assert seen == [sent.bulletin_id]


async def test_a_dedupe_record_that_does_not_commit_leaves_its_bulletin_unacked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    async def keep(b: ReceivedBulletin) -> None:
        seen.append(b.id)

    async with running_stack(tmp_path / "istmo") as stack:
        broker = await stack.connect_relay(nats_url(stack), reconnects=0)
        try:
            js = broker.jetstream(timeout=10)
            # A delivery nobody settles comes back on the consumer's backoff: 1 s here.
            await ensure_agency_consumer(js, "ni-police", backoff_s=(1.0,))
            async with await client(stack, "hn-police") as hn:
                sent = await hn.publish(title="t", text="CANARY-not-recorded", labels=LABELS)
            dedupe = tmp_path / "ni-police.received.sqlite"
            DedupeStore(dedupe).close()
            with closing(sqlite3.connect(dedupe, isolation_level=None)) as db:
                # A real SQLite failure inside the writer's transaction, as a full disk.
                db.execute(
                    "CREATE TRIGGER refuse BEFORE INSERT ON handed"
                    " BEGIN SELECT RAISE(ABORT, 'disk full'); END"
                )

            async def unsettled() -> int:
                infos = [
                    await js.consumer_info(DELIVER_STREAM, d) for d in deliver_durables("ni-police")
                ]
                return sum(i.num_pending + i.num_ack_pending for i in infos)

            keys = stack.settings.keys_dir / "ni-police.json"
            async with await IstmoClient.connect(keys, nats_url(stack), dedupe_path=dedupe) as ni:
                # Handed over; receive returns once its settle task gave up: never acked.
                assert await ni.receive(keep, count=1, timeout=30) == 1
                assert await unsettled() == 1
                assert ni._dedupe.handed_at(sent.bulletin_id) is None
                with closing(sqlite3.connect(dedupe, isolation_level=None)) as db:
                    db.execute("DROP TRIGGER refuse")
                # It comes back, is handed over again (nothing recorded it), and settles.
                assert await ni.receive(keep, count=1, timeout=60) == 1
                await eventually(unsettled, until=lambda n: n == 0, what="the bulletin acked")
                assert ni._dedupe.handed_at(sent.bulletin_id) is not None
                assert await ni.receive(keep, timeout=2) == 0
        finally:
            await broker.close()
    assert seen == [sent.bulletin_id, sent.bulletin_id]
    assert any("dedupe record failed" in r.getMessage() for r in caplog.records)
    assert not any("CANARY" in r.getMessage() for r in caplog.records)
