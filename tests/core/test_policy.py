"""The policy engine against the real ``policies/`` bundle and a small fixture directory.

Directory: SICA = GT, SV, HN, BZ; CARICOM = BZ, JM, TT (Belize is in both). National
agencies hang off their state; the regional centre and the auditor hang off SICA directly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import cedarpy
import pytest

from broker.policy.engine import (
    AgencyInfo,
    BulletinFacts,
    Change,
    Decision,
    DirectorySnapshot,
    JurisdictionInfo,
    PolicyBundle,
    PolicyEngine,
    PolicyLoadError,
    simulate,
)
from broker.policy.entities import _Whole
from broker.policy.prefilter import ReceiverIndex
from broker.policy.slicing import EntityIndex
from schemas.errors import ConfigError
from schemas.labels import Classification, Labels, Tlp

POLICIES = Path(__file__).resolve().parents[2] / "policies"
NOW = 1_780_000_000
BULLETIN_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
DRUGS = "drug-trafficking"
ALL_TOPICS = frozenset({DRUGS, "arms-trafficking", "migration", "border-incident"})

JURISDICTIONS = (
    JurisdictionInfo("SICA", "community", "Central American Integration System", ()),
    JurisdictionInfo("CARICOM", "community", "Caribbean Community", ()),
    JurisdictionInfo("GT", "state", "Guatemala", ("SICA",)),
    JurisdictionInfo("SV", "state", "El Salvador", ("SICA",)),
    JurisdictionInfo("HN", "state", "Honduras", ("SICA",)),
    JurisdictionInfo("BZ", "state", "Belize", ("SICA", "CARICOM")),
    JurisdictionInfo("JM", "state", "Jamaica", ("CARICOM",)),
    JurisdictionInfo("TT", "state", "Trinidad and Tobago", ("CARICOM",)),
)


def _agency(
    aid: str,
    sector: str = "police",
    clearance: int = 2,
    topics: frozenset[str] = frozenset({DRUGS}),
    status: str = "active",
    communities: tuple[str, ...] = (),
) -> AgencyInfo:
    state = None if communities else aid.split("-")[0].upper()
    return AgencyInfo(aid, aid, sector, status, clearance, topics, state, communities)


AGENCIES = (
    _agency("gt-police", topics=frozenset({DRUGS, "migration"})),
    _agency("gt-military", "military", 3, ALL_TOPICS),
    _agency("gt-justice", "justice", 1),
    _agency("sv-police", topics=frozenset({DRUGS, "migration"})),
    _agency("hn-police", status="suspended"),
    _agency("bz-police"),
    _agency("jm-police"),
    _agency("tt-police", status="revoked"),
    _agency("sica-rsc", "regional-centre", 3, ALL_TOPICS, communities=("SICA",)),
    _agency("sica-audit", "auditor", 1, communities=("SICA",)),
)
AGENCY_IDS = [a.id for a in AGENCIES]


@pytest.fixture(scope="module")
def bundle() -> PolicyBundle:
    return PolicyBundle.load(POLICIES)


@pytest.fixture(scope="module")
def engine(bundle: PolicyBundle) -> PolicyEngine:
    return PolicyEngine(bundle, DirectorySnapshot.build(JURISDICTIONS, AGENCIES, bundle))


def facts(
    originator: str = "gt-police",
    origin_state: str | None = "GT",
    not_before: int | None = None,
    expires_at: int | None = None,
    **labels: Any,
) -> BulletinFacts:
    """A CONFIDENTIAL TLP:AMBER drug-trafficking bulletin releasable to SICA, by default."""
    fields: dict[str, Any] = {
        "topic": DRUGS,
        "classification": Classification.CONFIDENTIAL,
        "tlp": Tlp.AMBER,
        "rel_to": ("SICA",),
        **labels,
    }
    return BulletinFacts(
        BULLETIN_ID, originator, origin_state, Labels(**fields), not_before, expires_at
    )


def receive(engine: PolicyEngine, f: BulletinFacts, now: int = NOW) -> dict[str, Decision]:
    return {d.agency: d for d in engine.decide_receive(f, AGENCY_IDS, now)}


def copy_policies(tmp_path: Path) -> Path:
    """The real bundle (schema, base, overrides), without the demo directory."""
    root = tmp_path / "policies"
    shutil.copytree(POLICIES, root, ignore=shutil.ignore_patterns("*.json"))
    return root


def write_override(root: Path, community: str, text: str) -> None:
    (root / "overrides").mkdir(exist_ok=True)
    (root / "overrides" / f"{community}.cedar").write_text(cedarpy.format_policies(text))


# --------------------------------------------------------------------------- decisions

ALLOW_RELEASABLE = ("grant.releasable",)
ALLOW_NAMED = ("grant.named-recipient", "grant.releasable")
ALLOW_OWN = ("grant.originator", "grant.releasable")


def test_default_bulletin_fans_out_to_sica_only(engine: PolicyEngine) -> None:
    got = receive(engine, facts())
    assert {a for a, d in got.items() if d.allowed} == {
        "gt-police",
        "gt-military",
        "sv-police",
        "bz-police",
        "sica-rsc",
    }
    assert got["sv-police"].policy_ids == ALLOW_RELEASABLE
    assert got["jm-police"].policy_ids == ()  # default deny: no grant matched
    assert got["hn-police"].policy_ids == ("guard.agency-suspended",)
    assert got["tt-police"].policy_ids == ("guard.agency-suspended",)  # revoked; guards report
    assert got["sica-audit"].policy_ids == ("guard.auditor-no-content", "guard.clearance")
    assert all(not d.errors for d in got.values())


CASES: list[tuple[str, dict[str, Any], int, str, bool, tuple[str, ...]]] = [
    # (case, facts(**kw), now offset, agency, allowed, policy ids)
    ("releasable via state", {}, 0, "sv-police", True, ALLOW_RELEASABLE),
    ("belize in SICA", {}, 0, "bz-police", True, ALLOW_RELEASABLE),
    ("belize in CARICOM", {"rel_to": ("CARICOM",)}, 0, "bz-police", True, ALLOW_RELEASABLE),
    ("not releasable", {"rel_to": ("CARICOM",)}, 0, "sv-police", False, ()),
    ("state list skips centre", {"rel_to": ("GT", "SV")}, 0, "sica-rsc", False, ()),
    ("centre in community", {}, 0, "sica-rsc", True, ALLOW_RELEASABLE),
    ("clearance", {}, 0, "gt-justice", False, ("guard.clearance",)),
    ("secret", {"classification": Classification.SECRET}, 0, "sv-police", False,
     ("guard.clearance",)),
    ("named keeps clearance", {"classification": Classification.SECRET, "named": ("sv-police",)},
     0, "sv-police", False, ("guard.clearance",)),
    ("suspended", {}, 0, "hn-police", False, ("guard.agency-suspended",)),
    ("suspended named", {"named": ("hn-police",)}, 0, "hn-police", False,
     ("guard.agency-suspended",)),
    ("revoked named", {"named": ("tt-police",)}, 0, "tt-police", False,
     ("guard.agency-suspended",)),
    ("embargo", {"not_before": NOW + 60}, 0, "sv-police", False, ("guard.embargo",)),
    ("embargo lifted", {"not_before": NOW + 60}, 60, "sv-police", True, ALLOW_RELEASABLE),
    ("expired", {"expires_at": NOW}, 0, "sv-police", False, ("guard.expired",)),
    ("not yet expired", {"expires_at": NOW + 1}, 0, "sv-police", True, ALLOW_RELEASABLE),
    ("red", {"tlp": Tlp.RED}, 0, "sv-police", False, ("guard.tlp-red",)),
    ("red named", {"tlp": Tlp.RED, "named": ("sv-police",)}, 0, "sv-police", True, ALLOW_NAMED),
    ("red named outside", {"tlp": Tlp.RED, "named": ("jm-police",)}, 0, "jm-police", True,
     ("grant.named-recipient",)),
    ("strict same state", {"tlp": Tlp.AMBER_STRICT}, 0, "gt-military", True, ALLOW_RELEASABLE),
    ("strict other state", {"tlp": Tlp.AMBER_STRICT}, 0, "sv-police", False,
     ("guard.tlp-amber-strict",)),
    ("strict centre", {"tlp": Tlp.AMBER_STRICT}, 0, "sica-rsc", False,
     ("guard.tlp-amber-strict",)),
    ("strict named", {"tlp": Tlp.AMBER_STRICT, "named": ("sv-police",)}, 0, "sv-police", True,
     ALLOW_NAMED),
    ("strict no origin state", {"tlp": Tlp.AMBER_STRICT, "origin_state": None}, 0,
     "gt-military", False, ("guard.tlp-amber-strict",)),
    ("subscribed", {"topic": "migration"}, 0, "sv-police", True, ALLOW_RELEASABLE),
    ("not subscribed", {"topic": "migration"}, 0, "bz-police", False, ("guard.subscription",)),
    ("named skips subscription", {"topic": "migration", "named": ("bz-police",)}, 0,
     "bz-police", True, ALLOW_NAMED),
    ("auditor", {"classification": Classification.UNCLASSIFIED}, 0, "sica-audit", False,
     ("guard.auditor-no-content",)),
    ("auditor named", {"classification": Classification.UNCLASSIFIED, "named": ("sica-audit",)},
     0, "sica-audit", True, ALLOW_NAMED),
    ("guards sorted", {"topic": "migration", "classification": Classification.SECRET}, 0,
     "gt-justice", False, ("guard.clearance", "guard.subscription")),
    ("originator: expired", {"expires_at": NOW - 1}, 0, "gt-police", True, ALLOW_OWN),
    ("originator: secret", {"classification": Classification.SECRET, "tlp": Tlp.RED}, 0,
     "gt-police", True, ALLOW_OWN),
    ("originator: embargo", {"not_before": NOW + 60}, 0, "gt-police", True, ALLOW_OWN),
    ("originator: outside rel_to", {"rel_to": ("JM",)}, 0, "gt-police", True,
     ("grant.originator",)),
    ("originator: suspended", {"originator": "hn-police", "origin_state": "HN"}, 0, "hn-police",
     False, ("guard.agency-suspended",)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("kw", "offset", "agency", "allowed", "policy_ids"),
    [pytest.param(*c[1:], id=c[0]) for c in CASES],
)
def test_receive(
    engine: PolicyEngine,
    kw: dict[str, Any],
    offset: int,
    agency: str,
    allowed: bool,
    policy_ids: tuple[str, ...],
) -> None:
    [d] = engine.decide_receive(facts(**kw), [agency], NOW + offset)
    assert (d.agency, d.action, d.allowed, d.policy_ids, d.errors) == (
        agency,
        "receive",
        allowed,
        policy_ids,
        (),
    )


def test_reasons_are_the_policies_reason_texts(engine: PolicyEngine) -> None:
    tree = cedarpy.policies_to_pst((POLICIES / "base.cedar").read_text())
    reason = {p.annotations["id"]: p.annotations["reason"] for p in tree.static_policies.values()}
    assert engine.bundle.reasons.items() >= reason.items()
    assert list(engine.bundle.reasons)[-2:] == [
        "caricom.military-no-migration",
        "sica.secret-national-only",
    ]
    d = receive(engine, facts())["sica-audit"]
    assert d.reasons == tuple(reason[p] for p in d.policy_ids)
    assert d.reasons[0] == "auditors see metadata, never content, unless named"


def test_publish_by_originator(engine: PolicyEngine) -> None:
    d = engine.decide_publish(facts(), NOW)
    assert (d.agency, d.action, d.allowed) == ("gt-police", "publish", True)
    assert d.policy_ids == ("grant.publish-own",)


def test_publish_by_suspended_originator_is_denied(engine: PolicyEngine) -> None:
    d = engine.decide_publish(facts(originator="hn-police", origin_state="HN"), NOW)
    assert (d.allowed, d.policy_ids) == (False, ("guard.agency-suspended",))


def test_publish_by_unknown_originator_is_denied(engine: PolicyEngine) -> None:
    d = engine.decide_publish(facts(originator="xx-police"), NOW)
    assert (d.allowed, d.policy_ids, d.errors) == (False, (), ("unknown agency",))


def test_unknown_candidate_denies_only_itself(engine: PolicyEngine) -> None:
    got = engine.decide_receive(facts(), ["sv-police", "nobody", "bz-police", "sv-police"], NOW)
    assert [(d.agency, d.allowed) for d in got] == [
        ("sv-police", True),
        ("nobody", False),
        ("bz-police", True),
        ("sv-police", True),
    ]
    assert got[1].errors == ("unknown agency",)


def test_empty_fan_out(engine: PolicyEngine) -> None:
    assert engine.decide_receive(facts(), [], NOW) == []


def test_unknown_jurisdictions_and_named_agencies_match_nobody(engine: PolicyEngine) -> None:
    got = receive(engine, facts(rel_to=("XX",), named=("zz-police",)))
    assert [a for a, d in got.items() if d.allowed or d.errors] == ["gt-police"]
    assert got["gt-police"].policy_ids == ("grant.originator",)  # its own copy only
    assert got["sv-police"].policy_ids == ()  # no grant matched


# --------------------------------------------------------------------------- fail closed


def test_directory_with_wrong_attribute_type_is_refused(bundle: PolicyBundle) -> None:
    bad = dataclasses.replace(AGENCIES[3])
    object.__setattr__(bad, "clearance", "SECRET")  # bypass the dataclass' type
    with pytest.raises(ConfigError, match="'sv-police': clearance must be an int"):
        DirectorySnapshot.build(JURISDICTIONS, [*AGENCIES[:3], bad], bundle)


def test_directory_type_caught_only_by_cedar_schema_is_refused(bundle: PolicyBundle) -> None:
    bad = dataclasses.replace(AGENCIES[3])
    object.__setattr__(bad, "name", 42)
    with pytest.raises(ConfigError, match="does not conform to the policy schema"):
        DirectorySnapshot.build(JURISDICTIONS, [*AGENCIES[:3], bad], bundle)


def test_a_directory_parsed_later_refuses_what_the_schema_refuses(bundle: PolicyBundle) -> None:
    """A rebuild after a directory change leaves the whole directory's parse to its first
    use: the same schema error then, and every decision that needs it refused."""
    bad = dataclasses.replace(AGENCIES[3])
    object.__setattr__(bad, "name", 42)
    later = DirectorySnapshot.build(JURISDICTIONS, [*AGENCIES[:3], bad], bundle, parse=False)
    for _ in range(2):  # the same each time it is asked for
        with pytest.raises(ValueError, match="does not conform to the schema"):
            later.entities()
    whole = PolicyEngine(bundle, later, entities="whole")
    got = whole.decide_receive(facts(), [a.id for a in AGENCIES[:3]], NOW)
    assert [d.allowed for d in got] == [False, False, False]
    assert all(d.errors for d in got)
    # Conforming, parsed later or at once: the same decisions.
    now = PolicyEngine(
        bundle, DirectorySnapshot.build(JURISDICTIONS, AGENCIES, bundle), entities="whole"
    )
    late = DirectorySnapshot.build(JURISDICTIONS, AGENCIES, bundle, parse=False)
    ids = [a.id for a in AGENCIES]
    assert PolicyEngine(bundle, late, entities="whole").decide_receive(facts(), ids, NOW) == (
        now.decide_receive(facts(), ids, NOW)
    )


def test_wrong_type_smuggled_past_the_snapshot_still_denies(bundle: PolicyBundle) -> None:
    """The sample's fail-open: clearance "SECRET" (a string) made guard.clearance error."""
    good = DirectorySnapshot.build(JURISDICTIONS, AGENCIES, bundle)
    entities = json.loads(str(good.entities()))
    [sv] = [e for e in entities if e["uid"]["id"] == "sv-police"]
    sv["attrs"]["clearance"] = "SECRET"
    smuggled = DirectorySnapshot(  # bypasses build(): no Python checks, no schema
        "0" * 16,
        _Whole(json.dumps(entities), None),  # parsed on first use, without a schema
        good._agencies,
        good._schema_digest,
        EntityIndex.build(entities),
        ReceiverIndex.build(entities),  # leaves sv-police out: Cedar decides it
    )
    secret = facts(classification=Classification.SECRET)
    whole = PolicyEngine(bundle, smuggled, entities="whole")
    [d] = whole.decide_receive(secret, ["sv-police"], NOW)
    assert (d.allowed, d.policy_ids) == (False, ())  # Cedar itself said Allow (grant.releasable)
    assert d.errors[0].startswith("error while evaluating policy `guard.clearance`: type error")
    # A slice is parsed against the schema again: refused before Cedar evaluates.
    sliced = PolicyEngine(bundle, smuggled, entities="slice")
    [d] = sliced.decide_receive(secret, ["sv-police"], NOW)
    assert (d.allowed, d.policy_ids) == (False, ())
    assert d.errors[0].startswith("bulletin facts rejected: entity does not conform")
    assert whole.permitted_receivers(secret, ["sv-police"], NOW) == []
    assert sliced.permitted_receivers(secret, ["sv-police"], NOW) == []


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"state": "SICA"}, "is not a known state"),
        ({"communities": ("NOWHERE",), "state": None}, "unknown community"),
        ({"sector": "navy"}, "unknown sector or status"),
        ({"clearance": 4}, "clearance must be an int 0..3"),
        ({"min_source_grade": "G1"}, "min_source_grade must be 'A1'..'F6' or None"),
        ({"min_source_grade": "b2"}, "min_source_grade must be"),
        ({"min_source_grade": "B7"}, "min_source_grade must be"),
        ({"min_source_grade": "B2 "}, "min_source_grade must be"),
        ({"min_source_grade": 12}, "min_source_grade must be"),
        ({"topics": DRUGS}, "topics must be a frozenset"),
    ],
)
def test_directory_bad_values_are_refused(
    bundle: PolicyBundle, change: dict[str, Any], match: str
) -> None:
    bad = dataclasses.replace(AGENCIES[0], **change)
    with pytest.raises(ConfigError, match=match):
        DirectorySnapshot.build(JURISDICTIONS, [bad], bundle)


