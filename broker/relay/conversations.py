"""Replies and requests for information at the relay (ADR 16): what it reads of the
bulletins replies answer, the agency API's answers about threads and RFIs, and the sweep
that raises an RFI's overdue alarm.

An RFI's state is read when asked (``schemas.rfi.rfi_state`` at the relay's clock), so
``istmo rfi list`` says ``overdue`` the moment its due time passes. The alarm in the audit
log (``rfi.overdue``, once per RFI) is raised by ``sweep``, which every relay runs at start
and every ``rfi_sweep_s``, and which a listing runs too for the RFIs it shows: the clock is
the relay's (``broker.clock.Clock``), so a test moves it instead of waiting.

Left to others: the checks on a reply and an RFI (``broker.relay.replies``, pure), the
tables and queries (``broker.store.rfis``, ``broker.store.rfi_book``).
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from broker.audit import events
from broker.relay.api_part import ApiPart
from broker.relay.queries import NotFound
from broker.relay.replies import Answered, audience_of, releasable_within
from broker.store import rfi_book
from broker.store.rfis import RfiRow
from schemas.agency import MAX_RFIS, ReplyContextReply, RfiEntry, RfiListReply
from schemas.errors import EnvelopeError
from schemas.labels import Labels
from schemas.rfi import rfi_state

__all__ = ["Conversations"]

log = logging.getLogger("istmo.relay")

# A reply-context for an id that is none the caller received or sent (unknown, or another
# agency's bulletin not routed to it): the same words for both; the id is not repeated.
_NOT_RECEIVED = (
    "no bulletin you received or sent has this id: reply to one `istmo receive` handed you"
)
_NO_RFI = "no request for information of yours has this id"


class Conversations(ApiPart):
    """The relay's side of replies and RFIs, over the registry and the directory."""

    # ------------------------------------------------------------------ replies
    def answered(self, bulletin_ids: Collection[str]) -> dict[str, Answered]:
        """What the registry recorded of each of ``bulletin_ids`` that was accepted: its
        originator, labels, routed recipients and thread (one query for the bulletins, one
        per bulletin for its routing; a batch's replies answer few bulletins)."""
        if not bulletin_ids:
            return {}
        rows = self.registry.bulletins(bulletin_ids)
        routed = self.registry.routed(rows.keys())
        parents = self.directory.jurisdiction_parents
        found: dict[str, Answered] = {}
        for bid, row in rows.items():
            labels = Labels.model_validate_json(row.labels)
            addressed = set(row.recipients.split(","))
            rfi = rfi_book.rfi(self.registry, bid)
            found[bid] = Answered(
                bulletin_id=bid,
                originator=row.originator,
                labels=labels,
                routed=frozenset(routed.get(bid, set()) & addressed),
                thread=row.thread or bid,
                reply_all=bool(row.reply_all),
                releasable_within=releasable_within(labels.rel_to, parents),
                rfi_due=rfi.due_at if rfi is not None else None,
            )
        return found

    def reply_context(self, caller: str, bulletin_id: str, now: int) -> ReplyContextReply:
        """What a reply from ``caller`` to ``bulletin_id`` starts from.

        Raises:
            NotFound: no such bulletin, or one ``caller`` neither sent nor was routed (the
                same answer); audited like a refused recall, naming the bulletin.
        """
        answered = self.answered([bulletin_id]).get(bulletin_id)
        if answered is None or caller not in answered.routed | {answered.originator}:
            event = events.request_rejected(
                caller,
                "reply-context",
                reason="not_found",
                message=_NOT_RECEIVED,
                at=now * 1000,
                bulletin_id=bulletin_id,
            )
            self.registry.record([], [event])
            raise NotFound(_NOT_RECEIVED)
        return ReplyContextReply(
            bulletin_id=bulletin_id,
            originator=answered.originator,
            labels=answered.labels,
            thread=answered.thread,
            reply_all=answered.reply_all,
            rfi_due=answered.rfi_due,
            audience=audience_of(answered, caller),
        )

    # ------------------------------------------------------------------ RFIs
    def rfi_list(self, caller: str, *, closed: bool, now: int) -> RfiListReply:
        """The RFIs ``caller`` asked and those routed to it, newest first, where each stands
        at ``now``; an overdue one gets its alarm raised here if no sweep did yet (once)."""
        rows = rfi_book.rfis_of(self.registry, caller, closed=closed, limit=MAX_RFIS)
        tallies = rfi_book.tally_rfis(self.registry, [r.bulletin_id for r in rows])
        entries = []
        for row in rows:
            entry = self._entry(caller, row, tallies[row.bulletin_id], now)
            if entry.state == "overdue" and row.overdue_at is None:
                raised = self._raise(row, tallies[row.bulletin_id].addressees, now)
                entry = entry.model_copy(update={"overdue_since": raised})
            entries.append(entry)
        return RfiListReply(rfis=tuple(entries))

    def rfi_close(self, caller: str, bulletin_id: str, now: int) -> RfiListReply:
        """Close ``caller``'s RFI ``bulletin_id``: it is no longer shown as open or
        overdue, and no alarm is raised for it.

        Raises:
            NotFound: no such RFI of the caller's (unknown and another's alike).
            EnvelopeError: ``not_an_rfi``: the caller's bulletin asks for nothing.
        """
        row = rfi_book.rfi(self.registry, bulletin_id)
        if row is None or row.asker != caller:
            bulletin = self.registry.bulletin(bulletin_id)
            if bulletin is not None and bulletin.originator == caller:
                raise EnvelopeError(
                    "that bulletin of yours is not a request for information (publish one "
                    "with `istmo rfi`)",
                    code="not_an_rfi",
                )
            raise NotFound(_NO_RFI)
        tally = rfi_book.tally_rfis(self.registry, [bulletin_id])[bulletin_id]
        event = events.rfi_closed(
            bulletin_id, asker=caller, answered_by=tally.answered_by, at=now * 1000
        )
        closed = rfi_book.close_rfi(self.registry, bulletin_id, at=now, event=event)
        return RfiListReply(rfis=(self._entry(caller, closed, tally, now),))

    def sweep(self) -> int:
        """Raise the overdue alarm of every RFI due by now, unanswered, open and not yet
        alarmed (a ``rfi.overdue`` audit event each, once). Returns how many it raised."""
        now = self.clock.now_s()
        raised = 0
        for row in rfi_book.due_unanswered(self.registry, now=now):
            tally = rfi_book.tally_rfis(self.registry, [row.bulletin_id])[row.bulletin_id]
            if self._raise(row, tally.addressees, now) is not None:
                raised += 1
        return raised

    def _raise(self, row: RfiRow, addressees: tuple[str, ...], now: int) -> int | None:
        """The alarm of ``row``, raised at ``now`` (None if another relay was first)."""
        event = events.rfi_overdue(
            row.bulletin_id,
            asker=row.asker,
            due_at=row.due_at,
            addressees=addressees,
            at=now * 1000,
        )
        if not rfi_book.mark_overdue(self.registry, row.bulletin_id, at=now, event=event):
            current = rfi_book.rfi(self.registry, row.bulletin_id)
            return current.overdue_at if current is not None else None
        log.info("RFI %s from %s is overdue (due %d)", row.bulletin_id, row.asker, row.due_at)
        return now

    @staticmethod
    def _entry(caller: str, row: RfiRow, tally: rfi_book.RfiTally, now: int) -> RfiEntry:
        """One RFI as ``caller`` may see it: its asker sees who it reached, acknowledged
        and answered; an addressee sees only whether it answered itself."""
        mine = caller == row.asker
        answered_by = (
            tally.answered_by if mine else tuple(a for a in tally.answered_by if a == caller)
        )
        state = rfi_state(
            due_at=row.due_at,
            now=now,
            acknowledged=bool(tally.acknowledged_by),
            answered=bool(tally.answered_by),
            closed=row.closed_at is not None,
        )
        return RfiEntry(
            rfi_id=row.bulletin_id,
            asker=row.asker,
            topic=row.topic,
            precedence=row.precedence,
            created_at=row.created_at,
            due_at=row.due_at,
            state=state,
            addressees=tally.addressees if mine else (),
            acknowledged_by=tally.acknowledged_by if mine else (),
            answered_by=answered_by,
            closed_at=row.closed_at,
            overdue_since=row.overdue_at,
        )
