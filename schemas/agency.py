"""What an agency asks the broker over NATS, and what the broker answers (ADR 0001).

An agency sends one request, canonical JSON, on ``istmo.api.<agency>.<op>``
(``schemas.subjects.api_subject``); the broker answers with the reply of that operation or
with an ``ErrorReply``, also canonical JSON::

    op            request                       reply
    recipients    ResolveRequest                RecipientsReply: who may receive it (ids
                                                only) and the versions it was decided at
    resolve       ResolveRequest                ResolveReply: the same, with every
                                                recipient's record (kept for SDKs before
                                                ADR 14; recipients is the op to use)
    explain       ResolveRequest                ExplainReply
    directory     DirectoryRequest              SignedExcerpt (schemas.directory)
    changes       ChangesRequest                SignedChanges (schemas.directory): whose
                                                records changed since a version
    status        BulletinRequest               StatusReply: accepted, rejected or pending;
                                                not_found if none of the caller's
    receipts      ReceiptsRequest               ReceiptsReply; with ``signed``,
                  (schemas.receipt_requests)    SignedReceiptsReply: every receipt
                                                whole, for the originator to verify
    rotate        RotationRequest (rotation)    RotateReply
    revoke-key    RevokeKeyRequest              RevokeKeyReply
    dead-letters  DeadLettersRequest ({})       DeadLettersReply
    withheld      WithheldRequest ({})          WithheldReply: how many bulletins the policy
                                                withheld from the caller, nothing about them
    recall        Withdrawal (withdrawal)       RecallReply: the caller's bulletin is
                                                withdrawn (ADR 15)
    groups, group-roster, group-epoch, group-keys: community group keys (ADR 18), their
                  models in ``schemas.group_requests``
    reply-context BulletinRequest               ReplyContextReply: what a reply to a
                                                bulletin the caller received (or sent)
                                                starts from; not_found otherwise (ADR 16)
    rfi-list      RfiListRequest                RfiListReply: the RFIs the caller asked,
                                                and those asked of it
    rfi-close     BulletinRequest               RfiListReply: the caller's RFI, closed
    forward-request   ForwardAsk (forwarding)   ForwardAnswer: may the caller pass a
                                                bulletin it received on (ADR 20)
    forward-requests  ForwardRequestsRequest    ForwardRequestsReply: what is asked of
                                                the caller's bulletins
    forward-decide    ForwardDecision           ForwardAnswer: the originator's grant or
                                                refusal, recorded
    desk-summary  DeskSummary (desk_summary)    DeskSummaryReply: the signed summary of
                                                the caller's desk access log, recorded
                                                as a desk.summary audit event (ADR 31)
    push          PushRequest                   not JSON: the envelopes of the next
                                                bulletins routed to the caller, framed
                                                (schemas.push; headers Istmo-Kind: push,
                                                Istmo-Push-Frames: n), or an
                                                empty answer (header Istmo-Push: idle
                                                after wait_s, replaced when a newer
                                                wait of the caller's took its place);
                                                the bulletin is queued as ever besides
                                                (ADR 38)

    any of them fails:                          ErrorReply {"error": {"code", "message"}}

Besides the answers, every relay announces on ``istmo.announce``
(``schemas.subjects.ANNOUNCE_SUBJECT``), which each agency may only listen to, the directory
and policy versions it decides with (``Announcement``): at once after each change, and every
``interval_s`` seconds. It is all a client needs to know that an answer it kept (a resolve)
is out of date (ADR 0009), and which records it holds may be (ADR 0014); it names no
agency.

A publishing SDK asks ``recipients`` (a reply of at most ``MAX_RECIPIENTS`` ids, whatever
their keys), takes each recipient's keys from the signed records it keeps, fetches those it
lacks with ``directory`` (a page of ids at a time), and after a new version is announced
asks ``changes`` which of its records to fetch again (ADR 0014).

No reply but ``ErrorReply`` has a field named ``error``, so a reader tells an error from an
answer by its one key. ``ErrorCode`` is the closed set of codes the broker sends; a client
should still expect codes it does not know from a newer broker.

The models are strict and frozen like the rest of the wire contract. This module leaves
the answers themselves to the broker (``broker.relay``), who may ask what to nats-server
(each agency may publish only on its own ``istmo.api.<agency>.>``), and what an error
means to a program to the SDK (``clients.errors``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    SerializerFunctionWrapHandler,
    StringConstraints,
    model_serializer,
)

from schemas.canonical import canonical_json
from schemas.desk_summary import DeskSummaryReply
from schemas.directory import DirectoryVersion, SignedChanges, SignedExcerpt
from schemas.envelope import MAX_RECIPIENTS, Kid, Timestamp
from schemas.forwarding import ForwardAnswer, ForwardRequestsReply
from schemas.group_requests import EpochPostReply, GroupKeysReply, GroupsReply, RosterReply
from schemas.ids import AgencyIdStr, BulletinIdStr
from schemas.keylog import KeyLogReply
from schemas.labels import Labels
from schemas.limits import MAX_ANNOUNCE_INTERVAL_S
from schemas.receipt_requests import SignedReceiptsReply
from schemas.subjects import ApiOp

__all__ = [
    "ERROR_CODES",
    "KIND_HEADER",
    "MAX_ANNOUNCE_INTERVAL_S",
    "MAX_ERROR_MESSAGE_CHARS",
    "MAX_PUSH_WAIT_S",
    "PUSH_KIND",
    "PUSH_STATE_HEADER",
    "AgencyReply",
    "Announcement",
    "ApiOp",
    "BulletinRequest",
    "CandidateVerdict",
    "ChangesReply",
    "ChangesRequest",
    "DeadLetterEntry",
    "DeadLetterKind",
    "DeadLettersReply",
    "DeadLettersRequest",
    "DeniedRecipient",
    "DirectoryReply",
    "DirectoryRequest",
    "ErrorCode",
    "ErrorDetail",
    "ErrorReply",
    "ExplainReply",
    "PublishVerdict",
    "PushRequest",
    "PushState",
    "RecallReply",
    "ReceiptEntry",
    "ReceiptsReply",
    "RecipientsReply",
    "ReplyContextReply",
    "ResolveReply",
    "ResolveRequest",
    "RevokeKeyReply",
    "RevokeKeyRequest",
    "RfiEntry",
    "RfiListReply",
    "RfiListRequest",
    "RotateReply",
    "StatusAccepted",
    "StatusPending",
    "StatusRejected",
    "StatusReply",
    "WithheldReply",
    "WithheldRequest",
    "encode_announcement",
    "encode_reply",
    "encode_request",
]

_STRICT = ConfigDict(frozen=True, extra="forbid", strict=True)
MAX_ERROR_MESSAGE_CHARS = 300
MAX_SUPERSEDED_BY = 100  # corrections of one bulletin a status names
MAX_RFIS = 200  # RFIs one rfi-list answer names, newest first
MAX_PUSH_WAIT_S = 30  # the longest a push wait is kept open (ADR 38)
# A pushed bulletin's answer carries ``Istmo-Kind: push``; an empty answer says why in
# ``Istmo-Push``: the wait ran out (idle: ask again), or a newer wait of the same agency
# took its place (replaced: another receiver of the agency waits; ask later).
KIND_HEADER = "Istmo-Kind"  # what a message is when it is not a bulletin or a reply
PUSH_KIND = "push"
PUSH_STATE_HEADER = "Istmo-Push"
PushState = Literal["idle", "replaced"]


ErrorCode = Literal[
    # The request itself: its subject, its framing, its fields.
    "bad_request",  # no such operation, or a subject that is not istmo.api.<agency>.<op>
    "unknown_agency",  # the caller is not in the broker's directory (yet)
    "bad_agency_id",  # the subject's agency token is not an agency id
    "malformed",  # not strict canonical JSON of the request model
    "oversized",  # over the broker's request limit
    "unknown_label",  # a label value or jurisdiction the broker does not know
    "unknown_recipient",  # a named agency the directory does not know
    "unsupported_version",  # a "v" this broker does not speak
    "unsupported_suite",  # an algorithm outside the allowlist
    # Answers that are refusals.
    "policy_deny",  # the policy does not let the caller publish this
    "rfi_addressee_denied",  # the policy does not let an RFI's addressee receive it
    "too_many_recipients",  # more may receive it than one envelope carries
    "answer_too_large",  # the answer is over NATS's message limit
    "not_found",  # no such bulletin or key of the caller's (missing and not-yours look alike)
    "already_revoked",  # the key was revoked before
    "last_key",  # the caller's last valid signing key: its administrator re-enrols it instead
    "not_an_rfi",  # rfi-close of a bulletin of the caller's that asks for nothing
    # Forwarding (schemas.forwarding, ADR 20).
    "forward_not_received",  # the caller was not routed the bulletin it would forward
    "forward_denied",  # the policy lets the recipient not have it, even with consent
    "forward_not_allowed",  # a forward of one's own bulletin, of a forward, or a withdrawn one
    "forward_decided",  # the request was answered already
    # Key rotation (schemas.rotation, broker.directory.rotation).
    "originator_mismatch",  # the rotation names another agency
    "agency_not_active",  # a suspended or revoked agency cannot rotate
    "key_not_current",  # not signed by the caller's current signing key
    "bad_key",  # a new key is weak, malformed or does not match its id
    "signature_invalid",  # a signature does not verify
    "timestamp_out_of_window",  # issued outside the allowed clock skew
    "key_reused",  # the new keys are registered already
    # Community groups (schemas.group_requests, ADR 18).
    "unknown_group",  # no group of that name
    "not_group_manager",  # only a group's manager may ask for its roster or post an epoch
    "stale_group_epoch",  # the epoch posted is not the next one (or differs from one begun)
    "roster_changed",  # the members posted are not the group's roster now: ask it again
    # Desk access-log summaries (schemas.desk_summary, ADR 31).
    "summary_out_of_order",  # does not follow the last summary recorded of that desk log
    # Attachments (schemas.attachments, ADR 17).
    "attachment_too_large",  # over the broker's limit on one attachment's size
    "too_many_attachments",  # more attachments than the broker takes on one bulletin
    "chunk_conflict",  # that chunk is stored already, with other content
    "chunk_missing",  # the chunk is not in the broker's store (removed, or lost)
    "chunk_damaged",  # the stored chunk does not match what was recorded of it
    "expired",  # the bulletin has expired
    "store_full",  # the broker's store has no room now
    # The broker's own faults: nothing about the request; try again later.
    "audit_store",  # the audit store could not record the change
    "internal",  # anything else; the broker logs it
]
ERROR_CODES: frozenset[str] = frozenset(get_args(ErrorCode))

ErrorMessage = Annotated[str, StringConstraints(max_length=MAX_ERROR_MESSAGE_CHARS)]
PolicyVersion = Annotated[str, StringConstraints(min_length=1, max_length=64)]
PolicyId = Annotated[str, StringConstraints(min_length=1, max_length=200)]
ReasonCode = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,39}$")]
DeadLetterKind = Literal["deliver", "ingest"]
Signature = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]*={0,2}$", max_length=128)]


# ---------------------------------------------------------------------------- requests
class ResolveRequest(BaseModel):
    """Labels of a bulletin about to be published (and its embargo and expiry, if any);
    for a reply, the bulletin it answers (ADR 16), whose audience and labels then bound
    the answer."""

    model_config = _STRICT

    labels: Labels
    not_before: Timestamp | None = None
    expires_at: Timestamp | None = None
    in_reply_to: BulletinIdStr | None = None
    # A request for information addressed to these agencies: each must be let receive it,
    # or the answer is a refusal that says why (ADR 16).
    addressees: tuple[AgencyIdStr, ...] | None = Field(default=None, max_length=64)


class RfiListRequest(BaseModel):
    """The RFIs the caller asked and those asked of it; ``closed`` to list closed ones
    too."""

    model_config = _STRICT

    closed: Literal[True] | None = None


class DirectoryRequest(BaseModel):
    """Agencies whose signed directory records the caller wants."""

    model_config = _STRICT

    agencies: tuple[AgencyIdStr, ...] = Field(min_length=1, max_length=MAX_RECIPIENTS)


class ChangesRequest(BaseModel):
    """Whose directory records changed since ``since`` (a version the caller holds)."""

    model_config = _STRICT

    since: DirectoryVersion


class BulletinRequest(BaseModel):
    """One of the caller's own bulletins (``status``, ``reply-context``, ``rfi-close``;
    ``receipts`` takes ``schemas.receipt_requests.ReceiptsRequest``, of which this is the
    plain form)."""

    model_config = _STRICT

    bulletin_id: BulletinIdStr


class RevokeKeyRequest(BaseModel):
    """One of the caller's own signing keys, to revoke from now on; ``force`` to revoke its
    last valid one too (the agency can then neither publish nor rotate until its
    administrator re-enrols it)."""

    model_config = _STRICT

    kid: Kid
    force: Literal[True] | None = None


class DeadLettersRequest(BaseModel):
    """The caller's own dead letters: the request has no fields (``{}``)."""

    model_config = _STRICT


