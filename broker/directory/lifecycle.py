"""Suspension, reinstatement and revocation of agencies, and revocation of keys.

Each change and its audit event commit together. A running stack learns of it on
``istmo.control.directory`` (only the broker's own account can publish there): it
rebuilds the directory and the policy snapshot, and reloads nats-server without a
restart so a suspended or revoked agency's connection loses its rights at once. Its
durable consumer is kept: deliveries queued for a suspended agency wait, not lost, until
it is reinstated.
"""

from __future__ import annotations

from sqlmodel import Session, select

from broker.audit import events
from broker.clock import SYSTEM_CLOCK, Clock
from broker.store.registry import AgencyRow, Registry, SigningKeyRow
from schemas.agency_status import Status
from schemas.errors import ConfigError

__all__ = ["CONTROL_DIRECTORY_SUBJECT", "Status", "revoke_signing_key", "set_agency_status"]

CONTROL_DIRECTORY_SUBJECT = "istmo.control.directory"


def set_agency_status(
    registry: Registry,
    agency_id: str,
    status: Status,
    *,
    actor: str,
    note: str = "",
    clock: Clock = SYSTEM_CLOCK,
) -> str:
    """Set ``agency_id``'s status and record why; returns the previous status.

    Raises:
        ConfigError: unknown agency, no change, or reinstating a revoked agency.
    """
    previous: list[str] = []

    def apply(s: Session) -> None:
        row = s.get(AgencyRow, agency_id)
        if row is None:
            raise ConfigError("no such agency")
        if row.status == status:
            raise ConfigError(f"the agency is already {status}")
        if row.status == "revoked":
            raise ConfigError("the agency is revoked; revocation is final")
        previous.append(row.status)
        row.status = status
        s.add(row)

    event = events.agency_status_changed(
        agency_id, status, note=note, actor=actor, at=clock.now_ms()
    )
    registry.change(apply, [event])
    return previous[0]


def revoke_signing_key(
    registry: Registry,
    agency_id: str,
    kid: str,
    *,
    actor: str,
    at: int | None = None,
    clock: Clock = SYSTEM_CLOCK,
    force: bool = False,
) -> None:
    """Revoke one of ``agency_id``'s signing keys from ``at`` (default: now, by ``clock``).

    Bulletins signed with it and stored before ``at`` still verify; later ones are refused.
    The agency's last valid signing key only with ``force``: without one it can neither
    publish nor sign a rotation, until it is re-enrolled (``start_reenrolment``).

    Raises:
        ConfigError: no such key of that agency, already revoked, or (``last_key``) its
            last valid one without ``force``.
    """
    now_ms = clock.now_ms()
    when = now_ms // 1000 if at is None else at

    def apply(s: Session) -> None:
        row = s.get(SigningKeyRow, kid)
        if row is None or row.agency != agency_id:
            raise ConfigError("the agency has no signing key by that id")
        if row.revoked_at is not None:
            raise ConfigError("that key was already revoked")
        valid = s.exec(
            select(SigningKeyRow.kid).where(
                SigningKeyRow.agency == agency_id,
                SigningKeyRow.revoked_at.is_(None),  # type: ignore[union-attr]
            )
        ).all()
        if list(valid) == [kid] and not force:
            raise ConfigError(
                "that is the agency's last valid signing key: without it the agency can "
                "neither publish nor rotate its keys",
                code="last_key",
                hint="if its keys are lost or compromised, `istmo admin agency reenrol AGENCY` "
                "replaces them all; to revoke this one alone, add --force",
            )
        row.revoked_at = when
        s.add(row)

    event = events.key_revoked(agency_id, kid, revoked_at=when, actor=actor, at=now_ms)
    registry.change(apply, [event])
