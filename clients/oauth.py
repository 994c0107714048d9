"""OAuth 2.0 for the SDK: client assertions signed with the agency's own key, and an HTTP
helper that fetches, caches and sends access tokens.

The broker's token endpoint takes the client credentials grant with ``private_key_jwt``
(RFC 7523): a short JWT signed with EdDSA by the keystore's current Ed25519 signing key,
``iss`` = ``sub`` = the agency id, ``aud`` = the token endpoint's URL at the address the
client was given (the broker's public URL, or its loopback one on its own machine), a fresh
``jti``.
Signing a JWS is simple enough to do here with the keystore's key; verifying them is the
broker's job. Tokens are kept in memory only, until shortly before they expire.

    async with IstmoHttp("http://127.0.0.1:8844", load_keystore(path)) as api:
        answer = await api.post("/v1/recipients/explain", json={"labels": {...}})

Left to others: the NATS side of the SDK (``clients.sdk``), keystore files
(``clients.keystore``).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx

from schemas.errors import IstmoError
from schemas.keystore import KeystoreFile

__all__ = [
    "ASSERTION_TYPE",
    "TOKEN_PATH",
    "ApiError",
    "ApiUnavailable",
    "CachedToken",
    "IstmoHttp",
    "TokenRefused",
    "canonical_url",
    "client_assertion",
    "token_endpoint",
    "token_form",
    "waiting_out_rate_limits",
]

TOKEN_PATH = "/v1/token"  # noqa: S105  # a URL path, not a secret
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_S = 60
REFRESH_MARGIN_S = 30.0
# A 429 is asked again after its Retry-After, this many times at most, each wait at most
# RATE_LIMIT_MAX_WAIT_S (a longer one is the caller's to decide: the 429 is returned).
RATE_LIMIT_RETRIES = 8
RATE_LIMIT_MAX_WAIT_S = 10.0


async def waiting_out_rate_limits(
    send: Callable[[], Awaitable[httpx.Response]],
) -> httpx.Response:
    """``send()``'s response, sent again after the server's ``Retry-After`` while it
    answers 429 Too Many Requests (each wait at most ``RATE_LIMIT_MAX_WAIT_S``,
    ``RATE_LIMIT_RETRIES`` times); the last response otherwise, whatever its status."""
    response = await send()
    for _ in range(RATE_LIMIT_RETRIES):
        if response.status_code != 429:
            return response
        try:
            wait = float(response.headers.get("Retry-After", "1"))
        except ValueError:
            wait = 1.0
        if not 0 <= wait <= RATE_LIMIT_MAX_WAIT_S:
            return response
        await asyncio.sleep(max(wait, 0.1))
        response = await send()
    return response


class ApiError(IstmoError):
    """The API refused a request; ``code`` is the problem type's last segment."""

    default_code = "api_error"

    def __init__(self, message: str, *, code: str | None = None, status: int = 0) -> None:
        super().__init__(message, code=code)
        self.status = status


class TokenRefused(ApiError):
    """The token endpoint refused the client assertion or the scope asked for."""

    default_code = "token_refused"


class ApiUnavailable(IstmoError):
    """The HTTP API is not reachable or did not answer in time."""

    default_code = "api_unavailable"


def _b64u(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _segment(value: dict[str, Any]) -> str:
    return _b64u(json.dumps(value, separators=(",", ":"), sort_keys=True).encode())


def client_assertion(
    keystore: KeystoreFile, audience: str, *, now: int, lifetime_s: int = ASSERTION_LIFETIME_S
) -> str:
    """A client assertion (RFC 7523 §3) signed by the keystore's current signing key.

    Args:
        keystore: the agency's (or administrator's) keystore.
        audience: the token endpoint's URL, exactly as the broker names it.
        now: epoch seconds.
        lifetime_s: ``exp - iat``; the broker refuses more than 300.

    Returns:
        The compact JWS, a one-time credential (a fresh ``jti`` each call).
    """
    key = keystore.signing_key()
    header = {"alg": "EdDSA", "typ": "JWT", "kid": keystore.signing_keys[-1].kid}
    claims = {
        "iss": keystore.agency,
        "sub": keystore.agency,
        "aud": audience,
        "iat": now,
        "exp": now + lifetime_s,
        "jti": uuid.uuid4().hex,
    }
    signing_input = f"{_segment(header)}.{_segment(claims)}"
    return f"{signing_input}.{_b64u(key.sign(signing_input.encode('ascii')))}"


def canonical_url(base_url: str) -> str:
    """The API's URL in the form the broker names it (``ISTMO_PUBLIC_URL``'s): scheme and
    host in lower case, no default port, no trailing slash.
    ``https://Istmo.Example.org:443/`` -> ``https://istmo.example.org``."""
    parts = urlsplit(base_url.strip())
    scheme, host = parts.scheme.lower(), parts.hostname or ""
    try:
        port = parts.port
        host = f"[{ipaddress.IPv6Address(host).compressed}]" if ":" in host else host
    except ValueError:  # not a URL the broker names: left as given, the broker says why
        return base_url.rstrip("/")
    if port is not None and port != {"http": 80, "https": 443}.get(scheme):
        host += f":{port}"
    return f"{scheme}://{host}{parts.path.rstrip('/')}"


def token_endpoint(base_url: str) -> str:
    """The token endpoint's URL, the audience of client assertions, from the API's URL as
    given: ``https://Istmo.Example.org/`` -> ``https://istmo.example.org/v1/token``."""
    return canonical_url(base_url) + TOKEN_PATH


def token_form(
    keystore: KeystoreFile, audience: str, *, now: int, scope: str | None = None
) -> dict[str, str]:
    """The form of a token request (client credentials grant, private_key_jwt)."""
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client_assertion(keystore, audience, now=now),
    }
    if scope is not None:
        form["scope"] = scope
    return form


