"""One Cedar request per class of candidates decides exactly as one per candidate
(ADR 0035).

The reference is the evaluation before ADRs 0012 and 0035 (whole directory, one request
per candidate); the engines the broker runs (``auto``) and ``slice`` ask Cedar once per
class. Their decisions (allowed, deciding ``@id``s, reasons, errors, versions),
``explain`` and ``permitted_receivers`` must be equal in full, on directories hypothesis
draws from a few agency prototypes (so that classes form), under the shipped set and
under sets that read names, name an agency or a state, or raise evaluation errors. The
golden cases and the oracle differential test run the same engines too
(``test_policy_slicing``, ``test_policy_differential``).
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import cedarpy
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from broker.policy.classes import Shapes, _Opaque, attributes_read, shape_of
from broker.policy.engine import (
    AgencyInfo,
    BulletinFacts,
    Decision,
    DirectorySnapshot,
    JurisdictionInfo,
    PolicyBundle,
    PolicyEngine,
)
from broker.policy.entities import AGENCY, bulletin_entity
from broker.policy.slicing import references
from schemas.labels import TOPICS
from tests.core.test_policy_golden import golden_facts
from tests.core.test_policy_slicing import GHOST, GRADES, NOW, SECTORS, bulletins

POLICIES = Path(__file__).resolve().parents[2] / "policies"

# Policy sets that make a candidate's name, its uid or a state's uid matter, or that make
# Cedar return errors (a class whose decision carried one is asked again, one by one).
VARIANTS: dict[str, str] = {
    "shipped": "",
    "reads-names": """
@id("grant.test-names")
@reason("test: agencies named *1 receive, and those of states named *1")
permit (principal, action == Istmo::Action::"receive", resource)
when
{ principal.name like "*1" || (principal has home && principal.home.name like "*1") };
""",
    "names-entities": """
@id("guard.test-named")
@reason("test: ag2 and agencies of ST1 never receive")
forbid (principal, action == Istmo::Action::"receive", resource)
when
{ principal == Istmo::Agency::"ag2" || principal in Istmo::Jurisdiction::"ST1" };
""",
    "errors": """
@id("guard.test-overflow")
@reason("test: clearance 1 is refused, clearance 2 and 3 overflow")
forbid (principal, action == Istmo::Action::"receive", resource)
when { principal.clearance * 4611686018427387904 > 0 };
""",
}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PolicyBundle]:
    out = {}
    for name, extra in VARIANTS.items():
        if not extra:
            out[name] = PolicyBundle.load(POLICIES)
            continue
        root = tmp_path_factory.mktemp(name)
        shutil.copytree(POLICIES, root, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.json"))  # fmt: skip
        base = (root / "base.cedar").read_text()
        (root / "base.cedar").write_text(cedarpy.format_policies(base + extra))
        out[name] = PolicyBundle.load(root)
    return out


def reference_and_fast(bundle: PolicyBundle, directory: DirectorySnapshot) -> tuple[
    PolicyEngine, dict[str, PolicyEngine]]:  # fmt: skip
    reference = PolicyEngine(bundle, directory, entities="whole", classes=False)
    fast = {"auto": PolicyEngine(bundle, directory),
            "slice": PolicyEngine(bundle, directory, entities="slice")}  # fmt: skip
    return reference, fast


def assert_alike(
    reference: PolicyEngine,
    fast: dict[str, PolicyEngine],
    facts: BulletinFacts,
    candidates: list[str],
    now: int,
) -> None:
    decisions = reference.decide_receive(facts, candidates, now)
    explained = reference.explain(facts, candidates, now)
    allowed = [d.agency for d in decisions if d.allowed]
    for how, engine in fast.items():
        assert engine.decide_receive(facts, candidates, now) == decisions, how
        assert engine.explain(facts, candidates, now) == explained, how
        assert engine.permitted_receivers(facts, candidates, now) == allowed, how


def classes(engine: PolicyEngine, facts: BulletinFacts, candidates: list[str]) -> int:
    """How many Cedar requests the engine's classes need for these candidates."""
    roots = [*engine._pinned, *references(bulletin_entity(facts)["attrs"])]
    fixed = engine.directory._index.reach(roots)
    assert engine._shapes is not None
    known = tuple(dict.fromkeys(c for c in candidates if engine.directory.agency(c) is not None))
    parts = engine._shapes.partition(known, fixed, engine._base)
    assert_refines(parts, engine._shapes.representatives(known, fixed), known)
    return len(parts)


