"""Suspension, reinstatement and revocation of agencies, and revocation of keys.

Each change and its audit event commit together. A running stack learns of it on
``istmo.control.directory`` (only the broker's own account can publish there): it
rebuilds the directory and the policy snapshot, and reloads nats-server without a
restart so a suspended or revoked agency's connection loses its rights at once. Its
durable consumer is kept: deliveries queued for a suspended agency wait, not lost, until
it is reinstated.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from sqlmodel import Session

from broker.store.registry import AgencyRow, Registry, SigningKeyRow
from schemas.audit import AuditEvent
from schemas.errors import ConfigError

__all__ = ["CONTROL_DIRECTORY_SUBJECT", "revoke_signing_key", "set_agency_status"]

CONTROL_DIRECTORY_SUBJECT = "istmo.control.directory"
Status = Literal["active", "suspended", "revoked"]
_EVENT = {
    "active": "agency.reinstated",
    "suspended": "agency.suspended",
    "revoked": "agency.revoked",
}


def set_agency_status(
    registry: Registry, agency_id: str, status: Status, *, actor: str, note: str = ""
) -> str:
    """Set ``agency_id``'s status and record why; returns the previous status.

    Raises:
        ConfigError: unknown agency, no change, or reinstating a revoked agency.
    """
    previous: list[str] = []

    def apply(s: Session) -> None:
        row = s.get(AgencyRow, agency_id)
        if row is None:
            raise ConfigError(f"unknown agency {agency_id}")
        if row.status == status:
            raise ConfigError(f"agency {agency_id} is already {status}")
        if row.status == "revoked":
            raise ConfigError(f"agency {agency_id} is revoked; revocation is final")
        previous.append(row.status)
        row.status = status
        s.add(row)

    event = AuditEvent(
        event_id=f"status:{uuid.uuid4()}",
        type=_EVENT[status],  # type: ignore[arg-type]  # the three keys are event types
        time=time.time_ns() // 1_000_000,
        actor=actor[:200],
        subject=agency_id,
        data={"status": status, "note": note[:200]},
    )
    registry.change(apply, [event])
    return previous[0]


def revoke_signing_key(
    registry: Registry, agency_id: str, kid: str, *, actor: str, at: int | None = None
) -> None:
    """Revoke one of ``agency_id``'s signing keys from ``at`` (default: now).

    Bulletins signed with it and stored before ``at`` still verify; later ones are refused.

    Raises:
        ConfigError: no such key of that agency, or already revoked.
    """
    when = int(time.time()) if at is None else at

    def apply(s: Session) -> None:
        row = s.get(SigningKeyRow, kid)
        if row is None or row.agency != agency_id:
            raise ConfigError(f"agency {agency_id} has no signing key {kid}")
        if row.revoked_at is not None:
            raise ConfigError(f"key {kid} was already revoked")
        row.revoked_at = when
        s.add(row)

    event = AuditEvent(
        event_id=f"key-revoked:{kid}",
        type="key.revoked",
        time=time.time_ns() // 1_000_000,
        actor=actor[:200],
        subject=agency_id,
        data={"kid": kid, "revoked_at": when},
    )
    registry.change(apply, [event])
