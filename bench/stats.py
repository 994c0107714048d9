"""Small statistics for the benchmarks: percentiles and a latency summary."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["call_ms", "drift", "latency_summary", "pct"]


def pct(xs: list[float], p: float) -> float:
    """The ``p``-th percentile of ``xs`` (nearest rank; ``xs`` must not be empty)."""
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def latency_summary(seconds: list[float]) -> dict[str, float | int]:
    """p50/p90/p99/max in milliseconds, and the sample count."""
    if not seconds:
        return {"samples": 0}
    ms = [x * 1e3 for x in seconds]
    return {
        "samples": len(ms),
        "p50_ms": round(pct(ms, 50), 2),
        "p90_ms": round(pct(ms, 90), 2),
        "p99_ms": round(pct(ms, 99), 2),
        "max_ms": round(max(ms), 2),
    }


def drift(seconds: list[float]) -> dict[str, float]:
    """The p50 of the first and of the last third of ``seconds`` (latencies in the order
    they were sent), in milliseconds: a level that settled shows two close figures, a
    queue that builds up a last third far above the first. Empty under 30 samples."""
    third = len(seconds) // 3
    if third < 10:
        return {}
    return {
        "p50_first_third_ms": round(pct(seconds[:third], 50) * 1e3, 2),
        "p50_last_third_ms": round(pct(seconds[-third:], 50) * 1e3, 2),
    }


def call_ms(
    fn: Callable[[], object], calls: int, clock: Callable[[], float] = time.perf_counter
) -> dict[str, float]:
    """Call ``fn`` ``calls`` times: p50 and p99 of each call in milliseconds by ``clock``
    (``time.process_time`` for CPU time on a shared machine), and the count."""
    spent = []
    for _ in range(calls):
        t = clock()
        fn()
        spent.append((clock() - t) * 1e3)
    return {"p50": round(pct(spent, 50), 3), "p99": round(pct(spent, 99), 3), "calls": calls}
