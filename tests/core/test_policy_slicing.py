"""Slices and the prefilter decide exactly as the whole directory does (ADR 0012).

Engines over one directory: ``whole`` (every batch over the whole directory plus the
bulletin, one Cedar request per candidate: the evaluation before ADRs 0012 and 0035),
``slice`` (always the entities the requests can reach) and ``auto`` (the one the broker
runs), both asking Cedar once per class of candidates (``test_policy_classes``). For
every request their decisions must be equal in full (allowed, deciding ``@id``s,
reasons, errors, versions), ``explain`` too, and ``permitted_receivers`` (the prefilter,
then Cedar) must list exactly the agencies the whole evaluation allows. Over the golden
cases, and over directories and bulletins hypothesis draws, under the shipped policy set
and under variants that switch a prefilter rule off (which must then not over-deny).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import cedarpy
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from broker.policy.engine import (
    AgencyInfo,
    BulletinFacts,
    DirectorySnapshot,
    JurisdictionInfo,
    PolicyBundle,
    PolicyEngine,
)
from broker.policy.entities import bulletin_entity
from broker.policy.prefilter import Prefilter
from schemas.labels import TOPICS, Classification, Handling, Labels, Precedence, Tlp
from tests.core.test_policy_golden import CASES, T0, golden_directory, golden_facts

POLICIES = Path(__file__).resolve().parents[2] / "policies"
NOW = 1_780_000_000
GHOST = "zz-ghost"
SECTORS = ("police", "military", "foreign", "justice", "regional-centre", "auditor")
GRADES = [f"{r}{c}" for r in "ABCDEF" for c in "123456"]

# An operator's sets that differ where a prefilter rule rests (base.cedar edits).
EXTRA_GRANT = """
@id("grant.auditor-metadata")
@reason("test: auditors receive every bulletin's metadata")
permit (
  principal,
  action == Istmo::Action::"receive",
  resource
)
when { principal.sector == "auditor" };
"""
GUARDS = "// ---------------------------------------------------------------- guards"
CLEARANCE = "when { principal.clearance < resource.classification }\nunless"
VARIANTS: dict[str, tuple[str, str]] = {
    "shipped": ("", ""),
    # a grant of another form: releasability is no longer proven
    "extra-grant": (GUARDS, EXTRA_GRANT + "\n" + GUARDS),
    # a weaker clearance guard: one level below still receives
    "lenient-clearance": (CLEARANCE, CLEARANCE.replace("clearance <", "clearance + 1 <")),
}


def variant_bundle(root: Path, name: str) -> PolicyBundle:
    old, new = VARIANTS[name]
    if not old:
        return PolicyBundle.load(POLICIES)
    shutil.copytree(POLICIES, root, ignore=shutil.ignore_patterns("*.json"))
    base = (root / "base.cedar").read_text()
    assert base.count(old) == 1
    (root / "base.cedar").write_text(cedarpy.format_policies(base.replace(old, new)))
    return PolicyBundle.load(root)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PolicyBundle]:
    tmp = tmp_path_factory.mktemp("variants")
    return {name: variant_bundle(tmp / name, name) for name in VARIANTS}


def test_the_variants_switch_exactly_one_rule_off(bundles: dict[str, PolicyBundle]) -> None:
    assert {name: b.prefilter_rules for name, b in bundles.items()} == {
        "shipped": ("clearance", "releasability"),
        "extra-grant": ("clearance",),
        "lenient-clearance": ("releasability",),
    }


def engines(bundle: PolicyBundle, directory: DirectorySnapshot) -> dict[str, PolicyEngine]:
    return {
        # The evaluation before ADRs 0012 and 0035: one request per candidate, whole.
        "whole": PolicyEngine(bundle, directory, entities="whole", classes=False),
        "slice": PolicyEngine(bundle, directory, entities="slice"),
        "auto": PolicyEngine(bundle, directory),
    }


def assert_alike(
    engines: dict[str, PolicyEngine], facts: BulletinFacts, agencies: list[str], now: int
) -> list[str]:
    """Every engine decides and explains as ``whole``; ``permitted_receivers`` lists what
    it allows. Returns the agencies allowed."""
    whole = engines["whole"]
    publish = whole.decide_publish(facts, now)
    decisions = whole.decide_receive(facts, agencies, now)
    explained = whole.explain(facts, agencies, now)
    allowed = [d.agency for d in decisions if d.allowed]
    for how, engine in engines.items():
        assert engine.decide_publish(facts, now) == publish, how
        assert engine.decide_receive(facts, agencies, now) == decisions, how
        assert engine.explain(facts, agencies, now) == explained, how
        assert engine.permitted_receivers(facts, agencies, now) == allowed, how
    return allowed


# --------------------------------------------------------------------------- golden


@pytest.fixture(scope="module")
def golden(bundles: dict[str, PolicyBundle]) -> dict[str, dict[str, PolicyEngine]]:
    jurisdictions, agencies = golden_directory()
    out = {}
    for name, bundle in bundles.items():
        out[name] = engines(bundle, DirectorySnapshot.build(jurisdictions, agencies, bundle))
    return out


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_golden_case_alike(
    golden: dict[str, dict[str, PolicyEngine]], case: dict[str, Any]
) -> None:
    """Each golden bulletin for its agency under every variant, and for every agency of
    the directory under the shipped set."""
    facts = golden_facts(case["bulletin"])
    now = T0 + case.get("at", 0)
    everyone = [a.id for a in golden_directory()[1]] + [GHOST]
    for variant in golden.values():
        assert_alike(variant, facts, [case["agency"]], now)
    assert_alike(golden["shipped"], facts, everyone, now)
    shipped = golden["shipped"]["auto"]
    if case.get("action", "receive") == "receive":
        got = shipped.permitted_receivers(facts, [case["agency"]], now)
        assert got == ([case["agency"]] if case["allowed"] else [])


def test_prefilter_leaves_out_only_what_it_proves(
    golden: dict[str, dict[str, PolicyEngine]],
) -> None:
    """A SECRET bulletin releasable to GT: the prefilter drops those below SECRET and
    those outside GT that nothing else grants (the SICA centre), and keeps the originator,
    the named agency and the unknown id for Cedar."""
    engine = golden["shipped"]["auto"]
    facts = golden_facts({"classification": "SECRET", "rel_to": ["GT"], "named": ["jm-military"]})
    everyone = [a.id for a in golden_directory()[1]] + [GHOST]
    kept = engine.bundle._prefilter.survivors(
        bulletin_entity(facts), everyone, engine.directory._receivers
    )
    assert kept == ["gt-police", "gt-military", "gt-foreign", "jm-military", GHOST]
    # Cedar then denies gt-foreign (it does not follow the topic).
    assert engine.permitted_receivers(facts, everyone, T0) == [
        "gt-police",
        "gt-military",
        "jm-military",
    ]
    assert_alike(golden["shipped"], facts, everyone, T0)
    # With no rule proven nothing is left out.
    off = Prefilter(clearance=False, releasability=False)
    assert off.survivors(bulletin_entity(facts), everyone, engine.directory._receivers) == everyone


def test_entities_the_policies_name_are_in_every_slice(tmp_path: Path) -> None:
    """A policy may read a named entity's attributes: SICA is in the slice of a request
    that reaches nothing of SICA's (a CARICOM agency, a bulletin releasable to JM)."""
    root = tmp_path / "policies"
    shutil.copytree(POLICIES, root, ignore=shutil.ignore_patterns("*.json"))
    (root / "overrides" / "sica.cedar").write_text(
        cedarpy.format_policies(
            """@id("sica.closed")
@reason("test: SICA is closed")
forbid (principal, action == Istmo::Action::"receive", resource)
when { Istmo::Jurisdiction::"SICA".name == "closed" };
"""
        )
    )
    bundle = PolicyBundle.load(root)
    jurisdictions, agencies = golden_directory()
    closed = [j if j.code != "SICA" else JurisdictionInfo("SICA", j.kind, "closed", j.parents)
              for j in jurisdictions]  # fmt: skip
    facts = golden_facts({"originator": "jm-police", "origin_state": "JM", "rel_to": ["JM"]})
    these = engines(bundle, DirectorySnapshot.build(closed, agencies, bundle))
    [d] = these["slice"].decide_receive(facts, ["jm-military"], T0)
    assert (d.allowed, d.policy_ids, d.errors) == (False, ("sica.closed",), ())
    assert_alike(these, facts, ["jm-military", "jm-police"], T0)


