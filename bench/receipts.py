"""12. Receipts: how fast one relay records a backlog of recipients' signed receipts.

Before the clock: one relay relays a backlog of bulletins sealed by gt-police for the
first ``recipients`` agencies the demo policy permits (short bodies: a receipt does not
depend on the body), and every bulletin is checked to be in the registry. Then, with the
relay's receipt consumer paused, each recipient signs a receipt for every one of those
bulletins with the SDK's own code (``schemas.receipt.sign_receipt`` with its keystore's
signing key, the envelope digest the SDK's receive path computes) and publishes it as the
SDK does (``clients.publishing.store_receipt`` through the gate on its own NATS
connection), without opening the bulletins: opening is the SDK's cost, not the relay's.
The consumer is resumed and the drain is timed from the relay's first fetch to its last
ack (``bench.harness.drain``; the relay acks a batch after its commit). The condition:
every receipt recorded, counted in the registry (``receipt`` rows of these bulletins),
and no receipt refused.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from pathlib import Path

from bench.context import Context
from bench.harness import WIDE_LABELS, BenchStack, drain, publish_backlog, seal_backlog
from bench.relay_rate import resolve_with_relay
from bench.timing import phase
from clients.publishing import store_receipt
from clients.sdk import IstmoClient
from schemas.envelope import Envelope
from schemas.ids import AgencyId, BulletinId
from schemas.receipt import sign_receipt
from schemas.sealing import envelope_digest
from schemas.subjects import INGEST_STREAM, RECEIPT_STREAM, RELAY_RECEIPT_DURABLE

NAME = "receipts"
TITLE = "12. Receipts recorded"

_FOREVER = "2099-01-01T00:00:00Z"
_BODY = "receipt benchmark"  # the receipt names the envelope's digest, whatever its size
_WINDOW = 512  # receipts in flight at once while the backlog is stored


async def run(ctx: Context) -> dict[str, object]:
    stack = ctx.demo_stack()
    n_recipients = int(ctx.pick(10, 20))
    bulletins = int(ctx.pick(100, 1000))
    rows = []
    async with await stack.client("gt-police") as gt:
        permitted = await resolve_with_relay(stack, gt, WIDE_LABELS, keep_relay=True)
        names = sorted(a for a in permitted if a != gt.agency)[:n_recipients]
        chosen = {a: permitted[a] for a in names}
        stack.ensure_relays(1)
        try:
            envs = await _relayed(stack, gt, chosen, bulletins, timeout=ctx.pick(30, 120))
            r = await _record_rate(stack, envs, names, timeout=ctx.pick(20, 60))
        finally:
            stack.stop_workers()
    r["processes"] = 1
    r["recipients"] = len(names)
    r["bulletins"] = bulletins
    rows.append(r)
    print(
        f"  {r['receipts']} receipts: {r['per_s']}/s recorded "
        f"({r['recorded']} in the registry, refused {r['refused']})",
        flush=True,
    )
    ctx.note_self()
    return {"rows": rows}


async def _relayed(
    stack: BenchStack,
    gt: IstmoClient,
    recipients: dict[str, object],
    n: int,
    *,
    timeout: float,
) -> list[Envelope]:
    """Seal and publish ``n`` bulletins, and wait until the relay has accepted them all."""
    envs = seal_backlog(gt, recipients, n, body=_BODY, tag="r")  # type: ignore[arg-type]
    await publish_backlog(gt, envs)
    op = await stack.operator()
    try:
        js = op.jetstream(timeout=10)
        with phase("relay the bulletins"):
            deadline = time.monotonic() + timeout
            ids = [str(e.header.bulletin_id) for e in envs]
            while _count(stack, "bulletin", "id", ids) < n:
                if time.monotonic() > deadline:
                    info = await js.consumer_info(INGEST_STREAM, "relay-ingest")
                    raise RuntimeError(
                        f"the relay accepted {_count(stack, 'bulletin', 'id', ids)} of {n} "
                        f"bulletins in {timeout} s (pending {info.num_pending})"
                    )
                await asyncio.sleep(0.1)
    finally:
        await op.close()
    return envs


async def _record_rate(
    stack: BenchStack, envs: list[Envelope], recipients: list[str], *, timeout: float
) -> dict[str, object]:
    """Store every recipient's receipt for each of ``envs`` while the relay's receipt
    consumer is paused, then time how fast the relay records them."""
    expected = len(envs) * len(recipients)
    ids = [str(e.header.bulletin_id) for e in envs]
    before = _count(stack, "receipt", "bulletin_id", ids)
    if before:
        raise RuntimeError(f"{before} receipts of these bulletins recorded before the clock")
    refused_before = _refused(stack)
    op = await stack.operator()
    clients = [await stack.client(a) for a in recipients]
    try:
        js = op.jetstream(timeout=10)
        await js.pause_consumer(RECEIPT_STREAM, RELAY_RECEIPT_DURABLE, _FOREVER)
        try:
            with phase("sign receipts"):
                now = int(time.time())
                signed = [
                    (c, _receipt(c, env, digest, now))
                    for env, digest in ((e, envelope_digest(e)) for e in envs)
                    for c in clients
                ]
            t = time.perf_counter()
            with phase("store receipts"):
                await _store(signed[:-1])
            store_s = time.perf_counter() - t
        finally:
            await js.resume_consumer(RECEIPT_STREAM, RELAY_RECEIPT_DURABLE)
        relays = [w.pid for w in stack.workers if w.alive()]
        cpu0 = sum(_cpu_seconds(p) for p in relays)
        released = time.perf_counter()
        await _store(signed[-1:])  # a new message hands the backlog to the waiting fetch
        result = await drain(
            js,
            expected,
            timeout=timeout,
            stack=stack,
            released=released,
            stream=RECEIPT_STREAM,
            durable=RELAY_RECEIPT_DURABLE,
        )
        cpu = sum(_cpu_seconds(p) for p in relays) - cpu0
    finally:
        for c in clients:
            await c.close()
        await op.close()
    recorded = _count(stack, "receipt", "bulletin_id", ids)
    refused = _refused(stack) - refused_before
    return {
        "receipts": expected,
        "per_s": result["per_s"],
        "seconds": result["seconds"],
        "drained": result["drained"],
        "recorded": recorded,
        "refused": refused,
        "all_recorded": recorded == expected and refused == 0,
        "store_per_s": round((expected - 1) / store_s, 1) if store_s else None,
        # The relay's own CPU time over the drain: what a core of its own would record,
        # whatever else the machine runs meanwhile.
        "relay_cpu_s": round(cpu, 2),
        "per_cpu_s": round(expected / cpu, 1) if cpu > 0 else None,
    }


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far, seconds (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _receipt(client: IstmoClient, env: Envelope, digest: str, now: int) -> object:
    h = env.header
    return sign_receipt(
        bulletin_id=BulletinId(h.bulletin_id),
        originator=AgencyId(h.originator),
        recipient=client.agency,
        envelope_digest=digest,
        received_at=now,
        key=client.keystore.signing_key(),
    )


async def _store(signed: list[tuple[IstmoClient, object]]) -> None:
    """Store each receipt through its recipient's connection, ``_WINDOW`` at a time."""
    for start in range(0, len(signed), _WINDOW):
        window = signed[start : start + _WINDOW]
        stored = await asyncio.gather(*(store_receipt(c._js, r) for c, r in window))  # type: ignore[arg-type]
        if not all(stored):
            raise RuntimeError(f"{stored.count(False)} receipts not stored by JetStream")


def _count(stack: BenchStack, table: str, column: str, ids: list[str]) -> int:
    """Rows of ``table`` whose ``column`` is one of ``ids`` (names ours, not input)."""
    con = sqlite3.connect(f"file:{stack.db_path}?mode=ro", uri=True, timeout=30)
    try:
        q = f"SELECT count(*) FROM {table} WHERE {column} IN (SELECT value FROM json_each(?))"  # noqa: S608
        return int(con.execute(q, (json.dumps(ids),)).fetchone()[0])
    finally:
        con.close()


def _refused(stack: BenchStack) -> int:
    """``receipt.rejected`` events in the audit log (by any agency, ever, on this stack)."""
    con = sqlite3.connect(f"file:{stack.db_path}?mode=ro", uri=True, timeout=30)
    try:
        q = "SELECT count(*) FROM audit_event WHERE type = 'receipt.rejected'"
        return int(con.execute(q).fetchone()[0])
    finally:
        con.close()
