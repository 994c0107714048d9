"""Enrolment and the agency lifecycle over HTTP.

``POST /v1/enroll`` is the one door an agency uses before it has keys: it is not OAuth,
the enrolment token in the body admits it (``broker.directory.enrolment.redeem``), and it is rate
limited per client address. Every refusal there is a problem and an audit event.

The administrators' side (scope ``admin``): create an agency with its first enrolment
token, issue a new token, suspend, reinstate and revoke. Each change is audited with the
administrator as actor.

After every change the running stack is told (``ApiState.directory_changed``, set by the
process that serves the API): it refreshes the directory, reloads nats-server with the
active agencies' users (or, in operator mode, pushes the changed agencies' account JWTs)
and creates new agencies' durable consumers, before the answer goes out, so an agency that
has just enrolled can connect at once. Without that hook (the app alone, in tests) only
this app's directory is refreshed. In operator mode the enrolment answer also carries the
agency's NATS user JWT (``ApiState.nats_user_jwt``).

Left to others: the lifecycle's rules (``broker.directory.lifecycle``,
``broker.directory.enrolment``), the stack's reload (``broker.runtime.stack``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from broker.api.context import (
    AUTHED,
    ApiProblem,
    ApiState,
    json_body,
    parse_json,
    problem_responses,
    raw_body,
    require,
)
from broker.api.guard import RateLimiter, peer_of
from broker.api.oauth import Caller
from broker.directory.enrolment import (
    DEFAULT_MAX_SKEW_S,
    DEFAULT_TOKEN_TTL_S,
    MAX_TOKEN_TTL_S,
    MIN_TOKEN_TTL_S,
    NewAgency,
    RequestRefused,
    TokenRefused,
    create_agency,
    issue_token,
    redeem,
)
from broker.directory.lifecycle import Status, revoke_signing_key, set_agency_status
from schemas.directory import Sector
from schemas.enrolment import (
    EnrolmentAnswer,
    EnrolmentBody,
    parse_enrolment_body,
    split_enrolment_token,
)
from schemas.errors import ConfigError, EnvelopeError
from schemas.ids import AGENCY_ID_PATTERN, AgencyIdStr, JurisdictionStr
from schemas.labels import TOPICS, Classification, SourceGrade, Topic

__all__ = ["EnrolLimits", "enrol_router"]

log = logging.getLogger("istmo.api")

_STRICT = ConfigDict(frozen=True, extra="forbid", strict=True)
Admin = Annotated[Caller, require("admin")]
AgencyPath = Annotated[
    str, Path(max_length=32, pattern=AGENCY_ID_PATTERN, description="An agency id")
]
Note = Annotated[str, StringConstraints(max_length=200)]


@dataclass(frozen=True)
class EnrolLimits:
    """Bounds of ``POST /v1/enroll``.

    Attributes:
        rate_per_min: enrolment attempts per minute per client address.
        burst: attempts a client address may make at once.
        max_clock_skew_s: how far a request's ``issued_at`` may be from the broker clock.
    """

    rate_per_min: float = 20
    burst: int = 10
    max_clock_skew_s: int = DEFAULT_MAX_SKEW_S


# ---------------------------------------------------------------------- models
class AgencyCreate(BaseModel):
    """A new agency: a state (national agency) or communities (regional body), and the
    lifetime of its first enrolment token."""

    model_config = _STRICT
    id: AgencyIdStr
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    sector: Sector
    clearance: Classification
    topics: tuple[Topic, ...] = Field(default=(), max_length=len(TOPICS))
    state: JurisdictionStr | None = None
    communities: tuple[JurisdictionStr, ...] = Field(default=(), max_length=16)
    min_source_grade: SourceGrade | None = None
    token_ttl_s: int = Field(default=DEFAULT_TOKEN_TTL_S, ge=MIN_TOKEN_TTL_S, le=MAX_TOKEN_TTL_S)


class TokenRequest(BaseModel):
    """How long the new enrolment token lasts."""

    model_config = _STRICT
    ttl_s: int = Field(default=DEFAULT_TOKEN_TTL_S, ge=MIN_TOKEN_TTL_S, le=MAX_TOKEN_TTL_S)


class StatusNote(BaseModel):
    """Why, for the audit log (no secrets)."""

    model_config = _STRICT
    note: Note = ""


class EnrolmentTokenAnswer(BaseModel):
    agency: str
    token: str = Field(
        description="The one-time enrolment token. Shown here only: hand it to the agency "
        "over a channel you trust; the broker keeps only its digest."
    )
    token_id: str
    expires_at: int
    directory_kid: str = Field(
        description="The directory key the agency will pin; it may check it at enrolment "
        "with `istmo enroll --directory-kid`."
    )


class StatusAnswer(BaseModel):
    agency: str
    previous: str
    status: str
    applied: bool = Field(description="Whether the running stack applied it already")


# ---------------------------------------------------------------------- helpers
async def apply_directory_change(state: ApiState) -> bool:
    """Have the running stack apply a directory change; True if it did.

    Never raises: the change is committed whatever happens here, and the caller must get
    its answer (an enrolled agency must write its keystore).
    """
    if state.directory_changed is None:
        await asyncio.to_thread(state.directory.refresh)
        return False
    try:
        await state.directory_changed()
    except Exception:  # committed already; report it with its traceback, answer anyway
        log.exception("the running stack could not apply a directory change")
        return False
    return True


def _config_problem(exc: ConfigError, who: str) -> ApiProblem:
    status = {"unknown_agency": 404, "bad_attribute": 422}.get(exc.code, 409)
    return ApiProblem(status, exc.code, str(exc)[:300], client=who)


def _optional(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for an optional JSON body (an empty body takes the defaults)."""
    extra = json_body(model)
    extra["requestBody"]["required"] = False
    return extra


