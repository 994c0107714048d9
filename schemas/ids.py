"""Identifiers that travel on the wire and become NATS subject tokens.

Agency ids are restricted to ``[a-z0-9-]``, 3 to 32 characters, starting and ending with a
letter or digit: a single NATS token that can never hold ``.``, ``*``, ``>``, ``$``, white
space or a confusable letter. Subjects are built only from ids that passed this check.
"""

from __future__ import annotations

import re
import uuid
from typing import Annotated, NewType

from pydantic import StringConstraints

from schemas.errors import EnvelopeError

__all__ = [
    "AGENCY_ID_PATTERN",
    "AgencyId",
    "AgencyIdStr",
    "BulletinId",
    "BulletinIdStr",
    "JurisdictionStr",
    "new_bulletin_id",
    "parse_agency_id",
]

AGENCY_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{1,30}[a-z0-9]$"
BULLETIN_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
JURISDICTION_PATTERN = r"^[A-Z][A-Z0-9-]{1,15}$"

AgencyId = NewType("AgencyId", str)
BulletinId = NewType("BulletinId", str)

AgencyIdStr = Annotated[str, StringConstraints(pattern=AGENCY_ID_PATTERN)]
BulletinIdStr = Annotated[str, StringConstraints(pattern=BULLETIN_ID_PATTERN)]
JurisdictionStr = Annotated[str, StringConstraints(pattern=JURISDICTION_PATTERN)]

_AGENCY_RE = re.compile(AGENCY_ID_PATTERN)
_BULLETIN_RE = re.compile(BULLETIN_ID_PATTERN)


def parse_agency_id(value: str) -> AgencyId:
    """Return ``value`` as an AgencyId, or raise EnvelopeError naming what is wrong."""
    if not isinstance(value, str) or _AGENCY_RE.fullmatch(value) is None:
        # Not echoed: the value is whatever the caller sent.
        raise EnvelopeError("invalid agency id: use 3-32 of a-z, 0-9 and '-'", code="bad_agency_id")
    return AgencyId(value)


def parse_bulletin_id(value: str) -> BulletinId:
    """Return ``value`` as a BulletinId (a lowercase UUIDv4), or raise EnvelopeError."""
    if not isinstance(value, str) or _BULLETIN_RE.fullmatch(value) is None:
        raise EnvelopeError("invalid bulletin id: expected a lowercase UUIDv4", code="malformed")
    return BulletinId(value)


def new_bulletin_id() -> BulletinId:
    """A fresh, unguessable bulletin id (122 random bits)."""
    return BulletinId(str(uuid.uuid4()))
