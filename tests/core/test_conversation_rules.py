"""The pure rules of replies and requests for information (ADR 16), as tables: who a
reply may reach, the relay's checks on a reply and an RFI, where an RFI stands, and what
the SDK and the command line accept."""

from __future__ import annotations

import argparse

import pytest

from broker.policy.model import Decision
from broker.relay.replies import Answered, audience_of, check_reply, check_rfi, releasable_within
from clients.conversation_commands import due
from clients.conversations import check_due, reply_labels, split_addressees
from clients.results import ReplyContext
from schemas.envelope import Header
from schemas.errors import EnvelopeError
from schemas.labels import Classification, Labels, Precedence, Tlp
from schemas.rfi import DEFAULT_DUE_S, MAX_DUE_S, default_due, rfi_state

T0 = 1_780_000_000
ORIGINAL = "6f1c1a8e-3c1e-4a55-9d55-6c0e0b7d2a10"
REPLY = "7a2d2b9f-4d2f-4b66-8e66-7d1f1c8e3b21"
LABELS = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("SICA",),
)
PARENTS = {"SICA": (), "CARICOM": (), "OECS": ("CARICOM",), "GT": ("SICA",),
           "BZ": ("SICA", "CARICOM"), "DM": ("OECS",), "JM": ("CARICOM",)}  # fmt: skip


def answered(*, reply_all: bool = False, thread: str = ORIGINAL) -> Answered:
    return Answered(
        bulletin_id=ORIGINAL,
        originator="gt-police",
        labels=LABELS,
        routed=frozenset({"bz-police", "bz-justice"}),
        thread=thread,
        reply_all=reply_all,
        releasable_within=releasable_within(LABELS.rel_to, PARENTS),
    )


def header(sender: str = "bz-police", **kw: object) -> Header:
    fields: dict[str, object] = {
        "v": 1, "bulletin_id": REPLY, "originator": sender, "created_at": T0,
        "labels": LABELS, "recipients": ("gt-police",), "aead": "AES-256-GCM",
        "key_commitment": "", "signer": "sig-" + "0" * 32,
        "in_reply_to": ORIGINAL, "thread": ORIGINAL,
    }  # fmt: skip
    fields.update(kw)
    return Header.model_validate(fields)


@pytest.mark.parametrize(
    ("codes", "within"),
    [
        (("SICA",), ("BZ", "GT", "SICA")),
        (("CARICOM",), ("BZ", "CARICOM", "DM", "JM", "OECS")),  # a state of OECS, at depth 2
        (("GT",), ("GT",)),
        (("GT", "JM"), ("GT", "JM")),
    ],
)
def test_releasable_within_follows_membership(
    codes: tuple[str, ...], within: tuple[str, ...]
) -> None:
    assert releasable_within(codes, PARENTS) == within


@pytest.mark.parametrize(
    ("reply_all", "replier", "audience"),
    [
        (False, "bz-police", ("gt-police",)),
        (True, "bz-police", ("bz-justice", "gt-police")),
        (False, "gt-police", ("bz-justice", "bz-police")),  # the originator follows up
        (True, "gt-police", ("bz-justice", "bz-police")),
    ],
)
def test_who_a_reply_may_reach(reply_all: bool, replier: str, audience: tuple[str, ...]) -> None:
    assert audience_of(answered(reply_all=reply_all), replier) == audience


@pytest.mark.parametrize(
    ("sender", "recorded", "thread", "code"),
    [
        ("bz-police", True, ORIGINAL, None),
        ("gt-police", True, ORIGINAL, None),  # its own bulletin
        ("jm-police", True, ORIGINAL, "unknown_in_reply_to"),  # never routed it
        ("bz-police", False, ORIGINAL, "unknown_in_reply_to"),  # no such bulletin
        ("bz-police", True, REPLY[:-1] + "0", "wrong_thread"),
    ],
)
def test_the_relay_checks_a_reply(
    sender: str, recorded: bool, thread: str, code: str | None
) -> None:
    h = header(sender, thread=thread)
    if code is None:
        facts = check_reply(h, answered() if recorded else None, sender)
        assert facts is not None
        assert facts.labels == LABELS
        return
    with pytest.raises(EnvelopeError) as refused:
        check_reply(h, answered() if recorded else None, sender)
    assert refused.value.code == code
    assert ORIGINAL not in str(refused.value)  # never echoes the id


def test_a_bulletin_that_answers_nothing_is_not_checked() -> None:
    h = header(in_reply_to=None, thread=None)
    assert check_reply(h, None, "bz-police") is None


RC = ("rc-drugs",)


