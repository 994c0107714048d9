"""6. Audit: the sequencer's integration rate, proof times and ``verify_all`` at
10k, 100k and 1M entries (quick mode: 10k and 100k).

    .venv/bin/python -m bench.audit_log [--sizes 10000,100000,1000000] [--batch 1000]

``python -m bench`` runs this module in a child process (``run``), so the child's peak
RSS is the sequencer's: it holds the outbox fill, the sequencer, the proofs and the
verification, nothing else.

Grows one log in a temporary SQLite file (WAL, synchronous=FULL, as the broker runs it) to
each size in turn and measures:
  1. integration rate: outbox rows integrated per second by the sequencer (entries, nodes
     and a signed tree head per batch, one transaction each), over the growth to that size;
  2. inclusion and consistency proof time from the store against the latest signed head
     (mean and p99 of ``--proofs`` random proofs: 1,000 by default, 300 from ``run``,
     200 in quick mode; each verified outside the timing);
  3. ``verify_all`` time: the whole log recomputed and every head and entry checked;
  4. database size.
Filling the outbox (Registry.record) is not timed. Prints a table and writes the
result as JSON to ``--out`` (default bench/results/audit_log.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.stats import pct
from broker import merkle
from broker.audit_log import AuditLog
from broker.registry import Registry
from broker.sequencer import DEFAULT_ORIGIN, Sequencer, SequencerLimits
from schemas.audit import AuditEvent
from schemas.keys import SigningKey

NAME = "audit"
TITLE = "6. Audit log"
TYPES = ("bulletin.accepted", "bulletin.routed", "bulletin.denied", "bulletin.received")


def fill(registry: Registry, start: int, end: int) -> None:
    """Outbox rows shaped like the relay's (about 330 bytes of canonical JSON each)."""
    for lo in range(start, end, 20_000):
        registry.record(
            [],
            [
                AuditEvent(
                    event_id=f"{i:08d}:routed:gt-police",
                    type=TYPES[i % 4],  # type: ignore[arg-type]
                    time=1_767_225_600_000 + i,
                    actor="relay",
                    subject="gt-police",
                    bulletin_id=f"00000000-0000-4000-8000-{i:012d}",
                    reason="policy_deny" if i % 4 == 2 else None,
                    data={
                        "policy_version": "3f" * 16,
                        "policy_ids": ("base.clearance", "base.tlp", "sica.release"),
                        "topic": "drug-trafficking",
                    },
                )
                for i in range(lo, min(end, lo + 20_000))
            ],
        )


def proofs(log: AuditLog, size: int, rng: random.Random, count: int = 1000) -> dict[str, float]:
    sth = log.head(size)
    assert sth is not None
    root = sth.head.root()
    heads = [s for s in range(1000, size, 1000)] or [size]
    inc: list[float] = []
    con: list[float] = []
    for _ in range(count):
        i = rng.randrange(size)
        t = time.perf_counter()
        proof = log.inclusion_proof(i, size)
        inc.append(time.perf_counter() - t)
        entry = log.entry(i)
        assert entry is not None
        merkle.verify_inclusion(entry.leaf_hash, i, size, proof, root)
        old = rng.choice(heads)
        t = time.perf_counter()
        cproof = log.consistency_proof(old, size)
        con.append(time.perf_counter() - t)
        old_sth = log.head(old)
        assert old_sth is not None
        merkle.verify_consistency(old, size, old_sth.head.root(), root, cproof)
    return {
        "inclusion_proof_ms_mean": round(sum(inc) / len(inc) * 1000, 3),
        "inclusion_proof_ms_p99": round(pct(inc, 99) * 1000, 3),
        "consistency_proof_ms_mean": round(sum(con) / len(con) * 1000, 3),
        "consistency_proof_ms_p99": round(pct(con, 99) * 1000, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "audit_log.json"
    )
    ap.add_argument("--tmp", type=Path, default=None, help="where the temporary log goes")
    ap.add_argument("--proofs", type=int, default=1000, help="random proofs per size")
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    rng = random.Random(9)
    key = SigningKey.generate()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        db = Path(tmp) / "istmo.db"
        url = f"sqlite:///{db}"
        registry = Registry(url)
        log = AuditLog(url)
        seq = Sequencer(
            log, key, limits=SequencerLimits(batch_entries=args.batch), out=lambda _l: None
        )
        done = 0
        for size in sizes:
            fill(registry, done, size)
            t = time.perf_counter()
            integrated = seq.drain()
            seconds = time.perf_counter() - t
            assert integrated == size - done, (integrated, size, done)
            row: dict[str, object] = {
                "entries": size,
                "integrated": integrated,
                "integrate_per_s": round(integrated / seconds),
            }
            row.update(proofs(log, size, rng, args.proofs))
            report = log.verify_all(key.verify_key, DEFAULT_ORIGIN)
            assert report.ok, report.first
            row["verify_s"] = round(report.seconds, 2)
            row["db_mb"] = round(db.stat().st_size / 1e6, 1)
            rows.append(row)
            print(
                f"{size:>9,} entries: {row['integrate_per_s']:>7,} appends/s, inclusion proof "
                f"{row['inclusion_proof_ms_mean']} ms (p99 {row['inclusion_proof_ms_p99']}), "
                f"consistency {row['consistency_proof_ms_mean']} ms, verify "
                f"{row['verify_s']} s, {row['db_mb']} MB",
                flush=True,
            )
            done = size
        log.close()
        registry.close()
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "machine": platform.machine(),
        "batch_entries": args.batch,
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


def run(ctx: object) -> dict[str, object]:
    """Run ``main`` in a child process and add the child's peak RSS (``wait4``)."""
    quick = getattr(ctx, "quick", False)
    tmp = Path(getattr(ctx, "tmp", tempfile.gettempdir()))
    out = tmp / "audit_log.json"
    sizes = "10000,100000" if quick else "10000,100000,1000000"
    argv = [sys.executable, "-m", "bench.audit_log", "--sizes", sizes, "--out", str(out)]
    argv += ["--tmp", str(tmp), "--proofs", "200" if quick else "300"]
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(argv, cwd=root)
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"bench.audit_log exited with {proc.returncode}")
    result: dict[str, object] = json.loads(out.read_text())
    result["sequencer_peak_rss_mib"] = round(usage.ru_maxrss / 1024, 1)
    note = getattr(ctx, "note", None)
    if note is not None:
        note("sequencer (audit benchmark process)", result["sequencer_peak_rss_mib"])
    return result


if __name__ == "__main__":
    main()
