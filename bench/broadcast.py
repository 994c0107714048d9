"""10. Broadcast: one FLASH bulletin to thousands, sealed under a group key and stored once
for the group (ADR 21). Quick mode: 400 agencies; full: 4,700 (about 3,500 of them
follow drug-trafficking, the bulletin's topic).

A fresh ``istmo up`` on a synthetic directory (``bench/synthetic_directory.py``) and one
``istmo relay`` process; the group ``ALL-drugs`` (every agency following drug-trafficking,
managed by rc-drugs) gets its first epoch from the manager's SDK, and the relay opens its
delivery (every member's two consumers read the epoch's subjects). Then, per round, one
agency's SDK publishes one FLASH bulletin with ``groups=True`` (releasable to SICA and
CARICOM, source graded A1: every member is permitted).

The recipients are *not* 3,500 SDK processes: this process pulls each recipient's urgent
consumer with one raw ``MSG.NEXT`` request each (as the relay's NATS user, over one
connection), opened before the publish, and notes when each copy arrives. Measured:
  * ``seal_ms``: sealing the bulletin for that audience under one group key, in process
    (p50 over the rounds; the SDK's publish includes it);
  * ``delivered_p50_ms`` / ``delivered_p99_ms``: from the SDK's ``publish`` call (resolve,
    seal, ingest, the relay's decisions, storage) to each recipient's copy arriving here,
    over every recipient of every round;
  * ``stored_p50_ms``: from the ``publish`` call until JetStream stored the copy each
    recipient got (its stored timestamp): the SDK's and the relay's part of the above;
  * ``stored_bytes``: what ISTMO_DELIVER grew by for one bulletin, against
    ``per_recipient_bytes`` (one copy each, as before ADR 21: the envelope times the
    recipients);
  * ``bare_delivered_p50_ms`` / ``_p99_ms`` / ``_max_ms``: the bare backbone in the same
    run (``bench.bare_broadcast``): one message of the envelope's size published straight
    to a stream with as many pull consumers as there were recipients, shaped like
    Istmo's, each waiting with one request, and acked as it arrives. nats-server writes
    each consumer's state (a new file, fsynced and renamed) when it delivers and when it
    is acked, so this is the floor JetStream sets on this disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.js.errors import ServiceUnavailableError

from bench import bare_broadcast
from bench.context import Context
from bench.harness import ISTMO, BenchStack
from bench.synthetic_directory import write_policy_dir
from bench.timing import phase
from clients.sdk import IstmoClient
from schemas.envelope import Content
from schemas.groups import new_epoch_key
from schemas.ids import AgencyId
from schemas.keys import SigningKey
from schemas.labels import Classification, Labels, Precedence, Tlp
from schemas.sealing import encode_envelope, seal
from schemas.subjects import DELIVER_STREAM, api_subject, deliver_next_subject, urgent_durable

NAME = "broadcast"
TITLE = "10. Broadcast to a community group"
GROUP = "ALL-drugs"
MANAGER = "rc-drugs"
PUBLISHER = "s0001-police"
LABELS = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("SICA", "CARICOM"),
    source_grade="A1",
    precedence=Precedence.FLASH,
)
TEXT = "x" * 2000
RECEIVERS_PER_CONNECTION = 200


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))]


def _delivery_open(stack: BenchStack) -> bool:
    con = sqlite3.connect(f"file:{stack.db_path}?mode=ro", uri=True, timeout=30)
    try:
        row = con.execute(
            'SELECT delivery_at FROM group_epoch WHERE "group" = ? ORDER BY epoch DESC',
            (GROUP,),
        ).fetchone()
    finally:
        con.close()
    return row is not None and row[0] is not None


@dataclass
class _Round:
    publish_s: float
    delivered_ms: list[float]  # per recipient: its first copy, pushed or queued
    pushed_ms: list[float]  # per recipient pushed to: its pushed copy
    queued_ms: list[float]  # per recipient: its queued copy
    pushed: int  # recipients whose push came
    stored: int  # bytes ISTMO_DELIVER grew by
    size: int  # the envelope's bytes
    kept_ms: list[float]  # until JetStream stored the copy each one got (server clock)


async def _round(pub: IstmoClient | None, ncs: list[NATS], recipients: list[str]) -> _Round:
    """One bulletin, each recipient waiting for a push (ADR 38) and for its queued copy.
    Without ``pub`` only take what waits (one copy each)."""
    arrived: dict[str, float] = {}  # queued copies
    pushed: dict[str, float] = {}
    stored_at: dict[str, float] = {}  # when JetStream stored the copy each one got (wall clock)
    size = 0
    done = asyncio.Event()
    all_pushed = asyncio.Event()

    def on_msg_for(agency: str, rc: NATS) -> Callable[[Msg], Awaitable[None]]:
        # A pulled message comes with its stream subject, not the inbox: one
        # subscription per recipient tells them apart.
        async def on_msg(msg: Msg) -> None:
            nonlocal size
            if not msg.data:  # a status message (408 on expiry): not a delivery
                return
            arrived.setdefault(agency, time.perf_counter())
            size = len(msg.data)
            if msg.reply:
                stored_at.setdefault(agency, msg.metadata.timestamp.timestamp())
                await rc.publish(msg.reply, b"+ACK")
            if len(arrived) == len(recipients):
                done.set()

        return on_msg

    def on_push_for(agency: str) -> Callable[[Msg], Awaitable[None]]:
        async def on_push(msg: Msg) -> None:
            if msg.data:  # not an empty answer (the wait ran out)
                pushed.setdefault(agency, time.perf_counter())
                if len(pushed) == len(recipients):
                    all_pushed.set()

        return on_push

    subs = []
    body = json.dumps({"batch": 1, "expires": 60_000_000_000}).encode()
    wait = json.dumps({"wait_s": 30}).encode()
    for i, agency in enumerate(recipients):
        rc = ncs[i % len(ncs)]
        inbox = f"_INBOX.bcast.{agency}"
        subs.append(await rc.subscribe(inbox, cb=on_msg_for(agency, rc)))
        await rc.publish(deliver_next_subject(urgent_durable(agency)), body, reply=inbox)
        if pub is not None:
            subs.append(await rc.subscribe(f"{inbox}.push", cb=on_push_for(agency)))
            await rc.publish(api_subject(agency, "push"), wait, reply=f"{inbox}.push")
    for i, rc in enumerate(ncs):
        await rc.flush(timeout=60)
        if pub is not None:  # the relay answers one connection's requests in order
            await rc.request(
                api_subject(recipients[i % len(recipients)], "withheld"), b"{}", timeout=60
            )
    nc = ncs[0]
    before = await _stored_bytes(nc)
    t0, wall0 = time.perf_counter(), time.time()
    if pub is not None:
        await pub.publish(title="FLASH", text=TEXT, labels=LABELS, groups=True, wait=False)
    published = time.perf_counter() - t0
    try:
        await asyncio.wait_for(done.wait(), 60)
    except TimeoutError:
        pass
    if pub is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_pushed.wait(), 10)
    for sub in subs:
        await sub.unsubscribe()
    stored = await _stored_bytes(nc) - before
    missing = len(recipients) - len(arrived)
    if missing:
        raise RuntimeError(f"{missing} of {len(recipients)} recipients got nothing in 60 s")
    first = {a: min(t, pushed.get(a, t)) for a, t in arrived.items()}
    return _Round(
        publish_s=published,
        delivered_ms=[(t - t0) * 1000 for t in first.values()],
        pushed_ms=[(t - t0) * 1000 for t in pushed.values()],
        queued_ms=[(t - t0) * 1000 for t in arrived.values()],
        pushed=len(pushed),
        stored=stored,
        size=size,
        kept_ms=[(t - wall0) * 1000 for t in stored_at.values()],
    )


async def _stored_bytes(nc: NATS) -> int:
    """The delivery stream's size in bytes. Right after thousands of pull requests (and
    once in a full run, after the items before it) the JetStream API did not answer at
    once (no responders): asked again for up to a minute before the round gives up."""
    js, deadline = nc.jetstream(timeout=30), time.monotonic() + 60
    while True:
        try:
            return (await js.stream_info(DELIVER_STREAM)).state.bytes
        except (ServiceUnavailableError, NoRespondersError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


def _seal_ms(recipients: list[str], rounds: int) -> float:
    signer, epoch = SigningKey.generate(), new_epoch_key(GROUP, 1)
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        env = seal(
            content=Content(title="FLASH", text=TEXT),
            labels=LABELS,
            originator=AgencyId(PUBLISHER),
            signing_key=signer,
            recipients={},
            now=int(time.time()),
            groups=[epoch],
            members={GROUP: recipients},
        )
        encode_envelope(env)
        times.append((time.perf_counter() - t) * 1000)
    return _pct(times, 0.5)


async def measure(ctx: Context, agencies: int, rounds: int) -> dict[str, object]:
    root = ctx.tmp / f"broadcast-{agencies}"
    policy = write_policy_dir(root / "policies", agencies)
    stack = BenchStack(root, f"broadcast {agencies}", policy_dir=policy).start()
    try:
        data = ["--data-dir", str(stack.data_dir)]
        argv = [ISTMO, "admin", "group", "add", GROUP, "--manager", MANAGER]
        argv += ["--topic", "drug-trafficking", *data]
        # Before anything is timed: a blocking call is fine here.
        await asyncio.to_thread(subprocess.run, argv, check=True, capture_output=True, timeout=120)
        stack.start_relays(1)
        with phase("group epoch"):
            t = time.perf_counter()
            async with await IstmoClient.connect(stack.keystore(MANAGER), stack.nats_url) as rc:
                await rc.rotate_groups()
            epoch_s = time.perf_counter() - t
            t = time.perf_counter()
            while not _delivery_open(stack):
                if time.perf_counter() - t > 300:
                    raise RuntimeError("the relay did not open group delivery in 300 s")
                await asyncio.sleep(0.2)
            open_s = time.perf_counter() - t
        # A connection per RECEIVERS_PER_CONNECTION recipients: one connection taking
        # every copy at once is a slow consumer to nats-server (64 MB pending), and closed.
        ncs = [
            await nats.connect(stack.nats_url, nkeys_seed_str=stack.relay_seed())
            for _ in range(max(1, -(-agencies // RECEIVERS_PER_CONNECTION)))
        ]
        rows: list[dict[str, object]] = []
        try:
            async with await IstmoClient.connect(stack.keystore(PUBLISHER), stack.nats_url) as pub:
                # Warm-up: the SDK fetches the group key and records, the relay its caches;
                # its copies are taken before the measured rounds.
                warm = await pub.publish(title="warm", text=TEXT, labels=LABELS, groups=True)
                recipients = sorted(warm.routed)
                await _round(None, ncs, recipients)
                arrivals: list[float] = []
                queued: list[float] = []
                pushed_ms: list[float] = []
                kept: list[float] = []
                publish_s, stored, size, pushes = [], 0, 0, 0
                for _ in range(rounds):
                    r = await _round(pub, ncs, recipients)
                    publish_s.append(r.publish_s)
                    arrivals += r.delivered_ms
                    queued += r.queued_ms
                    pushed_ms += r.pushed_ms
                    kept += r.kept_ms
                    stored, size, pushes = r.stored, r.size, pushes + r.pushed
        finally:
            for nc in ncs:
                await nc.close()
        rows.append(
            {
                "agencies": agencies,
                "recipients": len(recipients),
                "rounds": rounds,
                "seal_ms": round(_seal_ms(recipients, 20), 1),
                "publish_call_ms": round(_pct(publish_s, 0.5) * 1000, 1),
                "delivered_p50_ms": round(_pct(arrivals, 0.5), 1),
                "delivered_p99_ms": round(_pct(arrivals, 0.99), 1),
                "delivered_max_ms": round(max(arrivals), 1),
                # Pushed over core NATS (ADR 38): how many copies came so, and the queue's
                # own time, which the push goes ahead of.
                "pushed": pushes,
                "pushed_p50_ms": round(_pct(pushed_ms, 0.5), 1) if pushed_ms else None,
                "pushed_p99_ms": round(_pct(pushed_ms, 0.99), 1) if pushed_ms else None,
                "pushed_max_ms": round(max(pushed_ms), 1) if pushed_ms else None,
                "queued_p50_ms": round(_pct(queued, 0.5), 1),
                "queued_p99_ms": round(_pct(queued, 0.99), 1),
                "queued_max_ms": round(max(queued), 1),
                # The relay's part: from the publish call until its copy was stored.
                "stored_p50_ms": round(_pct(kept, 0.5), 1),
                "stored_max_ms": round(max(kept), 1),
                "envelope_bytes": size,
                "stored_bytes": stored,
                "per_recipient_bytes": size * len(recipients),
                "epoch_s": round(epoch_s, 2),
                "delivery_open_s": round(open_s, 2),
            }
        )
        return rows[0]
    finally:
        stack.stop(kill=True)
        ctx.absorb(stack)


async def run(ctx: Context) -> dict[str, object]:
    sizes = [400] if ctx.quick else [4700]
    rounds = int(ctx.pick(2, 3))
    rows = [await measure(ctx, n, rounds) for n in sizes]
    for row in rows:
        with phase("bare backbone"):
            bare = await bare_broadcast.measure(
                int(str(row["recipients"])), rounds, int(str(row["envelope_bytes"])), False
            )
        for k in ("delivered_p50_ms", "delivered_p99_ms", "delivered_max_ms"):
            row[f"bare_{k}"] = bare[k]
    return {"rows": rows}
