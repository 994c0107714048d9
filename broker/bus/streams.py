"""Create (or bring up to date) Istmo's JetStream streams and durable consumers.

Idempotent: safe to call on every start. Needs a connection in account ISTMO (the relay's
user); the agencies never call these. Every stream is file-backed with a dedupe window of
10 minutes by default (the catalogue's deploy defaults); on a cluster each has 3 replicas
(``replicas=3``), on one node 1. Purges are denied on the delivery and audit streams, and
deletes on the audit stream; the delivery stream lets the relay delete single deliveries
of a recalled bulletin and lets deliveries carry a TTL (ADR 15; one made before keeps
``deny_delete``, which nats-server cannot lift); the two work queues need neither flag
(acks remove their messages). Which
agencies exist, and removing their consumers when they leave, is left to the registry.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping

from nats.aio.client import Client as NATS
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
from nats.js.errors import APIError, BadRequestError, NotFoundError, ServiceUnavailableError

from schemas.errors import BusUnavailable, ConfigError, EnvelopeError
from schemas.subjects import (
    ATTACH_STREAM,
    AUDIT_STREAM,
    DELIVER_STREAM,
    INGEST_STREAM,
    RECEIPT_STREAM,
    RELAY_INGEST_DURABLE,
    RELAY_RECEIPT_DURABLE,
    agency_of_subject,
    deliver_durables,
    deliver_filter_subjects,
    gated_msg_id,
    gated_subject,
    legacy_deliver_subject,
)

__all__ = [
    "ACCOUNT_SETTLE_S",
    "add_or_update_stream",
    "bus_unavailable",
    "create_agency_consumers",
    "delivery_consumers",
    "ensure_agency_consumer",
    "ensure_atomic",
    "ensure_attach_stream",
    "ensure_deliver_stream",
    "ensure_relay_consumers",
    "ensure_streams",
    "same_consumer",
]

ACK_WAIT_S = 30.0
AGENCY_MAX_DELIVER = 10  # then the max_deliver advisory dead-letters it (broker.relay.dead_letters)
# Redelivery waits of a delivery nobody acks (replacing ack_wait): about 3 h in all before
# the 10th attempt. The first equals ACK_WAIT_S, so a slow handler is not hurried.
AGENCY_BACKOFF_S = (30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 3600.0)
RELAY_MAX_ACK_PENDING = 1000
_STREAM_CONFIG_MISMATCH = 10058  # "stream name already in use with a different configuration"
_CONSUMER_EXISTS = 10148  # "consumer already exists" (action create, another config)
_ACCOUNT_NOT_FOUND = 10035  # "account not found": the JetStream leader lacks its claims yet
ACCOUNT_SETTLE_S = 30.0  # how long stream set-up waits for that to pass


def _every_agency(subject_of: Callable[[str], str]) -> str:
    """``istmo.<kind>.*`` from the contract's per-agency builder (it has no wildcards)."""
    return subject_of("any").rsplit(".", 1)[0] + ".*"


def _gated_ingest(agency: str) -> str:
    return gated_subject("ingest", agency)


def _gated_receipt(agency: str) -> str:
    return gated_subject("receipt", agency)


_AUDIT_SUBJECTS = "istmo.audit.>"  # schemas.subjects names the stream, not its subjects
_ATTACH_SUBJECTS = "istmo.attach.>"  # istmo.attach.<originator>.<bulletin>.<att>.<chunk>


# Agencies one region can hold: each has two durable consumers on the delivery stream
# (urgent-<agency> and deliver-<agency>, ADR 7). Europol's SIENA connects about 3,500
# authorities; this leaves room to grow.
MAX_AGENCIES = 20_000
CONSUMERS_PER_AGENCY = 2
# Room for `istmo reconcile`'s scans (one ephemeral consumer each) beside them.
_SPARE_CONSUMERS = 100
DELIVER_MAX_CONSUMERS = MAX_AGENCIES * CONSUMERS_PER_AGENCY + _SPARE_CONSUMERS
# istmo.deliver.<agency>.<precedence>, and istmo.deliver.<agency> where an Istmo before
# ADR 7 delivered (still read by deliver-<agency>, and still written by such a relay).
# And istmo.deliver.group.<group>.<epoch>.<precedence>: one copy of a bulletin for the
# members of a community group's epoch (ADR 21).
_DELIVER_SUBJECTS = [
    _every_agency(legacy_deliver_subject),
    _every_agency(legacy_deliver_subject) + ".*",
    "istmo.deliver.group.*.*.*",
]


