"""The desk access log's summaries for the broker (ADR 31): building one from the log
(counts, ranges, pseudonyms, the cut at 200 pairs), what the broker checks before it
records one, and that no content, bulletin id or analyst name reaches the signed bytes."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from broker.audit import events
from broker.relay.desk_summaries import Last, check_summary
from clients.archive import Archive
from clients.archive_keys import ArchiveSecret
from clients.desk_people import DeskPeople
from clients.desk_summary import (
    Draft,
    build_summary,
    log_id,
    pseudonym,
    send_summaries,
    summary_due,
)
from schemas.desk_summary import (
    GENESIS_MAC,
    DeskSummary,
    DeskSummaryReply,
    SummaryCount,
    check_consistent,
    encode_summary,
    parse_summary,
    sign_summary,
)
from schemas.errors import ConfigError, EnvelopeError, SignatureError
from schemas.keys import SigningKey
from schemas.spec_keys import NOW, signing_key
from tests.core.envelope_kit import agency_record

KEY = bytes(range(32))
BID = "00000000-0000-4000-8000-00000000c0de"
CANARY_NAME = "canary.analyst"
MAC = "ab" * 32
SKEW = 300
RC, OOO, OTHER = "rc-drugs", "summary_out_of_order", "ee" * 32


# ---------------------------------------------------------------------- building
def rows(*who_action: tuple[str, str], start: int = 1) -> list[tuple[int, int, str, str, bytes]]:
    return [
        (start + i, NOW + i, who, action, bytes([i % 256]) * 32)
        for i, (who, action) in enumerate(who_action)
    ]


def test_pseudonyms_are_stable_per_key_and_keep_the_administrator() -> None:
    ana = pseudonym(KEY, "ana")
    assert len(ana) == 12
    assert ana != "ana"
    assert pseudonym(KEY, "ana") == ana
    assert pseudonym(bytes(32), "ana") != ana  # another desk, another pseudonym
    assert pseudonym(KEY, "bob") != ana
    assert pseudonym(KEY, "-") == "-"
    assert pseudonym(KEY, "->ana") == "-"  # an account action is the administrator's
    assert pseudonym(KEY, "ana>bob") == ana
    assert len(log_id(KEY)) == 16
    assert log_id(KEY) != log_id(bytes(32))


@pytest.mark.parametrize(
    ("entries", "after", "want_counts", "want_last"),
    [
        ([("ana", "open")], 0, {("ana", "open"): 1}, 1),
        (
            [("ana", "open"), ("bob", "print"), ("ana", "open"), ("-", "sync-auto")],
            0,
            {("ana", "open"): 2, ("bob", "print"): 1, ("-", "sync-auto"): 1},
            4,
        ),
        ([("ana", "sign-in"), ("ana", "answer")], 41,
         {("ana", "sign-in"): 1, ("ana", "answer"): 1}, 43),
        ([("->ana", "account-added"), ("ana", "sign-in")], 0,
         {("-", "account-added"): 1, ("ana", "sign-in"): 1}, 2),
    ],
)  # fmt: skip
def test_a_summary_counts_each_analyst_s_actions(
    entries: list[tuple[str, str]],
    after: int,
    want_counts: dict[tuple[str, str], int],
    want_last: int,
) -> None:
    got = build_summary(rows(*entries, start=after + 1), key=KEY, after=after, prev_mac=MAC)
    assert got is not None
    want = {(pseudonym(KEY, who), action): n for (who, action), n in want_counts.items()}
    assert {(c.analyst, c.action): c.n for c in got.counts} == want
    assert [(c.analyst, c.action) for c in got.counts] == sorted(want)
    assert (got.first_seq, got.last_seq, got.prev_mac) == (after + 1, want_last, MAC)
    assert got.head_mac == (bytes([len(entries) - 1]) * 32).hex()
    assert (got.from_at, got.to_at) == (NOW, NOW + len(entries) - 1)


def test_nothing_to_summarise_and_a_gap() -> None:
    assert build_summary([], key=KEY, after=7, prev_mac=MAC) is None
    with pytest.raises(ValueError, match="skips"):
        build_summary(rows(("ana", "open"), start=9), key=KEY, after=7, prev_mac=MAC)


def test_a_summary_stops_before_too_many_pairs() -> None:
    entries = [(f"a{i}", "open") for i in range(5)]
    got = build_summary(rows(*entries), key=KEY, after=0, prev_mac=GENESIS_MAC, max_counts=3)
    assert got is not None
    assert (got.last_seq, len(got.counts)) == (3, 3)


@pytest.mark.parametrize(
    ("waiting", "last_at", "now", "due"),
    [
        (0, 0, NOW, False),
        (1, 0, NOW, True),
        (5, NOW - 60, NOW, False),
        (5, NOW - 86_400, NOW, True),
        (1000, NOW - 60, NOW, True),
    ],
)  # fmt: skip
def test_when_the_background_sync_sends_one(
    waiting: int, last_at: int, now: int, due: bool
) -> None:
    assert summary_due(waiting, last_at, now) is due


# ---------------------------------------------------------------------- the broker's checks
def signed(**change: Any) -> DeskSummary:
    fields: dict[str, Any] = {
        "agency": "rc-drugs",
        "log": "0f1e2d3c4b5a6978",
        "first_seq": 1,
        "last_seq": 3,
        "prev_mac": GENESIS_MAC,
        "head_mac": MAC,
        "from_at": NOW - 60,
        "to_at": NOW,
        "counts": (
            SummaryCount(analyst="3fa1c2d4e5b6", action="open", n=2),
            SummaryCount(analyst="3fa1c2d4e5b6", action="print", n=1),
        ),
        "issued_at": NOW,
        "key": signing_key("rc-drugs"),
    }
    return sign_summary(**(fields | change))


OLD_KEY = SigningKey.generate()


RECORDS = {
    "rc-drugs": agency_record(
        "rc-drugs", (signing_key("rc-drugs"), None), (OLD_KEY, NOW - 3600), now=NOW
    ),
    "gt-police": agency_record("gt-police", (signing_key("gt-police"), None), now=NOW),
}


def check(s: DeskSummary, *, caller: str = "rc-drugs", last: Last = None, now: int = NOW) -> str:
    return check_summary(s, caller=caller, records=RECORDS, now=now, max_skew_s=SKEW, last=last)


def tampered(s: DeskSummary, **change: Any) -> DeskSummary:
    return s.model_copy(update=change)  # the signature kept: it no longer covers the fields


NEXT = {"first_seq": 4, "last_seq": 4, "prev_mac": MAC, "head_mac": "cd" * 32,
        "counts": (SummaryCount(analyst="-", action="sync-auto", n=1),)}  # fmt: skip


@pytest.mark.parametrize(
    ("make", "caller", "last", "now", "code"),
    [
        (lambda: signed(), "rc-drugs", None, NOW, "new"),
        (lambda: signed(**NEXT), "rc-drugs", (1, 3, MAC), NOW, "new"),
        (lambda: signed(), "rc-drugs", (1, 3, MAC), NOW, "again"),  # the answer was lost
        (lambda: signed(), "gt-police", None, NOW, "originator_mismatch"),
        (lambda: signed(key=signing_key("gt-police")), "rc-drugs", None, NOW, "key_not_current"),
        (lambda: signed(key=OLD_KEY), "rc-drugs", None, NOW, "key_not_current"),  # revoked
        (lambda: tampered(signed(), head_mac=OTHER), RC, None, NOW, "signature_invalid"),
        (lambda: signed(), "rc-drugs", None, NOW + SKEW + 1, "timestamp_out_of_window"),
        (lambda: signed(), "rc-drugs", (1, 2, "ee" * 32), NOW, "summary_out_of_order"),  # overlaps
        (lambda: signed(**NEXT), "rc-drugs", None, NOW, "summary_out_of_order"),  # no first
        (lambda: signed(**NEXT | {"first_seq": 5, "last_seq": 5}), RC, (1, 3, MAC), NOW, OOO),
        (lambda: signed(**NEXT | {"prev_mac": OTHER}), RC, (1, 3, MAC), NOW, OOO),  # a fork
    ],
)  # fmt: skip
def test_what_the_broker_records_or_refuses(
    make: Callable[[], DeskSummary], caller: str, last: Last, now: int, code: str
) -> None:
    s = make()
    if code in ("new", "again"):
        assert check(s, caller=caller, last=last, now=now) == code
        return
    with pytest.raises((EnvelopeError, SignatureError)) as got:
        check(s, caller=caller, last=last, now=now)
    assert got.value.code == code


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"last_seq": 4}, "add up"),
        ({"counts": (SummaryCount(analyst="-", action="open", n=2),)}, "add up"),
        ({"counts": tuple(reversed(signed().counts))}, "sorted"),
        ({"prev_mac": MAC}, "genesis"),
        ({"first_seq": 2, "last_seq": 4}, "genesis"),
        ({"from_at": NOW + 1, "to_at": NOW}, "backwards"),
    ],
)
def test_a_summary_that_does_not_add_up_is_not_signed(change: dict[str, Any], words: str) -> None:
    with pytest.raises((EnvelopeError, ValueError), match=words):
        signed(**change)


def test_the_wire_form_is_bounded_and_strict() -> None:
    s = signed()
    assert parse_summary(encode_summary(s)) == s
    with pytest.raises(EnvelopeError) as got:
        parse_summary(encode_summary(s)[:-1] + b',"x":1}')
    assert got.value.code == "malformed"
    with pytest.raises(EnvelopeError) as big:
        parse_summary(b" " * (25 * 1024) + encode_summary(s))
    assert big.value.code == "oversized"
    with pytest.raises(EnvelopeError):
        check_consistent(s.model_copy(update={"last_seq": 2}))


def test_the_audit_event_holds_every_signed_field_and_no_more() -> None:
    s = signed()
    e = events.desk_summary(s, at=NOW * 1000)
    assert (e.type, e.actor, e.subject) == (
        "desk.summary",
        "rc-drugs",
        "desk:rc-drugs:0f1e2d3c4b5a6978",
    )
    assert e.event_id == "desk.summary:rc-drugs:0f1e2d3c4b5a6978:1"
    assert e.data["counts"] == ("3fa1c2d4e5b6:open=2", "3fa1c2d4e5b6:print=1")
    assert (e.data["entries"], e.data["head_mac"], e.data["sig"]) == (3, MAC, s.sig)
    assert len(e.data) <= 32


# ---------------------------------------------------------------------- on a real archive
@pytest.fixture
def people(tmp_path: Path):
    a = Archive.open(tmp_path / "a.sqlite", "rc-drugs", lambda: ArchiveSecret("key-file", KEY))
    p = DeskPeople(a.path, a.subkey("desk-log"))
    yield p
    p.close()
    a.close()


def test_no_name_bulletin_or_search_word_reaches_the_signed_bytes(people: DeskPeople) -> None:
    people.add(CANARY_NAME, "reader", "correct horse battery", now=NOW)
    people.record(CANARY_NAME, "sign-in", None, now=NOW)
    people.record(CANARY_NAME, "open", BID, now=NOW + 1)
    people.record(CANARY_NAME, "print", BID, now=NOW + 2)
    sent: list[bytes] = []

    async def send(log: str, d: Draft) -> DeskSummaryReply:
        s = signed(**{**dataclasses.asdict(d), "log": log, "counts": d.counts})
        sent.append(encode_summary(s))
        return DeskSummaryReply(log=log, last_seq=d.last_seq, recorded_at=NOW, again=False)

    assert asyncio.run(send_summaries(people, send)) == 1
    (raw,) = sent
    for secret in (CANARY_NAME, "canary", BID, BID.replace("-", "")):
        assert secret.encode() not in raw
    s = parse_summary(raw)
    assert check(s) == "new"
    assert (s.first_seq, s.last_seq, s.head_mac) == (1, 4, people.mac_at(4))
    assert people.summarised()[:2] == (4, people.mac_at(4))
    assert people.waiting() == 0
    # Nothing new: nothing sent; one more entry: the next summary follows on.
    assert asyncio.run(send_summaries(people, send)) == 0
    people.record(CANARY_NAME, "sign-out", None, now=NOW + 3)
    sent.clear()
    assert asyncio.run(send_summaries(people, send)) == 1
    nxt = parse_summary(sent[0])
    assert (nxt.first_seq, nxt.prev_mac) == (5, s.head_mac)
    assert check(nxt, last=(s.first_seq, s.last_seq, s.head_mac)) == "new"


def test_a_new_chain_starts_again_from_entry_one_under_another_log_id(
    people: DeskPeople,
) -> None:
    people.record("ana", "open", BID, now=NOW)
    logs: list[str] = []
    sent: list[DeskSummary] = []

    async def send(log: str, d: Draft) -> DeskSummaryReply:
        logs.append(log)
        sent.append(signed(**{**dataclasses.asdict(d), "log": log, "counts": d.counts}))
        return DeskSummaryReply(log=log, last_seq=d.last_seq, recorded_at=NOW, again=False)

    assert asyncio.run(send_summaries(people, send)) == 1
    assert people.summary_chain() == 0
    assert people.new_summary_chain() == 1
    assert (people.summarised(), people.waiting()) == ((0, GENESIS_MAC, 0), 1)
    assert asyncio.run(send_summaries(people, send)) == 1
    assert logs == [log_id(people.log_key), log_id(people.log_key, 1)]
    assert logs[0] != logs[1]
    assert check(sent[1]) == "new"  # the broker holds no summary of the new log yet
    assert (sent[1].first_seq, sent[1].head_mac) == (1, sent[0].head_mac)


def test_a_broken_log_is_not_summarised(people: DeskPeople) -> None:
    people.record("ana", "open", BID, now=NOW)
    people.record("ana", "print", BID, now=NOW)
    people._db.execute("UPDATE desk_log SET action = 'flag' WHERE seq = 1")

    async def send(log: str, d: Draft) -> DeskSummaryReply:
        raise AssertionError("nothing is sent")

    with pytest.raises(ConfigError, match="not whole"):
        asyncio.run(send_summaries(people, send))