def test_directory_duplicates_and_unknown_parents_are_refused(bundle: PolicyBundle) -> None:
    with pytest.raises(ConfigError, match="duplicate agency id"):
        DirectorySnapshot.build(JURISDICTIONS, [AGENCIES[0], AGENCIES[0]], bundle)
    orphan = JurisdictionInfo("CR", "state", "Costa Rica", ("SIECA",))
    with pytest.raises(ConfigError, match="'CR': bad kind or unknown parent"):
        DirectorySnapshot.build([*JURISDICTIONS, orphan], AGENCIES, bundle)


@pytest.mark.parametrize(
    "attr",
    [
        ("not_before", "later"),
        ("expires_at", 1.5),
        ("bulletin_id", None),
        ("labels", Labels.model_construct(topic=DRUGS, classification="SECRET")),
    ],
    ids=["embargo-str", "expiry-float", "id-none", "labels-bypassed"],
)
def test_malformed_facts_deny_everyone(engine: PolicyEngine, attr: tuple[str, Any]) -> None:
    bad = facts()
    object.__setattr__(bad, *attr)
    got = engine.decide_receive(bad, ["sv-police", "gt-police"], NOW)
    assert [d.allowed for d in got] == [False, False]
    assert all(d.errors[0].startswith("bulletin facts rejected") for d in got)
    assert not engine.decide_publish(bad, NOW).allowed


