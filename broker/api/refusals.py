"""How many refusals reach the audit log: the first of each kind per source and window,
then one summary with the count.

A caller with a junk token can be refused a thousand times in five seconds. Each refusal
still counts, but writing each as an audit entry lets anyone fill the log. So
``RefusalLedger`` keeps, per client address ("source") and kind (the caller chooses it:
``ApiState`` uses event type, reason, claimed client and route, and one kind for all that
is answered 429), one window of ``window_ms``: the first refusal of the window is audited
at once; the ones after it are counted, and when the window has closed one summary event
stands for them (``broker.audit.events.refusals_summarized``: how many, first and last
time). A window closes when a later refusal (from anyone)
finds it past its end, when the ledger holds too many windows (the oldest closes early),
and when the process stops (``close_all``): no refusal goes uncounted.

Pure: the caller passes the time and writes the events it gets back. Thread-safe, since
sync endpoints run in a pool.

Left to others: the rate limit that answers 429 to a source refused too often (a
``broker.api.guard.RateLimiter``, in ``broker.api.context.ApiState``), and writing the
events (``ApiState.audit_refusal``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from broker.audit import events
from schemas.audit import AuditEvent

__all__ = ["Kind", "RefusalLedger"]

Kind = tuple[str | None, ...]


@dataclass
class _Window:
    first: AuditEvent
    opened_ms: int
    last_ms: int
    more: int = 0  # refusals after the first, not audited one by one


class RefusalLedger:
    """Open aggregation windows, oldest first (see the module docstring).

    Args:
        window_ms: how long a window stays open after its first refusal.
        max_windows: windows held at once; past it the oldest closes early (a flood of
            spoofed sources costs summaries, never memory).
    """

    def __init__(self, window_ms: int, *, max_windows: int = 10_000) -> None:
        if window_ms < 1 or max_windows < 1:
            raise ValueError("a refusal window needs a positive length and room for one")
        self.window_ms = window_ms
        self.max_windows = max_windows
        self._open: OrderedDict[tuple[str, Kind], _Window] = OrderedDict()
        self._lock = threading.Lock()

    def note(self, source: str, kind: Kind, event: AuditEvent, *, now_ms: int) -> list[AuditEvent]:
        """Count one refusal of ``kind`` from ``source``, described by ``event``.

        Args:
            source: the client address.
            kind: what makes two refusals alike (bounded strings: no more kinds than
                the caller's values allow).
            event: the refusal's audit event, as it would be written alone.
            now_ms: the time, epoch milliseconds.

        Returns:
            What to write now, in order: summaries of windows that closed, then
            ``event`` itself if it is the first of its kind from ``source`` in a window.
        """
        key = (source, kind)
        with self._lock:
            out = self._close_due(now_ms)
            window = self._open.get(key)
            if window is None:
                self._open[key] = _Window(event, now_ms, now_ms)
                out.append(event)
                while len(self._open) > self.max_windows:
                    _, oldest = self._open.popitem(last=False)
                    out += _summary(oldest, now_ms)
            else:
                window.more += 1
                window.last_ms = max(window.last_ms, now_ms)
            return out

    def close_due(self, now_ms: int) -> list[AuditEvent]:
        """Summaries of the windows that have closed by ``now_ms``."""
        with self._lock:
            return self._close_due(now_ms)

    def close_all(self, now_ms: int) -> list[AuditEvent]:
        """Close every window (the process stops): the summaries still owed."""
        with self._lock:
            out = [e for w in self._open.values() for e in _summary(w, now_ms)]
            self._open.clear()
            return out

    def _close_due(self, now_ms: int) -> list[AuditEvent]:
        out: list[AuditEvent] = []
        # Windows open in time order, so the due ones are at the front (a clock that
        # stepped back only delays a close until the next refusal or close_all).
        while self._open:
            key, window = next(iter(self._open.items()))
            if now_ms < window.opened_ms + self.window_ms:
                break
            del self._open[key]
            out += _summary(window, now_ms)
        return out


def _summary(window: _Window, now_ms: int) -> list[AuditEvent]:
    if window.more == 0:
        return []  # the first refusal was audited already; nothing else to say
    return [
        events.refusals_summarized(
            window.first,
            count=window.more,
            first_at=window.opened_ms,
            last_at=window.last_ms,
            at=now_ms,
        )
    ]