# --------------------------------------------------------------------------- derive


def _derive(text: str) -> tuple[str, ...]:
    return Prefilter.derive(cedarpy.PolicySet.from_str(text).to_pst()).rules


BASE = (POLICIES / "base.cedar").read_text()


@pytest.mark.parametrize(
    ("old", "new", "rules"),
    [
        ("", "", ("clearance", "releasability")),
        # a publish-only grant cannot apply to receive
        ("", 'permit (principal, action == Istmo::Action::"publish", resource);',
         ("clearance", "releasability")),
        ("", "permit (principal, action, resource);", ("clearance",)),
        ("", 'permit (principal, action in [Istmo::Action::"publish"], resource);',
         ("clearance",)),
        ("principal in resource.releasableTo", "principal.sector == \"auditor\"",
         ("clearance",)),
        ("unless { principal == resource.originator };\n\n@id(\"guard.embargo\")",
         ";\n\n@id(\"guard.embargo\")", ("releasability",)),
        ("principal.clearance < resource.classification }\nunless",
         "principal.clearance <= resource.classification }\nunless", ("releasability",)),
        ('action == Istmo::Action::"receive",\n  resource\n)\nwhen { principal.clearance',
         'action,\n  resource\n)\nwhen { principal.clearance', ("releasability",)),
    ],
    ids=["shipped", "publish-grant", "any-action-grant", "action-in-grant",
         "other-releasable", "clearance-no-exemption", "clearance-le", "clearance-any-action"],
)  # fmt: skip
def test_rules_follow_the_policy_forms(old: str, new: str, rules: tuple[str, ...]) -> None:
    assert old == "" or BASE.count(old) == 1
    text = BASE.replace(old, new) if old else BASE + new
    assert _derive(text) == rules


