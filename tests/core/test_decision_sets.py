"""Big groups of a decision record named by agency set (ADR 36), as a table: no database.

``route`` writes a refused or unaddressed group drawn from classes of more than
``listed_from`` candidates as a set's digest and the agencies of it left out; read back
through the set (``decided_groups``), every group is the one written in full.
"""

from __future__ import annotations

import json
import random

import pytest

from broker.audit.events import MAX_DECIDED_BYTES, UnknownSet, agencies_listed, decided_groups
from broker.policy.model import DecidedAlike, Decision
from broker.relay.decisions import Routing, route
from schemas.audit import agency_set_digest
from schemas.canonical import canonical_json

AT = 1_780_000_000_250


def decision(agency: str, allowed: bool, *ids: str, errors: tuple[str, ...] = ()) -> Decision:
    return Decision(agency, "receive", allowed, ids, tuple(f"why {i}" for i in ids), "p", "d",
                    errors)  # fmt: skip


def classes_of(spec: list[tuple[bool, tuple[str, ...], int]], seed: int) -> list[DecidedAlike]:
    """Classes of the given (allowed, policies, size), with ids drawn without repeats."""
    rng = random.Random(seed)
    pool = rng.sample(range(100_000), sum(n for _, _, n in spec))
    out, at = [], 0
    for allowed, ids, n in spec:
        members = tuple(sorted(f"s{i:05d}-police" for i in pool[at : at + n]))
        at += n
        out.append(DecidedAlike(decision(members[0], allowed, *ids), members))
    return out


def routed_both_ways(
    decided: list[DecidedAlike], addressed: tuple[str, ...]
) -> tuple[object, object, dict[str, tuple[str, ...]]]:
    """The routing by reference (the default) and in full, and the sets it names."""
    kw = {"originator": "s99999-police", "addressed": addressed, "policy_version": "p",
          "directory_version": "d", "at": AT}  # fmt: skip
    compact = route("b1", decided=decided, **kw)  # type: ignore[arg-type]
    full = route("b1", decided=decided, listed_from=10**9, **kw)  # type: ignore[arg-type]
    return compact, full, dict(compact.listed)


def expanded(record_groups: str, sets: dict[str, tuple[str, ...]]) -> list[dict[str, object]]:
    """A decision record's groups with each by-reference group written in full."""
    out = []
    for g in json.loads(record_groups):
        if "listed" in g:
            but = set(g.pop("but"))
            g["agencies"] = [a for a in sets[g.pop("listed")] if a not in but]
        out.append(g)
    return out


@pytest.mark.parametrize(
    ("spec", "addressed_from", "by_reference"),
    [
        # one wide permitted class, 5 addressed in it: the unaddressed go by reference
        ([(True, ("grant.releasable",), 2_622)], [0], 1),
        # a wide refusal (by reference), a small one and a permitted class of 40 in full
        ([(False, (), 900), (False, ("guard.source-grade",), 12), (True, ("g",), 40)], [2], 1),
        # two permitted classes with the same policies (one group) and a refusal of 65
        ([(True, ("g",), 300), (True, ("g",), 200), (False, ("x",), 65)], [0, 1], 2),
        # exactly the threshold: in full
        ([(True, ("g",), 64)], [0], 0),
    ],
)
def test_a_record_by_reference_reads_back_as_the_record_in_full(
    spec: list[tuple[bool, tuple[str, ...], int]], addressed_from: list[int], by_reference: int
) -> None:
    decided = classes_of(spec, seed=len(spec))
    addressed = tuple(a for i in addressed_from for a in decided[i].agencies[:5])
    compact, full, sets = routed_both_ways(decided, addressed)
    assert compact.deliver_to == full.deliver_to == tuple(sorted(addressed))  # type: ignore[attr-defined]
    # The row: by reference where a group's classes hold more than 64, else as before.
    rec_c, rec_f = compact.record.values, full.record.values  # type: ignore[attr-defined]
    assert rec_c["routed"] == rec_f["routed"]
    assert expanded(rec_c["groups"], sets) == json.loads(rec_f["groups"])
    wide = [g for g in json.loads(rec_c["groups"]) if "listed" in g]
    assert len(wide) == len(sets) == by_reference
    for g in wide:
        assert g["outcome"] != "routed"
        assert agency_set_digest(sets[g["listed"]]) == g["listed"]
    # The event: one, small, and the same groups read through the sets.
    (event,) = compact.events  # type: ignore[attr-defined]
    read = decided_groups(event.data, sets.get)
    in_full = [g for e in full.events for g in decided_groups(e.data)]  # type: ignore[attr-defined]
    assert sorted((g.outcome, g.policy_ids, a) for g in read for a in g.agencies) == sorted(
        (g.outcome, g.policy_ids, a) for g in in_full for a in g.agencies
    )
    assert len(canonical_json(event.model_dump(mode="json"))) < 2_000


