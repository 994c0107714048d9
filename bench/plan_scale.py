"""The relay's plan at directory scale, in process (a developer's tool, not one of
``python -m bench``'s measurements):

    PYTHONPATH=. .venv/bin/python -m bench.plan_scale [3500 10000] [--n 64]

Over the synthetic directory (``bench/synthetic_directory.py``, seed 8) and the real
policy engine, as an in-memory ``DirectoryView`` whose agencies all hold one key pair,
``plan_batch`` decides ``border-incident`` bulletins (``bench.harness.WIDE_LABELS``:
every follower of the topic permitted, 2,622 at 3,500 agencies) addressed to 5 of them.
Three cases, each in process CPU time (``time.process_time``: the machine may be shared),
in milliseconds a bulletin, with the agency sets already recorded kept between batches as
the relay keeps them (ADR 36; until 2026-12-07 every bulletin paid for writing its set
again, about a third of a new originator's figure):

* ``memoised``: batches of ``--n`` from one originator in one second, as the stack's
  directory-size item sends them (the engine decides the first, the rest share it);
* ``one_originator``: one bulletin a second from the same originator (nothing memoised,
  its slices and classes kept);
* ``new_originator``: one bulletin from each of 100 originators in turn (fewer in a small
  directory), each in its own second (nothing kept for it but the topic's classes);
* ``new_originators_one_second``: as ``new_originator``, as many others in one second, as a
  relay meets SIENA's traffic from thousands of authorities: a decision made for one
  originator's bulletin serves another's of the same outline (ADR 42);
* ``narrow_memoised``: as ``memoised``, releasable to two states only (``S0001``,
  ``S0002``): 5 permitted, every other follower refused.

It runs against whatever ``broker`` is importable, so the same script measures before and
after a change (check out the older commit in a worktree and set ``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench.harness import WIDE_LABELS
from bench.policy_scale import _directory
from bench.synthetic_directory import write_policy_dir
from broker.policy.engine import DirectorySnapshot, PolicyBundle, PolicyEngine
from broker.policy.model import BulletinFacts
from broker.relay.checks import IngestLimits
from broker.relay.plan import Ingested, parse, plan_batch
from schemas.canonical import b64e
from schemas.directory import AgencyRecord, EncryptionKeyRecord, SigningKeyRecord
from schemas.envelope import Content
from schemas.ids import AgencyId
from schemas.keys import EncryptionKey, SigningKey
from schemas.sealing import encode_envelope, seal
from schemas.subjects import gated_subject

LIMITS = IngestLimits(max_envelope_bytes=64 * 1024, max_clock_skew_s=120)
SENDER = "s0001-police"


@dataclass(frozen=True)
class _View:
    """The ``DirectoryView`` port in memory (as ``DirectoryService`` offers it)."""

    records: Mapping[str, AgencyRecord]
    states: frozenset[str]
    engine: PolicyEngine
    subscribers: Mapping[str, list[str]] = field(default_factory=dict)

    def candidates(self, topic: str, named: tuple[str, ...]) -> list[str]:
        followers = self.subscribers.get(topic, [])
        extra = {n for n in named if n in self.records} - set(followers)
        return sorted({*followers, *extra}) if extra else list(followers)


def figures(agencies: int, n: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as scratch:
        policy_dir = write_policy_dir(Path(scratch) / "policies", agencies)
        bundle = PolicyBundle.load(policy_dir)
        jurisdictions, infos = _directory(policy_dir)
    engine = PolicyEngine(bundle, DirectorySnapshot.build(jurisdictions, infos, bundle))
    now = int(time.time())
    signing, encryption = SigningKey.generate(), EncryptionKey.generate()
    pub = encryption.public_key
    records = {
        a.id: AgencyRecord(
            id=a.id, name=a.name, state=a.state, communities=a.communities, sector=a.sector,
            status=a.status,
            signing_keys=(SigningKeyRecord(kid=signing.verify_key.kid,
                                           public=b64e(signing.verify_key.public),
                                           created_at=now - 86400),),
            encryption_key=EncryptionKeyRecord(kid=pub.kid, kem=pub.kem, public=b64e(pub.public),
                                               created_at=now - 86400),
        )
        for a in infos
    }  # fmt: skip
    subscribers: dict[str, list[str]] = {}
    for a in sorted(infos, key=lambda a: a.id):
        for topic in a.topics:
            subscribers.setdefault(topic, []).append(a.id)
    view = _View(records, frozenset(j.code for j in jurisdictions), engine, subscribers)
    candidates = view.candidates(WIDE_LABELS.topic, ())
    state = records[SENDER].state
    facts = BulletinFacts("00000000-0000-4000-8000-000000000001", SENDER, state, WIDE_LABELS,
                          None, None)  # fmt: skip
    permitted = engine.permitted_receivers(facts, candidates, now)
    to = [a for a in permitted if a != SENDER][:5]
    seq = iter(range(1, 10**9))

    narrow_labels = WIDE_LABELS.model_copy(update={"rel_to": ("S0001", "S0002")})
    narrow_to = [a for a in engine.permitted_receivers(
        replace(facts, labels=narrow_labels), candidates, now) if a != SENDER][:5]  # fmt: skip

    def sealed(originator: str, *, narrow: bool = False) -> Ingested:
        keys = {AgencyId(a): pub for a in (narrow_to if narrow else to) if a != originator}
        labels = narrow_labels if narrow else WIDE_LABELS
        env = seal(content=Content(title="bench", text="x" * 2048), labels=labels,
                   originator=AgencyId(originator), signing_key=signing, recipients=keys,
                   now=now)  # fmt: skip
        return Ingested(raw=encode_envelope(env), subject=gated_subject("ingest", originator),
                        seq=next(seq), stored_at=now)  # fmt: skip

    # The agency sets recorded so far, kept as the relay keeps them (ADR 36): a set is
    # written as audit events once, with the first bulletin that names it.
    listed: set[str] = set()
    keeps_sets = "listed" in inspect.signature(plan_batch).parameters  # not before ADR 36

    def cpu_ms(batches: list[list[Ingested]], second: Callable[[int], int]) -> float:
        started = time.process_time()
        for i, batch in enumerate(batches):
            kept = {"listed": frozenset(listed)} if keeps_sets else {}
            plans = plan_batch(batch, [parse(m, LIMITS) for m in batch], directory=view,
                               limits=LIMITS, accepted={}, now_ms=second(i) * 1000,
                               **kept)  # fmt: skip
            assert all(p.verdict == "accept" for p in plans), plans[0].message
            listed.update(d for p in plans for d, _ in getattr(p, "sets", ()))
        return round((time.process_time() - started) / sum(map(len, batches)) * 1e3, 3)

    def sets_named(senders: list[str]) -> set[str]:
        found: set[str] = set()
        for i, o in enumerate(senders):
            msg = sealed(o)
            (p,) = plan_batch([msg], [parse(msg, LIMITS)], directory=view, limits=LIMITS,
                              accepted={}, now_ms=(now - 110 + i) * 1000)  # fmt: skip
            found.update(digest for digest, _ in getattr(p, "sets", ()))  # none before ADR 36
        return found

    police = [a for a in permitted if a.endswith("-police")]
    half = min(100, len(police) // 2)  # a small directory has few police agencies
    originators, others = police[:half], police[half : 2 * half]
    cpu_ms([[sealed(SENDER)]], lambda _: now)  # the topic's classes, kept from here on
    return {
        "agencies": len(infos),
        "candidates": len(candidates),
        "permitted": len(permitted),
        "memoised": cpu_ms(
            [[sealed(SENDER) for _ in range(n)] for _ in range(4)], lambda i: now + 1 + i
        ),
        "one_originator": cpu_ms([[sealed(SENDER)] for _ in range(100)], lambda i: now + 10 + i),
        "new_originator": cpu_ms([[sealed(o)] for o in originators], lambda i: now - 110 + i),
        # 100 other originators, none seen before, in one second (ADR 42).
        "new_originators_one_second": cpu_ms([[sealed(o)] for o in others], lambda _: now + 100),
        # How many agency sets those 100 originators' records name (ADR 36): each is
        # recorded once, so this is what SIENA-like traffic adds to the registry.
        "sets_named_by_100_originators": len(sets_named(originators)),
        # Releasable to two states: 5 permitted, the others refused (each one's withheld
        # count goes up); a batch as in "memoised".
        "narrow_memoised": cpu_ms(
            [[sealed(SENDER, narrow=True) for _ in range(n)] for _ in range(4)],
            lambda i: now + 200 + i,
        ),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sizes", nargs="*", type=int, default=[3500])
    ap.add_argument("--n", type=int, default=64, help="bulletins a memoised batch")
    args = ap.parse_args(argv)
    for size in args.sizes:
        print(json.dumps(figures(size, args.n)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
