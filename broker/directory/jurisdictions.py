"""Partner jurisdictions: a partner region (Europol's SIENA, another Istmo region) named
in this directory so that its gateway agency can be enrolled here (ADR 32, ADR 33).

A partner jurisdiction is contained in no community: a bulletin releasable to SICA or
CARICOM never covers it, only a REL TO that names its code does. To the policy it is a
state of its own (``broker.directory.service`` builds it so): an agency enrolled in it is
``in`` it and in nothing else. States and communities come from the directory file and are
not added here.
"""

from __future__ import annotations

import re
import unicodedata

from broker.audit import events
from broker.store.registry import JurisdictionRow, Registry
from schemas.errors import ConfigError
from schemas.ids import JURISDICTION_PATTERN

__all__ = ["PARTNER", "add_partner"]

PARTNER = "partner"
_CODE = re.compile(JURISDICTION_PATTERN)


def add_partner(registry: Registry, code: str, name: str, *, actor: str, now_ms: int) -> None:
    """Add the partner jurisdiction ``code`` (like ``EU-SIENA``), audited.

    Raises:
        ConfigError: ``bad_attribute`` (the code or name is not valid), ``code_taken`` (a
            state, community or partner has that code).
        AuditStoreError: the store refused the change.
    """
    if _CODE.fullmatch(code) is None:
        raise ConfigError(
            "code: 2-16 of A-Z, 0-9 and '-', starting with a letter, like EU-SIENA",
            code="bad_attribute",
        )
    if not 0 < len(name) <= 200 or any(unicodedata.category(c)[0] == "C" for c in name):
        raise ConfigError("name: 1-200 printable characters", code="bad_attribute")
    if any(j.code == code for j in registry.jurisdictions()):
        raise ConfigError(f"{code} is already a jurisdiction of the directory", code="code_taken")
    row = JurisdictionRow(code=code, kind=PARTNER, name=name, parents="")
    registry.record([row], [events.jurisdiction_added(code, PARTNER, name, actor=actor, at=now_ms)])
