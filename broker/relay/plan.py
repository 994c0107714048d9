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

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Literal, Protocol

from sqlmodel import SQLModel

from broker.audit import events
from broker.policy.model import BulletinFacts, Decider, Decision
from broker.relay.checks import (
    IngestLimits,
    check_ingest,
    check_supersedes,
    parse_ingest,
    sender_of,
)
from broker.relay.decisions import Denial, denial_of, route
from broker.store.registry import BulletinRow, RejectionRow
from schemas.audit import AuditEvent
from schemas.canonical import canonical_json
from schemas.directory import AgencyRecord
from schemas.envelope import Envelope
from schemas.errors import EnvelopeError, IstmoError, PolicyDenied
from schemas.ids import AgencyId
from schemas.labels import Precedence
from schemas.sealing import envelope_digest

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
]

MAX_DEFER_S = 3600  # an embargoed bulletin is handed back at most this long at a time
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
class Ingested:
    """One ingest message as JetStream handed it over.

    Attributes:
        raw: the stored bytes (an envelope, or whatever the publisher sent).
        subject: ``istmo.gated.ingest.<agency>``: the agency that published it.
        seq: its sequence in ``ISTMO_INGEST``.
        stored_at: when JetStream stored it, epoch seconds (the server's clock).
    """

    raw: bytes
    subject: str
    seq: int
    stored_at: int


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
        rows: registry rows to commit (a bulletin and its decision record, or a
            rejection).
        events: audit events to commit with them.
        defer_s: how long to hand it back for (defer).
        rank: its precedence, FLASH = 0, for the order of delivery.
        claim: set when this message took the bulletin id for the rest of its batch.
        expires_at: the signed expiry (accept and resume): its deliveries go when it
            passes (ADR 15).
        originator: the signed originator of an accepted bulletin.
    """

    verdict: Verdict
    seq: int
    sender: str
    bulletin_id: str | None = None
    reason: str | None = None
    message: str = ""
    addressed: tuple[str, ...] = ()
    deliver_to: tuple[str, ...] = ()
    decisions: tuple[Decision, ...] = ()
    rows: tuple[SQLModel, ...] = ()
    events: tuple[AuditEvent, ...] = ()
    defer_s: int = 0
    rank: int = len(Precedence)
    claim: Prior | None = None
    expires_at: int | None = None
    originator: str | None = None

    @property
    def denials(self) -> tuple[Denial, ...]:
        """The candidates refused, with why."""
        return tuple(denial_of(d) for d in self.decisions if not d.allowed)

    @property
    def withheld_from(self) -> tuple[str, ...]:
        """The candidates the policy refused (an accepted bulletin's only), for their
        ``withheld`` counts: who, never why."""
        return tuple(d.agency for d in self.decisions if not d.allowed)


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
        return _decide(msg, parsed[0], env, directory, limits, prior, now_ms, superseded_originator)
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
    """
    taken: dict[str, Prior] = {}
    originators = dict(superseded or {})
    plans: list[Plan] = []
    for msg, got in zip(msgs, parsed, strict=True):
        prior: Prior | None = None
        corrected: str | None = None
        if not isinstance(got, IstmoError):
            header = got[1].header
            known = accepted.get(header.bulletin_id)
            prior = Prior(*known) if known is not None else taken.get(header.bulletin_id)
            corrected = originators.get(header.supersedes) if header.supersedes else None
        p = plan(
            msg,
            got,
            directory=directory,
            limits=limits,
            prior=prior,
            now_ms=now_ms,
            superseded_originator=corrected,
        )
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
) -> Plan:
    """The steps after parsing; raises IstmoError for every refusal."""
    now = now_ms // 1000
    h = env.header
    bid = h.bulletin_id
    check_ingest(
        env,
        sender=sender,
        stored_at=msg.stored_at,
        now=now,
        limits=limits,
        records=d.records,
        jurisdictions=d.states,
    )
    digest = envelope_digest(env)
    rank = list(Precedence).index(h.labels.precedence)
    # Replays: the same stream message again is a redelivery to finish; anything else
    # with a known id is refused (NATS dedupe only covers a few minutes).
    if prior is not None:
        if prior.seq == msg.seq:
            return Plan(
                "resume",
                msg.seq,
                sender,
                bid,
                addressed=tuple(h.recipients),
                rank=rank,
                expires_at=h.expires_at,
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
    claim = Prior(msg.seq, digest)
    facts = _facts(env, d)
    publish = d.engine.decide_publish(facts, now)
    if not publish.allowed:
        ids = ", ".join(publish.policy_ids) or "no grant matched"
        refusal = PolicyDenied(f"the policy does not let {h.originator} publish this ({ids})")
        # The id stays taken for the rest of the batch, as it always has: another copy in
        # the same batch is a replay, not a second policy decision.
        return _rejected(msg, sender, bid, refusal, now_ms, claim=claim)
    candidates = sorted(set(d.candidates(h.labels.topic, h.labels.named)) | set(h.recipients))
    candidates = [c for c in candidates if c != h.originator or c in h.recipients]
    decisions = tuple(d.engine.decide_receive(facts, candidates, now))
    row = BulletinRow(
        id=bid,
        originator=h.originator,
        labels=canonical_json(h.labels.model_dump(mode="json")).decode(),
        envelope_digest=digest,
        ingest_seq=msg.seq,
        created_at=h.created_at,
        accepted_at=now,
        not_before=h.not_before,
        expires_at=h.expires_at,
        recipients=",".join(h.recipients),
        policy_version=publish.policy_version,
        directory_version=publish.directory_version,
        supersedes=h.supersedes,
    )
    accepted = events.bulletin_accepted(
        bid,
        originator=h.originator,
        labels=h.labels,
        envelope_digest=digest,
        recipients=h.recipients,
        policy_version=publish.policy_version,
        directory_version=publish.directory_version,
        policy_ids=publish.policy_ids,
        at=now_ms,
        supersedes=h.supersedes,
    )
    routing = route(
        bid,
        originator=h.originator,
        addressed=h.recipients,
        decisions=decisions,
        policy_version=publish.policy_version,
        directory_version=publish.directory_version,
        at=now_ms,
    )
    return Plan(
        "accept",
        msg.seq,
        sender,
        bid,
        addressed=tuple(h.recipients),
        deliver_to=routing.deliver_to,
        decisions=decisions,
        rows=(row, routing.record),
        events=(accepted, *routing.events),
        rank=rank,
        claim=claim,
        expires_at=h.expires_at,
        originator=h.originator,
    )


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


def _facts(env: Envelope, d: DirectoryView) -> BulletinFacts:
    h = env.header
    origin = d.records.get(h.originator)
    return BulletinFacts(
        bulletin_id=h.bulletin_id,
        originator=h.originator,
        origin_state=origin.state if origin else None,
        labels=h.labels,
        not_before=h.not_before,
        expires_at=h.expires_at,
    )
