"""The administrators' HTTP endpoints (scope ``admin``): policy and agencies.

Policy: read the bundle in force, validate a candidate, explain a decision for any
originator, simulate a candidate against past bulletins. A candidate arrives as its text
files in JSON (``{"files": {"base.cedar": "...", ...}}``), is written to a private
temporary directory under fixed names and loaded exactly as ``istmo policy check`` loads
one; it is never adopted here. Agencies: a page of the directory's rows, and one agency
with its keys and subscriptions.

Left to others: adopting a policy set and changing agencies (the CLI and lifecycle
commands), the audit log's endpoints.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path as FsPath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from broker.api.context import (
    AUTHED,
    ApiProblem,
    ApiState,
    WholeNumber,
    json_body,
    parse_json,
    problem_responses,
    raw_body,
    require,
    state_of,
)
from broker.api.oauth import Caller
from broker.directory.policy_sets import simulation_cases
from broker.directory.service import DirectoryService
from broker.policy.engine import (
    BulletinFacts,
    PolicyBundle,
    PolicyEngine,
    PolicyLoadError,
    simulate,
)
from schemas.envelope import Timestamp
from schemas.errors import ConfigError
from schemas.ids import AGENCY_ID_PATTERN, AgencyIdStr
from schemas.labels import Labels

__all__ = ["admin_router", "load_candidate", "simulation_cases", "write_candidate"]

_STRICT = ConfigDict(frozen=True, extra="forbid", strict=True)
_PREVIEW_ID = "00000000-0000-4000-8000-000000000000"
_POLICY_FILE = re.compile(
    r"(schema\.cedarschema|base\.cedar|overrides/[a-z0-9][a-z0-9-]{0,30}\.cedar)"
)
MAX_POLICY_FILE_CHARS = 128 * 1024

Admin = Annotated[Caller, require("admin")]
PolicyText = Annotated[str, StringConstraints(max_length=MAX_POLICY_FILE_CHARS)]


class AdoptAnswer(BaseModel):
    previous: str
    version: str


class CandidatePolicy(BaseModel):
    """A candidate policy set: ``schema.cedarschema``, ``base.cedar`` and any
    ``overrides/<community>.cedar``, by name."""

    model_config = _STRICT
    files: dict[Annotated[str, StringConstraints(max_length=64)], PolicyText] = Field(
        min_length=1, max_length=32
    )


class SimulateRequest(CandidatePolicy):
    """A candidate and how many of the latest bulletins to replay (capped)."""

    last: int = Field(default=100, ge=1, le=100_000)


class PolicyExplainRequest(BaseModel):
    """A bulletin's labels from ``originator``; ``agencies`` defaults to the candidates
    the directory gives (subscribers and named agencies); ``at`` defaults to now."""

    model_config = _STRICT
    originator: AgencyIdStr
    labels: Labels
    not_before: Timestamp | None = None
    expires_at: Timestamp | None = None
    agencies: tuple[AgencyIdStr, ...] | None = Field(default=None, max_length=500)
    at: Timestamp | None = None


class ValidateAnswer(BaseModel):
    valid: bool
    version: str | None = None
    files: list[str] = []
    problems: list[str] = []


class BundleAnswer(BaseModel):
    version: str
    files: list[str]
    text: str


class ExplanationRow(BaseModel):
    agency: str
    allowed: bool
    summary: str
    policy_ids: list[str]
    reasons: list[str]
    errors: list[str]


class PublishVerdict(BaseModel):
    allowed: bool
    policy_ids: list[str]


class PolicyExplainAnswer(BaseModel):
    policy_version: str
    directory_version: str
    publish: PublishVerdict
    candidates: list[ExplanationRow]


class ChangeRow(BaseModel):
    bulletin_id: str
    agency: str
    action: str
    old: str
    new: str
    old_policy_ids: list[str]
    new_policy_ids: list[str]


class SimulateAnswer(BaseModel):
    active: str
    candidate: str
    bulletins: int
    changes: list[ChangeRow]


class AgencySummary(BaseModel):
    id: str
    name: str
    sector: str
    status: str
    state: str | None
    communities: list[str]


class AgencyPage(BaseModel):
    agencies: list[AgencySummary]
    limit: int
    next_after: str | None


class SigningKeyInfo(BaseModel):
    kid: str
    public: str
    created_at: int
    revoked_at: int | None


class EncryptionKeyInfo(BaseModel):
    kid: str
    kem: str
    public: str
    created_at: int
    current: bool


class AgencyDetail(AgencySummary):
    clearance: int
    min_source_grade: str | None
    topics: list[str]
    signing_keys: list[SigningKeyInfo]
    encryption_keys: list[EncryptionKeyInfo]
    nats_user: str | None


def _split(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


def write_candidate(files: dict[str, str], root: FsPath) -> FsPath:
    """Lay posted policy files out as a policy directory under ``root``.

    Raises:
        ApiProblem: 400 for a file name outside the bundle layout (no path ever comes
            from the request).
    """
    for name in files:
        if _POLICY_FILE.fullmatch(name) is None:
            raise ApiProblem(
                400,
                "bad_filename",
                "policy files are schema.cedarschema, base.cedar and overrides/<name>.cedar",
            )
    (root / "overrides").mkdir(exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")
    return root


def load_candidate(
    files: dict[str, str], directory: DirectoryService
) -> tuple[PolicyBundle | None, PolicyEngine | None, list[str]]:
    """Load posted policy files as a bundle checked against the directory.

    Raises:
        ApiProblem: 400 for a file name outside the bundle layout (no path ever comes
            from the request).
    """
    with tempfile.TemporaryDirectory(prefix="istmo-policy-") as tmp:
        root = write_candidate(files, FsPath(tmp))
        try:
            bundle = PolicyBundle.load(root)
            return bundle, directory.engine_for(bundle), []
        except PolicyLoadError as exc:
            return None, None, list(exc.problems)
        except ConfigError as exc:
            return None, None, [str(exc)[:300]]


def _expensive(request: Request, who: Admin) -> Caller:
    """An admin, within the rate limit of the calls that load or replay policies."""
    state = state_of(request)
    state.limit(state.expensive_limiter, who.id, "expensive")
    return who


Expensive = Annotated[Caller, Depends(_expensive)]


def admin_router(state: ApiState) -> APIRouter:
    """The ``admin`` endpoints over ``state``."""
    router = APIRouter(tags=["administration"])
    registry, directory, limits = state.registry, state.directory, state.limits

    @router.get(
        "/v1/policy/bundle",
        summary="The policy set in force, as the canonical text its version digests",
        response_model=BundleAnswer,
        responses=problem_responses(*AUTHED),
    )
    def policy_bundle(_who: Admin) -> dict[str, Any]:
        bundle = directory.bundle
        return {"version": bundle.version, "files": list(bundle.files), "text": bundle.text}

    @router.post(
        "/v1/policy/validate",
        summary="Check a candidate policy set against the schema and the directory",
        description="Never adopts it. An invalid candidate is a 200 listing the problems.",
        response_model=ValidateAnswer,
        responses=problem_responses(400, *AUTHED),
        openapi_extra=json_body(CandidatePolicy),
    )
    def policy_validate(
        _who: Expensive, body: Annotated[bytes, Depends(raw_body)]
    ) -> dict[str, Any]:
        req = parse_json(CandidatePolicy, body, limits)
        bundle, _engine, problems = load_candidate(dict(req.files), directory)
        if bundle is None:
            return {"valid": False, "problems": problems}
        return {"valid": True, "version": bundle.version, "files": list(bundle.files)}

    @router.post(
        "/v1/policy/explain",
        summary="Why each candidate would or would not receive a bulletin (any originator)",
        response_model=PolicyExplainAnswer,
        responses=problem_responses(*AUTHED),
        openapi_extra=json_body(PolicyExplainRequest),
    )
    def policy_explain(
        _who: Expensive, body: Annotated[bytes, Depends(raw_body)]
    ) -> dict[str, Any]:
        req = parse_json(PolicyExplainRequest, body, limits)
        origin = directory.records.get(req.originator)
        if origin is None:
            raise ApiProblem(422, "unknown_agency", "originator: not an agency of the directory")
        facts = BulletinFacts(
            bulletin_id=_PREVIEW_ID,
            originator=req.originator,
            origin_state=origin.state,
            labels=req.labels,
            not_before=req.not_before,
            expires_at=req.expires_at,
        )
        now = req.at or max(int(time.time()), req.not_before or 0)
        candidates: Sequence[str] = req.agencies or [
            c
            for c in directory.candidates(req.labels.topic, req.labels.named)
            if c != req.originator
        ]
        engine = directory.engine
        publish = engine.decide_publish(facts, now)
        return {
            "policy_version": directory.bundle.version,
            "directory_version": directory.version,
            "publish": {"allowed": publish.allowed, "policy_ids": list(publish.policy_ids)},
            "candidates": [
                {
                    "agency": e.agency,
                    "allowed": e.allowed,
                    "summary": e.summary,
                    "policy_ids": list(e.policy_ids),
                    "reasons": list(e.reasons),
                    "errors": list(e.errors),
                }
                for e in engine.explain(facts, candidates, now)
            ],
        }

    @router.post(
        "/v1/policy/simulate",
        summary="Replay recent bulletins under a candidate policy set: who gains or loses",
        description=(
            "Replays the latest `last` bulletins (at most 1,000) under the policy in force "
            "and the candidate, and lists every decision that would change."
        ),
        response_model=SimulateAnswer,
        responses=problem_responses(400, *AUTHED),
        openapi_extra=json_body(SimulateRequest),
    )
    def policy_simulate(
        _who: Expensive, body: Annotated[bytes, Depends(raw_body)]
    ) -> dict[str, Any]:
        req = parse_json(SimulateRequest, body, limits)
        bundle, engine, problems = load_candidate(dict(req.files), directory)
        if bundle is None or engine is None:
            raise ApiProblem(422, "invalid_policy", "; ".join(problems)[:300])
        cases = simulation_cases(registry, directory, min(req.last, limits.max_simulate_bulletins))
        changes = simulate(directory.engine, engine, cases, int(time.time()))
        return {
            "active": directory.bundle.version,
            "candidate": bundle.version,
            "bulletins": len(cases),
            "changes": [
                {
                    "bulletin_id": c.bulletin_id,
                    "agency": c.agency,
                    "action": c.action,
                    "old": "PERMIT" if c.old.allowed else "DENY",
                    "new": "PERMIT" if c.new.allowed else "DENY",
                    "old_policy_ids": list(c.old.policy_ids),
                    "new_policy_ids": list(c.new.policy_ids),
                }
                for c in changes
            ],
        }

    @router.post(
        "/v1/policy/adopt",
        summary="Validate a candidate policy set and make it the one in force",
        description=(
            "Archives it by version, records a policy.adopted audit event naming the "
            "administrator and the old and new versions, and switches every relay at once. "
            "An invalid candidate is a 422 listing the problems, recorded as policy.rejected; "
            "the set in force is unchanged."
        ),
        response_model=AdoptAnswer,
        responses=problem_responses(400, 422, 503, *AUTHED),
        openapi_extra=json_body(CandidatePolicy),
    )
    async def policy_adopt(
        who: Expensive, body: Annotated[bytes, Depends(raw_body)]
    ) -> dict[str, Any]:
        req = parse_json(CandidatePolicy, body, limits)
        if state.adopt_policy is None:
            raise ApiProblem(503, "adoption_unavailable", "this broker cannot adopt policies")
        with tempfile.TemporaryDirectory(prefix="istmo-adopt-") as tmp:
            root = write_candidate(dict(req.files), FsPath(tmp))
            try:
                previous, version = await state.adopt_policy(root, f"admin:{who.id}")
            except PolicyLoadError as exc:
                raise ApiProblem(422, "invalid_policy", "; ".join(exc.problems)[:500]) from exc
        return {"previous": previous, "version": version}

    @router.get(
        "/v1/agencies",
        summary="A page of the directory's agencies, by id",
        description="`limit` above the maximum page size (500) is capped; follow `next_after`.",
        response_model=AgencyPage,
        responses=problem_responses(*AUTHED),
    )
    def agencies(
        _who: Admin,
        limit: Annotated[WholeNumber, Query(ge=1, le=2**31)] = 100,
        after: Annotated[str | None, Query(max_length=32, pattern=AGENCY_ID_PATTERN)] = None,
    ) -> dict[str, Any]:
        size = min(limit, limits.max_page_size)
        rows = [a for a in registry.agencies() if after is None or a.id > after]
        page = rows[:size]
        return {
            "agencies": [_summary(a) for a in page],
            "limit": size,
            "next_after": page[-1].id if len(rows) > size else None,
        }

    @router.get(
        "/v1/agencies/{agency_id}",
        summary="One agency with its keys (current and past) and subscriptions",
        response_model=AgencyDetail,
        responses=problem_responses(404, *AUTHED),
    )
    def agency(
        agency_id: Annotated[str, Path(max_length=32, pattern=AGENCY_ID_PATTERN)], _who: Admin
    ) -> dict[str, Any]:
        row = registry.agency(agency_id)
        if row is None:
            raise ApiProblem(404, "not_found", "no such agency")
        nats = {u.agency: u.nkey_public for u in registry.nats_users()}
        return {
            **_summary(row),
            "clearance": row.clearance,
            "min_source_grade": row.min_source_grade,
            "topics": sorted(registry.subscriptions().get(row.id, set())),
            "signing_keys": [
                {
                    "kid": k.kid,
                    "public": k.public,
                    "created_at": k.created_at,
                    "revoked_at": k.revoked_at,
                }
                for k in sorted(registry.signing_keys(row.id), key=lambda k: k.created_at)
            ],
            "encryption_keys": [
                {
                    "kid": k.kid,
                    "kem": k.kem,
                    "public": k.public,
                    "created_at": k.created_at,
                    "current": k.current,
                }
                for k in sorted(registry.encryption_keys(row.id), key=lambda k: k.created_at)
            ],
            "nats_user": nats.get(row.id),
        }

    return router


def _summary(a: Any) -> dict[str, Any]:
    return {
        "id": a.id,
        "name": a.name,
        "sector": a.sector,
        "status": a.status,
        "state": a.state,
        "communities": _split(a.communities),
    }
