"""Enrolling a new agency: an administrator creates it and issues a one-time token; the
agency redeems the token with the public halves of the keys it made on its own machine.

Only a SHA-256 of a token's secret is stored (``enrolment_token``), never the secret. A
token is good once, until it expires; issuing a new one for the same agency revokes the
ones still outstanding. Redemption checks, in order, each refusing with a reason code:

  1. the token is well formed, its id is known and its secret matches (constant time);
     anything else is ``invalid_token``, the same answer whatever was wrong;
  2. it is not used, revoked or expired, and its agency is active and not enrolled yet;
  3. the request names this token, was issued within the clock skew, and its keys are
     well formed, not weak, and proven held (``schemas.enrolment.verify_enrolment``);
  4. no key in it is registered already.

Then, in one transaction with their audit events: the token is spent (a conditional
update, so two redemptions cannot both win), and the signing key, encryption key and NATS
user are registered. A refused redemption changes nothing.

Left to others: HTTP (``broker.api.enrol``), telling a running stack (its directory and
nats-server) that the directory changed, creating the agency's durable consumer.
"""

from __future__ import annotations

import hmac
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import update
from sqlmodel import Field, Session, SQLModel, select

from broker.audit import events
from broker.clock import SYSTEM_CLOCK, Clock
from broker.directory.admins import AdminRow
from broker.directory.jurisdictions import PARTNER
from broker.store.registry import (
    AgencyRow,
    EncryptionKeyRow,
    NatsUserRow,
    Registry,
    SigningKeyRow,
    SubscriptionRow,
)
from schemas.audit import AuditEvent
from schemas.canonical import b64d, b64e
from schemas.directory import SECTORS
from schemas.enrolment import (
    EnrolmentAnswer,
    EnrolmentRequest,
    new_enrolment_token,
    split_enrolment_token,
    token_digest,
    verify_enrolment,
)
from schemas.errors import ConfigError, EnvelopeError, IstmoError
from schemas.ids import AGENCY_ID_PATTERN
from schemas.keys import VerifyKey
from schemas.keystore import PinnedKey
from schemas.labels import TOPICS, Classification

__all__ = [
    "DEFAULT_TOKEN_TTL_S",
    "MAX_TOKEN_TTL_S",
    "MIN_TOKEN_TTL_S",
    "EnrolmentTokenRow",
    "NewAgency",
    "RequestRefused",
    "TokenRefused",
    "create_agency",
    "issue_token",
    "redeem",
    "start_reenrolment",
]

DEFAULT_TOKEN_TTL_S = 24 * 3600
MIN_TOKEN_TTL_S = 60
MAX_TOKEN_TTL_S = 30 * 24 * 3600
DEFAULT_MAX_SKEW_S = 120
MAX_COMMUNITIES = 16

# The audit vocabulary (schemas.audit) has no "agency.created" or "enrolment token issued"
# type: the three steps of an enrolment are "agency.enrolled" events told apart by
# data["stage"] (created, token_issued, keys_registered).
_ID = re.compile(AGENCY_ID_PATTERN)
_GRADE = re.compile(r"[A-F][1-6]")
# Compared against when a token id is unknown, so a miss costs what a hit costs.
_NO_DIGEST = "0" * 64


class EnrolmentTokenRow(SQLModel, table=True):
    """A one-time enrolment token: its id and the SHA-256 of its secret, never the secret."""

    __tablename__ = "enrolment_token"
    id: str = Field(primary_key=True, max_length=24)
    secret_sha256: str = Field(max_length=64)
    agency: str = Field(index=True, max_length=32)
    created_by: str = Field(max_length=200)
    created_at: int
    expires_at: int
    used_at: int | None = None
    revoked_at: int | None = None  # a newer token for the same agency replaced it


class TokenRefused(IstmoError):
    """An enrolment token that does not admit its bearer.

    Attributes:
        code: ``invalid_token`` (unknown, malformed or forged: one answer for all),
            ``token_used``, ``token_revoked``, ``token_expired``, ``agency_not_active``,
            ``already_enrolled``.
        agency: the token's agency, once its secret matched (never for a forged token).
    """

    default_code = "invalid_token"

    def __init__(self, message: str, *, code: str | None = None, agency: str | None = None):
        super().__init__(message, code=code)
        self.agency = agency