@pytest.mark.parametrize("now", [True, "1780000000", 1.78e9, None])
def test_malformed_now_denies(engine: PolicyEngine, now: Any) -> None:
    [d] = engine.decide_receive(facts(), ["sv-police"], now)
    assert (d.allowed, d.errors) == (False, ("now must be an int (epoch seconds)",))


def test_now_beyond_cedar_long_denies(engine: PolicyEngine) -> None:
    [d] = engine.decide_receive(facts(), ["sv-police"], 2**63)
    assert (d.allowed, d.policy_ids) == (False, ())
    assert d.errors[0].startswith("failed to build request")


def test_decisions_are_shared_only_by_the_same_facts_in_the_same_second(
    engine: PolicyEngine,
) -> None:
    """The engine reuses a decision for another bulletin with the same facts at the same
    second; a different second, other labels or a malformed id are decided afresh."""
    expiring = facts(expires_at=NOW + 1)
    other = dataclasses.replace(expiring, bulletin_id="00000000-0000-4000-8000-0000000000ff")
    first = engine.decide_receive(expiring, ["sv-police", "gt-police"], NOW)
    assert first[0].allowed
    assert engine.decide_receive(other, ["sv-police", "gt-police"], NOW) == first
    # One second later the bulletin has expired: not the cached answer.
    [late] = engine.decide_receive(other, ["sv-police"], NOW + 1)
    assert (late.allowed, late.policy_ids) == (False, ("guard.expired",))
    # Other labels: decided on their own (SECRET is above sv-police's clearance).
    [secret] = engine.decide_receive(
        dataclasses.replace(other, labels=facts(classification=Classification.SECRET).labels),
        ["sv-police"],
        NOW,
    )
    assert not secret.allowed
    # A malformed id after a well-formed twin was allowed: still refused.
    bad = facts(expires_at=NOW + 1)
    object.__setattr__(bad, "bulletin_id", None)
    [refused] = engine.decide_receive(bad, ["sv-police"], NOW)
    assert not refused.allowed
    assert refused.errors[0].startswith("bulletin facts rejected")