def assert_refines(parts: list[tuple[str, ...]], firsts: dict[str, str], known: tuple[str, ...]):
    """``parts`` (``Shapes.partition``) holds each candidate once, each part in candidate
    order, and no part joins candidates ``representatives`` puts in different classes
    (cutting a class is allowed: it only costs a request)."""
    assert sorted(a for part in parts for a in part) == sorted(known)
    order = {a: i for i, a in enumerate(known)}
    for part in parts:
        assert list(part) == sorted(part, key=order.__getitem__)
        assert len({firsts[a] for a in part}) == 1, part


# --------------------------------------------------------------------------- hypothesis


@st.composite
def cloned_directories(draw: st.DrawFn) -> tuple[list[JurisdictionInfo], list[AgencyInfo]]:
    """1-2 communities (the second maybe inside the first), 2-5 states in one or none of
    them, and 2-14 agencies, each a copy of one of 1-3 prototypes (sector, status,
    clearance, topics, minimum grade) in a state or directly in communities."""
    communities = ["CM0", "CM1"][: draw(st.integers(1, 2))]
    jurisdictions = [JurisdictionInfo("CM0", "community", "CM0", ())]
    if len(communities) == 2:
        nested = ("CM0",) if draw(st.booleans()) else ()
        jurisdictions.append(JurisdictionInfo("CM1", "community", "CM1", nested))
    states = [f"ST{i}" for i in range(draw(st.integers(2, 5)))]
    for s in states:
        parent = draw(st.sampled_from([(), *((c,) for c in communities)]))
        jurisdictions.append(JurisdictionInfo(s, "state", s, parent))
    prototype = st.tuples(
        st.sampled_from(SECTORS),
        st.sampled_from(["active", "active", "suspended"]),
        st.integers(0, 3),
        st.frozensets(st.sampled_from(TOPICS[:3])),
        st.none() | st.sampled_from(GRADES[:3]),
    )
    prototypes = draw(st.lists(prototype, min_size=1, max_size=3))
    agencies = []
    for i in range(draw(st.integers(2, 14))):
        sector, status, clearance, topics, grade = draw(st.sampled_from(prototypes))
        in_state = draw(st.integers(0, 3)) > 0
        state = draw(st.sampled_from(states)) if in_state else None
        where = () if in_state else tuple(draw(st.lists(st.sampled_from(communities),
                                                        unique=True, max_size=2)))  # fmt: skip
        agencies.append(AgencyInfo(f"ag{i}", f"ag{i}", sector, status, clearance, topics,
                                   state, where, grade))  # fmt: skip
    return jurisdictions, agencies


@pytest.mark.parametrize("variant", list(VARIANTS))
@settings(max_examples=30, deadline=None, database=None)
@given(data=st.data())
def test_classes_decide_as_each_candidate(
    bundles: dict[str, PolicyBundle], variant: str, data: st.DataObject
) -> None:
    jurisdictions, agencies = data.draw(cloned_directories(), label="directory")
    bundle = bundles[variant]
    reference, fast = reference_and_fast(
        bundle, DirectorySnapshot.build(jurisdictions, agencies, bundle)
    )
    everyone = [a.id for a in agencies] + [GHOST]
    for _ in range(3):
        facts = data.draw(bulletins(jurisdictions, agencies), label="bulletin")
        now = data.draw(st.integers(NOW - 60, NOW + 60), label="now")
        candidates = data.draw(st.permutations(everyone), label="candidates")
        candidates += data.draw(st.lists(st.sampled_from(everyone), max_size=2), label="again")
        assert_alike(reference, fast, facts, candidates, now)
        asked = classes(fast["auto"], facts, candidates)
        # The same list again, under this bulletin's fixed entities: the classes kept
        # for it from an earlier bulletin are cut where this one touches them.
        classes(fast["auto"], facts, everyone)
        event(f"{variant}: {'shared' if asked < len(set(agencies)) else 'not shared'}")


