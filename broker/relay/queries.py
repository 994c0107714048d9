"""The questions an agency asks the broker about its own bulletins, answered as the typed
replies of ``schemas.agency``.

Both doors call these (ADR 0001): the NATS face (``broker.relay.agency_api``) and the HTTP
API (``broker.api.app``), so the same question gets the same answer. The caller is already
authenticated (by its nkey, or by an access token); an agency learns nothing about
bulletins it did not originate: those look "not found" (or "pending"), and of those the
policy withheld from it, it learns how many and when, nothing else. This module leaves
parsing requests and turning errors into replies to the doors.
"""

from __future__ import annotations

from broker.directory.service import DirectoryService
from broker.policy.engine import BulletinFacts, ReplyFacts
from broker.relay.checks import check_labels
from broker.relay.plan import publish_refusal
from broker.relay.receipts import attributed
from broker.relay.replies import Answered, audience_of
from broker.store.recalls import withdrawal
from broker.store.registry import BulletinRow, Registry
from schemas.agency import (
    MAX_SUPERSEDED_BY,
    CandidateVerdict,
    DeniedRecipient,
    ExplainReply,
    PublishVerdict,
    ReceiptEntry,
    ReceiptsReply,
    RecipientsReply,
    ResolveReply,
    ResolveRequest,
    StatusAccepted,
    StatusPending,
    StatusRejected,
    StatusReply,
    WithheldReply,
)
from schemas.directory import SignedChanges, SignedExcerpt
from schemas.envelope import MAX_RECIPIENTS, MAX_WRAPS
from schemas.errors import EnvelopeError, IstmoError, PolicyDenied
from schemas.receipt_requests import MAX_SIGNED_RECEIPTS, SignedReceiptsReply

__all__ = ["AgencyQueries", "NotFound"]

_PREVIEW_ID = "00000000-0000-4000-8000-000000000000"
_MINUTE_S = 60  # the times of a withheld count are told to the minute, no finer


class NotFound(IstmoError):
    """No such object for this caller: missing and not-yours look the same."""

    default_code = "not_found"


