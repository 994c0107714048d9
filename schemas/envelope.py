"""The sealed envelope, version 1: what travels from publisher to recipients.

    Envelope
    ├── header     labels, originator, recipients (and group epochs addressed whole, ADR 37),
    │              times, key commitment (in clear, signed)
    ├── body       AES-256-GCM ciphertext of the content, bound to the header digest
    ├── wraps      one HPKE wrap of the content key per recipient, bound to header and recipient
    ├── groups     optional (ADR 18): the content key under a community group's epoch key,
    │              for the recipients that group's members cover
    └── sig        Ed25519 over header, ciphertext digest, wraps and groups

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

from schemas.attachments import MAX_ATTACHMENTS, AttachmentMeta, AttachmentRef
from schemas.canonical import strict_loads
from schemas.errors import EnvelopeError
from schemas.forwarding import Citation
from schemas.ids import AgencyIdStr, BulletinIdStr
from schemas.keys import KemName
from schemas.labels import Labels

__all__ = [
    "MAX_GROUPS_PER_ENVELOPE",
    "MAX_RECIPIENTS",
    "MAX_WRAPS",
    "Audience",
    "Content",
    "Envelope",
    "GroupWrap",
    "Header",
    "InnerBulletin",
    "SealedBody",
    "Signature",
    "Wrap",
    "parse_model",
]

# Agencies one bulletin may be addressed to (the header's list): with community group keys
# (ADR 18) the key section no longer grows with them.
MAX_RECIPIENTS = 10_000
# Per-recipient HPKE wraps one envelope carries (~1.5 KB each with the hybrid KEM): past
# this, a bulletin needs group keys (ADR 18).
MAX_WRAPS = 500
# Groups one envelope may use: a cover needs a few; more is a publisher's mistake.
MAX_GROUPS_PER_ENVELOPE = 64
GROUP_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,47}$"
MAX_TITLE_CHARS = 300
MAX_TEXT_CHARS = 512 * 1024
# Epoch seconds up to year 36812: rejects 2^63-style overflows outright.
Timestamp = Annotated[int, Field(ge=0, le=2**40)]
Kid = Annotated[str, StringConstraints(pattern=r"^(sig|kem)-[0-9a-f]{32}$")]
B64 = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]*={0,2}$", max_length=2_000_000)]

GroupName = Annotated[str, StringConstraints(pattern=GROUP_NAME_PATTERN)]
GroupKid = Annotated[str, StringConstraints(pattern=r"^gk-[0-9a-f]{32}$")]
Epoch = Annotated[int, Field(ge=1, le=2**40)]
MembersDigest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]

M = TypeVar("M", bound=BaseModel)
_SUITE_FIELDS = {("alg",), ("aead",), ("kem",)}

_STRICT = ConfigDict(frozen=True, extra="forbid", strict=True)


class Audience(BaseModel):
    """A community group's epoch, addressed as a whole (ADR 37): every member its manager
    signed (``member_count`` of them, hashing to ``members_digest`` as in the epoch's
    statement), but the bulletin's originator. The envelope carries the epoch, not the
    list, so a bulletin to thousands stays a few kilobytes."""

    model_config = _STRICT

    group: GroupName
    epoch: Epoch
    member_count: int = Field(ge=1, le=MAX_RECIPIENTS)
    members_digest: MembersDigest


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
    # Conversations (ADR 16), each absent unless used, like ``supersedes``: a reply names
    # the bulletin it answers and its thread (the id of the thread's first bulletin); an
    # originator lets replies reach every recipient with ``reply_all``; a request for
    # information says by when it wants its answers (``rfi_due``, epoch seconds).
    in_reply_to: BulletinIdStr | None = None
    thread: BulletinIdStr | None = None
    reply_all: Literal[True] | None = None
    rfi_due: Timestamp | None = None
    # A forward cites the bulletin it passes on, with the originator's consent (ADR 20);
    # absent on every other bulletin, so envelopes made before it verify unchanged.
    forward_of: Citation | None = None
    labels: Labels
    # Files sealed in chunks beside the envelope (ADR 17): sizes and digests only, never
    # names. Absent when there are none, so envelopes made before verify unchanged.
    attachments: tuple[AttachmentRef, ...] | None = Field(
        default=None, min_length=1, max_length=MAX_ATTACHMENTS
    )
    # Agencies addressed by name, each with a wrap of its own when ``audience`` is given;
    # empty only then.
    recipients: tuple[AgencyIdStr, ...] = Field(max_length=MAX_RECIPIENTS)
    # Group epochs addressed as a whole (ADR 37), each opened with its group wrap. Absent
    # otherwise, so envelopes made before it verify unchanged.
    audience: tuple[Audience, ...] | None = Field(
        default=None, min_length=1, max_length=MAX_GROUPS_PER_ENVELOPE
    )
    aead: Literal["AES-256-GCM"]
    key_commitment: B64
    signer: Kid

    @field_validator("recipients")
    @classmethod
    def _sorted_unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if list(value) != sorted(set(value)):
            raise ValueError("recipients must be sorted and unique")
        return value

    @field_validator("audience")
    @classmethod
    def _audience_sorted(cls, value: tuple[Audience, ...] | None) -> tuple[Audience, ...] | None:
        if value is not None and [a.group for a in value] != sorted({a.group for a in value}):
            raise ValueError("audience must be sorted by group and name each once")
        return value

    def addresses(self, agency: str) -> bool:
        """Whether ``agency`` may be addressed by this header: named in ``recipients``,
        or, with an ``audience``, any agency but the originator (that it is a member of
        one of the epochs is proven by the group key it opens with, ADR 37)."""
        if agency in self.recipients:
            return True
        return self.audience is not None and agency != self.originator

    @model_validator(mode="after")
    def _times(self) -> Header:
        if not self.recipients and self.audience is None:
            raise ValueError("recipients: a bulletin needs at least one recipient")
        if self.expires_at is not None and self.expires_at <= self.created_at:
            raise ValueError("expires_at must be after created_at")
        if self.not_before is not None and self.expires_at is not None:
            if self.not_before >= self.expires_at:
                raise ValueError("not_before must be before expires_at")
        if self.supersedes == self.bulletin_id:
            raise ValueError("a bulletin cannot supersede itself")
        if (self.in_reply_to is None) != (self.thread is None):
            raise ValueError("a reply names both the bulletin it answers and its thread")
        if self.bulletin_id in (self.in_reply_to, self.thread):
            raise ValueError("a bulletin cannot answer itself")
        if self.rfi_due is not None and self.rfi_due <= self.created_at:
            raise ValueError("rfi_due must be after created_at")
        if self.forward_of is not None and self.forward_of.bulletin_id == self.bulletin_id:
            raise ValueError("a bulletin cannot forward itself")
        if self.forward_of is not None and self.attachments is not None:
            # Its files are the original's, cited (ADR 20): none stored under the forward.
            raise ValueError("a forward passes on the original's files, in forward_of.attachments")
        return self

    def file_refs(self) -> tuple[AttachmentRef, ...]:
        """The references of the files this bulletin carries: its own (ADR 17), or for a
        forward the original's it cites (ADR 20); in the order of ``content.attachments``."""
        if self.forward_of is not None:
            return self.forward_of.attachments or ()
        return self.attachments or ()


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


