"""F-11/F-12: PostgreSQL restarted, and the broker's connections terminated, under load.

``istmo up`` runs with ``ISTMO_DATABASE_URL`` pointing at a database of its own on the
machine's PostgreSQL (migrated with ``istmo db upgrade``); a publisher sends bulletins to
Belize's three ministries, which receive all along, while the test:

- F-11: restarts the whole server with ``pg_ctlcluster ... restart -m immediate`` (a crash:
  no checkpoint, WAL replay on start). It disturbs every other user of the server, so it is
  ``slow`` and short.
- F-12: terminates every backend of the broker's database (``pg_terminate_backend``) ten
  times, mid-transaction for whichever the relay or the sequencer had open.

Then the checker must find nothing lost, nothing unexpected, no duplicate reaching an
application, one ``bulletin.accepted`` per acked bulletin, and a log that verifies. The
relay and the sequencer must reconnect on their own (nobody restarts them). Measured:
the load, the counts, and how long after the database came back the broker accepted
bulletins again (and caught up on everything).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.faults.harness import (
    Publisher,
    Recipient,
    Target,
    all_seen,
    bz_load,
    check,
    record_run,
    wait_until,
)
from tests.stackproc import UpProcess
from tests.storage_engines import pg_database
from tests.waiting import eventually_sync

pytestmark = [pytest.mark.postgres, pytest.mark.long]

RATE = 40  # bulletins/s (two shared cores; the catalogue's 1,000/s is for PROD hardware)
SECONDS = 16
FAULT_AT_S = 5.0
TERMINATIONS = 10
TERMINATE_EVERY_S = 1.0


@pytest.fixture
def pg_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[UpProcess, str]]:
    """``istmo up`` on a fresh PostgreSQL database: (the process, the database URL)."""
    with pg_database() as url:
        monkeypatch.setenv("ISTMO_DATABASE_URL", url)
        up = UpProcess(tmp_path / "istmo").start()
        try:
            yield up, url
        finally:
            up.stop()


def _dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def accepted(url: str) -> int | None:
    """``bulletin.accepted`` events committed so far; None while the server is away."""
    try:
        with psycopg.connect(_dsn(url), connect_timeout=2) as conn:
            row = conn.execute(
                "SELECT count(*) FROM audit_event WHERE type = 'bulletin.accepted'"
            ).fetchone()
            return None if row is None else int(row[0])
    except psycopg.Error:
        return None


def terminate_backends(url: str) -> int:
    """Terminate every other connection to the broker's database; how many there were."""
    database = _dsn(url).rsplit("/", 1)[1]
    admin = _dsn(url).rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
    return sum(1 for (ok,) in rows if ok)


def restart_postgres_immediately() -> float:
    """``pg_ctlcluster <version> main restart -m immediate``; the seconds until the server
    accepts connections again."""
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[-1]
    t0 = time.monotonic()
    done = subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart", "-m",
         "immediate"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    eventually_sync(accepted_probe, what="PostgreSQL to come back", timeout=120)
    return time.monotonic() - t0


def accepted_probe() -> bool:
    try:
        with psycopg.connect(
            "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=2"
        ) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


async def _run_under_load(
    target: Target, url: str, fault: object
) -> tuple[Publisher, list[Recipient], float, float]:
    """Publish RATE/s for SECONDS with recipients receiving and ``fault`` (a coroutine
    function) running; wait until every acked bulletin reached every recipient. Returns
    the publisher, the recipients, the publish time and the catch-up time after the load."""
    pub, recipients = await bz_load(target)
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        for r in recipients:
            tg.create_task(r.run(stop))
        faults = tg.create_task(fault())  # type: ignore[operator]
        took = await pub.run(rate=RATE, count=RATE * SECONDS, duration=SECONDS + 20)
        await faults
        t0 = time.monotonic()
        # Batches the relay could not commit come back after the ack wait (30 s).
        caught_up = await wait_until(
            lambda: all_seen(pub, recipients),
            timeout=120,
        )
        catch_up = time.monotonic() - t0
        await asyncio.sleep(1.0)  # late duplicates would show now
        stop.set()
    assert caught_up, "the recipients did not get every acked bulletin within 120 s"
    await pub.client.close()
    return pub, recipients, took, catch_up