def _parse_optional(model: type[Any], body: bytes, state: ApiState) -> Any:
    return model() if not body.strip() else parse_json(model, body, state.limits)


def _token_answer(state: ApiState, agency: str, token: str, ttl_s: int, now: int) -> dict[str, Any]:
    parts = split_enrolment_token(token)
    assert parts is not None  # noqa: S101  # we made it
    return {
        "agency": agency,
        "token": token,
        "token_id": parts[0],
        "expires_at": now + ttl_s,
        "directory_kid": state.directory.directory_key.verify_key.kid,
    }


# ---------------------------------------------------------------------- routes
def enrol_router(state: ApiState, limits: EnrolLimits | None = None) -> APIRouter:
    """``POST /v1/enroll`` and the administrators' agency lifecycle endpoints."""
    lim = limits or EnrolLimits()
    router = APIRouter()
    registry = state.registry
    limiter = RateLimiter(lim.rate_per_min / 60, lim.burst)

    @router.post(
        "/v1/enroll",
        summary="Enrol: register a new agency's public keys with its one-time token",
        description=(
            "Not OAuth: the enrolment token an administrator issued admits the request, "
            "once, before it expires. The request carries only public keys (Ed25519 "
            "signing, HPKE encryption, NATS user nkey), signed by the new signing key and "
            "the NATS key. The answer names the directory key to pin and the NATS URL. A "
            "used, expired or forged token is 401; a weak key or a bad proof is 422. Rate "
            "limited per client address."
        ),
        tags=["enrolment"],
        status_code=201,
        response_model=EnrolmentAnswer,
        response_model_exclude_none=True,
        responses=problem_responses(401, 409, 413, 422, 429),
        openapi_extra=json_body(EnrolmentBody),
    )
    async def enroll(request: Request, body: Annotated[bytes, Depends(raw_body)]) -> Any:
        peer = peer_of(request.scope)
        try:
            state.limit(limiter, f"enrol:{peer}", "enrol")
        except ApiProblem as exc:
            exc.audit, exc.audit_as = True, "request.rejected"
            raise
        try:
            parsed = parse_enrolment_body(body)
        except EnvelopeError as exc:
            status = 413 if exc.code == "oversized" else 422
            raise ApiProblem(
                status, exc.code, str(exc), audit=True, audit_as="request.rejected"
            ) from exc
        now = int(time.time())
        try:
            answer = await asyncio.to_thread(
                redeem,
                registry,
                parsed.token,
                parsed.request,
                now,
                directory_key=state.directory.directory_key.verify_key,
                max_skew_s=lim.max_clock_skew_s,
            )
        except TokenRefused as exc:
            raise ApiProblem(401, exc.code, str(exc), client=exc.agency) from exc
        except RequestRefused as exc:
            raise ApiProblem(
                409 if exc.code == "key_reused" else 422,
                exc.code,
                str(exc),
                client=exc.agency,
                audit=True,
                audit_as="request.rejected",
            ) from exc
        except ConfigError as exc:  # a damaged row; the detail is logged, not answered
            log.error("enrolment failed on a stored value: %s", exc)
            raise ApiProblem(503, "internal", "the broker could not enrol this agency") from exc
        await apply_directory_change(state)
        log.info(
            "agency %s enrolled with signing key %s (token %s)",
            answer.agency,
            answer.signing_kid,
            parsed.request.token_id,
        )
        user_jwt = (
            None
            if state.nats_user_jwt is None
            else state.nats_user_jwt(answer.agency, answer.nats_user)
        )
        return answer.model_copy(update={"nats_url": state.nats_url, "nats_jwt": user_jwt})

    @router.post(
        "/v1/agencies",
        summary="Create an agency and its first one-time enrolment token",
        description=(
            "The agency is active and has no keys until it enrols (`istmo enroll`). The "
            "token is in this answer only."
        ),
        tags=["administration"],
        status_code=201,
        response_model=EnrolmentTokenAnswer,
        responses=problem_responses(409, *AUTHED),
        openapi_extra=json_body(AgencyCreate),
    )
    async def agency_create(who: Admin, body: Annotated[bytes, Depends(raw_body)]) -> Any:
        req = parse_json(AgencyCreate, body, state.limits)
        new = NewAgency(
            id=req.id,
            name=req.name,
            sector=req.sector,
            clearance=req.clearance.value,
            topics=req.topics,
            state=req.state,
            communities=req.communities,
            min_source_grade=req.min_source_grade,
        )
        now = int(time.time())
        try:
            await asyncio.to_thread(create_agency, registry, new, created_by=who.id, now=now)
            token = await asyncio.to_thread(
                issue_token, registry, req.id, req.token_ttl_s, who.id, now=now
            )
        except ConfigError as exc:
            raise _config_problem(exc, who.id) from exc
        await apply_directory_change(state)
        log.info("agency %s created by %s", req.id, who.id)
        return _token_answer(state, req.id, token, req.token_ttl_s, now)

    @router.post(
        "/v1/agencies/{agency_id}/enrolment-tokens",
        summary="A new one-time enrolment token for an agency not enrolled yet",
        description="Revokes the agency's earlier tokens that were not used.",
        tags=["administration"],
        status_code=201,
        response_model=EnrolmentTokenAnswer,
        responses=problem_responses(404, 409, *AUTHED),
        openapi_extra=_optional(TokenRequest),
    )
    async def agency_token(
        agency_id: AgencyPath, who: Admin, body: Annotated[bytes, Depends(raw_body)]
    ) -> Any:
        req = _parse_optional(TokenRequest, body, state)
        now = int(time.time())
        try:
            token = await asyncio.to_thread(
                issue_token, registry, agency_id, req.ttl_s, who.id, now=now
            )
        except ConfigError as exc:
            raise _config_problem(exc, who.id) from exc
        log.info("enrolment token issued for %s by %s", agency_id, who.id)
        return _token_answer(state, agency_id, token, req.ttl_s, now)

    for action, status in _ACTIONS:
        _status_route(router, state, action, status)
    _key_revoke_route(router, state)
    return router


