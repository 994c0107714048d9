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

__all__ = ["phase", "take"]

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