@pytest.mark.slow
async def test_f11_postgres_restarted_immediately_under_load(
    pg_up: tuple[UpProcess, str], figures: Path
) -> None:
    up, url = pg_up
    target = Target.of_up(up, db_url=url)
    measured: dict[str, float] = {}

    async def fault() -> None:
        await asyncio.sleep(FAULT_AT_S)
        measured["db_down_s"] = await asyncio.to_thread(restart_postgres_immediately)
        back = time.monotonic()
        before = await asyncio.to_thread(accepted, url)
        assert before is not None
        # Recovery: from the server accepting connections to the broker accepting again.
        resumed = await wait_until(lambda: (accepted(url) or 0) > before, timeout=60, interval=0.05)
        assert resumed, "the broker did not accept a bulletin within 60 s of the restart"
        measured["resume_s"] = time.monotonic() - back

    pub, recipients, took, catch_up = await _run_under_load(target, url, fault)
    report = await check(target, [pub], recipients, receipts_timeout=60)
    for r in recipients:
        await r.client.close()
    print("\n" + report.summary())
    print(
        f"publish {took:.1f}s at {RATE}/s; PostgreSQL down {measured['db_down_s']:.2f}s; "
        f"broker accepting again {measured['resume_s']:.2f}s after; all delivered "
        f"{catch_up:.1f}s after the load"
    )
    record_run(
        figures,
        "F-11",
        report,
        rate=RATE,
        seconds=SECONDS,
        recipients=len(recipients),
        db_restart_s=round(measured["db_down_s"], 2),
        resume_after_db_s=round(measured["resume_s"], 2),
        catch_up_s=round(catch_up, 1),
        publish_errors=dict(pub.errors),
    )
    assert report.acked > 0
    assert report.unknown == 0, pub.errors
    assert report.ok, report.summary()


@pytest.mark.slow
async def test_f12_broker_connections_terminated_under_load(
    pg_up: tuple[UpProcess, str], figures: Path
) -> None:
    up, url = pg_up
    target = Target.of_up(up, db_url=url)
    terminated: list[int] = []
    resumed_s: list[float] = []

    async def fault() -> None:
        await asyncio.sleep(FAULT_AT_S / 2)
        for _ in range(TERMINATIONS):
            before = await asyncio.to_thread(accepted, url)
            t0 = time.monotonic()
            terminated.append(await asyncio.to_thread(terminate_backends, url))
            if before is not None and await wait_until(
                lambda b=before: (accepted(url) or 0) > b, timeout=30, interval=0.05
            ):
                resumed_s.append(time.monotonic() - t0)
            await asyncio.sleep(TERMINATE_EVERY_S)

    pub, recipients, took, catch_up = await _run_under_load(target, url, fault)
    report = await check(target, [pub], recipients, receipts_timeout=60)
    for r in recipients:
        await r.client.close()
    print("\n" + report.summary())
    print(
        f"publish {took:.1f}s at {RATE}/s; backends terminated per round {terminated}; "
        f"accepting again after (s) {[round(x, 2) for x in resumed_s]}; all delivered "
        f"{catch_up:.1f}s after the load"
    )
    record_run(
        figures,
        "F-12",
        report,
        rate=RATE,
        seconds=SECONDS,
        recipients=len(recipients),
        terminations=len(terminated),
        backends_terminated=sum(terminated),
        resume_s=[round(x, 2) for x in resumed_s],
        catch_up_s=round(catch_up, 1),
        publish_errors=dict(pub.errors),
    )
    assert len(terminated) == TERMINATIONS
    assert sum(terminated) >= TERMINATIONS  # the broker held connections each time
    assert report.acked > 0
    assert report.unknown == 0, pub.errors
    assert report.ok, report.summary()
