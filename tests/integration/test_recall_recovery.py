"""Recalls that meet trouble (ADR 15): a relay that dies in the middle of one, and a
delivery stream made before recalls existed, which will not give up a single message.

The relay dies after it recorded a withdrawal and before it removed the copies and told the
recipients: the state is made by the relay's own first half (``Withdrawals.accept``, what
the agency API runs before anything moves), with the relay stopped. The next relay finds
it and finishes it; the originator asking again gets the same answer.

A stream made with ``deny_delete`` (every Istmo before ADR 15; nats-server cannot lift it)
keeps its copies: every routed recipient is told, and an SDK that meets the copy after the
withdrawal drops it, so the application never sees the bulletin.
"""

from __future__ import annotations

import time
from pathlib import Path

from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from broker.bus.streams import (
    ensure_agency_consumer,
    ensure_deliver_stream,
    ensure_streams,
)
from broker.relay.withdrawals import Withdrawals
from broker.store.recalls import withdrawal
from schemas.ids import AgencyId, BulletinId
from schemas.labels import Precedence
from schemas.subjects import DELIVER_STREAM
from schemas.withdrawal import encode_withdrawal, sign_withdrawal
from tests.integration.recall_kit import BZ, LABELS, audit_verifies, copies, take, waiting
from tests.integration.stack_inproc import (
    client,
    nats_url,
    running_stack,
    start_relay,
    stop_relay,
)
from tests.waiting import eventually

REASON = "wrong recipients"


async def test_a_recall_the_relay_did_not_finish_is_finished_by_the_next(tmp_path: Path) -> None:
    async with running_stack(
        tmp_path / "istmo", with_relay=False, withdrawal_grace_s=0, withdrawal_sweep_s=0.5
    ) as stack:
        relay = await start_relay(stack, "gt-police", LABELS)
        try:
            async with await client(stack, "gt-police") as gt:
                published = await gt.publish(title="half recalled", text="body", labels=LABELS)
                signed = sign_withdrawal(
                    bulletin_id=BulletinId(published.bulletin_id),
                    originator=AgencyId("gt-police"),
                    reason=REASON,
                    issued_at=int(time.time()),
                    key=gt.keystore.signing_key(),
                )
            bid = published.bulletin_id
            assert tuple(sorted(published.routed)) == BZ
            assert [b.id for b in (await take(stack, "bz-police")).bulletins] == [bid]
        finally:
            await stop_relay(relay)

        # The relay recorded the withdrawal, and died before it did anything else.
        assert stack.registry is not None
        assert stack.directory is not None
        recalls = Withdrawals(stack.settings, stack.registry, stack.directory)
        recalls.accept("gt-police", encode_withdrawal(signed), int(time.time()))
        row = withdrawal(stack.registry, bid)
        assert row is not None
        assert row.completed_at is None
        assert await copies(stack, bid) == dict.fromkeys(BZ, 1)

        relay = await start_relay(stack, "gt-police", LABELS)
        try:
            # The next relay finishes it on its own.
            await eventually(
                lambda: withdrawal(stack.registry, bid),  # type: ignore[arg-type]
                until=lambda r: r is not None and r.completed_at is not None,
                what="the unfinished withdrawal finished",
            )
            assert await copies(stack, bid) == {}
            (told,) = (await take(stack, "bz-police")).withdrawals
            assert (told.id, told.reason, told.had_it) == (bid, REASON, True)
            for agency in ("bz-justice", "bz-military"):
                assert await waiting(stack, agency) == (0, 0)
                assert await waiting(stack, agency, Precedence.IMMEDIATE) == (0, 0)
            # The originator asking again gets the outcome; nothing is done twice.
            async with await client(stack, "gt-police") as gt:
                again = await gt.recall(bid, reason=REASON)
            assert (again.state, again.removed, again.notified) == (
                "done",
                ("bz-justice", "bz-military"),
                ("bz-police",),
            )
            assert (await take(stack, "bz-police", timeout=1)).withdrawals == []
            assert await audit_verifies(stack.settings.data_dir)
        finally:
            await stop_relay(relay)


def _old_delivery_stream(config: StreamConfig) -> StreamConfig:
    """``ISTMO_DELIVER`` as an Istmo before ADR 15 made it: deletes denied, no TTLs."""
    return StreamConfig(
        name=DELIVER_STREAM,
        subjects=config.subjects,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=config.max_age,
        duplicate_window=config.duplicate_window,
        deny_delete=True,
        deny_purge=True,
        allow_direct=False,
        max_consumers=config.max_consumers,
        allow_atomic=True,
    )


async def test_a_stream_that_denies_deletes_leaves_the_copies_to_the_sdks(tmp_path: Path) -> None:
    # The stream is swapped with no relay running (one still binding would meet no
    # stream and stop); the stack then starts again on it, as after an upgrade.
    async with running_stack(tmp_path / "istmo", with_relay=False) as stack:
        nc = await stack.connect_relay(nats_url(stack))
        try:
            js = nc.jetstream(timeout=10)
            made = (await js.stream_info(DELIVER_STREAM)).config
            await js.delete_stream(DELIVER_STREAM)
            await js.add_stream(_old_delivery_stream(made))
            # What a relay and a stack do on such a stream: it keeps deny_delete (which
            # nats-server will not lift) and gains TTLs in place.
            await ensure_deliver_stream(js)
            await ensure_streams(js)
            for agency in (*BZ, "gt-police"):
                await ensure_agency_consumer(js, agency)
            upgraded = (await js.stream_info(DELIVER_STREAM)).config
            assert (upgraded.deny_delete, upgraded.allow_msg_ttl) == (True, True)
        finally:
            await nc.close()

    async with running_stack(tmp_path / "istmo") as stack:
        async with await client(stack, "gt-police") as gt:
            bid = (await gt.publish(title="kept copies", text="body", labels=LABELS)).bulletin_id
            assert [b.id for b in (await take(stack, "bz-police")).bulletins] == [bid]
            result = await gt.recall(bid, reason=REASON)
        # Nothing could be removed, so everyone is told.
        assert (result.removed, result.notified, result.copies_kept) == ((), BZ, 3)
        assert await copies(stack, bid) == dict.fromkeys(BZ, 1)
        # bz-military takes the withdrawal first (its urgent queue), then drops the copy.
        got = await take(stack, "bz-military", count=2, timeout=5)
        assert got.bulletins == []
        assert [(w.id, w.had_it) for w in got.withdrawals] == [(bid, False)]
        await eventually(
            lambda: waiting(stack, "bz-military"),
            until=lambda w: w == (0, 0),
            what="bz-military's copy settled without reaching its application",
        )
        assert await audit_verifies(stack.settings.data_dir)
