"""An agency's standing in the directory, spelt once.

Kept free of pydantic so that a command which only names a status (``istmo admin
suspend``, which asks the running stack over NATS) starts without importing the models.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["STATUSES", "Status"]

Status = Literal["active", "suspended", "revoked"]
STATUSES: frozenset[str] = frozenset(get_args(Status))
