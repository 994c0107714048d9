"""The relay's Prometheus metrics: what it takes, how fast, and what waits for it.

    istmo_relay_backlog_messages{queue}              messages not yet settled by any relay
                                                     (pending + taken and not acked), sampled
                                                     from the shared consumer every few s
    istmo_relay_bulletins_total{verdict}             ingest messages settled: accept, reject,
                                                     resume (a redelivery), defer (embargoed)
    istmo_relay_receipts_total{outcome}              receipts settled: recorded, refused
    istmo_relay_batch_messages{queue}                messages per fetched batch (histogram)
    istmo_relay_commit_duration_seconds{queue}       one batch's database transaction
    istmo_relay_publish_to_delivery_seconds          from an ingest message's store time
                                                     (JetStream's timestamp) to its deliveries
                                                     being stored, per delivered bulletin

``queue`` is ``ingest``, ``receipts`` or ``advisories`` (the delivery consumers'
max-deliver advisories, turned into dead letters). Several relays share the consumers: sum
the counters over them, but take the backlog from any one (``max``).

Where they are served is left to the process: ``istmo up`` puts them in the HTTP API's own
registry (``/metrics``); ``istmo relay --metrics-port`` serves its own on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from schemas.errors import ConfigError

__all__ = ["RelayMetrics", "serve_metrics"]

METRICS_HOST = "127.0.0.1"  # a scraper on the same machine, or a proxy in front

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# A bulletin waits for a relay as long as the backlog before it: seconds to minutes.
_DELIVERY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class RelayMetrics:
    """The relay's metrics, registered in ``registry`` (a new one if None).

    Register one ``RelayMetrics`` per registry: a second one would name the same series.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.backlog = Gauge(
            "istmo_relay_backlog_messages",
            "Messages no relay has settled yet (pending or unacked), sampled from the consumer",
            ["queue"],
            registry=self.registry,
        )
        self.bulletins = Counter(
            "istmo_relay_bulletins",
            "Ingest messages the relay settled, by verdict",
            ["verdict"],
            registry=self.registry,
        )
        self.receipts = Counter(
            "istmo_relay_receipts",
            "Receipts the relay settled, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.batch = Histogram(
            "istmo_relay_batch_messages",
            "Messages per batch the relay fetched",
            ["queue"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.commit = Histogram(
            "istmo_relay_commit_duration_seconds",
            "Duration of one batch's database transaction",
            ["queue"],
            buckets=_COMMIT_BUCKETS,
            registry=self.registry,
        )
        self.publish_to_delivery = Histogram(
            "istmo_relay_publish_to_delivery_seconds",
            "From an ingest message's JetStream store time to its deliveries being stored",
            buckets=_DELIVERY_BUCKETS,
            registry=self.registry,
        )


def serve_metrics(metrics: RelayMetrics, port: int) -> tuple[int, Callable[[], None]]:
    """Serve ``metrics`` on ``http://127.0.0.1:<port>/metrics`` from a thread of its own
    (it answers even while the relay's event loop is busy). ``port`` 0 picks a free one.

    Returns:
        The port it listens on, and a function that stops it.

    Raises:
        ConfigError: the port cannot be bound.
    """
    try:
        server, thread = start_http_server(port, addr=METRICS_HOST, registry=metrics.registry)
    except OSError as exc:
        raise ConfigError(
            f"port {port} is taken (relay metrics)", hint="pick another with --metrics-port"
        ) from exc

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return server.server_port, stop
