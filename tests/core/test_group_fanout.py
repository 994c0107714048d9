"""Group delivery's pure parts (ADR 21): the group subjects, and which copies the relay
stores for a bulletin (``broker.relay.fanout``)."""

from __future__ import annotations

import pytest

from broker.relay.fanout import Fanout, fan_out
from schemas.errors import EnvelopeError
from schemas.labels import Precedence
from schemas.subjects import (
    deliver_filter_subjects,
    group_copy_id,
    group_deliver_subject,
    group_delivery_of,
    group_filter_subjects,
    is_delivery_to,
    is_group_delivery,
    precedence_of_delivery,
)

BID = "6f1c2a9e-1b7d-4c1e-9a3b-0d5e8f7a6b4c"


@pytest.mark.parametrize(
    ("group", "epoch", "precedence", "subject"),
    [
        ("SICA-drugs", 1, Precedence.FLASH, "istmo.deliver.group.SICA-drugs.1.flash"),
        ("sica.police", 7, Precedence.ROUTINE, "istmo.deliver.group.sica~police.7.routine"),
        ("a:b_c", 2**40, Precedence.IMMEDIATE, f"istmo.deliver.group.a:b_c.{2**40}.immediate"),
    ],
)
def test_a_group_subject_names_group_epoch_and_precedence_one_to_one(
    group: str, epoch: int, precedence: Precedence, subject: str
) -> None:
    assert group_deliver_subject(group, epoch, precedence) == subject
    assert group_delivery_of(subject) == (group, epoch, precedence)
    assert precedence_of_delivery(subject) == precedence
    assert is_group_delivery(subject)
    # Six tokens: never an agency's delivery subject, whatever the agency is called.
    assert not is_delivery_to(subject, "group")


@pytest.mark.parametrize(
    ("group", "epoch"),
    [("", 1), ("a b", 1), ("a*", 1), ("a>", 1), ("x" * 49, 1), ("ok", 0), ("ok", 2**40 + 1)],
)
def test_a_bad_group_or_epoch_makes_no_subject(group: str, epoch: int) -> None:
    with pytest.raises(EnvelopeError):
        group_deliver_subject(group, epoch, Precedence.FLASH)


@pytest.mark.parametrize(
    "subject",
    [
        "istmo.deliver.group.G.1",
        "istmo.deliver.group.G.x.flash",
        "istmo.deliver.group.G.01.flash",  # not the one spelling of epoch 1
        "istmo.deliver.group.G.1.FLASH",
        "istmo.deliver.gt-police.flash",
        "istmo.deliver.group.~G.1.flash",  # would be ".G": not a group name
    ],
)
def test_what_is_not_a_group_subject_is_refused(subject: str) -> None:
    assert not is_group_delivery(subject)


def test_each_consumer_reads_its_own_precedences_of_each_group_epoch() -> None:
    groups = [("B", 2), ("A", 1), ("A", 1)]
    assert group_filter_subjects("urgent-gt-police", groups) == (
        "istmo.deliver.group.A.1.flash",
        "istmo.deliver.group.A.1.immediate",
        "istmo.deliver.group.B.2.flash",
        "istmo.deliver.group.B.2.immediate",
    )
    normal = deliver_filter_subjects("deliver-gt-police", groups)
    assert normal[:3] == (
        "istmo.deliver.gt-police.priority",
        "istmo.deliver.gt-police.routine",
        "istmo.deliver.gt-police",
    )
    assert normal[3:] == (
        "istmo.deliver.group.A.1.priority",
        "istmo.deliver.group.A.1.routine",
        "istmo.deliver.group.B.2.priority",
        "istmo.deliver.group.B.2.routine",
    )
    assert deliver_filter_subjects("deliver-gt-police", ()) == normal[:3]


def test_a_group_copy_id_is_not_a_recipient_copy_id() -> None:
    assert group_copy_id(BID, "sica.police", 3) == f"{BID}:group:sica~police:3"


G1, G2 = ("G1", 1), ("G2", 4)
READY = {G1: frozenset({"a", "b", "c"}), G2: frozenset({"c", "d"})}


@pytest.mark.parametrize(
    ("deliver_to", "originator", "groups", "ready", "want"),
    [
        # No groups, or none ready: one copy each, as before.
        (["a", "b"], "o", [], READY, Fanout((), ("a", "b"))),
        (["a", "b", "c"], "o", [G1], {}, Fanout((), ("a", "b", "c"))),
        # A ready group: one copy for its members, the rest their own.
        (["a", "b", "c", "x"], "o", [G1], READY, Fanout((G1,), ("x",))),
        # Two groups sharing a member: both copies (the SDK drops the second).
        (["a", "b", "c", "d"], "o", [G1, G2], READY, Fanout((G1, G2), ())),
        # The originator, a member, is not routed: it may read its own bulletin.
        (["a", "b"], "c", [G1], READY, Fanout((G1,), ())),
        # A member not routed (and not the originator): no group copy, one each.
        (["a", "b"], "o", [G1], READY, Fanout((), ("a", "b"))),
        # The same pair twice in an envelope is one copy.
        (["c", "d"], "o", [G2, G2], READY, Fanout((G2,), ())),
        # An epoch with no members recorded is never used.
        (["a"], "o", [G1], {G1: frozenset()}, Fanout((), ("a",))),
    ],
)
def test_which_copies_the_relay_stores(
    deliver_to: list[str],
    originator: str,
    groups: list[tuple[str, int]],
    ready: dict[tuple[str, int], frozenset[str]],
    want: Fanout,
) -> None:
    assert fan_out(deliver_to, originator=originator, groups=groups, ready=ready) == want


@pytest.mark.parametrize(
    ("deliver_to", "originator", "on_nodes", "want"),
    [
        # A routed member on a state node: the group copy for the others, its own besides.
        (["a", "b", "c", "x"], "o", {"b"}, Fanout((G1,), ("b", "x"))),
        # Every member on a node: the group copy is still stored (their hub consumers
        # read it), and each gets its own.
        (["a", "b", "c"], "o", {"a", "b", "c"}, Fanout((G1,), ("a", "b", "c"))),
        # The originator on a node, not routed: nothing of its own.
        (["a", "b"], "c", {"c"}, Fanout((G1,), ())),
        # A member on a node that is not routed: no group copy, and nothing for it.
        (["a", "b"], "o", {"c"}, Fanout((), ("a", "b"))),
        # An agency on a node in no group: its own, as before.
        (["a", "b", "c", "y"], "o", {"y"}, Fanout((G1,), ("y",))),
    ],
)
def test_a_member_on_a_state_node_gets_its_own_copy_besides_the_group_copy(
    deliver_to: list[str], originator: str, on_nodes: set[str], want: Fanout
) -> None:
    got = fan_out(deliver_to, originator=originator, groups=[G1], ready=READY, on_nodes=on_nodes)
    assert got == want
    # Never a copy to anyone not routed.
    assert set(got.individual) <= set(deliver_to)
