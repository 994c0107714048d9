"""NATS JWTs (the nats-io/jwt v2 format): encode and sign, decode and verify (pure).

A NATS JWT is ``header.claims.signature``, each part base64url without padding:

* header ``{"typ":"JWT","alg":"ed25519-nkey"}``;
* claims: ``jti``, ``iat``, ``iss`` (the signer's public nkey), ``name``, ``sub`` and, for
  every kind, a ``nats`` object holding ``type`` (``operator``, ``account``, ``user``,
  ``activation``), ``version: 2`` and the kind's own fields;
* the Ed25519 signature, by the issuer's nkey, over ``header.claims`` as sent.

``jti`` is what nats-io/jwt computes: base32 (no padding) of SHA-512/256 over the standard
claims alone (``aud``, ``exp``, ``iat``, ``iss``, ``name``, ``nbf``, ``sub``, in that order,
without ``jti``), not over the ``nats`` object. So two JWTs of one account issued in the same
second share a ``jti``, and nats-server's resolver, merging what another node holds, keeps
the one it has; which is why ``broker.runtime.accounts`` issues each new JWT of an account a
later ``iat`` than the one before.

Keys are nkey seeds (``S`` + a kind letter); which kinds may sign which claims follows
nats-io/jwt. Deriving keys, and what the claims say, is ``broker.bus.natsauth``'s; pushing
them to a server is ``broker.bus.claims``'.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import nkeys
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "MAX_JWT_BYTES",
    "JwtError",
    "JwtKind",
    "NatsClaims",
    "NkeyKind",
    "Signer",
    "claim_id",
    "decode_jwt",
    "derive_seed",
    "encode_jwt",
    "public_key",
]

JwtKind = Literal["operator", "account", "user", "activation"]
NkeyKind = Literal["operator", "account", "user"]
MAX_JWT_BYTES = 1024 * 1024  # nats-io/jwt's MaxTokenSize

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
_HEADER_B64 = base64.urlsafe_b64encode(b'{"typ":"JWT","alg":"ed25519-nkey"}').rstrip(b"=").decode()
_PREFIX: dict[NkeyKind, int] = {
    "operator": nkeys.PREFIX_BYTE_OPERATOR,
    "account": nkeys.PREFIX_BYTE_ACCOUNT,
    "user": nkeys.PREFIX_BYTE_USER,
}
# Who may sign what (nats-io/jwt ExpectedPrefixes): an operator signs itself and accounts,
# an account (or its signing key) signs users and activations.
_SIGNERS: dict[JwtKind, tuple[NkeyKind, ...]] = {
    "operator": ("operator",),
    "account": ("operator", "account"),
    "user": ("account",),
    "activation": ("account", "operator"),
}
# The standard claims jti hashes, in the order Go marshals nats-io/jwt's ClaimsData.
_STANDARD = ("aud", "exp", "iat", "iss", "name", "nbf", "sub")
_DERIVE_LABEL = b"istmo/nats/v1\x00"


class JwtError(ValueError):
    """A NATS JWT that is malformed, of another kind, or not signed by its issuer."""


@dataclass(frozen=True)
class NatsClaims:
    """A decoded, verified NATS JWT.

    Attributes:
        kind: ``nats.type``.
        issuer: ``iss``, the public nkey that signed it.
        subject: ``sub``.
        name: ``name`` ("" if absent).
        issued_at: ``iat`` (Unix seconds).
        jti: ``jti``.
        nats: the ``nats`` object without ``type`` and ``version``.
    """

    kind: JwtKind
    issuer: str
    subject: str
    name: str
    issued_at: int
    jti: str
    nats: Mapping[str, Any]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise JwtError(f"the JWT's {what} is not base64url") from exc


def _json(value: object) -> bytes:
    # Compact, as Go's encoding/json writes it. Our strings are ids, keys and subjects
    # (ASCII without <, > or &), for which Go's HTML escaping changes nothing.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def claim_id(standard: Mapping[str, object]) -> str:
    """The ``jti`` nats-io/jwt gives claims whose standard fields are ``standard``."""
    fields = {k: standard[k] for k in _STANDARD if standard.get(k) not in (None, "", 0)}
    digest = hashlib.new("sha512_256", _json(fields)).digest()
    return base64.b32encode(digest).decode("ascii").rstrip("=")


def public_key(seed: str) -> str:
    """The public nkey of ``seed``."""
    return Signer(seed).public


def _encode_public(raw: bytes, kind: NkeyKind) -> str:
    body = bytes([_PREFIX[kind]]) + raw
    return base64.b32encode(body + nkeys.crc16_checksum(body)).decode("ascii").rstrip("=")


class Signer:
    """An nkey that signs: its kind, its public key, and the Ed25519 key (made once, so
    that signing thousands of JWTs does not decode the seed each time)."""

    __slots__ = ("_key", "kind", "public")

    def __init__(self, seed: str) -> None:
        prefix, raw = nkeys.decode_seed(bytearray(seed.encode("ascii")))
        kinds = [kind for kind, byte in _PREFIX.items() if byte == prefix]
        if not kinds:
            raise ValueError("not an operator, account or user seed")
        self.kind: NkeyKind = kinds[0]
        self._key = Ed25519PrivateKey.from_private_bytes(bytes(raw))
        raw_public = self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.public = _encode_public(raw_public, self.kind)

    def __repr__(self) -> str:
        return f"Signer({self.public})"

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)


def derive_seed(master: bytes, label: str, kind: NkeyKind) -> str:
    """A seed of ``kind`` derived from ``master`` and ``label`` (HMAC-SHA256).

    One secret then stands for every key of the broker's NATS operator; each label names
    one key, and no key reveals another or the secret.

    Raises:
        ValueError: ``master`` is shorter than 32 bytes.
    """
    if len(master) < 32:
        raise ValueError("the master secret must be at least 32 bytes")
    raw = hmac.new(master, _DERIVE_LABEL + label.encode(), hashlib.sha256).digest()
    seed: bytes = nkeys.encode_seed(raw, _PREFIX[kind])
    return seed.decode("ascii")


def _nkey_kind(key: str) -> NkeyKind | None:
    """The kind of public nkey ``key`` is, if it is a well-formed one."""
    try:
        raw = base64.b32decode(key.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None
    if len(raw) != 35 or nkeys.crc16_checksum(raw[:33]) != raw[33:]:
        return None
    for kind, prefix in _PREFIX.items():
        if raw[0] == prefix:
            return kind
    return None


def encode_jwt(
    kind: JwtKind,
    *,
    signer: Signer | str,
    subject: str,
    issued_at: int,
    nats: Mapping[str, Any],
    name: str = "",
) -> str:
    """Sign claims of ``kind`` about ``subject`` with the seed ``signer``.

    Args:
        kind: what the JWT is (``nats.type``).
        signer: the issuer's nkey (or seed); its kind must be allowed to sign ``kind``.
        subject: ``sub``, a public nkey.
        issued_at: ``iat``, Unix seconds.
        nats: the kind's own fields (``type`` and ``version`` are added).
        name: ``name``, shown by nats-server's monitoring.

    Returns:
        The JWT.

    Raises:
        ValueError: the signer may not sign ``kind``, ``subject`` is not a public nkey, or
            ``nats`` sets ``type`` or ``version`` itself.
    """
    key = signer if isinstance(signer, Signer) else Signer(signer)
    issuer = key.public
    if key.kind not in _SIGNERS[kind]:
        raise ValueError(f"a {issuer[0]}... key cannot sign {kind} claims")
    if _nkey_kind(subject) is None:
        raise ValueError(f"the subject of {kind} claims must be a public nkey")
    if {"type", "version"} & set(nats):
        raise ValueError("nats.type and nats.version are set by encode_jwt")
    standard: dict[str, object] = {"iat": issued_at, "iss": issuer, "name": name, "sub": subject}
    claims: dict[str, object] = {"jti": claim_id(standard)}
    claims.update((k, v) for k, v in standard.items() if v != "")
    claims["nats"] = {**nats, "type": kind, "version": 2}
    signing_input = _HEADER_B64 + "." + _b64(_json(claims))
    return signing_input + "." + _b64(key.sign(signing_input.encode("ascii")))


def decode_jwt(token: str, *, kind: JwtKind | None = None) -> NatsClaims:
    """Decode a NATS JWT and verify its issuer's signature.

    Steps:
      1. Three base64url parts, at most ``MAX_JWT_BYTES``.
      2. The header is ``{"typ":"JWT","alg":"ed25519-nkey"}`` (nats-io/jwt v2).
      3. The claims are a JSON object with ``nats.version`` 2 and ``nats.type`` of ``kind``
         (any of the four when ``kind`` is None), a string ``iss`` and ``sub`` and an
         integer ``iat``.
      4. ``iss`` is a public nkey of a kind allowed to sign that type.
      5. The Ed25519 signature by ``iss`` over ``header.claims`` verifies.

    Raises:
        JwtError: a step fails (the message says which; it never quotes the token).
    """
    if len(token) > MAX_JWT_BYTES:  # 1
        raise JwtError(f"the JWT is longer than {MAX_JWT_BYTES} bytes")
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtError("a JWT has three parts")
    try:
        header = json.loads(_unb64(parts[0], "header"))
        claims = json.loads(_unb64(parts[1], "claims"))
    except ValueError as exc:
        raise JwtError("the JWT's header or claims are not JSON") from exc
    if header != _HEADER:  # 2
        raise JwtError("the JWT's header is not a NATS v2 header")
    nats = claims.get("nats") if isinstance(claims, dict) else None  # 3
    if not isinstance(nats, dict) or nats.get("version") != 2:
        raise JwtError("the JWT's claims are not NATS v2 claims")
    found = nats.get("type")
    if found not in _SIGNERS or (kind is not None and found != kind):
        raise JwtError(f"the JWT is not {kind or 'a NATS'} claims")
    issuer, subject, issued_at = claims.get("iss"), claims.get("sub"), claims.get("iat")
    if not isinstance(issuer, str) or not isinstance(subject, str):
        raise JwtError("the JWT's issuer or subject is missing")
    if not isinstance(issued_at, int) or isinstance(issued_at, bool):
        raise JwtError("the JWT's issue time is missing")
    issuer_kind = _nkey_kind(issuer)  # 4
    if issuer_kind not in _SIGNERS[found]:
        raise JwtError(f"the JWT's issuer cannot sign {found} claims")
    raw_issuer = base64.b32decode(issuer.encode("ascii"))[1:33]
    signature = _unb64(parts[2], "signature")
    try:  # 5
        Ed25519PublicKey.from_public_bytes(raw_issuer).verify(
            signature, (parts[0] + "." + parts[1]).encode("ascii")
        )
    except (InvalidSignature, ValueError) as exc:
        raise JwtError("the JWT's signature does not verify") from exc
    name = claims.get("name", "")
    return NatsClaims(
        kind=found,
        issuer=issuer,
        subject=subject,
        name=name if isinstance(name, str) else "",
        issued_at=issued_at,
        jti=str(claims.get("jti", "")),
        nats={k: v for k, v in nats.items() if k not in ("type", "version")},
    )
