"""The delivery contract of ADR 7: per-precedence subjects, each agency's two consumers, and
reading an agency back from either name (pure; ``schemas.subjects``)."""

from __future__ import annotations

import pytest

from broker.bus.natsconf import agency_publish_subjects
from schemas.errors import EnvelopeError
from schemas.labels import Precedence
from schemas.subjects import (
    agency_of_deliver_durable,
    agency_of_delivery,
    deliver_durable,
    deliver_durables,
    deliver_filter_subjects,
    deliver_subject,
    delivered_bulletin,
    delivery_msg_id,
    group_copy_id,
    is_delivery_to,
    legacy_deliver_subject,
    precedence_of_delivery,
    urgent_durable,
)


@pytest.mark.parametrize(
    ("precedence", "subject", "durable"),
    [
        (Precedence.FLASH, "istmo.deliver.gt-police.flash", "urgent-gt-police"),
        (Precedence.IMMEDIATE, "istmo.deliver.gt-police.immediate", "urgent-gt-police"),
        (Precedence.PRIORITY, "istmo.deliver.gt-police.priority", "deliver-gt-police"),
        (Precedence.ROUTINE, "istmo.deliver.gt-police.routine", "deliver-gt-police"),
    ],
)
def test_each_precedence_has_a_subject_read_by_exactly_one_consumer(
    precedence: Precedence, subject: str, durable: str
) -> None:
    assert deliver_subject("gt-police", precedence) == subject
    assert precedence_of_delivery(subject) is precedence
    assert agency_of_delivery(subject) == "gt-police"
    readers = [d for d in deliver_durables("gt-police") if subject in deliver_filter_subjects(d)]
    assert readers == [durable]


def test_the_urgent_consumer_is_drained_first_and_the_other_reads_the_legacy_subject() -> None:
    assert deliver_durables("gt-police") == ("urgent-gt-police", "deliver-gt-police")
    legacy = legacy_deliver_subject("gt-police")
    assert legacy == "istmo.deliver.gt-police"
    assert deliver_filter_subjects("deliver-gt-police")[-1] == legacy
    assert legacy not in deliver_filter_subjects("urgent-gt-police")
    assert precedence_of_delivery(legacy) is None
    assert agency_of_delivery(legacy) == "gt-police"
    assert is_delivery_to(legacy, "gt-police")
    assert not is_delivery_to(legacy, "gtx")
    assert not is_delivery_to("istmo.deliver.gt-police.urgent", "gt-police")


@pytest.mark.parametrize("agency", ["gt-police", "urgent-gtx", "deliver-gtx", "abc"])
def test_no_agency_id_names_another_agencys_consumer(agency: str) -> None:
    # "deliver-urgent-gtx" would be both gtx's urgent consumer and agency urgent-gtx's
    # other one; the two prefixes differ before their first '-', so each name has one owner.
    for durable in (urgent_durable(agency), deliver_durable(agency)):
        assert agency_of_deliver_durable(durable) == agency
    names = {
        d for a in ("gtx", "urgent-gtx", "deliver-gtx", "gtx-urgent") for d in deliver_durables(a)
    }
    assert len(names) == 8


@pytest.mark.parametrize(
    "name", ["relay-ingest", "deliver-", "urgent-", "deliver-Bad_Id", "urgent-gt.x", "gt-police"]
)
def test_other_consumer_names_have_no_agency(name: str) -> None:
    with pytest.raises(EnvelopeError):
        agency_of_deliver_durable(name)


@pytest.mark.parametrize(
    "subject",
    [
        "istmo.deliver",
        "istmo.ingest.gt-police",
        "istmo.deliver.gt-police.FLASH",
        "istmo.deliver.gt-police.urgent",
        "istmo.deliver.gt-police.flash.x",
        "istmo.deliver.*.flash",
    ],
)
def test_other_subjects_are_no_delivery(subject: str) -> None:
    with pytest.raises(EnvelopeError):
        agency_of_delivery(subject)


def test_an_agency_may_pull_and_ack_on_its_own_two_consumers_only() -> None:
    pulls = [s for s in agency_publish_subjects("gt-police") if s.startswith("$JS.")]
    assert pulls == [
        "$JS.API.CONSUMER.MSG.NEXT.ISTMO_DELIVER.urgent-gt-police",
        "$JS.ACK.ISTMO_DELIVER.urgent-gt-police.>",
        "$JS.API.CONSUMER.MSG.NEXT.ISTMO_DELIVER.deliver-gt-police",
        "$JS.ACK.ISTMO_DELIVER.deliver-gt-police.>",
    ]


BID = "54d35fe7-7eee-4be5-84f4-5f653d3dbc86"


@pytest.mark.parametrize(
    ("msg_id", "agency", "named"),
    [
        (delivery_msg_id(BID, "ni-police"), "ni-police", BID),
        # Another agency's copy, a group's copy, a republished copy, no id: none named.
        (delivery_msg_id(BID, "ni-police"), "gt-police", None),
        (group_copy_id(BID, "sica", 3), "ni-police", None),
        (f"{delivery_msg_id(BID, 'ni-police')}:r17", "ni-police", None),
        (None, "ni-police", None),
        ("", "ni-police", None),
        ("ni-police", "ni-police", None),
        (":ni-police", "ni-police", None),
    ],
)
def test_a_delivery_id_names_its_bulletin_only_to_its_recipient(
    msg_id: str | None, agency: str, named: str | None
) -> None:
    assert delivered_bulletin(msg_id, agency) == named
