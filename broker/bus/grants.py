"""What one agency may reach on NATS, whichever way nats-server learns it (pure).

An agency reaches account ISTMO only through services ISTMO exports to it: its own ingest
and receipt subjects, ``MSG.NEXT`` and ``$JS.ACK`` of each of its own two delivery
consumers (ADR 7) and ``istmo.api.<agency>.>``; and it may listen to its inbox prefix and
to the relays' announcements, a stream ISTMO exports to every agency (ADR 0009).

Two renderings use these lists: ``broker.bus.natsconf`` writes them into a config file
(config mode, ADR 0002), ``broker.bus.natsauth`` into account JWTs (operator mode, ADR
0013). ``RELAY_SERVICE_EXPORTS`` are the wildcard exports of ISTMO's JWT that cover every
agency's services at once, so that JWT never changes when an agency comes or goes.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.subjects import (
    ANNOUNCE_SUBJECT,
    API_OPS,
    DELIVER_STREAM,
    api_subject,
    deliver_ack_subjects,
    deliver_durables,
    deliver_next_subject,
    inbox_prefix,
    ingest_subject,
    receipt_subject,
)

__all__ = [
    "RELAY_SERVICE_EXPORTS",
    "RELAY_STREAM_EXPORTS",
    "Service",
    "agency_publish_subjects",
    "agency_services",
    "agency_subscribe_subjects",
]


@dataclass(frozen=True)
class Service:
    """One subject account ISTMO answers on for an agency."""

    subject: str
    streamed: bool = False  # response_type: stream (many responses to one request)


def agency_services(agency: str) -> tuple[Service, ...]:
    """The services account ISTMO exports to one agency, in a fixed order."""
    # schemas.subjects names the operations, not the wildcard over them.
    api_prefix = api_subject(agency, API_OPS[0]).rsplit(".", 1)[0]
    pulls: list[Service] = []
    for durable in deliver_durables(agency):  # urgent-<agency>, deliver-<agency>
        # A fetch is one request answered by many messages and status messages.
        pulls.append(Service(deliver_next_subject(durable), streamed=True))
        # ack, nak, in_progress and term; ack_sync expects one answer.
        pulls.append(Service(deliver_ack_subjects(durable)))
    return (
        Service(ingest_subject(agency)),
        Service(receipt_subject(agency)),
        *pulls,
        Service(f"{api_prefix}.>"),
    )


def agency_publish_subjects(agency: str) -> tuple[str, ...]:
    """The exact publish allow-list of an agency's NATS user."""
    return tuple(service.subject for service in agency_services(agency))


def agency_subscribe_subjects(agency: str) -> tuple[str, ...]:
    """The subscribe allow-list of an agency's NATS user: its inbox and the announcements."""
    return (inbox_prefix(agency) + ".>", ANNOUNCE_SUBJECT)


# Every agency's services, one wildcard each, as account ISTMO exports them in operator mode
# (each agency's account JWT imports its own subjects from them).
# tests/core/test_nats_claims.py checks that each service of any agency falls in exactly one.
RELAY_SERVICE_EXPORTS: tuple[Service, ...] = (
    Service("istmo.ingest.*"),
    Service("istmo.receipt.*"),
    Service(f"$JS.API.CONSUMER.MSG.NEXT.{DELIVER_STREAM}.*", streamed=True),
    Service(f"$JS.ACK.{DELIVER_STREAM}.*.>"),
    Service("istmo.api.*.>"),
)
RELAY_STREAM_EXPORTS: tuple[str, ...] = (ANNOUNCE_SUBJECT,)
