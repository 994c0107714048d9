"""Keeping the SDK's directory records current: what it asks the broker, and when (ADR 14).

``DirectoryRecords.current`` returns the records of some agencies that
``clients.directory_cache`` lets the SDK use now, asking the broker only for what it must:

1. ``changes`` since the oldest version held among those out of date: a short signed list
   of the agencies whose records changed; the others are current again at once;
2. ``directory`` for those missing or changed, ``DIRECTORY_PAGE`` ids a request (a page
   that would not fit in a NATS message is asked again in halves).

A relay still applying a change may answer with an older directory than one this client
has heard of: its answer is refused or not enough (``directory_downgrade``, or records
older than required), and the SDK asks again, ``len(RETRY_DELAYS_S)`` more times, before it
gives up. A broker before ADR 14 has no ``changes``: records are then fetched again once
they are ``DIRECTORY_TTL_S`` old, as the SDK did before. This module leaves the rules to
``clients.directory_cache`` and the connection to ``clients.sdk``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection

from nats.aio.client import Client as NATS

from clients.directory_cache import DirectoryCache
from clients.requests import ask, make_request
from schemas.agency import ChangesRequest, DirectoryRequest
from schemas.directory import AgencyRecord, SignedChanges, SignedExcerpt
from schemas.envelope import MAX_RECIPIENTS
from schemas.errors import BusUnavailable, EnvelopeError, SignatureError

__all__ = ["DIRECTORY_PAGE", "RETRY_DELAYS_S", "DirectoryRecords"]

log = logging.getLogger("istmo.sdk")

# Agency ids in one directory request: about 220 KB of records (2.2 KB each with a hybrid
# KEM key), under NATS's 1 MiB default message limit; at most 16 KB each (64 signing keys,
# the longest KEM key) is 1.6 MB, under Istmo's 2 MiB. Larger is halved on answer_too_large.
DIRECTORY_PAGE = 100
# Waits before asking again while the answers are older than required (a relay rebuilding:
# about a second at 3,500 agencies, more on a loaded machine).
RETRY_DELAYS_S = (0.1, 0.3, 0.6, 1.2)


class DirectoryRecords:
    """The directory records of one client, kept current by asking the broker.

    Args:
        nc: the agency's NATS connection.
        agency: the agency this client is.
        cache: where the records are kept.
        epoch: the connection's epoch now (``IstmoClient._epoch``).
    """

    def __init__(
        self, nc: NATS, agency: str, cache: DirectoryCache, epoch: Callable[[], int]
    ) -> None:
        self._nc = nc
        self._agency = agency
        self.cache = cache
        self._epoch = epoch
        self.page = DIRECTORY_PAGE  # agency ids a directory request names at most
        self.has_changes = True  # False once a broker before ADR 14 refused ``changes``
        self.asked = {"changes": 0, "directory": 0}  # requests sent, for tests and figures

    async def current(
        self, agencies: Collection[str], *, floor: str | None = None
    ) -> dict[str, AgencyRecord]:
        """The records of ``agencies`` that may be used now; an agency the directory does
        not list is left out.

        Args:
            agencies: the agencies (at most a few thousand).
            floor: a version the records must be at least as new as (a recipients answer's).

        Raises:
            SignatureError: an answer is not signed by the pinned key
                (``directory_untrusted``) or lists an agency not asked for
                (``directory_mismatch``); or the relays kept answering with a directory
                older than one this client holds (``directory_downgrade``).
            BusUnavailable: the broker did not answer, or kept answering with records older
                than a change this client has heard of (``directory_behind``).
            IstmoError: the broker refused a request (``clients.errors``).
        """
        wanted = sorted(set(agencies))
        refused: SignatureError | None = None
        for delay in (*RETRY_DELAYS_S, None):
            refused = None
            try:
                await self._refresh(wanted, floor)
            except SignatureError as exc:
                if exc.code != "directory_downgrade":
                    raise
                refused = exc  # a relay behind this client: another may answer next
            found, behind = self._usable(wanted, floor)
            if not behind and refused is None:
                return found
            if delay is not None:
                log.info("the directory answered is older than required; asking again")
                await asyncio.sleep(delay)
        if refused is not None:
            raise refused
        raise BusUnavailable(
            f"the relays answer with directory records older than serial "
            f"{self.cache.required(floor)}, which this client has heard of: try again in a "
            "moment",
            code="directory_behind",
        )

    def _usable(
        self, wanted: list[str], floor: str | None
    ) -> tuple[dict[str, AgencyRecord], list[str]]:
        """The usable records of ``wanted``, and those held but out of date."""
        now, epoch = time.monotonic(), self._epoch()
        found: dict[str, AgencyRecord] = {}
        behind: list[str] = []
        for agency in wanted:
            record = self.cache.usable(agency, now=now, epoch=epoch, floor=floor)
            if record is not None:
                found[agency] = record
            elif self.cache.held(agency) is not None:
                behind.append(agency)
        return found, behind

    async def _refresh(self, wanted: list[str], floor: str | None) -> None:
        """Ask what ``wanted`` needs: the changes since the oldest out of date, then the
        records still missing or out of date."""
        epoch = self._epoch()
        since = self.cache.outdated_since(wanted, now=time.monotonic(), epoch=epoch, floor=floor)
        if since is not None and self.has_changes:
            await self._changes(since)
        now = time.monotonic()
        stale = [
            a for a in wanted if self.cache.usable(a, now=now, epoch=epoch, floor=floor) is None
        ]
        if stale:
            await self._fetch(stale)

    async def _changes(self, since: str) -> None:
        try:
            self.asked["changes"] += 1
            signed = await ask(
                self._nc, self._agency, "changes", ChangesRequest(since=since), SignedChanges
            )
        except EnvelopeError as exc:
            if exc.code != "bad_request":
                raise
            log.info("this broker has no directory change lists; fetching records again")
            self.has_changes = False
            return
        self.cache.add_changes(signed, now=time.monotonic())

    async def _fetch(self, agencies: list[str]) -> None:
        """Fetch the records of ``agencies``, a page at a time."""
        page = max(1, min(self.page, MAX_RECIPIENTS))
        todo = list(agencies)
        while todo:
            chunk, todo = todo[:page], todo[page:]
            req = make_request(DirectoryRequest, agencies=tuple(chunk))
            try:
                self.asked["directory"] += 1
                signed = await ask(self._nc, self._agency, "directory", req, SignedExcerpt)
            except EnvelopeError as exc:
                if exc.code != "answer_too_large" or len(chunk) == 1:
                    raise
                page = max(1, len(chunk) // 2)
                todo = chunk + todo
                continue
            self.cache.add_excerpt(signed, asked=chunk, now=time.monotonic())