class RequestRefused(EnvelopeError):
    """A valid token with a request that is not acceptable; the token stays good.

    Attributes:
        code: ``token_mismatch``, ``timestamp_out_of_window``, ``bad_key``,
            ``bad_proof``, ``key_reused`` (or a parse fault of a key).
        agency: the token's agency.
    """

    default_code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, agency: str):
        super().__init__(message, code=code)
        self.agency = agency


@dataclass(frozen=True)
class NewAgency:
    """An agency as an administrator describes it.

    Attributes:
        id: the agency id (``gt-police``), free among agencies and administrators.
        name: its display name.
        sector: one of ``schemas.directory.SECTORS``.
        clearance: a classification name (``CONFIDENTIAL``).
        topics: the topics it follows.
        state: its state (a national agency), or None.
        communities: its communities (a regional body), if it has no state.
        min_source_grade: the weakest Admiralty grade it accepts (``B2``), if any.
    """

    id: str
    name: str
    sector: str
    clearance: str
    topics: tuple[str, ...] = ()
    state: str | None = None
    communities: tuple[str, ...] = ()
    min_source_grade: str | None = None


def _bad(message: str) -> ConfigError:
    return ConfigError(message, code="bad_attribute")


def _check_new_agency(registry: Registry, a: NewAgency) -> tuple[int, tuple[str, ...]]:
    """The clearance level and the sorted topics of ``a``, once every field is valid.

    Raises:
        ConfigError: ``bad_attribute``, naming the field.
    """
    if not isinstance(a.id, str) or _ID.fullmatch(a.id) is None:
        raise _bad("id: use 3-32 of a-z, 0-9 and '-', starting and ending with a letter or digit")
    if not 0 < len(a.name) <= 200 or any(unicodedata.category(c)[0] == "C" for c in a.name):
        raise _bad("name: 1-200 printable characters")
    if a.sector not in SECTORS:
        raise _bad(f"sector: one of {', '.join(SECTORS)}")
    try:
        level = Classification(a.clearance).level
    except ValueError as exc:
        raise _bad(f"clearance: one of {', '.join(c.value for c in Classification)}") from exc
    kinds = {j.code: j.kind for j in registry.jurisdictions()}
    if (a.state is None) == (not a.communities):
        raise _bad("give a state (a national agency) or communities (a regional body)")
    if a.state is not None and kinds.get(a.state) not in ("state", PARTNER):
        raise _bad("state: not a state or partner region of the directory")
    if len(a.communities) > MAX_COMMUNITIES or len(set(a.communities)) != len(a.communities):
        raise _bad(f"communities: at most {MAX_COMMUNITIES}, each once")
    for c in a.communities:
        if kinds.get(c) != "community":
            raise _bad(f"communities[{a.communities.index(c)}]: not a community of the directory")
    unknown = [i for i, t in enumerate(a.topics) if t not in TOPICS]
    if unknown:
        raise _bad(f"topics[{unknown[0]}]: not one of {', '.join(TOPICS)}")
    if a.min_source_grade is not None and _GRADE.fullmatch(a.min_source_grade) is None:
        raise _bad("min_source_grade: a letter A-F and a digit 1-6, like B2")
    return level, tuple(sorted(set(a.topics)))


def create_agency(registry: Registry, agency: NewAgency, *, created_by: str, now: int) -> None:
    """Add ``agency`` to the directory, active and without keys until it enrols.

    Until then it has no signing key (no token, no bulletin verifies), no encryption key
    (no one can seal for it, so it is never a recipient) and no NATS user.

    Raises:
        ConfigError: a field is not valid (``bad_attribute``), or the id is taken
            (``id_taken``) by an agency or an administrator.
        AuditStoreError: the store refused the change.
    """
    level, topics = _check_new_agency(registry, agency)

    def apply(s: Session) -> None:
        if s.get(AgencyRow, agency.id) is not None or s.get(AdminRow, agency.id) is not None:
            raise ConfigError("that agency id is taken", code="id_taken")
        s.add(
            AgencyRow(
                id=agency.id,
                name=agency.name,
                sector=agency.sector,
                status="active",
                clearance=level,
                state=agency.state,
                communities=",".join(agency.communities),
                min_source_grade=agency.min_source_grade,
            )
        )
        for topic in topics:
            s.add(SubscriptionRow(agency=agency.id, topic=topic))

    event = events.agency_created(
        agency.id,
        sector=agency.sector,
        state=agency.state,
        communities=agency.communities,
        clearance=agency.clearance,
        topics=topics,
        actor=created_by,
        at=now * 1000,
    )
    registry.change(apply, [event])


