"""The hub's link accounts (ADR 0030), against a real nats-server with the rendered config:
what the hub publishes in account ISTMO for one state's link reaches that state's account
only.

The hub runs with the links of GT and BZ; two rogue nats-servers join it as leaf nodes with
GT's and BZ's link passwords and listen to everything they may. The relay's user then
publishes what the hub's sources publish in ISTMO when they answer a state node's flow
control (``$JS.FC.<the node's stream>.<consumer>.<ids>``). GT's rogue hears GT's answers
(so the probe can hear); BZ's hears none of them. Before the nodes' streams were named
after their state, ISTMO imported the same ``$JS.FC.ISTMO_LEAF_INGEST.>`` from every
state's account.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import nats
from nats.aio.msg import Msg

from broker.bus.leaves import leaf_stream, leaf_user, link_account
from broker.bus.natsconf import AgencyUser, LeafHub, LeafLink, NatsLayout
from broker.bus.server import ANY_PORT, NatsServer, find_nats_server
from schemas.natskeys import new_user_seed, user_public_key
from tests.stackproc import free_port_run
from tests.waiting import eventually

PASSWORDS = {"GT": "gt-link-password-0123456789", "BZ": "bz-link-password-0123456789"}
AGENCIES = {"GT": ("gt-police",), "BZ": ("bz-police",)}


@contextlib.asynccontextmanager
async def hub(tmp_path: Path) -> AsyncIterator[tuple[NatsServer, str]]:
    """The hub's nats-server with GT's and BZ's links; yields it and the relay's seed."""
    seed = new_user_seed()
    layout = NatsLayout(
        port=ANY_PORT,
        http_port=ANY_PORT,
        store_dir=tmp_path / "hub",
        relay_nkey_public=user_public_key(seed),
        agencies=tuple(
            AgencyUser(a, user_public_key(new_user_seed()))
            for state in sorted(AGENCIES)
            for a in AGENCIES[state]
        ),
        domain="hub",
        leaf_hub=LeafHub(
            free_port_run(1),
            tuple(LeafLink(s, PASSWORDS[s], AGENCIES[s]) for s in sorted(PASSWORDS)),
        ),
    )
    server = NatsServer(find_nats_server(), tmp_path / "hub.conf", layout, tmp_path / "hub.log")
    server.spawn()
    try:
        server.wait_ready()
        yield server, seed
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def rogue(server: NatsServer, tmp_path: Path, state: str) -> AsyncIterator[str]:
    """A nats-server joined to ``server`` with ``state``'s link password; yields its URL."""
    assert server.layout.leaf_hub is not None
    home = tmp_path / f"rogue-{state}"
    (home / "ports").mkdir(parents=True)
    url = f"nats-leaf://{leaf_user(state)}:{PASSWORDS[state]}@127.0.0.1:"
    (home / "rogue.conf").write_text(
        "port: -1\nhost: 127.0.0.1\n"
        f'leafnodes {{ remotes: [ {{ url: "{url}{server.layout.leaf_hub.port}", '
        "account: ISTMO } ] }\n"
        'accounts { ISTMO { users: [ { user: "rogue", password: "rogue-0123456789" } ] } }\n'
        "no_auth_user: rogue\n"
    )
    proc = await asyncio.create_subprocess_exec(
        str(server.binary),
        "-c",
        str(home / "rogue.conf"),
        "--ports_file_dir",
        str(home / "ports"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        found = await eventually(lambda: list((home / "ports").glob("*.ports")), what="ports")
        await eventually(
            lambda: [
                leaf
                for leaf in (server.monitor("/leafz") or {}).get("leafs", [])
                if leaf.get("account") == link_account(state)
            ],
            what=f"the rogue to join the hub as {state}'s link",
        )
        yield str(json.loads(found[0].read_text())["nats"][0])
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


def _flow_control_answers(state: str) -> list[str]:
    """What the hub publishes in ISTMO answering the flow control of ``state``'s node (the
    consumer's name says whose, whatever the streams are called)."""
    consumer = f"JS_SRC_{state}"
    return [f"$JS.FC.{leaf_stream(state, k)}.{consumer}.1.2" for k in ("ingest", "receipt")]


async def test_a_state_hears_none_of_another_states_flow_control(tmp_path: Path) -> None:
    heard: dict[str, list[Msg]] = {"GT": [], "BZ": []}
    async with hub(tmp_path) as (server, seed):
        async with rogue(server, tmp_path, "GT") as gt_url, rogue(server, tmp_path, "BZ") as bz_url:
            listeners = []
            try:
                for state, url in (("GT", gt_url), ("BZ", bz_url)):
                    nc = await nats.connect(url, allow_reconnect=False)
                    listeners.append(nc)

                    async def keep(msg: Msg, into: list[Msg] = heard[state]) -> None:
                        into.append(msg)

                    await nc.subscribe(">", cb=keep)
                    await nc.flush()
                relay = await nats.connect(server.url, nkeys_seed_str=seed)
                try:
                    # Published until GT's rogue hears them (its interest crosses the link
                    # a moment after it subscribes): the probe can hear.
                    async def answer_gt() -> list[str]:
                        for subject in _flow_control_answers("GT"):
                            await relay.publish(subject, b"")
                        await relay.flush()
                        return sorted({m.subject for m in heard["GT"]})

                    await eventually(
                        answer_gt,
                        until=lambda got: got == sorted(_flow_control_answers("GT")),
                        what="GT's rogue to hear the hub's answers to GT's flow control",
                    )

                    # BZ's own answers last: once BZ's rogue hears them, anything of GT's
                    # published before would have arrived too (one connection, in order).
                    async def answer_bz() -> list[str]:
                        for subject in _flow_control_answers("BZ"):
                            await relay.publish(subject, b"")
                        await relay.flush()
                        return sorted({m.subject for m in heard["BZ"]})

                    got = await eventually(
                        answer_bz,
                        until=lambda got: set(_flow_control_answers("BZ")) <= set(got),
                        what="BZ's rogue to hear the hub's answers to BZ's flow control",
                    )
                finally:
                    await relay.close()
            finally:
                for nc in listeners:
                    await nc.close()
    assert got == sorted(_flow_control_answers("BZ")), got
    assert not [m.subject for m in heard["GT"] if "JS_SRC_BZ" in m.subject]
