"""The NATS face of the agency API: ``istmo.api.<agency>.<op>`` requests, typed replies.

nats-server lets an agency publish only on its own ``istmo.api.<agency>.>`` (its own
account imports only that service), so the subject names the caller. ``AgencyApi.handle``
parses the request of the operation (``schemas.agency``), asks ``AgencyQueries`` (or
changes keys) and returns the typed reply, or an ``ErrorReply`` whose code is one of
``schemas.agency.ErrorCode``; ``AgencyApi.serve`` puts it on the wire as canonical JSON.

    recipients    labels -> which agencies may receive (ids only) and the versions decided at
    resolve       labels -> the same, with their keys (signed excerpt; SDKs before ADR 14)
    explain       labels -> every candidate: permitted or denied, by which policies, and why
    directory     agency ids -> their signed records (public keys)
    changes       a directory version -> whose records changed since (signed; ADR 14)
    key-log       keys (agency, key id) -> their registration entries in the audit log,
                  with inclusion proofs against the witnessed checkpoint (ADR 28); or the
                  caller's own key entries, for its monitor
    status        bulletin id -> accepted / rejected (reason) / pending, originator only
                  (not_found when nothing of the caller's waits for the relay)
    receipts      bulletin id -> routed recipients and their receipts, originator only;
                  with ``signed``, each receipt whole, a page at a time, to verify
    rotate        new keys signed by the current one (``broker.directory.rotation``)
    revoke-key    one of the caller's own signing key ids -> revoked from now on
    dead-letters  the caller's own dead letters
    withheld      how many bulletins the policy withheld from the caller, and when (no
                  bulletin named); a read like status, not audited
    recall        the caller's signed withdrawal of one of its bulletins: recorded, copies
                  removed, who had it told (``broker.relay.withdrawals``, ADR 15)
    groups, group-roster, group-epoch, group-keys
                  community group keys (``broker.relay.group_api``, ADR 18)
    reply-context bulletin id -> what a reply to it starts from: its labels, thread and
                  who a reply may reach; not_found (audited) unless the caller received
                  or sent it (``broker.relay.conversations``, ADR 16)
    rfi-list      the RFIs the caller asked and those asked of it, where each stands
    rfi-close     one of the caller's RFIs -> closed (audited)
    forward-request, forward-requests, forward-decide
                  consent to forward a bulletin: asked by a recipient, listed and answered
                  by the originator (``broker.relay.forward_requests``, ADR 20)
    desk-summary  the caller's signed summary of its desk's access log -> a desk.summary
                  audit event (``broker.relay.desk_summaries``, ADR 31)
    push          a wait for the next bulletins routed to the caller (FLASH and
                  IMMEDIATE ones always, the others while the relay keeps up), answered
                  with their envelopes, framed, or empty when the wait runs out
                  (``broker.relay.push``, ADR 38, ADR 43)

A refused request is an audit event; an answer the caller may not like (a policy denial,
"not found") is not, and neither is a fault of the broker's own (it is logged). A recall
and a reply-context are the exceptions: refused as "not found", each is audited (by
``Withdrawals.accept``, ``Conversations.reply_context``), naming the bulletin; so are the
forwarding operations' refusals, "not found" included (by ``ForwardRequests``), and a
desk summary's (by ``DeskSummaries``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar, cast

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from broker.audit import events
from broker.bus.leaves import leaf_domain, waiting_on_state_node
from broker.clock import SYSTEM_CLOCK, Clock
from broker.config import Settings
from broker.directory.lifecycle import CONTROL_DIRECTORY_SUBJECT, revoke_signing_key
from broker.directory.rotation import apply_rotation
from broker.directory.service import DirectoryService
from broker.relay.conversations import Conversations
from broker.relay.dead_letters import list_dead_letters
from broker.relay.desk_summaries import DeskSummaries
from broker.relay.forward_requests import ForwardRequests
from broker.relay.group_api import GROUP_OPS, GroupApi
from broker.relay.key_log import key_log_reply
from broker.relay.push import PushDoor
from broker.relay.queries import AgencyQueries, NotFound
from broker.relay.withdrawals import Withdrawals
from broker.store.registry import Registry
from schemas.agency import (
    ERROR_CODES,
    AgencyReply,
    BulletinRequest,
    ChangesRequest,
    DeadLetterEntry,
    DeadLetterKind,
    DeadLettersReply,
    DeadLettersRequest,
    DirectoryRequest,
    ErrorCode,
    ErrorReply,
    PushRequest,
    RecallReply,
    ResolveReply,
    ResolveRequest,
    RevokeKeyReply,
    RevokeKeyRequest,
    RfiListRequest,
    RotateReply,
    StatusPending,
    StatusReply,
    WithheldRequest,
    encode_reply,
)
from schemas.canonical import canonical_members, join_members
from schemas.directory import SignedExcerpt
from schemas.envelope import parse_model
from schemas.errors import (
    AuditStoreError,
    ConfigError,
    EnvelopeError,
    IstmoError,
    PolicyDenied,
    SignatureError,
)
from schemas.ids import AgencyId, parse_agency_id
from schemas.keylog import KeyLogRequest
from schemas.receipt_requests import ReceiptsRequest
from schemas.subjects import API_OPS, INGEST_STREAM, gated_subject

__all__ = [
    "AGENCY_DEAD_LETTERS_MAX",
    "AgencyApi",
    "encoded_answer",
    "error_reply",
    "reply_bytes",
]

log = logging.getLogger("istmo.relay")
_T = TypeVar("_T")

AGENCY_DEAD_LETTERS_MAX = 1000  # newest dead letters an agency gets in one answer
_INTERNAL = "the broker failed to answer; it is logged"
# A status asked of an id that is none of the caller's, decided or waiting (unknown and
# another agency's alike; the id is not repeated).
_UNKNOWN = ErrorReply.of(
    "not_found",
    "no bulletin of yours with this id was decided or is waiting for the relay "
    "(one the relay could not process is listed by `istmo dead-letters`)",
)


class AgencyApi:
    """Answers agency requests with ``AgencyQueries``, and the key changes an agency may
    make itself (rotate, revoke one of its signing keys)."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        directory: DirectoryService,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ):
        self.settings = settings
        self.registry = registry
        self.directory = directory
        self.clock = clock  # stamps the audit events of rotations and revocations
        self.queries = AgencyQueries(registry, directory)
        self.recalls = Withdrawals(settings, registry, directory, clock=clock)
        self.groups = GroupApi(settings, registry, directory, clock=clock)
        self.conversations = Conversations(settings, registry, directory, clock=clock)
        self.forwards = ForwardRequests(settings, registry, directory, clock=clock)
        self.desk_summaries = DeskSummaries(settings, registry, directory, clock=clock)
        # Waits for pushed bulletins: on the loop that serves the API (ADR 38).
        self.push = PushDoor()

    async def serve(self, nc: NATS, msg: Msg, *, now: int) -> None:
        """Answer one request on ``nc``; after a key change, tell every other broker
        process to rebuild its directory (``istmo.control.directory``)."""
        if not msg.reply:
            return
        if msg.subject.endswith(".recall"):
            recalled = await self.recall(nc, msg.subject, msg.data, now=now)
            await nc.publish(msg.reply, reply_bytes(recalled, max_bytes=nc.max_payload))
            return
        if msg.subject.endswith(".push"):
            asked = self.push_request(msg.subject, msg.data, now=now)
            if isinstance(asked, ErrorReply):
                await nc.publish(msg.reply, reply_bytes(asked, max_bytes=nc.max_payload))
            else:
                await self.push.wait(nc, asked[0], msg.reply, asked[1].wait_s)
            return
        answer = self.handle(msg.subject, msg.data, now=now)
        if _pending(answer) and not await self._waiting(nc, msg.subject):
            # Nothing of the caller's waits now. The relay commits a verdict before it
            # takes the message off the queue, so asking again tells decided from unknown.
            again = self.handle(msg.subject, msg.data, now=now)
            answer = again if not _pending(again) else _UNKNOWN
        raw = reply_bytes(answer, max_bytes=nc.max_payload, directory=self.directory)
        await nc.publish(msg.reply, raw)
        if isinstance(answer, RotateReply | RevokeKeyReply):
            await nc.publish(CONTROL_DIRECTORY_SUBJECT, b"{}")

    async def _waiting(self, nc: NATS, subject: str) -> bool:
        """Whether the caller has anything waiting for the relay (its bulletin may be among
        it: not decided yet, or embargoed). Only the caller's own ingest subject is
        counted, so the answer tells nothing about other agencies. True if JetStream does
        not answer: the cautious answer, it may still come."""
        caller = subject.split(".")[2]
        waiting_on = gated_subject("ingest", caller)
        try:
            info = await nc.jetstream(timeout=5).stream_info(
                INGEST_STREAM, subjects_filter=waiting_on
            )
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("could not count the ingest queue of %s: %s", caller, type(exc).__name__)
            return True
        if (info.state.subjects or {}).get(waiting_on, 0):
            return True
        # ADR 0030: on a state node, the publish may not have reached the hub yet.
        row = self.registry.agency(caller)
        if row is None or row.state is None:
            return False
        try:
            leaf_domain(row.state)
        except ValueError:
            return False
        return await waiting_on_state_node(nc, row.state, caller)

    async def recall(
        self, nc: NATS, subject: str, data: bytes, *, now: int
    ) -> RecallReply | ErrorReply:
        """The answer to a ``recall`` on ``subject``: the withdrawal checked and recorded
        (``Withdrawals.accept``, which audits a refusal), then carried out on ``nc``'s
        JetStream. Never raises."""
        parts = subject.split(".")
        try:
            caller = parse_agency_id(parts[2])
            if caller not in self.directory.records:
                return ErrorReply.of("unknown_agency", "this agency is not in the directory")
            row = self.recalls.accept(caller, data, now)
        except (AuditStoreError, ConfigError) as exc:
            log.error("could not answer api.recall: %s (%s)", exc.code, exc)
            return error_reply(exc)
        except IstmoError as exc:  # audited by accept
            return error_reply(exc)
        except Exception:
            log.exception("could not answer api.recall")
            return ErrorReply.of("internal", _INTERNAL)
        try:
            return await self.recalls.carry_out(nc.jetstream(timeout=10), row)
        except Exception:  # a bug: the withdrawal is recorded; a later pass may finish it
            log.exception("could not carry out the withdrawal of %s", row.bulletin_id)
            return ErrorReply.of("internal", _INTERNAL)

    def handle(self, subject: str, data: bytes, *, now: int) -> AgencyReply | ErrorReply:
        """The reply to the request ``data`` on ``subject`` (``istmo.api.<agency>.<op>``).

        Never raises: a refused request, and any fault while answering, is an
        ``ErrorReply``.
        """

        def answer(caller: AgencyId, op: str) -> AgencyReply | ErrorReply:
            if op.startswith("forward-"):
                return self._forward(caller, op, data, now)
            if op == "desk-summary":
                return self._desk_summary(caller, data, now)
            return self._answer(caller, op, data, now)

        return self._guarded(subject, now, answer)

    def push_request(
        self, subject: str, data: bytes, *, now: int
    ) -> tuple[AgencyId, PushRequest] | ErrorReply:
        """The caller and its ``push`` request on ``subject``, or the refusal (audited as
        any request's, by ``_guarded``)."""
        max_bytes = self.settings.max_request_bytes

        def asked(caller: AgencyId, _op: str) -> tuple[AgencyId, PushRequest]:
            return caller, parse_model(PushRequest, data, max_bytes=max_bytes, what="request")

        return self._guarded(subject, now, asked)

    def _guarded(
        self, subject: str, now: int, answer: Callable[[AgencyId, str], _T]
    ) -> _T | ErrorReply:
        """``answer(caller, op)`` for a request on ``subject`` from an agency in the
        directory; any refusal or fault of it as an ``ErrorReply`` (a refusal audited)."""
        parts = subject.split(".")
        if len(parts) != 4:
            return ErrorReply.of("bad_request", "unknown operation")
        try:
            caller = parse_agency_id(parts[2])
            if caller not in self.directory.records:
                return ErrorReply.of("unknown_agency", "this agency is not in the directory")
            return answer(caller, parts[3])
        except (PolicyDenied, NotFound) as exc:
            # Answers about the caller's own request, not faults in it: not audited, but
            # for an RFI to an agency the policy refuses (an auditor's concern; ADR 16).
            if exc.code == "rfi_addressee_denied":
                self._audit_refusal(parts, exc, now)
            return error_reply(exc)
        except (AuditStoreError, ConfigError) as exc:
            log.error("could not answer api.%s: %s (%s)", parts[3][:40], exc.code, exc)
            return error_reply(exc)
        except IstmoError as exc:
            self._audit_refusal(parts, exc, now)
            return error_reply(exc)
        except Exception:  # a bug or a store that went away: answer, and log it here
            log.exception("could not answer api.%s", parts[3][:40])
            return ErrorReply.of("internal", _INTERNAL)

    def _forward(self, caller: str, op: str, data: bytes, now: int) -> AgencyReply | ErrorReply:
        """The forwarding operations (ADR 20); they audit their own refusals."""
        try:
            if op == "forward-request":
                return self.forwards.ask(caller, data, now)
            if op == "forward-requests":
                return self.forwards.requests(caller, data)
            if op == "forward-decide":
                return self.forwards.decide(caller, data, now)
        except (AuditStoreError, ConfigError):
            raise
        except IstmoError as exc:  # audited by ForwardRequests
            return error_reply(exc)
        return ErrorReply.of("bad_request", f"unknown operation: use one of {', '.join(API_OPS)}")

    def _desk_summary(self, caller: str, data: bytes, now: int) -> AgencyReply | ErrorReply:
        """A desk's access-log summary (ADR 31); ``DeskSummaries`` audits its refusals."""
        try:
            return self.desk_summaries.accept(caller, data, now)
        except (AuditStoreError, ConfigError):
            raise
        except IstmoError as exc:
            return error_reply(exc)

    def _answer(self, caller: str, op: str, data: bytes, now: int) -> AgencyReply | ErrorReply:
        max_bytes = self.settings.max_request_bytes
        q = self.queries
        if op in ("recipients", "resolve", "explain"):
            ask = parse_model(ResolveRequest, data, max_bytes=max_bytes, what="request")
            # A reply: what the registry holds of the bulletin it answers (ADR 16).
            answered = None
            if ask.in_reply_to is not None:
                answered = self.conversations.answered([ask.in_reply_to]).get(ask.in_reply_to)
            if op == "recipients":
                return q.recipients(caller, ask, now, answered)
            if op == "resolve":
                return q.resolve(caller, ask, now, answered)
            return q.explain(caller, ask, now, answered)
        if op == "directory":
            req = parse_model(DirectoryRequest, data, max_bytes=max_bytes, what="request")
            return q.directory_excerpt(list(req.agencies), now)
        if op == "changes":
            since = parse_model(ChangesRequest, data, max_bytes=max_bytes, what="request").since
            return q.changes(since, now)
        if op == "key-log":
            keys = parse_model(KeyLogRequest, data, max_bytes=max_bytes, what="request")
            return key_log_reply(self.settings, caller, keys)
        if op == "status":
            one = parse_model(BulletinRequest, data, max_bytes=max_bytes, what="request")
            return q.status(caller, one.bulletin_id)
        if op == "receipts":
            asked = parse_model(ReceiptsRequest, data, max_bytes=max_bytes, what="request")
            if asked.signed:
                return q.signed_receipts(caller, asked.bulletin_id, asked.after)
            return q.receipts(caller, asked.bulletin_id)
        if op == "rotate":
            kids = apply_rotation(
                self.registry,
                self.directory.records,
                data,
                caller=caller,
                now=now,
                max_skew_s=self.settings.max_clock_skew_s,
                clock=self.clock,
            )
            self._refresh()
            return RotateReply(
                signing_kid=kids["signing_kid"], encryption_kid=kids["encryption_kid"]
            )
        if op == "revoke-key":
            revoke = parse_model(RevokeKeyRequest, data, max_bytes=max_bytes, what="request")
            return self._revoke_key(caller, revoke.kid, now, force=bool(revoke.force))
        if op == "dead-letters":
            parse_model(DeadLettersRequest, data, max_bytes=max_bytes, what="request")
            return self._dead_letters(caller)
        if op in ("reply-context", "rfi-close"):
            one = parse_model(BulletinRequest, data, max_bytes=max_bytes, what="request")
            if op == "reply-context":
                return self.conversations.reply_context(caller, one.bulletin_id, now)
            return self.conversations.rfi_close(caller, one.bulletin_id, now)
        if op == "rfi-list":
            listing = parse_model(RfiListRequest, data, max_bytes=max_bytes, what="request")
            return self.conversations.rfi_list(caller, closed=bool(listing.closed), now=now)
        if op == "withheld":
            # The request has no fields: the count is the caller's, named by its subject.
            parse_model(WithheldRequest, data, max_bytes=max_bytes, what="request")
            return q.withheld(caller)
        if op in GROUP_OPS:
            return self.groups.answer(caller, op, data, now)
        if op == "push":  # answered only when a bulletin comes (serve)
            return ErrorReply.of("bad_request", "push is a wait: ask it over NATS")
        # The operation token is the caller's: named by the list it is not in, not echoed.
        return ErrorReply.of("bad_request", f"unknown operation: use one of {', '.join(API_OPS)}")

    def _revoke_key(self, caller: str, kid: str, now: int, *, force: bool) -> RevokeKeyReply:
        """Revoke one of ``caller``'s own signing keys from ``now``: what it signs from
        this second on is refused; what it signed before still verifies.

        Raises:
            NotFound: no such key of the caller (another agency's key looks the same).
            EnvelopeError: ``already_revoked``, or ``last_key``: the caller's last valid
                signing key (its administrator re-enrols it instead).
        """
        key = self.registry.signing_key(kid)
        if key is None or key.agency != caller:
            raise NotFound("no such signing key of yours")
        if key.revoked_at is not None:
            raise EnvelopeError("that key was already revoked", code="already_revoked")
        try:
            revoke_signing_key(
                self.registry, caller, kid, actor=caller, at=now, clock=self.clock, force=force
            )
        except ConfigError as exc:
            if exc.code != "last_key":
                raise
            raise EnvelopeError(str(exc), code="last_key") from exc
        self._refresh()
        return RevokeKeyReply(agency=caller, kid=kid, revoked_at=now)

    def _dead_letters(self, caller: str) -> DeadLettersReply:
        """``caller``'s own dead letters: deliveries to it, and its own ingest messages."""
        letters = list_dead_letters(self.registry, agency=caller)[-AGENCY_DEAD_LETTERS_MAX:]
        return DeadLettersReply(
            dead_letters=tuple(
                DeadLetterEntry(
                    kind=cast(DeadLetterKind, dl.kind),
                    agency=dl.agency,
                    bulletin_id=dl.bulletin_id,
                    dead_seq=dl.dead_seq,
                    source_seq=dl.source_seq,
                    deliveries=dl.deliveries,
                    time_ms=dl.time_ms,
                    redriven=dl.redriven,
                )
                for dl in letters
            )
        )

    def _refresh(self) -> None:
        """Rebuild this relay's directory after a key change, so it answers and decides
        with the new keys at once. The change is committed by now: a failed rebuild is
        logged, not answered as a failure (the announcement makes every process,
        this one included, rebuild again)."""
        try:
            self.directory.refresh()
        except IstmoError as exc:
            log.error("could not rebuild the directory after a key change: %s", exc)

    def _audit_refusal(self, parts: list[str], exc: IstmoError, now: int) -> None:
        """A refused request is an audit event: who asked what, and why it was refused.
        The refusal is answered even if it cannot be recorded (that is logged)."""
        try:
            actor: str = parse_agency_id(parts[2])
        except IstmoError:
            actor = "unknown"
        op = parts[3][:40]
        event = events.request_rejected(actor, op, reason=exc.code, message=str(exc), at=now * 1000)
        try:
            self.registry.record([], [event])
        except Exception:  # the store is away: the caller still gets its answer
            log.exception("could not record the refusal of api.%s from %s", op, actor)


