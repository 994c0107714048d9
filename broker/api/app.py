"""The HTTP API (FastAPI): public endpoints, the OAuth 2.0 token endpoint, and what an
agency asks about its own bulletins.

Public: ``/healthz``, ``/readyz``, ``/metrics``, ``/v1/directory`` (signed), ``/v1/policy``
(versions) and ``POST /v1/token``. Everything else needs an access token with a scope:
``bulletins:publish`` (recipient resolution and explain), ``bulletins:read`` (status and
receipts of the caller's own bulletins; anyone else's look missing), ``admin`` (policy and
agencies, in ``broker.api.admin``; enrolment tokens and status changes, in
``broker.api.enrol``), ``audit:read`` (the audit log, its tree heads and proofs, in
``broker.api.audit``). ``POST /v1/enroll`` is authenticated by a one-time enrolment token.
The answers come from ``broker.relay.queries``, the functions the NATS door calls too.

Every 4xx/5xx is an RFC 9457 problem naming the reason; every 401 and 403 is an audit
event; bodies are bounded before they are read (``broker.api.guard``). Request bodies are
parsed by the wire contract's strict parser, as on NATS, not by FastAPI's lenient one.

Subscriptions (``bulletins:read`` for one's own, ``admin`` to set them) are in
``broker.api.subscriptions``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlsplit

from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, StringConstraints
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from broker.api.admin import admin_router
from broker.api.audit import audit_router
from broker.api.context import (
    AUTHED,
    BODY_MODELS,
    ApiProblem,
    ApiState,
    json_body,
    parse_json,
    problem_responses,
    raw_body,
    require,
    state_of,
)
from broker.api.enrol import enrol_router
from broker.api.guard import LOOPBACK_HOSTS, ApiLimits, Guard, Metrics, peer_of, problem
from broker.api.oauth import ASSERTION_TYPE, TOKEN_PATH, AuthError, Caller, TokenAuthority
from broker.api.subscriptions import subscriptions_router
from broker.clock import SYSTEM_CLOCK, Clock
from broker.config import DEFAULT_API_PORT
from broker.directory.service import DirectoryService
from broker.relay.queries import AgencyQueries, NotFound
from broker.store.registry import Registry
from schemas.agency import ResolveRequest, StatusPending
from schemas.canonical import canonical_json
from schemas.errors import (
    AuditStoreError,
    BusUnavailable,
    ConfigError,
    EnvelopeError,
    IstmoError,
    PolicyDenied,
)
from schemas.ids import AGENCY_ID_PATTERN, BULLETIN_ID_PATTERN, parse_agency_id
from schemas.receipt_requests import MAX_SIGNED_RECEIPTS

__all__ = ["ApiLimits", "create_api"]

log = logging.getLogger("istmo.api")

_MAX_FORM_FIELDS = 8


# ---------------------------------------------------------------------- response models
class TokenResponse(BaseModel):
    access_token: str
    token_type: str
    expires_in: int
    scope: str


class DeniedRecipient(BaseModel):
    agency: str
    policy_ids: list[str]
    reasons: list[str]


class StatusAnswer(BaseModel):
    state: str
    bulletin_id: str
    routed: list[str] | None = None
    denied: list[DeniedRecipient] | None = None
    policy_version: str | None = None
    reason: str | None = None
    message: str | None = None


class ReceiptEntry(BaseModel):
    agency: str
    received_at: int | None
    signature: str | None


class ReceiptsAnswer(BaseModel):
    bulletin_id: str
    recipients: list[ReceiptEntry]


class SignedReceipt(BaseModel):
    """A recipient's signed receipt, every field (schemas/json/receipt.schema.json)."""

    v: int
    bulletin_id: str
    originator: str
    recipient: str
    envelope_digest: str
    received_at: int
    kid: str
    sig: str


class SignedReceiptEntry(BaseModel):
    agency: str
    received_at: int | None
    receipt: SignedReceipt | None


class SignedReceiptsAnswer(BaseModel):
    """schemas/json/agency-signed-receipts-reply.schema.json"""

    bulletin_id: str
    originator: str
    envelope_digest: str
    recipients: list[SignedReceiptEntry]
    next: str | None


class ResolveAnswer(BaseModel):
    recipients: list[str]
    policy_version: str
    directory: dict[str, Any]


