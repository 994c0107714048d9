"""The relay's metrics (``broker.relay.metrics``) on the API's ``/metrics`` in ``istmo up``:
present, and moving as bulletins and receipts go through."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from broker.relay.metrics import RelayMetrics, serve_metrics
from clients.sdk import ReceivedBulletin
from schemas.envelope import Content
from schemas.labels import Classification, Labels, Tlp
from schemas.sealing import seal
from schemas.subjects import INGEST_STREAM, RELAY_INGEST_DURABLE
from tests.integration.stack_inproc import client, nats_url, running_stack
from tests.waiting import eventually

LABELS = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("HN",),
)
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every relay sample by name and labels (sorted)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("istmo_relay_")
    }


def value(m: Samples, name: str, **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_relay_metrics_are_served_on_the_api_and_move(tmp_path: Path) -> None:
    async with running_stack(tmp_path / "istmo", relay_metrics_sample_s=0.1) as stack:
        url = f"http://127.0.0.1:{stack.settings.api_port}/metrics"
        async with httpx.AsyncClient() as http:

            async def scrape() -> Samples:
                r = await http.get(url)
                assert r.status_code == 200
                return samples(r.text)

            before = await eventually(
                scrape,
                until=lambda m: ("istmo_relay_backlog_messages", (("queue", "ingest"),)) in m,
                what="the first backlog sample",
            )
            async with await client(stack, "gt-police") as gt:
                result = await gt.publish(title="t", text="metrics", labels=LABELS)
                recipients = await gt.resolve(LABELS)
                # A backlog: three bulletins wait while the relay's consumer is paused.
                relay_nc = await stack.connect_relay(nats_url(stack))
                js = relay_nc.jetstream()
                await js.pause_consumer(INGEST_STREAM, RELAY_INGEST_DURABLE, "2099-01-01T00:00:00Z")
                try:
                    for i in range(3):
                        env = seal(
                            content=Content(title=f"b{i}", text="backlog"),
                            labels=LABELS,
                            originator=gt.agency,
                            signing_key=gt.keystore.signing_key(),
                            recipients=recipients,
                            now=int(time.time()),
                        )
                        await gt._publish_envelope(env)
                    await eventually(
                        scrape,
                        until=lambda m: (
                            value(m, "istmo_relay_backlog_messages", queue="ingest") == 3
                        ),
                        what="a backlog of 3",
                    )
                finally:
                    await js.resume_consumer(INGEST_STREAM, RELAY_INGEST_DURABLE)
                    await relay_nc.close()
                # hn-police receives all four and sends its signed receipts.
                got: list[str] = []

                async def keep(b: ReceivedBulletin) -> None:
                    got.append(b.id)

                async with await client(stack, "hn-police") as hn:
                    assert await hn.receive(keep, count=4, timeout=60) == 4
            assert result.bulletin_id in got

            def moved(m: Samples) -> bool:
                return (
                    value(m, "istmo_relay_backlog_messages", queue="ingest") == 0
                    and value(m, "istmo_relay_receipts_total", outcome="recorded")
                    >= value(before, "istmo_relay_receipts_total", outcome="recorded") + 4
                )

            after = await eventually(scrape, until=moved, what="receipts recorded, no backlog")
        accepted = "istmo_relay_bulletins_total", (("verdict", "accept"),)
        assert after[accepted] - before.get(accepted, 0) == 4
        for name, queue in (
            ("istmo_relay_batch_messages_count", "ingest"),
            ("istmo_relay_commit_duration_seconds_count", "ingest"),
            ("istmo_relay_commit_duration_seconds_count", "receipts"),
            ("istmo_relay_batch_messages_count", "receipts"),
        ):
            assert value(after, name, queue=queue) > value(before, name, queue=queue), name
        delivered = value(after, "istmo_relay_publish_to_delivery_seconds_count")
        assert delivered - value(before, "istmo_relay_publish_to_delivery_seconds_count") == 4
        # The three that waited for the paused consumer waited longer than nothing.
        assert value(after, "istmo_relay_publish_to_delivery_seconds_sum") > 0


def touched() -> RelayMetrics:
    """Every series of the relay's metrics, with one value each."""
    m = RelayMetrics()
    for queue in ("ingest", "receipts"):
        m.backlog.labels(queue).set(3)
        m.batch.labels(queue).observe(64)
        m.commit.labels(queue).observe(0.004)
    m.bulletins.labels("accept").inc()
    m.receipts.labels("recorded").inc()
    m.publish_to_delivery.observe(0.2)
    return m


def test_relay_metric_names_follow_the_prometheus_conventions() -> None:
    text = generate_latest(touched().registry).decode()
    # prometheus-client adds a <name>_created gauge to each counter and histogram.
    families = [f for f in text_string_to_metric_families(text) if not f.name.endswith("_created")]
    assert {f.name for f in families} == {
        "istmo_relay_backlog_messages",
        "istmo_relay_bulletins",
        "istmo_relay_receipts",
        "istmo_relay_batch_messages",
        "istmo_relay_commit_duration_seconds",
        "istmo_relay_publish_to_delivery_seconds",
    }
    for family in families:
        assert family.documentation, family.name
        names = {s.name for s in family.samples}
        if family.type == "counter":
            assert names <= {family.name + "_total", family.name + "_created"}, names
        if family.type == "histogram":
            assert family.name.endswith(("_seconds", "_messages")), family.name


async def test_a_lone_relay_serves_its_metrics_on_loopback() -> None:
    port, stop = serve_metrics(touched(), 0)
    try:
        async with httpx.AsyncClient() as http:
            r = await http.get(f"http://127.0.0.1:{port}/metrics")
    finally:
        stop()
    assert r.status_code == 200
    assert value(samples(r.text), "istmo_relay_backlog_messages", queue="ingest") == 3
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as http:
            await http.get(f"http://127.0.0.1:{port}/metrics")
