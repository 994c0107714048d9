"""What the recall tests share (ADR 15): receiving bulletins and withdrawals as an agency,
reading the delivery stream as the relay, and checking the audit log with the real
``istmo audit verify``."""

from __future__ import annotations

import asyncio
import io
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from broker.relay.recall import copy_recipient, delivery_durable
from broker.runtime.stack import Stack
from clients.results import ReceivedBulletin, Withdrawn
from clients.sdk import IstmoClient
from schemas.labels import Classification, Labels, Precedence, Tlp
from schemas.subjects import DELIVER_STREAM
from tests.integration.stack_inproc import nats_url
from tests.waiting import eventually
from tests.warm import run_istmo

ISTMO = str(Path(sys.executable).parent / "istmo")
# gt-police's bulletin releasable to Belize reaches exactly these three (the demo policy).
BZ = ("bz-justice", "bz-military", "bz-police")
LABELS = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("BZ",),
)


@dataclass
class Inbox:
    """What one ``receive`` handed an agency's application."""

    bulletins: list[ReceivedBulletin] = field(default_factory=list)
    withdrawals: list[Withdrawn] = field(default_factory=list)

    async def bulletin(self, b: ReceivedBulletin) -> None:
        self.bulletins.append(b)

    async def withdrawal(self, w: Withdrawn) -> None:
        self.withdrawals.append(w)


async def take(
    stack: Stack, agency: str, *, count: int = 1, timeout: float = 10, node: int = 0
) -> Inbox:
    """Receive as ``agency`` (through the stack's NATS node ``node``) until ``count``
    things (bulletins or withdrawals) or ``timeout``."""
    inbox = Inbox()
    keystore = stack.settings.keys_dir / f"{agency}.json"
    async with await IstmoClient.connect(keystore, stack.nats_urls[node]) as c:
        await c.receive(
            inbox.bulletin, count=count, timeout=timeout, on_withdrawal=inbox.withdrawal
        )
    return inbox


async def copies(stack: Stack, bulletin_id: str) -> dict[str, int]:
    """How many copies of ``bulletin_id`` the delivery stream holds, by recipient: the
    stream itself, read as the relay (headers only, from the first message)."""
    nc = await stack.connect_relay(nats_url(stack))
    found: dict[str, int] = {}
    try:
        js = nc.jetstream(timeout=10)
        if not (await js.stream_info(DELIVER_STREAM)).state.messages:
            return found
        sub = await js.pull_subscribe(
            "istmo.deliver.>",
            stream=DELIVER_STREAM,
            config=ConsumerConfig(
                ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.ALL,
                headers_only=True,
                inactive_threshold=30.0,
            ),
        )
        try:
            while True:
                try:
                    msgs = await sub.fetch(1000, timeout=2)
                except TimeoutError:
                    break
                for msg in msgs:
                    got = copy_recipient((msg.headers or {}).get("Nats-Msg-Id", ""), bulletin_id)
                    if got is not None:
                        found[got] = found.get(got, 0) + 1
                if msgs[-1].metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
    finally:
        await nc.close()
    return found


async def waiting(
    stack: Stack, agency: str, precedence: Precedence = Precedence.ROUTINE
) -> tuple[int, int]:
    """(pending, handed out and not acked) on ``agency``'s consumer of ``precedence``."""
    nc = await stack.connect_relay(nats_url(stack))
    try:
        info = await nc.jetstream(timeout=10).consumer_info(
            DELIVER_STREAM, delivery_durable(agency, precedence)
        )
        return int(info.num_pending or 0), int(info.num_ack_pending or 0)
    finally:
        await nc.close()


async def audit_verifies(data_dir: Path) -> str:
    """``istmo audit verify`` passes once the sequencer has integrated every event (run
    on a thread: the stack under test shares this event loop)."""

    def verify() -> subprocess.CompletedProcess[str]:
        return run_istmo(
            [ISTMO, "audit", "verify", "--trust-log-key-alone", "--data-dir", str(data_dir)],
            timeout=120,
        )

    done = await eventually(
        lambda: asyncio.to_thread(verify),
        until=lambda r: r.returncode == 0 and "wait for the sequencer" not in r.stdout,
        what="istmo audit verify to pass with every event in the log",
        interval=0.3,
        context=lambda: _sequencer_state(data_dir),
    )
    return done.stdout


def _sequencer_state(data_dir: Path) -> str:
    """What a failed wait for the sequencer names: the events still waiting, and where
    this event loop's sequencer tasks stand."""
    db = sqlite3.connect(f"file:{data_dir / 'istmo.db'}?mode=ro", uri=True)
    try:
        last = db.execute('SELECT event_seq FROM log_entry ORDER BY "index" DESC LIMIT 1')
        seq = (last.fetchone() or (0,))[0]
        waiting = db.execute(
            "SELECT seq, type, actor, time FROM audit_event WHERE seq > ? ORDER BY seq LIMIT 5",
            (seq,),
        ).fetchall()
        heads = db.execute("SELECT MAX(tree_size), MAX(timestamp) FROM tree_head").fetchone()
    finally:
        db.close()
    tasks = []
    for t in asyncio.all_tasks():
        if any(name in repr(t.get_coro()) for name in ("sequence", "keep", "run_elected")):
            shown = io.StringIO()
            t.print_stack(limit=4, file=shown)
            tasks.append(shown.getvalue())
    return (
        f"last integrated event {seq}; waiting {waiting}; last head (size, ms) {heads}; "
        f"now {int(time.time() * 1000)} ms; sequencer tasks: {tasks or 'none'}"
    )
