"""The broker's one clock: a port the shells read the time through.

The pure core never reads a clock; it is handed ``now``. The shells (the relay, the
directory's changes, the HTTP API and console, the operator commands) read it from a
``Clock`` passed in, ``SYSTEM_CLOCK`` unless a test passes a fixed or advancing one, so no
test has to sleep past a second boundary. Timers and deadlines (``time.monotonic``) are
not time of day and stay where they are; so does the time JetStream stamps on a message.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


class Clock(Protocol):
    """Wall-clock time, as the audit log and the registry record it."""

    def now_ms(self) -> int:
        """Milliseconds since the epoch (audit event times)."""
        ...

    def now_s(self) -> int:
        """Whole seconds since the epoch (envelope and registry times); the second of
        ``now_ms`` read at the same moment."""
        ...


@dataclass(frozen=True)
class SystemClock:
    """The machine's clock."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def now_s(self) -> int:
        return time.time_ns() // 1_000_000_000


SYSTEM_CLOCK: Clock = SystemClock()
