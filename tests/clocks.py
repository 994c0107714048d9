"""A clock for tests: it says what the test sets and moves only when told.

It implements the ``broker.clock.Clock`` port, so a test hands it to a shell (the relay,
the API, a directory change) instead of sleeping past a second boundary.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ManualClock:
    """Epoch milliseconds ``ms``, until ``advance`` moves them."""

    ms: int

    @classmethod
    def at(cls, seconds: int) -> ManualClock:
        return cls(seconds * 1000)

    def now_ms(self) -> int:
        return self.ms

    def now_s(self) -> int:
        return self.ms // 1000

    def advance(self, seconds: float) -> None:
        self.ms += round(seconds * 1000)