class Verdict(BaseModel):
    allowed: bool
    policy_ids: list[str]


class CandidateVerdict(BaseModel):
    agency: str
    allowed: bool
    summary: str
    policy_ids: list[str]


class ExplainAnswer(BaseModel):
    policy_version: str
    publish: Verdict
    candidates: list[CandidateVerdict]


# ---------------------------------------------------------------------- the app
def create_api(
    registry: Registry,
    directory: DirectoryService,
    bus_ok: Callable[[], bool],
    *,
    auth: TokenAuthority | None = None,
    limits: ApiLimits | None = None,
    clock: Clock = SYSTEM_CLOCK,
    allowed_hosts: Collection[str] = (),
    base_url: str | None = None,
) -> FastAPI:
    """Build the API's app over live services, without the web console (which sits a layer
    above and mounts itself: ``broker.runtime.app.create_app`` puts the two together).

    Args:
        registry: the broker's store.
        directory: the live directory and policy.
        bus_ok: whether NATS is connected (for ``/readyz``).
        auth: the token authority; without one, everything that needs a token answers
            503 and the public endpoints still work.
        limits: body, page and rate limits.
        clock: the time of the audit events written over HTTP.
        allowed_hosts: host names the API answers to besides loopback, the token
            issuer's and ``base_url``'s (a request naming any other in ``Host`` is refused).
        base_url: where every absolute link the broker builds points (``Settings.base_url``:
            the public URL, else the loopback one), whatever ``Host`` a request names;
            default: the token issuer, else ``http://127.0.0.1:8844``.
    """
    limits = limits or ApiLimits()
    issuer = auth.issuer if auth is not None else None
    base = (base_url or issuer or f"http://127.0.0.1:{DEFAULT_API_PORT}").rstrip("/")
    hosts = LOOPBACK_HOSTS | {h.lower() for h in allowed_hosts}
    hosts |= {name for url in (base, issuer) if url and (name := urlsplit(url).hostname)}
    metrics = Metrics()
    app = FastAPI(
        title="Istmo broker API",
        version="0.1.0",
        description=(
            "Secure bulletin broker for Central America and the Caribbean. Bulletins "
            "themselves travel over NATS, end-to-end encrypted; this API answers questions "
            "about them. Authenticate with OAuth 2.0 client credentials and private_key_jwt "
            "(POST /v1/token); errors are RFC 9457 problems."
        ),
        docs_url="/docs",
        openapi_url="/openapi.json",
        redoc_url=None,
        lifespan=_lifespan,
    )
    state = ApiState(
        registry=registry,
        directory=directory,
        queries=AgencyQueries(registry, directory),
        auth=auth,
        limits=limits,
        metrics=metrics,
        bus_ok=bus_ok,
        clock=clock,
        base_url=base,
    )
    app.state.istmo = state
    app.add_middleware(
        Guard,
        limits=limits,
        metrics=metrics,
        allowed_hosts=hosts,
        foreign_host=state.foreign_host_refused,
    )
    _add_exception_handlers(app)
    _add_public_routes(app, state)
    _add_token_route(app, state)
    _add_agency_routes(app, state)
    app.include_router(admin_router(state))
    app.include_router(enrol_router(state))
    app.include_router(audit_router(state))
    app.include_router(subscriptions_router(state))
    app.openapi = _openapi(app)  # type: ignore[method-assign]  # FastAPI's documented hook
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    # Stopping: the refusals counted in open aggregation windows are written, not lost.
    state: ApiState = app.state.istmo
    state.close_refusal_windows()


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in BODY_MODELS:
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(body.pop("$defs", {}))
            components[model.__name__] = body
        app.openapi_schema = schema
        return schema

    return build