def _raw_entities() -> list[dict[str, Any]]:
    def uid(kind: str, ident: str) -> dict[str, str]:
        return {"type": f"Istmo::{kind}", "id": ident}

    sv_police = {"name": "x", "sector": "police", "status": "active", "clearance": 2,
                 "topics": [DRUGS], "home": {"__entity": uid("Jurisdiction", "SV")}}  # fmt: skip
    bulletin = {"topic": DRUGS, "classification": 0, "tlp": "GREEN", "namedRecipients": [],
                "releasableTo": [{"__entity": uid("Jurisdiction", "SICA")}], "handling": [],
                "judicialConsent": [],
                "originator": {"__entity": uid("Agency", "gt-police")}}  # fmt: skip
    return [
        {"uid": uid("Jurisdiction", "SICA"), "attrs": {"kind": "community", "name": "SICA"},
         "parents": []},
        {"uid": uid("Jurisdiction", "SV"), "attrs": {"kind": "state", "name": "SV"},
         "parents": [uid("Jurisdiction", "SICA")]},
        {"uid": uid("Agency", "sv-police"), "attrs": sv_police,
         "parents": [uid("Jurisdiction", "SV")]},
        {"uid": uid("Bulletin", "b"), "attrs": bulletin, "parents": []},
    ]  # fmt: skip