def test_the_set_of_a_class_is_the_same_for_every_bulletin_it_is_decided_for() -> None:
    decided = classes_of([(True, ("g",), 500)], seed=1)
    first = route("b1", originator="o", addressed=decided[0].agencies[:3], decided=decided,
                  policy_version="p", directory_version="d", at=AT)  # fmt: skip
    second = route("b2", originator="o", addressed=decided[0].agencies[7:9], decided=decided,
                   policy_version="p", directory_version="d", at=AT)  # fmt: skip
    assert [d for d, _ in first.listed] == [d for d, _ in second.listed]
    assert first.listed[0][1] == decided[0].agencies


def test_a_set_the_reader_lacks_is_an_error_not_an_empty_group() -> None:
    decided = classes_of([(False, (), 100)], seed=2)
    compact = route("b1", originator="o", addressed=(), decided=decided, policy_version="p",
                    directory_version="d", at=AT)  # fmt: skip
    (event,) = compact.events
    with pytest.raises(UnknownSet):
        decided_groups(event.data, {}.get)
    with pytest.raises(UnknownSet):
        decided_groups(event.data)


def test_a_listed_set_is_cut_into_parts_that_join_to_the_set() -> None:
    members = tuple(sorted(f"agency-{i:05d}-with-a-long-name" for i in range(3_000)))
    digest = agency_set_digest(members)
    parts = agencies_listed(digest, members, at=AT)
    assert len(parts) > 1
    assert [e.event_id for e in parts] == [
        f"agencies:{digest}:{n}" for n in range(1, len(parts) + 1)
    ]
    joined = tuple(a for e in parts for a in e.data["who"])  # type: ignore[union-attr]
    assert joined == members
    for e in parts:
        assert (e.type, e.subject, e.data["digest"], e.data["count"]) == (
            "agencies.listed", digest, digest, 3_000)  # fmt: skip
        assert len(canonical_json(e.model_dump(mode="json"))) < MAX_DECIDED_BYTES + 1024


def test_the_digest_is_of_the_sorted_ids_as_compact_json() -> None:
    import hashlib

    assert agency_set_digest(["b", "a"]) == hashlib.sha256(b'["a","b"]').hexdigest()
    assert agency_set_digest(["a", "b"]) == agency_set_digest(("b", "a"))


@pytest.mark.parametrize("seed", range(20))
def test_random_classes_read_back_alike(seed: int) -> None:
    rng = random.Random(seed)
    spec = [
        (rng.random() < 0.6, tuple(rng.sample(["g1", "g2", "x1"], rng.randint(0, 2))),
         rng.choice([1, 3, 64, 65, 200, 1_500]))
        for _ in range(rng.randint(1, 5))
    ]  # fmt: skip
    decided = classes_of(spec, seed=seed)
    allowed = [a for c in decided if c.decision.allowed for a in c.agencies]
    others = [a for c in decided if not c.decision.allowed for a in c.agencies]
    addressed = tuple(rng.sample(allowed, min(len(allowed), rng.randint(0, 8))))
    addressed += tuple(rng.sample(others, min(len(others), 2)))  # refused: not routed
    compact, full, sets = routed_both_ways(decided, addressed)
    assert compact.deliver_to == full.deliver_to  # type: ignore[attr-defined]
    rec_c, rec_f = compact.record.values, full.record.values  # type: ignore[attr-defined]
    assert expanded(rec_c["groups"], sets) == json.loads(rec_f["groups"])
    read_c = [g for e in compact.events for g in decided_groups(e.data, sets.get)]  # type: ignore[attr-defined]
    read_f = [g for e in full.events for g in decided_groups(e.data)]  # type: ignore[attr-defined]
    key = lambda gs: sorted((g.outcome, g.policy_ids, a) for g in gs for a in g.agencies)  # noqa: E731
    assert key(read_c) == key(read_f)