def _stream_configs(
    deliver_max_age_s: int, duplicate_window_s: int, replicas: int
) -> list[StreamConfig]:
    window = float(duplicate_window_s)
    configs = [
        StreamConfig(
            name=INGEST_STREAM,
            # Only the gate (broker.bus.gate) writes here, never an agency (its subject is
            # istmo.ingest.<agency>): the gate drops every header an agency sent.
            subjects=[_every_agency(_gated_ingest)],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            # A full stream refuses the publisher rather than dropping accepted bulletins.
            discard=DiscardPolicy.NEW,
            duplicate_window=window,
            allow_direct=False,
        ),
        StreamConfig(
            name=DELIVER_STREAM,
            subjects=list(_DELIVER_SUBJECTS),
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=float(deliver_max_age_s),
            # JetStream refuses a dedupe window longer than the messages are kept.
            duplicate_window=min(window, float(deliver_max_age_s)),
            # A recall deletes the copies not yet delivered, and an expiring bulletin's
            # deliveries carry a TTL (ADR 15). Only account ISTMO may call the stream API.
            deny_delete=False,
            deny_purge=True,
            allow_msg_ttl=True,
            # Direct get ignores consumer filters; keep it off (defence in depth).
            allow_direct=False,
            # Two durable consumers per agency: nats-server 2.15 caps a stream at 1,000
            # consumers unless it says otherwise (and reads 0 or -1 as "the default"). It
            # cannot change this on an existing stream: ensure_streams keeps the old cap.
            max_consumers=DELIVER_MAX_CONSUMERS,
            # The relay stores a fetched batch's deliveries as atomic batches
            # (broker.bus.batch): one flush per batch, not per delivery.
            allow_atomic=True,
        ),
        StreamConfig(
            name=RECEIPT_STREAM,
            subjects=[_every_agency(_gated_receipt)],
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
            allow_atomic=True,  # for atomic batches (broker.bus.batch)
        ),
    ]
    configs.append(_attach_config(deliver_max_age_s, duplicate_window_s))
    for config in configs:
        config.num_replicas = replicas
    return configs


def _attach_config(max_age_s: int, duplicate_window_s: int) -> StreamConfig:
    """Attachment chunks (ADR 17): one message per chunk subject, kept as long as
    deliveries, or until the bulletin's expiry (a per-message TTL); a recall purges a
    bulletin's subjects. Only the relay writes and reads it (account ISTMO)."""
    return StreamConfig(
        name=ATTACH_STREAM,
        subjects=[_ATTACH_SUBJECTS],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=float(max_age_s),
        max_msgs_per_subject=1,
        duplicate_window=min(float(duplicate_window_s), float(max_age_s)),
        discard=DiscardPolicy.NEW,
        allow_msg_ttl=True,
        deny_delete=False,
        deny_purge=False,
        # The relay reads a chunk by subject (direct get: raw bytes, no base64). No agency
        # reaches the stream API.
        allow_direct=True,
    )


async def ensure_attach_stream(
    js: JetStreamContext, *, max_age_s: int, duplicate_window_s: int = 600
) -> None:
    """Create the attachment stream if a stack made before ADR 17 lacks it (a relay that
    joins such a stack calls this); an existing one is left as it is.

    Raises:
        BusUnavailable: JetStream does not answer.
        ConfigError: JetStream refuses the stream.
    """
    try:
        if await _existing(js, ATTACH_STREAM) is not None:
            return
        await js.add_stream(_attach_config(max_age_s, duplicate_window_s))
    except (NatsTimeoutError, NoRespondersError, ServiceUnavailableError) as exc:
        raise bus_unavailable(f"setting up stream {ATTACH_STREAM}", exc) from exc
    except APIError as exc:
        raise ConfigError(
            f"JetStream refused stream {ATTACH_STREAM}: {exc.description} (err_code {exc.err_code})"
        ) from exc