def test_erroring_guard_fails_closed(tmp_path: Path) -> None:
    """Cedar skips a forbid that errors and answers Allow; the wrapper must deny."""
    root = copy_policies(tmp_path)
    write_override(
        root,
        "sica",
        """@id("sica.overflow-probe")
@reason("test: a guard that overflows at runtime")
forbid (principal, action == Istmo::Action::"receive", resource)
when { principal in Istmo::Jurisdiction::"SICA" && context.now + 1 > 0 };
""",
    )
    probe = PolicyBundle.load(root)
    engine = PolicyEngine(probe, DirectorySnapshot.build(JURISDICTIONS, AGENCIES, probe))
    at_limit = 2**63 - 1
    raw = cedarpy.is_authorized(
        {
            "principal": {"type": "Istmo::Agency", "id": "sv-police"},
            "action": {"type": "Istmo::Action", "id": "receive"},
            "resource": {"type": "Istmo::Bulletin", "id": "b"},
            "context": {"now": at_limit},
        },
        (root / "base.cedar").read_text() + (root / "overrides" / "sica.cedar").read_text(),
        _raw_entities(),
        (root / "schema.cedarschema").read_text(),
    )
    assert raw.decision == cedarpy.Decision.Allow  # the pitfall: Allow despite...
    assert raw.diagnostics.errors  # ...the guard that errored

    [d] = engine.decide_receive(facts(), ["sv-police"], at_limit)
    assert (d.allowed, d.policy_ids) == (False, ())
    assert len(d.errors) == 1
    assert d.errors[0].startswith("error while evaluating policy `sica.overflow-probe`")
    [ok] = engine.decide_receive(facts(), ["jm-police"], at_limit)  # guard not reached
    assert (ok.allowed, ok.errors) == (False, ())


def test_errors_are_short_and_never_carry_entity_json(engine: PolicyEngine) -> None:
    bad = facts()
    object.__setattr__(bad, "not_before", "x" * 1000)
    for d in engine.decide_receive(bad, ["sv-police"], NOW):
        assert all(len(e) <= 200 and "{" not in e for e in d.errors)


def test_engine_refuses_directory_of_another_schema(bundle: PolicyBundle, tmp_path: Path) -> None:
    root = copy_policies(tmp_path)
    schema = root / "schema.cedarschema"
    schema.write_text(schema.read_text() + "\n// a comment changes the schema text\n")
    other = PolicyBundle.load(root)
    with pytest.raises(ValueError, match="another policy schema"):
        PolicyEngine(bundle, DirectorySnapshot.build(JURISDICTIONS, AGENCIES, other))


# --------------------------------------------------------------------------- versions


def test_bundle_version_is_the_digest_of_its_canonical_text(bundle: PolicyBundle) -> None:
    assert re.fullmatch(r"[0-9a-f]{16}", bundle.version)
    assert bundle.version == hashlib.sha256(bundle.text.encode()).hexdigest()[:16]
    assert PolicyBundle.load(POLICIES).version == bundle.version
    assert bundle.files == ("base.cedar", "overrides/caricom.cedar", "overrides/sica.cedar")
    schema = (POLICIES / "schema.cedarschema").read_bytes()
    assert bundle.text.startswith(
        f"// ---- schema.cedarschema sha256:{hashlib.sha256(schema).hexdigest()}\n"
    )
    for rel in bundle.files:
        body = (POLICIES / rel).read_text()
        assert f"// ---- {rel} ({len(body.encode())} bytes)\n{body}" in bundle.text
    assert len(cedarpy.PolicySet.from_str(bundle.text)) == len(bundle.reasons)  # valid Cedar


def test_bundle_version_follows_content(bundle: PolicyBundle, tmp_path: Path) -> None:
    root = copy_policies(tmp_path)
    assert PolicyBundle.load(root).version == bundle.version  # path-relative, not absolute
    base = root / "base.cedar"
    base.write_text(base.read_text().replace("is under embargo", "is embargoed"))
    changed = PolicyBundle.load(root)
    assert changed.version != bundle.version
    write_override(
        root,
        "caricom",
        """@id("caricom.no-military-migration")
@reason("CARICOM: no migration bulletins to military agencies unless named")
forbid (principal, action == Istmo::Action::"receive", resource)
when { resource.releasableTo.contains(Istmo::Jurisdiction::"CARICOM") &&
       resource.topic == "migration" && principal.sector == "military" };
""",
    )
    with_override = PolicyBundle.load(root)
    assert with_override.version not in {bundle.version, changed.version}
    schema = root / "schema.cedarschema"
    schema.write_text(schema.read_text() + "// a schema comment is part of the version\n")
    assert PolicyBundle.load(root).version not in {bundle.version, with_override.version}
    (root / "overrides" / "caricom.cedar").unlink()
    (root / "overrides" / "sica.cedar").unlink()
    assert PolicyBundle.load(root).files == ("base.cedar",)


def test_overrides_take_part(engine: PolicyEngine) -> None:
    got = receive(engine, facts(classification=Classification.SECRET))
    assert got["sica-rsc"].policy_ids == ("sica.secret-national-only",)
    assert got["gt-military"].allowed
    named = receive(engine, facts(classification=Classification.SECRET, named=("sica-rsc",)))
    assert named["sica-rsc"].allowed