def test_annotations_and_layout_do_not_matter() -> None:
    renamed = BASE.replace('@id("guard.clearance")', '@id("guard.clearance-v2")')
    assert _derive(cedarpy.format_policies(renamed, line_width=60)) == (
        "clearance",
        "releasability",
    )


# --------------------------------------------------------------------------- hypothesis


@st.composite
def directories(draw: st.DrawFn) -> tuple[list[JurisdictionInfo], list[AgencyInfo]]:
    """1-3 communities (a later one may sit inside an earlier one), 1-5 states in 0-2 of
    them, and 1-12 agencies of any sector, status and clearance, in a state or directly in
    0-2 communities."""
    communities = [f"CM{i}" for i in range(draw(st.integers(1, 3)))]
    jurisdictions = [
        JurisdictionInfo(c, "community", c, (communities[i - 1],) if i and draw(st.booleans())
                         else ())
        for i, c in enumerate(communities)
    ]  # fmt: skip
    states = [f"ST{i}" for i in range(draw(st.integers(1, 5)))]
    some_communities = st.lists(st.sampled_from(communities), unique=True, max_size=2)
    jurisdictions += [
        JurisdictionInfo(s, "state", s, tuple(draw(some_communities))) for s in states
    ]
    agencies = []
    for i in range(draw(st.integers(1, 12))):
        in_state = draw(st.booleans())
        agencies.append(
            AgencyInfo(
                id=f"ag{i}",
                name=f"ag{i}",
                sector=draw(st.sampled_from(SECTORS)),
                status=draw(st.sampled_from(["active", "active", "active", "suspended"])),
                clearance=draw(st.integers(0, 3)),
                topics=draw(st.frozensets(st.sampled_from(TOPICS))),
                state=draw(st.sampled_from(states)) if in_state else None,
                communities=() if in_state else tuple(draw(some_communities)),
                min_source_grade=draw(st.none() | st.sampled_from(GRADES)),
            )
        )
    return jurisdictions, agencies


@st.composite
def bulletins(
    draw: st.DrawFn, jurisdictions: list[JurisdictionInfo], agencies: list[AgencyInfo]
) -> BulletinFacts:
    ids = [a.id for a in agencies]
    codes = [j.code for j in jurisdictions]
    states = [j.code for j in jurisdictions if j.kind == "state"]
    originator = draw(st.sampled_from([*ids, GHOST]))
    known = next((a for a in agencies if a.id == originator), None)
    origin_state = draw(st.just(known.state) if known else st.none() | st.sampled_from(states))
    handling = tuple(draw(st.lists(st.sampled_from(list(Handling)), unique=True, max_size=2)))
    labels = Labels(
        topic=draw(st.sampled_from(TOPICS)),
        classification=draw(st.sampled_from(list(Classification))),
        tlp=draw(st.sampled_from(list(Tlp))),
        rel_to=tuple(draw(st.lists(st.sampled_from([*codes, "XX"]), min_size=1, max_size=3,
                                   unique=True))),
        handling=handling,
        handling_note="see note" if Handling.H3 in handling else None,
        precedence=draw(st.sampled_from(list(Precedence))),
        source_grade=draw(st.none() | st.sampled_from(GRADES)),
        named=tuple(draw(st.lists(st.sampled_from([*ids, GHOST]), unique=True, max_size=3))),
        judicial_consent=tuple(draw(st.lists(st.sampled_from(ids), unique=True, max_size=2))),
    )  # fmt: skip
    moment = st.none() | st.integers(NOW - 50, NOW + 50)
    return BulletinFacts(
        "6f1c1a8e-3c1e-4a55-9d55-6c0e0b7d2a10",
        originator,
        origin_state,
        labels,
        draw(moment),
        draw(moment),
    )


@pytest.mark.parametrize("variant", list(VARIANTS))
@settings(max_examples=40, deadline=None, database=None)
@given(data=st.data())
def test_random_directories_alike(
    bundles: dict[str, PolicyBundle], variant: str, data: st.DataObject
) -> None:
    jurisdictions, agencies = data.draw(directories(), label="directory")
    bundle = bundles[variant]
    these = engines(bundle, DirectorySnapshot.build(jurisdictions, agencies, bundle))
    everyone = [a.id for a in agencies] + [GHOST]
    for _ in range(3):
        facts = data.draw(bulletins(jurisdictions, agencies), label="bulletin")
        now = data.draw(st.integers(NOW - 60, NOW + 60), label="now")
        candidates = data.draw(st.permutations(everyone), label="candidates")
        allowed = assert_alike(these, facts, candidates, now)
        kept = bundle._prefilter.survivors(bulletin_entity(facts), candidates,
                                           these["auto"].directory._receivers)  # fmt: skip
        event(f"{variant}: prefilter left out {'some' if len(kept) < len(everyone) else 'none'}")
        event(f"{variant}: {'some' if allowed else 'none'} allowed")
