"""A partner link cut, then healed (catalogue F-28; ``docs/faults.md``).

Two Istmo regions on one machine (``tests/integration/partner_kit.py``). Region A's guard
(``istmo federation guard``, a real process) runs in a network namespace of its own
(``tests/netns.py``) with two veth pairs: over one it reaches A's NATS, over the other
region B's ingest (``istmo federation ingest``, a real process on this side), each through
a ``Forwarder`` on the host end (both servers listen on loopback). The cut is ``ip link set
<partner link> down`` in the namespace: the guard's transfers simply stop getting through,
as when the line to the partner hub fails, while it still reads A's deliveries.

Before the cut some releasable bulletins cross; during it a TLP:RED bulletin naming the
gateway and more releasable ones are published in A; the guard blocks the RED one (no
partner needed for that) and hands back what it cannot send. After the heal:

- every releasable bulletin arrived in B exactly once (B's delivery stream and its
  ``federation.arrived`` events), none lost, none duplicated;
- the RED one never crossed (``federation.blocked``, ``tlp_red``, once);
- both sides' signed daily counts agree (``istmo federation reconcile``);
- no event holds a bulletin's text.

- CI (``slow``): 3 before, 6 during, the cut held until the guard has met it.
- ``long``: 20 before, 200 during, the cut held ``ISTMO_F28_CUT_S`` seconds (300; 3600
  for the catalogue's hour).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import pytest

from broker.bus.connect import connect_as_broker
from broker.runtime.federation import guard_durable
from schemas.subjects import DELIVER_STREAM
from tests.integration.partner_kit import (
    GATEWAY,
    LINK,
    PUBLISHER,
    RED,
    RELEASABLE,
    Regions,
    bulletins,
    events,
    held_by_b,
    linked_regions,
    listening,
    process,
    reconcile,
    seed,
)
from tests.integration.stack_inproc import client, nats_url
from tests.netns import Forwarder, Netns, skip_reason
from tests.waiting import eventually

NATS_LINK, PARTNER_LINK = 0, 1  # the guard's two veth pairs
TIMEOUT_S = 2  # istmo federation guard --timeout: a cut shows within seconds


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].rstrip("/"))


async def _guard_redelivered(regions: Regions) -> int:
    """How many of the guard's deliveries came back (handed back, partner not reached)."""
    nc = await connect_as_broker(
        nats_url(regions.a), seed=seed(regions.a), name="test", reconnects=0
    )
    try:
        info = await nc.jetstream().consumer_info(DELIVER_STREAM, guard_durable(LINK.name))
        return int(info.num_redelivered or 0)
    finally:
        await nc.close()