@pytest.mark.parametrize("variant", list(VARIANTS))
@settings(max_examples=30, deadline=None, database=None)
@given(data=st.data())
def test_bulletins_of_one_outline_share_decisions(
    bundles: dict[str, PolicyBundle], variant: str, data: st.DataObject
) -> None:
    """ADR 0042: bulletins alike but for their originator (and its state) or a named
    agency, decided in one second by the same engines, one after another (so each may
    take what the ones before decided), decide as the reference does each on its own."""
    jurisdictions, agencies = data.draw(cloned_directories(), label="directory")
    bundle = bundles[variant]
    reference, fast = reference_and_fast(
        bundle, DirectorySnapshot.build(jurisdictions, agencies, bundle)
    )
    everyone = [a.id for a in agencies] + [GHOST]
    first = data.draw(bulletins(jurisdictions, agencies), label="bulletin")
    now = data.draw(st.integers(NOW - 60, NOW + 60), label="now")
    before = fast["auto"].shared_taken
    for n in range(4):
        who = data.draw(st.sampled_from(agencies), label="originator")
        named = data.draw(st.lists(st.sampled_from(everyone), unique=True, max_size=2))
        labels = first.labels.model_copy(update={"named": tuple(named)}) if n % 2 else first.labels
        facts = replace(first, bulletin_id=f"b{n}", originator=who.id,
                        origin_state=who.state, labels=labels)  # fmt: skip
        assert_alike(reference, fast, facts, everyone, now)
        # The originator's publish decision is shared by role too.
        assert fast["auto"].decide_publish(facts, now) == reference.decide_publish(facts, now)
    event(f"{variant}: {'shared' if fast['auto'].shared_taken > before else 'not shared'}")


# --------------------------------------------------------------------------- fixed cases


def clones(n: int) -> tuple[list[JurisdictionInfo], list[AgencyInfo]]:
    """``n`` police agencies alike, one in each of ``n`` states of one community."""
    jurisdictions = [JurisdictionInfo("CM0", "community", "CM0", ())]
    jurisdictions += [JurisdictionInfo(f"ST{i}", "state", f"ST{i}", ("CM0",)) for i in range(n)]
    agencies = [AgencyInfo(f"ag{i}", f"ag{i}", "police", "active", 2, frozenset(TOPICS[:1]),
                           f"ST{i}", (), None) for i in range(n)]  # fmt: skip
    return jurisdictions, agencies


def facts_for(rel_to: tuple[str, ...], named: tuple[str, ...] = ()) -> BulletinFacts:
    return golden_facts({"originator": "ag0", "origin_state": "ST0", "rel_to": list(rel_to),
                         "named": list(named), "topic": TOPICS[0]})  # fmt: skip


@pytest.mark.parametrize(
    ("variant", "rel_to", "named", "asked"),
    [
        # ag0 (the originator, with ST0) and ag1 (named) are fixed: each its own class;
        # ag2..ag5 in anonymous states alike are one class.
        ("shipped", ("CM0",), ("ag1",), 3),
        # releasable to ST3: ST3 is fixed, so ag3 is its own class.
        ("shipped", ("ST3",), (), 3),
        # a policy names ag2 and ST1: both agencies are their own classes.
        ("names-entities", ("CM0",), (), 4),
        # a policy reads names: no two agencies are alike.
        ("reads-names", ("CM0",), (), 6),
    ],
)
def test_who_shares_a_request(
    bundles: dict[str, PolicyBundle],
    variant: str,
    rel_to: tuple[str, ...],
    named: tuple[str, ...],
    asked: int,
) -> None:
    bundle = bundles[variant]
    jurisdictions, agencies = clones(6)
    reference, fast = reference_and_fast(
        bundle, DirectorySnapshot.build(jurisdictions, agencies, bundle)
    )
    facts = facts_for(rel_to, named)
    everyone = [a.id for a in agencies]
    assert classes(fast["auto"], facts, everyone) == asked
    assert_alike(reference, fast, facts, everyone, NOW)