def decision(agency: str, allowed: bool, *ids: str) -> Decision:
    return Decision(agency, "receive", allowed, ids, tuple(f"why {i}" for i in ids), "p", "d")


@pytest.mark.parametrize(
    ("due_in", "named", "decisions", "routed", "code"),
    [
        (3600, RC, [decision("rc-drugs", True, "grant.named-recipient")], RC, None),
        (MAX_DUE_S + 1, (), [], RC, "bad_due"),
        (3600, RC, [decision("rc-drugs", False, "guard.clearance")], (), "rfi_addressee_denied"),
        (3600, (), [], (), "rfi_no_addressee"),
    ],
)  # fmt: skip
def test_the_relay_checks_an_rfi(
    due_in: int, named: tuple[str, ...], decisions: list[Decision], routed: tuple[str, ...],
    code: str | None,
) -> None:  # fmt: skip
    h = header(
        in_reply_to=None, thread=None, rfi_due=T0 + due_in,
        labels=LABELS.model_copy(update={"named": named}),
    )  # fmt: skip
    if code is None:
        check_rfi(h, decisions, routed)
        return
    with pytest.raises(EnvelopeError) as refused:
        check_rfi(h, decisions, routed)
    assert refused.value.code == code
    if code == "rfi_addressee_denied":
        assert "rc-drugs" in str(refused.value)
        assert "guard.clearance: why guard.clearance" in str(refused.value)


@pytest.mark.parametrize(
    ("now", "acked", "answered_", "closed", "state"),
    [
        (T0, False, False, False, "open"),
        (T0, True, False, False, "acknowledged"),
        (T0 + 100, True, False, False, "overdue"),
        (T0 + 100, False, False, False, "overdue"),
        (T0 + 100, True, True, False, "answered"),
        (T0 + 100, True, True, True, "closed"),
        (T0, False, False, True, "closed"),
    ],
)
def test_where_an_rfi_stands(
    now: int, acked: bool, answered_: bool, closed: bool, state: str
) -> None:
    got = rfi_state(due_at=T0 + 100, now=now, acknowledged=acked, answered=answered_, closed=closed)
    assert got == state


def test_default_deadlines_by_precedence() -> None:
    assert [default_due(p, T0) - T0 for p in Precedence] == [600, 1800, 10800, 43200]
    assert set(DEFAULT_DUE_S) == set(Precedence)


def test_a_header_names_both_link_and_thread_or_neither() -> None:
    with pytest.raises(ValueError, match="both"):
        header(thread=None)
    with pytest.raises(ValueError, match="answer itself"):
        header(in_reply_to=REPLY, thread=REPLY)
    with pytest.raises(ValueError, match="rfi_due"):
        header(rfi_due=T0)


def test_a_reply_names_the_originator_it_answers() -> None:
    context = ReplyContext(ORIGINAL, "gt-police", LABELS, ORIGINAL, False, None, ("gt-police",))
    assert reply_labels(context, "bz-police").named == ("gt-police",)
    assert reply_labels(context, "gt-police").named == ()


@pytest.mark.parametrize(
    ("to", "split"),
    [
        (["rc-drugs", "SICA", "gt-police"], (("rc-drugs", "gt-police"), ("SICA",))),
        (["GT", "GT"], ((), ("GT",))),
    ],
)
def test_addressees_are_agencies_or_codes(to: list[str], split: object) -> None:
    assert split_addressees(to) == split


@pytest.mark.parametrize("bad", [[], ["Gt-police"], ["x"], ["gt police"]])
def test_bad_addressees_are_refused(bad: list[str]) -> None:
    with pytest.raises(EnvelopeError):
        split_addressees(bad)


@pytest.mark.parametrize(
    ("due_at", "ok"), [(T0 + 1, True), (T0, False), (T0 - 5, False), (T0 + MAX_DUE_S + 1, False)]
)
def test_a_deadline_is_to_come_and_near(due_at: int, ok: bool) -> None:
    if ok:
        check_due(due_at, now=T0)
        return
    with pytest.raises(EnvelopeError) as refused:
        check_due(due_at, now=T0)
    assert refused.value.code == "bad_due"


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("30m", ("in", 1800)),
        ("2h", ("in", 7200)),
        ("2026-12-08T10:00Z", ("at", 1796724000)),
        ("2026-12-08T10:00:30+00:00", ("at", 1796724030)),
    ],
)
def test_due_flag(text: str, parsed: tuple[str, int]) -> None:
    assert due(text) == parsed


@pytest.mark.parametrize("bad", ["yesterday", "-5m", "2026-12-08T10:00+02:00", "2026-13-08T10:00Z"])
def test_bad_due_flag(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        due(bad)
