"""The desk's background sync (ADR 25): a broker that cannot be reached never stops the
desk; the failures are counted, shown on the inbox with the next try's time, and the wait
between tries doubles up to a bound; a press of "Sync now" never runs beside it."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest

from clients.archive import Archive
from clients.archive_keys import ArchiveSecret
from clients.desk_commands import SdkLink, people_of
from clients.desk_web import MAX_BACKOFF, DeskState, _backoff, auto_sync, desk_app, sync_once
from tests.integration.test_desk_http import PASSPHRASE, PW, _keystore
from tests.stackproc import free_port
from tests.waiting import eventually


@pytest.mark.parametrize(
    ("every", "failures", "wait"),
    [
        (30, 0, 30),
        (30, 1, 60),
        (30, 3, 240),
        (30, 5, MAX_BACKOFF),
        (30, 10_000, MAX_BACKOFF),  # no overflow however long the broker is away
        (900, 3, 900),  # never shorter than asked
        (5, 2, 20),
    ],
)
def test_backoff_doubles_up_to_a_bound(every: float, failures: int, wait: float) -> None:
    assert _backoff(every, failures) == wait


async def test_unreachable_broker_is_shown_and_retried(tmp_path: Path) -> None:
    ks = _keystore(tmp_path, "sv-police")
    closed = free_port()  # nothing listens there
    with Archive.open(
        tmp_path / "sv-police.archive.sqlite",
        "sv-police",
        lambda: ArchiveSecret("passphrase", PASSPHRASE.encode()),
    ) as archive:
        people = people_of(archive)
        people.add("ana", "reader", PW)
        link = SdkLink(ks, lambda: f"nats://127.0.0.1:{closed}", lambda: PASSPHRASE)
        state = DeskState(archive, people, frozenset({"desk.test"}), link=link, sync_every=0.01)
        task = asyncio.create_task(auto_sync(state))
        try:
            await eventually(lambda: state.auto.failures >= 1, what="a failed sync")
            assert not task.done()  # still trying
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(desk_app(state)), base_url="http://desk.test"
            ) as c:
                form = await c.get("/login")
                csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
                assert csrf
                data = {"csrf": csrf.group(1), "name": "ana", "password": PW}
                assert (await c.post("/login", data=data)).status_code == 303
                page = (await c.get("/")).text
                assert re.search(
                    r'role="alert" id="auto-sync">Background sync failed \d+ times?', page
                )
                assert "next try: 20" in page  # a time shown
                # "Sync now" waits for the lock the background sync holds, never beside it.
                async with state.sync_lock:
                    manual = asyncio.create_task(sync_once(state))
                    await asyncio.sleep(0)
                    assert not manual.done()
                with pytest.raises(Exception):  # noqa: B017,PT011 -- the SDK's connection error
                    await manual
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert people.entries(limit=50)[0][3] == "sign-in"  # failures are not logged as syncs
        people.close()
        if state.drafts is not None:
            state.drafts.close()
