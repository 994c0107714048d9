"""The broker's store: directory, bulletin metadata and the append-only audit events.

SQLite through sqlmodel by default (WAL, ``synchronous=FULL``: a committed audit event
survives a crash), any SQLAlchemy URL otherwise. Bodies are never stored: a bulletin row
holds its labels, digest, recipients and decisions. Audit events are append-only at the
database level: triggers refuse UPDATE and DELETE.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Field, Session, SQLModel, create_engine, select

from schemas.audit import AuditEvent
from schemas.errors import AuditStoreError, ConfigError

SCHEMA_VERSION = 2

__all__ = [
    "AgencyRow",
    "AuditRow",
    "BulletinRow",
    "DecisionRow",
    "EncryptionKeyRow",
    "JurisdictionRow",
    "MetaRow",
    "NatsUserRow",
    "PolicySetRow",
    "ReceiptRow",
    "Registry",
    "RejectionRow",
    "SigningKeyRow",
    "SubscriptionRow",
]


class JurisdictionRow(SQLModel, table=True):
    __tablename__ = "jurisdiction"
    code: str = Field(primary_key=True, max_length=16)
    kind: str = Field(max_length=16)  # state | community
    name: str = Field(max_length=200)
    parents: str = Field(default="", max_length=400)  # comma-separated communities


class AgencyRow(SQLModel, table=True):
    __tablename__ = "agency"
    id: str = Field(primary_key=True, max_length=32)
    name: str = Field(max_length=200)
    sector: str = Field(max_length=32)
    status: str = Field(default="active", max_length=16)
    clearance: int = 0
    state: str | None = Field(default=None, max_length=16)
    communities: str = Field(default="", max_length=400)  # comma-separated, regional bodies
    min_source_grade: str | None = Field(default=None, max_length=2)  # e.g. "B2"


class SubscriptionRow(SQLModel, table=True):
    __tablename__ = "subscription"
    agency: str = Field(primary_key=True, max_length=32)
    topic: str = Field(primary_key=True, max_length=64)


class SigningKeyRow(SQLModel, table=True):
    __tablename__ = "signing_key"
    kid: str = Field(primary_key=True, max_length=40)
    agency: str = Field(index=True, max_length=32)
    public: str = Field(max_length=64)
    created_at: int
    revoked_at: int | None = None


class EncryptionKeyRow(SQLModel, table=True):
    __tablename__ = "encryption_key"
    kid: str = Field(primary_key=True, max_length=40)
    agency: str = Field(index=True, max_length=32)
    kem: str = Field(max_length=32)
    public: str = Field(max_length=2048)
    created_at: int
    current: bool = True


class NatsUserRow(SQLModel, table=True):
    __tablename__ = "nats_user"
    agency: str = Field(primary_key=True, max_length=32)
    nkey_public: str = Field(max_length=64)


class BulletinRow(SQLModel, table=True):
    __tablename__ = "bulletin"
    id: str = Field(primary_key=True, max_length=36)
    originator: str = Field(index=True, max_length=32)
    labels: str  # canonical JSON of the labels
    envelope_digest: str = Field(max_length=64)
    ingest_seq: int
    created_at: int
    accepted_at: int
    not_before: int | None = None
    expires_at: int | None = None
    recipients: str  # comma-separated signed recipients
    policy_version: str = Field(max_length=64)
    directory_version: str = Field(max_length=64)


class PolicySetRow(SQLModel, table=True):
    """A policy set that was adopted; the newest is active. Files are archived by version."""

    __tablename__ = "policy_set"
    seq: int | None = Field(default=None, primary_key=True)
    version: str = Field(index=True, max_length=64)
    adopted_at: int
    adopted_by: str = Field(max_length=200)
    previous: str | None = Field(default=None, max_length=64)


class MetaRow(SQLModel, table=True):
    __tablename__ = "meta"
    key: str = Field(primary_key=True, max_length=64)
    value: str = Field(max_length=200)


class DecisionRow(SQLModel, table=True):
    __tablename__ = "decision"
    bulletin_id: str = Field(primary_key=True, max_length=36)
    agency: str = Field(primary_key=True, max_length=32)
    allowed: bool
    policy_ids: str  # comma-separated, sorted
    reasons: str  # JSON list of the policies' @reason texts


class ReceiptRow(SQLModel, table=True):
    __tablename__ = "receipt"
    bulletin_id: str = Field(primary_key=True, max_length=36)
    recipient: str = Field(primary_key=True, max_length=32)
    received_at: int
    recorded_at: int
    signature: str = Field(max_length=128)


class RejectionRow(SQLModel, table=True):
    __tablename__ = "rejection"
    ingest_seq: int = Field(primary_key=True)
    originator: str = Field(index=True, max_length=32)
    bulletin_id: str | None = Field(default=None, index=True, max_length=36)
    reason: str = Field(max_length=64)
    message: str = Field(max_length=300)
    time: int


class AuditRow(SQLModel, table=True):
    __tablename__ = "audit_event"
    seq: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(unique=True, max_length=160)
    type: str = Field(index=True, max_length=40)
    time: int = Field(index=True)
    actor: str = Field(index=True, max_length=200)
    subject: str = Field(index=True, max_length=200)  # auditors search by agency
    bulletin_id: str | None = Field(default=None, index=True, max_length=36)
    reason: str | None = Field(default=None, max_length=200)
    data: str  # canonical JSON

    def to_event(self) -> AuditEvent:
        return AuditEvent.model_validate_json(
            json.dumps(
                {
                    "event_id": self.event_id,
                    "type": self.type,
                    "time": self.time,
                    "actor": self.actor,
                    "subject": self.subject,
                    "bulletin_id": self.bulletin_id,
                    "reason": self.reason,
                    "data": json.loads(self.data),
                }
            )
        )


_APPEND_ONLY = (
    "CREATE TRIGGER IF NOT EXISTS audit_event_no_update BEFORE UPDATE ON audit_event "
    "BEGIN SELECT RAISE(ABORT, 'audit_event is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_event_no_delete BEFORE DELETE ON audit_event "
    "BEGIN SELECT RAISE(ABORT, 'audit_event is append-only'); END",
)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class Registry:
    """Directory, bulletins and audit events in one database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = create_engine(url)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        SQLModel.metadata.create_all(self.engine)
        if url.startswith("sqlite"):
            with self.engine.begin() as conn:
                for ddl in _APPEND_ONLY:
                    conn.execute(text(ddl))
        self._check_schema_version()

    def _check_schema_version(self) -> None:
        """Refuse a database made by an older layout (versioned migrations: issue 7)."""
        with self.session() as s:
            row = s.get(MetaRow, "schema_version")
            if row is None:
                if s.exec(select(AgencyRow).limit(1)).first() is not None:
                    raise ConfigError(
                        f"the database {self.url} was made by an older Istmo; "
                        "start with a new --data-dir"
                    )
                s.add(MetaRow(key="schema_version", value=str(SCHEMA_VERSION)))
                s.commit()
            elif row.value != str(SCHEMA_VERSION):
                raise ConfigError(
                    f"the database {self.url} has schema {row.value}, this Istmo needs "
                    f"{SCHEMA_VERSION}; start with a new --data-dir"
                )

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as s:
            yield s

    # ---------------------------------------------------------------- directory
    def is_empty(self) -> bool:
        with self.session() as s:
            return s.exec(select(AgencyRow).limit(1)).first() is None

    def add_all(self, rows: Iterable[SQLModel]) -> None:
        with self.session() as s:
            for row in rows:
                s.add(row)
            s.commit()

    def jurisdictions(self) -> list[JurisdictionRow]:
        with self.session() as s:
            return list(s.exec(select(JurisdictionRow)))

    def agencies(self) -> list[AgencyRow]:
        with self.session() as s:
            return list(s.exec(select(AgencyRow).order_by(AgencyRow.id)))

    def agency(self, agency_id: str) -> AgencyRow | None:
        with self.session() as s:
            return s.get(AgencyRow, agency_id)

    def subscriptions(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        with self.session() as s:
            for row in s.exec(select(SubscriptionRow)):
                out.setdefault(row.agency, set()).add(row.topic)
        return out

    def signing_key(self, kid: str) -> SigningKeyRow | None:
        with self.session() as s:
            return s.get(SigningKeyRow, kid)

    def signing_keys(self, agency: str) -> list[SigningKeyRow]:
        with self.session() as s:
            q = select(SigningKeyRow).where(SigningKeyRow.agency == agency)
            return list(s.exec(q))

    def encryption_keys(self, agency: str) -> list[EncryptionKeyRow]:
        with self.session() as s:
            q = select(EncryptionKeyRow).where(EncryptionKeyRow.agency == agency)
            return list(s.exec(q))

    def nats_users(self) -> list[NatsUserRow]:
        with self.session() as s:
            return list(s.exec(select(NatsUserRow).order_by(NatsUserRow.agency)))

    def active_policy(self) -> PolicySetRow | None:
        with self.session() as s:
            q = select(PolicySetRow).order_by(PolicySetRow.seq.desc()).limit(1)  # type: ignore[union-attr]
            return s.exec(q).first()

    def recent_bulletins(self, limit: int) -> list[BulletinRow]:
        with self.session() as s:
            q = select(BulletinRow).order_by(BulletinRow.accepted_at.desc()).limit(limit)  # type: ignore[attr-defined]
            return list(s.exec(q))

    # ---------------------------------------------------------------- bulletins
    def bulletin(self, bulletin_id: str) -> BulletinRow | None:
        with self.session() as s:
            return s.get(BulletinRow, bulletin_id)

    def decisions(self, bulletin_id: str) -> list[DecisionRow]:
        with self.session() as s:
            q = select(DecisionRow).where(DecisionRow.bulletin_id == bulletin_id)
            return list(s.exec(q))

    def receipts(self, bulletin_id: str) -> list[ReceiptRow]:
        with self.session() as s:
            q = select(ReceiptRow).where(ReceiptRow.bulletin_id == bulletin_id)
            return list(s.exec(q))

    def rejection_for(self, originator: str, bulletin_id: str) -> RejectionRow | None:
        with self.session() as s:
            q = select(RejectionRow).where(
                RejectionRow.originator == originator, RejectionRow.bulletin_id == bulletin_id
            )
            return s.exec(q).first()

    def record(
        self,
        rows: Sequence[SQLModel],
        events: Sequence[AuditEvent],
        *,
        bulk: Mapping[type[SQLModel], Sequence[Mapping[str, Any]]] | None = None,
    ) -> None:
        """Insert ``rows``, ``bulk`` (plain column values by table, for the many small rows
        of a fan-out) and ``events`` in one transaction. Rows and events already there (same
        primary key or event id) are left as they are, so a retried batch is harmless.

        Raises:
            AuditStoreError: the database refused the transaction.
        """
        by_table: dict[Any, list[Mapping[str, Any]]] = {}
        for row in rows:
            dumped = row.model_dump()
            if dumped.get("seq", 0) is None:
                del dumped["seq"]  # an autoincrement key the database assigns
            by_table.setdefault(type(row).__table__, []).append(dumped)  # type: ignore[attr-defined]
        for model, many in (bulk or {}).items():
            by_table.setdefault(model.__table__, []).extend(many)  # type: ignore[attr-defined]
        audit = [_audit_values(e) for e in events]
        try:
            with self.engine.begin() as conn:
                for table, values in by_table.items():
                    if values:
                        conn.execute(self._insert_new(table), values)
                if audit:
                    conn.execute(self._insert_new(AuditRow.__table__), audit)  # type: ignore[attr-defined]
        except SQLAlchemyError as exc:
            raise AuditStoreError(
                f"the store refused an audit write: {type(exc).__name__}"
            ) from exc

    def change(self, apply: Callable[[Session], None], events: Sequence[AuditEvent]) -> None:
        """Run ``apply`` (updates to existing rows) and insert ``events`` in one transaction,
        so a status or key change and its audit event stand or fall together.

        Raises:
            AuditStoreError: the database refused the transaction.
        """
        try:
            with self.session() as s:
                apply(s)
                s.flush()
                if events:
                    s.connection().execute(
                        self._insert_new(AuditRow.__table__),  # type: ignore[attr-defined]
                        [_audit_values(e) for e in events],
                    )
                s.commit()
        except SQLAlchemyError as exc:
            raise AuditStoreError(f"the store refused a change: {type(exc).__name__}") from exc

    def _insert_new(self, table: Any) -> Any:
        """INSERT that skips rows whose key exists (SQLite and PostgreSQL alike)."""
        if self.engine.dialect.name == "postgresql":
            return postgresql_insert(table).on_conflict_do_nothing()
        return sqlite_insert(table).on_conflict_do_nothing()

    def audit_events(
        self,
        *,
        bulletin_id: str | None = None,
        type_: str | None = None,
        actor: str | None = None,
        after_seq: int = 0,
        limit: int = 1000,
    ) -> list[AuditRow]:
        limit = max(1, min(limit, 1000))
        with self.session() as s:
            q = select(AuditRow).where(AuditRow.seq > after_seq)  # type: ignore[operator]
            if bulletin_id is not None:
                q = q.where(AuditRow.bulletin_id == bulletin_id)
            if type_ is not None:
                q = q.where(AuditRow.type == type_)
            if actor is not None:
                q = q.where(AuditRow.actor == actor)
            return list(s.exec(q.order_by(AuditRow.seq).limit(limit)))  # type: ignore[arg-type]  # sqlmodel types a column as its value


def _audit_values(e: AuditEvent) -> dict[str, Any]:
    return {
        "event_id": e.event_id,
        "type": e.type,
        "time": e.time,
        "actor": e.actor,
        "subject": e.subject,
        "bulletin_id": e.bulletin_id,
        "reason": e.reason,
        "data": json.dumps(
            e.model_dump(mode="json")["data"], sort_keys=True, separators=(",", ":")
        ),
    }
