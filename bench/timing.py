"""Where a benchmark run's time goes: wall seconds per phase of a measurement.

``python -m bench`` takes the phases after each measurement (``take``) and stores them in
its result as ``phases`` next to its total ``seconds``; the harness times the steps every
measurement shares (starting stacks and workers, stopping them, sealing and publishing a
backlog, draining it). Phases are summed by name and do not nest: what no phase covers
is reported as ``other``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["BUDGET_S", "add", "phase", "summary", "take"]

# What a whole run may take on the 2-core machine (issue 8), by mode.
BUDGET_S = {"quick": 120.0, "full": 600.0}

_spent: dict[str, float] = {}
_lock = threading.Lock()
_open = threading.local()  # phases running in this thread: an inner one is not counted


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Add the wall time of the ``with`` block to phase ``name`` (the outermost phase of
    its thread only: phases in two threads at once both count, so they may add up to
    more than the wall time)."""
    depth = getattr(_open, "depth", 0)
    _open.depth = depth + 1
    t = time.perf_counter()
    try:
        yield
    finally:
        _open.depth = depth
        if depth == 0:
            with _lock:
                _spent[name] = _spent.get(name, 0.0) + time.perf_counter() - t


def add(name: str, seconds: float) -> None:
    """Add ``seconds`` timed elsewhere (a child process) to phase ``name``."""
    with _lock:
        _spent[name] = _spent.get(name, 0.0) + seconds


def summary(doc: dict[str, Any]) -> tuple[list[str], str | None]:
    """The lines that say where a run's time went (a measurement a line, slowest first,
    with its three largest phases), and a warning if the run took longer than its mode's
    budget (``None`` if not)."""
    results: dict[str, dict[str, Any]] = doc.get("results", {})
    total = float(doc.get("seconds") or 0.0)
    mode = str(doc.get("environment", {}).get("mode", "full"))
    budget = BUDGET_S.get(mode, BUDGET_S["full"])
    timed = sorted(results.items(), key=lambda kv: -float(kv[1].get("seconds") or 0.0))
    lines = []
    for name, r in timed:
        phases = ", ".join(f"{k} {v}" for k, v in list(r.get("phases", {}).items())[:3])
        lines.append(f"  {name:<17} {float(r.get('seconds') or 0.0):>6.1f} s  {phases}")
    outside = total - sum(float(r.get("seconds") or 0.0) for r in results.values())
    lines.append(f"  {'(between them)':<17} {outside:>6.1f} s")
    lines.append(f"  {'total':<17} {total:>6.1f} s  (budget for a {mode} run: {budget:.0f} s)")
    warning = None
    if total > budget:
        warning = (
            f"WARNING: this {mode} run took {total:.0f} s, over the {budget:.0f} s a whole "
            f"{mode} run may take (issue 8); the slowest measurements are listed above"
        )
    return lines, warning


def take(total: float) -> dict[str, float]:
    """The phases since the last ``take`` (seconds, largest first), with ``other`` for
    the rest of ``total``; starts afresh."""
    with _lock:
        out = {k: round(v, 1) for k, v in sorted(_spent.items(), key=lambda kv: -kv[1])}
        rest = total - sum(_spent.values())
        _spent.clear()
    if rest >= 0.05:
        out["other"] = round(rest, 1)
    return out
