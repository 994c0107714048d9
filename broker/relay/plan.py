"""The relay's decision on each ingest message, as a pure function.

``plan`` takes one ingest message as JetStream handed it over (its bytes, subject, stream
sequence and stored time), the result of parsing it (``checks.parse_ingest``), a view of
the directory and its policy engine, the earlier acceptance of the same bulletin id if
there was one, and the time. It answers with a ``Plan``, one of:

* **accept**: the recipients to deliver to, every receive decision (the denials among
  them with their codes and reasons), and the rows and audit events to commit first:
  the bulletin, its one decision record and ``bulletin.accepted`` and
  ``bulletin.decided`` (``broker.relay.decisions``, ADR 8);
* **reject**: the refusal code and message, a rejection row and a ``bulletin.rejected``
  event (the message is then terminated, so it never loops);
* **resume**: the same stream message came back after its bulletin was recorded (a crash
  between commit and ack): deliver what was routed then, decide nothing again;
* **defer**: embargoed; hand it back to JetStream for ``defer_s`` seconds.

``plan_batch`` runs ``plan`` over a fetched batch, so that a bulletin id taken by one
message of the batch is a replay (or a conflict) for the next.

Nothing here awaits, reads a clock or touches a socket or the database: every input is
an argument, so the decision is table-tested in milliseconds (``tests/core/
test_relay_plan.py``). Left to others: fetching, committing, archiving, delivering and
acking (``broker.relay.worker``), the numbered checks (``broker.relay.checks``), what
is recorded of each receive decision (``broker.relay.decisions``), the Cedar policy
(``broker.policy``) and the routed recipients of a resumed bulletin, which are in the
registry.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, replace
from itertools import chain
from typing import Literal, Protocol

from sqlmodel import SQLModel

from broker.audit import events
from broker.policy.model import BulletinFacts, DecidedAlike, Decider, Decision, ReplyFacts
from broker.relay.attachment_checks import AttachmentLimits, StoredChunk, check_attachments
from broker.relay.checks import (
    IngestLimits,
    check_ingest,
    check_supersedes,
    parse_ingest,
    sender_of,
)
from broker.relay.cover import addressed, check_cover
from broker.relay.decisions import Denial, denial_of, route
from broker.relay.forwards import ForwardVerdict, Original, check_forward
from broker.relay.replies import Answered, check_reply, check_rfi
from broker.store.groups import CurrentEpoch, EpochMembers
from broker.store.registry import AgencySetRow, BulletinRow, Insert, RejectionRow, row_values
from broker.store.rfis import RfiAddresseeRow, RfiRow
from schemas.audit import AuditEvent
from schemas.canonical import canonical_json
from schemas.directory import AgencyRecord
from schemas.envelope import Envelope, Header
from schemas.errors import EnvelopeError, IstmoError, PolicyDenied
from schemas.ids import AgencyId
from schemas.labels import Precedence

__all__ = [
    "MAX_DEFER_S",
    "DirectoryView",
    "Ingested",
    "Parsed",
    "Plan",
    "Prior",
    "Verdict",
    "parse",
    "plan",
    "plan_batch",
    "publish_refusal",
    "set_records",
]

MAX_DEFER_S = 3600
# A broker that takes no attachments (the default of a plan's callers that pass none).
NO_ATTACHMENTS = AttachmentLimits(
    max_attachment_bytes=0, max_attachments=0
)  # an embargoed bulletin is handed back at most this long at a time
_MAX_MESSAGE_CHARS = 300  # a rejection's message as the registry keeps it

Verdict = Literal["accept", "reject", "resume", "defer"]
Parsed = tuple[AgencyId, Envelope] | IstmoError  # what ``checks.parse_ingest`` gave


class DirectoryView(Protocol):
    """What the decision reads of the directory (``DirectoryService`` is one)."""

    @property
    def records(self) -> Mapping[str, AgencyRecord]:
        """Every agency with its status and keys, by id."""
        ...

    @property
    def states(self) -> Set[str]:
        """The codes of the known states and communities."""
        ...

    @property
    def engine(self) -> Decider:
        """The policy engine in force (policy set and directory snapshot)."""
        ...

    def candidates(self, topic: str, named: tuple[str, ...]) -> list[str]:
        """The agencies that follow ``topic``, plus those ``named`` that exist, sorted."""
        ...


@dataclass(frozen=True)
class _Attached:
    chunks: Mapping[tuple[int, int], StoredChunk]
    limits: AttachmentLimits


@dataclass(frozen=True)
class Ingested:
    """One ingest message as JetStream handed it over.

    Attributes:
        raw: the stored bytes (an envelope, or whatever the publisher sent).
        subject: ``istmo.gated.ingest.<agency>``: the agency that published it.
        seq: its sequence in ``ISTMO_INGEST``.
        stored_at: when JetStream stored it, epoch seconds (the server's clock).
        gated_at: when a gate first stored it, epoch seconds (its ``Istmo-Gated-At``
            stamp, ``schemas.subjects.gated_at_of``), or None if unstamped.
    """

    raw: bytes
    subject: str
    seq: int
    stored_at: int
    gated_at: int | None = None


@dataclass(frozen=True)
class Prior:
    """An earlier acceptance of a bulletin id: its ingest sequence and envelope digest."""

    seq: int
    digest: str


@dataclass(frozen=True)
class Plan:
    """What the relay does with one ingest message; see the module docstring.

    Attributes:
        verdict: accept, reject, resume or defer.
        seq: the ingest message's stream sequence.
        sender: the publishing agency (``unknown`` if the subject names none).
        bulletin_id: the envelope's id, once it parsed.
        reason: the refusal code of a rejection.
        message: the refusal message of a rejection.
        addressed: the signed recipients (accept and resume).
        deliver_to: who gets it: allowed by the policy and addressed (accept).
        decisions: every receive decision, in candidate order (accept).
        rows: registry rows to commit (a bulletin and its decision record as ``Insert``
            values, or a rejection).
        events: audit events to commit with them.
        defer_s: how long to hand it back for (defer).
        rank: its precedence, FLASH = 0, for the order of delivery.
        claim: set when this message took the bulletin id for the rest of its batch.
        expires_at: the signed expiry (accept and resume): its deliveries go when it
            passes (ADR 15).
        originator: the signed originator of an accepted or resumed bulletin.
        groups: the (group, epoch) pairs its envelope is sealed under (accept and
            resume): their members may share one copy (ADR 21).
    """

    verdict: Verdict
    seq: int
    sender: str
    bulletin_id: str | None = None
    reason: str | None = None
    message: str = ""
    addressed: tuple[str, ...] = ()
    deliver_to: tuple[str, ...] = ()
    decided: tuple[DecidedAlike, ...] = ()
    rows: tuple[SQLModel | Insert, ...] = ()
    events: tuple[AuditEvent, ...] = ()
    defer_s: int = 0
    rank: int = len(Precedence)
    claim: Prior | None = None
    expires_at: int | None = None
    originator: str | None = None
    groups: tuple[tuple[str, int], ...] = ()
    listed: tuple[str, ...] = ()  # digests of the agency sets its rows record (ADR 36)
    sets: tuple[tuple[str, tuple[str, ...]], ...] = ()  # every set its record names

    @property
    def decisions(self) -> tuple[Decision, ...]:
        """Each candidate's receive decision, by agency (built from ``decided``)."""
        return tuple(sorted(_each(self.decided), key=lambda d: d.agency))

    @property
    def denials(self) -> tuple[Denial, ...]:
        """The candidates refused, with why."""
        return tuple(denial_of(d) for d in self.decisions if not d.allowed)

    @property
    def withheld_from(self) -> tuple[str, ...]:
        """The candidates the policy refused (an accepted bulletin's only), for their
        ``withheld`` counts: who, never why. Sorted."""
        refused = (c.agencies for c in self.decided if not c.decision.allowed)
        return tuple(sorted(chain.from_iterable(refused)))


def parse(msg: Ingested, limits: IngestLimits) -> Parsed:
    """Steps 1-2 of the checks (``checks.parse_ingest``), a refusal returned as a value:
    the batch's ids are looked up together before ``plan`` decides each message."""
    try:
        return parse_ingest(msg.raw, subject=msg.subject, limits=limits)
    except IstmoError as exc:
        return exc


def plan(
    msg: Ingested,
    parsed: Parsed,
    *,
    directory: DirectoryView,
    limits: IngestLimits,
    prior: Prior | None,
    now_ms: int,
    superseded_originator: str | None = None,
    epochs: Mapping[str, CurrentEpoch] | None = None,
    members: Mapping[tuple[str, int], EpochMembers] | None = None,
    answered: Answered | None = None,
    stored_chunks: Mapping[tuple[int, int], StoredChunk] | None = None,
    attachment_limits: AttachmentLimits = NO_ATTACHMENTS,
    original: Original | None = None,
    listed: Set[str] = frozenset(),
) -> Plan:
    """Decide what to do with one ingest message.

    Args:
        msg: the message as stored.
        parsed: ``(sender, envelope)`` from ``checks.parse_ingest``, or the error it raised.
        directory: the directory and policy engine in force.
        limits: size and clock limits.
        prior: the earlier acceptance of this bulletin id (by an earlier batch or earlier
            in this one), if any.
        now_ms: the relay's clock, epoch milliseconds.
        superseded_originator: for a correction, the recorded originator of the bulletin
            it supersedes (None: no such bulletin was accepted).
        epochs: the current epoch of each community group the message's envelope uses
            (ADR 18; ``broker.relay.cover``).
        members: the recorded members of each group epoch its header's audience names
            (ADR 37).
        answered: for a reply, what the registry recorded of the bulletin it answers
            (None: no such bulletin was accepted; ADR 16).
        stored_chunks: what the attachment stream holds of this bulletin under its
            originator, by (attachment, chunk) (ADR 17); for a forward that cites files,
            what it holds of the original under the original's originator (ADR 20).
        attachment_limits: the broker's limits on attachments.
        original: for a forward, the bulletin it cites as the registry holds it (None:
            never accepted; ADR 20).
        listed: digests of agency sets already recorded (ADR 36): a set the decision
            record names that is not among them is recorded with it.

    Returns:
        The plan; every refusal is a ``reject`` plan, never an exception.
    """
    sender = sender_of(msg.subject, "ingest") or "unknown"
    if isinstance(parsed, IstmoError):
        return _rejected(msg, sender, None, parsed, now_ms)
    env = parsed[1]
    # Rejections are filed under (sender, id): the sender can see its own verdict, and a
    # forged id never touches another agency's bulletin.
    try:
        return _decide(
            msg,
            parsed[0],
            env,
            directory,
            limits,
            prior,
            now_ms,
            superseded_originator,
            epochs or {},
            members or {},
            answered,
            _Attached(stored_chunks or {}, attachment_limits),
            original,
            listed,
        )
    except IstmoError as exc:
        return _rejected(msg, sender, env.header.bulletin_id, exc, now_ms)


def plan_batch(
    msgs: Sequence[Ingested],
    parsed: Sequence[Parsed],
    *,
    directory: DirectoryView,
    limits: IngestLimits,
    accepted: Mapping[str, tuple[int, str]],
    now_ms: int,
    superseded: Mapping[str, str] | None = None,
    epochs: Mapping[str, CurrentEpoch] | None = None,
    members: Mapping[tuple[str, int], EpochMembers] | None = None,
    answered: Mapping[str, Answered] | None = None,
    attachments: Mapping[str, Mapping[tuple[int, int], StoredChunk]] | None = None,
    attachment_limits: AttachmentLimits = NO_ATTACHMENTS,
    originals: Mapping[str, Original] | None = None,
    listed: Set[str] = frozenset(),
) -> list[Plan]:
    """``plan`` for each message of a batch, in order.

    Args:
        msgs: the batch.
        parsed: the parse result of each.
        directory: the directory and policy engine in force.
        limits: size and clock limits.
        accepted: ``(ingest_seq, envelope_digest)`` of the batch's bulletin ids that the
            registry holds already (``Registry.accepted``).
        now_ms: the relay's clock, epoch milliseconds, read once for the batch.
        superseded: the recorded originator of each bulletin the batch's corrections
            supersede, by id, if the registry holds it (a bulletin accepted earlier in the
            batch counts too).
        epochs: the current epoch of each community group the batch's envelopes use.
        members: the recorded members of each group epoch the batch's audiences name.
        answered: what the registry recorded of each bulletin the batch's replies answer,
            by id (ADR 16). A reply to a bulletin of the same batch is refused: nobody can
            have received that bulletin yet.
        originals: the bulletins the batch's forwards cite, by id, as the registry holds
            them (ADR 20).
        listed: digests of agency sets already recorded (ADR 36); a set is recorded with
            the first plan of the batch that names it.
    """
    taken: dict[str, Prior] = {}
    recorded = set(listed)
    originators = dict(superseded or {})
    plans: list[Plan] = []
    for msg, got in zip(msgs, parsed, strict=True):
        prior: Prior | None = None
        corrected: str | None = None
        replied: Answered | None = None
        chunks: Mapping[tuple[int, int], StoredChunk] | None = None
        original: Original | None = None
        if not isinstance(got, IstmoError):
            header = got[1].header
            known = accepted.get(header.bulletin_id)
            prior = Prior(*known) if known is not None else taken.get(header.bulletin_id)
            corrected = originators.get(header.supersedes) if header.supersedes else None
            if header.in_reply_to is not None and answered is not None:
                replied = answered.get(header.in_reply_to)
            chunks = (attachments or {}).get(header.bulletin_id)
            if header.forward_of is not None:
                original = (originals or {}).get(header.forward_of.bulletin_id)
        p = plan(
            msg,
            got,
            directory=directory,
            limits=limits,
            prior=prior,
            now_ms=now_ms,
            superseded_originator=corrected,
            epochs=epochs,
            members=members,
            answered=replied,
            stored_chunks=chunks,
            attachment_limits=attachment_limits,
            original=original,
            listed=recorded,
        )
        recorded.update(p.listed)
        if p.claim is not None and p.bulletin_id is not None:
            taken[p.bulletin_id] = p.claim
        if p.verdict == "accept" and p.bulletin_id is not None and p.originator is not None:
            originators[p.bulletin_id] = p.originator
        plans.append(p)
    return plans


def _decide(
    msg: Ingested,
    sender: AgencyId,
    env: Envelope,
    d: DirectoryView,
    limits: IngestLimits,
    prior: Prior | None,
    now_ms: int,
    superseded_originator: str | None,
    epochs: Mapping[str, CurrentEpoch],
    members: Mapping[tuple[str, int], EpochMembers],
    answered: Answered | None,
    attached: _Attached,
    original: Original | None,
    listed: Set[str],
) -> Plan:
    """The steps after parsing; raises IstmoError for every refusal."""
    now = now_ms // 1000
    h = env.header
    bid = h.bulletin_id
    digest = check_ingest(
        env,
        sender=sender,
        stored_at=msg.stored_at,
        gated_at=msg.gated_at,
        now=now,
        limits=limits,
        records=d.records,
        jurisdictions=d.states,
    ).digest  # the encoding that verified the signature: not made a second time
    rank = list(Precedence).index(h.labels.precedence)
    # Everyone it addresses: named, or as the members of a group epoch (ADR 37).
    to = addressed(h, members)
    # Replays: the same stream message again is a redelivery to finish; anything else
    # with a known id is refused (NATS dedupe only covers a few minutes).
    if prior is not None:
        if prior.seq == msg.seq:
            return Plan(
                "resume",
                msg.seq,
                sender,
                bid,
                addressed=to,
                rank=rank,
                expires_at=h.expires_at,
                originator=h.originator,
                groups=_groups(env),
            )
        if prior.digest == digest:
            raise EnvelopeError(f"bulletin {bid} was already accepted", code="replay")
        raise EnvelopeError(f"bulletin id {bid} is taken by another bulletin", code="id_conflict")
    if h.not_before is not None and h.not_before > now:
        # Embargo: nothing is decided or delivered before not_before. JetStream keeps the
        # message and hands it back then (at most an hour at a time).
        return Plan(
            "defer", msg.seq, sender, bid, defer_s=min(h.not_before - now, MAX_DEFER_S), rank=rank
        )
    # A correction corrects a bulletin of its own originator's (ADR 15).
    check_supersedes(h, superseded_originator)
    # A reply answers a bulletin its originator received, in that bulletin's thread; the
    # policy bounds its labels and audience with what the relay recorded (ADR 16).
    reply = check_reply(h, answered, sender)
    # 10. Its attachments are stored, under its originator, as signed (ADR 17).
    check_attachments(h.attachments, attached.chunks, attached.limits)
    # A forward passes on a bulletin the sender received, with consent (ADR 20).
    forwarded: ForwardVerdict | None = None
    if h.forward_of is not None:
        forwarded = check_forward(
            h,
            sender=sender,
            original=original,
            records=d.records,
            engine=d.engine,
            now=now,
            cited_chunks=attached.chunks,
        )
    claim = Prior(msg.seq, digest)
    facts = _facts(env, d, reply)
    publish = d.engine.decide_publish(facts, now)
    if not publish.allowed:
        refusal = PolicyDenied(publish_refusal(h.originator, publish, reply is not None))
        # The id stays taken for the rest of the batch, as it always has: another copy in
        # the same batch is a replay, not a second policy decision.
        return _rejected(msg, sender, bid, refusal, now_ms, claim=claim)
    if forwarded is None:
        # A reply's candidates are its audience (and whom it was sealed for, which the
        # policy refuses outside the audience), never every follower of its topic: they
        # would each count a withheld bulletin.
        audience = (
            reply.audience if reply is not None else d.candidates(h.labels.topic, h.labels.named)
        )
        # The same candidate list for every originator on the topic (the engine keeps its
        # classes per list); the originator, its own class, is taken out afterwards.
        candidates = _candidates(audience, to)
        decided = d.engine.receive_classes(facts, candidates, now)
        if h.originator not in to and _has(candidates, h.originator):
            decided = _without(decided, h.originator)
    else:
        # Only its one recipient is asked, on the original's facts: a forward reaches no
        # one the original's rules would refuse, and nothing moves if it is refused.
        decided = d.engine.receive_classes(forwarded.receive_facts, h.recipients, now)
        refused = [c.decision for c in decided if not c.decision.allowed]
        if refused:
            ids = ", ".join(refused[0].policy_ids) or "no grant matched"
            denied = PolicyDenied(
                f"the policy does not let {refused[0].agency} have it ({ids})",
                code="forward_denied",
            )
            return _rejected(msg, sender, bid, denied, now_ms, claim=claim)
    # A group's epoch key may open it only if every holder is permitted (ADR 18).
    if env.groups is not None:
        allowed = frozenset().union(*(c.agencies for c in decided if c.decision.allowed))
        check_cover(env, allowed=allowed, epochs=epochs, to=frozenset(to))
    row = row_values(
        BulletinRow,
        id=bid,
        originator=h.originator,
        labels=canonical_json(h.labels.model_dump(mode="json")).decode(),
        envelope_digest=digest,
        ingest_seq=msg.seq,
        created_at=h.created_at,
        accepted_at=now,
        not_before=h.not_before,
        expires_at=h.expires_at,
        recipients=",".join(to),
        policy_version=publish.policy_version,
        directory_version=publish.directory_version,
        supersedes=h.supersedes,
        in_reply_to=h.in_reply_to,
        thread=h.thread,
        reply_all=h.reply_all,
        forward_of=h.forward_of.bulletin_id if h.forward_of is not None else None,
    )
    accepted = events.bulletin_accepted(
        bid,
        originator=h.originator,
        labels=h.labels,
        envelope_digest=digest,
        recipients=to,
        policy_version=publish.policy_version,
        directory_version=publish.directory_version,
        policy_ids=publish.policy_ids,
        at=now_ms,
        supersedes=h.supersedes,
        in_reply_to=h.in_reply_to,
        thread=h.thread,
        rfi_due=h.rfi_due,
    )
    routing = route(
        bid,
        originator=h.originator,
        addressed=to,
        decided=decided,
        policy_version=publish.policy_version,
        directory_version=publish.directory_version,
        at=now_ms,
    )
    # A request for information: every agency it names was allowed, and it reached one.
    if h.rfi_due is not None:
        check_rfi(h, _each(decided), routing.deliver_to)
    also: tuple[AuditEvent, ...] = ()
    if forwarded is not None and h.forward_of is not None:
        also = (
            events.bulletin_forwarded(
                bid,
                bulletin_id=h.forward_of.bulletin_id,
                originator=h.forward_of.originator,
                forwarder=h.originator,
                recipient=h.recipients[0],
                consent=forwarded.consent,
                policy_ids=forwarded.decision.policy_ids,
                at=now_ms,
                files=len(h.forward_of.attachments or ()),
            ),
        )
    # The agency sets the record names by digest, the first time (ADR 36): before it.
    new_sets = [(d, members) for d, members in routing.listed if d not in listed]
    set_rows, set_events = set_records(new_sets, now_ms)
    return Plan(
        "accept",
        msg.seq,
        sender,
        bid,
        addressed=to,
        deliver_to=routing.deliver_to,
        decided=decided,
        rows=(*set_rows, row, routing.record, *_rfi_rows(h, routing.deliver_to)),
        events=(*set_events, accepted, *routing.events, *also),
        listed=tuple(d for d, _ in new_sets),
        sets=routing.listed,
        rank=rank,
        claim=claim,
        expires_at=h.expires_at,
        originator=h.originator,
        groups=_groups(env),
    )


def set_records(
    sets: Sequence[tuple[str, tuple[str, ...]]], now_ms: int
) -> tuple[tuple[Insert, ...], tuple[AuditEvent, ...]]:
    """The rows and ``agencies.listed`` events that record agency sets (ADR 36), given
    as (digest, sorted agencies)."""
    rows = tuple(
        row_values(AgencySetRow, digest=d, agencies=json.dumps(m, separators=(",", ":")),
                   count=len(m))
        for d, m in sets
    )  # fmt: skip
    trail = tuple(e for d, m in sets for e in events.agencies_listed(d, m, at=now_ms))
    return rows, trail


def _candidates(audience: Sequence[str], recipients: Sequence[str]) -> tuple[str, ...]:
    """Whom to decide on: the audience (sorted, no duplicates) and the addressed
    recipients, sorted. Copied, not rebuilt, in the usual case (every recipient in the
    audience): a topic may have thousands of followers."""
    out = tuple(audience)
    if any(not _has(out, r) for r in recipients):
        out = tuple(sorted(set(out) | set(recipients)))
    return out


def _without(decided: Sequence[DecidedAlike], agency: str) -> tuple[DecidedAlike, ...]:
    """``decided`` without ``agency`` (the originator, not a candidate unless it addressed
    itself). The bulletin refers to it, so it is its own class, which is dropped; were it
    in a bigger one, that class loses it all the same."""
    alone = [i for i, c in enumerate(decided) if c.agencies == (agency,)]
    if alone:
        return (*decided[: alone[0]], *decided[alone[0] + 1 :])
    out = []
    for c in decided:
        if agency in c.members:
            rest = tuple(a for a in c.agencies if a != agency)
            first = c.decision if c.decision.agency != agency else replace(
                c.decision, agency=rest[0])  # fmt: skip
            c = DecidedAlike(first, rest, c.base, (*c.cut, agency) if c.base else ())
        out.append(c)
    return tuple(out)


def _has(ordered: tuple[str, ...], value: str) -> bool:
    at = bisect_left(ordered, value)
    return at < len(ordered) and ordered[at] == value


def _each(decided: Sequence[DecidedAlike]) -> list[Decision]:
    """Every candidate's own decision (a list as long as the candidates)."""
    return [d for c in decided for d in c.each()]


def _groups(env: Envelope) -> tuple[tuple[str, int], ...]:
    """The (group, epoch) pairs of an envelope's group wraps (ADR 18), in its order."""
    return tuple((g.group, g.epoch) for g in env.groups or ())


def _rejected(
    msg: Ingested,
    sender: str,
    bid: str | None,
    exc: IstmoError,
    now_ms: int,
    *,
    claim: Prior | None = None,
) -> Plan:
    message = str(exc)[:_MAX_MESSAGE_CHARS]
    row = RejectionRow(
        ingest_seq=msg.seq,
        originator=sender,
        bulletin_id=bid,
        reason=exc.code,
        message=message,
        time=now_ms // 1000,
    )
    event = events.bulletin_rejected(
        msg.seq,
        sender=sender,
        bulletin_id=bid,
        reason=exc.code,
        message=message,
        size=len(msg.raw),
        at=now_ms,
    )
    return Plan(
        "reject",
        msg.seq,
        sender,
        bid,
        reason=exc.code,
        message=message,
        rows=(row,),
        events=(event,),
        claim=claim,
    )


def _facts(env: Envelope, d: DirectoryView, reply: ReplyFacts | None) -> BulletinFacts:
    h = env.header
    origin = d.records.get(h.originator)
    return BulletinFacts(
        bulletin_id=h.bulletin_id,
        originator=h.originator,
        origin_state=origin.state if origin else None,
        labels=h.labels,
        not_before=h.not_before,
        expires_at=h.expires_at,
        in_reply_to=reply,
    )


def publish_refusal(originator: str, publish: Decision, reply: bool) -> str:
    """Why the policy refused ``originator`` this bulletin: the deciding policies, and for
    a reply their reasons too (which label it weakened, ADR 16)."""
    ids = ", ".join(publish.policy_ids) or "no grant matched"
    if not reply:
        return f"the policy does not let {originator} publish this ({ids})"
    why = "; ".join(
        f"{pid}: {reason}" for pid, reason in zip(publish.policy_ids, publish.reasons, strict=False)
    )
    return (
        f"the policy does not let {originator} send this reply ({why or ids}): give it "
        "labels at least as strict as the bulletin it answers"
    )


def _rfi_rows(h: Header, routed: tuple[str, ...]) -> tuple[SQLModel, ...]:
    """A request for information's row and its addressees' (ADR 16); none otherwise."""
    if h.rfi_due is None:
        return ()
    rfi = RfiRow(
        bulletin_id=h.bulletin_id,
        asker=h.originator,
        topic=h.labels.topic,
        precedence=h.labels.precedence.value,
        created_at=h.created_at,
        due_at=h.rfi_due,
    )
    return (rfi, *(RfiAddresseeRow(rfi_id=h.bulletin_id, agency=a) for a in routed))
