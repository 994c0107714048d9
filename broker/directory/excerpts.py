"""Signed directory excerpts of one directory view, without encoding a record twice.

An excerpt of the agencies a wide bulletin may reach is large (7,497 records, 15 MB, at
10,000 agencies) and most of its cost was encoding the records again for every answer,
then again for the wire. ``Excerpts`` belongs to one view of ``DirectoryService`` (one
rebuild: records and version), so whatever it holds is dropped with the view, at the next
rebuild (a record changed, an agency suspended, a key rotated or revoked, a policy set
adopted):

* each record's canonical bytes are worked out once, when the view is built (its digest
  is taken over them), then joined into every excerpt that lists it
  (``schemas.directory.sign_excerpt_of``);
* ``answer`` keeps the last few signed excerpts by the agencies they list, and gives the
  same one again, for the same agencies, while it is at most ``EXCERPT_REUSE_S`` old:
  the same records at the same directory version, signed as of a time a little earlier
  (its ``issued_at``); ``encoded`` then gives its bytes for the wire, not encoded again.

A partner link's transfer (``broker.relay.link_transfer``) is signed afresh each time
(``sign``): the receiving side checks the excerpt's age.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from schemas.directory import AgencyRecord, SignedExcerpt, sign_excerpt_of
from schemas.keys import SigningKey

__all__ = ["EXCERPT_REUSE_S", "Excerpts", "SignedBytes"]

# How long an answer may repeat an excerpt signed earlier for the same agencies, in
# seconds: its records are those of the view in force (the view holds it), only its
# ``issued_at`` is older than the request.
EXCERPT_REUSE_S = 60
_KEPT = 8  # excerpts kept for answers at most, by the agencies they list
_KEPT_BYTES = 48 * 1024 * 1024  # and at most this many encoded bytes (the newest stays)


@dataclass(frozen=True)
class SignedBytes:
    """A signed excerpt and its canonical encoding (what goes on the wire)."""

    signed: SignedExcerpt
    raw: bytes


class Excerpts:
    """The signed excerpts of one directory view (``records`` at ``version``)."""

    def __init__(
        self,
        version: str,
        records: Mapping[str, AgencyRecord],
        encoded: Mapping[str, bytes],
        key: SigningKey,
    ):
        """``encoded``: each record's ``schemas.directory.record_bytes``, by agency id."""
        self.version = version
        self._records = records
        self._encoded = encoded
        self._key = key
        self._lock = threading.Lock()
        self._kept: OrderedDict[tuple[str, ...], SignedBytes] = OrderedDict()

    def sign(self, agency_ids: Iterable[str], now: int) -> SignedBytes:
        """The records of ``agency_ids`` (unknown ids left out), in id order, signed as
        of ``now``."""
        return self._sign(self._listed(agency_ids), now)

    def answer(self, agency_ids: Iterable[str], now: int) -> SignedBytes:
        """``sign``, or the excerpt of the same agencies signed at most
        ``EXCERPT_REUSE_S`` before ``now`` (never after it)."""
        ids = self._listed(agency_ids)
        with self._lock:
            kept = self._kept.get(ids)
            if kept is not None and 0 <= now - kept.signed.excerpt.issued_at <= EXCERPT_REUSE_S:
                self._kept.move_to_end(ids)
                return kept
        fresh = self._sign(ids, now)
        with self._lock:
            self._kept[ids] = fresh
            self._kept.move_to_end(ids)
            held = sum(len(k.raw) for k in self._kept.values())
            while len(self._kept) > 1 and (len(self._kept) > _KEPT or held > _KEPT_BYTES):
                _, dropped = self._kept.popitem(last=False)
                held -= len(dropped.raw)
        return fresh

    def encoded(self, signed: SignedExcerpt) -> bytes | None:
        """The canonical encoding of ``signed`` if it is one ``answer`` gave and still
        keeps (the very object), else None."""
        with self._lock:
            for kept in self._kept.values():
                if kept.signed is signed:
                    return kept.raw
        return None

    def _listed(self, agency_ids: Iterable[str]) -> tuple[str, ...]:
        return tuple(sorted({a for a in agency_ids if a in self._records}))

    def _sign(self, ids: tuple[str, ...], now: int) -> SignedBytes:
        records, encoded = self._records, self._encoded
        signed, raw = sign_excerpt_of(
            self.version, now, [records[a] for a in ids], [encoded[a] for a in ids], self._key
        )
        return SignedBytes(signed, raw)