def test_a_class_with_an_error_is_asked_one_by_one(bundles: dict[str, PolicyBundle]) -> None:
    """Clearance 2 overflows in ``guard.test-overflow``: the class's decisions carry the
    error, each asked of Cedar for its own agency."""
    bundle = bundles["errors"]
    jurisdictions, agencies = clones(4)
    reference, fast = reference_and_fast(
        bundle, DirectorySnapshot.build(jurisdictions, agencies, bundle)
    )
    facts = facts_for(("CM0",))
    everyone = [a.id for a in agencies]
    decisions = fast["auto"].decide_receive(facts, everyone, NOW)
    assert [d.agency for d in decisions] == everyone
    assert all(not d.allowed and d.errors for d in decisions[1:])
    assert_alike(reference, fast, facts, everyone, NOW)
    engine = fast["auto"]
    assert classes(engine, facts, everyone) == 2  # ag0, the originator; ag1..ag3
    policies = (bundle._policies,)
    parts, _ = engine._by_class(facts, "receive", tuple(everyone), NOW, policies, None)
    assert sorted(members for members, _, _ in parts) == [(a,) for a in everyone]
    # Under the shipped set the same class shares one request.
    plain = bundles["shipped"]
    shipped = PolicyEngine(plain, DirectorySnapshot.build(jurisdictions, agencies, plain))
    policies = (plain._policies,)
    parts, _ = shipped._by_class(facts, "receive", tuple(everyone), NOW, policies, None)
    assert [members for members, _, _ in parts] == [("ag0",), ("ag1", "ag2", "ag3")]


# --------------------------------------------------------------------------- parts


@pytest.mark.parametrize(
    ("variant", "shared"),
    [
        # ag1's bulletin is ag0's with ST1 for ST0: its decisions, and the originator's
        # publish decision, come from ag0's by role.
        ("shipped", True),
        # A policy reads names: the originators differ, so their bulletins' outlines do.
        ("reads-names", False),
        # A policy names ST1: ag1's bulletin reaches it by uid, ag0's ST0 by slot.
        ("names-entities", False),
    ],
)
def test_who_shares_across_bulletins(
    bundles: dict[str, PolicyBundle], variant: str, shared: bool
) -> None:
    bundle = bundles[variant]
    jurisdictions, agencies = clones(6)
    reference, fast = reference_and_fast(
        bundle, DirectorySnapshot.build(jurisdictions, agencies, bundle)
    )
    engine = fast["auto"]
    everyone = tuple(a.id for a in agencies)
    policies = (bundle._policies,)
    one = facts_for(("CM0",))
    other = replace(one, bulletin_id="another", originator="ag1", origin_state="ST1")

    def taken(facts: BulletinFacts, now: int) -> list[tuple[str, ...]]:
        """The classes decided by a decision made for another bulletin."""
        parts, batches = engine._by_class(facts, "receive", everyone, now, policies, None)
        return [p[0] for p, r in zip(parts, batches[0], strict=True)
                if isinstance(r, Decision) and r.agency != p[0][0]]  # fmt: skip

    assert taken(one, NOW) == []
    if shared:
        # Nothing is asked of Cedar: ag1, the originator, takes the decision ag0 had as
        # the originator of the first; ag0, now one of the others, that of ag2..ag5.
        assert taken(other, NOW) == [("ag0", "ag2", "ag3", "ag4", "ag5"), ("ag1",)]
    else:
        assert taken(other, NOW) == []
    # A second later nothing is shared: the context's time differs.
    assert taken(other, NOW + 1) == []
    for facts in (one, other):
        assert_alike(reference, fast, facts, list(everyone), NOW)
        assert engine.decide_publish(facts, NOW) == reference.decide_publish(facts, NOW)