# ---------------------------------------------------------------------- errors
def _add_exception_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiProblem)
    def on_problem(request: Request, exc: ApiProblem) -> Response:
        if exc.audit:
            exc = state_of(request).audit_refusal(request, exc)
        return problem(exc.status, exc.code, exc.detail, headers=exc.headers, extra=exc.extra)

    @app.exception_handler(AuthError)
    def on_auth_error(request: Request, exc: AuthError) -> Response:
        return on_problem(request, _auth_problem(request, exc))

    @app.exception_handler(IstmoError)
    def on_istmo_error(request: Request, exc: IstmoError) -> Response:
        return on_problem(request, _istmo_problem(exc))

    @app.exception_handler(RequestValidationError)
    def on_validation(_request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "not valid"}
        where = ".".join(str(p) for p in first.get("loc", ())) or "request"
        # The message names the field, never its value (no echo of what was sent).
        return problem(422, "invalid_request", f"{where}: {first.get('msg', 'not valid')}"[:300])

    @app.exception_handler(StarletteHTTPException)
    def on_http(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "no_such_route", 405: "method_not_allowed"}.get(exc.status_code, "http")
        detail = "no such endpoint" if exc.status_code == 404 else str(exc.detail)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names the methods of the first route matching the path only; a path
            # served by several routes (GET in one, POST in another) allows them all.
            headers["Allow"] = ", ".join(allowed_methods(request.app.routes, request.scope))
        return problem(exc.status_code, code, detail, headers=headers)


_METHODS = ("DELETE", "GET", "PATCH", "POST", "PUT")


def allowed_methods(routes: Sequence[BaseRoute], scope: Scope) -> list[str]:
    """Every method some route serves at the request's path (HEAD with GET), sorted: each
    method is tried against every route's public ``matches`` (FastAPI nests included
    routers, so the routes themselves cannot simply be listed)."""
    methods = {
        m
        for m in _METHODS
        if any(route.matches({**scope, "method": m})[0] is Match.FULL for route in routes)
    }
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def _auth_problem(request: Request, exc: AuthError) -> ApiProblem:
    detail = str(exc)
    if exc.error == "invalid_token":
        quoted = detail.replace('"', "'").replace("\\", "/")
        challenge = f'Bearer realm="istmo", error="invalid_token", error_description="{quoted}"'
        return ApiProblem(
            401, exc.code, detail, client=exc.client, headers={"WWW-Authenticate": challenge}
        )
    status = 401 if exc.error == "invalid_client" else 400
    if exc.error == "insufficient_scope":
        status = 403
    return ApiProblem(
        status,
        exc.code,
        detail,
        client=exc.client,
        extra={"error": exc.error, "error_description": detail},
        audit=True,  # a refused token request is an authentication event, 400 or 401
    )


def _istmo_problem(exc: IstmoError) -> ApiProblem:
    message = str(exc)
    if isinstance(exc, NotFound):
        return ApiProblem(404, exc.code, message)
    if isinstance(exc, PolicyDenied):
        return ApiProblem(403, exc.code, message, audit_as="request.rejected")
    if isinstance(exc, EnvelopeError):
        return ApiProblem(413 if exc.code == "oversized" else 422, exc.code, message)
    if isinstance(exc, BusUnavailable | AuditStoreError):
        return ApiProblem(503, exc.code, message)
    if isinstance(exc, ConfigError):
        log.error("configuration fault while answering: %s", exc)
        return ApiProblem(500, "internal", "the broker failed to answer; it is logged")
    return ApiProblem(400, exc.code, message)