Action = Literal["suspend", "reinstate", "revoke"]
_ACTIONS: tuple[tuple[Action, Status], ...] = (
    ("suspend", "suspended"),
    ("reinstate", "active"),
    ("revoke", "revoked"),
)
_HELP = {
    "suspend": "Suspend an agency: it can neither publish nor receive; its deliveries wait",
    "reinstate": "Reinstate a suspended agency; its held deliveries then arrive",
    "revoke": "Revoke an agency for good",
}


def _status_route(
    router: APIRouter,
    state: ApiState,
    action: Action,
    status: Status,
) -> None:
    @router.post(
        f"/v1/agencies/{{agency_id}}/{action}",
        summary=_HELP[action],
        description=(
            "Takes effect at once: its access tokens stop working and nats-server drops "
            "its connection (reloaded, not restarted)."
        ),
        tags=["administration"],
        response_model=StatusAnswer,
        responses=problem_responses(404, 409, *AUTHED),
        openapi_extra=_optional(StatusNote),
        name=f"agency_{action}",
    )
    async def change(
        agency_id: AgencyPath, who: Admin, body: Annotated[bytes, Depends(raw_body)]
    ) -> Any:
        req = _parse_optional(StatusNote, body, state)
        if await asyncio.to_thread(state.registry.agency, agency_id) is None:
            raise ApiProblem(404, "not_found", "no such agency")
        try:
            previous = await asyncio.to_thread(
                set_agency_status,
                state.registry,
                agency_id,
                status,
                actor=who.id,
                note=req.note,
                clock=state.clock,
            )
        except ConfigError as exc:
            raise ApiProblem(409, "conflict", str(exc)[:300], client=who.id) from exc
        applied = await apply_directory_change(state)
        log.info("agency %s: %s -> %s by %s", agency_id, previous, status, who.id)
        return {"agency": agency_id, "previous": previous, "status": status, "applied": applied}


