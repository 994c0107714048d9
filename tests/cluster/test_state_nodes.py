"""A NATS leaf node per state (ADR 0030): ``istmo up --leaves BZ,GT`` with the nodes' links
to the hub through a TCP proxy the test can cut.

One run: confinement on the GT node (S-01/S-02 as on the hub); a rogue nats-server with
GT's link password changes nothing on the hub; a bulletin from gt-police through the GT
node reaches a hub agency and a GT agency; then the link is cut, gt-police publishes N
bulletins that only the GT node acknowledges, the link returns, and each
bulletin is accepted once, delivered once to each recipient (counted in the streams, not
only by what the SDK hands over) and audited once. Last, a rogue with GT's link password
hears nothing of BZ's (while one with BZ's does: the probe can hear).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy import create_engine, text

from broker.bus.leaves import link_account, state_api_prefix
from broker.bus.server import ANY_PORT, NatsServer
from broker.config import Settings
from broker.runtime.stack import Stack
from broker.runtime.statenodes import link_password
from broker.store.registry import AgencyRow
from clients.keystore import load_keystore
from clients.sdk import IstmoClient, ReceivedBulletin
from schemas.labels import Classification, Labels, Precedence, Tlp
from schemas.subjects import DELIVER_STREAM, deliver_subject, inbox_prefix, ingest_subject
from tests.integration.recall_kit import audit_verifies
from tests.integration.stack_inproc import serving
from tests.stackproc import free_port_run
from tests.waiting import eventually

LABELS = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("SICA",),
)
HUB_AGENCY = "rc-drugs"  # on the hub
GT_PEER = "gt-military"  # on the GT node, like the publisher


class LinkProxy:
    """A TCP proxy between the state node and the hub's leaf-node port: ``cut`` closes
    the listener and every connection through it; ``heal`` listens again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._relay(reader, writer)
        finally:
            self._tasks.discard(task)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers = {writer}
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            writers.add(up_writer)
            self.connections += 1
            self._writers |= writers
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except OSError:
            pass
        finally:
            self._writers -= writers
            for w in writers:
                w.close()
                with contextlib.suppress(OSError, ConnectionError):
                    await w.wait_closed()

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=10)
        await self._server.wait_closed()
        self._server = None

    async def heal(self) -> None:
        await self.start()  # the same port: the state node dials it again


@contextlib.asynccontextmanager
async def hub_with_gt_node(
    data_dir: Path, announce_interval_s: int
) -> AsyncIterator[tuple[Stack, LinkProxy]]:
    leaf_port = free_port_run(1)
    proxy = LinkProxy(leaf_port)
    await proxy.start()
    settings = Settings(
        data_dir=data_dir,
        nats_port=ANY_PORT,
        nats_http_port=ANY_PORT,
        api_port=free_port_run(1),
        # The SDK keeps a resolve answer while it heard an announcement within 3
        # intervals (and for 60 s at most, ADR 9): so long can a publisher cut off seal.
        announce_interval_s=announce_interval_s,
    )
    stack = Stack(
        settings,
        out=lambda _line: None,
        leaves=["BZ", "GT"],
        leaf_port=leaf_port,
        leaf_link_port=proxy.port,
    )
    try:
        async with serving(stack, "the hub and the GT node to come up"):
            yield stack, proxy
    finally:
        if proxy._server is not None:
            await proxy.cut()


def gt_url(stack: Stack) -> str:
    assert stack.state_nodes is not None
    return stack.state_nodes.nodes["GT"].server.url


def bz_url(stack: Stack) -> str:
    assert stack.state_nodes is not None
    return stack.state_nodes.nodes["BZ"].server.url


async def raw_agency(stack: Stack, agency: str, url: str, errors: list[Exception]) -> NATS:
    keystore = load_keystore(stack.settings.keys_dir / f"{agency}.json")

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    return await nats.connect(
        url,
        nkeys_seed_str=keystore.nats_seed,
        inbox_prefix=inbox_prefix(agency),
        error_cb=on_error,
        allow_reconnect=False,
    )