class AgencyQueries:
    """Answers from the registry and the directory snapshot, for a caller already known
    to be ``caller`` (authenticated by NATS or by an access token)."""

    def __init__(self, registry: Registry, directory: DirectoryService) -> None:
        self.registry = registry
        self.directory = directory

    def recipients(
        self, caller: str, req: ResolveRequest, now: int, answered: Answered | None = None
    ) -> RecipientsReply:
        """Who may receive this: ids only, with the policy and directory versions (ADR 14).
        The caller takes their keys from the signed records it keeps.

        Raises:
            EnvelopeError: a label names an unknown jurisdiction or agency.
            PolicyDenied: the caller may not publish it.
            EnvelopeError: ``too_many_recipients``, more than an envelope can carry.
        """
        # Read first: the decision is made with this view or a newer one, so a client that
        # takes records at least this new never seals with keys older than the decision's.
        directory_version = self.directory.version
        policy_version, permitted = self._bounded(caller, req, now, MAX_RECIPIENTS, answered)
        return RecipientsReply(
            recipients=tuple(permitted),
            policy_version=policy_version,
            directory_version=directory_version,
        )

    def resolve(
        self, caller: str, req: ResolveRequest, now: int, answered: Answered | None = None
    ) -> ResolveReply:
        """Who may receive this, with their keys in a signed excerpt (the answer of SDKs
        before ADR 14, and of the HTTP API): one signed for an earlier answer listing the
        same agencies in this directory view, if at most ``EXCERPT_REUSE_S`` old
        (``broker.directory.excerpts``).

        Raises:
            EnvelopeError: a label names an unknown jurisdiction or agency.
            PolicyDenied: the caller may not publish it.
            EnvelopeError: ``too_many_recipients``, more than an envelope can carry.
        """
        # The SDKs that ask this seal one wrap per recipient: at most MAX_WRAPS.
        policy_version, permitted = self._bounded(caller, req, now, MAX_WRAPS, answered)
        return ResolveReply(
            recipients=tuple(permitted),
            policy_version=policy_version,
            directory=self.directory.answer_excerpt(permitted, now),
        )

    def _bounded(
        self,
        caller: str,
        req: ResolveRequest,
        now: int,
        limit: int,
        answered: Answered | None,
    ) -> tuple[str, list[str]]:
        """``permitted``, refused when more than ``limit`` may receive it: the header's
        list (``MAX_RECIPIENTS``), or one wrap each (``MAX_WRAPS``) for an SDK that seals
        no other way."""
        policy_version, permitted = self.permitted(caller, req, now, answered)
        if len(permitted) > limit:
            raise EnvelopeError(
                f"{len(permitted)} agencies may receive this, and one bulletin carries at "
                f"most {limit}: narrow the labels (fewer states, named agencies or "
                "a topic fewer agencies follow), or publish it once per group of states",
                code="too_many_recipients",
            )
        return policy_version, permitted

    def permitted(
        self, caller: str, req: ResolveRequest, now: int, answered: Answered | None = None
    ) -> tuple[str, list[str]]:
        """The policy version and the agencies (with an encryption key) the policy lets
        receive this from ``caller``; ``resolve`` without the excerpt or the size limit.
        For a reply (``req.in_reply_to``), ``answered`` is what the registry holds of the
        bulletin it answers: its audience are the only candidates (ADR 16).

        Raises:
            EnvelopeError: a label names an unknown jurisdiction or agency.
            PolicyDenied: the caller may not publish it (a reply: which label is weaker).
            NotFound: a reply to a bulletin the caller neither received nor sent.
        """
        d = self.directory
        check_labels(req.labels, d.records, d.states)
        reply = self._reply(caller, req, answered)
        facts = self._facts(caller, req, reply)
        # An embargoed bulletin is decided when the embargo ends; preview it as of then.
        when = max(now, req.not_before or now)
        publish = d.engine.decide_publish(facts, when)
        if not publish.allowed:
            raise PolicyDenied(publish_refusal(caller, publish, reply is not None))
        candidates = self._candidates(caller, req, reply)
        if req.addressees:
            self._check_addressees(facts, req.addressees, candidates, when)
        # Only who is allowed matters here: the engine leaves out, before Cedar, the
        # candidates the policy set certainly denies (ADR 0012).
        permitted = [
            agency
            for agency in d.engine.permitted_receivers(facts, candidates, when)
            if d.records[agency].encryption_key is not None
        ]
        return publish.policy_version, permitted

    def explain(
        self, caller: str, req: ResolveRequest, now: int, answered: Answered | None = None
    ) -> ExplainReply:
        """ "Who would receive this, and why not the others?" before publishing.

        Raises:
            EnvelopeError: a label names an unknown jurisdiction or agency.
            NotFound: a reply to a bulletin the caller neither received nor sent.
        """
        d = self.directory
        check_labels(req.labels, d.records, d.states)
        reply = self._reply(caller, req, answered)
        facts = self._facts(caller, req, reply)
        when = max(now, req.not_before or now)
        publish = d.engine.decide_publish(facts, when)
        candidates = self._candidates(caller, req, reply)
        return ExplainReply(
            policy_version=d.bundle.version,
            publish=PublishVerdict(allowed=publish.allowed, policy_ids=tuple(publish.policy_ids)),
            candidates=tuple(
                CandidateVerdict(
                    agency=e.agency,
                    allowed=e.allowed,
                    summary=e.summary,
                    policy_ids=tuple(e.policy_ids),
                )
                for e in d.engine.explain(facts, candidates, when)
            ),
        )

    def directory_excerpt(self, agencies: list[str], now: int) -> SignedExcerpt:
        """The signed records of ``agencies`` (unknown ids are left out); as ``resolve``,
        an excerpt kept from an earlier answer for the same agencies may be given again."""
        return self.directory.answer_excerpt(agencies, now)

    def changes(self, since: str, now: int) -> SignedChanges:
        """Which agencies' records changed since version ``since``, signed (ADR 14)."""
        return self.directory.signed_changes(since, now)

    def _facts(self, caller: str, req: ResolveRequest, reply: ReplyFacts | None) -> BulletinFacts:
        return BulletinFacts(
            bulletin_id=_PREVIEW_ID,
            originator=caller,
            origin_state=self.directory.records[caller].state,
            labels=req.labels,
            not_before=req.not_before,
            expires_at=req.expires_at,
            in_reply_to=reply,
        )

    def _check_addressees(
        self, facts: BulletinFacts, addressees: tuple[str, ...], candidates: list[str], when: int
    ) -> None:
        """An RFI's addressees may each receive it (ADR 16).

        Raises:
            PolicyDenied: ``rfi_addressee_denied``, naming the first refused and why.
        """
        engine = self.directory.engine
        known = [a for a in addressees if a in candidates]
        for d in engine.decide_receive(facts, known, when):
            if not d.allowed:
                why = "; ".join(
                    f"{pid}: {reason}" for pid, reason in zip(d.policy_ids, d.reasons, strict=False)
                )
                raise PolicyDenied(
                    f"the policy does not let {d.agency} receive this request "
                    f"({why or 'no policy grants it'}): leave it out of --to, or ask with "
                    "labels it may receive (`istmo preview` says who may)",
                    code="rfi_addressee_denied",
                )
        missing = [a for a in addressees if a not in known]
        if missing:
            raise PolicyDenied(
                f"{missing[0]} is not an agency the policy could let receive this request",
                code="rfi_addressee_denied",
            )

    @staticmethod
    def _reply(caller: str, req: ResolveRequest, answered: Answered | None) -> ReplyFacts | None:
        """For a reply, what the policy knows of the bulletin it answers (ADR 16).

        Raises:
            NotFound: the caller neither received nor sent it (or it does not exist).
        """
        if req.in_reply_to is None:
            return None
        if answered is None or caller not in answered.routed | {answered.originator}:
            raise NotFound("no bulletin you received or sent has this id")
        return ReplyFacts(
            labels=answered.labels,
            releasable_within=answered.releasable_within,
            audience=audience_of(answered, caller),
        )

    def _candidates(self, caller: str, req: ResolveRequest, reply: ReplyFacts | None) -> list[str]:
        """Whom to ask the policy about: a reply's audience, else the topic's followers
        and the named agencies; never the caller."""
        if reply is not None:
            return [a for a in reply.audience if a in self.directory.records and a != caller]
        labels = req.labels
        return [c for c in self.directory.candidates(labels.topic, labels.named) if c != caller]

    def status(self, caller: str, bulletin_id: str) -> StatusReply:
        """The relay's verdict on ``caller``'s bulletin: accepted (routed, denied; and
        whether it was withdrawn, what it corrects and what corrected it, ADR 15), rejected
        (reason), or pending (not decided yet, unknown, or another agency's)."""
        bulletin = self.registry.bulletin(bulletin_id)
        if bulletin is not None and bulletin.originator == caller:
            decisions = self.registry.decisions(bulletin_id)
            addressed = set(bulletin.recipients.split(","))
            withdrawn = withdrawal(self.registry, bulletin_id)
            return StatusReply(
                StatusAccepted(
                    state="accepted",
                    bulletin_id=bulletin.id,
                    routed=tuple(
                        sorted(r.agency for r in decisions if r.allowed and r.agency in addressed)
                    ),
                    denied=tuple(
                        DeniedRecipient(agency=r.agency, policy_ids=r.policy_ids, reasons=r.reasons)
                        for r in decisions
                        if not r.allowed
                    ),
                    policy_version=bulletin.policy_version,
                    withdrawn_at=withdrawn.withdrawn_at if withdrawn is not None else None,
                    supersedes=bulletin.supersedes,
                    superseded_by=self.registry.corrections(bulletin_id, caller, MAX_SUPERSEDED_BY),
                )
            )
        rejection = self.registry.rejection_for(caller, bulletin_id)
        if rejection is not None:
            return StatusReply(
                StatusRejected(
                    state="rejected",
                    bulletin_id=bulletin_id,
                    reason=rejection.reason,
                    message=rejection.message,
                )
            )
        return StatusReply(StatusPending(state="pending", bulletin_id=bulletin_id))

    def receipts(self, caller: str, bulletin_id: str) -> ReceiptsReply:
        """The routed recipients of ``caller``'s bulletin and their signed receipts.

        Raises:
            NotFound: no such bulletin, or not ``caller``'s (the same answer).
        """
        bulletin, routed = self._routed(caller, bulletin_id)
        got = {r.recipient: r for r in self.registry.receipts(bulletin_id)}
        return ReceiptsReply(
            bulletin_id=bulletin.id,
            recipients=tuple(
                ReceiptEntry(
                    agency=a,
                    received_at=got[a].received_at if a in got else None,
                    signature=got[a].signature if a in got else None,
                )
                for a in routed
            ),
        )

    def signed_receipts(
        self, caller: str, bulletin_id: str, after: str | None = None
    ) -> SignedReceiptsReply:
        """A page of the routed recipients of ``caller``'s bulletin, in id order after
        ``after``, each with its receipt whole for ``caller`` to verify: the key id the
        relay recorded, or for a receipt recorded before it kept them, the recipient's
        signing key that verifies it (``broker.relay.receipts.attributed``).

        Raises:
            NotFound: no such bulletin, or not ``caller``'s (the same answer).
        """
        bulletin, routed = self._routed(caller, bulletin_id)
        page = [a for a in routed if after is None or a > after]
        more = len(page) > MAX_SIGNED_RECEIPTS
        page = page[:MAX_SIGNED_RECEIPTS]
        got = {r.recipient: r for r in self.registry.receipts(bulletin_id)}
        records = self.directory.records
        return SignedReceiptsReply(
            bulletin_id=bulletin.id,
            originator=bulletin.originator,
            envelope_digest=bulletin.envelope_digest,
            recipients=tuple(
                attributed(a, got.get(a), bulletin=bulletin, record=records.get(a)) for a in page
            ),
            next=page[-1] if more else None,
        )

    def _routed(self, caller: str, bulletin_id: str) -> tuple[BulletinRow, list[str]]:
        """``caller``'s bulletin and its routed recipients, sorted.

        Raises:
            NotFound: no such bulletin, or not ``caller``'s (the same answer).
        """
        bulletin = self.registry.bulletin(bulletin_id)
        if bulletin is None or bulletin.originator != caller:
            raise NotFound("no such bulletin of yours")
        addressed = set(bulletin.recipients.split(","))
        routed = sorted(
            r.agency
            for r in self.registry.decisions(bulletin_id)
            if r.allowed and r.agency in addressed
        )
        return bulletin, routed

    def withheld(self, caller: str) -> WithheldReply:
        """How many bulletins the policy withheld from ``caller``, and when the first and
        the latest were, to the minute: one read by primary key (``withheld_count``).
        Nothing names a bulletin; the caller is the one NATS or the token authenticated."""
        row = self.registry.withheld_count(caller)
        if row is None:
            return WithheldReply(withheld=0, first_at=None, latest_at=None)
        return WithheldReply(
            withheld=row.bulletins,
            first_at=_to_the_minute(row.first_at),
            latest_at=_to_the_minute(row.latest_at),
        )


def _to_the_minute(at: int) -> int:
    """``at`` (epoch seconds) rounded down to its minute: what a person reads, and no finer
    a time to set beside other traffic."""
    return at - at % _MINUTE_S