# ---------------------------------------------------------------------- public
def _add_public_routes(app: FastAPI, state: ApiState) -> None:
    registry, directory = state.registry, state.directory

    @app.get("/healthz", summary="The process is alive", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="NATS and the database are reachable",
        tags=["health"],
        responses={503: {"description": "Not ready: NATS or the database is down"}},
    )
    def readyz(response: Response) -> dict[str, str]:
        bus = "ok" if state.bus_ok() else "down"
        try:
            registry.is_empty()
            db = "ok"
        except AuditStoreError:  # down or refusing: not ready, and no traceback per probe
            log.warning("readiness: the database does not answer")
            db = "down"
        except Exception:  # any other failure is a bug: not ready, and its traceback kept
            log.exception("readiness: the database check failed")
            db = "down"
        if "down" in (bus, db):
            response.status_code = 503
        return {"nats": bus, "database": db}

    @app.get(
        "/metrics",
        summary="Prometheus metrics: requests, latencies, tokens issued, refusals",
        tags=["health"],
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    def metrics() -> Response:
        return state.metrics.exposition()

    @app.get(
        "/v1/directory",
        summary="The directory, signed by the broker's directory key",
        description=(
            "The whole directory, or only the agencies named by `agency` (repeat it, at most "
            "500). Verify it against the directory key pinned at enrolment."
        ),
        tags=["directory"],
        response_class=Response,
        responses={
            200: {
                "description": "A SignedExcerpt (schemas/json/signed-excerpt.schema.json)",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/SignedExcerpt"}}
                },
            },
            **problem_responses(422),
        },
    )
    def get_directory(
        agency: Annotated[
            list[Annotated[str, StringConstraints(pattern=AGENCY_ID_PATTERN)]] | None,
            Query(max_length=500, description="An agency id; repeat for more"),
        ] = None,
    ) -> Response:
        try:
            ids = [parse_agency_id(a) for a in agency] if agency else list(directory.records)
        except EnvelopeError as exc:  # its message quotes the value; ours does not
            raise ApiProblem(422, "bad_agency_id", "agency: use 3-32 of a-z, 0-9 and '-'") from exc
        excerpt = state.queries.directory_excerpt(list(ids), int(time.time()))
        body = canonical_json(excerpt.model_dump(mode="json"))
        return Response(content=body, media_type="application/json")

    @app.get("/v1/policy", summary="Active policy and directory versions", tags=["policy"])
    def get_policy() -> dict[str, object]:
        return {
            "policy_version": directory.bundle.version,
            "files": list(directory.bundle.files),
            "directory_version": directory.version,
        }


# ---------------------------------------------------------------------- token
_TOKEN_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": ["grant_type", "client_assertion_type", "client_assertion"],
                    "properties": {
                        "grant_type": {"type": "string", "enum": ["client_credentials"]},
                        "client_assertion_type": {"type": "string", "enum": [ASSERTION_TYPE]},
                        "client_assertion": {
                            "type": "string",
                            "maxLength": 4096,
                            "description": "A JWT signed with EdDSA by the client's key: "
                            "iss = sub = client id, aud = this endpoint's URL, exp - iat "
                            "<= 300 s, a fresh jti",
                        },
                        "scope": {
                            "type": "string",
                            "description": "Space-separated subset of the client's scopes",
                        },
                        "client_id": {"type": "string"},
                    },
                }
            }
        },
    }
}


def _parse_form(request: Request, body: bytes) -> dict[str, str]:
    def bad(message: str) -> AuthError:
        return AuthError(message, error="invalid_request", code="invalid_request")

    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise bad("send the token request as application/x-www-form-urlencoded")
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=bool(body),
            max_num_fields=_MAX_FORM_FIELDS,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad("the form is not valid") from exc
    form: dict[str, str] = {}
    for key, value in pairs:
        if key in form:
            raise bad("a form field is sent more than once")  # RFC 6749 §3.2
        form[key] = value
    return form


def _add_token_route(app: FastAPI, state: ApiState) -> None:
    @app.post(
        TOKEN_PATH,
        summary="Get an access token (client credentials, private_key_jwt)",
        description=(
            "OAuth 2.0 client credentials grant; the client authenticates with a JWT "
            "assertion (RFC 7523) signed by its registered Ed25519 signing key (EdDSA). "
            "Access tokens last 5 minutes by default. Rate limited per agency."
        ),
        tags=["auth"],
        response_model=TokenResponse,
        responses=problem_responses(400, 401, 413, 429, 503),
        openapi_extra=_TOKEN_FORM,
    )
    def token(request: Request, body: Annotated[bytes, Depends(raw_body)]) -> JSONResponse:
        authority = state.authority()
        peer = peer_of(request.scope)
        state.limit(state.peer_limiter, f"peer:{peer}", "token_peer")
        now = int(time.time())
        form = _parse_form(request, body)
        client = authority.authenticate(form, now)
        state.limit(state.token_limiter, client.id, "token")
        issued = authority.issue(client, form.get("scope"), now)
        state.metrics.tokens.labels(client.kind).inc()
        log.info("token %s issued to %s (%s)", issued.token_id, client.id, issued.scope)
        return JSONResponse(
            issued.response(), headers={"Cache-Control": "no-store", "Pragma": "no-cache"}
        )


# ---------------------------------------------------------------------- agencies
BulletinIdPath = Annotated[
    str, Path(pattern=BULLETIN_ID_PATTERN, max_length=36, description="A bulletin id (UUIDv4)")
]