class PushRequest(BaseModel):
    """Wait up to ``wait_s`` seconds for a FLASH or IMMEDIATE bulletin routed to the
    caller, pushed over core NATS as soon as the relay has recorded it (ADR 38). One
    wait per agency is kept: a newer one replaces it (answered ``replaced``)."""

    model_config = _STRICT

    wait_s: int = Field(ge=1, le=MAX_PUSH_WAIT_S)


class WithheldRequest(BaseModel):
    """How many bulletins the policy withheld from the caller: no fields (``{}``); the
    caller is the agency its subject names, never one a request could name."""

    model_config = _STRICT


# ---------------------------------------------------------------------------- replies
class RecipientsReply(BaseModel):
    """Who may receive the bulletin: ids only, at most ``MAX_RECIPIENTS`` of them, and the
    policy and directory versions the relay decided with. The keys are in the signed
    records the client keeps (``directory``, ``changes``), never here."""

    model_config = _STRICT

    recipients: tuple[AgencyIdStr, ...] = Field(max_length=MAX_RECIPIENTS)
    policy_version: PolicyVersion
    directory_version: DirectoryVersion


class ResolveReply(BaseModel):
    """Who may receive the bulletin, with their records in an excerpt signed by the
    directory key (the client checks it against the key it pinned). Kept for SDKs before
    ADR 14; it grows with the audience (about 2 KB a recipient)."""

    model_config = _STRICT

    recipients: tuple[AgencyIdStr, ...] = Field(max_length=MAX_RECIPIENTS)
    policy_version: PolicyVersion
    directory: SignedExcerpt


