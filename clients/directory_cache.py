"""The signed directory records an SDK keeps, and when it may use one (ADR 14).

A publishing SDK seals for the keys in its recipients' directory records, and a receiving
one verifies a sender against its record. Both come from the broker signed by the
directory key pinned in the keystore; the SDK keeps them here, by agency, each with the
directory version a signed answer last said it is current at. A version names a serial
that grows with every change to any agency's record (``schemas.directory.directory_serial``)
so versions are ordered.

A record may be used only if all of this holds:

1. it came in an excerpt signed by the pinned key, listing only agencies that were asked
   for (``add_excerpt``), or a signed change list since kept it current (``add_changes``);
2. its serial is at least the *required* one: the newest serial this client has heard of,
   announced by a relay or in any signed answer, and the one the caller names (the version
   a recipients answer was decided at). So once a change is heard of, no record from
   before it is used until a signed answer says it did not change, or a new copy comes;
3. while no announcement has been heard within ``LIVE_INTERVALS`` of its intervals on this
   connection, a signed answer said it is current less than ``unheard_ttl_s`` ago.

A signed answer older than the newest held (by serial) is refused (``directory_downgrade``),
and so is one without a serial once a serial has been seen. Records from a broker before
ADR 14 (versions without a serial) are kept for ``unheard_ttl_s``, as the SDK did before.

Pure: the caller passes in the times and the connection's epoch, asks the broker, and
hands the answers in. What to ask, and what to do with a refusal, is ``clients.sdk``'s.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, replace
from typing import TypeVar

from schemas.directory import (
    AgencyRecord,
    DirectoryChanges,
    DirectoryExcerpt,
    SignedChanges,
    SignedExcerpt,
    directory_serial,
    verify_changes,
    verify_excerpt,
)
from schemas.errors import EnvelopeError, SignatureError
from schemas.keys import VerifyKey

__all__ = [
    "DEFAULT_MAX_RECORDS",
    "DEFAULT_UNHEARD_TTL_S",
    "LIVE_INTERVALS",
    "DirectoryCache",
    "Held",
]

_T = TypeVar("_T")

DEFAULT_MAX_RECORDS = 10_000  # a whole region's directory
DEFAULT_UNHEARD_TTL_S = 60.0
LIVE_INTERVALS = 3  # as clients.resolve_cache: two announcements may be late or lost
_UNTRUSTED_HINT = (
    "check that the keystore pins this broker's directory key; if it does, tell the broker's "
    "operators: something between you and the broker altered its answer"
)


@dataclass(frozen=True)
class Held:
    """One agency's record as the cache keeps it.

    Attributes:
        record: the record, as the broker signed it.
        version: the newest directory version a signed answer said it is current at.
        serial: ``version``'s serial; None for a broker before ADR 14.
        confirmed_at: when that answer came (monotonic seconds).
    """

    record: AgencyRecord
    version: str
    serial: int | None
    confirmed_at: float


class DirectoryCache:
    """Signed directory records by agency, and whether each may be used now.

    Args:
        pinned: the broker's directory key, pinned in the keystore.
        max_records: how many records to keep; the least recently used goes first.
        unheard_ttl_s: how long a record stays usable while no announcement is heard.

    Raises:
        ValueError: a bound is not positive.
    """

    def __init__(
        self,
        pinned: VerifyKey,
        *,
        max_records: int = DEFAULT_MAX_RECORDS,
        unheard_ttl_s: float = DEFAULT_UNHEARD_TTL_S,
    ) -> None:
        if max_records < 1 or not unheard_ttl_s > 0:
            raise ValueError("max_records and unheard_ttl_s must be positive")
        self.pinned = pinned
        self.max_records = max_records
        self.unheard_ttl_s = unheard_ttl_s
        self._held: OrderedDict[str, Held] = OrderedDict()
        self._newest: int | None = None  # serial of the newest signed answer taken
        self._announced: int | None = None  # newest serial announced
        self._epoch: int | None = None
        self._live_until = -math.inf

    def __len__(self) -> int:
        return len(self._held)

    def held(self, agency: str) -> Held | None:
        """What is kept for ``agency``, usable or not (for tests and diagnostics)."""
        return self._held.get(agency)

    @property
    def newest(self) -> int | None:
        """The serial of the newest signed answer taken (None: none with a serial)."""
        return self._newest

    # -------------------------------------------------------------- announcements
    def heard(self, version: str, *, interval_s: float, now: float, epoch: int) -> None:
        """A relay announced ``version`` at ``now`` (monotonic) on connection ``epoch``.
        Announcements are not signed: one can only make the cache ask more, never use a
        record it would not use otherwise."""
        serial = directory_serial(version)
        if serial is not None and (self._announced is None or serial > self._announced):
            self._announced = serial
        self._epoch = epoch
        self._live_until = now + LIVE_INTERVALS * interval_s

    def lost(self) -> None:
        """The announcements cannot be trusted to arrive (one did not parse): until the next
        good one, records need a recent signed answer (rule 3)."""
        self._epoch, self._live_until = None, -math.inf

    # -------------------------------------------------------------- using records
    def required(self, floor: str | None = None) -> int:
        """The serial a record must be at to be used (rule 2); 0 when nothing is known."""
        known = [self._newest, self._announced, directory_serial(floor) if floor else None]
        return max((s for s in known if s is not None), default=0)

    def usable(
        self, agency: str, *, now: float, epoch: int, floor: str | None = None
    ) -> AgencyRecord | None:
        """``agency``'s record if it may be used now, else None (not held, or out of date).

        Args:
            agency: the agency.
            now: monotonic seconds.
            epoch: the connection's epoch (its reconnect count; -1 while disconnected).
            floor: a version the record must be at least as new as (a recipients answer's).
        """
        h = self._held.get(agency)
        if h is None or not self._current(h, self.required(floor), now, epoch):
            return None
        self._held.move_to_end(agency)
        return h.record

    def outdated_since(
        self, agencies: Iterable[str], *, now: float, epoch: int, floor: str | None = None
    ) -> str | None:
        """The version to ask ``changes`` since, so that the held records of ``agencies``
        that may not be used now can be kept current: the oldest of theirs (None: every
        one held is usable, or none has a serial)."""
        required = self.required(floor)
        oldest: Held | None = None
        for agency in agencies:
            h = self._held.get(agency)
            if h is None or h.serial is None or self._current(h, required, now, epoch):
                continue
            if oldest is None or h.serial < (oldest.serial or 0):
                oldest = h
        return None if oldest is None else oldest.version

    def _current(self, h: Held, required: int, now: float, epoch: int) -> bool:
        fresh = now - h.confirmed_at < self.unheard_ttl_s
        if h.serial is None:
            return fresh
        return h.serial >= required and (fresh or self._live(now, epoch))

    def _live(self, now: float, epoch: int) -> bool:
        return epoch >= 0 and epoch == self._epoch and now < self._live_until

    def forget(self, agency: str) -> None:
        """Drop ``agency``'s record (this agency changed its own keys, or a sender's key is
        missing from it): the next use fetches it again."""
        self._held.pop(agency, None)

    # -------------------------------------------------------------- signed answers
    def add_excerpt(
        self, signed: SignedExcerpt, *, asked: Collection[str], now: float
    ) -> DirectoryExcerpt:
        """Take the records of a ``directory`` answer to a request for ``asked``.

        Steps, each refusing the whole answer:
          1. it is signed by the pinned directory key;
          2. it lists no agency that was not asked for;
          3. its version is not older than the newest held (by serial), and names a serial
             if any answer before did.
        Then each record listed is kept at the answer's version, and an agency asked for
        but not listed (the directory has no such agency) is dropped.

        Raises:
            SignatureError: ``directory_untrusted`` (step 1), ``directory_mismatch`` (2),
                ``directory_downgrade`` (3).
        """
        excerpt = self._verified(lambda: verify_excerpt(signed, self.pinned))
        wanted = set(asked)
        if any(a.id not in wanted for a in excerpt.agencies):
            raise SignatureError(
                "the directory answered with a record that was not asked for: refused",
                code="directory_mismatch",
                hint=_UNTRUSTED_HINT,
            )
        serial = self._not_older(excerpt.directory_version)
        listed = {a.id: a for a in excerpt.agencies}
        for agency in sorted(wanted):
            record = listed.get(agency)
            if record is None:
                self._held.pop(agency, None)
            else:
                self._keep(Held(record, excerpt.directory_version, serial, now))
        return excerpt

    def add_changes(self, signed: SignedChanges, *, now: float) -> DirectoryChanges:
        """Take a ``changes`` answer: the held records it says did not change are current
        at its version; those it says changed (or all, when it cannot say) are dropped,
        to be fetched again.

        Steps, each refusing the whole answer:
          1. it is signed by the pinned directory key;
          2. its version names a serial, not older than the newest held.

        Raises:
            SignatureError: ``directory_untrusted`` (step 1), ``directory_downgrade`` (2).
            EnvelopeError: its version names no serial (code ``malformed``).
        """
        changes = self._verified(lambda: verify_changes(signed, self.pinned))
        now_serial = directory_serial(changes.directory_version)
        if now_serial is None:
            raise EnvelopeError("a directory change list without a serial", code="malformed")
        self._not_older(changes.directory_version)
        since = directory_serial(changes.since)
        changed = None if changes.changed is None else frozenset(changes.changed)
        for agency, h in list(self._held.items()):
            if h.serial is None:
                continue  # a broker before ADR 14: kept by time only
            if h.serial >= now_serial:  # fetched at this version already
                self._held[agency] = replace(h, confirmed_at=now)
                continue
            covered = since is not None and h.serial >= since  # the answer speaks for it
            if changed is not None and covered and agency not in changed:
                self._held[agency] = Held(h.record, changes.directory_version, now_serial, now)
            elif changed is None or covered:
                del self._held[agency]  # changed, or the broker cannot say: fetch it again
            # else older than the answer reaches back: still out of date, asked for later
        return changes

    def _verified(self, check: Callable[[], _T]) -> _T:
        """``check()``, with any signature failure told as one clear refusal."""
        try:
            return check()
        except SignatureError as exc:
            raise SignatureError(
                "a directory answer is not signed by the directory key pinned in this "
                "keystore: refused, and none of its keys used",
                code="directory_untrusted",
                hint=_UNTRUSTED_HINT,
            ) from exc

    def _not_older(self, version: str) -> int | None:
        """``version``'s serial, which becomes the newest held.

        Raises:
            SignatureError: ``directory_downgrade``: older than the newest held, or without
                a serial although an answer before had one.
        """
        serial = directory_serial(version)
        if self._newest is not None and (serial is None or serial < self._newest):
            shown = "no serial" if serial is None else f"serial {serial}"
            raise SignatureError(
                f"the directory answered at {shown}, older than the serial {self._newest} "
                "this client already holds: refused",
                code="directory_downgrade",
                hint="a relay may still be applying a change: try again in a moment; if it "
                "persists, tell the broker's operators",
            )
        if serial is not None:
            self._newest = serial
        return serial

    def _keep(self, h: Held) -> None:
        self._held[h.record.id] = h
        self._held.move_to_end(h.record.id)
        while len(self._held) > self.max_records:
            self._held.popitem(last=False)
