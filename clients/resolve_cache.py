"""The resolve answers an SDK keeps, and when it may use one again (ADR 0009).

A resolve answer (who may receive a bulletin with these labels, with their keys) follows
from the labels, the directory and the policy in force. Every relay announces the
directory and policy versions it decides with (``schemas.agency.Announcement``), at once
after a change and every ``interval_s`` seconds. An answer is kept under its request
(labels, ``not_before``, ``expires_at``) with the versions it was decided under, and used
again only while all of this holds:

1. the client has heard an announcement within ``LIVE_INTERVALS`` of its intervals, on
   the same connection (no reconnect since: announcements may have been missed);
2. the versions last announced are the answer's (a change announced since drops it);
3. it is younger than ``max_age_s`` (a policy may depend on the time);
4. the bulletin has not expired (the relay would refuse it; let it say so).

Anything else asks the relay. Pure: the caller passes in the times, the connection's
epoch and what it heard; subscribing and asking the relay are ``clients.sdk``'s.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from schemas.agency import Announcement
from schemas.ids import AgencyId
from schemas.keys import EncryptionPublicKey

__all__ = [
    "DEFAULT_MAX_AGE_S",
    "DEFAULT_MAX_ENTRIES",
    "LIVE_INTERVALS",
    "Recipients",
    "ResolveCache",
    "Versions",
]

Recipients = dict[AgencyId, EncryptionPublicKey]

DEFAULT_MAX_ENTRIES = 256
DEFAULT_MAX_AGE_S = 60.0
# Live for this many announced intervals after the last announcement heard: two may be
# late or lost (core NATS, a loaded relay) before the client stops trusting what it keeps.
LIVE_INTERVALS = 3


@dataclass(frozen=True)
class Versions:
    """The directory and policy versions an answer was decided under."""

    directory: str
    policy: str


@dataclass(frozen=True)
class _Entry:
    recipients: Recipients
    versions: Versions
    stored_at: float
    expires_at: int | None


class ResolveCache:
    """Resolve answers by request, kept while the announcements say they still hold.

    Args:
        max_entries: how many answers to keep; the least recently used goes first.
        max_age_s: how long one answer may be used, announcements or not.

    Raises:
        ValueError: a bound is not positive.
    """

    def __init__(
        self, *, max_entries: int = DEFAULT_MAX_ENTRIES, max_age_s: float = DEFAULT_MAX_AGE_S
    ) -> None:
        if max_entries < 1 or not max_age_s > 0:
            raise ValueError("max_entries and max_age_s must be positive")
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._versions: Versions | None = None
        self._epoch: int | None = None
        self._live_until = -math.inf
        self._generation = 0  # bumped whenever what is kept stops holding

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def versions(self) -> Versions | None:
        """The versions last announced on this connection (None: none heard yet)."""
        return self._versions

    def heard(self, announcement: Announcement, *, now: float, epoch: int) -> None:
        """An announcement arrived at ``now`` (monotonic) on connection ``epoch``."""
        versions = Versions(announcement.directory_version, announcement.policy_version)
        if versions != self._versions or epoch != self._epoch:
            self._drop()
        self._versions, self._epoch = versions, epoch
        self._live_until = now + LIVE_INTERVALS * announcement.interval_s

    def lost(self) -> None:
        """Something is wrong with the announcements (one that does not parse): keep
        nothing until the next good one."""
        self._drop()
        self._versions, self._epoch, self._live_until = None, None, -math.inf

    def ticket(self) -> int:
        """Taken before asking the relay, handed to ``put`` with its answer: an answer
        that was in flight while an announcement dropped the cache is not kept."""
        return self._generation

    def get(self, request: bytes, *, now: float, wall_now: int, epoch: int) -> Recipients | None:
        """The answer kept for ``request`` (its canonical bytes), if it still holds.

        Args:
            request: the resolve request as sent (``schemas.agency.encode_request``).
            now: monotonic seconds.
            wall_now: epoch seconds, for the bulletin's expiry.
            epoch: the connection's epoch (its reconnect count; -1 while disconnected).
        """
        if not self._live(now, epoch):
            self._drop()
            self.misses += 1
            return None
        entry = self._entries.get(request)
        if entry is not None and (
            entry.versions != self._versions  # never kept so, but cheap to be sure
            or now - entry.stored_at >= self.max_age_s
            or (entry.expires_at is not None and wall_now >= entry.expires_at)
        ):
            del self._entries[request]
            entry = None
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(request)
        self.hits += 1
        return dict(entry.recipients)

    def put(
        self,
        request: bytes,
        recipients: Recipients,
        versions: Versions,
        *,
        expires_at: int | None,
        ticket: int,
        now: float,
        epoch: int,
    ) -> bool:
        """Keep the relay's answer to ``request``; True if it was kept. It is not when
        the client is not live, something was dropped since ``ticket``, or the answer
        was decided under other versions than those last announced (a relay that has
        not applied the change yet, or one that has and announced it after)."""
        if not self._live(now, epoch) or ticket != self._generation or versions != self._versions:
            return False
        self._entries[request] = _Entry(dict(recipients), versions, now, expires_at)
        self._entries.move_to_end(request)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return True

    def _live(self, now: float, epoch: int) -> bool:
        return epoch >= 0 and epoch == self._epoch and now < self._live_until

    def _drop(self) -> None:
        self._entries.clear()
        self._generation += 1
