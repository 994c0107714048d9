"""The golden decision table (``policy_golden.json``) against the real ``policies/`` bundle.

The table is written by hand from the rules; the oracle must agree with it too, so the
three statements of the rules (prose table, Python oracle, Cedar) check one another.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from broker.policy.engine import (
    AgencyInfo,
    BulletinFacts,
    DirectorySnapshot,
    JurisdictionInfo,
    PolicyBundle,
    PolicyEngine,
    ReplyFacts,
)
from schemas.labels import TOPICS, Classification, Handling, Labels, Precedence, Tlp
from tests.core.policy_oracle import Oracle

POLICIES = Path(__file__).resolve().parents[2] / "policies"
GOLDEN: dict[str, Any] = json.loads((Path(__file__).with_name("policy_golden.json")).read_text())
T0: int = GOLDEN["t0"]
BULLETIN_ID = "6f1c1a8e-3c1e-4a55-9d55-6c0e0b7d2a10"
LABEL_FIELDS = frozenset(Labels.model_fields)


def golden_directory() -> tuple[list[JurisdictionInfo], list[AgencyInfo]]:
    spec = GOLDEN["directory"]
    jurisdictions = [
        JurisdictionInfo(j["code"], j["kind"], j["code"], tuple(j["parents"]))
        for j in spec["jurisdictions"]
    ]
    agencies = [
        AgencyInfo(
            id=a["id"],
            name=a["id"],
            sector=a["sector"],
            status=a.get("status", "active"),
            clearance=a["clearance"],
            topics=frozenset(spec["all_topics"] if a["topics"] == "all" else a["topics"]),
            state=a.get("state"),
            communities=tuple(a.get("communities", ())),
            min_source_grade=a.get("min_source_grade"),
        )
        for a in spec["agencies"]
    ]
    return jurisdictions, agencies


def golden_labels(b: dict[str, Any]) -> Labels:
    labels = {k: v for k, v in b.items() if k in LABEL_FIELDS}
    for key in ("rel_to", "handling", "named", "judicial_consent"):
        labels[key] = tuple(labels[key])
    labels["classification"] = Classification(labels["classification"])
    labels["tlp"] = Tlp(labels["tlp"])
    labels["precedence"] = Precedence(labels["precedence"])
    labels["handling"] = tuple(Handling(h) for h in labels["handling"])
    return Labels(**labels)


def golden_facts(changes: dict[str, Any]) -> BulletinFacts:
    b = {**GOLDEN["bulletin_defaults"], **changes}
    answered = b.get("in_reply_to")
    in_reply_to = None
    if answered is not None:
        in_reply_to = ReplyFacts(
            golden_labels({**GOLDEN["bulletin_defaults"], **answered}),
            tuple(answered["releasable_within"]),
            tuple(answered["audience"]),
        )

    def at(offset: int | None) -> int | None:
        return None if offset is None else T0 + offset

    return BulletinFacts(
        BULLETIN_ID,
        b["originator"],
        b["origin_state"],
        golden_labels(b),
        at(b["not_before"]),
        at(b["expires_at"]),
        in_reply_to,
    )


CASES = GOLDEN["cases"]


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    bundle = PolicyBundle.load(POLICIES)
    jurisdictions, agencies = golden_directory()
    return PolicyEngine(bundle, DirectorySnapshot.build(jurisdictions, agencies, bundle))


@pytest.fixture(scope="module")
def oracle() -> Oracle:
    return Oracle(*golden_directory())


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_golden(engine: PolicyEngine, oracle: Oracle, case: dict[str, Any]) -> None:
    facts = golden_facts(case["bulletin"])
    now = T0 + case.get("at", 0)
    action = case.get("action", "receive")
    if action == "publish":
        assert facts.originator == case["agency"], "a publish case asks for the originator"
        d = engine.decide_publish(facts, now)
    elif action == "forward":
        to, consent = case["to"], case["consent"]
        d = engine.decide_forward(facts, case["agency"], to, now, consent=consent)
    else:
        [d] = engine.decide_receive(facts, [case["agency"]], now)
    expected = (case["agency"], action, case["allowed"], tuple(case["policy_ids"]), ())
    assert (d.agency, d.action, d.allowed, d.policy_ids, d.errors) == expected
    verdict = oracle.decide(
        facts, case["agency"], action, now, to=case.get("to"), consent=case.get("consent", False)
    )
    assert (verdict.allowed, verdict.policy_ids) == expected[2:4], "the oracle disagrees"


def test_golden_table_covers_every_rule_and_label_value(engine: PolicyEngine) -> None:
    """At least 60 cases, every policy deciding at least once, every label value used."""
    assert len(CASES) >= 60
    assert len({c["id"] for c in CASES}) == len(CASES)
    decided = {pid for c in CASES for pid in c["policy_ids"]}
    every_policy = set(engine.bundle.reasons)
    assert every_policy <= decided, every_policy - decided
    assert not any(c["allowed"] and not c["policy_ids"] for c in CASES)  # an allow has grants
    assert any(not c["allowed"] and not c["policy_ids"] for c in CASES)  # default deny

    def used(key: str) -> set[Any]:
        values: set[Any] = set()
        for c in CASES:
            v = {**GOLDEN["bulletin_defaults"], **c["bulletin"]}[key]
            values |= set(v) if isinstance(v, list) else {v}
        return values

    assert used("topic") >= set(TOPICS)
    assert used("classification") >= {c.value for c in Classification}
    assert used("tlp") >= {t.value for t in Tlp}
    assert used("handling") >= {h.value for h in Handling}
    assert used("precedence") >= {p.value for p in Precedence}
    assert used("source_grade") >= {None, "A1", "A2", "B2", "B3", "C1", "C3", "F6"}
    assert {"publish", "receive", "forward"} == {c.get("action", "receive") for c in CASES}
    forwards = [c for c in CASES if c.get("action") == "forward"]
    assert {True, False} == {c["consent"] for c in forwards}
    for code in ("H0", "H2", "H3"):  # each enforced: a forward it refuses and one it allows
        with_code = [c for c in forwards if code in c["bulletin"].get("handling", [])]
        assert {True, False} == {c["allowed"] for c in with_code}, code
    assert any(c["bulletin"].get("named") for c in CASES)
    assert any(c["bulletin"].get("judicial_consent") for c in CASES)


def test_precedence_never_changes_a_decision(engine: PolicyEngine) -> None:
    agencies = [a.id for a in golden_directory()[1]]
    seen = {
        tuple((d.allowed, d.policy_ids) for d in engine.decide_receive(
            golden_facts({"precedence": p.value, "tlp": "CLEAR", "classification": "UNCLASSIFIED"}),
            agencies, T0))
        for p in Precedence
    }  # fmt: skip
    assert len(seen) == 1