# ------------------------------------------------------------------ through the plan
def test_a_batch_records_each_new_set_once_before_the_record_that_names_it() -> None:
    """120 police agencies alike follow the topic; gt-police addresses 3 of them: the
    others (allowed, unaddressed) are named by the set of their class, recorded with the
    first bulletin of the batch that names it, and not again once known to be recorded."""
    from broker.policy.engine import DirectorySnapshot, PolicyBundle, PolicyEngine
    from broker.relay.plan import parse, plan_batch
    from broker.store.registry import AgencySetRow
    from tests.core import test_relay_plan as T

    many = [T._info(f"gt-police-{i:03d}") for i in range(120)]
    infos = (*T.INFOS, *many)
    bundle = PolicyBundle.load(T.POLICIES)
    engine = PolicyEngine(bundle, DirectorySnapshot.build(T.JURISDICTIONS, infos, bundle))
    party = T.PARTIES["bz-police"]
    directory = T.MemoryDirectory(
        records={**{a.id: T.PARTIES[a.id].record(a) for a in T.INFOS},
                 **{a.id: party.record(a) for a in many}},
        states=frozenset(j.code for j in T.JURISDICTIONS),
        engine=engine,
        subscribers={T.DRUGS: tuple(sorted(a.id for a in infos))},
    )  # fmt: skip
    to = ("gt-police-000", "gt-police-001", "gt-police-002")
    keys = {T.AgencyId(a): party.encryption.public_key for a in to}
    msgs = [T.ingested(T.sealed(recipients=keys), seq=i) for i in (1, 2)]
    parsed = [parse(m, T.LIMITS) for m in msgs]
    first, second = plan_batch(msgs, parsed, directory=directory, limits=T.LIMITS, accepted={},
                               now_ms=T.NOW_MS)  # fmt: skip
    assert (first.verdict, second.verdict) == ("accept", "accept")
    assert first.deliver_to == second.deliver_to == to
    (digest,) = first.listed
    assert second.listed == ()
    assert [d for d, _ in second.sets] == [digest]
    set_rows = [r for r in first.rows if r.table is AgencySetRow]  # type: ignore[union-attr]
    (row,) = set_rows
    # The set is the engine's kept class for the topic (the originator in it too); the
    # record leaves out of it the originator, not a candidate, and the 3 it was routed to.
    members = json.loads(row.values["agencies"])  # type: ignore[union-attr]
    assert {a.id for a in many} <= set(members)
    assert members == sorted(members)
    record = next(r for r in first.rows if r.table.__name__ == "DecisionRecordRow")  # type: ignore[union-attr]
    (unaddressed,) = [g for g in json.loads(record.values["groups"]) if "listed" in g]  # type: ignore[union-attr]
    assert (unaddressed["outcome"], unaddressed["listed"], unaddressed["but"]) == (
        "unaddressed", digest, ["gt-police", *to])  # fmt: skip
    assert first.rows[0] is row  # before the record that names it
    types = [e.type for e in first.events]
    assert types[: types.index("bulletin.accepted")] == ["agencies.listed"]
    assert "agencies.listed" not in [e.type for e in second.events]
    # Known to be recorded: no plan carries it.
    again = plan_batch(msgs[:1], parsed[:1], directory=directory, limits=T.LIMITS, accepted={},
                       now_ms=T.NOW_MS, listed={digest})  # fmt: skip
    assert again[0].listed == ()
    assert not [r for r in again[0].rows if r.table is AgencySetRow]  # type: ignore[union-attr]


