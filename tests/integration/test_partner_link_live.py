"""Two Istmo regions on one machine, linked live (ADR 33): region A's guard
(`istmo federation guard`, a real process) takes its gateway's deliveries from A's
delivery stream and sends what passes to region B's ingest (`istmo federation ingest`,
a real process), which checks each transfer and delivers it to B's own gateway agency.

- a releasable bulletin crosses and is audited on both sides (`federation.passed`,
  `federation.arrived`), and the two sides' signed counts agree (`istmo federation
  reconcile`);
- a TLP:RED one naming the gateway is delivered to it in A by the policy, blocked by the
  guard (`federation.blocked`, `tlp_red`) and never reaches B;
- while B pins a wrong directory key every transfer is refused (audited) and kept by the
  guard, and arrives once B pins the right one;
- the guard killed (SIGKILL) mid-stream and started again loses nothing and duplicates
  nothing: B's delivery stream holds each bulletin once, and a transfer sent again is
  kept once;
- a tampered transfer and a forged envelope are refused on arrival and audited
  (`federation.refused`), never counted;
- B's gateway, enrolled in B with the same keys (`istmo enroll --same-keys-as`) and with
  A's directory key pinned for the link (`istmo partner pin`), opens and reads what
  crossed from an agency of A, shown with its region (the refusals of a gateway's SDK
  are test_partner_opening's).

Both stacks run in the test's loop (nats-server, relay, SQLite each). The partner region
`EU-SIENA` and its gateway agency `eu-gateway` are added with the administrators' tools
(`istmo admin jurisdiction add`, `istmo admin agency add`) on both sides, and the gateway
enrols its keys in region A (`istmo enroll`), as docs/borders.md walks an operator through.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import pytest

from broker.bus.connect import connect_as_broker
from broker.config import Settings
from broker.relay.federation import link_key
from broker.runtime.datadir import DataDir
from broker.runtime.stack import Stack
from broker.store.registry import Registry
from clients.results import ReceivedBulletin
from clients.sdk import IstmoClient
from schemas.canonical import canonical_json
from schemas.link_transfer import encode_transfer, sign_transfer
from schemas.subjects import DELIVER_STREAM
from tests.integration.partner_kit import (
    A_ONLY,
    GATEWAY,
    LINK,
    PUBLISHER,
    RED,
    RELEASABLE,
    events,
    held_by_b,
    istmo_cli,
    linked_regions,
    listening,
    process,
    reconcile,
    seed,
)
from tests.integration.stack_inproc import client, nats_url
from tests.stackproc import interrupt
from tests.waiting import eventually

N = 16  # releasable bulletins in all


@pytest.mark.slow
async def test_a_live_link_carries_what_passes_once_and_refuses_forgeries(
    tmp_path: Path,
) -> None:
    async with linked_regions(tmp_path, reading=True) as regions:
        a, b, dirs = regions.a, regions.b, regions.dirs
        partner, ingest, guard = regions.partner, regions.ingest, regions.guard

        async with await client(a, PUBLISHER) as gt:
            red = await gt.publish(title="red", text="CANARY-red", labels=RED)
            assert GATEWAY in red.routed  # the policy delivers it to the gateway in A
            sent = [
                (await gt.publish(title=f"n{i}", text="CANARY-body", labels=RELEASABLE))
                for i in range(N - 1)
            ]
        # One from an agency of A that B's directory does not list: B's gateway opens it.
        async with await IstmoClient.connect(tmp_path / "a-only.json", nats_url(a)) as only:
            crossing = await only.publish(title="go-fast", text="CANARY-crossed", labels=RELEASABLE)
            sent.append(crossing)
        assert all(GATEWAY in s.routed for s in sent)
        ids = {s.bulletin_id for s in sent}

        # First B pins the wrong directory key (its own): every transfer is refused, and
        # the guard keeps each one to send again.
        log = tmp_path / "processes.log"
        own_key = await istmo_cli("federation", "key", "--directory", data_dir=dirs["b"])
        wrong = [*ingest[:-1], own_key.strip()]
        with process(wrong, log) as ingesting, process(guard, log) as guarding:
            await eventually(lambda: listening(partner, ingesting), what="the ingest to listen")
            await eventually(
                lambda: {r for r, _ in _refused(dirs["b"])},
                what="a transfer refused for the wrong directory key",
                until=lambda reasons: reasons == {"directory_signature"},
            )
            assert guarding.poll() is None
        assert events(dirs["b"], "federation.arrived") == []

        with process(ingest, log) as ingesting:
            await eventually(lambda: listening(partner, ingesting), what="the ingest to listen")
            assert ingesting.poll() is None, log.read_text()

            # The guard, killed mid-stream (no Ctrl-C: no chance to ack what it sent).
            with process(guard, log) as guarding:
                await eventually(
                    lambda: len(events(dirs["b"], "federation.arrived")),
                    what="the first bulletins to arrive in B",
                    until=lambda n: n >= 3,
                    timeout=60,
                )
                guarding.send_signal(signal.SIGKILL)
                guarding.wait()
            with process(guard, log) as guarding:
                await eventually(
                    lambda: len(events(dirs["b"], "federation.arrived")),
                    what="every releasable bulletin to arrive in B",
                    until=lambda n: n >= N,
                    timeout=120,
                )
                await eventually(
                    lambda: len(events(dirs["a"], "federation.blocked")),
                    what="the guard to block the RED one",
                    timeout=60,
                )
                out, _ = interrupt(guarding)
                assert "stopped" in out

            # Each on both sides once, labels only; the RED one blocked, never in B.
            passed = [json.loads(e) for e in events(dirs["a"], "federation.passed")]
            arrived = [json.loads(e) for e in events(dirs["b"], "federation.arrived")]
            assert len(passed) == len(arrived) == N
            blocked = [json.loads(e) for e in events(dirs["a"], "federation.blocked")]
            assert [x["reasons"] for x in blocked] == [["tlp_red"]]
            assert all("CANARY" not in json.dumps(x) for x in passed + arrived + blocked)
            # Nothing lost, nothing duplicated (the ingest audits an arrival just before
            # it stores it: wait for the last one stored).
            await eventually(lambda: held_by_b(b), what="B to store them", until=lambda n: n >= N)
            assert await held_by_b(b) == N

            # A transfer sent again (a retry, a replay) is kept once.
            data_a = DataDir.open(a.settings, out=lambda _l: None)
            try:
                data_a.directory.refresh()
                raw = await _delivered_in_b(b)
                env_id = json.loads(raw)["header"]["bulletin_id"]
                originator = json.loads(raw)["header"]["originator"]
                assert env_id in ids
                key = link_key(a.settings.broker_dir, LINK.name)
                now = int(time.time())

                def transfer(envelope: bytes) -> bytes:
                    return encode_transfer(
                        sign_transfer(
                            link=LINK.name,
                            bulletin_id=env_id,
                            envelope=envelope,
                            directory=data_a.directory.signed_excerpt([originator], now),
                            issued_at=now,
                            key=key,
                        )
                    )

                url = f"{partner}/v1/federation/{LINK.name}/transfers"
                async with httpx.AsyncClient() as http:
                    again = await http.post(url, content=transfer(raw))
                    assert again.status_code == 200, again.text
                    assert await held_by_b(b) == N

                    # Tampered in transit: the link key's signature no longer holds.
                    doc = json.loads(transfer(raw))
                    doc["issued_at"] += 1
                    tampered = await http.post(url, content=canonical_json(doc))
                    # Forged: widened labels under the link key, the originator's
                    # signature broken.
                    env = json.loads(raw)
                    env["header"]["labels"]["tlp"] = "CLEAR"
                    forged = await http.post(url, content=transfer(canonical_json(env)))
                assert (tampered.status_code, forged.status_code) == (400, 400)
                assert tampered.json() == forged.json() == {"outcome": "refused"}
            finally:
                data_a.close()
            refused = [(r, c) for r, c in _refused(dirs["b"]) if r != "directory_signature"]
            assert sorted(r for r, _ in refused) == ["link_signature", "originator_signature"]
            assert {c for _, c in refused} == {env_id}
            assert len(events(dirs["b"], "federation.arrived")) == N
            assert await held_by_b(b) == N

        # The two sides' signed counts agree, with the commands an operator runs.
        said = await reconcile(regions, tmp_path)

        # B's gateway (enrolled in B with the keys it has in A) pins A's directory key for
        # the link, as its operator does, and reads what crossed. The bulletins of
        # gt-police, an agency of B's own directory too (the demo seeds both regions
        # alike), are refused: a partner's record never speaks for one of B's agencies.
        pinned = await istmo_cli("partner", "pin", "--as", str(tmp_path / "gateway-b.json"),
                                 "--link", LINK.name, "--region", "istmo-a",
                                 "--directory-key", regions.directory_key,
                                 data_dir=dirs["b"])  # fmt: skip
        assert f"link {LINK.name}: region istmo-a" in pinned
        got: list[ReceivedBulletin] = []

        async def read(bulletin: ReceivedBulletin) -> None:
            got.append(bulletin)

        async with await IstmoClient.connect(tmp_path / "gateway-b.json", nats_url(b)) as gw:
            assert await gw.receive(read, count=1, timeout=60) == 1
        [opened] = got
        assert (opened.id, opened.originator) == (crossing.bulletin_id, A_ONLY)
        assert (opened.body, opened.region) == ("CANARY-crossed", "istmo-a")
    assert f"both sides count {N} bulletins" in said


def _refused(data_dir: Path) -> list[tuple[str, str]]:
    registry = Registry(Settings.from_env(env={}, data_dir=data_dir).db_url)
    try:
        rows = registry.audit_events(type_="federation.refused", limit=100)
        return [(e.reason or "", json.loads(e.data).get("claimed_bulletin")) for e in rows]
    finally:
        registry.close()


async def _delivered_in_b(stack: Stack) -> bytes:
    """The first envelope delivered to the gateway in B."""
    nc = await connect_as_broker(nats_url(stack), seed=seed(stack), name="test", reconnects=0)
    try:
        js = nc.jetstream()
        msg = await js.get_last_msg(DELIVER_STREAM, f"istmo.deliver.{GATEWAY}.routine")
        assert msg.data is not None
        return msg.data
    finally:
        await nc.close()
