"""The questions an agency asks the broker, and their NATS face: ``istmo.api.<agency>.<op>``.

``AgencyQueries`` answers them as plain dicts (or raises), so the NATS handler here and the
HTTP API (``broker.api.app``) give the same answers to the same questions (ADR 0001).

nats-server lets an agency publish only on its own ``istmo.api.<agency>.>`` (its own
account imports only that service), so the subject names the caller. Requests are small
strict JSON; replies are JSON, ``{"error": {"code", "message"}}`` on failure. An
agency learns nothing about bulletins it did not originate: those look "not found".

    resolve    labels -> which agencies may receive, with their keys (signed excerpt)
    explain    labels -> every candidate: permitted or denied, by which policies, and why
    directory  agency ids -> their signed records (public keys)
    status     bulletin id -> accepted / rejected (reason) / pending, originator only
    receipts   bulletin id -> routed recipients and their receipts, originator only
    rotate     new keys signed by the current one (``broker.directory.rotation``)
    revoke-key one of the caller's own signing key ids -> revoked from now on
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from broker.audit import events
from broker.clock import SYSTEM_CLOCK, Clock
from broker.config import Settings
from broker.directory.lifecycle import revoke_signing_key
from broker.directory.rotation import apply_rotation
from broker.directory.service import DirectoryService
from broker.policy.engine import BulletinFacts
from broker.relay.checks import check_labels
from broker.store.registry import Registry
from schemas.canonical import canonical_json
from schemas.envelope import MAX_RECIPIENTS, Kid, Timestamp, parse_model
from schemas.errors import IstmoError, PolicyDenied
from schemas.ids import AgencyIdStr, BulletinIdStr, parse_agency_id
from schemas.labels import Labels

__all__ = [
    "AgencyApi",
    "AgencyQueries",
    "BulletinRequest",
    "DirectoryRequest",
    "NotFound",
    "ResolveRequest",
    "RevokeKeyRequest",
]

_PREVIEW_ID = "00000000-0000-4000-8000-000000000000"
_STRICT = ConfigDict(frozen=True, extra="forbid", strict=True)


class NotFound(IstmoError):
    """No such object for this caller: missing and not-yours look the same."""

    default_code = "not_found"


class ResolveRequest(BaseModel):
    """Labels of a bulletin about to be published (and its embargo and expiry, if any)."""

    model_config = _STRICT
    labels: Labels
    not_before: Timestamp | None = None
    expires_at: Timestamp | None = None


class DirectoryRequest(BaseModel):
    model_config = _STRICT
    agencies: tuple[AgencyIdStr, ...] = Field(min_length=1, max_length=500)


class BulletinRequest(BaseModel):
    model_config = _STRICT
    bulletin_id: BulletinIdStr


class RevokeKeyRequest(BaseModel):
    """One of the caller's own signing keys, to revoke from now on."""

    model_config = _STRICT
    kid: Kid


def _looks_like_agency(token: str) -> bool:
    try:
        parse_agency_id(token)
    except IstmoError:
        return False
    return True


def _error(code: str, message: str) -> bytes:
    return canonical_json({"error": {"code": code, "message": message}})


class AgencyQueries:
    """Answers from the registry and the directory snapshot, for a caller already known
    to be ``caller`` (authenticated by NATS or by an access token)."""

    def __init__(self, registry: Registry, directory: DirectoryService) -> None:
        self.registry = registry
        self.directory = directory

    def resolve(self, caller: str, req: ResolveRequest, now: int) -> dict[str, Any]:
        """Who may receive this, with their keys in a signed excerpt.

        Raises:
            EnvelopeError: a label names an unknown jurisdiction or agency.
            PolicyDenied: the caller may not publish it.
            IstmoError: ``too_many_recipients``, more than an envelope can carry.
        """
        policy_version, permitted = self.permitted(caller, req, now)
        if len(permitted) > MAX_RECIPIENTS:
            # Each recipient gets its own key wrap; an envelope holds at most this many.
            raise IstmoError(
                f"{len(permitted)} agencies may receive this, and one bulletin carries at "
                f"most {MAX_RECIPIENTS}: narrow the labels (fewer states, named agencies or "
                "a topic fewer agencies follow), or publish it once per group of states",
                code="too_many_recipients",
            )
        excerpt = json.loads(self.directory.excerpt(permitted, now))
        return {
            "recipients": permitted,
            "policy_version": policy_version,
            "directory": excerpt,
        }

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
        permitted = [
            dec.agency
            for dec in d.engine.decide_receive(facts, candidates, when)
            if dec.allowed and d.records[dec.agency].encryption_key is not None
        ]
        return publish.policy_version, permitted

    def explain(self, caller: str, req: ResolveRequest, now: int) -> dict[str, Any]:
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
        return {
            "policy_version": d.bundle.version,
            "publish": {"allowed": publish.allowed, "policy_ids": list(publish.policy_ids)},
            "candidates": [
                {
                    "agency": e.agency,
                    "allowed": e.allowed,
                    "summary": e.summary,
                    "policy_ids": list(e.policy_ids),
                }
                for e in d.engine.explain(facts, candidates, when)
            ],
        }

    def directory_excerpt(self, agencies: list[str], now: int) -> bytes:
        """The signed records of ``agencies`` (unknown ids are left out)."""
        return self.directory.excerpt(agencies, now)

    def _facts(self, caller: str, req: ResolveRequest) -> BulletinFacts:
        return BulletinFacts(
            bulletin_id=_PREVIEW_ID,
            originator=caller,
            origin_state=self.directory.records[caller].state,
            labels=req.labels,
            not_before=req.not_before,
            expires_at=req.expires_at,
        )

    def status(self, caller: str, bulletin_id: str) -> dict[str, Any]:
        """The relay's verdict on ``caller``'s bulletin: accepted (routed, denied),
        rejected (reason), or pending (not decided yet, unknown, or another agency's)."""
        bulletin = self.registry.bulletin(bulletin_id)
        if bulletin is not None and bulletin.originator == caller:
            decisions = self.registry.decisions(bulletin_id)
            addressed = set(bulletin.recipients.split(","))
            return {
                "state": "accepted",
                "bulletin_id": bulletin.id,
                "routed": sorted(
                    r.agency for r in decisions if r.allowed and r.agency in addressed
                ),
                "denied": [
                    {
                        "agency": r.agency,
                        "policy_ids": [p for p in r.policy_ids.split(",") if p],
                        "reasons": json.loads(r.reasons),
                    }
                    for r in sorted(decisions, key=lambda r: r.agency)
                    if not r.allowed
                ],
                "policy_version": bulletin.policy_version,
            }
        rejection = self.registry.rejection_for(caller, bulletin_id)
        if rejection is not None:
            return {
                "state": "rejected",
                "bulletin_id": bulletin_id,
                "reason": rejection.reason,
                "message": rejection.message,
            }
        return {"state": "pending", "bulletin_id": bulletin_id}

    def receipts(self, caller: str, bulletin_id: str) -> dict[str, Any]:
        """The routed recipients of ``caller``'s bulletin and their signed receipts.

        Raises:
            NotFound: no such bulletin, or not ``caller``'s (the same answer).
        """
        bulletin = self.registry.bulletin(bulletin_id)
        if bulletin is None or bulletin.originator != caller:
            raise NotFound(f"no bulletin {bulletin_id} of {caller}")
        addressed = set(bulletin.recipients.split(","))
        routed = sorted(
            r.agency
            for r in self.registry.decisions(bulletin_id)
            if r.allowed and r.agency in addressed
        )
        got = {r.recipient: r for r in self.registry.receipts(bulletin_id)}
        return {
            "bulletin_id": bulletin.id,
            "recipients": [
                {
                    "agency": a,
                    "received_at": got[a].received_at if a in got else None,
                    "signature": got[a].signature if a in got else None,
                }
                for a in routed
            ],
        }