def bus_unavailable(what: str, exc: Exception) -> BusUnavailable:
    """The error for JetStream not answering while doing ``what`` (raise it ``from exc``)."""
    return BusUnavailable(f"JetStream did not answer while {what}: {exc!r}")


async def add_or_update_stream(
    js: JetStreamContext, config: StreamConfig, *, settle_s: float = ACCOUNT_SETTLE_S
) -> None:
    """Create ``config``'s stream, or update an existing one to it (JetStream refuses to
    add a stream whose name it already holds with another configuration). The nats
    errors come through as they are, for the caller to translate.

    In operator mode on a cluster, the node that leads JetStream may not hold the
    account's claims yet a moment after they were pushed ("account not found", although
    the node this connection is on answers for the account): that is asked again, with
    a growing pause, for up to ``settle_s`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settle_s
    delay = 0.1
    while True:
        try:
            try:
                await js.add_stream(config)
            except BadRequestError as exc:
                if exc.err_code != _STREAM_CONFIG_MISMATCH:
                    raise
                await js.update_stream(config)
            return
        except ServiceUnavailableError as exc:
            if exc.err_code != _ACCOUNT_NOT_FOUND or loop.time() + delay > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


_JETSTREAM_NOT_ENABLED = 10039  # "JetStream not enabled for account"


async def wait_for_jetstream(js: JetStreamContext, *, timeout_s: float = 30.0) -> None:
    """Wait until JetStream answers for this connection's account.

    In operator mode a node may answer "JetStream not enabled for account" for a moment
    after an account's claims were pushed, until it has applied the account's limits;
    stream set-up right then would fail for good on a passing state.

    Raises:
        BusUnavailable: JetStream still refuses or does not answer after ``timeout_s``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    delay = 0.1
    while True:
        try:
            await js.account_info()
            return
        except APIError as exc:
            passing = exc.err_code == _JETSTREAM_NOT_ENABLED
            if not passing and not isinstance(exc, ServiceUnavailableError):
                return  # JetStream answered: what it said is for stream set-up to report
            last: Exception = exc
        except (NatsTimeoutError, NoRespondersError) as exc:
            last = exc
        if loop.time() + delay > deadline:
            raise bus_unavailable(f"waiting {timeout_s:.0f} s for this account", last)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


async def ensure_streams(
    js: JetStreamContext,
    *,
    deliver_max_age_s: int = 30 * 24 * 3600,
    duplicate_window_s: int = 600,
    replicas: int | None = None,
) -> None:
    """Create the four Istmo streams, or update them to the wanted configuration.

    Args:
        js: a JetStream context on a connection in account ISTMO.
        deliver_max_age_s: how long deliveries wait for an offline agency, in seconds.
        duplicate_window_s: the JetStream dedupe window of every stream, in seconds.
        replicas: copies of every stream: 1 on one node, 3 on a 3-node cluster; None
            keeps what an existing stream has (1 for a new one), and its retention and
            dedupe window too, so a worker that only joins a stack (``istmo relay``)
            never changes them, whatever its own settings say.

    Raises:
        BusUnavailable: JetStream does not answer.
        ConfigError: JetStream refuses a stream configuration (for example a change
            of retention, which it cannot update in place).
    """
    if replicas not in (None, 1, 3, 5):
        raise ConfigError(f"stream replicas must be 1, 3 or 5, not {replicas}")
    for config in _stream_configs(deliver_max_age_s, duplicate_window_s, replicas or 1):
        try:
            existing = await _existing(js, str(config.name))
            if replicas is None:
                _keep_existing(config, existing)
            if existing is not None and existing.sources:
                # The hub's ingest and receipt streams source from the state nodes
                # (broker.bus.leaves, ADR 0030): dropping a source and adding it again
                # would source everything again.
                config.sources = existing.sources
            if existing is not None and existing.max_consumers is not None:
                # nats-server refuses to change it in place (a stream made before ADR 7
                # keeps 20,000: room for 10,000 agencies with two consumers each).
                config.max_consumers = existing.max_consumers
            if existing is not None and existing.deny_delete:
                # Nor can it lift deny_delete (err 10052): a delivery stream made before
                # ADR 15 keeps it, and recalls leave its copies to the SDKs to drop.
                config.deny_delete = True
            await add_or_update_stream(js, config)
            for kind, stream in _GATED_STREAMS:
                if stream == config.name:
                    await _move_ungated(js, stream, kind)
        except (NatsTimeoutError, NoRespondersError, ServiceUnavailableError) as exc:
            raise bus_unavailable(f"setting up stream {config.name}", exc) from exc
        except APIError as exc:
            raise ConfigError(
                f"JetStream refused stream {config.name}: {exc.description} "
                f"(err_code {exc.err_code})"
            ) from exc