class PublishVerdict(BaseModel):
    """May the caller publish it, and by which policies."""

    model_config = _STRICT

    allowed: bool
    policy_ids: tuple[PolicyId, ...]


class CandidateVerdict(BaseModel):
    """One candidate recipient: permitted or not, why in words, and by which policies."""

    model_config = _STRICT

    agency: AgencyIdStr
    allowed: bool
    summary: str
    policy_ids: tuple[PolicyId, ...]


class ExplainReply(BaseModel):
    """Who would receive the bulletin, and why not the others."""

    model_config = _STRICT

    policy_version: PolicyVersion
    publish: PublishVerdict
    candidates: tuple[CandidateVerdict, ...]


DirectoryReply = SignedExcerpt
ChangesReply = SignedChanges


class DeniedRecipient(BaseModel):
    """A candidate the policy refused, with the deciding policies and their reasons."""

    model_config = _STRICT

    agency: AgencyIdStr
    policy_ids: tuple[PolicyId, ...]
    reasons: tuple[str, ...]


class StatusAccepted(BaseModel):
    """The relay accepted the bulletin: whom it routed it to, whom the policy denied."""

    model_config = _STRICT

    state: Literal["accepted"]
    bulletin_id: BulletinIdStr
    routed: tuple[AgencyIdStr, ...]
    denied: tuple[DeniedRecipient, ...]
    policy_version: PolicyVersion
    # ADR 15: when its originator withdrew it, the bulletin it corrects, and the corrections
    # accepted since (oldest first). On the wire only when set, so the answer about any
    # other bulletin is the bytes it always was (and an older SDK still reads it).
    withdrawn_at: Timestamp | None = None
    supersedes: BulletinIdStr | None = None
    superseded_by: tuple[BulletinIdStr, ...] = Field(default=(), max_length=MAX_SUPERSEDED_BY)

    @model_serializer(mode="wrap")
    def _links_only_when_set(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        for key in ("withdrawn_at", "supersedes", "superseded_by"):
            if not data.get(key):
                data.pop(key, None)
        return data


class StatusRejected(BaseModel):
    """The relay refused the bulletin; ``reason`` is its code."""

    model_config = _STRICT

    state: Literal["rejected"]
    bulletin_id: BulletinIdStr
    reason: ReasonCode
    message: ErrorMessage


class StatusPending(BaseModel):
    """Not decided yet, or embargoed: the caller has bulletins waiting for the relay. An id
    that is none of the caller's (unknown, or another agency's) is ``not_found`` instead."""

    model_config = _STRICT

    state: Literal["pending"]
    bulletin_id: BulletinIdStr


class StatusReply(RootModel[StatusAccepted | StatusRejected | StatusPending]):
    """The relay's verdict on one of the caller's bulletins, told apart by ``state``."""

    model_config = ConfigDict(frozen=True, strict=True)

    root: Annotated[StatusAccepted | StatusRejected | StatusPending, Field(discriminator="state")]


class ReceiptEntry(BaseModel):
    """A routed recipient, and its signed receipt once it has received the bulletin."""

    model_config = _STRICT

    agency: AgencyIdStr
    received_at: Timestamp | None
    signature: Signature | None


class ReceiptsReply(BaseModel):
    """The routed recipients of one of the caller's bulletins, and their receipts."""

    model_config = _STRICT

    bulletin_id: BulletinIdStr
    recipients: tuple[ReceiptEntry, ...]


class RecallReply(BaseModel):
    """The caller's bulletin is withdrawn (ADR 15).

    Attributes:
        bulletin_id: the bulletin.
        withdrawn_at: when the broker recorded the withdrawal (the first, if asked again).
        state: ``done``, or ``pending``: recorded, and a relay is still removing copies
            and sending the withdrawal (ask again to see the outcome).
        removed: recipients whose copy was removed before it reached them; they are not
            told anything.
        notified: recipients sent the signed withdrawal: they had the bulletin, or may
            have had it.
        copies_kept: undelivered copies the delivery stream would not let go (one made
            before ADR 15); those recipients' SDKs drop them on arrival.
    """

    model_config = _STRICT

    bulletin_id: BulletinIdStr
    withdrawn_at: Timestamp
    state: Literal["done", "pending"]
    removed: tuple[AgencyIdStr, ...] = Field(max_length=MAX_RECIPIENTS)
    notified: tuple[AgencyIdStr, ...] = Field(max_length=MAX_RECIPIENTS)
    copies_kept: int = Field(ge=0)


class ReplyContextReply(BaseModel):
    """What a reply to ``bulletin_id`` starts from (ADR 16): its originator, labels and
    thread as the relay recorded them, whether its originator let replies reach every
    recipient, and who a reply from the caller may reach (the policy still decides each).

    Attributes:
        bulletin_id: the bulletin answered.
        originator: its originator.
        labels: its labels; a reply's may be no weaker.
        thread: the thread a reply joins (the id of its first bulletin).
        reply_all: its originator lets replies reach every recipient.
        rfi_due: set if it is a request for information.
        audience: who a reply from the caller may reach.
    """

    model_config = _STRICT

    bulletin_id: BulletinIdStr
    originator: AgencyIdStr
    labels: Labels
    thread: BulletinIdStr
    reply_all: bool
    rfi_due: Timestamp | None
    audience: tuple[AgencyIdStr, ...] = Field(max_length=MAX_RECIPIENTS)


class RfiEntry(BaseModel):
    """One request for information, as the broker knows it: metadata, never content.

    Attributes:
        rfi_id: the RFI's bulletin id.
        asker: who asked.
        topic: its topic label.
        precedence: its precedence.
        created_at: when it was asked.
        due_at: when answers are due.
        state: open, acknowledged, answered, closed or overdue, at the time of the answer.
        addressees: who it was routed to (for its asker; empty for an addressee).
        acknowledged_by: addressees that sent a signed receipt (for its asker).
        answered_by: addressees that replied (for its asker; an addressee sees itself).
        closed_at: when its asker closed it.
        overdue_since: when the broker raised the overdue alarm, if it did.
    """

    model_config = _STRICT

    rfi_id: BulletinIdStr
    asker: AgencyIdStr
    topic: Annotated[str, StringConstraints(max_length=64)]
    precedence: Annotated[str, StringConstraints(max_length=16)]
    created_at: Timestamp
    due_at: Timestamp
    state: Literal["open", "acknowledged", "answered", "closed", "overdue"]
    addressees: tuple[AgencyIdStr, ...] = Field(max_length=MAX_RECIPIENTS)
    acknowledged_by: tuple[AgencyIdStr, ...] = Field(max_length=MAX_RECIPIENTS)
    answered_by: tuple[AgencyIdStr, ...] = Field(max_length=MAX_RECIPIENTS)
    closed_at: Timestamp | None
    overdue_since: Timestamp | None


class RfiListReply(BaseModel):
    """RFIs, newest first: those the caller asked and those asked of it."""

    model_config = _STRICT

    rfis: tuple[RfiEntry, ...] = Field(max_length=MAX_RFIS)


class RotateReply(BaseModel):
    """The rotation is recorded: these are the caller's current keys from now on."""

    model_config = _STRICT

    signing_kid: Kid
    encryption_kid: Kid


class RevokeKeyReply(BaseModel):
    """The key is revoked: what it signs from ``revoked_at`` on is refused."""

    model_config = _STRICT

    agency: AgencyIdStr
    kid: Kid
    revoked_at: Timestamp


class DeadLetterEntry(BaseModel):
    """A delivery to the caller its handler kept failing on, or one of its own bulletins
    no relay could process; ``dead_seq`` is None if the message was gone."""

    model_config = _STRICT

    kind: DeadLetterKind
    agency: AgencyIdStr
    bulletin_id: BulletinIdStr | None
    dead_seq: int | None = Field(ge=0)
    source_seq: int = Field(ge=0)
    deliveries: int = Field(ge=0)
    time_ms: int = Field(ge=0)
    redriven: bool


class DeadLettersReply(BaseModel):
    """The caller's dead letters, oldest first."""

    model_config = _STRICT

    dead_letters: tuple[DeadLetterEntry, ...]


class WithheldReply(BaseModel):
    """How many bulletins the policy withheld from the caller (every refusal the broker
    recorded, one per bulletin), and when the first and the latest were (epoch seconds,
    to the minute; None when there were none). Nothing about any bulletin: no id, topic,
    label or originator. Only a policy refusal counts; a bulletin the originator did not
    seal for the caller although the policy allowed it does not."""

    model_config = _STRICT

    withheld: int = Field(ge=0)
    first_at: Timestamp | None
    latest_at: Timestamp | None


class ErrorDetail(BaseModel):
    """Why a request failed: a code from ``ErrorCode`` and a short message."""

    model_config = _STRICT

    code: ErrorCode
    message: ErrorMessage


class ErrorReply(BaseModel):
    """A request failed: the one reply shaped ``{"error": {...}}``."""

    model_config = _STRICT

    error: ErrorDetail

    @classmethod
    def of(cls, code: ErrorCode, message: str) -> ErrorReply:
        """An error reply, its message cut to ``MAX_ERROR_MESSAGE_CHARS``."""
        return cls(error=ErrorDetail(code=code, message=message[:MAX_ERROR_MESSAGE_CHARS]))


# ---------------------------------------------------------------------------- announcements
class Announcement(BaseModel):
    """What a relay decides with now: the directory version (as in the excerpts it signs)
    and the policy version (as in its answers), and how often it says so."""

    model_config = _STRICT

    directory_version: DirectoryVersion
    policy_version: PolicyVersion
    interval_s: int = Field(ge=1, le=MAX_ANNOUNCE_INTERVAL_S)


AgencyReply = (
    RecipientsReply
    | ResolveReply
    | ExplainReply
    | SignedExcerpt
    | SignedChanges
    | KeyLogReply
    | StatusReply
    | ReceiptsReply
    | SignedReceiptsReply
    | RotateReply
    | RevokeKeyReply
    | DeadLettersReply
    | WithheldReply
    | RecallReply
    | GroupsReply
    | RosterReply
    | EpochPostReply
    | GroupKeysReply
    | ReplyContextReply
    | RfiListReply
    | ForwardAnswer
    | ForwardRequestsReply
    | DeskSummaryReply
)


def encode_reply(reply: AgencyReply | ErrorReply) -> bytes:
    """The reply as it goes on the wire: canonical JSON, every field present."""
    return canonical_json(reply.model_dump(mode="json"))


def encode_announcement(announcement: Announcement) -> bytes:
    """An announcement as it goes on the wire: canonical JSON."""
    return canonical_json(announcement.model_dump(mode="json"))


def encode_request(request: BaseModel) -> bytes:
    """A request as it goes on the wire: canonical JSON, fields left at None omitted."""
    return canonical_json(request.model_dump(mode="json", exclude_none=True))