# ------------------------------------------------- classes the engine kept, and cut
def cut_layout(seed: int) -> tuple[list[DecidedAlike], tuple[str, ...], list[tuple[str, ...]]]:
    """As the engine answers for one bulletin (``Shapes.cut_classes``): kept classes, some
    cut by the candidates this bulletin touches, those classed on their own, one of them
    (the originator) dropped; with decisions drawn at random. Returns the classes, the
    addressed agencies and the kept classes."""
    rng = random.Random(seed)
    sizes = [rng.choice([3, 40, 70, 300]) for _ in range(rng.randint(1, 4))]
    pool = iter(sorted(rng.sample(range(100_000), sum(sizes))))
    kept = [tuple(f"s{next(pool):05d}-police" for _ in range(n)) for n in sizes]
    everyone = [a for k in kept for a in k]
    touched = set(rng.sample(everyone, min(len(everyone), rng.randint(0, 12))))
    verdicts = [(True, ("g1",)), (True, ("g2",)), (False, ()), (False, ("x1",))]

    def decided(members: tuple[str, ...], **kw: object) -> DecidedAlike:
        ok, ids = rng.choice(verdicts)
        return DecidedAlike(decision(members[0], ok, *ids), members, **kw)  # type: ignore[arg-type]

    out = []
    for k in kept:
        rest = tuple(a for a in k if a not in touched)
        if rest:
            out.append(decided(rest, base=k, cut=tuple(a for a in k if a in touched)))
    alone = sorted(touched)
    rng.shuffle(alone)
    while alone:
        take = rng.randint(1, 3)
        out.append(decided(tuple(sorted(alone[:take]))))
        alone = alone[take:]
    singles = [c for c in out if c.base is None and len(c.agencies) == 1]
    if singles and rng.random() < 0.7:
        out.remove(rng.choice(singles))  # the originator: not a candidate
    allowed = [a for c in out if c.decision.allowed for a in c.agencies]
    addressed = tuple(rng.sample(allowed, min(len(allowed), rng.randint(0, 6))))
    return out, addressed, kept


@pytest.mark.parametrize("seed", range(40))
def test_groups_drawn_from_kept_classes_read_back_alike(seed: int) -> None:
    decided, addressed, kept = cut_layout(seed)
    compact, full, sets = routed_both_ways(decided, addressed)
    assert compact.deliver_to == full.deliver_to  # type: ignore[attr-defined]
    rec_c, rec_f = compact.record.values, full.record.values  # type: ignore[attr-defined]

    def by_agency(groups: list[dict[str, object]]) -> list[tuple[object, ...]]:
        return sorted(
            (str(a), g["outcome"], tuple(g["policy_ids"]), tuple(g["reasons"]))  # type: ignore[arg-type]
            for g in groups
            for a in g["agencies"]  # type: ignore[attr-defined]
        )

    assert by_agency(expanded(rec_c["groups"], sets)) == by_agency(json.loads(rec_f["groups"]))
    read_c = [g for e in compact.events for g in decided_groups(e.data, sets.get)]  # type: ignore[attr-defined]
    read_f = [g for e in full.events for g in decided_groups(e.data)]  # type: ignore[attr-defined]
    key = lambda gs: sorted((g.outcome, g.policy_ids, a) for g in gs for a in g.agencies)  # noqa: E731
    assert key(read_c) == key(read_f)
    # Every set named is one of the engine's kept classes or a union of them.
    for members in sets.values():
        assert set(members) <= {a for k in kept for a in k}


def test_the_set_is_the_kept_class_whoever_publishes() -> None:
    """Two bulletins whose originators (and their states' agencies) cut the same kept class
    differently name the same set: recorded once, not once per originator."""
    k = tuple(sorted(f"s{i:05d}-police" for i in range(200)))

    def bulletin(touched: set[str], to: tuple[str, ...]) -> Routing:
        rest = tuple(a for a in k if a not in touched)
        classes = [DecidedAlike(decision(rest[0], True, "g"), rest, k, tuple(sorted(touched)))]
        classes += [DecidedAlike(decision(a, True, "g"), (a,)) for a in sorted(touched)[1:]]
        return route("b", originator=sorted(touched)[0], addressed=to, decided=classes,
                     policy_version="p", directory_version="d", at=AT)  # fmt: skip

    first = bulletin({k[0], k[1], k[2]}, (k[50],))
    second = bulletin({k[100], k[101]}, (k[7], k[8]))
    assert [d for d, _ in first.listed] == [d for d, _ in second.listed]
    assert first.listed[0][1] == k
