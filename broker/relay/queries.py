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
from broker.policy.engine import BulletinFacts
from broker.relay.checks import check_labels
from broker.store.recalls import withdrawal
from broker.store.registry import Registry
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
from schemas.envelope import MAX_RECIPIENTS
from schemas.errors import EnvelopeError, IstmoError, PolicyDenied

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

    def recipients(self, caller: str, req: ResolveRequest, now: int) -> RecipientsReply:
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
        policy_version, permitted = self._bounded(caller, req, now)
        return RecipientsReply(
            recipients=tuple(permitted),
            policy_version=policy_version,
            directory_version=directory_version,
        )

    def resolve(self, caller: str, req: ResolveRequest, now: int) -> ResolveReply:
        """Who may receive this, with their keys in a signed excerpt (the answer of SDKs
        before ADR 14, and of the HTTP API).

        Raises:
            EnvelopeError: a label names an unknown jurisdiction or agency.
            PolicyDenied: the caller may not publish it.
            EnvelopeError: ``too_many_recipients``, more than an envelope can carry.
        """
        policy_version, permitted = self._bounded(caller, req, now)
        return ResolveReply(
            recipients=tuple(permitted),
            policy_version=policy_version,
            directory=self.directory.signed_excerpt(permitted, now),
        )

    def _bounded(self, caller: str, req: ResolveRequest, now: int) -> tuple[str, list[str]]:
        """``permitted``, refused when more may receive it than one envelope carries."""
        policy_version, permitted = self.permitted(caller, req, now)
        if len(permitted) > MAX_RECIPIENTS:
            # Each recipient gets its own key wrap; an envelope holds at most this many.
            raise EnvelopeError(
                f"{len(permitted)} agencies may receive this, and one bulletin carries at "
                f"most {MAX_RECIPIENTS}: narrow the labels (fewer states, named agencies or "
                "a topic fewer agencies follow), or publish it once per group of states",
                code="too_many_recipients",
            )
        return policy_version, permitted

    def permitted(self, caller: str, req: ResolveRequest, now: int) -> tuple[str, list[str]]:
        """The policy version and the agencies (with an encryption key) the policy lets
        receive this from ``caller``; ``resolve`` without the excerpt or the size limit.

        Raises:
            EnvelopeError: a label names an unknown jurisdiction or agency.
            PolicyDenied: the caller may not publish it.
        """
        d = self.directory
        check_labels(req.labels, d.records, d.states)
        facts = self._facts(caller, req)
        # An embargoed bulletin is decided when the embargo ends; preview it as of then.
        when = max(now, req.not_before or now)
        publish = d.engine.decide_publish(facts, when)
        if not publish.allowed:
            ids = ", ".join(publish.policy_ids) or "no grant matched"
            raise PolicyDenied(f"the policy does not let {caller} publish this ({ids})")
        candidates = [c for c in d.candidates(req.labels.topic, req.labels.named) if c != caller]
        # Only who is allowed matters here: the engine leaves out, before Cedar, the
        # candidates the policy set certainly denies (ADR 0012).
        permitted = [
            agency
            for agency in d.engine.permitted_receivers(facts, candidates, when)
            if d.records[agency].encryption_key is not None
        ]
        return publish.policy_version, permitted

    def explain(self, caller: str, req: ResolveRequest, now: int) -> ExplainReply:
        """ "Who would receive this, and why not the others?" before publishing.

        Raises:
            EnvelopeError: a label names an unknown jurisdiction or agency.
        """
        d = self.directory
        check_labels(req.labels, d.records, d.states)
        facts = self._facts(caller, req)
        when = max(now, req.not_before or now)
        publish = d.engine.decide_publish(facts, when)
        candidates = [c for c in d.candidates(req.labels.topic, req.labels.named) if c != caller]
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
        """The signed records of ``agencies`` (unknown ids are left out)."""
        return self.directory.signed_excerpt(agencies, now)

    def changes(self, since: str, now: int) -> SignedChanges:
        """Which agencies' records changed since version ``since``, signed (ADR 14)."""
        return self.directory.signed_changes(since, now)

    def _facts(self, caller: str, req: ResolveRequest) -> BulletinFacts:
        return BulletinFacts(
            bulletin_id=_PREVIEW_ID,
            originator=caller,
            origin_state=self.directory.records[caller].state,
            labels=req.labels,
            not_before=req.not_before,
            expires_at=req.expires_at,
        )

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
        bulletin = self.registry.bulletin(bulletin_id)
        if bulletin is None or bulletin.originator != caller:
            raise NotFound("no such bulletin of yours")
        addressed = set(bulletin.recipients.split(","))
        routed = sorted(
            r.agency
            for r in self.registry.decisions(bulletin_id)
            if r.allowed and r.agency in addressed
        )
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