def _pending(answer: AgencyReply | ErrorReply) -> bool:
    return isinstance(answer, StatusReply) and isinstance(answer.root, StatusPending)


def error_reply(exc: IstmoError) -> ErrorReply:
    """The error reply for ``exc``: its own code when the contract has it, else the
    nearest code of its branch (a code missing from ``ErrorCode`` is a bug, logged)."""
    if isinstance(exc, ConfigError):
        # A fault in the broker's setup or data, nothing the caller can act on.
        return ErrorReply.of("internal", _INTERNAL)
    if exc.code in ERROR_CODES:
        return ErrorReply.of(cast(ErrorCode, exc.code), str(exc))
    fallback: ErrorCode = "internal"
    if isinstance(exc, SignatureError):
        fallback = "signature_invalid"
    elif isinstance(exc, EnvelopeError):
        fallback = "malformed"
    elif isinstance(exc, PolicyDenied):
        fallback = "policy_deny"
    elif isinstance(exc, AuditStoreError):
        fallback = "audit_store"
    log.warning("error code %s is not in the agency contract; answered as %s", exc.code, fallback)
    message = str(exc) if fallback != "internal" else _INTERNAL
    return ErrorReply.of(fallback, message)


def reply_bytes(
    answer: AgencyReply | ErrorReply,
    *,
    max_bytes: int,
    directory: DirectoryService | None = None,
) -> bytes:
    """``answer`` as it goes on the wire, or ``answer_too_large`` if NATS would not carry
    it (a ``directory`` page or an old ``resolve`` whose records do not fit): say so rather
    than leave the caller waiting for an answer that never comes. With the ``directory``
    that answered, the signed excerpt an answer carries is not encoded again
    (``encoded_answer``)."""
    raw = encode_reply(answer) if directory is None else encoded_answer(answer, directory)
    if len(raw) <= max_bytes:
        return raw
    return encode_reply(
        ErrorReply.of(
            "answer_too_large",
            f"the answer is {len(raw)} bytes, over the {max_bytes}-byte message limit: narrow "
            "the labels (fewer states, named agencies or a topic fewer agencies follow)",
        )
    )


def encoded_answer(answer: AgencyReply | ErrorReply, directory: DirectoryService) -> bytes:
    """``encode_reply(answer)``, the same bytes; for a ``directory`` or ``resolve`` answer
    whose signed excerpt ``directory`` gave and kept the encoding of
    (``DirectoryService.encoded_excerpt``), built from that encoding, the excerpt's
    records not encoded again."""
    if isinstance(answer, SignedExcerpt):
        kept = directory.encoded_excerpt(answer)
        if kept is not None:
            return kept
    elif isinstance(answer, ResolveReply):
        kept = directory.encoded_excerpt(answer.directory)
        if kept is not None:
            rest = canonical_members(answer.model_dump(mode="json", exclude={"directory"}))
            return join_members({**rest, "directory": kept})
    return encode_reply(answer)
