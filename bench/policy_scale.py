"""The policy engine alone at a directory's size: loading it, one decision, and the policy
part of resolving a popular topic's candidates (ADR 0012).

In process, without a stack: the synthetic directory of ``bench/synthetic_directory.py``
(fixed seed) goes straight into a ``DirectorySnapshot``. Measured, each call a real Cedar
evaluation (a distinct ``now`` per call defeats the engine's per-second memo):
  * ``load_ms``: building the snapshot and the engine (what a directory refresh or a
    policy adoption spends on the policy side);
  * ``decision_ms``: one receive decision (``decide_receive`` for one candidate);
  * ``resolve_ms``: what ``AgencyQueries.permitted`` asks of the policy for a bulletin on
    ``border-incident`` (followed by three agencies in four) releasable to two states: the
    publish decision, the topic's candidates and the permitted ones among them;
  * ``resolve_wide_ms``: the same for ``WIDE_LABELS`` (releasable to SICA and CARICOM:
    every candidate is permitted, and resolve then refuses the bulletin as too wide);
each as p50 and p99 over the calls. Label checks and the signed excerpt are left out:
``directory_size``'s stack rows time the whole resolve (``resolution.resolve_ms``).

Standalone, for a quick figure (any checkout: it falls back to ``decide_receive`` where
the engine has no ``permitted_receivers``)::

    .venv/bin/python -m bench.policy_scale 3500 10000
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import WIDE_LABELS
from bench.stats import call_ms
from bench.synthetic_directory import write_policy_dir
from broker.directory.service import load_demo_directory
from broker.policy.engine import (
    AgencyInfo,
    BulletinFacts,
    DirectorySnapshot,
    JurisdictionInfo,
    PolicyBundle,
    PolicyEngine,
)
from schemas.labels import Labels

__all__ = ["engine_figures"]

SENDER = "s0001-police"
NARROW_LABELS = WIDE_LABELS.model_copy(update={"rel_to": ("S0001", "S0002")})


def _directory(policy_dir: Path) -> tuple[list[JurisdictionInfo], list[AgencyInfo]]:
    """The synthetic directory as ``DirectoryService`` hands it to the engine."""
    demo = load_demo_directory(policy_dir)
    topics: dict[str, set[str]] = {}
    for s in demo.subscriptions:
        topics.setdefault(s.agency, set()).add(s.topic)

    def split(v: str) -> tuple[str, ...]:
        return tuple(x for x in v.split(",") if x)

    jurisdictions = [
        JurisdictionInfo(j.code, "state" if j.kind == "state" else "community", j.name,
                         split(j.parents))
        for j in demo.jurisdictions
    ]  # fmt: skip
    agencies = [
        AgencyInfo(a.id, a.name, a.sector, a.status, a.clearance, frozenset(topics.get(a.id, ())),
                   a.state, split(a.communities), a.min_source_grade)
        for a in demo.agencies
    ]  # fmt: skip
    return jurisdictions, agencies


def engine_figures(
    agencies: int, *, seed: int = 8, calls: int = 200, tmp: Path | None = None
) -> dict[str, object]:
    """Load, decision and resolve figures for a synthetic directory of ``agencies``."""
    with tempfile.TemporaryDirectory(dir=tmp) as scratch:
        policy_dir = write_policy_dir(Path(scratch) / "policies", agencies, seed=seed)
        bundle = PolicyBundle.load(policy_dir)
        jurisdictions, infos = _directory(policy_dir)

    def load() -> PolicyEngine:
        return PolicyEngine(bundle, DirectorySnapshot.build(jurisdictions, infos, bundle))

    load_ms = call_ms(load, 3)
    engine = load()
    # What DirectoryService keeps: each topic's subscribers, sorted, built at refresh.
    subscribers: dict[str, list[str]] = {}
    for a in sorted(infos, key=lambda a: a.id):
        for topic in a.topics:
            subscribers.setdefault(topic, []).append(a.id)
    known = {a.id: a for a in infos}
    now = int(time.time())
    tick = itertools.count(1)

    def facts(labels: Labels) -> BulletinFacts:
        state = known[SENDER].state
        return BulletinFacts("00000000-0000-4000-8000-000000000001", SENDER, state, labels,
                             None, None)  # fmt: skip

    def permitted(f: BulletinFacts, candidates: list[str], when: int) -> list[str]:
        if hasattr(engine, "permitted_receivers"):
            return list(engine.permitted_receivers(f, candidates, when))
        return [d.agency for d in engine.decide_receive(f, candidates, when) if d.allowed]

    def resolve(labels: Labels) -> list[str]:
        """``AgencyQueries.permitted`` without the label checks and encryption keys."""
        f, when = facts(labels), now + next(tick)
        if not engine.decide_publish(f, when).allowed:
            raise RuntimeError(f"{SENDER} may not publish {labels}")
        found = set(subscribers.get(labels.topic, [])) | {n for n in labels.named if n in known}
        return permitted(f, [c for c in sorted(found) if c != SENDER], when)

    topic = NARROW_LABELS.topic
    one = [next(a for a in subscribers[topic] if a != SENDER)]
    narrow, wide = facts(NARROW_LABELS), facts(WIDE_LABELS)
    return {
        "agencies": len(infos),
        "seed": seed,
        "candidates_for_topic": len([a for a in subscribers[topic] if a != SENDER]),
        "permitted_narrow": len(resolve(NARROW_LABELS)),
        "permitted_wide": len(resolve(WIDE_LABELS)),
        "load_ms": load_ms,
        "decision_ms": call_ms(lambda: engine.decide_receive(narrow, one, now + next(tick)), calls),
        "publish_decision_ms": call_ms(
            lambda: engine.decide_publish(wide, now + next(tick)), calls
        ),
        "resolve_ms": call_ms(lambda: resolve(NARROW_LABELS), max(10, calls // 4)),
        "resolve_wide_ms": call_ms(lambda: resolve(WIDE_LABELS), max(3, calls // 40)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("agencies", nargs="+", type=int, help="directory sizes, e.g. 3500 10000")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--calls", type=int, default=200, help="one-decision calls per size")
    args = parser.parse_args(argv)
    rows = []
    for n in args.agencies:
        rows.append(engine_figures(n, seed=args.seed, calls=args.calls))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"directory_size": {"rows": rows}}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