async def confinement_holds_on_the_node(stack: Stack) -> None:
    """S-01/S-02 on the GT node: gt-police reads nothing of gt-military's and publishes
    nothing as it; the node's own streams and JetStream API are out of its reach."""
    errors: list[Exception] = []
    nc = await raw_agency(stack, "gt-police", gt_url(stack), errors)
    try:
        got: list[object] = []

        async def keep(msg: object) -> None:
            got.append(msg)

        for subject in (
            deliver_subject(GT_PEER, Precedence.ROUTINE),
            f"{inbox_prefix(GT_PEER)}.>",
            "istmo.leaf.>",
            "$JS.ACK.>",
            ">",
        ):
            await nc.subscribe(subject, cb=keep)
        await nc.publish(ingest_subject(GT_PEER), b"as gt-military")
        await nc.publish("istmo.leaf.ingest.gt-military", b"straight into the node")
        await nc.publish("$JS.API.STREAM.INFO.ISTMO_LEAF_INGEST_GT", b"")
        await nc.publish("$JS.hub.API.STREAM.INFO.ISTMO_DELIVER", b"")
        await nc.flush()
        await nc.flush()
        await eventually(lambda: len(errors) >= 9, what="nine permissions violations", timeout=10)
    finally:
        await nc.close()
    shown = " ".join(str(e).lower() for e in errors)
    assert shown.count("permissions violation") >= 9, shown
    assert got == []


