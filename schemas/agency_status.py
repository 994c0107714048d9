"""An agency's standing in the directory, spelt once.

A literal and its values, no models: the directory's records, the audit events, the
policy's checks and the running stack's status requests all take them from here.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["STATUSES", "Status"]

Status = Literal["active", "suspended", "revoked"]
STATUSES: frozenset[str] = frozenset(get_args(Status))