def _enrolled(s: Session, agency: str) -> bool:
    """Holds a valid signing key or a NATS user (a re-enrolment withdrew neither)."""
    valid_key = s.exec(
        select(SigningKeyRow)
        .where(SigningKeyRow.agency == agency, SigningKeyRow.revoked_at.is_(None))  # type: ignore[union-attr]
        .limit(1)
    ).first()
    return valid_key is not None or s.get(NatsUserRow, agency) is not None


def issue_token(
    registry: Registry,
    agency: str,
    ttl_s: int,
    created_by: str,
    *,
    now: int | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> str:
    """A one-time enrolment token for ``agency``, valid ``ttl_s`` seconds; revokes the
    ones issued for it before and not used.

    Returns:
        The token (``istmo-enrol.<id>.<secret>``): show it once, store it nowhere.

    Raises:
        ConfigError: ``ttl_s`` out of bounds (``bad_attribute``), no such agency
            (``unknown_agency``), or one that is not active or already enrolled
            (``not_enrollable``).
        AuditStoreError: the store refused the change.
    """
    return _issue(registry, agency, ttl_s, created_by, now, clock, reenrol=False)


def start_reenrolment(
    registry: Registry,
    agency: str,
    ttl_s: int,
    created_by: str,
    *,
    now: int | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> str:
    """Re-enrol an enrolled agency whose keys are lost or compromised: in one transaction
    revoke every signing key of it from ``now``, retire its encryption keys and its NATS
    user, and issue a one-time token with which it enrols new ones (``redeem``).

    From then on its NATS connection is refused (once the stack has applied the change),
    nothing signed with the old keys after ``now`` verifies, and new bulletins are sealed
    to the new encryption key only. What it published before still verifies; deliveries
    already queued for it were sealed to the old encryption key and open only with the old
    keystore. Every key withdrawn is a ``key.revoked`` audit event.

    Returns:
        The token, as ``issue_token``.

    Raises:
        ConfigError: as ``issue_token``, and ``not_enrollable`` for an agency that has not
            enrolled yet (``issue_token`` is for that).
        AuditStoreError: the store refused the change.
    """
    return _issue(registry, agency, ttl_s, created_by, now, clock, reenrol=True)


def _issue(
    registry: Registry,
    agency: str,
    ttl_s: int,
    created_by: str,
    now: int | None,
    clock: Clock,
    *,
    reenrol: bool,
) -> str:
    now = clock.now_s() if now is None else now
    if not MIN_TOKEN_TTL_S <= ttl_s <= MAX_TOKEN_TTL_S:
        raise _bad(
            f"the token lifetime must be {MIN_TOKEN_TTL_S} s to {MAX_TOKEN_TTL_S // 86400} d"
        )
    token_id, token = new_enrolment_token()
    secret = token.rsplit(".", 1)[1]
    issued = events.enrolment_token_issued(
        agency, token_id, expires_at=now + ttl_s, actor=created_by, at=now * 1000
    )
    # The withdrawn keys' events are added by apply: Registry.change reads the list after it.
    audit: list[AuditEvent] = [issued]

    def apply(s: Session) -> None:
        row = s.get(AgencyRow, agency)
        if row is None:
            raise ConfigError("no such agency", code="unknown_agency")
        if row.status != "active":
            raise ConfigError(f"the agency is {row.status}", code="not_enrollable")
        if reenrol:
            if not _enrolled(s, agency):
                raise ConfigError(
                    "the agency has not enrolled yet",
                    code="not_enrollable",
                    hint="`istmo admin agency token AGENCY` issues a new token for it",
                )
            audit[:0] = _withdraw_keys(s, agency, now, created_by)
        elif _enrolled(s, agency):
            raise ConfigError(
                "the agency is enrolled already; it rotates its keys with `istmo keys rotate`",
                code="not_enrollable",
                hint="if its keys are lost, `istmo admin agency reenrol AGENCY` replaces them",
            )
        table = EnrolmentTokenRow.__table__  # type: ignore[attr-defined]  # sqlmodel table
        s.connection().execute(
            update(table)
            .where(table.c.agency == agency, table.c.used_at.is_(None))
            .where(table.c.revoked_at.is_(None), table.c.expires_at > now)
            .values(revoked_at=now)
        )
        s.add(
            EnrolmentTokenRow(
                id=token_id,
                secret_sha256=token_digest(secret),
                agency=agency,
                created_by=created_by[:200],
                created_at=now,
                expires_at=now + ttl_s,
            )
        )

    registry.change(apply, audit)
    return token


def _withdraw_keys(s: Session, agency: str, now: int, actor: str) -> list[AuditEvent]:
    """Revoke ``agency``'s valid signing keys, retire its encryption keys and delete its
    NATS user; the audit event of each."""
    at = now * 1000
    withdrawn: list[AuditEvent] = []
    for key in s.exec(select(SigningKeyRow).where(SigningKeyRow.agency == agency)).all():
        if key.revoked_at is None:
            key.revoked_at = now
            s.add(key)
            withdrawn.append(
                events.key_revoked(agency, key.kid, revoked_at=now, actor=actor, at=at)
            )
    for enc in s.exec(select(EncryptionKeyRow).where(EncryptionKeyRow.agency == agency)).all():
        if enc.current:
            enc.current = False
            s.add(enc)
            withdrawn.append(
                events.key_revoked(
                    agency, enc.kid, revoked_at=now, actor=actor, at=at, use="encryption"
                )
            )
    user = s.get(NatsUserRow, agency)
    if user is not None:
        s.delete(user)
        withdrawn.append(
            events.key_revoked(
                agency, user.nkey_public, revoked_at=now, actor=actor, at=at, use="nats"
            )
        )
    return withdrawn


def _check_token(registry: Registry, token: str, now: int) -> EnrolmentTokenRow:
    """Steps 1 and 2: the token's row, if the token admits its bearer now."""
    parts = split_enrolment_token(token)
    token_id, secret = parts if parts is not None else ("", "")
    with registry.session() as s:
        row = s.get(EnrolmentTokenRow, token_id) if parts is not None else None
    # 1. Compare digests in constant time, against a dummy when the id is unknown.
    presented = token_digest(secret)
    stored = row.secret_sha256 if row is not None else _NO_DIGEST
    matches = hmac.compare_digest(presented.encode(), stored.encode())
    if row is None or parts is None or not matches:
        raise TokenRefused("the enrolment token is not valid")
    # 2. Spendable now, for an agency that may enrol. (Only a bearer of the real secret
    #    learns which: a forger never gets past step 1.)
    who = row.agency
    if row.used_at is not None:
        raise TokenRefused("this enrolment token was used already", code="token_used", agency=who)
    if row.revoked_at is not None:
        raise TokenRefused(
            "this enrolment token was replaced by a newer one",
            code="token_revoked",
            agency=who,
        )
    if row.expires_at <= now:
        ago = (now - row.expires_at) // 60
        raise TokenRefused(
            f"this enrolment token expired {ago} min ago; ask for a new one",
            code="token_expired",
            agency=who,
        )
    agency = registry.agency(who)
    if agency is None or agency.status != "active":
        status = "unknown" if agency is None else agency.status
        raise TokenRefused(f"the agency is {status}", code="agency_not_active", agency=who)
    with registry.session() as s:
        if _enrolled(s, who):
            raise TokenRefused(
                "the agency is enrolled already", code="already_enrolled", agency=who
            )
    return row


def redeem(
    registry: Registry,
    token: str,
    request: EnrolmentRequest,
    now: int,
    *,
    directory_key: VerifyKey,
    max_skew_s: int = DEFAULT_MAX_SKEW_S,
) -> EnrolmentAnswer:
    """Register a new agency's keys against its enrolment token (steps in the module
    docstring).

    Args:
        registry: the broker's store.
        token: the enrolment token as the agency received it.
        request: the signed request with the public halves of its keys.
        now: epoch seconds.
        directory_key: the broker's directory key, which the agency pins.
        max_skew_s: how far ``request.issued_at`` may be from ``now``.

    Returns:
        The agency, its registered key ids and the directory key to pin (no NATS URL:
        the HTTP shell knows it).

    Raises:
        TokenRefused: the token does not admit its bearer (nothing changes).
        RequestRefused: the request is refused (``code`` says why: ``token_mismatch``,
            ``timestamp_out_of_window``, ``bad_key``, ``bad_proof``, ``key_reused``);
            nothing changes and the token stays good.
        AuditStoreError: the store refused the change.
    """
    row = _check_token(registry, token, now)  # 1, 2
    agency = row.agency
    try:
        # 3. This token, fresh, keys valid and held.
        if request.token_id != row.id:
            raise EnvelopeError("the request names another enrolment token", code="token_mismatch")
        if abs(request.issued_at - now) > max_skew_s:
            raise EnvelopeError(
                f"the request was issued {request.issued_at - now:+d} s from the broker clock "
                f"(allowed {max_skew_s} s)",
                code="timestamp_out_of_window",
            )
        signing, encryption = verify_enrolment(request)
        # 4. No key is anyone's already (checked again inside the transaction).
        _check_unused(registry, request)
    except EnvelopeError as exc:
        raise RequestRefused(str(exc), code=exc.code, agency=agency) from exc

    def apply(s: Session) -> None:
        table = EnrolmentTokenRow.__table__  # type: ignore[attr-defined]  # sqlmodel table
        spent = s.connection().execute(
            update(table)
            .where(table.c.id == row.id, table.c.used_at.is_(None))
            .where(table.c.revoked_at.is_(None), table.c.expires_at > now)
            .values(used_at=now)
        )
        if spent.rowcount != 1:
            raise TokenRefused(
                "this enrolment token was used meanwhile", code="token_used", agency=agency
            )
        current = s.get(AgencyRow, agency)
        if current is None or current.status != "active" or _enrolled(s, agency):
            raise TokenRefused(
                "the agency changed meanwhile", code="agency_not_active", agency=agency
            )
        try:
            _check_unused_in(s, request)
        except EnvelopeError as exc:
            raise RequestRefused(str(exc), code=exc.code, agency=agency) from exc
        s.add(
            SigningKeyRow(
                kid=signing.kid, agency=agency, public=b64e(signing.public), created_at=now
            )
        )
        s.add(
            EncryptionKeyRow(
                kid=encryption.kid,
                agency=agency,
                kem=encryption.kem,
                public=b64e(encryption.public),
                created_at=now,
            )
        )
        s.add(NatsUserRow(agency=agency, nkey_public=request.nats_user))

    registry.change(apply, _redeemed_events(agency, row.id, request, now))
    return EnrolmentAnswer(
        v=1,
        agency=agency,
        signing_kid=signing.kid,
        encryption_kid=encryption.kid,
        nats_user=request.nats_user,
        directory_key=PinnedKey(kid=directory_key.kid, public=b64e(directory_key.public)),
    )


def _check_unused(registry: Registry, request: EnrolmentRequest) -> None:
    with registry.session() as s:
        _check_unused_in(s, request)


def _check_unused_in(s: Session, request: EnrolmentRequest) -> None:
    taken = (
        s.get(SigningKeyRow, request.signing.kid) is not None
        or s.get(EncryptionKeyRow, request.encryption.kid) is not None
        or s.exec(select(NatsUserRow).where(NatsUserRow.nkey_public == request.nats_user)).first()
        is not None
    )
    if taken:
        raise EnvelopeError("a key in the request is registered already", code="key_reused")


def _raw(public: str) -> bytes:
    """A public key of a request as bytes (the request's model checked it is base64)."""
    return b64d(public, field="public key", max_bytes=4096)


def _redeemed_events(
    agency: str, token_id: str, request: EnrolmentRequest, now: int
) -> Sequence[AuditEvent]:
    at = now * 1000
    enc = request.encryption
    return [
        events.agency_enrolled(agency, token_id=token_id, at=at),
        events.key_registered(
            agency,
            request.signing.kid,
            "signing",
            at=at,
            actor=agency,
            public=_raw(request.signing.public),
        ),
        events.key_registered(
            agency,
            enc.kid,
            "encryption",
            at=at,
            actor=agency,
            kem=enc.kem,
            public=_raw(enc.public),
        ),
        events.key_registered(
            agency,
            request.nats_user,
            "nats",
            at=at,
            actor=agency,
            public=request.nats_user.encode(),
        ),
    ]
