"""The named audit-event constructors: one shape per event, the time as given."""

from __future__ import annotations

import json
import random

import pytest

from broker.audit import events
from broker.audit.entries import entry_bytes
from broker.audit.events import bulletins
from clients.log_verifier import MAX_LEAF_BYTES
from schemas.audit import EVENT_TYPES, AuditEvent

AT = 1_780_000_000_123


def test_key_registered_names_the_kem_of_an_encryption_key_only() -> None:
    signing = events.key_registered("gt-police", "sig-1", "signing", at=AT, actor="system")
    encryption = events.key_registered(
        "gt-police", "enc-1", "encryption", at=AT, actor="gt-police", kem="X25519"
    )
    admin = events.key_registered("admin", "sig-2", "signing", at=AT, actor="root", role="admin")
    assert (signing.event_id, signing.type, signing.subject) == (
        "key:sig-1",
        "key.registered",
        "gt-police",
    )
    assert signing.data == {"kid": "sig-1", "use": "signing"}
    assert encryption.data == {"kid": "enc-1", "use": "encryption", "kem": "X25519"}
    assert admin.data == {"kid": "sig-2", "use": "signing", "role": "admin"}
    assert {signing.time, encryption.time, admin.time} == {AT}


@pytest.mark.parametrize(
    ("status", "type_"),
    [
        ("suspended", "agency.suspended"),
        ("active", "agency.reinstated"),
        ("revoked", "agency.revoked"),
    ],
)
def test_a_status_change_is_the_event_of_its_new_status(status: str, type_: str) -> None:
    e = events.agency_status_changed("hn-police", status, note="n", actor="admin", at=AT)
    assert (e.type, e.subject, e.data) == (type_, "hn-police", {"status": status, "note": "n"})


def test_one_off_events_get_fresh_ids_and_keyed_ones_stable_ids() -> None:
    a = events.subscription_added("gt-police", "migration", actor="admin", at=AT)
    b = events.subscription_added("gt-police", "migration", actor="admin", at=AT)
    assert a.event_id != b.event_id
    assert a.event_id.startswith("subscription:")
    r1 = events.bulletin_received("b-1", "hn-police", received_at=1, envelope_digest="d", at=AT)
    r2 = events.bulletin_received("b-1", "hn-police", received_at=1, envelope_digest="d", at=AT + 5)
    assert r1.event_id == r2.event_id == "b-1:received:hn-police"  # a retried write is one event


def test_free_text_is_cut_to_the_schemas_limit() -> None:
    long = "x" * 500
    e = events.agency_status_changed("hn-police", "suspended", note=long, actor=long, at=AT)
    assert (len(e.actor), len(str(e.data["note"]))) == (200, 200)
    r = events.receipt_rejected(3, sender="hn-police", reason="malformed", message=long, at=AT)
    assert len(str(r.data["message"])) == 200


def test_console_events_leave_out_what_is_unknown() -> None:
    login = events.console_login(
        "auditor", where="/console", via="link", scopes=["b", "a"], peer=None, at=AT
    )
    assert login.data == {"via": "link", "scope": "a b"}
    refused = events.console_refused(
        "request.rejected", None, method="POST", route="/x", reason="bad", message="m", at=AT
    )
    assert (refused.actor, refused.subject, refused.data) == (
        "unknown",
        "POST /x",
        {"message": "m"},
    )


def test_a_dead_letter_without_a_copy_has_no_dead_seq() -> None:
    gone = events.delivery_dead_lettered(
        12,
        "hn-police",
        bulletin_id=None,
        reason="message_gone",
        deliveries=10,
        dead_seq=None,
        at=AT,
    )
    kept = events.delivery_dead_lettered(
        12, "hn-police", bulletin_id="b", reason="max_deliver", deliveries=10, dead_seq=4, at=AT
    )
    assert "dead_seq" not in gone.data
    assert kept.data["dead_seq"] == 4
    assert gone.event_id == kept.event_id == "dead:deliver:12"


def test_every_constructor_makes_a_known_event_type() -> None:
    made = {
        events.bulletin_rejected(
            1, sender="s", bulletin_id=None, reason="r", message="", size=0, at=AT
        ).type,
        events.request_rejected("gt-police", "resolve", reason="r", message="m", at=AT).type,
        events.delivery_unrecoverable("b", "hn-police", actor="op", at=AT).type,
        events.token_issued("c", "t", scope="s", expires_at=1, assertion_kid="k", at=AT).type,
    }
    assert made <= set(EVENT_TYPES)


def test_an_audit_query_records_its_filter_without_the_blanks() -> None:
    e = events.audit_queried(
        "auditor", "audit.search", {"agency": "gt-police", "type": None}, 3, at=AT
    )
    assert (e.type, e.actor, e.subject, e.time) == ("audit.queried", "auditor", "audit.search", AT)
    assert e.data == {"agency": "gt-police", "rows": 3}
    assert e.event_id.startswith("audit-query:")


