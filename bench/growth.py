"""7. Growth: relay throughput and publish -> application latency after 0, 100k and 1M
stored bulletins (quick mode: 0 and 20k). The cost must not grow with history.

The history is seeded straight into the stores, fast, rather than relayed (1M bulletins
through a ~100/s relay would take hours). For every seeded bulletin, with raw SQLite
``executemany`` in 50k-row transactions on the stack's own database:
  * 1 ``bulletin`` row (a unique id, gt-police, the labels and policy/directory versions
    of a real one, ``ingest_seq`` negative so it can never match a real stream sequence);
  * 1 ``decision`` row (the agency it was routed to);
  * 1 ``audit_event`` row (``bulletin.accepted``), which the stack's own sequencer then
    integrates into the Merkle log (log entries, nodes, signed heads) before measuring;
and into JetStream, with the stack's nats-server (``sync_interval: always``): one 2 KiB
message per seeded bulletin on ``istmo.deliver.vc-police`` (an agency that never
connects, so its queue holds the whole history), published with JetStream acks, 1,000
in flight, for at most 10 s per level (3 s in quick mode): under ``sync_interval:
always`` that stores a few tens of thousands, not 1M; how many were stored is recorded.
Then, at each level, the relay throughput (1 process, 5 recipients, a backlog) and the
latency at ``LATENCY_RATE`` bulletins/s are measured as in items 2 and 3.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid

from bench.context import Context
from bench.harness import BenchStack
from bench.latency import istmo_level, wait_relay_idle
from bench.relay_rate import backlog_rate
from bench.relay_throughput import five_recipients
from bench.timing import phase
from schemas.canonical import canonical_json
from schemas.subjects import deliver_subject

NAME = "growth"
TITLE = "7. Growth with stored history"
SINK = "vc-police"
LATENCY_RATE = 20  # bulletins/s: below the relay's capacity, so latency is not queueing
CHUNK = 50_000


def _columns(con: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in con.execute(f"PRAGMA table_info({table})")]


def seed_sql(stack: BenchStack, start: int, end: int) -> dict[str, object]:
    """Insert bulletins ``start..end`` (and their decisions and audit events)."""
    con = sqlite3.connect(stack.db_path, timeout=60)
    con.execute("PRAGMA journal_mode=WAL")
    t = time.perf_counter()
    # Copy the version columns and labels from a bulletin the relay really accepted.
    template = con.execute(
        "SELECT labels, policy_version, directory_version FROM bulletin LIMIT 1"
    ).fetchone()
    labels, pv, dv = template if template else ("{}", "0" * 32, "0" * 32)
    bcols = _columns(con, "bulletin")
    now = int(time.time())
    try:
        for lo in range(start, end, CHUNK):
            hi = min(end, lo + CHUNK)
            bulletins, decisions, events = [], [], []
            for i in range(lo, hi):
                bid = str(uuid.UUID(int=(0xBE << 120) | i, version=4))
                values = {
                    "id": bid,
                    "originator": "gt-police",
                    "labels": labels,
                    "envelope_digest": f"{i:064x}",
                    "ingest_seq": -1 - i,
                    "created_at": now - 86_400,
                    "accepted_at": now - 86_400,
                    "not_before": None,
                    "expires_at": None,
                    "recipients": "bz-police,rc-drugs",
                    "policy_version": pv,
                    "directory_version": dv,
                }
                bulletins.append(tuple(values.get(c) for c in bcols))
                decisions.append((bid, "bz-police", 1, "base.release", "[]"))
                data = {
                    "topic": "border-incident",
                    "recipients": ["bz-police"],
                    "policy_version": pv,
                    "directory_version": dv,
                    "policy_ids": ["base.release"],
                }
                events.append(
                    (
                        f"{bid}:accepted",
                        "bulletin.accepted",
                        (now - 86_400) * 1000 + i % 1000,
                        "gt-police",
                        bid,
                        bid,
                        None,
                        canonical_json(data).decode(),
                    )
                )
            with con:
                con.executemany(
                    f"INSERT INTO bulletin ({','.join(bcols)}) "  # noqa: S608 -- our columns
                    f"VALUES ({','.join('?' * len(bcols))})",
                    bulletins,
                )
                con.executemany(
                    "INSERT INTO decision (bulletin_id, agency, allowed, policy_ids, reasons)"
                    " VALUES (?,?,?,?,?)",
                    decisions,
                )
                con.executemany(
                    "INSERT INTO audit_event (event_id, type, time, actor, subject, "
                    "bulletin_id, reason, data) VALUES (?,?,?,?,?,?,?,?)",
                    events,
                )
    finally:
        con.close()
    return {"sql_rows": (end - start) * 3, "sql_seconds": round(time.perf_counter() - t, 1)}


def wait_integrated(stack: BenchStack, timeout: float) -> dict[str, object]:
    """Wait until the stack's sequencer has integrated every audit event."""
    t = time.perf_counter()
    deadline = time.monotonic() + timeout
    con = sqlite3.connect(f"file:{stack.db_path}?mode=ro", uri=True, timeout=60)
    try:
        while True:
            events = con.execute("SELECT count(*) FROM audit_event").fetchone()[0]
            entries = con.execute("SELECT count(*) FROM log_entry").fetchone()[0]
            if entries >= events or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        con.close()
    return {
        "audit_events": events,
        "log_entries": entries,
        "integrate_wait_s": round(time.perf_counter() - t, 1),
    }


