"""Cedar (``policies/``) against the plain-Python oracle over generated requests.

Seeded random directories (with a nested community, suspended and revoked agencies,
regional centres, auditors and minimum source grades) and random bulletins (every label,
named and consenting agencies that may or may not exist, unknown jurisdictions, embargo
and expiry around ``now``). Every publish and receive decision, its deciding ``@id``s and
the grants ``explain`` reports must agree with the oracle. Plus the demo directory.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from broker.directory.service import load_demo_directory
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
NOW = 1_780_000_000
# Three seeded directories in CI (about 20 s of CPU); eight more with `-m long`.
SEEDS = range(3)
MORE_SEEDS = range(3, 11)
BULLETINS_PER_DIRECTORY = 250
SECTORS = ("police", "military", "foreign", "justice")
GRADES = [f"{r}{c}" for r in "ABCDEF" for c in "123456"]

# OECS sits inside CARICOM, so its states reach CARICOM only through the graph.
JURISDICTIONS = (
    JurisdictionInfo("SICA", "community", "SICA", ()),
    JurisdictionInfo("CARICOM", "community", "CARICOM", ()),
    JurisdictionInfo("OECS", "community", "OECS", ("CARICOM",)),
    JurisdictionInfo("GT", "state", "GT", ("SICA",)),
    JurisdictionInfo("SV", "state", "SV", ("SICA",)),
    JurisdictionInfo("CR", "state", "CR", ("SICA",)),
    JurisdictionInfo("BZ", "state", "BZ", ("SICA", "CARICOM")),
    JurisdictionInfo("JM", "state", "JM", ("CARICOM",)),
    JurisdictionInfo("DM", "state", "DM", ("OECS",)),
    JurisdictionInfo("LC", "state", "LC", ("OECS",)),
)
STATES = [j.code for j in JURISDICTIONS if j.kind == "state"]
COMMUNITIES = [j.code for j in JURISDICTIONS if j.kind == "community"]


@pytest.fixture(scope="module")
def bundle() -> PolicyBundle:
    return PolicyBundle.load(POLICIES)


def random_agencies(rng: random.Random) -> list[AgencyInfo]:
    def agency(
        aid: str, sector: str, state: str | None, communities: tuple[str, ...]
    ) -> AgencyInfo:
        return AgencyInfo(
            id=aid,
            name=aid,
            sector=sector,
            status=rng.choices(["active", "suspended", "revoked"], [8, 1, 1])[0],
            clearance=rng.choice([0, 1, 2, 2, 3, 3]),
            topics=frozenset(t for t in TOPICS if rng.random() < 0.7),
            state=state,
            communities=communities,
            min_source_grade=rng.choice(GRADES) if rng.random() < 0.2 else None,
        )

    agencies = [
        agency(f"{state.lower()}-{sector}", sector, state, ())
        for state in STATES
        for sector in SECTORS
        if rng.random() < 0.7
    ]
    for n in range(3):
        sector = "auditor" if n == 2 else "regional-centre"
        communities = tuple(sorted(rng.sample(COMMUNITIES, rng.randint(1, 2))))
        agencies.append(agency(f"rc-{n}", sector, None, communities))
    return agencies


def random_facts(rng: random.Random, agencies: list[AgencyInfo]) -> BulletinFacts:
    ids = [a.id for a in agencies]
    originator = rng.choice([*agencies, None])
    if originator is None:
        origin, origin_state = "zz-ghost", rng.choice([None, *STATES])
    else:
        origin = originator.id
        origin_state = originator.state if rng.random() < 0.9 else rng.choice([None, *STATES])

    def some(pool: list[str], p: float) -> tuple[str, ...]:
        return tuple(x for x in pool if rng.random() < p)

    def moment() -> int | None:
        return rng.choice([None, None, None, NOW + rng.randint(-100, 100), NOW])

    # A third are replies (ADR 16), answering a bulletin of random labels.
    in_reply_to = None
    if rng.random() < 0.35:
        in_reply_to = ReplyFacts(
            random_labels(rng, ids, agencies),
            some([*STATES, *COMMUNITIES], 0.5),
            some([*ids, "zz-ghost"], 0.3),
        )
    return BulletinFacts(str(uuid.UUID(int=rng.getrandbits(128))), origin, origin_state,
                         random_labels(rng, ids, agencies), moment(), moment(),
                         in_reply_to)  # fmt: skip


def random_labels(rng: random.Random, ids: list[str], agencies: list[AgencyInfo]) -> Labels:
    handling = tuple(h for h in Handling if rng.random() < 0.3)

    def some(pool: list[str], p: float) -> tuple[str, ...]:
        return tuple(x for x in pool if rng.random() < p)

    return Labels(
        topic=rng.choice(TOPICS),
        classification=rng.choice(list(Classification)),
        tlp=rng.choice(list(Tlp)),
        rel_to=some([*STATES, *COMMUNITIES, "XX"], 0.15) or (rng.choice(COMMUNITIES),),
        handling=handling,
        handling_note="see note" if Handling.H3 in handling else None,
        precedence=rng.choice(list(Precedence)),
        source_grade=rng.choice([None, *GRADES]),
        named=some([*ids, "zz-ghost"], 0.08),
        judicial_consent=some([a.id for a in agencies if a.sector == "justice"], 0.4),
    )


def compare(engine: PolicyEngine, oracle: Oracle, facts: BulletinFacts, agencies: list[str],
            now: int, seen: Counter[str]) -> int:  # fmt: skip
    """Check one bulletin; count the deciding ids in ``seen``; return the decisions made."""
    publish = engine.decide_publish(facts, now)
    want = oracle.decide(facts, facts.originator, "publish", now)
    assert (publish.allowed, publish.policy_ids) == (want.allowed, want.policy_ids), facts
    seen.update(publish.policy_ids)
    for e in engine.explain(facts, agencies, now):
        want = oracle.decide(facts, e.agency, "receive", now)
        got = (e.allowed, e.policy_ids, e.grants)
        assert got == (want.allowed, want.policy_ids, want.grants), (e.agency, facts)
        assert e.errors == (() if e.agency in oracle.agencies else ("unknown agency",))
        seen.update(e.policy_ids)
        seen["allowed" if e.allowed else "denied"] += 1
    return 1 + len(agencies) + compare_forwards(engine, oracle, facts, agencies, now, seen)


def compare_forwards(engine: PolicyEngine, oracle: Oracle, facts: BulletinFacts,
                     agencies: list[str], now: int, seen: Counter[str]) -> int:  # fmt: skip
    """Forward decisions (ADR 20) on a few pairs drawn from the bulletin's id, with and
    without the originator's consent; return how many were made."""
    rng = random.Random(facts.bulletin_id)
    made = 0
    for _ in range(4):
        forwarder, to = rng.choice(agencies), rng.choice(agencies)
        for consent in (False, True):
            got = engine.decide_forward(facts, forwarder, to, now, consent=consent)
            want = oracle.decide(facts, forwarder, "forward", now, to=to, consent=consent)
            assert (got.allowed, got.policy_ids) == (want.allowed, want.policy_ids), (
                forwarder, to, consent, facts)  # fmt: skip
            seen.update(got.policy_ids)
            made += 1
    return made