class GroupWrap(BaseModel):
    """The content key, sealed under the epoch key ``kid`` of a community group (ADR 18):
    every member of that epoch opens it."""

    model_config = _STRICT

    group: GroupName
    epoch: Epoch
    kid: GroupKid
    nonce: B64
    ct: B64


class Signature(BaseModel):
    """An Ed25519 signature by the key ``kid``."""

    model_config = _STRICT

    alg: Literal["Ed25519"]
    kid: Kid
    value: B64


class Envelope(BaseModel):
    """A sealed, signed bulletin. Without ``groups``, one wrap per recipient in the order of
    ``header.recipients``; with them (ADR 18), wraps for the recipients no group covers, in
    that order, and at most one wrap per group. Which group covers whom is the broker's
    record of each epoch's members, not the envelope's."""

    model_config = _STRICT

    v: Literal[1]
    header: Header
    body: SealedBody
    wraps: tuple[Wrap, ...] = Field(max_length=MAX_WRAPS)
    # Absent (not empty) without groups: absent fields are not signed, so envelopes made
    # before ADR 18 verify unchanged.
    groups: tuple[GroupWrap, ...] | None = Field(
        default=None, min_length=1, max_length=MAX_GROUPS_PER_ENVELOPE
    )
    sig: Signature

    @model_validator(mode="after")
    def _wraps_match_recipients(self) -> Envelope:
        wrapped = tuple(w.recipient for w in self.wraps)
        audience = self.header.audience
        if audience is not None:
            # ADR 37: a wrap for each named recipient, a group wrap for each epoch.
            if wrapped != self.header.recipients:
                raise ValueError("wrap list does not match the signed recipients")
            used = [(g.group, g.epoch) for g in self.groups or ()]
            if used != [(a.group, a.epoch) for a in audience]:
                raise ValueError("group wraps must be one for each epoch of the audience")
        elif self.groups is None:
            if not wrapped:
                raise ValueError("wraps: a bulletin without group wraps needs one per recipient")
            if wrapped != self.header.recipients:
                raise ValueError("wrap list does not match the signed recipients")
        else:
            if list(wrapped) != sorted(set(wrapped)) or not set(wrapped) <= set(
                self.header.recipients
            ):
                raise ValueError("wrap list is not a sorted part of the signed recipients")
            names = [g.group for g in self.groups]
            if names != sorted(set(names)):
                raise ValueError("group wraps must be sorted by group and name each once")
        if self.sig.kid != self.header.signer:
            raise ValueError("signature key differs from the header's signer")
        return self


class Content(BaseModel):
    """What the publisher writes: everything but the labels."""

    model_config = _STRICT

    title: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TITLE_CHARS)]
    text: Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)]
    # Names and media types of the attachments, in the header's order (ADR 17).
    attachments: tuple[AttachmentMeta, ...] | None = Field(
        default=None, min_length=1, max_length=MAX_ATTACHMENTS
    )
    # A person at the replying agency read the bulletin answered and acted on it (ADR 27):
    # sealed, so only its originator learns it; only on a reply; never false (left out).
    acknowledges: Literal[True] | None = None


class InnerBulletin(BaseModel):
    """The plaintext inside the body: content plus the ids it was sealed for.

    The inner ids must equal the signed header's, so a recipient who re-wraps a bulletin
    to someone else (surreptitious forwarding) is caught.
    """

    model_config = _STRICT

    bulletin_id: BulletinIdStr
    originator: AgencyIdStr
    recipients: tuple[AgencyIdStr, ...] = Field(max_length=MAX_RECIPIENTS)
    # The header's audience (ADR 37), absent without one.
    audience: tuple[Audience, ...] | None = Field(
        default=None, min_length=1, max_length=MAX_GROUPS_PER_ENVELOPE
    )
    content: Content

    @model_validator(mode="after")
    def _addressed(self) -> InnerBulletin:
        if not self.recipients and self.audience is None:
            raise ValueError("recipients: a bulletin needs at least one recipient")
        return self


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
