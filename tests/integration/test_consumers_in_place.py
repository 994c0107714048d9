"""A restart leaves alone the delivery consumers JetStream holds exactly as wanted
(``broker.bus.streams.delivery_consumers``, ``ensure_agency_consumer(existing=...)``),
and still sends every one that is missing or differs. Counted by JetStream's own tally
of API requests."""

from __future__ import annotations

import pytest
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from broker.bus.streams import (
    AGENCY_BACKOFF_S,
    delivery_consumers,
    ensure_agency_consumer,
    same_consumer,
)
from schemas.subjects import DELIVER_STREAM, deliver_durables, deliver_filter_subjects
from tests.integration.test_nats_confinement import GT, JM, StackFactory

GROUPS = (("sica-police", 1),)


async def api_requests(js: JetStreamContext) -> int:
    """JetStream's count of API requests in this account, this question left out."""
    return int((await js.account_info()).api.total) + 1


async def test_consumers_as_wanted_are_left_alone_and_the_others_sent(
    nats_stack: StackFactory,
) -> None:
    stack = await nats_stack([GT, JM])
    nc = await stack.connect_relay()
    js = nc.jetstream()
    for agency in (GT, JM):
        await ensure_agency_consumer(js, agency)
    existing = await delivery_consumers(js)
    assert set(deliver_durables(GT)) | set(deliver_durables(JM)) <= set(existing)

    before = await api_requests(js)
    for agency in (GT, JM):
        await ensure_agency_consumer(js, agency, existing=existing)
    assert await api_requests(js) == before + 1  # nothing sent but the count

    # A change (a group to read) is sent, for both of the agency's consumers.
    before = await api_requests(js)
    await ensure_agency_consumer(js, GT, groups=GROUPS, existing=existing)
    assert await api_requests(js) == before + 2 + 1
    again = await delivery_consumers(js)
    for durable in deliver_durables(GT):
        assert sorted(again[durable].filter_subjects or ()) == sorted(
            deliver_filter_subjects(durable, GROUPS)
        )

    # A consumer gone is made again.
    await js.delete_consumer(DELIVER_STREAM, deliver_durables(JM)[0])
    gone = await delivery_consumers(js)
    before = await api_requests(js)
    await ensure_agency_consumer(js, JM, existing=gone)
    assert await api_requests(js) == before + 1 + 1
    assert deliver_durables(JM)[0] in await delivery_consumers(js)


async def test_every_consumer_is_listed_past_a_page(nats_stack: StackFactory) -> None:
    stack = await nats_stack([GT])
    nc = await stack.connect_relay()
    js = nc.jetstream()
    agencies = [f"s{i:03d}-police" for i in range(140)]  # 280 consumers: two pages
    for agency in agencies:
        await ensure_agency_consumer(js, agency)
    listed = await delivery_consumers(js)
    assert {d for a in agencies for d in deliver_durables(a)} <= set(listed)


def wanted(durable: str = "deliver-gt-police") -> ConsumerConfig:
    return ConsumerConfig(
        name=durable,
        durable_name=durable,
        filter_subjects=list(deliver_filter_subjects(durable, GROUPS)),
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=AGENCY_BACKOFF_S[0],
        max_deliver=10,
        backoff=list(AGENCY_BACKOFF_S),
    )


def changed(**fields: object) -> ConsumerConfig:
    config = wanted()
    for name, value in fields.items():
        setattr(config, name, value)
    return config


ALIKE = [
    ("the same", wanted()),
    ("subjects in another order", changed(filter_subjects=wanted().filter_subjects[::-1])),
]
UNLIKE = [
    ("none held", None),
    ("another name", changed(durable_name="urgent-gt-police")),
    ("a subject fewer", changed(filter_subjects=wanted().filter_subjects[:-1])),
    ("one filter subject, another", changed(filter_subjects=None, filter_subject="x.y")),
    ("deliver policy", changed(deliver_policy=DeliverPolicy.NEW)),
    ("ack policy", changed(ack_policy=AckPolicy.ALL)),
    ("ack wait", changed(ack_wait=31.0)),
    ("max deliver", changed(max_deliver=11)),
    ("backoff", changed(backoff=list(AGENCY_BACKOFF_S[:-1]))),
    ("no backoff", changed(backoff=None)),
]


@pytest.mark.parametrize(("name", "held"), ALIKE, ids=[c[0] for c in ALIKE])
def test_alike(name: str, held: ConsumerConfig) -> None:
    assert same_consumer(wanted(), held)


@pytest.mark.parametrize(("name", "held"), UNLIKE, ids=[c[0] for c in UNLIKE])
def test_unlike(name: str, held: ConsumerConfig | None) -> None:
    assert not same_consumer(wanted(), held)


def test_a_single_filter_subject_counts_as_the_list_of_one() -> None:
    one = ConsumerConfig(
        durable_name="d", filter_subject="a.b", deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT, ack_wait=30.0, max_deliver=10,
    )  # fmt: skip
    want = ConsumerConfig(
        durable_name="d", filter_subjects=["a.b"], deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT, ack_wait=30.0, max_deliver=10,
    )  # fmt: skip
    assert same_consumer(want, one)
