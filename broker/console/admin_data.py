"""What the administrators' agency pages show and do, over the registry.

Read side: the directory's agencies grouped by state (or community, for regional bodies)
and sector, with their status and keys (kid, algorithm, a SHA-256 fingerprint of the
public key, registration and revocation dates).

Write side: every change goes through the same functions as ``istmo admin`` and the HTTP
API (``broker.directory.lifecycle.set_agency_status``,
``broker.directory.enrolment.issue_token``), so each is audited with the administrator
as actor and has the same effect.

Left to others: HTTP, sessions, CSRF and rendering (``broker.console.admin``); telling the
running stack (``broker.api.enrol.apply_directory_change``); the policy side
(``broker.console.admin_policy_data``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from sqlmodel import select

from broker.directory.enrolment import DEFAULT_TOKEN_TTL_S, issue_token
from broker.directory.lifecycle import Status, revoke_signing_key, set_agency_status
from broker.directory.service import DirectoryService
from broker.store.registry import (
    AgencyRow,
    EncryptionKeyRow,
    NatsUserRow,
    Registry,
    SigningKeyRow,
    SubscriptionRow,
)
from schemas.directory import SECTORS
from schemas.enrolment import split_enrolment_token
from schemas.labels import Classification

__all__ = [
    "ACTIONS",
    "Action",
    "AgencyView",
    "IssuedToken",
    "KeyView",
    "PlaceGroup",
    "agency_groups",
    "agency_view",
    "change_status",
    "fingerprint",
    "issue_enrolment_token",
    "revoke_key",
]

Action = Literal["suspend", "reinstate", "revoke"]
ACTIONS: dict[Action, Status] = {"suspend": "suspended", "reinstate": "active", "revoke": "revoked"}
_ALLOWED_FROM: dict[Action, tuple[str, ...]] = {
    "suspend": ("active",),
    "reinstate": ("suspended",),
    "revoke": ("active", "suspended"),
}
_CLASSIFICATIONS = tuple(c.value for c in Classification)


# ---------------------------------------------------------------------- agencies
@dataclass(frozen=True)
class KeyView:
    """One public key of an agency, as an administrator checks it.

    Attributes:
        kind: ``signing``, ``encryption`` or ``nats``.
        kid: its key id (derived from the public bytes), or the NATS public nkey.
        algorithm: ``Ed25519``, the HPKE KEM name, or ``Ed25519 (nkey)``.
        fingerprint: SHA-256 of the public key as registered, grouped by four.
        created_at: when it was registered (epoch seconds), if known.
        revoked_at: when it stopped being valid for new signatures, if it did.
        current: whether it is the one in use (for encryption keys, the current one).
    """

    kind: Literal["signing", "encryption", "nats"]
    kid: str
    algorithm: str
    fingerprint: str
    created_at: int | None
    revoked_at: int | None
    current: bool


@dataclass(frozen=True)
class AgencyView:
    """An agency with its keys, ready to show.

    ``last_rotation`` is the newest registration of a signing key (enrolment or a
    rotation); ``enrolled`` says whether it has registered keys at all.
    """

    id: str
    name: str
    sector: str
    status: str
    state: str | None
    communities: tuple[str, ...]
    clearance: str
    min_source_grade: str | None
    topics: tuple[str, ...]
    keys: tuple[KeyView, ...]

    @property
    def enrolled(self) -> bool:
        return bool(self.keys)

    @property
    def place(self) -> str:
        return self.state or ",".join(self.communities) or "-"

    @property
    def last_rotation(self) -> int | None:
        times = [k.created_at for k in self.keys if k.kind == "signing" and k.created_at]
        return max(times) if times else None

    @property
    def active_signing(self) -> int:
        return sum(1 for k in self.keys if k.kind == "signing" and k.revoked_at is None)

    def allows(self, action: Action) -> bool:
        """Whether ``action`` applies to this agency in its present status."""
        return self.status in _ALLOWED_FROM[action]

    @property
    def can_enrol(self) -> bool:
        """An enrolment token can be issued: active and not enrolled yet."""
        return self.status == "active" and not self.enrolled


@dataclass(frozen=True)
class PlaceGroup:
    """The agencies of one state, or of one community (regional bodies), by sector."""

    code: str
    name: str
    kind: str
    agencies: tuple[AgencyView, ...] = field(default=())


def fingerprint(public_b64: str) -> str:
    """SHA-256 of a registered public key's bytes (base64 as stored; the text itself if
    it is not base64, as for NATS nkeys), first 128 bits, grouped by four hex digits."""
    try:
        raw = base64.b64decode(public_b64.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raw = public_b64.encode("utf-8", "replace")
    digest = hashlib.sha256(raw).hexdigest()[:32]
    return " ".join(digest[i : i + 4] for i in range(0, len(digest), 4))


def _keys(
    signing: Iterable[SigningKeyRow],
    encryption: Iterable[EncryptionKeyRow],
    nats: NatsUserRow | None,
) -> tuple[KeyView, ...]:
    out = [
        KeyView(
            "signing",
            k.kid,
            "Ed25519",
            fingerprint(k.public),
            k.created_at,
            k.revoked_at,
            k.revoked_at is None,
        )
        for k in sorted(signing, key=lambda k: k.created_at)
    ]
    out += [
        KeyView("encryption", k.kid, k.kem, fingerprint(k.public), k.created_at, None, k.current)
        for k in sorted(encryption, key=lambda k: k.created_at)
    ]
    if nats is not None:
        out.append(
            KeyView(
                "nats",
                nats.nkey_public,
                "Ed25519 (nkey)",
                fingerprint(nats.nkey_public),
                None,
                None,
                True,
            )
        )
    return tuple(out)


def _view(
    row: AgencyRow,
    topics: Iterable[str],
    signing: Iterable[SigningKeyRow],
    encryption: Iterable[EncryptionKeyRow],
    nats: NatsUserRow | None,
) -> AgencyView:
    level = row.clearance
    clearance = _CLASSIFICATIONS[level] if 0 <= level < len(_CLASSIFICATIONS) else str(level)
    return AgencyView(
        id=row.id,
        name=row.name,
        sector=row.sector,
        status=row.status,
        state=row.state,
        communities=tuple(c for c in row.communities.split(",") if c),
        clearance=clearance,
        min_source_grade=row.min_source_grade,
        topics=tuple(sorted(topics)),
        keys=_keys(signing, encryption, nats),
    )


def _sector_rank(sector: str) -> int:
    return SECTORS.index(sector) if sector in SECTORS else len(SECTORS)


def agency_groups(
    registry: Registry,
    *,
    place: str | None = None,
    sector: str | None = None,
    status: str | None = None,
) -> list[PlaceGroup]:
    """Every agency (or those matching the filters), grouped by state or community.

    National agencies are grouped under their state; regional bodies under their first
    community. Groups follow the jurisdiction table's names, states first; agencies in a
    group are in sector order, then by id. Reads the registry in a handful of queries.
    """
    with registry.session() as s:
        rows = list(s.exec(select(AgencyRow).order_by(AgencyRow.id)))
        subs = list(s.exec(select(SubscriptionRow)))
        signing = list(s.exec(select(SigningKeyRow)))
        enc = list(s.exec(select(EncryptionKeyRow)))
        nats = {n.agency: n for n in s.exec(select(NatsUserRow))}
    jurisdictions = {j.code: j for j in registry.jurisdictions()}
    by_agency_topics: dict[str, list[str]] = {}
    for sub in subs:
        by_agency_topics.setdefault(sub.agency, []).append(sub.topic)
    by_agency_sig: dict[str, list[SigningKeyRow]] = {}
    for k in signing:
        by_agency_sig.setdefault(k.agency, []).append(k)
    by_agency_enc: dict[str, list[EncryptionKeyRow]] = {}
    for e in enc:
        by_agency_enc.setdefault(e.agency, []).append(e)

    groups: dict[str, list[AgencyView]] = {}
    for row in rows:
        view = _view(
            row,
            by_agency_topics.get(row.id, ()),
            by_agency_sig.get(row.id, ()),
            by_agency_enc.get(row.id, ()),
            nats.get(row.id),
        )
        key = view.state or (view.communities[0] if view.communities else "-")
        if place and place not in (view.state, *view.communities):
            continue
        if sector and view.sector != sector:
            continue
        if status and view.status != status:
            continue
        groups.setdefault(key, []).append(view)

    def order(code: str) -> tuple[int, str]:
        j = jurisdictions.get(code)
        return (0 if j is not None and j.kind == "state" else 1, j.name if j else code)

    return [
        PlaceGroup(
            code=code,
            name=jurisdictions[code].name if code in jurisdictions else code,
            kind=jurisdictions[code].kind if code in jurisdictions else "community",
            agencies=tuple(sorted(groups[code], key=lambda a: (_sector_rank(a.sector), a.id))),
        )
        for code in sorted(groups, key=order)
    ]


def agency_view(registry: Registry, agency_id: str) -> AgencyView | None:
    """One agency with its keys, or None if there is no such agency."""
    row = registry.agency(agency_id)
    if row is None:
        return None
    nats = next((u for u in registry.nats_users() if u.agency == agency_id), None)
    return _view(
        row,
        registry.subscriptions().get(agency_id, set()),
        registry.signing_keys(agency_id),
        registry.encryption_keys(agency_id),
        nats,
    )


def change_status(
    registry: Registry, agency_id: str, action: Action, *, actor: str, note: str = ""
) -> str:
    """Suspend, reinstate or revoke ``agency_id`` as ``actor``; returns the previous status.

    The same change, with the same audit event, as ``istmo admin <action>`` and
    ``POST /v1/agencies/<id>/<action>``; the caller then has the running stack apply it.

    Raises:
        ConfigError: unknown agency, no change, or a revoked agency (revocation is final).
    """
    return set_agency_status(registry, agency_id, ACTIONS[action], actor=actor, note=note)


def revoke_key(
    registry: Registry, agency_id: str, kid: str, *, actor: str, now: int | None = None
) -> int:
    """Revoke one of ``agency_id``'s signing keys from ``now`` as ``actor``, as ``istmo admin
    revoke-key --force`` and ``POST /v1/agencies/<id>/keys/<kid>/revoke?force=true`` do
    (the console's confirmation page says when it is the agency's last valid key, and what
    that means: confirming it is the force); returns the time.

    Raises:
        ConfigError: the agency has no such key, or it is revoked already.
    """
    when = int(time.time()) if now is None else now
    revoke_signing_key(registry, agency_id, kid, actor=actor, at=when, force=True)
    return when


@dataclass(frozen=True)
class IssuedToken:
    """A one-time enrolment token, to be shown once and kept nowhere."""

    agency: str
    token: str = field(repr=False)
    token_id: str
    expires_at: int
    directory_kid: str


def issue_enrolment_token(
    registry: Registry,
    directory: DirectoryService,
    agency_id: str,
    *,
    actor: str,
    ttl_s: int = DEFAULT_TOKEN_TTL_S,
    now: int | None = None,
) -> IssuedToken:
    """A new one-time enrolment token for ``agency_id`` (revoking its unused ones), as
    ``POST /v1/agencies/<id>/enrolment-tokens`` issues it; audited without the secret.

    Raises:
        ConfigError: bad lifetime, unknown agency, or one that is not active or is
            enrolled already.
    """
    now = int(time.time()) if now is None else now
    token = issue_token(registry, agency_id, ttl_s, actor, now=now)
    parts = split_enrolment_token(token)
    if parts is None:  # issue_token made it; never expected
        raise RuntimeError("issue_token returned a malformed token")
    return IssuedToken(
        agency=agency_id,
        token=token,
        token_id=parts[0],
        expires_at=now + ttl_s,
        directory_kid=directory.directory_key.verify_key.kid,
    )