@pytest.mark.parametrize(
    "seeds", [pytest.param(SEEDS, id="3"), pytest.param(MORE_SEEDS, id="8", marks=pytest.mark.long)]
)
def test_cedar_agrees_with_the_oracle(bundle: PolicyBundle, seeds: range) -> None:
    decisions = 0
    seen: Counter[str] = Counter()
    started = time.process_time()  # CPU: the engine's cost, whatever runs beside it
    for seed in seeds:
        rng = random.Random(seed)
        agencies = random_agencies(rng)
        engine = PolicyEngine(bundle, DirectorySnapshot.build(JURISDICTIONS, agencies, bundle))
        oracle = Oracle(JURISDICTIONS, agencies)
        candidates = [a.id for a in agencies] + ["zz-ghost"]
        for _ in range(BULLETINS_PER_DIRECTORY):
            facts = random_facts(rng, agencies)
            now = rng.choice([NOW, NOW + rng.randint(-100, 100)])
            decisions += compare(engine, oracle, facts, candidates, now, seen)
    assert decisions > 1_200 * len(seeds)
    # Not vacuous: every policy decided some requests, and both outcomes are common.
    every_policy = set(bundle.reasons)
    assert {p for p in every_policy if seen[p] < 20} == set()
    assert min(seen["allowed"], seen["denied"]) > decisions // 20
    assert time.process_time() - started < 30


def test_demo_directory_agrees_with_the_oracle(bundle: PolicyBundle) -> None:
    demo = load_demo_directory(POLICIES)
    spec = json.loads((POLICIES / "directory.json").read_text())
    grades = {r["id"]: r["min_source_grade"] for r in spec["regional"] if "min_source_grade" in r}
    assert grades == {"rc-observatory": "B2"}
    topics: dict[str, set[str]] = {}
    for s in demo.subscriptions:
        topics.setdefault(s.agency, set()).add(s.topic)
    jurisdictions = [
        JurisdictionInfo(j.code, "state" if j.kind == "state" else "community", j.name,
                         tuple(p for p in j.parents.split(",") if p))
        for j in demo.jurisdictions
    ]  # fmt: skip
    agencies = [
        AgencyInfo(a.id, a.name, a.sector, a.status, a.clearance, frozenset(topics.get(a.id, ())),
                   a.state, tuple(c for c in a.communities.split(",") if c),
                   grades.get(a.id))
        for a in demo.agencies
    ]  # fmt: skip
    engine = PolicyEngine(bundle, DirectorySnapshot.build(jurisdictions, agencies, bundle))
    oracle = Oracle(jurisdictions, agencies)
    rng = random.Random(2026)
    ids = [a.id for a in agencies]
    for _ in range(60):
        facts = random_facts(rng, agencies)
        compare(engine, oracle, facts, ids, NOW, Counter())
