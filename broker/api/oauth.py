"""OAuth 2.0 for the HTTP API: client authentication, access tokens, administrators.

The token endpoint's core: the client credentials grant (RFC 6749 §4.4) with clients
authenticating by ``private_key_jwt`` (RFC 7523 §2.2): a JWT signed with the caller's own
Ed25519 signing key, the one registered in the directory. authlib's RFC 7523 client
assertion authenticator does the standard claim checks; this module hardens it (EdDSA only,
an exact string audience: the token endpoint at the public URL or at loopback, short
lifetimes, a persistent ``jti`` store) and issues short
access tokens (RFC 9068 profile, ``typ: at+jwt``) signed by the broker's token key, which
is separate from the directory and log keys. JWS is joserfc's, the JOSE library authlib
itself uses (``authlib.jose`` is deprecated).

Callers are agencies (directory rows) and administrators (``broker.directory.admins``): Ed25519
keys, the same keystore file format. Scopes follow from who the caller is:

    agency (ministry, regional centre)  bulletins:publish bulletins:read
    agency of the ``auditor`` sector    audit:read
    administrator                       admin

Left to others: HTTP (``broker.api.app`` picks status codes, renders problems, rate limits and
audits refusals), enrolling agencies and rotating their keys (the lifecycle commands).
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from authlib.oauth2.rfc6749 import (  # type: ignore[import-untyped]  # authlib ships no types
    InvalidClientError,
)
from authlib.oauth2.rfc7523 import (  # type: ignore[import-untyped]  # authlib ships no types
    JWTBearerClientAssertion,
)
from joserfc import jwt
from joserfc.errors import BadSignatureError, ExpiredTokenError, JoseError
from joserfc.jwa import EdDSAAlgorithm
from joserfc.jwk import OKPKey
from joserfc.jws import JWSRegistry
from sqlalchemy import delete
from sqlmodel import Field, SQLModel

from broker.audit import events
from broker.directory.admins import AdminRow
from broker.files import signing_key_file
from broker.store.registry import AgencyRow, Registry
from schemas.canonical import b64d
from schemas.errors import ConfigError, EnvelopeError, IstmoError
from schemas.ids import AGENCY_ID_PATTERN
from schemas.keys import SigningKey, VerifyKey

__all__ = [
    "ADMIN_SCOPES",
    "AGENCY_SCOPES",
    "ASSERTION_TYPE",
    "AUDITOR_SCOPES",
    "SCOPES",
    "TOKEN_PATH",
    "AssertionJtiRow",
    "AuthError",
    "Caller",
    "IssuedToken",
    "TokenAuthority",
    "load_token_key",
]

TOKEN_PATH = "/v1/token"  # noqa: S105  # a URL path, not a secret
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
GRANT_TYPE = "client_credentials"
SCOPES = ("bulletins:publish", "bulletins:read", "audit:read", "admin")
AGENCY_SCOPES = frozenset({"bulletins:publish", "bulletins:read"})
AUDITOR_SCOPES = frozenset({"audit:read"})
ADMIN_SCOPES = frozenset({"admin"})
DEFAULT_TOKEN_LIFETIME_S = 300
# An hour, as standard clients sign them (authlib's default): a jti is spent on first use
# and remembered until its assertion expires, so a longer life opens no replay window.
MAX_ASSERTION_LIFETIME_S = 3600
CLOCK_SKEW_S = 30
MAX_JWT_CHARS = 4096
MAX_JTI_CHARS = 128
_ASSERTION_ALGS = ("EdDSA", "Ed25519")
_EMBEDDED_KEY_HEADERS = ("jwk", "jku", "x5u", "x5c", "x5t", "x5t#S256")
_ID = re.compile(AGENCY_ID_PATTERN)
_PRUNE_EVERY_S = 60

OAuthError = Literal[
    "invalid_request",
    "invalid_client",
    "unsupported_grant_type",
    "invalid_scope",
    "invalid_token",
    "insufficient_scope",
]
ClientKind = Literal["agency", "admin"]


class AssertionJtiRow(SQLModel, table=True):
    """A client assertion already used, kept until it would have expired anyway."""

    __tablename__ = "assertion_jti"
    client: str = Field(primary_key=True, max_length=32)
    jti: str = Field(primary_key=True, max_length=MAX_JTI_CHARS)
    expires_at: int = Field(index=True)


class AuthError(IstmoError):
    """A refused token request or access token.

    Attributes:
        error: the RFC 6749 §5.2 / RFC 6750 §3.1 error code (the HTTP shell maps it to a
            status).
        code: the precise reason, for the audit log and the problem type.
        client: the client id the request claimed, if it was a well-formed id.
    """

    default_code = "unauthenticated"

    def __init__(
        self, message: str, *, error: OAuthError, code: str, client: str | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.error = error
        self.client = client


@dataclass(frozen=True)
class Client:
    """An authenticated client of the token endpoint."""

    id: str
    kind: ClientKind
    scopes: frozenset[str]
    kid: str


@dataclass(frozen=True)
class Caller:
    """The holder of a valid access token, as the API sees it."""

    id: str
    kind: ClientKind
    scopes: frozenset[str]
    token_id: str
    expires_at: int


@dataclass(frozen=True)
class IssuedToken:
    """A token response (RFC 6749 §5.1). ``access_token`` is a secret: never logged."""

    access_token: str = field(repr=False)
    expires_in: int
    scope: str
    token_id: str
    client: str

    def response(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "scope": self.scope,
        }


class _EdDSA(EdDSAAlgorithm):
    # joserfc warns that RFC 9864 deprecates the name "EdDSA" because it does not name a
    # curve. Here it cannot mean Ed448: every key we verify with is an Ed25519 key we built.
    security_warning = ""  # falsy: no warning

    def __init__(self, name: str) -> None:
        self.name = name


class _Ed25519Registry(JWSRegistry):
    """JWS algorithms: EdDSA over Ed25519 and nothing else (no "none", no HMAC, no RSA:
    an HS256 token "signed" with a public key can never verify, CVE-2024-37568)."""

    algorithms = {name: _EdDSA(name) for name in _ASSERTION_ALGS}  # noqa: RUF012  # joserfc's API
    recommended: list[str] = []  # noqa: RUF012  # joserfc's API: nothing is implied


_REGISTRY = _Ed25519Registry(algorithms=_ASSERTION_ALGS)


def _b64u(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _public_jwk(key: VerifyKey) -> OKPKey:
    return OKPKey.import_key({"kty": "OKP", "crv": "Ed25519", "x": _b64u(key.public)})


def _private_jwk(key: SigningKey) -> OKPKey:
    x, d = _b64u(key.verify_key.public), _b64u(key.private)
    return OKPKey.import_key({"kty": "OKP", "crv": "Ed25519", "x": x, "d": d})


def _int_claim(claims: Mapping[str, Any], name: str) -> int | None:
    value = claims.get(name)
    return value if type(value) is int else None  # bool is an int in Python, not in JSON


class _ClientAssertion(JWTBearerClientAssertion):  # type: ignore[misc]  # authlib is untyped
    """authlib's RFC 7523 checks, hardened. One instance per request (it holds ``now``)."""

    def __init__(self, authority: TokenAuthority, client: str, now: int) -> None:
        super().__init__(validate_jti=True, leeway=CLOCK_SKEW_S)
        self._authority = authority
        self._client = client
        self._now = now
        self._replayed = False

    def refuse(self, code: str, message: str) -> AuthError:
        return AuthError(message, error="invalid_client", code=code, client=self._client)

    def get_audiences(self) -> list[str]:
        return list(self._authority.audiences)

    def process_assertion_claims(self, assertion: str, resolve_key: list[OKPKey]) -> dict[str, Any]:
        """Verify the signature with any of the client's usable keys, then the claims."""
        claims: dict[str, Any] | None = None
        for key in resolve_key:
            try:
                claims = dict(jwt.decode(assertion, key, registry=_REGISTRY).claims)
                break
            except BadSignatureError:
                continue
            except (JoseError, ValueError) as exc:
                raise self.refuse(
                    "malformed_assertion", "the client assertion is not a valid JWS"
                ) from exc
        if claims is None:
            raise self.refuse(
                "bad_signature", "the client assertion is not signed by a key of its client"
            )
        self.verify_claims(claims)
        return claims

    def verify_claims(self, claims: Mapping[str, Any]) -> None:
        """Our checks, then authlib's (iss = sub, aud, exp, jti), the jti store last."""
        now = self._now
        # 1. iss and sub name the client (authlib checks they are equal).
        if claims.get("iss") != self._client:
            raise self.refuse("issuer_mismatch", "iss and sub must both be the client id")
        # 2. aud is one string, exactly the token endpoint's URL: at the public URL, or at
        #    loopback (an array is refused too; so are the bare issuer and any other URL).
        aud = claims.get("aud")
        audiences = self._authority.audiences
        if not isinstance(aud, str) or aud not in audiences:
            raise self.refuse("audience_mismatch", f"aud must be exactly {' or '.join(audiences)}")
        # 3. exp and iat are integers; the assertion lives at most an hour.
        exp, iat = _int_claim(claims, "exp"), _int_claim(claims, "iat")
        if exp is None or iat is None:
            raise self.refuse("missing_claim", "exp and iat must be integer NumericDates")
        if not 0 < exp - iat <= MAX_ASSERTION_LIFETIME_S:
            raise self.refuse(
                "assertion_lifetime",
                f"exp - iat is {exp - iat} s; it must be 1 to {MAX_ASSERTION_LIFETIME_S} s",
            )
        # 4. Not issued in the future, not expired, not before its nbf (30 s of skew).
        if iat > now + CLOCK_SKEW_S:
            raise self.refuse("issued_in_future", f"iat is {iat - now} s in the future")
        if exp + CLOCK_SKEW_S <= now:
            raise self.refuse("assertion_expired", f"the assertion expired {now - exp} s ago")
        nbf = _int_claim(claims, "nbf")
        if "nbf" in claims and (nbf is None or nbf > now + CLOCK_SKEW_S):
            raise self.refuse("not_yet_valid", "nbf is in the future")
        # 5. A jti we can store.
        jti = claims.get("jti")
        if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_CHARS:
            raise self.refuse("missing_claim", f"jti must be a string of 1 to {MAX_JTI_CHARS}")
        # 6. authlib: essential claims, aud among the audiences, exp, sub = iss, then
        #    validate_jti (below), which spends the jti only once everything else passed.
        try:
            super().verify_claims(claims)
        except InvalidClientError as exc:
            if self._replayed:
                raise self.refuse("replayed_jti", "this client assertion was used before") from exc
            raise self.refuse("invalid_assertion", str(exc.description)[:200]) from exc

    def validate_jti(self, claims: Mapping[str, Any], jti: str) -> bool:
        fresh = self._authority._spend_jti(self._client, jti, int(claims["exp"]), self._now)
        self._replayed = not fresh
        return fresh


