"""What every HTTP endpoint shares: the app's state, the caller dependency (a bearer
token with the scopes an operation needs), problems as exceptions, and the helpers that
document bodies we parse ourselves.

Left to others: the endpoints (``broker.api.app``, ``broker.api.admin``), the outer guard
(``broker.api.guard``), tokens themselves (``broker.api.oauth``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import OAuth2, SecurityScopes
from pydantic import BaseModel, BeforeValidator
from starlette.types import Scope

from broker.api.guard import ApiLimits, Metrics, Problem, RateLimiter, peer_of
from broker.api.oauth import TOKEN_PATH, Caller, TokenAuthority
from broker.api.refusals import Kind, RefusalLedger
from broker.audit import events
from broker.audit.events import Refusal
from broker.clock import SYSTEM_CLOCK, Clock
from broker.directory.service import DirectoryService
from broker.relay.queries import AgencyQueries
from broker.store.registry import Registry
from schemas.audit import AuditEvent
from schemas.directory import SignedExcerpt
from schemas.envelope import parse_model
from schemas.errors import AuditStoreError

__all__ = [
    "AUTHED",
    "ApiProblem",
    "ApiState",
    "WholeNumber",
    "caller",
    "json_body",
    "parse_json",
    "problem_responses",
    "raw_body",
    "require",
    "state_of",
]

log = logging.getLogger("istmo.api")


def _integral(value: object) -> object:
    """``5457.0`` in a query or path is the integer 5457, as JSON Schema's ``integer`` (which
    the OpenAPI document says) allows; ``5457.5`` stays refused."""
    if isinstance(value, str) and _INTEGRAL.fullmatch(value):
        return value.split(".", 1)[0]
    return value


_INTEGRAL = re.compile(r"-?[0-9]{1,20}\.0{1,20}")
# An integer query or path parameter: whole numbers written with a zero fraction pass too.
WholeNumber = Annotated[int, BeforeValidator(_integral)]

SCOPE_HELP = {
    "bulletins:publish": "resolve recipients and explain decisions before publishing",
    "bulletins:read": "status and receipts of the caller's own bulletins",
    "audit:read": "read the audit log (auditors)",
    "admin": "policy and directory administration",
}
_BEARER = "bearer "


class ApiProblem(Exception):
    """A refusal the HTTP shell answers with a problem (audited if 401 or 403, or if
    ``audit`` says so)."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        client: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
        audit_as: Refusal = "auth.refused",
        audit: bool | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.client = client
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})
        self.audit_as = audit_as
        # Audited: every 401 and 403, and whatever else the raiser asks for.
        self.audit = status in (401, 403) if audit is None else audit