@contextlib.asynccontextmanager
async def rogue_link(stack: Stack, tmp_path: Path, state: str) -> AsyncIterator[str]:
    """A nats-server of the test's own joined to the hub with ``state``'s link password
    (as a state node whose operator turned against the region would); yields its URL."""
    assert isinstance(stack.nats, NatsServer)
    password = link_password(stack.settings.broker_dir, state)
    user = f"leaf-{state.lower()}"
    home = Path(tempfile.mkdtemp(prefix=f"rogue-{state}-", dir=tmp_path))
    conf = home / "rogue.conf"
    conf.write_text(
        "port: -1\nhost: 127.0.0.1\n"
        "leafnodes { remotes: [ { url: "
        f'"nats-leaf://{user}:{password}@127.0.0.1:{stack.leaf_port}", account: ISTMO }} ] }}\n'
        'accounts { ISTMO { users: [ { user: "rogue", password: "rogue-0123456789" } ] } }\n'
        "no_auth_user: rogue\n"
    )
    ports = home / "ports"
    ports.mkdir()
    proc = await asyncio.create_subprocess_exec(
        str(stack.nats.binary),
        "-c",
        str(conf),
        "--ports_file_dir",
        str(ports),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        found = await eventually(lambda: list(ports.glob("*.ports")), what="the rogue's ports")
        hub = stack.nats
        account = link_account(state)
        await eventually(
            lambda: [
                leaf
                for leaf in (hub.monitor("/leafz") or {}).get("leafs", [])
                if leaf.get("account") == account
            ],
            until=lambda leafs: len(leafs) >= 2,
            what=f"the rogue to join the hub as a second {state} link",
        )
        yield str(json.loads(found[0].read_text())["nats"][0])
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


async def the_link_password_opens_nothing_else(stack: Stack, tmp_path: Path) -> None:
    """A rogue nats-server with GT's link password: what it publishes on the hub's gated,
    delivery and audit subjects, and its calls of the hub's JetStream API, change nothing."""
    async with rogue_link(stack, tmp_path, "GT") as url:
        before = await last_seqs(stack)
        nc = await nats.connect(url, allow_reconnect=False)
        try:
            for subject in (
                "istmo.gated.ingest.bz-police",
                "istmo.ingest.bz-police",
                "istmo.deliver.bz-police.routine",
                "istmo.audit.bulletin.accepted",
                "$JS.API.STREAM.PURGE.ISTMO_STATE_BZ",
                "istmo.link.bz.up.S.forged",
            ):
                await nc.publish(subject, b'{"forged": true}')
            for subject in (
                "$JS.hub.API.STREAM.INFO.ISTMO_INGEST",
                "$JS.hub.API.STREAM.PURGE.ISTMO_STATE_GT",
                "$JS.hub.API.STREAM.DELETE.ISTMO_DELIVER",
                "$JS.hub.API.CONSUMER.CREATE.ISTMO_STATE_BZ",
                "istmo.api.bz-police.status",
            ):
                with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
                    await nc.request(subject, b"{}", timeout=1)
            await nc.flush()
        finally:
            await nc.close()
        assert await last_seqs(stack) == before


async def a_link_hears_nothing_of_another_state(stack: Stack, tmp_path: Path) -> None:
    """Issue 20's confined plumbing: a rogue with GT's link password, listening to all it
    may, hears neither the copies sourced to BZ's node nor the answers to a BZ agency's
    requests; a rogue with BZ's password, listening the same way, hears both (so the probe
    can hear, and would through a link account shared by the states)."""
    heard: dict[str, list[Msg]] = {"GT": [], "BZ": []}
    async with (
        rogue_link(stack, tmp_path, "GT") as gt_rogue,
        rogue_link(stack, tmp_path, "BZ") as bz_rogue,
    ):
        listeners = []
        for state, url in (("GT", gt_rogue), ("BZ", bz_rogue)):
            nc = await nats.connect(url, allow_reconnect=False)
            listeners.append(nc)

            async def keep(msg: Msg, into: list[Msg] = heard[state]) -> None:
                into.append(msg)

            await nc.subscribe(">", cb=keep)
            await nc.flush()
        try:
            keys = stack.settings.keys_dir
            async with await IstmoClient.connect(
                keys / f"{HUB_AGENCY}.json", stack.nats_urls[0]
            ) as hub:
                sent = await hub.publish(title="to BZ", text="sourced to BZ", labels=LABELS)
            bz_agency = next(a for a in sorted(sent.routed) if a.startswith("bz-"))
            async with await IstmoClient.connect(keys / f"{bz_agency}.json", bz_url(stack)) as bz:
                assert sent.bulletin_id in await receive_all(bz, {sent.bulletin_id})
                await bz.rfis()  # an istmo.api request and its answer

            def of_bz(msgs: list[Msg]) -> tuple[list[str], list[str]]:
                copies = [  # Nats-Msg-Id: <bulletin>:<recipient>
                    m.subject
                    for m in msgs
                    if (m.headers or {})
                    .get("Nats-Msg-Id", "")
                    .startswith(f"{sent.bulletin_id}:bz-")
                ]
                replies = [m.subject for m in msgs if m.subject.startswith("_R_.")]
                return copies, replies

            await eventually(
                lambda: of_bz(heard["BZ"]),
                until=lambda found: all(found),
                what="the control (BZ's password) to hear BZ's copy and a reply",
            )
            for nc in listeners:
                await nc.flush()
            assert of_bz(heard["GT"]) == ([], []), [m.subject for m in heard["GT"]]
            assert not [m for m in heard["GT"] if m.subject.startswith("istmo.link.bz.")]
        finally:
            for nc in listeners:
                await nc.close()


async def a_suspension_bites_on_the_node(stack: Stack) -> None:
    """A directory change reaches the state node: a suspended GT agency's user is gone from
    it (and from the hub), the others keep theirs."""
    assert stack.registry is not None
    with stack.registry.session() as s:
        row = s.get(AgencyRow, GT_PEER)
        assert row is not None
        row.status = "suspended"
        s.add(row)
        s.commit()
    nc = await stack.connect_relay(stack.nats_urls[0])
    try:
        await stack.apply_directory_change(stack.nats, nc)  # type: ignore[arg-type]
    finally:
        await nc.close()
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    keystore = load_keystore(stack.settings.keys_dir / f"{GT_PEER}.json")
    refused = NATS()
    with pytest.raises((nats.errors.Error, OSError)):
        await refused.connect(
            gt_url(stack),
            nkeys_seed_str=keystore.nats_seed,
            inbox_prefix=inbox_prefix(GT_PEER),
            allow_reconnect=False,
            connect_timeout=2,
            error_cb=on_error,
        )
    await refused.close()  # nats-py leaves the socket of a refused connect open
    assert "authorization violation" in " ".join(str(e) for e in errors).lower()
    ok = await raw_agency(stack, "gt-police", gt_url(stack), [])
    await ok.close()


async def a_links_consumers_live_in_its_states_account(stack: Stack, tmp_path: Path) -> None:
    """ADR 30's finding, closed: a link may create consumers on its own state's stream, and
    nats-server checks a push consumer's deliver subject only for cycles. A rogue with GT's
    link password asks for consumers delivering GT's copies onto the gated ingest, onto
    the hub's JetStream API (a stream's deletion) and onto the one path from GT's state
    account into ISTMO's JetStream (the API its stream's source calls). Asked of any of
    ISTMO's streams, consumer creation is refused; asked of its own stream, the consumers
    are made in GT's state account, where those subjects are GT's own: every consumer in
    ISTMO that delivers anywhere still delivers into a state account's source, and every
    stream keeps what it held."""
    api = "$JS.hub.API.CONSUMER.CREATE"
    targets = (
        "$JS.API.STREAM.DELETE.ISTMO_INGEST",
        "istmo.gated.ingest.bz-police",
        "$JS.istmo.API.CONSUMER.CREATE.ISTMO_DELIVER.rogue",
    )
    async with rogue_link(stack, tmp_path, "GT") as url:
        before = await last_seqs(stack)
        nc = await nats.connect(url, allow_reconnect=False)
        try:
            for stream in ("ISTMO_DELIVER", "ISTMO_INGEST", "ISTMO_STATE_BZ"):
                for prefix in (api, "$JS.istmo.API.CONSUMER.CREATE", "$JS.API.CONSUMER.CREATE"):
                    config = {"deliver_subject": targets[1], "ack_policy": "none"}
                    body = json.dumps({"stream_name": stream, "config": config}).encode()
                    with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
                        await nc.request(f"{prefix}.{stream}", body, timeout=1)
            for i, target in enumerate(targets):
                name = f"rogue{i}"
                # Named and unnamed (as a source asks): either form of the request.
                for subject, named in ((f"{api}.ISTMO_STATE_GT.{name}", {"name": name}),
                                       (f"{api}.ISTMO_STATE_GT", {})):  # fmt: skip
                    config = named | {"deliver_subject": target, "ack_policy": "none"}
                    body = json.dumps({"stream_name": "ISTMO_STATE_GT", "config": config})
                    try:
                        reply = await nc.request(subject, body.encode(), timeout=2)
                        answer = json.loads(reply.data)
                    except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
                        answer = {"error": type(exc).__name__}
                    print(f"\n{subject} -> {target}: {str(answer)[:200]}")
        finally:
            await nc.close()
        relay = await stack.connect_relay(stack.nats_urls[0])
        try:
            js = relay.jetstream(timeout=10)
            state = relay.jetstream(prefix=state_api_prefix("GT"), timeout=10)
            with pytest.raises(nats.js.errors.NotFoundError):  # not in ISTMO any more
                await js.stream_info("ISTMO_STATE_GT")
            last = (await state.stream_info("ISTMO_STATE_GT")).state.last_seq
            created = [
                c.name
                for c in await state.consumers_info("ISTMO_STATE_GT")
                if c.config.deliver_subject in targets
            ]
            print(f"\nrogue consumers in GT's state account: {created}, last seq {last}")

            async def delivered(name: str) -> int:
                try:
                    info = await state.consumer_info("ISTMO_STATE_GT", name)
                    return info.delivered.stream_seq
                except nats.js.errors.NotFoundError:
                    return last  # gone (an ephemeral one the link stopped asking for)

            for name in created:  # delivered all it had: whatever was to act has acted
                await eventually(
                    lambda name=name: delivered(name),
                    until=lambda seq: seq >= last,
                    what=f"the rogue consumer {name} to deliver GT's copies",
                )
            # ISTMO's consumers are all pulled (the state accounts' sources are direct
            # consumers, which are not listed): none the rogue made, none that delivers.
            consumers = [
                (info.config.name, c.name, c.config.deliver_subject)
                for info in await js.streams_info()
                for c in await js.consumers_info(info.config.name)
            ]
            assert consumers  # the relay's and the agencies'
            assert not [c for c in consumers if c[2] or c[1].startswith("rogue")], consumers
        finally:
            await relay.close()
    assert await last_seqs(stack) == before  # raises if a stream is gone


async def last_seqs(stack: Stack) -> dict[str, int]:
    nc = await stack.connect_relay(stack.nats_urls[0])
    try:
        js = nc.jetstream(timeout=10)
        names = ("ISTMO_INGEST", "ISTMO_DELIVER", "ISTMO_AUDIT")
        seqs = {n: (await js.stream_info(n)).state.last_seq for n in names}
        state = nc.jetstream(prefix=state_api_prefix("GT"), timeout=10)
        seqs["ISTMO_STATE_GT"] = (await state.stream_info("ISTMO_STATE_GT")).state.last_seq
        return seqs
    finally:
        await nc.close()


async def delivery_copies(stack: Stack, url: str, ids: set[str]) -> Counter[str]:
    """Copies of ``ids`` in the ``ISTMO_DELIVER`` of the NATS at ``url``, by
    ``<bulletin>:<recipient>`` (read as the relay, headers only)."""
    nc = await stack.connect_relay(url)
    found: Counter[str] = Counter()
    try:
        js = nc.jetstream(timeout=10)
        total = (await js.stream_info(DELIVER_STREAM)).state.messages
        if not total:
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
        seen = 0
        while seen < total:
            try:
                msgs = await sub.fetch(1000, timeout=2)
            except nats.errors.TimeoutError:
                break
            seen += len(msgs)
            for msg in msgs:
                key = (msg.headers or {}).get("Nats-Msg-Id", "")
                if key.split(":", 1)[0] in ids:
                    found[key] += 1
        await sub.unsubscribe()
    finally:
        await nc.close()
    return found


def audited(stack: Stack, ids: set[str]) -> Counter[str]:
    """``bulletin.accepted`` events per bulletin id of ``ids`` in the audit outbox."""
    engine = create_engine(stack.settings.db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT bulletin_id FROM audit_event WHERE type = 'bulletin.accepted'")
            )
            return Counter(bid for (bid,) in rows if bid in ids)
    finally:
        engine.dispose()


async def receive_all(client: IstmoClient, want: set[str], timeout: float = 60) -> Counter[str]:
    got: Counter[str] = Counter()

    async def keep(b: ReceivedBulletin) -> None:
        got[b.id] += 1

    deadline = time.monotonic() + timeout
    while not want <= set(got) and time.monotonic() < deadline:
        await client.receive(keep, count=len(want - set(got)), timeout=5)
    return got


async def run_cut_and_heal(tmp_path: Path, n: int, announce_interval_s: int) -> None:
    async with hub_with_gt_node(tmp_path / "istmo", announce_interval_s) as (stack, proxy):
        keys = stack.settings.keys_dir
        await confinement_holds_on_the_node(stack)
        await the_link_password_opens_nothing_else(stack, tmp_path)
        async with (
            await IstmoClient.connect(keys / "gt-police.json", gt_url(stack)) as gt,
            await IstmoClient.connect(keys / f"{GT_PEER}.json", gt_url(stack)) as peer,
            await IstmoClient.connect(keys / f"{HUB_AGENCY}.json", stack.nats_urls[0]) as hub,
        ):
            # Normal flow through the node, which also fills the publisher's resolve cache
            # once it has heard the relays' announcement (through the node).
            cache = gt.resolve_cache
            assert cache is not None
            await eventually(lambda: cache.versions is not None, what="an announcement")
            first = await gt.publish(title="through GT", text="normal flow", labels=LABELS)
            assert {HUB_AGENCY, GT_PEER} <= set(first.routed), (
                first,
                proxy.connections,
                node_jsz(stack),
            )
            assert set(await receive_all(hub, {first.bulletin_id})) == {first.bulletin_id}
            assert set(await receive_all(peer, {first.bulletin_id})) == {first.bulletin_id}
            assert len(cache) == 1  # kept: sealing while cut off needs no relay
            # One more that reaches the node before the cut, to be read during it.
            held = await gt.publish(title="before the cut", text="held", labels=LABELS)
            await eventually(
                lambda: delivery_copies(stack, gt_url(stack), {held.bulletin_id}),
                until=lambda c: f"{held.bulletin_id}:{GT_PEER}" in c,
                what="the held bulletin on the GT node",
            )

            links = proxy.connections
            await proxy.cut()
            assert stack.state_nodes is not None
            node = stack.state_nodes.nodes["GT"].server
            await eventually(
                lambda: not (node.monitor("/leafz") or {}).get("leafnodes"),
                what="the GT node to see its link down",
            )
            t0 = time.monotonic()
            sent = [
                await gt.publish(title=f"cut {i}", text="while the link is down", labels=LABELS,
                                 wait=False)
                for i in range(n)
            ]  # fmt: skip
            acked_s = time.monotonic() - t0
            # Receiving goes on for what had arrived; its receipt waits on the node.
            assert await receive_all(peer, {held.bulletin_id}) == {held.bulletin_id: 1}
            ids = {s.bulletin_id for s in sent}
            assert len(ids) == n
            assert audited(stack, ids) == Counter()  # nothing reached the hub
            # The link stayed down all along: the node dials only the proxy.
            assert not (node.monitor("/leafz") or {}).get("leafnodes")
            assert proxy.connections == links

            await proxy.heal()
            t1 = time.monotonic()
            await eventually(
                lambda: sum(audited(stack, ids).values()) >= n,
                what=f"{n} bulletins accepted after the link returned",
                timeout=120,
            )
            drained_s = time.monotonic() - t1
            hub_got = await receive_all(hub, ids)
            peer_got = await receive_all(peer, ids)
            assert hub_got == Counter({**dict.fromkeys(ids, 1), held.bulletin_id: 1})
            assert peer_got == Counter(dict.fromkeys(ids, 1))

            async def receipt_of_held() -> dict[str, int | None]:
                return dict((await gt.receipts(held.bulletin_id)).recipients)

            await eventually(
                receipt_of_held,
                until=lambda r: r.get(GT_PEER) is not None,
                what="the receipt given during the cut to reach the relay",
            )

        # Exactly once where it counts, not only as the SDKs hand it over.
        assert audited(stack, ids) == Counter(dict.fromkeys(ids, 1))
        hub_copies = await delivery_copies(stack, stack.nats_urls[0], ids)
        gt_copies = await delivery_copies(stack, gt_url(stack), ids)
        assert set(hub_copies.values()) == {1}
        assert gt_copies == Counter(
            {k: 1 for k in hub_copies if k.endswith(tuple(f":{a}" for a in _gt(stack)))}
        )
        assert {f"{b}:{GT_PEER}" for b in ids} <= set(gt_copies)
        assert await audit_verifies(stack.settings.data_dir)
        await a_suspension_bites_on_the_node(stack)
        # Last: its bulletin goes to GT agencies too, which the counts above must not see.
        await a_link_hears_nothing_of_another_state(stack, tmp_path)
        await a_links_consumers_live_in_its_states_account(stack, tmp_path)
        print(f"\nleaf cut: {n} acked by the GT node in {acked_s:.2f} s, "
              f"accepted on the hub {drained_s:.2f} s after the link returned")  # fmt: skip


def _gt(stack: Stack) -> list[str]:
    assert stack.state_nodes is not None
    return [u.agency for u in stack.state_nodes.nodes["GT"].server.layout.agencies]


@pytest.mark.slow
async def test_a_state_node_confines_routes_and_rides_out_a_cut(tmp_path: Path) -> None:
    await run_cut_and_heal(tmp_path, n=20, announce_interval_s=10)


@pytest.mark.long
async def test_a_state_node_cut_off_with_500_bulletins_queued(tmp_path: Path) -> None:
    await run_cut_and_heal(tmp_path, n=500, announce_interval_s=30)


def node_jsz(stack: Stack) -> object:
    assert stack.state_nodes is not None
    assert isinstance(stack.nats, NatsServer)
    out = []
    for server in (stack.nats, stack.state_nodes.nodes["GT"].server):
        jsz = server.monitor("/jsz?streams=1&accounts=1") or {}
        for account in jsz.get("account_details", []):
            for s in account.get("stream_detail", []):
                out.append((server.url, s["name"], s["state"]["messages"], s.get("sources")))
    return out
