"""Who waits for a pushed bulletin, and the relays' push message (ADR 38): pure tables."""

from __future__ import annotations

import pytest

from broker.relay.push import PushWaits, parse_push, push_message
from schemas.errors import EnvelopeError


def test_one_wait_per_agency_the_newer_replaces_the_older() -> None:
    waits = PushWaits()
    assert waits.add("gt-police", "r1", until=10) is None
    assert waits.add("gt-police", "r2", until=20) == "r1"
    assert waits.add("jm-police", "r3", until=20) is None
    assert len(waits) == 2
    assert waits.take(["gt-police", "sv-police"]) == ["r2"]
    assert waits.take(["gt-police"]) == []  # taken: a second push waits for a new wait
    assert len(waits) == 1


def test_waits_that_ran_out_are_given_back_once() -> None:
    waits = PushWaits()
    waits.add("gt-police", "r1", until=5)
    waits.add("jm-police", "r2", until=15)
    assert waits.expired(4.9) == []
    assert waits.expired(5) == ["r1"]
    assert waits.expired(100) == ["r2"]
    assert waits.expired(1000) == []


def test_a_push_message_round_trips() -> None:
    data = push_message(["gt-police", "jm-police"], b'{"v":1}\nmore')
    assert parse_push(data) == (["gt-police", "jm-police"], b'{"v":1}\nmore')


@pytest.mark.parametrize(
    "data",
    [b"", b"gt-police", b"gt-police\n", b"\n{}", b"GT POLICE\n{}", b"gt-police,,x\n{}"],
)
def test_a_malformed_push_message_is_refused(data: bytes) -> None:
    with pytest.raises(EnvelopeError):
        parse_push(data)
