"""Carrying out recalls: record the withdrawal, remove copies, tell who had it (ADR 15).

``Withdrawals.accept`` answers the first half of an agency's ``recall`` request: parse it,
check it (``broker.relay.recall``), and record the withdrawal row with its
``bulletin.withdrawn`` event in one transaction, before anything moves. A refusal is
audited here (``request.rejected``, naming the bulletin once the request parsed), and has
no other effect.

``Withdrawals.carry_out`` does the rest, all idempotent:
  1. find the bulletin's copies in ``ISTMO_DELIVER``: one ephemeral, headers-only consumer
     on the routed recipients' subjects and the group copies' at its precedence (one
     group copy stands for each routed member of its epoch, ADR 21), from a little before its
     acceptance (``NEAR_MARGIN_S``; for copies not found then, again from
     ``FAR_MARGIN_S`` before), stopping when every copy is found, at the end of the
     stream, or after ``MAX_SCAN`` messages;
  2. delete each (secure erase); a stream made before ADR 15 refuses (``deny_delete``),
     and the copies are counted as kept;
  3. read each affected recipient's consumer, and split the routed recipients into those
     that never had it and those to tell (``recall.split_recipients``);
  4. deliver the signed withdrawal to the latter (``Istmo-Kind: withdrawal``, urgent queue,
     ``Nats-Msg-Id <bulletin>:<agency>:withdrawn``);
  5. record the outcome with ``delivery.withdrawn``.
A failure of NATS or the database in 1-5 leaves the withdrawal recorded and unfinished:
the answer says ``pending``, and ``finish_unfinished`` (every relay, at start and then
every ``withdrawal_sweep_s``) or the originator asking again completes it.

Left to others: the checks and the split (``broker.relay.recall``), the rows
(``broker.store.recalls``), answering on NATS (``broker.relay.agency_api``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, NotFoundError

from broker.audit import events
from broker.relay.api_part import ApiPart
from broker.relay.attachments import purge_chunks
from broker.relay.recall import (
    CopyFate,
    check_withdrawal,
    copy_recipient,
    delivery_durable,
    notice_msg_id,
    notice_precedence,
    split_recipients,
)
from broker.store.groups import ready_epochs
from broker.store.recalls import (
    WithdrawalRow,
    complete_withdrawal,
    unfinished_withdrawals,
    withdrawal,
)
from schemas.agency import KIND_HEADER, RecallReply
from schemas.envelope import parse_model
from schemas.errors import AuditStoreError, IstmoError
from schemas.labels import Labels, Precedence
from schemas.subjects import (
    DELIVER_STREAM,
    deliver_subject,
    group_copy_id,
    group_delivery_of,
    is_group_delivery,
)
from schemas.withdrawal import WITHDRAWAL_KIND, encode_withdrawal, parse_withdrawal

__all__ = ["MAX_SCAN", "Withdrawals"]

log = logging.getLogger("istmo.relay")

# Delivery headers one pass of a recall reads at most looking for copies: about 6.5 s at
# the ~7,700 headers/s measured here (ADR 15), while the agency API waits.
MAX_SCAN = 50_000
SCAN_PAGE = 1000
# Every group epoch's copies at one precedence (ADR 21): a recall does not know which
# groups a bulletin used without opening its archived envelope, and need not.
_GROUP_COPIES = "istmo.deliver.group.*.*.{}"
# Where the scan for copies starts, before the bulletin's acceptance: stream times are
# nats-server's clock, ``accepted_at`` the relay's. First a little before (clocks that
# agree: the scan reads only what those recipients got in these seconds); for the copies
# not found then, once more from as far back as the clocks may disagree (the broker's
# allowed skew) or an expired copy may have been.
NEAR_MARGIN_S = 10
FAR_MARGIN_S = 300
_DELETES_DENIED = 10057  # "message delete not permitted": a stream made with deny_delete
_NO_SUCH_SEQUENCE = 10043  # "sequence not found": gone already
IN_FLIGHT = 64  # deletes, consumer reads and notices awaiting their answers at once
# Passing failures: the withdrawal stays recorded and is finished later.
_TRANSIENT = (nats.errors.Error, TimeoutError, AuditStoreError)


class Withdrawals(ApiPart):
    """Records and carries out agencies' recalls of their own bulletins."""

    # ------------------------------------------------------------------ accept
    def accept(self, caller: str, data: bytes, now: int) -> WithdrawalRow:
        """Check the withdrawal ``data`` from ``caller`` and record it (or find it recorded
        already: a second recall of the same bulletin records nothing new).

        Raises:
            IstmoError: refused (``recall.check_withdrawal``'s errors, or a malformed
                request); audited here, nothing else happens.
            AuditStoreError: the database refused (not audited: nothing was refused).
        """
        bulletin_id: str | None = None
        try:
            w = parse_withdrawal(data)
            bulletin_id = w.bulletin_id
            bulletin = self.registry.bulletin(w.bulletin_id)
            check_withdrawal(
                w,
                caller=caller,
                bulletin=bulletin,
                records=self.directory.records,
                now=now,
                max_skew_s=self.settings.max_clock_skew_s,
            )
        except AuditStoreError:
            raise
        except IstmoError as exc:
            self._audit_refusal(caller, bulletin_id, exc)
            raise
        done = withdrawal(self.registry, w.bulletin_id)
        if done is not None:
            return done
        reason = w.reason.encode()
        row = WithdrawalRow(
            bulletin_id=w.bulletin_id,
            originator=caller,
            notice=encode_withdrawal(w).decode(),
            withdrawn_at=now,
        )
        event = events.bulletin_withdrawn(
            w.bulletin_id,
            originator=caller,
            reason_sha256=hashlib.sha256(reason).hexdigest(),
            reason_chars=len(w.reason),
            issued_at=w.issued_at,
            kid=w.kid,
            at=self.clock.now_ms(),
        )
        self.registry.record([row], [event])
        # Another relay may have recorded the same bulletin's first: the stored row wins.
        return withdrawal(self.registry, w.bulletin_id) or row

    def _audit_refusal(self, caller: str, bulletin_id: str | None, exc: IstmoError) -> None:
        """A refused recall is an audit event, naming the bulletin once the request parsed
        (a recall of another agency's bulletin is worth an auditor's eye, though the caller
        is told "not found" as for one that does not exist)."""
        event = events.request_rejected(
            caller,
            "recall",
            reason=exc.code,
            message=str(exc),
            at=self.clock.now_ms(),
            bulletin_id=bulletin_id,
        )
        try:
            self.registry.record([], [event])
        except AuditStoreError:  # the store is away: the caller still gets its answer
            log.exception("could not record the refusal of a recall from %s", caller)

    # ------------------------------------------------------------------ carry out
    async def carry_out(self, js: JetStreamContext, row: WithdrawalRow) -> RecallReply:
        """Remove the copies of ``row``'s bulletin and tell who had it, unless that is done
        already; the answer for the originator. Never raises for NATS or the database
        being away: the answer is then ``pending``, and the work is finished later."""
        if row.completed_at is not None:
            return _reply(row, "done")
        try:
            return await self._carry_out(js, row)
        except _TRANSIENT as exc:
            log.warning(
                "withdrawal of %s recorded, not finished yet (%s); it will be",
                row.bulletin_id,
                type(exc).__name__,
            )
            return _reply(row, "pending")

    async def _carry_out(self, js: JetStreamContext, row: WithdrawalRow) -> RecallReply:
        bid = row.bulletin_id
        bulletin = self.registry.bulletin(bid)
        if bulletin is None:  # cannot be: a withdrawal is recorded only for an accepted one
            raise RuntimeError(f"withdrawal of {bid} names no accepted bulletin")
        addressed = set(bulletin.recipients.split(","))
        routed = sorted(
            d.agency for d in self.registry.decisions(bid) if d.allowed and d.agency in addressed
        )
        precedence = parse_model(
            Labels, bulletin.labels.encode(), max_bytes=64 * 1024, what="labels"
        ).precedence
        # 1. Where the copies are. An expired bulletin's went with their TTL: no scan, and
        #    every routed recipient is told (any may have had it).
        found: dict[str, list[int]] = {}
        if bulletin.expires_at is None or bulletin.expires_at > self.clock.now_s():
            near = bulletin.accepted_at - NEAR_MARGIN_S
            found = await _find_copies(js, bid, routed, precedence, near, self._members)
            missing = [a for a in routed if a not in found]
            if missing:
                far = bulletin.accepted_at - FAR_MARGIN_S
                found |= await _find_copies(js, bid, missing, precedence, far, self._members)
        # 2. Remove them, and its attachments' chunks (ADR 17).
        removed_seqs, kept = await _delete(js, [s for seqs in found.values() for s in seqs])
        await purge_chunks(js, bulletin.originator, bid)
        # 3. Who never had it.
        durables = {a: delivery_durable(a, precedence) for a in found}
        delivered = await _delivered(js, durables)
        fates = {
            a: CopyFate(
                seq=max(seqs),
                removed=all(s in removed_seqs for s in seqs),
                delivered_to=delivered.get(a),
            )
            for a, seqs in found.items()
        }
        receipted = {r.recipient for r in self.registry.receipts(bid)}
        removed, notified = split_recipients(routed, fates, receipted)
        # 4. Tell the others.
        await _notify(js, bid, row.notice.encode(), notified, notice_precedence(precedence))
        # 5. Done.
        done_at = self.clock.now_s()
        event = events.delivery_withdrawn(
            bid,
            removed=removed,
            notified=notified,
            copies_removed=len(removed_seqs),
            copies_kept=kept,
            at=self.clock.now_ms(),
        )
        complete_withdrawal(
            self.registry,
            bid,
            at=done_at,
            removed=removed,
            notified=notified,
            copies_kept=kept,
            event=event,
        )
        log.info(
            "withdrew %s: %d copies removed, %d kept, %d recipients told",
            bid,
            len(removed_seqs),
            kept,
            len(notified),
        )
        stored = withdrawal(self.registry, bid)
        return _reply(stored or row, "done")

    def _members(self, group: str, epoch: int) -> frozenset[str]:
        """The members of a group epoch whose one copy a scan found (ADR 21)."""
        return ready_epochs(self.registry, [(group, epoch)]).get((group, epoch), frozenset())

    async def finish_unfinished(self, js: JetStreamContext) -> int:
        """Finish the withdrawals a relay recorded at least ``withdrawal_grace_s`` ago and
        did not finish (it died in between); how many were finished."""
        before = self.clock.now_s() - self.settings.withdrawal_grace_s
        finished = 0
        for row in unfinished_withdrawals(self.registry, before=before):
            if (await self.carry_out(js, row)).state == "done":
                finished += 1
        return finished


