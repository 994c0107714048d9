"""The guard of a partner link: may this sealed bulletin cross, decided on its labels alone
(ADR 32). Pure.

A *link* joins this region to a partner hub (another Istmo region, a SIENA gateway). The
partner's gateway agencies are enrolled here like any agency, in a jurisdiction of their
own (``EU-SIENA``), so the relay's policy decides whether they receive a bulletin and the
publisher seals it for their keys: the envelope stays end to end encrypted across the
link. The guard reads only the envelope's clear, signed header, and lets it cross only
when every rule of the link holds; anything it cannot parse, any label it does not know,
and anything no rule permits is blocked (default deny). The same rules, with the
receiving side's own link file, decide a bulletin's arrival there.

The rules, each a reason code when it fails (every failing one is reported):

===================== =============================================================
``oversized``         the envelope is larger than the link carries
``malformed``         it does not parse strictly (an unknown field, a wrong type)
``unknown_label``     a label value outside the vocabulary
``not_addressed``     none of the link's agencies is a recipient
``not_releasable``    REL TO does not name the link's code (a community such as SICA
                      never covers a partner: it must be named)
``tlp_red``           TLP:RED never crosses a link
``tlp_amber_strict``  TLP:AMBER+STRICT is for the originating state's organisation
``tlp_not_allowed``   another TLP the link does not carry
``above_ceiling``     classified above the link's ceiling
``topic``             a topic the link does not carry
``no_dissemination``  H2 or H3: no further dissemination without the originator's consent
``handling``          another handling code the link does not carry (H1 unless allowed)
``embargoed``         ``not_before`` is still ahead
``expired``           ``expires_at`` has passed
``attachments``       it carries or cites files (stored here, not across the link)
``no_wrap``           a link agency is covered by a group key only (ADR 18): group keys
                      never cross
===================== =============================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from schemas.envelope import Envelope, parse_model
from schemas.errors import EnvelopeError
from schemas.ids import AGENCY_ID_PATTERN, AgencyIdStr, JurisdictionStr
from schemas.labels import Classification, Handling, Tlp, Topic

__all__ = [
    "MAX_LINK_BYTES",
    "REASONS",
    "GuardDecision",
    "Link",
    "decide",
    "parse_link",
]

MAX_LINK_BYTES = 16 * 1024
DEFAULT_MAX_ENVELOPE = 4 * 1024 * 1024
REASONS = (
    "oversized",
    "malformed",
    "unknown_label",
    "not_addressed",
    "not_releasable",
    "tlp_red",
    "tlp_amber_strict",
    "tlp_not_allowed",
    "above_ceiling",
    "topic",
    "no_dissemination",
    "handling",
    "embargoed",
    "expired",
    "attachments",
    "no_wrap",
)
_NEVER_TLP = {Tlp.RED, Tlp.AMBER_STRICT}
_NEVER_HANDLING = {Handling.H2, Handling.H3}


class Link(BaseModel):
    """One side's file for a link (``DATA_DIR/federation/<name>.json``).

    Attributes:
        name: the link's name, the same on both sides (an agency-id-like token).
        code: the jurisdiction code that names the partner region in REL TO, e.g.
            ``EU-SIENA`` (on the receiving side: the same code, its own name here).
        agencies: the partner's gateway agencies (sending side: enrolled in this
            directory; receiving side: its own agencies that may receive from the link).
        ceiling: the highest classification the link carries.
        topics: the topics it carries.
        tlps: the TLPs it carries: CLEAR, GREEN and AMBER at most (RED and
            AMBER+STRICT never cross and are refused here).
        handling: the handling codes it carries: H0 and H1 at most (H2 and H3 mean no
            further dissemination without the originator's consent).
        max_envelope_bytes: the largest envelope it carries.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: Annotated[str, StringConstraints(pattern=AGENCY_ID_PATTERN)]
    code: JurisdictionStr
    agencies: tuple[AgencyIdStr, ...] = Field(min_length=1, max_length=64)
    ceiling: Classification
    topics: tuple[Topic, ...] = Field(min_length=1, max_length=8)
    tlps: tuple[Tlp, ...] = Field(min_length=1, max_length=3)
    handling: tuple[Handling, ...] = Field(default=(), max_length=2)
    max_envelope_bytes: int = Field(default=DEFAULT_MAX_ENVELOPE, ge=4096, le=16 * 1024 * 1024)

    @field_validator("agencies", "topics", "tlps", "handling")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("values must be unique")
        return value

    @field_validator("tlps")
    @classmethod
    def _no_red(cls, value: tuple[Tlp, ...]) -> tuple[Tlp, ...]:
        if _NEVER_TLP & set(value):
            raise ValueError("TLP:RED and TLP:AMBER+STRICT never cross a link")
        return value

    @field_validator("handling")
    @classmethod
    def _no_h2(cls, value: tuple[Handling, ...]) -> tuple[Handling, ...]:
        if _NEVER_HANDLING & set(value):
            raise ValueError("H2 and H3 (no further dissemination) never cross a link")
        return value


def parse_link(raw: bytes) -> Link:
    """Parse a link file strictly.

    Raises:
        EnvelopeError: naming the first bad field (``oversized`` over 16 KiB).
    """
    return parse_model(Link, raw, max_bytes=MAX_LINK_BYTES, what="link")


@dataclass(frozen=True)
class GuardDecision:
    """The guard's answer: ``passed`` only when ``reasons`` is empty and the envelope
    parsed; ``envelope`` is None when it did not; ``to`` the link's agencies it is
    addressed to."""

    passed: bool
    reasons: tuple[str, ...]
    envelope: Envelope | None = None
    to: tuple[str, ...] = ()


def decide(link: Link, raw: bytes, *, now: int) -> GuardDecision:
    """May the sealed bulletin ``raw`` cross ``link`` at ``now`` (epoch seconds)?

    Reads the clear header and the wrap list only; never opens, never verifies a
    signature (the relays on both sides do). Every failing rule is a reason; it passes
    only if none fails.
    """
    if len(raw) > link.max_envelope_bytes:
        return GuardDecision(False, ("oversized",))
    try:
        env = parse_model(Envelope, raw, max_bytes=link.max_envelope_bytes, what="envelope")
    except EnvelopeError as exc:
        code = exc.code if exc.code in ("unknown_label", "oversized") else "malformed"
        return GuardDecision(False, (code,))
    h, labels = env.header, env.header.labels
    to = tuple(a for a in h.recipients if a in link.agencies)
    reasons: list[str] = []
    if not to:
        reasons.append("not_addressed")
    if link.code not in labels.rel_to:
        reasons.append("not_releasable")
    if labels.tlp is Tlp.RED:
        reasons.append("tlp_red")
    elif labels.tlp is Tlp.AMBER_STRICT:
        reasons.append("tlp_amber_strict")
    elif labels.tlp not in link.tlps:
        reasons.append("tlp_not_allowed")
    if labels.classification.level > link.ceiling.level:
        reasons.append("above_ceiling")
    if labels.topic not in link.topics:
        reasons.append("topic")
    codes = set(labels.handling)
    if codes & _NEVER_HANDLING:
        reasons.append("no_dissemination")
    if codes - _NEVER_HANDLING - set(link.handling):
        reasons.append("handling")
    if h.not_before is not None and now < h.not_before:
        reasons.append("embargoed")
    if h.expires_at is not None and now >= h.expires_at:
        reasons.append("expired")
    if h.file_refs():
        reasons.append("attachments")
    wrapped = {w.recipient for w in env.wraps}
    if any(a not in wrapped for a in to):
        reasons.append("no_wrap")
    passed = bool(to) and not reasons
    return GuardDecision(passed, tuple(reasons), env, to)
