"""Which agencies' records changed since a directory version a client holds (ADR 14).

A relay reads the newest entries of the registry's change journal (``broker.store.journal``)
each time it rebuilds its view of the directory, and answers the agency API's ``changes``
from them, in memory: thousands of clients ask at once after an announcement, and none of
them costs a database query. Pure; reading the journal and signing the answer are
``broker.directory.service``'s.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from schemas.directory import MAX_CHANGED, directory_serial

__all__ = ["JOURNAL_TAIL", "ChangeLog"]

# Journal entries a relay keeps in memory: a client that holds a version older than these
# reach back is told to fetch everything it holds again.
JOURNAL_TAIL = 4096


@dataclass(frozen=True)
class ChangeLog:
    """The record changes up to ``serial`` that a relay's view knows.

    Attributes:
        serial: the record serial of the view (the first part of its version).
        entries: ``(serial, agency)`` of each change up to ``serial``, oldest first.
        complete_after: every change after this serial (up to ``serial``) is in ``entries``.
    """

    serial: int
    entries: tuple[tuple[int, str], ...]
    complete_after: int

    def changed_since(self, since: str) -> tuple[str, ...] | None:
        """The agencies whose records changed after version ``since``, sorted; None when
        this log cannot say: ``since`` names no serial (a broker before ADR 14), it is
        older than the log reaches, or more than ``MAX_CHANGED`` agencies changed. Empty
        when ``since`` is this serial or newer (a relay behind the client says nothing
        changed; its answer's older version tells the client so)."""
        held = directory_serial(since)
        if held is None or held < self.complete_after:
            return None
        if held >= self.serial:
            return ()
        first = bisect.bisect_right(self.entries, (held, "\uffff"))
        changed = sorted({agency for n, agency in self.entries[first:] if n <= self.serial})
        return tuple(changed) if len(changed) <= MAX_CHANGED else None
