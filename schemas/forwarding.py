"""Forwarding with consent: a recipient passes a bulletin on to one more agency (ADR 20).

    ask       the forwarder's ``forward-request`` (``ForwardAsk``) names the bulletin, the
              agency to pass it to and why; the broker answers (``ForwardAnswer``):
              ``permitted`` (the policy lets it forward without asking), ``pending``
              (the originator is asked), ``granted`` (with the originator's signed
              ``ForwardGrant``) or ``refused``.
    decide    the originator lists what is asked of it (``forward-requests``) and answers
              each (``forward-decide``, ``ForwardDecision``): a grant it signs, or a
              refusal.
    forward   the forwarder re-seals the plaintext it holds for the new recipient alone,
              signs it as its own bulletin, and cites the original in the signed header
              (``Citation``: id, originator, envelope digest, the grant if there is
              one, and the original's file references if it had files). The relay checks
              the citation, the files and the consent before anything moves; the new
              recipient's SDK checks the grant again, and each file against the cited
              references as it fetches the original's chunks through the forward.

A grant is a document signed by the originator (``schemas.selfsigned``, domain
``forward-grant``): the broker can neither forge consent nor move it to another bulletin,
forwarder or recipient. ``check_not_weaker`` is the rule on a forward's labels: they may
be stricter than the original's, never looser.

Pure: no clock, no I/O. Left to others: the checks against the registry and the policy
(``broker.relay.forwards``), sealing (``schemas.sealing``).
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from schemas.attachments import MAX_ATTACHMENTS, AttachmentRef
from schemas.canonical import canonical_json
from schemas.errors import EnvelopeError
from schemas.ids import AgencyId, AgencyIdStr, BulletinId, BulletinIdStr
from schemas.keys import SigningKey, VerifyKey
from schemas.labels import Labels, Tlp
from schemas.selfsigned import sign_document, verify_document

__all__ = [
    "FORWARD_REASON_CHARS",
    "MAX_FORWARD_REQUESTS",
    "MAX_GRANT_S",
    "Citation",
    "ForwardAnswer",
    "ForwardAsk",
    "ForwardDecision",
    "ForwardGrant",
    "ForwardRequestEntry",
    "ForwardRequestsReply",
    "ForwardRequestsRequest",
    "check_not_weaker",
    "encode_grant",
    "forward_request_id",
    "sign_grant",
    "verify_grant",
]

FORWARD_REASON_CHARS = 280
MAX_GRANT_S = 30 * 86400  # a grant is good for at most 30 days
MAX_FORWARD_REQUESTS = 200  # requests one ``forward-requests`` answer lists
_STRICT = ConfigDict(frozen=True, extra="forbid", strict=True)
# One line a person reads on a terminal: no C0 or C1 control character, no DEL.
Reason = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=FORWARD_REASON_CHARS, pattern=r"^[^\x00-\x1f\x7f-\x9f]+$"
    ),
]
Digest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
RequestId = Annotated[str, StringConstraints(pattern=r"^fwd-[0-9a-f]{16}$")]
# The bounds of ``schemas.envelope``'s Timestamp and Kid (it imports this module for the
# header's citation, so this module cannot import it).
Timestamp = Annotated[int, Field(ge=0, le=2**40)]
Kid = Annotated[str, StringConstraints(pattern=r"^(sig|kem)-[0-9a-f]{32}$")]
Sig = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]*={0,2}$", max_length=128)]
# TLP from the least to the most restrictive (TLP 2.0).
_TLP_ORDER = (Tlp.CLEAR, Tlp.GREEN, Tlp.AMBER, Tlp.AMBER_STRICT, Tlp.RED)


class ForwardGrant(BaseModel):
    """``originator`` lets ``forwarder`` pass its bulletin ``bulletin_id`` to
    ``recipient``, until ``expires_at``; signed with key ``kid`` at ``issued_at``."""

    model_config = _STRICT

    v: Literal[1]
    bulletin_id: BulletinIdStr
    originator: AgencyIdStr
    forwarder: AgencyIdStr
    recipient: AgencyIdStr
    issued_at: Timestamp
    expires_at: Timestamp
    kid: Kid
    sig: Sig

    @model_validator(mode="after")
    def _sane(self) -> ForwardGrant:
        if not self.issued_at < self.expires_at <= self.issued_at + MAX_GRANT_S:
            raise ValueError(f"expires_at must be within {MAX_GRANT_S} s after issued_at")
        if len({self.originator, self.forwarder, self.recipient}) != 3:
            raise ValueError("originator, forwarder and recipient must differ")
        return self


class Citation(BaseModel):
    """What a forward cites in its signed header: the original bulletin, its originator
    and the digest of its envelope as the forwarder received it, the originator's grant
    (absent when the policy let the forwarder pass it on without asking), and the
    original's files as its originator signed them (absent when it had none): the forward
    passes them on, and its recipient fetches the original's chunks (ADR 20)."""

    model_config = _STRICT

    bulletin_id: BulletinIdStr
    originator: AgencyIdStr
    envelope_digest: Digest
    grant: ForwardGrant | None = None
    attachments: tuple[AttachmentRef, ...] | None = Field(
        default=None, min_length=1, max_length=MAX_ATTACHMENTS
    )


