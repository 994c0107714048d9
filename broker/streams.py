"""Create (or bring up to date) Istmo's JetStream streams and durable consumers.

Idempotent: safe to call on every start. Needs a connection in account ISTMO (the relay's
user); the agencies never call these. Which agencies exist, and removing their consumers
when they leave, is left to the registry.
"""

from __future__ import annotations

from collections.abc import Callable

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, BadRequestError, ServiceUnavailableError

from schemas.errors import BusUnavailable, ConfigError
from schemas.subjects import (
    AUDIT_STREAM,
    DELIVER_STREAM,
    INGEST_STREAM,
    RECEIPT_STREAM,
    RELAY_INGEST_DURABLE,
    RELAY_RECEIPT_DURABLE,
    deliver_durable,
    deliver_subject,
    ingest_subject,
    receipt_subject,
)

__all__ = ["ensure_agency_consumer", "ensure_relay_consumers", "ensure_streams"]

ACK_WAIT_S = 30.0
AGENCY_MAX_DELIVER = 10  # the dead-letter path after the 10th attempt is a later issue
RELAY_MAX_ACK_PENDING = 1000
_STREAM_CONFIG_MISMATCH = 10058  # "stream name already in use with a different configuration"


def _every_agency(subject_of: Callable[[str], str]) -> str:
    """``istmo.<kind>.*`` from the contract's per-agency builder (it has no wildcards)."""
    return subject_of("any").rsplit(".", 1)[0] + ".*"


_AUDIT_SUBJECTS = "istmo.audit.>"  # schemas.subjects names the stream, not its subjects


def _stream_configs(deliver_max_age_s: int, duplicate_window_s: int) -> list[StreamConfig]:
    window = float(duplicate_window_s)
    return [
        StreamConfig(
            name=INGEST_STREAM,
            subjects=[_every_agency(ingest_subject)],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            # A full stream refuses the publisher rather than dropping accepted bulletins.
            discard=DiscardPolicy.NEW,
            duplicate_window=window,
            allow_direct=False,
        ),
        StreamConfig(
            name=DELIVER_STREAM,
            subjects=[_every_agency(deliver_subject)],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=float(deliver_max_age_s),
            duplicate_window=window,
            deny_delete=True,
            deny_purge=True,
            # Direct get ignores consumer filters; keep it off (defence in depth).
            allow_direct=False,
        ),
        StreamConfig(
            name=RECEIPT_STREAM,
            subjects=[_every_agency(receipt_subject)],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=window,
            allow_direct=False,
        ),
        StreamConfig(
            name=AUDIT_STREAM,
            subjects=[_AUDIT_SUBJECTS],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            duplicate_window=window,
            deny_delete=True,
            deny_purge=True,
            allow_direct=False,
        ),
    ]


def _bus_error(what: str, exc: Exception) -> BusUnavailable:
    return BusUnavailable(f"JetStream did not answer while setting up {what}: {exc!r}")


async def ensure_streams(
    js: JetStreamContext,
    *,
    deliver_max_age_s: int = 30 * 24 * 3600,
    duplicate_window_s: int = 600,
) -> None:
    """Create the four Istmo streams, or update them to the wanted configuration.

    Args:
        js: a JetStream context on a connection in account ISTMO.
        deliver_max_age_s: how long deliveries wait for an offline agency, in seconds.
        duplicate_window_s: the JetStream dedupe window of every stream, in seconds.

    Raises:
        BusUnavailable: JetStream does not answer.
        ConfigError: JetStream refuses a stream configuration (for example a change
            of retention, which it cannot update in place).
    """
    for config in _stream_configs(deliver_max_age_s, duplicate_window_s):
        try:
            try:
                await js.add_stream(config)
            except BadRequestError as exc:
                if exc.err_code != _STREAM_CONFIG_MISMATCH:
                    raise
                await js.update_stream(config)
        except (NatsTimeoutError, NoRespondersError, ServiceUnavailableError) as exc:
            raise _bus_error(f"stream {config.name}", exc) from exc
        except APIError as exc:
            raise ConfigError(
                f"JetStream refused stream {config.name}: {exc.description} "
                f"(err_code {exc.err_code})"
            ) from exc


async def _ensure_consumer(js: JetStreamContext, stream: str, config: ConsumerConfig) -> None:
    # CONSUMER.CREATE without an action creates, or updates what may be updated.
    try:
        await js.add_consumer(stream, config)
    except (NatsTimeoutError, NoRespondersError, ServiceUnavailableError) as exc:
        raise _bus_error(f"consumer {config.durable_name}", exc) from exc
    except APIError as exc:
        raise ConfigError(
            f"JetStream refused consumer {config.durable_name} on {stream}: "
            f"{exc.description} (err_code {exc.err_code})"
        ) from exc


async def ensure_agency_consumer(js: JetStreamContext, agency: str) -> None:
    """Create or update the durable pull consumer ``deliver-<agency>`` on ISTMO_DELIVER.

    Raises:
        EnvelopeError: ``agency`` is not a valid agency id.
        BusUnavailable: JetStream does not answer.
        ConfigError: JetStream refuses the consumer.
    """
    durable = deliver_durable(agency)
    config = ConsumerConfig(
        name=durable,
        durable_name=durable,
        filter_subject=deliver_subject(agency),
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_S,
        max_deliver=AGENCY_MAX_DELIVER,
    )
    await _ensure_consumer(js, DELIVER_STREAM, config)


async def ensure_relay_consumers(js: JetStreamContext) -> None:
    """Create or update the relay's shared durables on ISTMO_INGEST and ISTMO_RECEIPTS.

    Raises:
        BusUnavailable: JetStream does not answer.
        ConfigError: JetStream refuses a consumer.
    """
    for stream, durable, subject_of in (
        (INGEST_STREAM, RELAY_INGEST_DURABLE, ingest_subject),
        (RECEIPT_STREAM, RELAY_RECEIPT_DURABLE, receipt_subject),
    ):
        config = ConsumerConfig(
            name=durable,
            durable_name=durable,
            filter_subject=_every_agency(subject_of),
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT_S,
            max_ack_pending=RELAY_MAX_ACK_PENDING,
        )
        await _ensure_consumer(js, stream, config)
