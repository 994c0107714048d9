"""Adopted policy sets: archived by version in the data directory, newest active.

``adopt`` validates a candidate directory completely (parse, lint, schema validation, and
an engine built over the live directory) before anything changes; a bad candidate never
replaces the active set. Every adoption and every refusal is an audit event. A running
relay learns of an adoption on ``istmo.control.policy`` (only the broker's own account
can publish there) and swaps its engine without a restart.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from broker.audit import events
from broker.clock import SYSTEM_CLOCK, Clock
from broker.config import Settings
from broker.directory.service import DirectoryService
from broker.policy.engine import BulletinFacts, PolicyBundle, PolicyLoadError
from broker.store.registry import PolicySetRow, Registry
from schemas.labels import Labels

__all__ = [
    "CONTROL_POLICY_SUBJECT",
    "Adoption",
    "active_policy_dir",
    "adopt",
    "simulation_cases",
]

CONTROL_POLICY_SUBJECT = "istmo.control.policy"
_POLICY_FILES = ("*.cedarschema", "*.cedar", "overrides/*.cedar")


@dataclass(frozen=True)
class Adoption:
    previous: str | None
    version: str
    archived_at: Path


def archive_root(settings: Settings) -> Path:
    return settings.data_dir / "policies"


def active_policy_dir(settings: Settings, registry: Registry) -> Path:
    """Where the active policy set lives: the newest adopted one, else the checkout's."""
    row = registry.active_policy()
    if row is None:
        return settings.policy_dir
    return archive_root(settings) / row.version


def adopt(
    candidate: Path,
    *,
    settings: Settings,
    registry: Registry,
    active: PolicyBundle,
    adopted_by: str,
    check: Callable[[PolicyBundle], object] | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> Adoption:
    """Validate ``candidate`` and make it the active policy set.

    Args:
        candidate: a directory laid out like ``policies/``.
        settings: for the data directory.
        registry: records the adoption and its audit event.
        active: the set in force now (its version is recorded as the previous one).
        adopted_by: who adopts it, for the audit log.
        check: an optional callable taking the new bundle, raising if it cannot serve
            the live directory (the caller builds an engine with it).
        clock: when it is adopted (or refused).

    Raises:
        PolicyLoadError: the candidate is invalid; nothing changed, the refusal is audited.
    """
    now_ms = clock.now_ms()
    try:
        bundle = PolicyBundle.load(candidate)
        if check is not None:
            check(bundle)
    except PolicyLoadError as exc:
        refused = events.policy_rejected(
            str(candidate),
            active_version=active.version,
            problems=exc.problems,
            actor=adopted_by,
            at=now_ms,
        )
        registry.record([], [refused])
        raise
    target = archive_root(settings) / bundle.version
    if not target.exists():
        staging = target.with_name(target.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        for pattern in _POLICY_FILES:
            for src in candidate.glob(pattern):
                dst = staging / src.relative_to(candidate)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
        staging.rename(target)
    registry.record(
        [
            PolicySetRow(
                version=bundle.version,
                adopted_at=now_ms // 1000,
                adopted_by=adopted_by[:200],
                previous=active.version,
            )
        ],
        [
            events.policy_adopted(
                bundle.version,
                previous_version=active.version,
                files=bundle.files,
                actor=adopted_by,
                at=now_ms,
            )
        ],
    )
    return Adoption(previous=active.version, version=bundle.version, archived_at=target)


def simulation_cases(
    registry: Registry, directory: DirectoryService, last: int
) -> list[tuple[BulletinFacts, list[str]]]:
    """The latest ``last`` bulletins as simulation cases, each with the agencies to decide
    for (the topic's candidates and the bulletin's actual recipients)."""
    cases = []
    for row in registry.recent_bulletins(last):
        labels = Labels.model_validate_json(row.labels)
        origin = directory.records.get(row.originator)
        facts = BulletinFacts(
            bulletin_id=row.id,
            originator=row.originator,
            origin_state=origin.state if origin else None,
            labels=labels,
            not_before=row.not_before,
            expires_at=None,  # replay the rules, not the clock
        )
        candidates = set(directory.candidates(labels.topic, labels.named))
        candidates |= set(row.recipients.split(","))
        cases.append((facts, sorted(c for c in candidates if c)))
    return cases