class TokenAuthority:
    """Authenticates clients, issues access tokens and verifies them.

    Args:
        registry: agencies, their keys, administrators and spent assertion ids.
        key: the broker's token signing key (``load_token_key``).
        issuer: the URL users reach the API at (``Settings.base_url``: the public URL,
            e.g. ``https://istmo.example.org``, else the loopback one); access tokens name
            it as ``iss`` and ``aud``, and client assertions name ``issuer + "/v1/token"``
            as their audience.
        local_url: the loopback URL the API listens at, when ``issuer`` is a public URL:
            assertions naming ``local_url + "/v1/token"`` are accepted too, so that tools
            on the broker's machine keep working. No other audience ever is.
        lifetime_s: access token lifetime.
    """

    def __init__(
        self,
        registry: Registry,
        key: SigningKey,
        *,
        issuer: str,
        local_url: str | None = None,
        lifetime_s: int = DEFAULT_TOKEN_LIFETIME_S,
    ) -> None:
        if not 10 <= lifetime_s <= 3600:
            raise ValueError("access token lifetime must be 10 s to 1 h")
        self.registry = registry
        self.issuer = issuer.rstrip("/")
        self.token_url = self.issuer + TOKEN_PATH
        # The exact audiences a client assertion may name, the issuer's first.
        local = self.token_url if local_url is None else local_url.rstrip("/") + TOKEN_PATH
        self.audiences: tuple[str, ...] = tuple(dict.fromkeys((self.token_url, local)))
        self.lifetime_s = lifetime_s
        self._key = key
        self._jwk = _private_jwk(key)
        self._public = _public_jwk(key.verify_key)
        self.kid = key.verify_key.kid
        self._last_prune = 0

    def __repr__(self) -> str:
        return f"TokenAuthority(issuer={self.issuer!r}, kid={self.kid!r})"

    # ------------------------------------------------------------------ token endpoint
    def authenticate(self, form: Mapping[str, str], now: int) -> Client:
        """Check a token request's grant and client assertion.

        Args:
            form: the request's form fields (each present once).
            now: epoch seconds.

        Raises:
            AuthError: ``invalid_request``, ``unsupported_grant_type`` or
                ``invalid_client``, with the precise reason in ``code``.
        """
        # 1. The grant and the client authentication method.
        if form.get("grant_type") != GRANT_TYPE:
            raise AuthError(
                "grant_type must be client_credentials",
                error="unsupported_grant_type" if "grant_type" in form else "invalid_request",
                code="unsupported_grant_type",
            )
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise AuthError(
                f"client_assertion_type must be {ASSERTION_TYPE}",
                error="invalid_request",
                code="unsupported_client_auth",
            )
        assertion = form.get("client_assertion", "")
        if not 0 < len(assertion) <= MAX_JWT_CHARS or assertion.count(".") != 2:
            raise AuthError(
                "client_assertion must be a compact JWS",
                error="invalid_client",
                code="malformed_assertion",
            )
        # 2. Header and claims, unverified, only to choose the key (authlib's parser).
        try:
            header, claims = JWTBearerClientAssertion().extract_assertion(assertion)
        except InvalidClientError as exc:
            raise AuthError(
                "the client assertion is not a valid JWS",
                error="invalid_client",
                code="malformed_assertion",
            ) from exc
        sub = claims.get("sub")
        client_id = sub if isinstance(sub, str) and _ID.fullmatch(sub) else None
        refuse = _Refuser(client_id)
        # 3. EdDSA only, checked before any key is touched: never "none", HMAC or RSA.
        if header.get("alg") not in _ASSERTION_ALGS:
            raise refuse("alg_not_allowed", "the client assertion must be signed with EdDSA")
        if any(h in header for h in _EMBEDDED_KEY_HEADERS) or "crit" in header:
            raise refuse("header_not_allowed", "keys are never taken from the assertion")
        if header.get("typ") not in (None, "JWT", "jwt"):
            raise refuse("header_not_allowed", "the assertion's typ must be JWT")
        # 4. A known, active client, named the same way in the form (if at all).
        if client_id is None:
            raise refuse("unknown_client", "sub must be a client id")
        if form.get("client_id", client_id) != client_id:
            raise refuse("client_id_mismatch", "client_id and the assertion's sub differ")
        kind, scopes, keys = self._client_keys(client_id, now)
        # 5. The signing key: the one named by kid, or any usable key of the client.
        kid = header.get("kid")
        if kid is not None:
            if not isinstance(kid, str) or kid not in keys:
                raise refuse("unknown_key", "kid is not a usable key of the client")
            keys = {kid: keys[kid]}
        # 6. Signature, then claims and the jti (authlib, hardened).
        check = _ClientAssertion(self, client_id, now)
        check.process_assertion_claims(assertion, list(keys.values()))
        used = kid if isinstance(kid, str) else "any"
        return Client(id=client_id, kind=kind, scopes=scopes, kid=used)

    def _client_keys(
        self, client_id: str, now: int
    ) -> tuple[ClientKind, frozenset[str], dict[str, OKPKey]]:
        refuse = _Refuser(client_id)
        agency = self.registry.agency(client_id)
        admin = self._admin(client_id)
        if agency is not None and admin is not None:
            raise refuse("ambiguous_client", "the client is both an agency and an administrator")
        if admin is not None:
            if admin.status != "active":
                raise refuse(f"client_{admin.status}"[:40], f"the client is {admin.status}")
            return "admin", ADMIN_SCOPES, {admin.kid: _public_jwk(_verify_key(admin.public))}
        if agency is None:
            raise refuse("unknown_client", "unknown client")
        if agency.status != "active":
            raise refuse(f"client_{agency.status}"[:40], f"the client is {agency.status}")
        keys = {
            k.kid: _public_jwk(_verify_key(k.public))
            for k in self.registry.signing_keys(client_id)
            if k.revoked_at is None or k.revoked_at > now
        }
        if not keys:
            raise refuse("no_usable_key", "the client has no unrevoked signing key")
        return "agency", _scopes_for(agency), keys

    def _admin(self, admin_id: str) -> AdminRow | None:
        with self.registry.session() as s:
            return s.get(AdminRow, admin_id)

    def _spend_jti(self, client: str, jti: str, exp: int, now: int) -> bool:
        """Record ``jti`` as used; False if it was used before (survives restarts).

        Raises:
            AuditStoreError: the database refused.
        """
        row = {"client": client, "jti": jti, "expires_at": exp + CLOCK_SKEW_S}
        table = AssertionJtiRow.__table__  # type: ignore[attr-defined]  # sqlmodel table
        with self.registry.begin() as conn:
            if now - self._last_prune >= _PRUNE_EVERY_S:
                # A spent jti whose assertion has expired cannot come back: forget it.
                conn.execute(delete(table).where(table.c.expires_at < now))
                self._last_prune = now
            new = self.registry.insert_new(table).values(**row).returning(table.c.jti)
            return conn.execute(new).first() is not None

    def issue(self, client: Client, scope: str | None, now: int) -> IssuedToken:
        """Issue an access token for ``client``, for ``scope`` or all its scopes.

        Raises:
            AuthError: ``invalid_scope`` when ``scope`` asks for more than the client has.
            AuditStoreError: the issue could not be audited (then no token is issued).
        """
        if scope is None:
            granted = client.scopes
        else:
            asked = frozenset(scope.split(" "))
            if not scope or "" in asked or not asked <= client.scopes:
                have = " ".join(sorted(client.scopes))
                raise AuthError(
                    f"{client.id} may ask only for a subset of: {have}",
                    error="invalid_scope",
                    code="invalid_scope",
                    client=client.id,
                )
            granted = asked
        scope_text = " ".join(s for s in SCOPES if s in granted)
        token_id = uuid.uuid4().hex
        claims = {
            "iss": self.issuer,
            "aud": self.issuer,
            "sub": client.id,
            "client_id": client.id,
            "kind": client.kind,
            "scope": scope_text,
            "iat": now,
            "exp": now + self.lifetime_s,
            "jti": token_id,
        }
        header = {"alg": "EdDSA", "typ": "at+jwt", "kid": self.kid}
        token = jwt.encode(header, claims, self._jwk, registry=_REGISTRY)
        issued = events.token_issued(
            client.id,
            token_id,
            scope=scope_text,
            expires_at=now + self.lifetime_s,
            assertion_kid=client.kid,
            at=now * 1000,
        )
        self.registry.record([], [issued])
        return IssuedToken(token, self.lifetime_s, scope_text, token_id, client.id)

    # ------------------------------------------------------------------ resource side
    def verify(self, token: str, now: int) -> Caller:
        """Check an access token and that its holder is still active.

        Raises:
            AuthError: ``invalid_token`` (bad, expired, or the holder was suspended).
        """

        def refuse(code: str, message: str, client: str | None = None) -> AuthError:
            return AuthError(message, error="invalid_token", code=code, client=client)

        # 1. A compact JWS of sane size, signed by our token key with EdDSA.
        if not 0 < len(token) <= MAX_JWT_CHARS or token.count(".") != 2:
            raise refuse("malformed_token", "the access token is not a compact JWS")
        try:
            decoded = jwt.decode(token, self._public, registry=_REGISTRY)
        except BadSignatureError as exc:
            raise refuse("bad_signature", "the access token's signature does not verify") from exc
        except (JoseError, ValueError) as exc:
            raise refuse("malformed_token", "the access token is not a valid JWT") from exc
        # 2. An access token of ours (not a client assertion or another JWT).
        if decoded.header.get("typ") != "at+jwt" or decoded.header.get("kid") != self.kid:
            raise refuse("wrong_token_type", "not an access token of this broker")
        claims = decoded.claims
        registry = jwt.JWTClaimsRegistry(
            now=now,
            leeway=0,
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": self.issuer},
            sub={"essential": True},
            exp={"essential": True},
            iat={"essential": True},
            jti={"essential": True},
        )
        sub = claims.get("sub")
        client = sub if isinstance(sub, str) and _ID.fullmatch(sub) else None
        try:
            registry.validate(claims)
        except ExpiredTokenError as exc:
            raise refuse("token_expired", "the access token has expired", client) from exc
        except JoseError as exc:
            raise refuse(
                "invalid_claims", f"the access token's claims are wrong ({exc.error})", client
            ) from exc
        # 3. Known scopes and kind, a well-formed subject.
        scope, kind = claims.get("scope"), claims.get("kind")
        if client is None or not isinstance(scope, str) or kind not in ("agency", "admin"):
            raise refuse("invalid_claims", "the access token's claims are wrong", client)
        scopes = frozenset(scope.split(" ")) if scope else frozenset()
        if not scopes <= frozenset(SCOPES):
            raise refuse("invalid_claims", "the access token names an unknown scope", client)
        # 4. Live permissions: a suspension or revocation takes effect at once.
        row: AgencyRow | AdminRow | None = (
            self.registry.agency(client) if kind == "agency" else self._admin(client)
        )
        if row is None or row.status != "active":
            status = "unknown" if row is None else row.status
            raise refuse(f"client_{status}"[:40], f"{client} is {status}", client)
        return Caller(client, kind, scopes, str(claims["jti"]), int(claims["exp"]))


@dataclass(frozen=True)
class _Refuser:
    client: str | None

    def __call__(self, code: str, message: str) -> AuthError:
        return AuthError(message, error="invalid_client", code=code, client=self.client)


def _verify_key(public_b64: str) -> VerifyKey:
    try:
        return VerifyKey(b64d(public_b64, field="public key", max_bytes=32))
    except EnvelopeError as exc:
        raise ConfigError("a registered public key is damaged") from exc


def _scopes_for(agency: AgencyRow) -> frozenset[str]:
    return AUDITOR_SCOPES if agency.sector == "auditor" else AGENCY_SCOPES


def load_token_key(broker_dir: Path) -> SigningKey:
    """The broker's access-token key, ``broker_dir/token.key``; made on first use."""
    return signing_key_file(broker_dir / "token.key", "token key")
