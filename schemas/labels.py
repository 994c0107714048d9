"""The labels a bulletin carries in clear: what it is about and who may see it.

Labels are the only part of a bulletin the broker reads. Each is a closed vocabulary, so an
unknown value is a malformed bulletin, never a silently ignored one.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from schemas.ids import AgencyIdStr, JurisdictionStr

__all__ = [
    "TOPICS",
    "Classification",
    "Handling",
    "Labels",
    "Precedence",
    "Tlp",
    "Topic",
]

Topic = Literal[
    "drug-trafficking",
    "arms-trafficking",
    "human-trafficking",
    "organized-crime",
    "border-incident",
    "migration",
    "early-warning",
    "lessons-learned",
]
TOPICS: tuple[Topic, ...] = (
    "drug-trafficking",
    "arms-trafficking",
    "human-trafficking",
    "organized-crime",
    "border-incident",
    "migration",
    "early-warning",
    "lessons-learned",
)


class Classification(StrEnum):
    """Protective marking, ordered: compare with ``level``."""

    UNCLASSIFIED = "UNCLASSIFIED"
    RESTRICTED = "RESTRICTED"
    CONFIDENTIAL = "CONFIDENTIAL"
    SECRET = "SECRET"  # noqa: S105 -- a protective marking, not a password

    @property
    def level(self) -> int:
        return _CLASSIFICATION_ORDER.index(self)


_CLASSIFICATION_ORDER = list(Classification)


class Tlp(StrEnum):
    """Traffic Light Protocol 2.0 (FIRST)."""

    CLEAR = "CLEAR"
    GREEN = "GREEN"
    AMBER = "AMBER"
    AMBER_STRICT = "AMBER+STRICT"
    RED = "RED"


class Handling(StrEnum):
    """Handling codes after SIENA's H0-H3."""

    H0 = "H0"  # use only for the purpose it was provided for
    H1 = "H1"  # no judicial use without the originator's consent
    H2 = "H2"  # no further dissemination without the originator's consent
    H3 = "H3"  # other restrictions, stated in handling_note


class Precedence(StrEnum):
    """Delivery precedence, most urgent first."""

    FLASH = "FLASH"
    IMMEDIATE = "IMMEDIATE"
    PRIORITY = "PRIORITY"
    ROUTINE = "ROUTINE"


SourceGrade = Annotated[str, StringConstraints(pattern=r"^[A-F][1-6]$")]
HandlingNote = Annotated[str, StringConstraints(min_length=1, max_length=500)]


class Labels(BaseModel):
    """Everything about a bulletin that the broker may read.

    Attributes:
        topic: what the bulletin is about (need-to-know and subscriptions use it).
        classification: protective marking, checked against each recipient's clearance.
        tlp: TLP 2.0 sharing level.
        rel_to: states (ISO 3166-1 alpha-2) and communities (``SICA``, ``CARICOM``) to which
            the bulletin is releasable; unique, at least one.
        handling: SIENA-style handling codes that travel with the bulletin as caveats.
        handling_note: the text of an H3 restriction.
        precedence: delivery precedence.
        source_grade: Admiralty grading, source reliability A-F and credibility 1-6 ("B2").
        named: agencies the originator names as recipients (TLP:RED reaches only these).
        judicial_consent: justice agencies the originator lets use an H1 bulletin in
            judicial proceedings.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    topic: Topic
    classification: Classification
    tlp: Tlp
    rel_to: tuple[JurisdictionStr, ...] = Field(min_length=1, max_length=64)
    handling: tuple[Handling, ...] = Field(default=(), max_length=4)
    handling_note: HandlingNote | None = None
    precedence: Precedence = Precedence.ROUTINE
    source_grade: SourceGrade | None = None
    named: tuple[AgencyIdStr, ...] = Field(default=(), max_length=64)
    judicial_consent: tuple[AgencyIdStr, ...] = Field(default=(), max_length=64)

    @field_validator("rel_to", "handling", "named", "judicial_consent")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("values must be unique")
        return value