@dataclass(frozen=True)
class CachedToken:
    """An access token and when to stop using it (``time.monotonic`` seconds)."""

    value: str = field(repr=False)
    scope: str
    refresh_at: float

    def fresh(self, now: float) -> bool:
        return now < self.refresh_at


def _problem(response: httpx.Response) -> tuple[str, str]:
    """(code, detail) of a problem response, or of whatever came back instead."""
    try:
        body = response.json()
    except ValueError:
        return "http_error", f"HTTP {response.status_code}"
    if not isinstance(body, dict):
        return "http_error", f"HTTP {response.status_code}"
    code = str(body.get("type", "")).rsplit("/", 1)[-1] or str(body.get("error", "http_error"))
    return code[:60], str(body.get("detail", f"HTTP {response.status_code}"))[:300]


class IstmoHttp:
    """Authenticated calls to the Istmo HTTP API as one agency or administrator.

    Args:
        base_url: the API's base URL, e.g. ``http://127.0.0.1:8844``.
        keystore: whose key signs the client assertions.
        scope: the scopes to ask for (space-separated); default: all the client has.
        audience: the token endpoint URL the broker expects; default
            ``token_endpoint(base_url)``: ``base_url`` followed by ``/v1/token``.
        client: an ``httpx.AsyncClient`` to use (its ``base_url`` is ignored); one is
            made otherwise.
        timeout: seconds for each HTTP request.
    """

    def __init__(
        self,
        base_url: str,
        keystore: KeystoreFile,
        *,
        scope: str | None = None,
        audience: str | None = None,
        client: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.keystore = keystore
        self.scope = scope
        self.audience = audience or token_endpoint(self.base_url)
        self._own_client = client is None
        self._http = client or httpx.AsyncClient(timeout=timeout)
        self._token: CachedToken | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"IstmoHttp({self.base_url!r}, agency={self.keystore.agency!r})"

    async def __aenter__(self) -> IstmoHttp:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_client:
            await self._http.aclose()

    async def token(self) -> str:
        """A valid access token: the cached one, or a new one shortly before it expires.

        Raises:
            TokenRefused: the broker refused the assertion or the scope.
            ApiUnavailable: the API did not answer.
        """
        async with self._lock:
            if self._token is None or not self._token.fresh(time.monotonic()):
                self._token = await self._fetch()
            return self._token.value

    async def _fetch(self) -> CachedToken:
        def ask() -> Awaitable[httpx.Response]:
            # A fresh assertion each time: the broker may hold its id as used.
            form = token_form(self.keystore, self.audience, now=int(time.time()), scope=self.scope)
            return self._send("POST", self.base_url + TOKEN_PATH, data=form)

        asked = time.monotonic()
        # Commands that run one after another each ask for a token: a burst the token
        # endpoint's rate limit answers with a short Retry-After.
        response = await waiting_out_rate_limits(ask)
        if response.status_code != 200:
            code, detail = _problem(response)
            raise TokenRefused(detail, code=code, status=response.status_code)
        body = response.json()
        lifetime = float(body["expires_in"])
        margin = min(REFRESH_MARGIN_S, lifetime / 4)
        return CachedToken(str(body["access_token"]), str(body["scope"]), asked + lifetime - margin)

    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiUnavailable(f"the Istmo API at {self.base_url} did not answer") from exc

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send ``method path`` with a bearer token; one retry with a new token on 401
        (the cached one may have been cut short). Returns the response, whatever its status.
        """
        extra = dict(kwargs.pop("headers", {}))
        url = self.base_url + path
        for attempt in (1, 2):
            headers = {**extra, "Authorization": f"Bearer {await self.token()}"}
            response = await self._send(method, url, headers=headers, **kwargs)
            if response.status_code != 401 or attempt == 2:
                return response
            self._token = None
        raise RuntimeError("unreachable")  # the loop returns on its second pass

    async def get(self, path: str, **params: Any) -> Any:
        """GET ``path`` and return its JSON body.

        Raises:
            ApiError: any answer but 200, with the problem's reason as ``code``.
        """
        return self._json(await self.request("GET", path, params=params or None))

    async def post(self, path: str, json: Any) -> Any:
        """POST ``json`` to ``path`` and return the JSON answer (``ApiError`` otherwise)."""
        return self._json(await self.request("POST", path, json=json))

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        if not 200 <= response.status_code < 300:
            code, detail = _problem(response)
            raise ApiError(detail, code=code, status=response.status_code)
        return response.json()