def _reply(row: WithdrawalRow, state: str) -> RecallReply:
    return RecallReply(
        bulletin_id=row.bulletin_id,
        withdrawn_at=row.withdrawn_at,
        state="done" if state == "done" else "pending",
        removed=row.removed_from if state == "done" else (),
        notified=row.notified_to if state == "done" else (),
        copies_kept=row.copies_kept if state == "done" else 0,
    )


async def _find_copies(
    js: JetStreamContext,
    bulletin_id: str,
    routed: list[str],
    precedence: Precedence,
    since: int,
    members: Callable[[str, int], frozenset[str]],
) -> dict[str, list[int]]:
    """The stream sequences of ``bulletin_id``'s copies, by recipient: its own, or the one
    copy of a group epoch it is a member of (ADR 21; ``members`` names them), whose
    sequence then counts for each routed member."""
    found: dict[str, list[int]] = {}
    if not routed:
        return found
    wanted = set(routed)
    sub = await js.pull_subscribe(
        "",
        stream=DELIVER_STREAM,
        config=ConsumerConfig(
            filter_subjects=[
                *(deliver_subject(a, precedence) for a in routed),
                _GROUP_COPIES.format(precedence.value.lower()),
            ],
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=datetime.fromtimestamp(max(since, 0), UTC),
            headers_only=True,
            inactive_threshold=30.0,
        ),
    )
    scanned = 0
    try:
        if not (await sub.consumer_info()).num_pending:
            return found
        while scanned < MAX_SCAN and len(found) < len(routed):
            try:
                msgs = await sub.fetch(SCAN_PAGE, timeout=2)
            except TimeoutError:  # nats-py raises both its own and asyncio's
                break
            for msg in msgs:
                scanned += 1
                msg_id = (msg.headers or {}).get("Nats-Msg-Id", "")
                seq = msg.metadata.sequence.stream
                agency = copy_recipient(msg_id, bulletin_id)
                if agency is not None and msg.subject == deliver_subject(agency, precedence):
                    found.setdefault(agency, []).append(seq)
                elif is_group_delivery(msg.subject):
                    group, epoch, _ = group_delivery_of(msg.subject)
                    if msg_id == group_copy_id(bulletin_id, group, epoch):
                        for member in members(group, epoch) & wanted:
                            found.setdefault(member, []).append(seq)
            if not msgs or msgs[-1].metadata.num_pending == 0:
                break
    finally:
        try:
            await sub.unsubscribe()
        except nats.errors.Error:  # its inactive threshold removes it anyway
            log.debug("could not unsubscribe the scan of %s", bulletin_id)
    if scanned >= MAX_SCAN:
        log.warning("withdrawal of %s: stopped looking for copies after %d", bulletin_id, scanned)
    return found