def sign_grant(
    *,
    bulletin_id: BulletinId,
    originator: AgencyId,
    forwarder: AgencyId,
    recipient: AgencyId,
    issued_at: int,
    expires_at: int,
    key: SigningKey,
) -> ForwardGrant:
    """Build and sign a grant with the originator's (current) signing key.

    Raises:
        pydantic.ValidationError: a field is out of bounds (an expiry over 30 days).
    """
    unsigned = ForwardGrant(
        v=1,
        bulletin_id=bulletin_id,
        originator=originator,
        forwarder=forwarder,
        recipient=recipient,
        issued_at=issued_at,
        expires_at=expires_at,
        kid=key.verify_key.kid,
        sig="",
    )
    return sign_document("forward-grant", unsigned, key)


def verify_grant(g: ForwardGrant, key: VerifyKey) -> None:
    """Raise SignatureError unless ``g`` is signed by ``key``."""
    verify_document("forward-grant", g, kid=g.kid, sig=g.sig, key=key)


def encode_grant(g: ForwardGrant) -> bytes:
    """The canonical bytes of a grant."""
    return canonical_json(g.model_dump(mode="json"))


def forward_request_id(bulletin_id: str, forwarder: str, recipient: str) -> str:
    """The id of the request to pass ``bulletin_id`` from ``forwarder`` to ``recipient``:
    one per triple, so asking again finds the same request."""
    seed = f"{bulletin_id}\x00{forwarder}\x00{recipient}".encode()
    return "fwd-" + hashlib.sha256(b"istmo/v1/forward-request\x00" + seed).hexdigest()[:16]


def check_not_weaker(original: Labels, forward: Labels, *, recipient: str) -> None:
    """A forward's labels may be stricter than the original's, never looser.

    Same topic (the purpose an H0 bulletin was given for), at least the classification
    and TLP, releasable to no jurisdiction the original was not, every handling code and
    the same handling note, the same source grade, no judicial consent the original did
    not give, and no named recipient but the original's and ``recipient``. Precedence is
    delivery order only, and is free.

    Raises:
        EnvelopeError: ``forward_labels_weaker``, naming the first label that is looser.
    """
    problems = (
        ("topic", forward.topic != original.topic),
        ("classification", forward.classification.level < original.classification.level),
        ("tlp", _TLP_ORDER.index(forward.tlp) < _TLP_ORDER.index(original.tlp)),
        ("rel_to", not set(forward.rel_to) <= set(original.rel_to)),
        ("handling", not set(original.handling) <= set(forward.handling)),
        ("handling_note", forward.handling_note != original.handling_note),
        ("source_grade", forward.source_grade != original.source_grade),
        ("judicial_consent", not set(forward.judicial_consent) <= set(original.judicial_consent)),
        ("named", not set(forward.named) <= {*original.named, recipient}),
    )
    for label, looser in problems:
        if looser:
            raise EnvelopeError(
                f"the forward's {label} is looser than the original's: a forward keeps the "
                "original's labels or makes them stricter",
                code="forward_labels_weaker",
            )


# ---------------------------------------------------------------------------- the agency API
class ForwardAsk(BaseModel):
    """``forward-request``: may the caller pass ``bulletin_id`` on to ``to``? ``reason`` is
    shown to the originator, and travels in clear through the broker."""

    model_config = _STRICT

    bulletin_id: BulletinIdStr
    to: AgencyIdStr
    reason: Reason | None = None


class ForwardAnswer(BaseModel):
    """The answer to ``forward-request``, and to ``forward-decide`` (the request as decided).

    Attributes:
        request_id: the request (``pending``, ``granted``, ``refused``); None when the
            policy permits the forward without asking.
        bulletin_id, forwarder, recipient: what was asked.
        state: ``permitted`` (the policy lets the forwarder pass it on without asking:
            forward now), ``pending`` (the originator is asked), ``granted`` (forward with
            ``grant``), ``refused`` (``refusal`` says why).
        grant: the originator's signed grant, when ``granted``.
        refusal: the originator's words, when ``refused``.
    """

    model_config = _STRICT

    request_id: RequestId | None
    bulletin_id: BulletinIdStr
    forwarder: AgencyIdStr
    recipient: AgencyIdStr
    state: Literal["permitted", "pending", "granted", "refused"]
    grant: ForwardGrant | None = None
    refusal: Reason | None = None


class ForwardRequestsRequest(BaseModel):
    """``forward-requests``: the requests to forward the caller's bulletins; only those
    waiting for an answer unless ``all``."""

    model_config = _STRICT

    all: Literal[True] | None = None


class ForwardRequestEntry(BaseModel):
    """One request to forward one of the caller's bulletins."""

    model_config = _STRICT

    request_id: RequestId
    bulletin_id: BulletinIdStr
    forwarder: AgencyIdStr
    recipient: AgencyIdStr
    reason: Reason | None
    requested_at: Timestamp
    state: Literal["pending", "granted", "refused"]


class ForwardRequestsReply(BaseModel):
    """The newest ``MAX_FORWARD_REQUESTS`` requests, oldest first."""

    model_config = _STRICT

    requests: tuple[ForwardRequestEntry, ...] = Field(max_length=MAX_FORWARD_REQUESTS)


class ForwardDecision(BaseModel):
    """``forward-decide``: the originator's answer to one request: its signed ``grant``,
    or a ``refusal`` (exactly one)."""

    model_config = _STRICT

    request_id: RequestId
    grant: ForwardGrant | None = None
    refusal: Reason | None = None

    @model_validator(mode="after")
    def _one(self) -> ForwardDecision:
        if (self.grant is None) == (self.refusal is None):
            raise ValueError("give a grant or a refusal, not both or neither")
        return self