class AgencyApi:
    """The NATS face: answers agency requests with ``AgencyQueries``."""

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

    def handle(self, subject: str, data: bytes, *, now: int) -> bytes:
        parts = subject.split(".")
        if len(parts) != 4:
            return _error("bad_request", "unknown operation")
        try:
            caller = parse_agency_id(parts[2])
            op = parts[3]
            if caller not in self.directory.records:
                return _error("unknown_agency", f"unknown agency {caller}")
            return self._answer(caller, op, data, now)
        except (PolicyDenied, NotFound) as exc:
            # Answers about the caller's own request, not faults in it: not audited.
            return _error(exc.code, str(exc)[:300])
        except IstmoError as exc:
            self._audit_refusal(parts, exc, now)
            return _error(exc.code, str(exc)[:300])

    def _answer(self, caller: str, op: str, data: bytes, now: int) -> bytes:
        max_bytes = self.settings.max_request_bytes
        q = self.queries
        if op in ("resolve", "explain"):
            ask = parse_model(ResolveRequest, data, max_bytes=max_bytes, what="request")
            answer = q.resolve(caller, ask, now) if op == "resolve" else q.explain(caller, ask, now)
            return canonical_json(answer)
        if op == "directory":
            req = parse_model(DirectoryRequest, data, max_bytes=max_bytes, what="request")
            return q.directory_excerpt(list(req.agencies), now)
        if op in ("status", "receipts"):
            one = parse_model(BulletinRequest, data, max_bytes=max_bytes, what="request")
            if op == "status":
                return canonical_json(q.status(caller, one.bulletin_id))
            return canonical_json(q.receipts(caller, one.bulletin_id))
        if op == "rotate":
            answer = apply_rotation(
                self.registry,
                self.directory.records,
                data,
                caller=caller,
                now=now,
                max_skew_s=self.settings.max_clock_skew_s,
                clock=self.clock,
            )
            self.directory.refresh()  # this relay answers with the new keys at once
            return canonical_json(answer)
        if op == "revoke-key":
            revoke = parse_model(RevokeKeyRequest, data, max_bytes=max_bytes, what="request")
            return canonical_json(self._revoke_key(caller, revoke.kid, now))
        return _error("bad_request", f"unknown operation {op[:20]!r}")

    def _revoke_key(self, caller: str, kid: str, now: int) -> dict[str, Any]:
        """Revoke one of ``caller``'s own signing keys from ``now``: what it signs from
        this second on is refused; what it signed before still verifies.

        Raises:
            NotFound: no such key of the caller (another agency's key looks the same).
            IstmoError: ``already_revoked``.
        """
        key = self.registry.signing_key(kid)
        if key is None or key.agency != caller:
            raise NotFound(f"{caller} has no signing key {kid}")
        if key.revoked_at is not None:
            raise IstmoError(f"key {kid} was already revoked", code="already_revoked")
        revoke_signing_key(self.registry, caller, kid, actor=caller, at=now, clock=self.clock)
        self.directory.refresh()  # this relay refuses what the key signs at once
        return {"agency": caller, "kid": kid, "revoked_at": now}

    def _audit_refusal(self, parts: list[str], exc: IstmoError, now: int) -> None:
        """A refused request is an audit event: who asked what, and why it was refused."""
        caller = parts[2] if _looks_like_agency(parts[2]) else "unknown"
        op = parts[3][:40]
        event = events.request_rejected(
            caller, op, reason=exc.code, message=str(exc), at=now * 1000
        )
        self.registry.record([], [event])