async def _delete(js: JetStreamContext, seqs: list[int]) -> tuple[set[int], int]:
    """Delete each of ``seqs`` from the delivery stream: the ones deleted, and how many the
    stream refused to give up (one made with ``deny_delete``)."""
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(seq: int) -> str:
        async with gate:
            try:
                await js.delete_msg(DELIVER_STREAM, seq)
            except NotFoundError:
                return "gone"
            except APIError as exc:
                if exc.err_code == _NO_SUCH_SEQUENCE:
                    return "gone"
                if exc.err_code == _DELETES_DENIED:
                    return "kept"
                raise
            return "removed"

    outcomes = await asyncio.gather(*(one(s) for s in seqs))
    removed = {s for s, o in zip(seqs, outcomes, strict=True) if o == "removed"}
    kept = sum(1 for o in outcomes if o == "kept")
    if kept:
        log.warning(
            "%s denies deletes (made before ADR 15): %d undelivered copies kept; the "
            "recipients' SDKs drop them",
            DELIVER_STREAM,
            kept,
        )
    return removed, kept


async def _delivered(js: JetStreamContext, durables: Mapping[str, str]) -> dict[str, int]:
    """By agency, the stream sequence its consumer had handed messages out up to (absent:
    no such consumer, so nothing was handed out)."""
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(durable: str) -> int | None:
        async with gate:
            try:
                info = await js.consumer_info(DELIVER_STREAM, durable)
            except NotFoundError:
                return None
        return int(info.delivered.stream_seq or 0) if info.delivered else 0

    agencies = list(durables)
    got = await asyncio.gather(*(one(durables[a]) for a in agencies))
    return {a: seq for a, seq in zip(agencies, got, strict=True) if seq is not None}


async def _notify(
    js: JetStreamContext,
    bulletin_id: str,
    notice: bytes,
    agencies: tuple[str, ...],
    precedence: Precedence,
) -> None:
    """Deliver the signed withdrawal to each of ``agencies``; each is stored once (its
    dedupe id), so a second pass sends nothing new within the dedupe window, and the SDK
    drops what comes twice after it."""
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(agency: str) -> None:
        headers = {"Nats-Msg-Id": notice_msg_id(bulletin_id, agency), KIND_HEADER: WITHDRAWAL_KIND}
        async with gate:
            await js.publish(
                deliver_subject(agency, precedence), notice, stream=DELIVER_STREAM, headers=headers
            )

    await asyncio.gather(*(one(a) for a in agencies))