async def ensure_atomic(js: JetStreamContext, stream: str) -> None:
    """Let ``stream`` take atomic batches (``allow_atomic``) if it does not yet, keeping
    the rest of its configuration: a relay that joins a stack made by an older Istmo
    (``istmo relay``) needs it on the delivery stream. JetStream updates it in place.

    Raises:
        BusUnavailable: JetStream does not answer.
        ConfigError: there is no such stream, or JetStream refuses the update.
    """

    def allow_atomic(config: StreamConfig) -> bool:
        if config.allow_atomic:
            return False
        config.allow_atomic = True
        return True

    await _amend(js, stream, allow_atomic, f"atomic batches on {stream}")


async def ensure_deliver_stream(js: JetStreamContext) -> None:
    """Bring a delivery stream an older Istmo made up to what a relay writes, keeping the
    rest of its configuration: atomic batches, the per-precedence delivery subjects
    (ADR 7) and per-message TTLs (ADR 15). A relay that joins a stack (``istmo relay``)
    calls it; JetStream updates the stream in place and keeps every message.

    Raises:
        BusUnavailable: JetStream does not answer.
        ConfigError: there is no such stream, or JetStream refuses the update.
    """
    await ensure_atomic(js, DELIVER_STREAM)

    def add_subjects(config: StreamConfig) -> bool:
        missing = [s for s in _DELIVER_SUBJECTS if s not in (config.subjects or [])]
        config.subjects = [*(config.subjects or []), *missing]
        return bool(missing)

    await _amend(js, DELIVER_STREAM, add_subjects, f"the subjects of {DELIVER_STREAM}")

    def allow_ttl(config: StreamConfig) -> bool:
        if config.allow_msg_ttl:
            return False
        config.allow_msg_ttl = True
        return True

    await _amend(js, DELIVER_STREAM, allow_ttl, f"per-message TTLs on {DELIVER_STREAM}")


async def _amend(
    js: JetStreamContext, stream: str, amend: Callable[[StreamConfig], bool], what: str
) -> None:
    """Update ``stream``'s configuration in place where ``amend`` changed it (it says
    whether it did); JetStream keeps every message.

    Raises:
        BusUnavailable: JetStream does not answer.
        ConfigError: there is no such stream, or JetStream refuses the update.
    """
    try:
        config = (await js.stream_info(stream)).config
        if amend(config):
            await js.update_stream(config)
    except (NatsTimeoutError, NoRespondersError, ServiceUnavailableError) as exc:
        raise bus_unavailable(f"updating {what}", exc) from exc
    except APIError as exc:
        raise ConfigError(
            f"JetStream refused {what}: {exc.description} (err_code {exc.err_code})"
        ) from exc


_GATED_STREAMS = (("ingest", INGEST_STREAM), ("receipt", RECEIPT_STREAM))