# ------------------------------------------------------------------ bulletin.decided
def _decided(groups: list[events.DecisionGroup]) -> tuple[AuditEvent, ...]:
    return events.bulletin_decided(
        "b-1",
        originator="gt-police",
        policy_version="p1",
        directory_version="d1",
        groups=groups,
        at=AT,
    )


def _agencies(n: int, width: int = 32) -> tuple[str, ...]:
    return tuple(f"a{i:0{width - 1}d}" for i in range(n))  # the longest ids there are


ROUTED = events.DecisionGroup("routed", ("grant.releasable",), ("bz-police", "sv-police"))
DENIED = events.DecisionGroup("policy_deny", ("guard.clearance",), ("gt-justice",))
DEFAULT = events.DecisionGroup("default_deny", (), ("jm-police",))


@pytest.mark.parametrize(
    ("groups", "parts"),
    [
        ([], 1),  # no candidate: still one event, saying so
        ([ROUTED, DENIED, DEFAULT], 1),
        ([DENIED] * events.MAX_DECIDED_GROUPS, 1),
        ([DENIED] * (events.MAX_DECIDED_GROUPS + 1), 2),  # the schema's 32 data keys
        ([events.DecisionGroup("default_deny", (), _agencies(10_000))], 12),
        ([events.DecisionGroup("default_deny", (), _agencies(10_000, width=12))], 5),
    ],
    ids=["none", "three", "most-groups", "one-group-too-many", "10k-longest", "10k-typical"],
)
def test_a_decided_event_lists_every_candidate_once_in_bounded_parts(
    groups: list[events.DecisionGroup], parts: int
) -> None:
    decided = _decided(groups)
    assert len(decided) == parts
    assert [e.event_id for e in decided] == [f"b-1:decided:{n}" for n in range(1, parts + 1)]
    read: list[tuple[str, tuple[str, ...], str]] = []
    for n, e in enumerate(decided, 1):
        assert (e.type, e.subject, e.bulletin_id) == ("bulletin.decided", "b-1", "b-1")
        assert (e.data["part"], e.data["parts"], e.data["originator"]) == (n, parts, "gt-police")
        leaf = entry_bytes(e)
        assert len(leaf) < MAX_LEAF_BYTES // 2  # what a remote verifier accepts, with room
        again = AuditEvent.model_validate_json(leaf)  # as stored and as a verifier reads it
        stored = json.loads(leaf)["data"]  # lists, not tuples
        assert events.decided_groups(stored) == events.decided_groups(again.data)
        read += [
            (g.outcome, g.policy_ids, a) for g in events.decided_groups(stored) for a in g.agencies
        ]
    assert read == [(g.outcome, g.policy_ids, a) for g in groups for a in g.agencies]


def _parts_one_by_one(groups: list[events.DecisionGroup]) -> list[list[events.DecisionGroup]]:
    """The cut as first written: agency by agency (the fast path must cut the same)."""
    parts: list[list[events.DecisionGroup]] = [[]]
    used = 0
    for g in groups:
        head = bulletins._GROUP_OVERHEAD + sum(len(x) + 3 for x in (g.outcome, *g.policy_ids))
        left = g.agencies
        while True:
            first = len(left[0]) + 3 if left else 0
            if parts[-1] and (
                len(parts[-1]) == events.MAX_DECIDED_GROUPS
                or used + head + first > events.MAX_DECIDED_BYTES
            ):
                parts.append([])
                used = 0
            used += head
            take = 0
            while take < len(left) and (
                take == 0 or used + len(left[take]) + 3 <= events.MAX_DECIDED_BYTES
            ):
                used += len(left[take]) + 3
                take += 1
            parts[-1].append(events.DecisionGroup(g.outcome, g.policy_ids, left[:take]))
            left = left[take:]
            if not left:
                break
    return parts


@pytest.mark.parametrize("seed", range(40))
def test_decided_parts_cut_as_one_agency_at_a_time(seed: int) -> None:
    rng = random.Random(seed)
    groups = [
        events.DecisionGroup(
            rng.choice(["routed", "policy_deny", "default_deny"]),
            tuple(f"p.{rng.randrange(9)}" for _ in range(rng.randrange(3))),
            _agencies(rng.choice([0, 1, 3, 60, 500, 2_000, 6_000]), width=rng.randrange(2, 33)),
        )
        for _ in range(rng.randrange(1, 40))
    ]
    assert bulletins._decided_parts(groups) == _parts_one_by_one(groups)


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"why.1": "policy_deny", "who.1": ["a"]},  # not a list
        {"why.1": [], "who.1": ["a"]},  # no outcome
        {"why.2": ["routed"], "who.2": ["a"]},  # no group 1
        {"why.1": ["routed"]},  # no agencies
    ],
)
def test_decided_groups_reads_nothing_from_data_not_laid_out_as_written(
    data: dict[str, object],
) -> None:
    assert events.decided_groups(data) == []