async def _cut_and_heal(tmp_path: Path, *, before: int, during: int, hold_s: float) -> None:
    if (reason := skip_reason()) is not None:
        pytest.skip(reason)
    async with linked_regions(tmp_path) as regions:
        with Netns(links_wanted=2) as ns:
            to_nats = Forwarder(
                ns.links[NATS_LINK].host_addr, ("127.0.0.1", _port(nats_url(regions.a)))
            )
            to_partner = Forwarder(
                ns.links[PARTNER_LINK].host_addr, ("127.0.0.1", _port(regions.partner))
            )
            await to_nats.start()
            await to_partner.start()
            guard = [*regions.guard[: regions.guard.index("--partner")],
                     "--partner", f"http://{to_partner.listen_host}:{to_partner.port}",
                     "--nats-url", f"nats://{to_nats.listen_host}:{to_nats.port}",
                     "--timeout", str(TIMEOUT_S)]  # fmt: skip
            log = tmp_path / "processes.log"
            try:
                with (
                    process(
                        [*regions.ingest, "--allow-host", to_partner.listen_host], log
                    ) as ingesting,
                    process(guard, log, prefix=ns.exec_argv([])) as guarding,
                ):
                    await eventually(
                        lambda: listening(regions.partner, ingesting), what="the ingest to listen"
                    )
                    async with await client(regions.a, PUBLISHER) as gt:
                        sent = [
                            (await gt.publish(title=f"b{i}", text="CANARY-b", labels=RELEASABLE))
                            for i in range(before)
                        ]
                        await eventually(
                            lambda: len(events(regions.b_dir, "federation.arrived")),
                            until=lambda n: n >= before,
                            what="the bulletins before the cut to cross",
                            timeout=120,
                            context=log.read_text,
                        )
                        ns.cut(PARTNER_LINK)
                        t_cut = time.monotonic()
                        red = await gt.publish(title="red", text="CANARY-red", labels=RED)
                        assert GATEWAY in red.routed  # A's policy delivers it to the gateway
                        sent += [
                            (await gt.publish(title=f"d{i}", text="CANARY-d", labels=RELEASABLE))
                            for i in range(during)
                        ]
                    # The guard met the cut: it blocked the RED one (on labels alone) and
                    # handed back what it could not send.
                    await eventually(
                        lambda: len(events(regions.a_dir, "federation.blocked")),
                        what="the guard to block the RED bulletin during the cut",
                        timeout=120,
                        context=log.read_text,
                    )
                    await eventually(
                        lambda: _guard_redelivered(regions),
                        what="a transfer handed back while the partner is cut off",
                        timeout=120,
                        context=log.read_text,
                    )
                    assert len(events(regions.b_dir, "federation.arrived")) == before
                    if (rest := hold_s - (time.monotonic() - t_cut)) > 0:
                        await asyncio.sleep(rest)  # the line simply stays down
                    cut_s = time.monotonic() - t_cut
                    ns.heal(PARTNER_LINK)
                    t_heal = time.monotonic()
                    total = before + during
                    await eventually(
                        lambda: len(events(regions.b_dir, "federation.arrived")),
                        until=lambda n: n >= total,
                        what=f"all {total} releasable bulletins to cross after the heal",
                        timeout=600,
                        interval=0.5,
                        context=log.read_text,
                    )
                    healed_s = time.monotonic() - t_heal
                    await eventually(
                        lambda: held_by_b(regions.b),
                        until=lambda n: n >= total,
                        what="B to store them",
                    )
                    assert (guarding.poll(), ingesting.poll()) == (None, None), log.read_text()
            finally:
                await to_nats.close()
                await to_partner.close()
        # Once each, on both sides; the RED one never crossed; labels only in the events.
        ids = {s.bulletin_id for s in sent}
        passed = [json.loads(e) for e in events(regions.a_dir, "federation.passed")]
        arrived = [json.loads(e) for e in events(regions.b_dir, "federation.arrived")]
        blocked = [json.loads(e) for e in events(regions.a_dir, "federation.blocked")]
        assert len(passed) == len(arrived) == total
        assert set(bulletins(regions.b_dir, "federation.arrived")) == ids
        assert [x["reasons"] for x in blocked] == [["tlp_red"]]
        assert bulletins(regions.a_dir, "federation.blocked") == [red.bulletin_id]
        assert all("CANARY" not in json.dumps(x) for x in passed + arrived + blocked)
        assert await held_by_b(regions.b) == total
        said = await reconcile(regions, tmp_path)
    assert f"both sides count {total} bulletins" in said
    print(f"\nF-28: {before} before, {during} during a cut of {cut_s:.0f} s; all across "
          f"{healed_s:.1f} s after the heal", file=sys.stderr)  # fmt: skip


@pytest.mark.slow
async def test_f28_a_partner_link_cut_then_healed(tmp_path: Path) -> None:
    await _cut_and_heal(tmp_path, before=3, during=6, hold_s=0)


@pytest.mark.long
async def test_f28_a_long_cut_of_the_partner_link(tmp_path: Path) -> None:
    hold_s = float(os.environ.get("ISTMO_F28_CUT_S", "300"))
    await _cut_and_heal(tmp_path, before=20, during=200, hold_s=hold_s)