async def _move_ungated(js: JetStreamContext, stream: str, kind: str) -> int:
    """Re-store what an Istmo without the gate left on ``istmo.<kind>.<agency>``.

    Those subjects are no longer the stream's, so nothing reads such messages; each is
    stored again on its gated subject (the gate's id and no other header) and then
    deleted, so an upgrade loses nothing that was waiting. Returns how many moved.
    """
    moved = 0
    seq = 1
    while True:
        try:
            msg = await js.get_msg(stream, seq, subject=f"istmo.{kind}.*", next=True)
        except NotFoundError:
            return moved
        at = msg.seq or seq
        try:
            agency = agency_of_subject(msg.subject or "", kind)
        except EnvelopeError:
            agency = None  # not an agency's subject; nothing would ever read it
        if agency is not None:
            proposed = (msg.headers or {}).get("Nats-Msg-Id")
            data = msg.data or b""
            digest = hashlib.sha256(data).hexdigest()
            await js.publish(
                gated_subject(kind, agency),
                data,
                headers={"Nats-Msg-Id": gated_msg_id(agency, kind, proposed, digest)},
            )
            moved += 1
        await js.delete_msg(stream, at)
        seq = at + 1


async def _existing(js: JetStreamContext, stream: str) -> StreamConfig | None:
    try:
        return (await js.stream_info(stream)).config
    except NotFoundError:
        return None


def _keep_existing(config: StreamConfig, existing: StreamConfig | None) -> None:
    """What a joining worker leaves as the stack that made the stream set it."""
    if existing is None:
        config.num_replicas = 1
        return
    config.num_replicas = existing.num_replicas or 1
    config.max_age = existing.max_age
    config.duplicate_window = existing.duplicate_window


async def _ensure_consumer(js: JetStreamContext, stream: str, config: ConsumerConfig) -> None:
    # CONSUMER.CREATE without an action creates, or updates what may be updated.
    try:
        await js.add_consumer(stream, config)
    except (NatsTimeoutError, NoRespondersError, ServiceUnavailableError) as exc:
        raise bus_unavailable(f"setting up consumer {config.durable_name}", exc) from exc
    except APIError as exc:
        raise ConfigError(
            f"JetStream refused consumer {config.durable_name} on {stream}: "
            f"{exc.description} (err_code {exc.err_code})"
        ) from exc


async def ensure_agency_consumer(
    js: JetStreamContext,
    agency: str,
    *,
    backoff_s: tuple[float, ...] = AGENCY_BACKOFF_S,
    max_deliver: int = AGENCY_MAX_DELIVER,
    groups: Iterable[tuple[str, int]] = (),
    existing: Mapping[str, ConsumerConfig] | None = None,
) -> None:
    """Create or update an agency's two durable pull consumers on ISTMO_DELIVER (ADR 7):
    ``urgent-<agency>`` (FLASH, IMMEDIATE) and ``deliver-<agency>`` (PRIORITY, ROUTINE,
    and the subject an Istmo before ADR 7 delivered on; an existing one made by such an
    Istmo is updated in place and keeps its place in the queue).

    ``groups`` are the (group, epoch) pairs whose shared copies the agency reads (ADR 21;
    ``broker.store.groups.delivery_epochs_of``): the filter is the whole list, so a
    caller that leaves them out takes them away. An update keeps the consumers' place.

    ``backoff_s`` (the waits before each redelivery, the last repeating) and
    ``max_deliver`` default to the deploy defaults; fault tests shorten them.

    ``existing`` (``delivery_consumers``): a consumer it holds exactly as wanted
    (``same_consumer``) is left alone; the others are sent, as without it.

    Raises:
        EnvelopeError: ``agency`` is not a valid agency id.
        BusUnavailable: JetStream does not answer.
        ConfigError: JetStream refuses a consumer.
    """
    for config in _agency_consumer_configs(
        agency, groups=groups, backoff_s=backoff_s, max_deliver=max_deliver
    ):
        if existing is not None and same_consumer(config, existing.get(config.durable_name or "")):
            continue
        await _ensure_consumer(js, DELIVER_STREAM, config)


def _agency_consumer_configs(
    agency: str,
    *,
    groups: Iterable[tuple[str, int]] = (),
    backoff_s: tuple[float, ...] = AGENCY_BACKOFF_S,
    max_deliver: int = AGENCY_MAX_DELIVER,
) -> list[ConsumerConfig]:
    """The configurations of ``agency``'s two delivery consumers (``ensure_agency_consumer``
    says what each setting is for)."""
    shared = tuple(groups)
    return [
        ConsumerConfig(
            name=durable,
            durable_name=durable,
            filter_subjects=list(deliver_filter_subjects(durable, shared)),
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=backoff_s[0] if backoff_s else ACK_WAIT_S,
            max_deliver=max_deliver,
            backoff=list(backoff_s) or None,
        )
        for durable in deliver_durables(agency)
    ]


