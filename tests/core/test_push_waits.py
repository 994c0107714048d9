"""Who waits for a pushed bulletin, and the framing of pushes (ADR 38, ADR 43): pure tables."""

from __future__ import annotations

import pytest

from broker.relay.push import (
    PushWaits,
    answers_by_agency,
    parse_bundle,
    push_bundles,
)
from clients.queues import _pushed as pushed_answer
from schemas.errors import EnvelopeError
from schemas.labels import Precedence
from schemas.push import PushFrame, decode_push_frames, encode_push_frames, frame_size


def test_one_wait_per_agency_the_newer_replaces_the_older() -> None:
    waits = PushWaits()
    assert waits.add("gt-police", "r1", until=10) is None
    assert waits.add("gt-police", "r2", until=20) == "r1"
    assert waits.add("jm-police", "r3", until=20) is None
    assert len(waits) == 2
    assert waits.take(["gt-police", "sv-police"]) == [("gt-police", "r2")]
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


def test_frames_round_trip_with_and_without_recipients() -> None:
    # An envelope is JSON, not always on one line: a frame says its length.
    frames = [
        PushFrame(Precedence.FLASH, b'{"v":1}\nmore', ("gt-police", "jm-police")),
        PushFrame(Precedence.ROUTINE, b"{}", ("sv-police",)),
    ]
    assert decode_push_frames(encode_push_frames(frames), routed=True) == frames
    bare = [PushFrame(f.precedence, f.envelope) for f in frames]
    data = encode_push_frames(bare)
    assert decode_push_frames(data, count=2) == bare
    assert len(data) == sum(frame_size(f) for f in bare)
    assert len(encode_push_frames(frames)) == sum(frame_size(f) for f in frames)


@pytest.mark.parametrize(
    ("data", "count", "routed"),
    [
        (b"FLASH 2\n{}", 2, False),  # fewer frames than the header says
        (b"FLASH 3\n{}", None, False),  # runs past the end
        (b"FLASH 0\n", None, False),
        (b"URGENT 2\n{}", None, False),
        (b"FLASH -2\n{}", None, False),
        (b"FLASH 2 gt-police\n{}", None, False),  # recipients where none belong
        (b"FLASH 2\n{}", None, True),  # none where they must be
        (b"FLASH 2 GT POLICE\n{}", None, True),
        (b"FLASH 2 gt-police,,x\n{}", None, True),
        (b"FLASH 2{}", None, False),
        (b"FLASH 2\n{}garbage", None, False),
        (b"FLASH " + b"9" * 40 + b"\n{}", None, False),
    ],
)
def test_malformed_frames_are_refused(data: bytes, count: int | None, routed: bool) -> None:
    with pytest.raises(EnvelopeError):
        decode_push_frames(data, count=count, routed=routed)


def test_a_bundle_is_split_to_fit_and_an_oversized_push_is_left_to_the_queue() -> None:
    small = [PushFrame(Precedence.ROUTINE, b"x" * 100, (f"ag-{i:03d}",)) for i in range(5)]
    huge = PushFrame(Precedence.FLASH, b"y" * 1000, ("gt-police",))
    bundles = push_bundles([small[0], huge, *small[1:]], limit=300)
    assert [len(parse_bundle(b)) for b in bundles] == [2, 2, 1]
    assert [f for b in bundles for f in parse_bundle(b)] == small
    assert push_bundles([huge], limit=300) == []
    with pytest.raises(EnvelopeError):
        parse_bundle(b"")


def test_each_waiting_agency_gets_its_own_pushes_in_order_up_to_the_limit() -> None:
    a = PushFrame(Precedence.FLASH, b"a" * 50, ("gt-police", "jm-police"))
    b = PushFrame(Precedence.ROUTINE, b"b" * 50, ("gt-police", "sv-police"))
    c = PushFrame(Precedence.ROUTINE, b"c" * 50, ("gt-police",))
    bare = {x.envelope[:1]: PushFrame(x.precedence, x.envelope) for x in (a, b, c)}
    mine = answers_by_agency([a, b, c], limit=10_000, only={"gt-police", "sv-police"})
    assert mine == {"gt-police": [bare[b"a"], bare[b"b"], bare[b"c"]], "sv-police": [bare[b"b"]]}
    assert mine["gt-police"][1] is mine["sv-police"][0]  # one object: encoded once for both
    # Two frames fit; the third is queued only.
    tight = answers_by_agency(
        [a, b, c], limit=frame_size(bare[b"a"]) + frame_size(bare[b"b"]), only={"gt-police"}
    )
    assert tight == {"gt-police": [bare[b"a"], bare[b"b"]]}


TWO = encode_push_frames(
    [PushFrame(Precedence.FLASH, b"{1}"), PushFrame(Precedence.ROUTINE, b"{2}")]
)


@pytest.mark.parametrize(
    ("data", "header", "expected"),
    [
        # A relay before ADR 43: one envelope, and only urgent ones were pushed.
        (b"{1}", None, [(Precedence.FLASH, b"{1}")]),
        (TWO, "2", [(Precedence.FLASH, b"{1}"), (Precedence.ROUTINE, b"{2}")]),
        (TWO, "3", []),  # not what the header says: dropped, the queue has them
        (TWO, "x", []),
        (TWO, "9" * 5000, []),  # no int of 5,000 digits is even tried
        (b"FLASH 9\n{1}", "1", []),
    ],
)
def test_the_sdk_reads_a_push_answer_or_drops_it(
    data: bytes, header: str | None, expected: list[tuple[Precedence, bytes]]
) -> None:
    got = pushed_answer(data, "_INBOX.x.p1", header)
    assert [(p.precedence, p.data) for p in got] == expected
    assert all(p.subject == "_INBOX.x.p1" for p in got)
