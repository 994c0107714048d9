"""The sealed envelope, version 1: what travels from publisher to recipients.

    Envelope
    ├── header     labels, originator, recipients, times, key commitment (in clear, signed)
    ├── body       AES-256-GCM ciphertext of the content, bound to the header digest
    ├── wraps      one HPKE wrap of the content key per recipient, bound to header and recipient
    └── sig        Ed25519 over header, ciphertext digest and wraps

The models here are strict: unknown fields, wrong types, floats, duplicate keys and
unknown label values are all refused. Cryptographic operations live in ``sealing``.
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from schemas.canonical import strict_loads
from schemas.errors import EnvelopeError
from schemas.ids import AgencyIdStr, BulletinIdStr
from schemas.keys import KemName
from schemas.labels import Labels

__all__ = [
    "MAX_RECIPIENTS",
    "Content",
    "Envelope",
    "Header",
    "InnerBulletin",
    "SealedBody",
    "Signature",
    "Wrap",
    "parse_model",
]

MAX_RECIPIENTS = 500
MAX_TITLE_CHARS = 300
MAX_TEXT_CHARS = 512 * 1024
# Epoch seconds up to year 36812: rejects 2^63-style overflows outright.
Timestamp = Annotated[int, Field(ge=0, le=2**40)]
Kid = Annotated[str, StringConstraints(pattern=r"^(sig|kem)-[0-9a-f]{32}$")]
B64 = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]*={0,2}$", max_length=2_000_000)]

M = TypeVar("M", bound=BaseModel)
_SUITE_FIELDS = {("alg",), ("aead",), ("kem",)}

_STRICT = ConfigDict(frozen=True, extra="forbid", strict=True)


class Header(BaseModel):
    """The signed, clear part of a bulletin: all the broker needs to route it."""

    model_config = _STRICT

    v: Literal[1]
    bulletin_id: BulletinIdStr
    originator: AgencyIdStr
    created_at: Timestamp
    not_before: Timestamp | None = None
    expires_at: Timestamp | None = None
    # A correction names the bulletin it corrects (ADR 15); absent on every other, and
    # absent fields are not signed, so envelopes made before it verify unchanged.
    supersedes: BulletinIdStr | None = None
    labels: Labels
    recipients: tuple[AgencyIdStr, ...] = Field(min_length=1, max_length=MAX_RECIPIENTS)
    aead: Literal["AES-256-GCM"]
    key_commitment: B64
    signer: Kid

    @field_validator("recipients")
    @classmethod
    def _sorted_unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if list(value) != sorted(set(value)):
            raise ValueError("recipients must be sorted and unique")
        return value

    @model_validator(mode="after")
    def _times(self) -> Header:
        if self.expires_at is not None and self.expires_at <= self.created_at:
            raise ValueError("expires_at must be after created_at")
        if self.not_before is not None and self.expires_at is not None:
            if self.not_before >= self.expires_at:
                raise ValueError("not_before must be before expires_at")
        if self.supersedes == self.bulletin_id:
            raise ValueError("a bulletin cannot supersede itself")
        return self


class SealedBody(BaseModel):
    """AES-256-GCM ciphertext (tag appended) of the canonical InnerBulletin."""

    model_config = _STRICT

    nonce: B64
    ct: B64


class Wrap(BaseModel):
    """The content key, sealed with HPKE to one recipient's encryption key."""

    model_config = _STRICT

    recipient: AgencyIdStr
    kid: Kid
    kem: KemName
    enc: B64


class Signature(BaseModel):
    """An Ed25519 signature by the key ``kid``."""

    model_config = _STRICT

    alg: Literal["Ed25519"]
    kid: Kid
    value: B64


class Envelope(BaseModel):
    """A sealed, signed bulletin. Wraps come in the order of ``header.recipients``."""

    model_config = _STRICT

    v: Literal[1]
    header: Header
    body: SealedBody
    wraps: tuple[Wrap, ...] = Field(min_length=1, max_length=MAX_RECIPIENTS)
    sig: Signature

    @model_validator(mode="after")
    def _wraps_match_recipients(self) -> Envelope:
        if tuple(w.recipient for w in self.wraps) != self.header.recipients:
            raise ValueError("wrap list does not match the signed recipients")
        if self.sig.kid != self.header.signer:
            raise ValueError("signature key differs from the header's signer")
        return self


class Content(BaseModel):
    """What the publisher writes: everything but the labels."""

    model_config = _STRICT

    title: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TITLE_CHARS)]
    text: Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)]


class InnerBulletin(BaseModel):
    """The plaintext inside the body: content plus the ids it was sealed for.

    The inner ids must equal the signed header's, so a recipient who re-wraps a bulletin
    to someone else (surreptitious forwarding) is caught.
    """

    model_config = _STRICT

    bulletin_id: BulletinIdStr
    originator: AgencyIdStr
    recipients: tuple[AgencyIdStr, ...] = Field(min_length=1, max_length=MAX_RECIPIENTS)
    content: Content


def parse_model(model: type[M], raw: bytes, *, max_bytes: int, what: str) -> M:
    """Parse ``raw`` strictly into ``model``.

    Raises:
        EnvelopeError: with a message naming the first bad field, never its value.
    """
    strict_loads(raw, max_bytes=max_bytes)  # size, UTF-8, duplicates, floats, depth
    try:
        return model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or what
        code = "unknown_label" if "labels" in first["loc"] else "malformed"
        if first["type"] == "literal_error" and first["loc"][-1:] == ("v",):
            code = "unsupported_version"
        elif first["type"] == "literal_error" and first["loc"][-1:] in _SUITE_FIELDS:
            code = "unsupported_suite"  # an algorithm outside the allowlist, "none" included
        raise EnvelopeError(f"{what} {where}: {first['msg']}", code=code) from exc