class KeyRevokeAnswer(BaseModel):
    agency: str
    kid: str
    revoked_at: int
    applied: bool


def _key_revoke_route(router: APIRouter, state: ApiState) -> None:
    @router.post(
        "/v1/agencies/{agency_id}/keys/{kid}/revoke",
        summary="Revoke one of an agency's signing keys: what it signs from now on is refused",
        description=(
            "Bulletins it signed before stay verifiable; the relay and every SDK refuse "
            "anything it signs later. Audited with the administrator as actor. The agency's "
            "last valid signing key is 409 `last_key` unless `force=true`: without one it can "
            "neither publish nor rotate until it is re-enrolled."
        ),
        tags=["administration"],
        response_model=KeyRevokeAnswer,
        responses=problem_responses(404, 409, *AUTHED),
    )
    async def revoke_key(
        agency_id: AgencyPath,
        kid: Annotated[str, Path(pattern=r"^sig-[0-9a-f]{32}$")],
        who: Admin,
        force: Annotated[
            bool, Query(description="revoke it even if it is the agency's last valid key")
        ] = False,
    ) -> Any:
        now = state.clock.now_s()
        try:
            await asyncio.to_thread(
                revoke_signing_key,
                state.registry,
                agency_id,
                kid,
                actor=who.id,
                at=now,
                clock=state.clock,
                force=force,
            )
        except ConfigError as exc:
            # No such key of that agency, revoked already, or its last one.
            if exc.code == "last_key":
                raise ApiProblem(409, "last_key", str(exc)[:300], client=who.id) from exc
            code = 409 if "already" in str(exc) else 404
            raise ApiProblem(
                code, "conflict" if code == 409 else "not_found", str(exc)[:300], client=who.id
            ) from exc
        applied = await apply_directory_change(state)
        log.info("agency %s: key %s revoked by %s", agency_id, kid, who.id)
        return {"agency": agency_id, "kid": kid, "revoked_at": now, "applied": applied}