def test_a_bad_candidate_never_changes_a_built_engine(tmp_path: Path) -> None:
    root = copy_policies(tmp_path)
    active = PolicyBundle.load(root)
    version, text = active.version, active.text
    engine = PolicyEngine(active, DirectorySnapshot.build(JURISDICTIONS, AGENCIES, active))
    before = receive(engine, facts(tlp=Tlp.RED))
    base = root / "base.cedar"
    original = base.read_text()
    base.write_text(original.replace("principal.clearance <", "principal.clearence <"))
    with pytest.raises(PolicyLoadError):
        PolicyBundle.load(root)
    # A good candidate from the same files is a new value; the old one is untouched.
    base.write_text(original.replace('resource.tlp == "RED"', 'resource.tlp == "NONE"'))
    candidate = PolicyBundle.load(root)
    assert candidate.version != version
    assert receive(engine, facts(tlp=Tlp.RED)) == before
    assert (engine.bundle, active.version, active.text) == (active, version, text)
    assert before["sv-police"].policy_ids == ("guard.tlp-red",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        active.version = candidate.version  # type: ignore[misc]
    with pytest.raises(TypeError):
        active._labels["policy0"] = ("grant.everything", "")  # type: ignore[index]


def test_min_source_grade_reaches_cedar(bundle: PolicyBundle) -> None:
    picky = dataclasses.replace(AGENCIES[3], min_source_grade="B2")  # sv-police
    engine = PolicyEngine(bundle, DirectorySnapshot.build(JURISDICTIONS, [picky], bundle))
    for grade, allowed in [("A1", True), ("B2", True), ("B3", False), ("C2", False), (None, False)]:
        [d] = engine.decide_receive(facts(source_grade=grade), ["sv-police"], NOW)
        assert d.allowed is allowed, grade
        assert d.policy_ids == (ALLOW_RELEASABLE if allowed else ("guard.source-grade",))


def test_directory_version(bundle: PolicyBundle, engine: PolicyEngine) -> None:
    snap = DirectorySnapshot.build(JURISDICTIONS, AGENCIES, bundle)
    assert re.fullmatch(r"[0-9a-f]{16}", snap.version)
    shuffled = DirectorySnapshot.build(JURISDICTIONS[::-1], AGENCIES[::-1], bundle)
    assert shuffled.version == snap.version  # order of input does not matter
    suspended = [dataclasses.replace(a, status="suspended") if a.id == "sv-police" else a
                 for a in AGENCIES]  # fmt: skip
    assert DirectorySnapshot.build(JURISDICTIONS, suspended, bundle).version != snap.version
    assert snap.agency("sica-rsc") == AGENCIES[8]
    assert snap.agency("nobody") is None
    d = engine.decide_publish(facts(), NOW)
    assert (d.policy_version, d.directory_version) == (bundle.version, snap.version)


# --------------------------------------------------------------------------- explain


def test_explain_every_candidate(engine: PolicyEngine) -> None:
    got = {e.agency: e for e in engine.explain(facts(), [*AGENCY_IDS, "nobody"], NOW)}
    decided = receive(engine, facts())
    for agency, d in decided.items():
        e = got[agency]
        assert (e.allowed, e.policy_ids, e.reasons, e.errors) == (
            d.allowed,
            d.policy_ids,
            d.reasons,
            d.errors,
        )
        assert (e.action, e.policy_version, e.directory_version) == (
            "receive",
            d.policy_version,
            d.directory_version,
        )
    releasable = "the recipient's state or community is on the bulletin's releasability list"
    sv = got["sv-police"]
    assert (sv.grants, sv.grant_reasons) == (ALLOW_RELEASABLE, (releasable,))
    assert sv.summary == f"ALLOW: granted by grant.releasable ({releasable})"
    justice = got["gt-justice"]
    assert justice.grants == ALLOW_RELEASABLE  # would be granted, but a guard blocks
    assert justice.summary == (
        "DENY: blocked by guard.clearance (the recipient's clearance is below the "
        "bulletin's classification); matching grants: grant.releasable"
    )
    assert got["hn-police"].grants == ALLOW_RELEASABLE
    jm = got["jm-police"]
    assert (jm.allowed, jm.policy_ids, jm.grants) == (False, (), ())
    assert jm.summary == "DENY: no grant matched (default deny)"
    nobody = got["nobody"]
    assert (nobody.allowed, nobody.errors, nobody.grants) == (False, ("unknown agency",), ())
    assert nobody.summary == "DENY: unknown agency (fail closed)"
    gt = got["gt-police"]  # the originator
    assert gt.policy_ids == gt.grants == ALLOW_OWN


def test_explain_guard_with_no_grant(engine: PolicyEngine) -> None:
    [e] = engine.explain(facts(topic="migration", rel_to=("JM",)), ["gt-justice"], NOW)
    assert e.policy_ids == ("guard.clearance", "guard.subscription")
    assert e.grants == ()
    assert e.summary.endswith("; no grant matched either")


def test_explain_publish(engine: PolicyEngine) -> None:
    secret = facts(classification=Classification.SECRET)
    [e] = engine.explain(secret, [secret.originator], NOW, action="publish")
    assert (e.action, e.allowed, e.policy_ids, e.grants) == (
        "publish",
        False,
        ("guard.publish-clearance",),
        ("grant.publish-own",),
    )
    assert e.summary.startswith("DENY: blocked by guard.publish-clearance (the originator's")


def test_explain_malformed_facts(engine: PolicyEngine) -> None:
    bad = facts()
    object.__setattr__(bad, "expires_at", "soon")
    got = engine.explain(bad, ["sv-police", "nobody"], NOW)
    assert [e.allowed for e in got] == [False, False]
    assert got[0].summary.startswith("DENY: bulletin facts rejected")
    assert got[0].summary.endswith("(fail closed)")
    assert engine.explain(facts(), [], NOW) == []


# --------------------------------------------------------------------------- simulate


def _engine_for(root: Path) -> PolicyEngine:
    b = PolicyBundle.load(root)
    return PolicyEngine(b, DirectorySnapshot.build(JURISDICTIONS, AGENCIES, b))


def flip(c: Change) -> tuple[bool, tuple[str, ...], bool, tuple[str, ...]]:
    return (c.old.allowed, c.old.policy_ids, c.new.allowed, c.new.policy_ids)


def test_simulate_lists_exactly_the_flipped_decisions(engine: PolicyEngine, tmp_path: Path) -> None:
    root = copy_policies(tmp_path)
    (root / "overrides" / "sica.cedar").unlink()
    candidate = _engine_for(root)
    cases = [
        (facts(classification=Classification.SECRET), AGENCY_IDS),
        (facts(), AGENCY_IDS),
        (facts(classification=Classification.SECRET, named=("sica-rsc",)), ["sica-rsc"]),
    ]
    [change] = simulate(engine, candidate, cases, NOW)
    assert (change.bulletin_id, change.agency, change.action) == (
        BULLETIN_ID,
        "sica-rsc",
        "receive",
    )
    assert flip(change) == (False, ("sica.secret-national-only",), True, ("grant.releasable",))
    assert change.old == engine.decide_receive(cases[0][0], ["sica-rsc"], NOW)[0]
    assert change.new == candidate.decide_receive(cases[0][0], ["sica-rsc"], NOW)[0]
    assert change.new.policy_version == candidate.bundle.version != change.old.policy_version
    assert simulate(engine, engine, cases, NOW) == []


def test_simulate_publish_and_reason_changes(engine: PolicyEngine, tmp_path: Path) -> None:
    root = copy_policies(tmp_path)
    base = root / "base.cedar"
    publish_guard = "when { principal.clearance < resource.classification };\n\n"
    base.write_text(base.read_text().replace(publish_guard, "when { false };\n\n", 1))
    write_override(
        root,
        "sica",
        """@id("sica.suspended-again")
@reason("SICA: test guard that repeats the suspension guard")
forbid (principal, action == Istmo::Action::"receive", resource)
when { principal in Istmo::Jurisdiction::"SICA" && principal.status != "active" };
""",
    )
    candidate = _engine_for(root)
    cases = [(facts(classification=Classification.SECRET), ["hn-police"])]
    publish = (False, ("guard.publish-clearance",), True, ("grant.publish-own",))
    changes = simulate(engine, candidate, cases, NOW)
    assert [(c.agency, c.action, flip(c)) for c in changes] == [("gt-police", "publish", publish)]
    blocked = ("guard.agency-suspended", "guard.clearance")
    again = (False, blocked, False, (*blocked, "sica.suspended-again"))
    changes = simulate(engine, candidate, cases, NOW, include_reason_changes=True)
    assert [(c.agency, c.action, flip(c)) for c in changes] == [
        ("gt-police", "publish", publish),
        ("hn-police", "receive", again),
    ]


# --------------------------------------------------------------------------- bundle lints


def line_of(text: str, needle: str) -> int:
    """The 1-based line of the first occurrence of ``needle``."""
    return text[: text.index(needle)].count("\n") + 1


BASE_TEXT = (POLICIES / "base.cedar").read_text()
L = {pid: line_of(BASE_TEXT, f'@id("{pid}")') for pid in
     ("grant.publish-own", "guard.agency-suspended", "guard.clearance", "guard.embargo",
      "guard.expired")}  # fmt: skip
NOT_CANONICAL = "not in canonical Cedar format (run cedarpy.format_policies)"
BASE_MUTATIONS = [
    ("missing-id", '@id("guard.embargo")\n', "",
     f"base.cedar:{L['guard.embargo']}: policy #10 in the file has no @id"),
    ("duplicate-id", '@id("guard.expired")', '@id("guard.embargo")',
     f"base.cedar:{L['guard.expired']}: guard.embargo: duplicate @id "
     f"(first at base.cedar:{L['guard.embargo']})"),
    ("missing-reason", '@reason("the bulletin has expired")\n', "",
     f"base.cedar:{L['guard.expired']}: guard.expired: no @reason"),
    ("parse-error", 'when { principal.status != "active" };', "when { principal.status != };",
     f"base.cedar:{L['guard.agency-suspended']}: guard.agency-suspended: parse error: "
     "unexpected token `}`"),
    ("schema-invalid-attribute", "when { principal.clearance < resource.classification }\nunless",
     "when { principal.clearence < resource.classification }\nunless",
     f"base.cedar:{L['guard.clearance']}: guard.clearance: schema: attribute `clearence` on "
     "entity type `Istmo::Agency` not found"),
    ("schema-wrong-type", 'when { principal.status != "active" };',
     "when { principal.status != 1 };",
     f"base.cedar:{L['guard.agency-suspended']}: guard.agency-suspended: schema: "),
    ("schema-unsafe-optional", "when { resource has embargoUntil && context.now",
     "when { context.now",
     f"base.cedar:{L['guard.embargo']}: guard.embargo: schema: unable to guarantee safety of "
     "access to optional attribute `embargoUntil`"),
    ("unknown-action", 'action == Istmo::Action::"publish"', 'action == Istmo::Action::"post"',
     f"base.cedar:{L['grant.publish-own']}: grant.publish-own: schema: unrecognized action "
     '`Istmo::Action::"post"`'),
    ("not-canonical",
     'permit (\n  principal,\n  action == Istmo::Action::"publish",\n  resource\n)',
     'permit (principal, action == Istmo::Action::"publish", resource)',
     f"base.cedar:{L['grant.publish-own'] + 2}: grant.publish-own: {NOT_CANONICAL}"),
    ("names-one-bulletin", 'when { principal.status != "active" };',
     'when { principal.status != "active" || resource == Istmo::Bulletin::"b-1" };',
     f"base.cedar:{L['guard.agency-suspended']}: guard.agency-suspended: names one bulletin; "
     "a policy may decide on labels only"),
    ("not-canonical-between-policies", "// Istmo base policy set (v2)",
     "\n// Istmo base policy set (v2)", f"base.cedar:1: {NOT_CANONICAL}"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("old", "new", "problem"), [pytest.param(*m[1:], id=m[0]) for m in BASE_MUTATIONS]
)
def test_bad_base_is_refused_precisely(tmp_path: Path, old: str, new: str, problem: str) -> None:
    root = copy_policies(tmp_path)
    base = root / "base.cedar"
    text = base.read_text()
    assert old in text
    base.write_text(text.replace(old, new, 1))
    with pytest.raises(PolicyLoadError) as info:
        PolicyBundle.load(root)
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems
    assert isinstance(info.value, ConfigError)


TEMPLATE = "permit (principal == ?principal, action, resource);\n"
OVERRIDE_MUTATIONS = [
    ("no-community-reference",
     '@id("sica.x")\n@reason("r")\nforbid (principal, action, resource)\n'
     "when { principal.clearance < 1 };",
     'overrides/sica.cedar:1: sica.x: does not reference Istmo::Jurisdiction::"SICA"'),
    ("wrong-prefix",
     '@id("x")\n@reason("r")\nforbid (principal, action, resource)\n'
     'when { principal in Istmo::Jurisdiction::"SICA" };',
     "overrides/sica.cedar:1: x: an override's @id must start with 'sica.'"),
    ("duplicate-of-base",
     '@id("guard.clearance")\n@reason("r")\nforbid (principal, action, resource)\n'
     'when { principal in Istmo::Jurisdiction::"SICA" };',
     "overrides/sica.cedar:1: guard.clearance: duplicate @id "
     f"(first at base.cedar:{L['guard.clearance']})"),
    ("template", '@id("sica.t")\n@reason("r")\n' + TEMPLATE,
     "overrides/sica.cedar: templates are not allowed"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "problem"), [pytest.param(*m[1:], id=m[0]) for m in OVERRIDE_MUTATIONS]
)
def test_bad_override_is_refused(tmp_path: Path, text: str, problem: str) -> None:
    root = copy_policies(tmp_path)
    write_override(root, "sica", text)
    with pytest.raises(PolicyLoadError) as info:
        PolicyBundle.load(root)
    assert problem in info.value.problems, info.value.problems


def test_parse_error_names_the_policy_in_an_override(tmp_path: Path) -> None:
    root = copy_policies(tmp_path)
    good = (root / "overrides" / "caricom.cedar").read_text()
    broken = good + (
        '\n@id("caricom.broken")\n@reason("r")\n'
        "forbid (principal, action, resource)\nwhen { principal in };\n"
    )
    (root / "overrides" / "caricom.cedar").write_text(broken)
    with pytest.raises(PolicyLoadError) as info:
        PolicyBundle.load(root)
    line = line_of(broken, '@id("caricom.broken")')
    assert info.value.problems == [
        f"overrides/caricom.cedar:{line}: caricom.broken: parse error: unexpected token `}}`"
    ]


def test_unreadable_or_missing_files_are_refused(tmp_path: Path) -> None:
    root = copy_policies(tmp_path)
    (root / "base.cedar").unlink()
    with pytest.raises(PolicyLoadError, match=r"base.cedar: cannot read \(FileNotFoundError\)"):
        PolicyBundle.load(root)


def test_bad_schema_is_refused(tmp_path: Path) -> None:
    root = copy_policies(tmp_path)
    (root / "schema.cedarschema").write_text("namespace Istmo { entity ; }")
    with pytest.raises(PolicyLoadError, match=r"schema\.cedarschema: "):
        PolicyBundle.load(root)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    root = copy_policies(tmp_path)
    base = root / "base.cedar"
    text = base.read_text().replace('@id("guard.expired")', '@id("guard.embargo")')
    base.write_text(text.replace("principal.clearance <", "principal.clearence <"))
    with pytest.raises(PolicyLoadError) as info:
        PolicyBundle.load(root)
    assert len(info.value.problems) == 3  # a duplicate and two policies naming `clearence`
    assert str(info.value).startswith("policy bundle rejected: base.cedar:")


def test_an_override_may_not_grant(tmp_path: Path) -> None:
    """A permit in an override could reach past rel_to: refused at load."""
    root = tmp_path / "policies"
    shutil.copytree(POLICIES, root)
    sica = root / "overrides" / "sica.cedar"
    grant = (
        '\n@id("sica.everyone")\n@reason("widen")\n'
        'permit (principal, action == Istmo::Action::"receive", resource)\n'
        'when { principal in Istmo::Jurisdiction::"SICA" };\n'
    )
    sica.write_text(cedarpy.format_policies(sica.read_text() + grant))
    with pytest.raises(PolicyLoadError) as err:
        PolicyBundle.load(root)
    assert any("sica.everyone" in p and "only add restrictions" in p for p in err.value.problems)