def test_an_outline_keeps_the_bulletins_own_attributes_and_follows_read_ones() -> None:
    """Two bulletins differing only in an attribute no policy reads have different
    outlines (one may fit the schema, the other not); an entity they reach is followed
    through read attributes only, and one absent from the directory shares nothing."""

    def ref(kind: str, ident: str) -> dict[str, object]:
        return {"__entity": {"type": f"Istmo::{kind}", "id": ident}}

    directory = {
        ("Istmo::Agency", "a"): {"uid": {"type": AGENCY, "id": "a"},
                                 "attrs": {"home": ref("Jurisdiction", "S1"), "name": "A",
                                           "mate": ref("Agency", "zz")},
                                 "parents": []},
        ("Istmo::Agency", "b"): {"uid": {"type": AGENCY, "id": "b"},
                                 "attrs": {"home": ref("Jurisdiction", "S2"), "name": "B"},
                                 "parents": []},
        ("Istmo::Jurisdiction", "S1"): {"uid": {"type": "Istmo::Jurisdiction", "id": "S1"},
                                        "attrs": {}, "parents": []},
        ("Istmo::Jurisdiction", "S2"): {"uid": {"type": "Istmo::Jurisdiction", "id": "S2"},
                                        "attrs": {}, "parents": []},
    }  # fmt: skip
    shapes = Shapes(directory.get, frozenset({"home", "originator"}), AGENCY)

    def bulletin(originator: str, **more: object) -> dict[str, object]:
        attrs = {"originator": ref("Agency", originator), **more}
        return {"uid": {"type": "Istmo::Bulletin", "id": "x"}, "attrs": attrs, "parents": []}

    one, two = shapes.outline(bulletin("a"), ()), shapes.outline(bulletin("b"), ())
    assert one is not None
    assert two is not None
    assert one[0] == two[0]  # "mate" and "name" are read by no policy
    assert one[1] == {("Istmo::Agency", "a"): 0, ("Istmo::Jurisdiction", "S1"): 1}
    assert shapes.role("a", one[1], ()) == shapes.role("b", two[1], ()) == ("slot", 0)
    odd = shapes.outline(bulletin("a", tlp="x"), ())
    assert odd is not None
    assert odd[0] != one[0]
    assert shapes.outline(bulletin("zz"), ()) is None
    # In the base, an entity is named by uid: S1 and S2 no longer look alike.
    base = {("Istmo::Jurisdiction", "S1")}
    three = shapes.outline(bulletin("a"), base)
    assert three is not None
    assert three[0] != one[0]


def test_attributes_read_finds_every_form() -> None:
    text = """
permit (principal, action, resource)
when { principal.a == 1 && principal["b"] == 2 && principal has c && context has d.e };
"""
    tree = cedarpy.PolicySet.from_str(text).to_pst()
    assert attributes_read(tree) == {"a", "b", "c", "d", "e"}


def test_shapes_drop_the_uid_and_unread_attributes_only() -> None:
    def agency(ident: str, name: str, home: str) -> dict[str, object]:
        ref = {"__entity": {"type": "Istmo::Jurisdiction", "id": home}}
        return {"uid": {"type": AGENCY, "id": ident}, "attrs": {"name": name, "home": ref},
                "parents": [{"type": "Istmo::Jurisdiction", "id": home}]}  # fmt: skip

    one, two = agency("a", "A", "S1"), agency("b", "B", "S2")
    assert shape_of(one, frozenset({"home"}))[0] == shape_of(two, frozenset({"home"}))[0]
    assert shape_of(one, frozenset({"home"}))[1] == (("Istmo::Jurisdiction", "S1"),)
    assert shape_of(one, frozenset({"name"}))[0] != shape_of(two, frozenset({"name"}))[0]
    # A reference Cedar might read from another form is opaque: its agency stands alone.
    for odd in ({"type": "Istmo::Jurisdiction", "id": "S1"},
                {"__entity": {"type": "Istmo::Jurisdiction", "id": "S1"}, "x": 1}):  # fmt: skip
        with pytest.raises(_Opaque):
            shape_of({**one, "attrs": {"home": odd}}, frozenset({"home"}))
    shapes = Shapes({("Istmo::Agency", "a"): {**one, "attrs": {"home": {"type": "x"}}}}.get,
                    frozenset({"home"}), AGENCY)  # fmt: skip
    assert shapes.representatives(["a", "b"], {}) == {"a": "a", "b": "b"}