async def create_agency_consumers(
    nc: NATS, agency: str, *, groups: Iterable[tuple[str, int]] = (), timeout: float = 10
) -> None:
    """Create ``agency``'s two delivery consumers, leaving alone one that another writer
    made meanwhile, whatever its filter: JetStream's create action, never an update. The
    relay's group delivery (``broker.relay.group_delivery``) may have given it a group
    epoch this caller's ``groups``, read a moment earlier, lack. ``nc`` reaches the hub's
    JetStream API at its default prefix (``$JS.API``), as the stack's own connection does.

    Raises:
        BusUnavailable: JetStream does not answer.
        ConfigError: JetStream refuses a consumer for another reason.
    """
    for config in _agency_consumer_configs(agency, groups=groups):
        name = config.durable_name
        body = {"stream_name": DELIVER_STREAM, "config": config.as_dict(), "action": "create"}
        try:
            msg = await nc.request(
                f"$JS.API.CONSUMER.CREATE.{DELIVER_STREAM}.{name}",
                json.dumps(body).encode(),
                timeout=timeout,
            )
        except (NatsTimeoutError, NoRespondersError) as exc:
            raise bus_unavailable(f"creating consumer {name}", exc) from exc
        try:
            error = json.loads(msg.data).get("error")
        except (ValueError, AttributeError) as exc:
            raise ConfigError(f"JetStream's answer creating consumer {name} is not JSON") from exc
        if error and error.get("err_code") != _CONSUMER_EXISTS:
            raise ConfigError(
                f"JetStream refused consumer {name} on {DELIVER_STREAM}: "
                f"{error.get('description')} (err_code {error.get('err_code')})"
            )


async def delivery_consumers(js: JetStreamContext) -> dict[str, ConsumerConfig]:
    """Every consumer ISTMO_DELIVER has, by name, with its configuration: a page of 256
    per request (at 10,000 agencies, 79 requests where making sure of each consumer was
    20,000).

    Raises:
        BusUnavailable: JetStream does not answer.
    """
    found: dict[str, ConsumerConfig] = {}
    while True:
        try:
            page = await js.consumers_info(DELIVER_STREAM, offset=len(found))
        except (NatsTimeoutError, NoRespondersError, ServiceUnavailableError) as exc:
            raise bus_unavailable("listing the delivery consumers", exc) from exc
        fresh = {i.name: i.config for i in page if i.name not in found}
        if not fresh:
            return found
        found.update(fresh)


def same_consumer(wanted: ConsumerConfig, held: ConsumerConfig | None) -> bool:
    """Whether the consumer ``held`` (as JetStream answers it) is already ``wanted`` in
    everything ``ensure_agency_consumer`` sets; any doubt is a difference (then it is
    sent again, which JetStream applies in place)."""
    if held is None:
        return False
    subjects = held.filter_subjects or ([held.filter_subject] if held.filter_subject else [])
    return (
        held.durable_name == wanted.durable_name
        and sorted(subjects) == sorted(wanted.filter_subjects or ())
        and held.deliver_policy == wanted.deliver_policy
        and held.ack_policy == wanted.ack_policy
        and held.ack_wait == wanted.ack_wait
        and held.max_deliver == wanted.max_deliver
        and list(held.backoff or ()) == list(wanted.backoff or ())
    )


async def ensure_relay_consumers(js: JetStreamContext) -> None:
    """Create or update the relay's shared durables on ISTMO_INGEST and ISTMO_RECEIPTS.

    Raises:
        BusUnavailable: JetStream does not answer.
        ConfigError: JetStream refuses a consumer.
    """
    for stream, durable, subject_of in (
        (INGEST_STREAM, RELAY_INGEST_DURABLE, _gated_ingest),
        (RECEIPT_STREAM, RELAY_RECEIPT_DURABLE, _gated_receipt),
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
