"""Asking and answering for consent to forward a bulletin (ADR 20): the agency API's
``forward-request``, ``forward-requests`` and ``forward-decide``.

``ForwardRequests.ask`` answers a recipient that would pass a bulletin on: the checks of
``broker.relay.forwards.check_ask``, then the policy's ``forward`` action, without the
originator's consent (``permitted``: forward now) and with it (refused outright when even
consent would not do); otherwise the request is recorded with ``forward.requested`` and
waits for the originator. ``requests`` lists what is asked of the caller's bulletins;
``decide`` records the originator's signed grant (``forward.granted``) or refusal
(``forward.refused``). Every refusal is audited (``request.rejected``, naming the
bulletin), a grant by anyone but the originator among them, and has no other effect.

Left to others: the checks (``broker.relay.forwards``), the rows
(``broker.store.forwards``), the forward itself (a bulletin, ``broker.relay.plan``).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import replace
from typing import Literal, cast

from broker.audit import events
from broker.relay.api_part import ApiPart
from broker.relay.forwards import (
    NOT_RECEIVED,
    Original,
    check_ask,
    check_grant,
    forward_labels,
    original_facts,
)
from broker.relay.queries import NotFound
from broker.store.forwards import (
    ForwardRequestRow,
    decide_forward_request,
    forward_request,
    forward_requests_to,
    record_forward_request,
)
from broker.store.recalls import withdrawals
from broker.store.registry import Registry
from schemas.canonical import canonical_json
from schemas.envelope import parse_model
from schemas.errors import AuditStoreError, EnvelopeError, IstmoError, PolicyDenied
from schemas.forwarding import (
    MAX_FORWARD_REQUESTS,
    ForwardAnswer,
    ForwardAsk,
    ForwardDecision,
    ForwardGrant,
    ForwardRequestEntry,
    ForwardRequestsReply,
    ForwardRequestsRequest,
    forward_request_id,
)

__all__ = ["NOT_ASKED", "ForwardRequests", "originals_of"]

log = logging.getLogger("istmo.relay")

# An answer to a request that is not one asked of the caller's bulletins: unknown and
# another originator's alike.
NOT_ASKED = "no request to forward a bulletin of yours has this id"
_State = Literal["pending", "granted", "refused"]


def originals_of(registry: Registry, bulletin_ids: Collection[str]) -> dict[str, Original]:
    """The bulletins of ``bulletin_ids`` that were accepted, with whom they were routed to
    and whether they were withdrawn (a few queries; none for an empty set)."""
    if not bulletin_ids:
        return {}
    rows = registry.bulletins(bulletin_ids)
    routed = registry.routed(rows)
    gone = withdrawals(registry, rows)
    return {
        bid: Original(row, frozenset(routed.get(bid, ())), bid in gone) for bid, row in rows.items()
    }


class ForwardRequests(ApiPart):
    """Answers recipients' requests to forward, and originators' answers to them."""

    # ------------------------------------------------------------------ forwarder
    def ask(self, caller: str, data: bytes, now: int) -> ForwardAnswer:
        """The answer to ``caller``'s ``forward-request`` ``data``.

        Raises:
            IstmoError: refused (``forwards.check_ask``'s errors, ``forward_denied``, a
                malformed request); audited here, nothing else happens.
            AuditStoreError: the database refused (not audited: nothing was refused).
        """
        bulletin_id: str | None = None
        try:
            req = parse_model(ForwardAsk, data, max_bytes=self.settings.max_request_bytes,
                              what="request")  # fmt: skip
            bulletin_id = req.bulletin_id
            original = originals_of(self.registry, {req.bulletin_id}).get(req.bulletin_id)
            records = self.directory.records
            check_ask(caller=caller, recipient=req.to, original=original, records=records,
                      now=now)  # fmt: skip
            if original is None:  # refused by check_ask already; for the type checker
                raise EnvelopeError(NOT_RECEIVED, code="forward_not_received")
            answer = self._policy(caller, req, original, now)
        except AuditStoreError:
            raise
        except IstmoError as exc:
            self._audit_refusal(caller, "forward-request", bulletin_id, exc, now)
            raise
        if answer is not None:
            return answer
        row = ForwardRequestRow(
            id=forward_request_id(req.bulletin_id, caller, req.to),
            bulletin_id=req.bulletin_id,
            originator=original.row.originator,
            forwarder=caller,
            recipient=req.to,
            reason=req.reason,
            requested_at=now,
            state="pending",
        )
        event = events.forward_requested(
            row.id,
            bulletin_id=row.bulletin_id,
            originator=row.originator,
            forwarder=caller,
            recipient=req.to,
            reason=req.reason,
            at=now * 1000,
        )
        return _answer(record_forward_request(self.registry, row, event))

    def _policy(
        self, caller: str, req: ForwardAsk, original: Original, now: int
    ) -> ForwardAnswer | None:
        """``permitted`` if the policy lets ``caller`` forward it without asking; None if
        the originator's consent would do. Raises PolicyDenied if not even consent would:
        the forward policy, or the receive policy on the labels a forward would carry."""
        facts = original_facts(original, self.directory.records)
        engine = self.directory.engine
        for consent in (False, True):
            d = engine.decide_forward(facts, caller, req.to, now, consent=consent)
            labels = forward_labels(facts.labels, req.to, consent=consent)
            [receive] = engine.decide_receive(replace(facts, labels=labels), [req.to], now)
            if d.allowed and receive.allowed:
                if consent:
                    return None
                return ForwardAnswer(
                    request_id=None,
                    bulletin_id=req.bulletin_id,
                    forwarder=caller,
                    recipient=req.to,
                    state="permitted",
                )
            if consent:
                why = ", ".join((d if not d.allowed else receive).policy_ids) or "no grant matched"
                raise PolicyDenied(
                    f"the policy does not let {req.to} have this bulletin, even with its "
                    f"originator's consent ({why})",
                    code="forward_denied",
                )
        return None  # pragma: no cover - the loop returns or raises

    # ------------------------------------------------------------------ originator
    def requests(self, caller: str, data: bytes) -> ForwardRequestsReply:
        """What is asked of ``caller``'s bulletins: pending only, unless the request says
        ``all``. A read: not audited."""
        req = parse_model(ForwardRequestsRequest, data,
                          max_bytes=self.settings.max_request_bytes, what="request")  # fmt: skip
        rows = forward_requests_to(
            self.registry, caller, pending_only=not req.all, limit=MAX_FORWARD_REQUESTS
        )
        return ForwardRequestsReply(
            requests=tuple(
                ForwardRequestEntry(
                    request_id=r.id,
                    bulletin_id=r.bulletin_id,
                    forwarder=r.forwarder,
                    recipient=r.recipient,
                    reason=r.reason,
                    requested_at=r.requested_at,
                    state=cast(_State, r.state),
                )
                for r in rows
            )
        )

    def decide(self, caller: str, data: bytes, now: int) -> ForwardAnswer:
        """Record ``caller``'s grant or refusal of one request asked of its bulletins.

        Raises:
            NotFound: no such request of the caller's bulletins (audited: a grant by a
                non-originator is worth an auditor's eye).
            IstmoError: the grant does not check out (``forwards.check_grant``), or the
                request was answered before (``forward_decided``); audited.
            AuditStoreError: the database refused.
        """
        bulletin_id: str | None = None
        try:
            d = parse_model(ForwardDecision, data, max_bytes=self.settings.max_request_bytes,
                            what="request")  # fmt: skip
            row = forward_request(self.registry, d.request_id)
            # The audit names the bulletin even when the caller is not its originator.
            bulletin_id = row.bulletin_id if row is not None else None
            if row is None or row.originator != caller:
                raise NotFound(NOT_ASKED)
            if row.state != "pending":
                if _same_answer(row, d):
                    return _answer(row)
                raise EnvelopeError(f"this request was {row.state} already", code="forward_decided")
            if d.grant is not None:
                check_grant(
                    d.grant,
                    caller=caller,
                    bulletin_id=row.bulletin_id,
                    forwarder=row.forwarder,
                    recipient=row.recipient,
                    records=self.directory.records,
                    now=now,
                    max_skew_s=self.settings.max_clock_skew_s,
                )
        except AuditStoreError:
            raise
        except IstmoError as exc:
            self._audit_refusal(caller, "forward-decide", bulletin_id, exc, now)
            raise
        grant, refusal = d.grant, d.refusal
        if grant is not None:
            event = events.forward_granted(
                row.id,
                bulletin_id=row.bulletin_id,
                originator=caller,
                forwarder=row.forwarder,
                recipient=row.recipient,
                kid=grant.kid,
                expires_at=grant.expires_at,
                at=now * 1000,
            )
        else:
            event = events.forward_refused(
                row.id,
                bulletin_id=row.bulletin_id,
                originator=caller,
                forwarder=row.forwarder,
                recipient=row.recipient,
                refusal=refusal or "",
                at=now * 1000,
            )
        signed = None if grant is None else canonical_json(grant.model_dump(mode="json")).decode()
        decide_forward_request(
            self.registry, row.id, at=now, grant=signed, refusal=refusal, event=event
        )
        return _answer(forward_request(self.registry, row.id) or row)

    def answer_for(self, caller: str, bulletin_id: str, recipient: str) -> ForwardAnswer | None:
        """The recorded request of ``caller`` to pass ``bulletin_id`` to ``recipient``."""
        row = forward_request(self.registry, forward_request_id(bulletin_id, caller, recipient))
        return None if row is None else _answer(row)

    def _audit_refusal(
        self, caller: str, op: str, bulletin_id: str | None, exc: IstmoError, now: int
    ) -> None:
        event = events.request_rejected(
            caller, op, reason=exc.code, message=str(exc), at=now * 1000, bulletin_id=bulletin_id
        )
        try:
            self.registry.record([], [event])
        except Exception:  # the store is away: the caller still gets its answer
            log.exception("could not record the refusal of api.%s from %s", op, caller)


def _same_answer(row: ForwardRequestRow, d: ForwardDecision) -> bool:
    """Whether ``d`` repeats the answer ``row`` recorded (asking again is harmless)."""
    if d.grant is not None:
        signed = canonical_json(d.grant.model_dump(mode="json")).decode()
        return row.state == "granted" and row.signed_grant == signed
    return row.state == "refused" and row.refusal == d.refusal


def _answer(row: ForwardRequestRow) -> ForwardAnswer:
    grant = None
    if row.signed_grant is not None:
        grant = ForwardGrant.model_validate_json(row.signed_grant, strict=False)
    return ForwardAnswer(
        request_id=row.id,
        bulletin_id=row.bulletin_id,
        forwarder=row.forwarder,
        recipient=row.recipient,
        state=cast(Literal["pending", "granted", "refused"], row.state),
        grant=grant,
        refusal=row.refusal,
    )
