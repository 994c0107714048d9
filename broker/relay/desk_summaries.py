"""Desks' access-log summaries (ADR 31): check an agency's signed summary and record it as
a ``desk.summary`` audit event.

``check_summary`` is the gate, pure and in the order a reviewer ticks off; ``DeskSummaries``
is the shell that reads the last summary recorded of the same desk log and writes the
event. A refusal is a ``request.rejected`` event and nothing else. A summary is recorded
only if it follows the last one of its log (its first entry is the next, its
``prev_mac`` the last one's ``head_mac``); the identical summary sent again (an answer
lost on the way back) is answered ``again`` and records nothing. The event id is the
log's and the first entry's, so two relays cannot record two summaries from one place.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from typing import Literal

from broker.audit import events
from broker.relay.api_part import ApiPart
from broker.relay.own_documents import check_fresh, check_signed_by_caller
from schemas.desk_summary import (
    GENESIS_MAC,
    DeskSummary,
    DeskSummaryReply,
    check_consistent,
    parse_summary,
    verify_summary,
)
from schemas.directory import AgencyRecord
from schemas.errors import AuditStoreError, EnvelopeError, IstmoError

__all__ = ["DeskSummaries", "Last", "check_summary"]

log = logging.getLogger("istmo.relay")

Last = tuple[int, int, str] | None  # the last recorded summary: first_seq, last_seq, head_mac


def check_summary(
    s: DeskSummary,
    *,
    caller: str,
    records: Mapping[str, AgencyRecord],
    now: int,
    max_skew_s: int,
    last: Last,
) -> Literal["new", "again"]:
    """Steps 1-6 on a parsed summary, before anything is recorded: ``new`` (record it) or
    ``again`` (this very summary was recorded before).

    Raises:
        EnvelopeError: ``originator_mismatch`` (1), ``malformed`` (4),
            ``timestamp_out_of_window`` (5), ``summary_out_of_order`` (6).
        SignatureError: ``key_not_current`` (2), ``signature_invalid`` (3).
    """
    # 1-3. The caller's own desk's, signed by its current key, the signature covering it.
    check_signed_by_caller(
        "summary",
        named=s.agency,
        kid=s.kid,
        caller=caller,
        records=records,
        verify=lambda key: verify_summary(s, key),
    )
    # 4. It adds up.
    check_consistent(s)
    # 5. It was made now, not replayed from long ago.
    check_fresh(s.issued_at, now=now, max_skew_s=max_skew_s)
    # 6. It follows the last summary of its log (or starts the log), or is that one again.
    if last is not None and (s.first_seq, s.last_seq) == last[:2]:
        if hmac.compare_digest(s.head_mac, last[2]):
            return "again"
    expected_seq, expected_mac = (1, GENESIS_MAC) if last is None else (last[1] + 1, last[2])
    if s.first_seq != expected_seq or not hmac.compare_digest(s.prev_mac, expected_mac):
        raise EnvelopeError(
            f"the summary does not follow the last one recorded of this desk log: it must "
            f"start at entry {expected_seq}, after the MAC that one ended with",
            code="summary_out_of_order",
        )
    return "new"


class DeskSummaries(ApiPart):
    """Records agencies' desk access-log summaries."""

    def accept(self, caller: str, data: bytes, now: int) -> DeskSummaryReply:
        """Check the summary ``data`` from ``caller`` and record it.

        Raises:
            IstmoError: refused (``check_summary``'s errors, or a malformed or oversized
                request); audited here, nothing else happens.
            AuditStoreError: the database refused (not audited: nothing was refused).
        """
        try:
            s = parse_summary(data)
            last = self._last(caller, s.log)
            verdict = check_summary(
                s,
                caller=caller,
                records=self.directory.records,
                now=now,
                max_skew_s=self.settings.max_clock_skew_s,
                last=last,
            )
            if verdict == "new":
                self.registry.record([], [events.desk_summary(s, at=self.clock.now_ms())])
                # Another relay may have recorded another summary from the same entry.
                if self._last(caller, s.log) != (s.first_seq, s.last_seq, s.head_mac):
                    raise EnvelopeError(
                        "another summary of this desk log was recorded at the same time",
                        code="summary_out_of_order",
                    )
        except AuditStoreError:
            raise
        except IstmoError as exc:
            self._audit_refusal(caller, exc)
            raise
        return DeskSummaryReply(
            log=s.log, last_seq=s.last_seq, recorded_at=now, again=verdict == "again"
        )

    def _last(self, caller: str, log_id: str) -> Last:
        row = self.registry.latest_audit_event(
            "desk.summary", events.desk_summary_subject(caller, log_id)
        )
        if row is None:
            return None
        data = row.to_event().data
        first, last, head = data.get("first_seq"), data.get("last_seq"), data.get("head_mac")
        if not (isinstance(first, int) and isinstance(last, int) and isinstance(head, str)):
            raise AuditStoreError(f"the last desk.summary of {caller} is unreadable")
        return first, last, head

    def _audit_refusal(self, caller: str, exc: IstmoError) -> None:
        event = events.request_rejected(
            caller, "desk-summary", reason=exc.code, message=str(exc), at=self.clock.now_ms()
        )
        try:
            self.registry.record([], [event])
        except AuditStoreError:  # the store is away: the caller still gets its answer
            log.exception("could not record the refusal of a desk summary from %s", caller)
