"""``istmo up --join``: the broker joins a NATS cluster its operators run (deploy/nats).

The cluster is started from the broker's own data directory (its relay key and agencies,
as ``deploy/nats/render-accounts.py`` would render them); the stack starts no nats-server,
creates the streams with 3 replicas, and carries a bulletin from gt-police to Belize's
police, each connected to a different node. A directory change writes the accounts block
for the operators to install, and nats-server accepts a config that includes it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

from nats.aio.msg import Msg

from broker.bus.cluster import ExternalNats, NatsCluster
from broker.bus.natsconf import render_accounts
from broker.config import Settings
from broker.directory.lifecycle import CONTROL_DIRECTORY_SUBJECT
from broker.runtime.stack import Stack
from clients.sdk import IstmoClient, ReceivedBulletin
from schemas.labels import Classification, Labels, Tlp
from schemas.subjects import INGEST_STREAM
from tests.cluster.conftest import cluster_ports, free_port_run
from tests.waiting import eventually

LABELS = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("BZ",),
)


async def test_a_stack_joins_a_cluster_its_operators_run(tmp_path: Path, nats_binary: Path) -> None:
    data_dir = tmp_path / "istmo"
    ports = cluster_ports()
    urls = [f"nats://127.0.0.1:{ports.client + i}" for i in range(3)]
    settings = Settings(data_dir=data_dir, api_port=free_port_run(1))
    stack = Stack(settings, out=lambda _line: None, join=urls, stream_replicas=3)
    stack.claim()
    stack.prepare()
    layout = stack.nats_layout()
    cluster = NatsCluster.in_dir(
        nats_binary,
        tmp_path / "region",
        tmp_path / "region",
        size=3,
        ports=ports,
        relay_nkey_public=layout.relay_nkey_public,
        agencies=layout.agencies,
        password="operators-route-password",
    )
    await asyncio.to_thread(cluster.start)
    stop = asyncio.Event()
    task = asyncio.create_task(stack.up(stop))
    try:
        await eventually(
            lambda: (data_dir / "stack.json").exists() or task.done(),
            what="the stack to join the operators' NATS",
            timeout=180,
        )
        if task.done():
            task.result()
        assert cluster.pids == [n.pid for n in cluster.nodes]  # nothing started or stopped
        assert isinstance(stack.nats, ExternalNats)
        keys = settings.keys_dir
        gt = await IstmoClient.connect(keys / "gt-police.json", urls[1])
        bz = await IstmoClient.connect(keys / "bz-police.json", urls[2])
        try:
            sent = await gt.publish(title="joined", text="over the operators' NATS", labels=LABELS)
            got: list[ReceivedBulletin] = []

            async def app(b: ReceivedBulletin) -> None:
                got.append(b)

            assert await bz.receive(app, count=1, timeout=20) == 1
            assert [b.id for b in got] == [sent.bulletin_id]
        finally:
            await gt.close()
            await bz.close()
        nc = await stack.connect_relay(urls)
        try:
            info = await nc.jetstream(timeout=5).stream_info(INGEST_STREAM)
            assert info.config.num_replicas == 3
            heard: list[dict[str, str]] = []

            async def listen(msg: Msg) -> None:
                heard.append(json.loads(msg.data))

            await nc.subscribe(CONTROL_DIRECTORY_SUBJECT, cb=listen)
            await nc.flush()
            # A change made here is announced once, so that separate relays and other API
            # replicas rebuild their directories...
            await stack.apply_directory_change(stack.nats, nc)
            await eventually(lambda: heard, what="the change announced")
            await asyncio.sleep(1.0)  # a second announcement would show now
            assert [h.get("origin") for h in heard] == [stack._origin]
            # ...and one another replica announced is applied here, not announced again
            # (two replicas would otherwise echo each other for ever).
            await nc.publish(CONTROL_DIRECTORY_SUBJECT, b'{"origin": "api-2:1234:ab"}')
            await eventually(lambda: len(heard) >= 2, what="the other replica's announcement")
            await asyncio.sleep(3.0)  # an echo of it would show now
            assert [h.get("origin") for h in heard] == [stack._origin, "api-2:1234:ab"]
        finally:
            await nc.close()
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        cluster.stop()
    accounts = settings.data_dir / "nats-accounts.conf"
    assert accounts.read_text() == render_accounts(layout)
    assert oct(accounts.stat().st_mode & 0o777) == "0o600"
    # nats-server includes relative to the including file, as deploy/nats does.
    (tmp_path / "accounts.conf").write_text(accounts.read_text())
    node = tmp_path / "node.conf"
    node.write_text(f'port: {free_port_run(1)}\ninclude "accounts.conf"\n')
    checked = await asyncio.to_thread(
        subprocess.run,
        [str(nats_binary), "-c", str(node), "-t"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