async def seed_jetstream(stack: BenchStack, count: int, budget_s: float) -> dict[str, object]:
    op = await stack.operator()
    js = op.jetstream(timeout=30)
    body = b"x" * 2048
    subject = deliver_subject(SINK)
    stored = 0
    t = time.perf_counter()
    deadline = time.monotonic() + budget_s
    try:
        for lo in range(0, count, 1000):
            if time.monotonic() > deadline:
                break
            n = min(1000, count - lo)
            await asyncio.gather(*(js.publish(subject, body) for _ in range(n)))
            stored += n
        info = await js.stream_info("ISTMO_DELIVER")
    finally:
        await op.close()
    return {
        "js_seeded": stored,
        "js_seconds": round(time.perf_counter() - t, 1),
        "deliver_stream_messages": info.state.messages,
        "deliver_stream_mib": round(info.state.bytes / 2**20, 1),
    }


async def measure(ctx: Context, stack: BenchStack, chosen: dict) -> dict[str, object]:  # type: ignore[type-arg]
    async with await stack.client("gt-police") as gt:
        rate = await backlog_rate(
            stack,
            gt,
            chosen,
            int(ctx.pick(100, 600)),
            lambda: stack.start_relays(1),
            timeout=ctx.pick(5, 15),
        )
    stack.start_relays(1)
    op = await stack.operator()
    try:
        await wait_relay_idle(op.jetstream(timeout=10), 60)
        with phase("latency load"):
            lat = await istmo_level(
                stack, LATENCY_RATE, float(ctx.pick(2, 4)), f"g{time.time_ns()}-", ctx.pick(15, 30)
            )
    finally:
        stack.stop_workers()
        await op.close()
    return {"relay_per_s": rate["per_s"], "relay": rate, "latency": lat}


async def run(ctx: Context) -> dict[str, object]:
    stack = ctx.demo_stack()
    levels = [0, 20_000] if ctx.quick else [0, 100_000, 1_000_000]
    js_budget = float(ctx.pick(3, 10))
    rows = []
    async with await stack.client("gt-police") as gt:
        chosen = await five_recipients(stack, gt)
    done = 0
    jsdone = 0
    for level in levels:
        row: dict[str, object] = {"stored_bulletins": level}
        if level > done:
            with phase("seed SQL"):
                row.update(seed_sql(stack, done, level))
            with phase("wait for the sequencer"):
                row.update(wait_integrated(stack, float(ctx.pick(60, 180))))
            with phase("seed JetStream"):
                js = await seed_jetstream(stack, level - jsdone, js_budget)
            jsdone += int(js["js_seeded"])  # type: ignore[call-overload]
            row.update(js)
            done = level
        row["js_seeded_total"] = jsdone
        row.update(await measure(ctx, stack, chosen))
        lat: dict[str, object] = row["latency"]  # type: ignore[assignment]
        seeded = {k: v for k, v in row.items() if k.startswith(("sql", "js", "integr"))}
        print(
            f"  {level:>9,} stored: relay {row['relay_per_s']}/s, latency p50 "
            f"{lat.get('p50_ms')} ms p99 {lat.get('p99_ms')} ms; seeded {json.dumps(seeded)}",
            flush=True,
        )
        rows.append(row)
    ctx.note_self()
    return {"levels": levels, "rows": rows, "sink_agency": SINK, "latency_rate": LATENCY_RATE}
