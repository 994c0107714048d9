"""Time the relay's pure per-bulletin stages without a profiler (a developer's tool, not
one of ``python -m bench``'s measurements).

    PYTHONPATH=. .venv/bin/python -m bench.plan_stages [--n 400] [--reps 5]

Envelopes as the relay benchmark sends them (2 KiB body, 5 recipients) over the
in-memory directory and real policy engine of ``tests/core/test_relay_plan.py``; each
stage is timed over all of them in CPU time (``time.process_time``: the machine is
shared), best and median of ``--reps`` runs, in microseconds a bulletin.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from broker.relay.checks import check_ingest
from broker.relay.plan import parse, plan_batch
from schemas.envelope import Content
from schemas.ids import AgencyId
from schemas.sealing import envelope_digest, seal
from tests.core import test_relay_plan as T

TO = ("bz-police", "sv-military", "sv-police", "hn-police", "gt-justice")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    n = args.n
    body = "x" * 2048
    envs = [
        seal(
            content=Content(title="bench", text=body),
            labels=T.LABELS,
            originator=AgencyId("gt-police"),
            signing_key=T.PARTIES["gt-police"].signing,
            recipients=T.keys_of(*TO),
            now=T.NOW,
        )
        for _ in range(n)
    ]
    msgs = [T.ingested(e, seq=i + 1) for i, e in enumerate(envs)]
    print(f"{n} envelopes of {len(msgs[0].raw)} bytes, {len(TO)} recipients")

    def t(label: str, fn: Callable[[], object]) -> None:
        runs = []
        for _ in range(args.reps):
            t0 = time.process_time()
            fn()
            runs.append(time.process_time() - t0)
        runs.sort()
        print(
            f"  {label:24s} best {runs[0] / n * 1e6:7.1f}  median "
            f"{runs[len(runs) // 2] / n * 1e6:7.1f} us/bulletin"
        )

    parsed = [parse(m, T.LIMITS) for m in msgs]
    assert all(not isinstance(p, Exception) for p in parsed)
    good = [p for p in parsed if not isinstance(p, Exception)]
    t("parse", lambda: [parse(m, T.LIMITS) for m in msgs])
    t(
        "check_ingest",
        lambda: [
            check_ingest(
                env,
                sender=sender,
                stored_at=T.NOW,
                now=T.NOW,
                limits=T.LIMITS,
                records=T.DIRECTORY.records,
                jurisdictions=T.DIRECTORY.states,
            )
            for sender, env in good
        ],
    )
    t("envelope_digest", lambda: [envelope_digest(env) for _, env in good])
    t(
        "plan_batch",
        lambda: plan_batch(
            msgs, parsed, directory=T.DIRECTORY, limits=T.LIMITS, accepted={}, now_ms=T.NOW_MS
        ),
    )
    t(
        "parse + plan_batch",
        lambda: plan_batch(
            msgs,
            [parse(m, T.LIMITS) for m in msgs],
            directory=T.DIRECTORY,
            limits=T.LIMITS,
            accepted={},
            now_ms=T.NOW_MS,
        ),
    )


if __name__ == "__main__":
    main()