def _known_agency(state: ApiState, who: Caller) -> str:
    if who.id not in state.directory.records:
        # Active in the registry but not yet in this replica's directory snapshot.
        raise ApiProblem(403, "unknown_agency", f"unknown agency {who.id}", client=who.id)
    return who.id


def _add_agency_routes(app: FastAPI, state: ApiState) -> None:
    queries = state.queries

    @app.post(
        "/v1/recipients/resolve",
        summary="Who may receive a bulletin with these labels, with their keys",
        description=(
            "The publishing SDK's first step: the permitted recipients and their current "
            "encryption keys, in a directory excerpt signed by the directory key."
        ),
        tags=["bulletins"],
        response_model=ResolveAnswer,
        responses=problem_responses(*AUTHED),
        openapi_extra=json_body(ResolveRequest),
    )
    def resolve(
        who: Annotated[Caller, require("bulletins:publish")],
        body: Annotated[bytes, Depends(raw_body)],
    ) -> dict[str, Any]:
        agency = _known_agency(state, who)
        ask = parse_json(ResolveRequest, body, state.limits)
        return queries.resolve(agency, ask, int(time.time())).model_dump(mode="json")

    @app.post(
        "/v1/recipients/explain",
        summary="Who would receive a bulletin with these labels, and why not the others",
        tags=["bulletins"],
        response_model=ExplainAnswer,
        responses=problem_responses(*AUTHED),
        openapi_extra=json_body(ResolveRequest),
    )
    def explain(
        who: Annotated[Caller, require("bulletins:publish")],
        body: Annotated[bytes, Depends(raw_body)],
    ) -> dict[str, Any]:
        agency = _known_agency(state, who)
        ask = parse_json(ResolveRequest, body, state.limits)
        return queries.explain(agency, ask, int(time.time())).model_dump(mode="json")

    @app.get(
        "/v1/bulletins/{bulletin_id}/status",
        summary="The relay's verdict on one of your bulletins",
        description=(
            "Accepted (routed and denied recipients, with the deciding policies) or rejected "
            "(with the reason). A bulletin not yet decided, unknown, or another agency's is "
            "404, the same answer in all three cases."
        ),
        tags=["bulletins"],
        response_model=StatusAnswer,
        response_model_exclude_none=True,
        responses=problem_responses(404, *AUTHED),
    )
    def bulletin_status(
        bulletin_id: BulletinIdPath, who: Annotated[Caller, require("bulletins:read")]
    ) -> dict[str, Any]:
        answer = queries.status(who.id, bulletin_id)
        if isinstance(answer.root, StatusPending):
            raise NotFound("no such bulletin of yours")
        return answer.root.model_dump(mode="json")

    @app.get(
        "/v1/bulletins/{bulletin_id}/receipts",
        summary="Which routed recipients received one of your bulletins",
        description=(
            "Another agency's bulletin is 404, as a missing one is. With `signed=true`, "
            "each receipt whole (every field the recipient signed, its key id) with the "
            "envelope digest the broker recorded, for you to verify: a page of at most "
            f"{MAX_SIGNED_RECEIPTS} recipients; ask again with `after` set to `next` for the "
            "rest."
        ),
        tags=["bulletins"],
        response_model=ReceiptsAnswer | SignedReceiptsAnswer,
        responses=problem_responses(404, 422, *AUTHED),
    )
    def bulletin_receipts(
        bulletin_id: BulletinIdPath,
        who: Annotated[Caller, require("bulletins:read")],
        signed: Annotated[
            bool, Query(description="every receipt whole, to verify (SignedReceiptsReply)")
        ] = False,
        after: Annotated[
            str | None,
            Query(
                max_length=32,
                pattern=AGENCY_ID_PATTERN,
                description="with signed: the page after this recipient (the last `next`)",
            ),
        ] = None,
    ) -> dict[str, Any]:
        if not signed:
            if after is not None:
                # As a query that fails validation: not audited.
                raise ApiProblem(
                    422, "invalid_request", "after: pages the signed answer, add signed=true"
                )
            return queries.receipts(who.id, bulletin_id).model_dump(mode="json")
        return queries.signed_receipts(who.id, bulletin_id, after).model_dump(mode="json")