@dataclass
class ApiState:
    """Everything the endpoints share: services, limits, rate limiters, metrics."""

    registry: Registry
    directory: DirectoryService
    queries: AgencyQueries
    auth: TokenAuthority | None
    limits: ApiLimits
    metrics: Metrics
    bus_ok: Callable[[], bool]
    # Where the absolute links the broker builds point (the public URL, else loopback),
    # never the Host a request names.
    base_url: str
    # Set by the process that serves the API (broker.runtime.stack): the NATS URL an enrolling
    # agency is told, and how to apply a directory change to the running stack (refresh
    # the directory, reload nats-server, create durable consumers).
    nats_url: str | None = None
    directory_changed: Callable[[], Awaitable[None]] | None = None
    # In operator mode (ADR 0013): the user JWT of (agency, NATS user key), for the
    # enrolment answer; set by the stack.
    nats_user_jwt: Callable[[str, str], str] | None = None
    # Adopt the policy set in a directory, as the given administrator; set by the stack.
    adopt_policy: Callable[[Path, str], Awaitable[tuple[str, str]]] | None = None
    # The time of audit events written over HTTP (a test passes its own).
    clock: Clock = SYSTEM_CLOCK

    def __post_init__(self) -> None:
        lim = self.limits
        self.token_limiter = RateLimiter(lim.token_rate_per_min / 60, lim.token_burst)
        self.peer_limiter = RateLimiter(lim.peer_token_rate_per_min / 60, lim.token_burst * 5)
        self.api_limiter = RateLimiter(lim.api_rate_per_s, lim.api_burst)
        self.expensive_limiter = RateLimiter(lim.expensive_rate_per_min / 60, lim.expensive_burst)
        self.refusal_limiter = RateLimiter(lim.refusal_rate_per_min / 60, lim.refusal_burst)
        self.refusals = RefusalLedger(lim.refusal_window_s * 1000)

    def authority(self) -> TokenAuthority:
        if self.auth is None:
            raise ApiProblem(503, "auth_not_configured", "this broker has no token key configured")
        return self.auth

    def limit(self, limiter: RateLimiter, key: str, name: str) -> None:
        """429 with ``Retry-After`` when ``key`` is over ``limiter``'s rate."""
        wait = limiter.take(key)
        if wait is not None:
            self.metrics.rate_limited.labels(name).inc()
            raise ApiProblem(
                429,
                "rate_limited",
                f"too many requests; retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )

    def audit_refusal(self, request: Request, exc: ApiProblem) -> ApiProblem:
        """Audit a refusal (every 401 and 403, and what else is marked ``audit``): who,
        what route, why, never the credential; and say what to answer: ``exc``, or a 429
        when its client address is over the refusal rate."""
        self.metrics.refusals.labels(str(exc.status), exc.code).inc()
        event = events.http_refused(
            exc.audit_as,
            exc.client,
            method=request.method,
            route=_route(request.scope),
            reason=exc.code,
            status=exc.status,
            message=exc.detail,
            peer=peer_of(request.scope),
            at=self.clock.now_ms(),
        )
        wait = self.refused(request.scope, event)
        if wait is None:
            return exc
        return ApiProblem(
            429,
            "rate_limited",
            f"too many refused requests; retry in {wait} s",
            headers={"Retry-After": str(wait)},
            audit=False,
        )

    def foreign_host_refused(self, scope: Scope) -> int | None:
        """The guard refused a request for a host name we do not serve (``ForeignHostSink``):
        audited like any refusal, without the name or the path the caller sent."""
        event = events.http_refused(
            "request.rejected",
            None,
            method=_method(scope),
            route="<unmatched>",
            reason="unknown_host",
            status=400,
            message="a host name this broker does not serve",
            peer=peer_of(scope),
            at=self.clock.now_ms(),
        )
        return self.refused(scope, event)

    def refused(self, scope: Scope, event: AuditEvent) -> int | None:
        """Count one refused request (``event`` says how it would be audited alone)
        against its client address's refusal rate, and audit it, aggregated
        (``broker.api.refusals``). Refusals are alike when type, reason, claimed client
        and route are; what is over the rate is one kind per address, audited as
        ``rate_limited``.

        Returns:
            None, or the seconds to wait when the address is over its refusal rate (the
            caller answers 429 instead).
        """
        source = peer_of(scope)
        now_ms = self.clock.now_ms()
        wait = self.refusal_limiter.take(f"refused:{source}", now_ms / 1000)
        kind: Kind = (event.type, event.reason, event.actor, event.subject)
        if wait is not None:
            self.metrics.rate_limited.labels("refusals").inc()
            kind = ("rate_limited",)
            event = events.http_refused(
                "request.rejected",
                event.actor,
                method=_method(scope),
                route=_route(scope),
                reason="rate_limited",
                status=429,
                message="too many refused requests from this address",
                peer=source,
                at=now_ms,
            )
        self._write(self.refusals.note(source, kind, event, now_ms=now_ms))
        return wait

    def close_refusal_windows(self) -> None:
        """Write the summaries still owed (the process stops)."""
        self._write(self.refusals.close_all(self.clock.now_ms()))

    def _write(self, written: list[AuditEvent]) -> None:
        if not written:
            return
        try:
            self.registry.record([], written)
        except AuditStoreError as err:
            # The refusal stands whether or not it could be written down.
            log.error("could not audit %d refused request(s): %s", len(written), err)


def _method(scope: Scope) -> str:
    return str(scope.get("method", "?"))[:16]


def _route(scope: Scope) -> str:
    """The route's template, never the path the caller sent."""
    return getattr(scope.get("route"), "path", None) or "<unmatched>"


def state_of(request: Request) -> ApiState:
    state: ApiState = request.app.state.istmo
    return state


oauth2_scheme = OAuth2(
    flows={"clientCredentials": {"tokenUrl": TOKEN_PATH, "scopes": SCOPE_HELP}},
    scheme_name="istmo_oauth2",
    description=(
        "Client credentials with private_key_jwt (RFC 7523): sign a client assertion with "
        "your agency's Ed25519 key (EdDSA), POST it to /v1/token, send the access token as "
        "`Authorization: Bearer ...`. See docs/http-api.md."
    ),
    auto_error=False,
)


def caller(
    security_scopes: SecurityScopes,
    request: Request,
    authorization: Annotated[str | None, Depends(oauth2_scheme)],
) -> Caller:
    """The dependency behind ``require``: a valid bearer token with every scope asked."""
    state = state_of(request)
    authority = state.authority()
    challenge = 'Bearer realm="istmo"'
    # 1. A bearer token is there at all (RFC 6750 §3: no error code when none was sent).
    if not authorization:
        raise ApiProblem(
            401,
            "missing_token",
            "an access token is needed",
            headers={"WWW-Authenticate": challenge},
        )
    if authorization[: len(_BEARER)].lower() != _BEARER:
        raise ApiProblem(
            401,
            "not_bearer",
            "use the Bearer authorization scheme",
            headers={"WWW-Authenticate": challenge},
        )
    # 2. Signed by us, not expired, holder still active (raises AuthError -> 401).
    who = authority.verify(authorization[len(_BEARER) :].strip(), state.clock.now_s())
    # 3. Every scope this operation needs (403 insufficient_scope).
    missing = [s for s in security_scopes.scopes if s not in who.scopes]
    if missing:
        needed = " ".join(security_scopes.scopes)
        raise ApiProblem(
            403,
            "insufficient_scope",
            f"this needs the scope {needed}",
            client=who.id,
            headers={
                "WWW-Authenticate": f'{challenge}, error="insufficient_scope", scope="{needed}"'
            },
        )
    # 4. The caller's request rate (S-21).
    state.limit(state.api_limiter, who.id, "api")
    return who


def require(scope: str) -> Any:
    """``caller: Caller = require("admin")`` in an endpoint's signature."""
    return Security(caller, scopes=[scope])


async def raw_body(request: Request) -> bytes:
    """The request body, already bounded by the guard; parsed by the endpoint."""
    return await request.body()


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problems an operation may answer with."""
    ref = {"$ref": "#/components/schemas/Problem"}
    return {
        s: {
            "description": _STATUS_HELP.get(s, "Problem"),
            "content": {"application/problem+json": {"schema": ref}},
        }
        for s in statuses
    }


_STATUS_HELP = {
    400: "Bad request (OAuth errors carry `error` too)",
    401: "No, expired or invalid credentials (audited)",
    403: "Authenticated, but not allowed (audited)",
    404: "No such object for this caller",
    413: "Request body too large",
    422: "Request not valid",
    429: "Rate limited; see Retry-After",
    503: "A dependency is down",
}
AUTHED = (401, 403, 413, 422, 429, 503)
BODY_MODELS: list[type[BaseModel]] = [Problem, SignedExcerpt]


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting a JSON body we parse ourselves, strictly."""
    if model not in BODY_MODELS:
        BODY_MODELS.append(model)
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def parse_json(model: type[Any], body: bytes, limits: ApiLimits) -> Any:
    return parse_model(model, body, max_bytes=limits.max_policy_body_bytes, what="request")
