"""What stands around every HTTP request: limits, problems, security headers, metrics.

``Guard`` is the outermost ASGI layer: it refuses an oversized body with 413 before the
app reads a byte of it, sets the security headers on every response, counts and times
requests for ``/metrics``, and turns any unexpected exception into a bare 500 problem (the
traceback goes to the log, without the exception's message, never to the client).
It also answers only to the host names it was given (``allowed_hosts``): a request whose
``Host`` names anything else (a DNS-rebinding page in an administrator's browser sends its
own name) is refused with 400 before any route runs. ``problem`` renders RFC 9457
``application/problem+json`` bodies; ``RateLimiter`` is a
token bucket per key (agency, client address).

Left to others: which status a fault gets and what is audited (``broker.api.app``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "LOOPBACK_HOSTS",
    "PROBLEM_BASE_URI",
    "ApiLimits",
    "ForeignHostSink",
    "Guard",
    "Metrics",
    "Problem",
    "RateLimiter",
    "host_name",
    "peer_of",
    "problem",
]

log = logging.getLogger("istmo.api")

PROBLEM_BASE_URI = "https://istmo.example/problems/"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_MAX_HOST_CHARS = 255
PROBLEM_MEDIA_TYPE = "application/problem+json"
METRICS_MEDIA_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# JSON never runs in a browser: forbid everything. The interactive docs load scripts.
_STRICT_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
_DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})
_COMMON_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-resource-policy", b"same-origin"),
)


@dataclass(frozen=True)
class ApiLimits:
    """Every bound of the HTTP API, with units in the names.

    Attributes:
        max_body_bytes: request body limit (413 above it), policy uploads excepted.
        max_policy_body_bytes: body limit for ``/v1/policy/*`` (candidate policy files).
        max_page_size: rows per page of a listing; a larger ``limit`` is capped.
        max_simulate_bulletins: past bulletins a policy simulation may replay.
        token_rate_per_min: token requests per minute per agency (and burst below).
        token_burst: token requests an agency may make at once.
        peer_token_rate_per_min: token requests per minute per client address, counted
            before the assertion is checked (so a flood of bad assertions is cheap).
        api_rate_per_s: authenticated requests per second per caller (S-21).
        api_burst: authenticated requests a caller may make at once.
        expensive_rate_per_min: policy validate/explain/simulate calls per minute.
        refusal_rate_per_min: refused requests (401, 403, audited 4xx, foreign host) per
            minute per client address; past it and ``refusal_burst``, a refusal is
            answered 429.
        refusal_burst: refusals a client address may collect at once.
        refusal_window_s: the audit log keeps the first refusal of each kind per client
            address and window, and one summary with the count of the others
            (``broker.api.refusals``).
    """

    max_body_bytes: int = 64 * 1024
    max_policy_body_bytes: int = 512 * 1024
    max_page_size: int = 500
    max_simulate_bulletins: int = 1000
    token_rate_per_min: float = 30
    token_burst: int = 10
    peer_token_rate_per_min: float = 600
    api_rate_per_s: float = 50
    api_burst: int = 100
    expensive_rate_per_min: float = 30
    expensive_burst: int = 5
    refusal_rate_per_min: float = 60
    refusal_burst: int = 20
    refusal_window_s: int = 60


class Problem(BaseModel):
    """An RFC 9457 problem: ``type`` names the reason, ``detail`` says it for this case.

    Token endpoint problems also carry RFC 6749's ``error`` and ``error_description``.
    """

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    error: str | None = None
    error_description: str | None = None


_TITLES = {
    400: "Bad request",
    401: "Not authenticated",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Request not valid",
    429: "Too many requests",
    500: "Internal error",
    503: "Service unavailable",
}


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> JSONResponse:
    """An ``application/problem+json`` response; ``code`` becomes the type URI's tail."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE_URI + code,
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail[:300],
    }
    body.update(extra or {})
    return JSONResponse(
        body, status_code=status, headers=dict(headers or {}), media_type=PROBLEM_MEDIA_TYPE
    )


class RateLimiter:
    """Token buckets by key: ``rate_per_s`` refill, ``burst`` capacity.

    Thread-safe (sync endpoints run in a pool). Keeps at most ``max_keys`` buckets, the
    least recently used dropped first, so random keys cannot exhaust memory.
    """

    def __init__(self, rate_per_s: float, burst: int, *, max_keys: int = 10_000) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("a rate limit needs a positive rate and a burst of at least 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str, now: float | None = None) -> int | None:
        """Spend one token of ``key``'s bucket.

        Returns:
            None if allowed, else the whole seconds to wait (for ``Retry-After``).
        """
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.pop(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate_per_s)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        if allowed:
            return None
        return max(1, math.ceil((1.0 - tokens) / self.rate_per_s))


class Metrics:
    """The app's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "istmo_http_requests",
            "HTTP requests by route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "istmo_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.tokens = Counter(
            "istmo_tokens_issued", "Access tokens issued", ["kind"], registry=self.registry
        )
        self.refusals = Counter(
            "istmo_auth_refusals",
            "Refused authentications and authorizations by status and reason",
            ["status", "reason"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "istmo_rate_limited",
            "Requests refused by a rate limit",
            ["limit"],
            registry=self.registry,
        )

    def exposition(self) -> Response:
        return Response(generate_latest(self.registry), media_type=METRICS_MEDIA_TYPE)


class _BodyTooLarge(Exception):
    pass


# Told of a request refused for its Host (its ASGI scope); answers the seconds to wait if
# the client address is over its refusal rate (then the answer is 429), else None.
ForeignHostSink = Callable[[Scope], int | None]


class Guard:
    """The outermost ASGI layer (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        limits: ApiLimits,
        metrics: Metrics,
        allowed_hosts: frozenset[str] = LOOPBACK_HOSTS,
        foreign_host: ForeignHostSink | None = None,
    ) -> None:
        self.app = app
        self.limits = limits
        self.metrics = metrics
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)
        self.foreign_host = foreign_host

    def _body_limit(self, path: str) -> int:
        if path.startswith("/v1/policy/"):
            return self.limits.max_policy_body_bytes
        return self.limits.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        limit = self._body_limit(path)
        started = time.perf_counter()
        status = [500]
        response_started = [False]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_started[0] = True
                status[0] = int(message["status"])
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _OURS]
                headers += _COMMON_HEADERS
                if path not in _DOCS_PATHS:
                    headers.append((b"content-security-policy", _STRICT_CSP.encode()))
                if path != "/metrics":
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        received = [0]

        async def receive_limited() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                received[0] += len(message.get("body", b""))
                if received[0] > limit:
                    raise _BodyTooLarge
            return message

        try:
            if host_name(scope) not in self.allowed_hosts:
                # Never echo the name: the refusal says what to configure, not what came.
                log.warning("refused a request for a host name this broker does not serve")
                wait = self.foreign_host(scope) if self.foreign_host else None
                await (
                    _rate_limited(wait)
                    if wait is not None
                    else problem(
                        400,
                        "unknown_host",
                        "this broker does not answer to that host name "
                        "(an operator adds names with ISTMO_ALLOWED_HOSTS)",
                    )
                )(scope, receive, send_with_headers)
                return
            declared = _content_length(scope)
            if declared is not None and declared > limit:
                # 413 before the app runs: nothing of the body is read or parsed.
                await _too_large(limit)(scope, receive, send_with_headers)
            else:
                await self.app(scope, receive_limited, send_with_headers)
        except _BodyTooLarge:
            if not response_started[0]:
                await _too_large(limit)(scope, receive, send_with_headers)
        except Exception as exc:  # the last line of defence: no trace reaches a client
            frames = "".join(traceback.format_tb(exc.__traceback__))
            log.error(
                "unhandled %s on %s %s\n%s", type(exc).__name__, scope["method"], path, frames
            )
            if not response_started[0]:
                await problem(500, "internal", "the broker failed to answer; it is logged")(
                    scope, receive, send_with_headers
                )
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            method = scope.get("method", "?")
            self.metrics.requests.labels(method, template, str(status[0])).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - started)


def peer_of(scope: Scope) -> str:
    """The client address a request came from, as the ASGI server saw it: the TCP peer,
    or, behind a reverse proxy the server was told to trust (``ISTMO_TRUSTED_PROXIES``),
    the address that proxy forwarded; ``unknown`` when the server gave none."""
    client = scope.get("client")
    return str(client[0])[:64] if client else "unknown"


def host_name(scope: Scope) -> str | None:
    """The host name of the request's ``Host`` header, lower case, without the port
    (``[::1]:8844`` -> ``::1``); None when it is missing, repeated or malformed."""
    values: list[bytes] = [v for k, v in scope.get("headers", []) if k.lower() == b"host"]
    if len(values) != 1 or len(values[0]) > _MAX_HOST_CHARS:
        return None
    try:
        host = values[0].decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    if host.startswith("["):  # an IPv6 literal, maybe with a port
        end = host.find("]")
        name, rest = host[1:end], host[end + 1 :]
        if end < 0 or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return name
    name, _, port = host.partition(":")
    if not name or (port and not port.isdigit()) or ":" in port:
        return None
    return name


_OURS = frozenset(
    {b"x-content-type-options", b"content-security-policy", b"cache-control"}
    | {k for k, _ in _COMMON_HEADERS}
)


def _rate_limited(wait: int) -> JSONResponse:
    return problem(
        429,
        "rate_limited",
        f"too many refused requests; retry in {wait} s",
        headers={"Retry-After": str(wait)},
    )


def _too_large(limit: int) -> JSONResponse:
    return problem(413, "body_too_large", f"the request body is over the limit of {limit} bytes")


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
