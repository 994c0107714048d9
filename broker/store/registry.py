"""The broker's store: directory, bulletin metadata and the append-only audit events.

SQLite through sqlmodel by default (WAL, ``synchronous=FULL``: a committed audit event
survives a crash), PostgreSQL through one URL (``ISTMO_DATABASE_URL``). The schema is the
Alembic head (``broker.store.db``, ``broker/migrations``): SQLite is upgraded on open, PostgreSQL
must be upgraded with ``istmo db upgrade`` first. Bodies are never stored: a bulletin row
holds its labels, digest, recipients and decisions. Audit events are append-only at the
database level: triggers refuse UPDATE and DELETE (and TRUNCATE on PostgreSQL).

Audit events are the sequencer's outbox, integrated in ``seq`` order; the sequencer must
never see ``seq`` N committed before a smaller one. SQLite has one writer at a time. On
PostgreSQL every transaction that writes audit events takes one transaction-level advisory
lock just before it inserts them and holds it to its commit, so ``seq`` order is commit order.

No SQLAlchemy error leaves the registry: its sessions and connections (``session``,
``connect``, ``begin``) raise ``AuditStoreError`` from it, so callers catch ours.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import BigInteger, Integer, Select, bindparam, event, text
from sqlalchemy import select as sa_select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Field, Session, SQLModel, col, select

from broker.store.db import (
    HEAD_REVISION,
    display_url,
    is_sqlite,
    make_engine,
    open_schema,
    sqlite_path,
    store_error,
    store_errors,
)
from broker.store.forwards import ForwardRequestRow
from broker.store.groups import GroupEpochRow, GroupRow, GroupWrapRow
from broker.store.journal import (
    JOURNALED_TABLES,
    journal_changes,
    journal_serial,
    journal_tail,
    touched_agencies,
)
from broker.store.recalls import WithdrawalRow
from broker.store.rfis import RfiAddresseeRow, RfiRow
from broker.store.withheld import WithheldCountRow, Withholding, count_withheld, tally
from schemas.audit import AuditEvent, agency_set_digest
from schemas.errors import AuditStoreError

_ALLOWED_OUTCOMES = ("routed", "unaddressed")  # a decision record's allowed groups
_KEPT_SETS = 64  # agency sets a registry keeps once read (each up to the directory's size)
SCHEMA_VERSION = HEAD_REVISION  # the Alembic revision the broker runs on
# Sequence numbers, epoch milliseconds and stream positions outgrow 32 bits: BIGINT on
# PostgreSQL (the parameters are typed from the model), INTEGER (the rowid) on SQLite.
BIGINT = BigInteger().with_variant(Integer(), "sqlite")
OUTBOX_LOCK = 0x49_53_54_4F  # "ISTO": pg_advisory_xact_lock key of audit-event writers

__all__ = [
    "AgencyRow",
    "AgencySetRow",
    "AgencyValues",
    "AuditRow",
    "BulletinRow",
    "DecisionRecordRow",
    "DecisionRow",
    "EncryptionKeyRow",
    "EncryptionKeyValues",
    "ForwardRequestRow",
    "GroupEpochRow",
    "GroupRow",
    "GroupWrapRow",
    "Insert",
    "JurisdictionRow",
    "MetaRow",
    "NatsUserRow",
    "PolicySetRow",
    "ReceiptRow",
    "Registry",
    "RejectionRow",
    "RfiAddresseeRow",
    "RfiRow",
    "SigningKeyRow",
    "SigningKeyValues",
    "StoredDecision",
    "SubscriptionRow",
    "WithdrawalRow",
    "default_broker_dir",
    "row_values",
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
    created_at: int = Field(sa_type=BIGINT)
    revoked_at: int | None = Field(default=None, sa_type=BIGINT)


class EncryptionKeyRow(SQLModel, table=True):
    __tablename__ = "encryption_key"
    kid: str = Field(primary_key=True, max_length=40)
    agency: str = Field(index=True, max_length=32)
    kem: str = Field(max_length=32)
    public: str = Field(max_length=2048)
    created_at: int = Field(sa_type=BIGINT)
    current: bool = True


class AgencyValues(NamedTuple):
    """An ``AgencyRow``'s values, without its ORM object (``agency_values``)."""

    id: str
    name: str
    sector: str
    status: str
    clearance: int
    state: str | None
    communities: str
    min_source_grade: str | None


class SigningKeyValues(NamedTuple):
    """A ``SigningKeyRow``'s values, without its ORM object (``keys_by_agency``)."""

    kid: str
    public: str
    created_at: int
    revoked_at: int | None


class EncryptionKeyValues(NamedTuple):
    """An ``EncryptionKeyRow``'s values, without its ORM object (``keys_by_agency``)."""

    kid: str
    kem: str
    public: str
    created_at: int
    current: bool


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
    ingest_seq: int = Field(sa_type=BIGINT)
    created_at: int = Field(sa_type=BIGINT)
    accepted_at: int = Field(sa_type=BIGINT)
    not_before: int | None = Field(default=None, sa_type=BIGINT)
    expires_at: int | None = Field(default=None, sa_type=BIGINT)
    recipients: str  # comma-separated signed recipients
    policy_version: str = Field(max_length=64)
    directory_version: str = Field(max_length=64)
    supersedes: str | None = Field(default=None, index=True, max_length=36)  # ADR 15
    # ADR 16: the bulletin a reply answers, its thread, and whether replies may reach all.
    in_reply_to: str | None = Field(default=None, index=True, max_length=36)
    thread: str | None = Field(default=None, max_length=36)
    reply_all: bool | None = None
    forward_of: str | None = Field(default=None, max_length=36)  # ADR 20


class PolicySetRow(SQLModel, table=True):
    """A policy set that was adopted; the newest is active. Files are archived by version."""

    __tablename__ = "policy_set"
    seq: int | None = Field(default=None, primary_key=True, sa_type=BIGINT)
    version: str = Field(index=True, max_length=64)
    adopted_at: int = Field(sa_type=BIGINT)
    adopted_by: str = Field(max_length=200)
    previous: str | None = Field(default=None, max_length=64)


class MetaRow(SQLModel, table=True):
    __tablename__ = "meta"
    key: str = Field(primary_key=True, max_length=64)
    value: str = Field(max_length=200)


class DecisionRow(SQLModel, table=True):
    """A receive decision on one candidate, as Istmo wrote them before the compact
    ``DecisionRecordRow`` (ADR 8): read for the bulletins of older data directories,
    no longer written."""

    __tablename__ = "decision"
    bulletin_id: str = Field(primary_key=True, max_length=36)
    agency: str = Field(primary_key=True, max_length=32)
    allowed: bool
    policy_ids: str  # comma-separated, sorted
    reasons: str  # JSON list of the policies' @reason texts


class DecisionRecordRow(SQLModel, table=True):
    """Every receive decision on one bulletin, in one row (ADR 8).

    ``routed`` is who got it, comma-separated, sorted. ``groups`` is a JSON list of
    ``{"outcome", "policy_ids", "reasons", "agencies"}`` objects, one per outcome
    (``routed``, ``unaddressed`` or a denial code), deciding policies and reasons, with
    every candidate in exactly one group. A big group has ``"listed"`` (an
    ``AgencySetRow``'s digest) and ``"but"`` (the agencies of that set not in the group)
    in place of ``"agencies"`` (ADR 36).
    """

    __tablename__ = "decision_record"
    bulletin_id: str = Field(primary_key=True, max_length=36)
    routed: str
    groups: str


class AgencySetRow(SQLModel, table=True):
    """A set of agencies that decision records and ``bulletin.decided`` events name by
    ``digest`` (ADR 36; ``broker.audit.events.agency_set_digest``). ``agencies`` is the
    sorted ids as a JSON array. Written once, never changed."""

    __tablename__ = "agency_set"
    digest: str = Field(primary_key=True, max_length=64)
    agencies: str
    count: int


@dataclass(frozen=True)
class Insert:
    """One row's column values for ``Registry.record``, without an ORM object: on the
    relay's path a ``BulletinRow`` cost about 65 us to build and a ``DecisionRecordRow``
    22 us, more than their dict of values and its insert. Make one with ``row_values``.

    Attributes:
        table: the table's model class.
        values: every column's value, as ``model(**values).model_dump()`` gives them.
    """

    table: type[SQLModel]
    values: Mapping[str, Any]


_DEFAULTS: dict[type[SQLModel], tuple[frozenset[str], dict[str, Any]]] = {}


def row_values(table: type[SQLModel], **values: Any) -> Insert:
    """The row of ``table`` with ``values``, its other columns at their defaults: the
    same values as ``table(**values).model_dump()``, for ``Registry.record``.

    Raises:
        ValueError: a name that is not a column, a column without a default left out,
            or a directory record's table (those rows are journaled: pass ORM rows).
    """
    if table.__tablename__ in JOURNALED_TABLES:
        raise ValueError(f"{table.__name__} rows are journaled: pass the ORM row")
    known = _DEFAULTS.get(table)
    if known is None:
        fields = table.model_fields
        known = (
            frozenset(fields),
            {
                n: f.get_default(call_default_factory=True)
                for n, f in fields.items()
                if not f.is_required()
            },
        )
        _DEFAULTS[table] = known
    names, defaults = known
    if not names.issuperset(values):
        raise ValueError(f"not columns of {table.__name__}: {sorted(set(values) - names)}")
    missing = names - defaults.keys() - values.keys()
    if missing:
        raise ValueError(f"{table.__name__} needs {sorted(missing)}")
    return Insert(table, {**defaults, **values})


@dataclass(frozen=True)
class StoredDecision:
    """One candidate's receive decision as the registry holds it, old row or new record.

    Attributes:
        agency: the candidate.
        allowed: the policy let it receive the bulletin (delivered only if addressed too).
        policy_ids: the deciding policies.
        reasons: their reasons, or what the relay said instead.
    """

    agency: str
    allowed: bool
    policy_ids: tuple[str, ...]
    reasons: tuple[str, ...]


class ReceiptRow(SQLModel, table=True):
    __tablename__ = "receipt"
    bulletin_id: str = Field(primary_key=True, max_length=36)
    recipient: str = Field(primary_key=True, max_length=32)
    received_at: int = Field(sa_type=BIGINT)
    recorded_at: int = Field(sa_type=BIGINT)
    signature: str = Field(max_length=128)
    # The signing key the receipt names (migration 0010); None for a receipt recorded
    # before, whose key the broker finds by trying the recipient's (broker.relay.queries).
    kid: str | None = Field(default=None, max_length=40)


class RejectionRow(SQLModel, table=True):
    __tablename__ = "rejection"
    ingest_seq: int = Field(primary_key=True, sa_type=BIGINT)
    originator: str = Field(index=True, max_length=32)
    bulletin_id: str | None = Field(default=None, index=True, max_length=36)
    reason: str = Field(max_length=64)
    message: str = Field(max_length=300)
    time: int = Field(sa_type=BIGINT)


class ConsoleSessionRow(SQLModel, table=True):
    """A signed-in console user (broker.console.sessions): kept in the database so that
    every API replica knows it and a restart signs nobody out. Only the SHA-256 of the
    session id is stored; times are epoch milliseconds."""

    __tablename__ = "console_session"
    sid_hash: str = Field(primary_key=True, max_length=64)
    who: str = Field(index=True, max_length=64)
    kind: str = Field(max_length=16)
    scopes: str = Field(max_length=200)  # space-separated
    csrf: str = Field(max_length=64)
    via: str = Field(max_length=16)
    created: int = Field(sa_type=BIGINT)
    expires: int = Field(index=True, sa_type=BIGINT)
    last_seen: int = Field(sa_type=BIGINT)


class ConsoleLinkRow(SQLModel, table=True):
    """A one-time console sign-in link, by the SHA-256 of its code; spent on use."""

    __tablename__ = "console_link"
    code_hash: str = Field(primary_key=True, max_length=64)
    who: str = Field(max_length=64)
    kind: str = Field(max_length=16)
    scopes: str = Field(max_length=200)
    expires: int = Field(index=True, sa_type=BIGINT)


class AuditRow(SQLModel, table=True):
    __tablename__ = "audit_event"
    seq: int | None = Field(default=None, primary_key=True, sa_type=BIGINT)
    event_id: str = Field(unique=True, max_length=160)
    type: str = Field(index=True, max_length=40)
    time: int = Field(index=True, sa_type=BIGINT)
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


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def default_broker_dir(url: str) -> Path | None:
    """Where the broker keeps its keys for the database at ``url`` when no data directory
    is given: ``istmo up`` lays a data directory out as ``DATA_DIR/istmo.db`` beside
    ``DATA_DIR/broker``, so for a SQLite file it is the ``broker`` directory beside it.
    None for PostgreSQL (the data directory names it)."""
    path = sqlite_path(url)
    return None if path is None else path.parent / "broker"


def _driver_rows(conn: Connection, query: Select[Any]) -> list[tuple[Any, ...]]:
    """The rows of ``query`` as the database driver gives them, plain tuples: a row
    object each, made and unpacked by SQLAlchemy, was half of a directory rebuild's reads
    at 10,000 agencies (about 0.2 s). For columns of text and integers only, which need
    no conversion (a boolean comes as 0 or 1 from SQLite: the caller converts it).

    Raises:
        AuditStoreError: the database refused.
    """
    result = conn.execute(query)
    try:
        return list(result.cursor.fetchall())
    except conn.dialect.loaded_dbapi.Error as exc:
        raise store_error("a read", exc) from exc
    finally:
        result.close()


# Registry.accepted's one statement, compiled once (an expanding IN of the batch's ids).
_BULLETINS = BulletinRow.__table__  # type: ignore[attr-defined]
_ACCEPTED = sa_select(_BULLETINS.c.id, _BULLETINS.c.ingest_seq, _BULLETINS.c.envelope_digest).where(
    _BULLETINS.c.id.in_(bindparam("ids", expanding=True))
)


class Registry:
    """Directory, bulletins and audit events in one database."""

    def __init__(
        self, url: str, *, broker_dir: Path | None = None, auto_upgrade: bool | None = None
    ) -> None:
        """Open the registry at ``url``.

        Args:
            url: a SQLite or PostgreSQL URL.
            broker_dir: the data directory's ``broker`` directory (log key, directory key);
                by default the one beside a SQLite file.
            auto_upgrade: migrate the schema to the head on open; by default for SQLite
                only (PostgreSQL is upgraded on purpose, by ``istmo db upgrade``).

        Raises:
            ConfigError: the database is at another schema revision (the message says what
                to run), or the URL is unusable.
            AuditStoreError: the database refused.
        """
        self.url = url
        self.shown_url = display_url(url)
        self.broker_dir = broker_dir if broker_dir is not None else default_broker_dir(url)
        sqlite = is_sqlite(url)
        self.engine: Engine = make_engine(url)
        if sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._postgresql = self.engine.dialect.name == "postgresql"
        # Agency sets by digest, as read (ADR 36): a set never changes, so it is kept.
        self._sets: dict[str, tuple[str, ...]] = {}
        try:
            open_schema(
                self.engine, url, auto_upgrade=sqlite if auto_upgrade is None else auto_upgrade
            )
        except BaseException:
            self.engine.dispose()
            raise

    def close(self) -> None:
        self.engine.dispose()

    @property
    def local(self) -> bool:
        """Whether the database is a file on this machine (SQLite), not a server reached
        over the network (PostgreSQL): a commit then waits only on the local disk."""
        return not self._postgresql

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session (not committed unless the caller commits).

        Raises:
            AuditStoreError: the database refused what was done in it.
        """
        with store_errors("a read or write"), Session(self.engine, expire_on_commit=False) as s:
            yield s

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection for reads of its own SQL.

        Raises:
            AuditStoreError: the database refused.
        """
        with store_errors("a query"), self.engine.connect() as conn:
            yield conn

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A connection in a transaction, committed if the block ends normally.

        Raises:
            AuditStoreError: the database refused (nothing of the block was committed).
        """
        with store_errors("a transaction"), self.engine.begin() as conn:
            yield conn

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

    def agency_values(self) -> list[AgencyValues]:
        """Every agency's values by id, as ``agencies`` gives them but without an ORM
        object each: a directory rebuild reads them all, and at 10,000 agencies making
        and reading the objects was a tenth of it."""
        c = AgencyRow.__table__.c  # type: ignore[attr-defined]
        columns = [getattr(c, name) for name in AgencyValues._fields]
        with self.session() as s:
            rows = _driver_rows(s.connection(), sa_select(*columns).order_by(c.id))
            return [AgencyValues(*row) for row in rows]

    def agency(self, agency_id: str) -> AgencyRow | None:
        with self.session() as s:
            return s.get(AgencyRow, agency_id)

    def subscriptions(self) -> dict[str, set[str]]:
        """Each agency's topics. Two columns, not ORM objects: a directory refresh reads
        every row (about 45,000 at 10,000 agencies), and building an instance of each was
        a quarter of the refresh."""
        out: dict[str, set[str]] = {}
        c = SubscriptionRow.__table__.c  # type: ignore[attr-defined]
        with self.session() as s:
            for agency, topic in _driver_rows(s.connection(), sa_select(c.agency, c.topic)):
                out.setdefault(agency, set()).add(topic)
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

    def keys_by_agency(
        self,
    ) -> tuple[dict[str, list[SigningKeyValues]], dict[str, list[EncryptionKeyValues]]]:
        """Every agency's signing and encryption keys, in two queries (a directory refresh
        asked twice per agency: 4 of its 5 s at 3,500 agencies), as plain values: an ORM
        object a key cost 0.3-0.5 s of a refresh at 10,000 agencies."""
        signing: dict[str, list[SigningKeyValues]] = {}
        encryption: dict[str, list[EncryptionKeyValues]] = {}
        sk = SigningKeyRow.__table__.c  # type: ignore[attr-defined]
        ek = EncryptionKeyRow.__table__.c  # type: ignore[attr-defined]
        with self.session() as s:
            conn = s.connection()
            for agency, *values in _driver_rows(
                conn, sa_select(sk.agency, sk.kid, sk.public, sk.created_at, sk.revoked_at)
            ):
                signing.setdefault(agency, []).append(SigningKeyValues(*values))
            for agency, kid, kem, public, created_at, current in _driver_rows(
                conn, sa_select(ek.agency, ek.kid, ek.kem, ek.public, ek.created_at, ek.current)
            ):
                encryption.setdefault(agency, []).append(
                    EncryptionKeyValues(kid, kem, public, created_at, bool(current))
                )
        return signing, encryption

    def nats_users(self) -> list[NatsUserRow]:
        with self.session() as s:
            return list(s.exec(select(NatsUserRow).order_by(NatsUserRow.agency)))

    def nats_admissions(self) -> list[tuple[str, str, str | None]]:
        """``(agency, status, NATS user key or None)`` of every agency, in one query of
        three columns (operator mode reads it on every directory change: ADR 0013)."""
        with self.session() as s:
            q = select(AgencyRow.id, AgencyRow.status, NatsUserRow.nkey_public).join(
                NatsUserRow,
                NatsUserRow.agency == AgencyRow.id,  # type: ignore[arg-type]  # a column
                isouter=True,
            )
            return [(agency, status, key) for agency, status, key in s.exec(q)]

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

    def corrections(self, bulletin_id: str, originator: str, limit: int) -> tuple[str, ...]:
        """The ids of ``originator``'s bulletins accepted as corrections of ``bulletin_id``
        (ADR 15), oldest first, at most ``limit``."""
        with self.session() as s:
            q = (
                select(BulletinRow.id)
                .where(BulletinRow.supersedes == bulletin_id)
                .where(BulletinRow.originator == originator)
                .order_by(col(BulletinRow.accepted_at), col(BulletinRow.id))
                .limit(limit)
            )
            return tuple(s.exec(q))

    def accepted(self, bulletin_ids: Collection[str]) -> dict[str, tuple[int, str]]:
        """``(ingest_seq, envelope_digest)`` of each of ``bulletin_ids`` already accepted,
        in one query (the relay asks once per batch)."""
        if not bulletin_ids:
            return {}
        # Core, not a Session: the relay asks once per batch, and at a light load every
        # batch is one bulletin; the ORM path cost 4x the CPU (about 190 us a call).
        with self.connect() as conn:
            found = conn.execute(_ACCEPTED, {"ids": list(bulletin_ids)})
            return {bid: (seq, digest) for bid, seq, digest in found}

    def bulletins(self, bulletin_ids: Collection[str]) -> dict[str, BulletinRow]:
        """Each of ``bulletin_ids`` that was accepted, by id, in one query (the relay asks
        once per batch of receipts)."""
        if not bulletin_ids:
            return {}
        with self.session() as s:
            q = select(BulletinRow).where(col(BulletinRow.id).in_(list(bulletin_ids)))
            return {row.id: row for row in s.exec(q)}

    def routed(self, bulletin_ids: Collection[str]) -> dict[str, set[str]]:
        """By bulletin id, the agencies the policy allowed each of ``bulletin_ids`` (an id
        never decided gets none), in two queries whatever their number: the decision
        records (ADR 8), then the per-candidate rows an older Istmo wrote for the rest. The
        relay asks once per batch of receipts.

        Raises:
            AuditStoreError: the database refused, or a record is not one the relay
                wrote (edited by hand).
        """
        ids = list(dict.fromkeys(bulletin_ids))
        if not ids:
            return {}
        out: dict[str, set[str]] = {bid: set() for bid in ids}
        with self.session() as s:
            q = select(DecisionRecordRow).where(col(DecisionRecordRow.bulletin_id).in_(ids))
            records = list(s.exec(q))
            for record in records:
                allowed = out[record.bulletin_id]
                for ok, _, _, agencies in _groups_of(record, lambda d: self._agency_set(s, d)):
                    if ok:
                        allowed.update(agencies)  # a set's thousands, without an object each
            older = set(ids) - {r.bulletin_id for r in records}
            if older:
                rows = select(DecisionRow.bulletin_id, DecisionRow.agency).where(
                    col(DecisionRow.bulletin_id).in_(older), col(DecisionRow.allowed).is_(True)
                )
                for bid, agency in s.exec(rows):
                    out[bid].add(agency)
        return out

    def decisions(self, bulletin_id: str) -> list[StoredDecision]:
        """Every receive decision on ``bulletin_id``, by agency: from its decision record,
        or from the per-candidate rows an older Istmo wrote.

        Raises:
            AuditStoreError: the database refused, or the record is not one the relay
                wrote (edited by hand).
        """
        with self.session() as s:
            record = s.get(DecisionRecordRow, bulletin_id)
            if record is None:
                q = select(DecisionRow).where(DecisionRow.bulletin_id == bulletin_id)
                return sorted(
                    (
                        StoredDecision(
                            r.agency,
                            r.allowed,
                            tuple(p for p in r.policy_ids.split(",") if p),
                            tuple(json.loads(r.reasons)),
                        )
                        for r in s.exec(q)
                    ),
                    key=lambda d: d.agency,
                )
            return _decisions_of(record, lambda d: self._agency_set(s, d))

    def agency_set(self, digest: str) -> tuple[str, ...] | None:
        """The agencies of the set named ``digest`` (ADR 36), sorted; None if no such set
        is recorded.

        Raises:
            AuditStoreError: the database refused, or the stored set does not match its
                digest (edited behind the broker's back).
        """
        with self.session() as s:
            return self._agency_set(s, digest)

    def _agency_set(self, s: Session, digest: str) -> tuple[str, ...] | None:
        kept = self._sets.get(digest)
        if kept is not None:
            return kept
        row = s.get(AgencySetRow, digest)
        if row is None:
            return None
        try:
            agencies = json.loads(row.agencies)
        except ValueError:
            agencies = None
        found = _strings(agencies)
        if found is None or agency_set_digest(found) != digest or list(found) != sorted(found):
            raise AuditStoreError(f"the agency set {digest[:16]} does not match its digest")
        if len(self._sets) >= _KEPT_SETS:
            self._sets.clear()
        self._sets[digest] = found
        return found

    def withheld_count(self, agency: str) -> WithheldCountRow | None:
        """How many bulletins the policy withheld from ``agency``, and when (None: none)."""
        with self.session() as s:
            return s.get(WithheldCountRow, agency)

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
        rows: Sequence[SQLModel | Insert],
        events: Sequence[AuditEvent],
        *,
        withheld: Sequence[Withholding] = (),
    ) -> None:
        """Insert ``rows`` and ``events`` in one transaction. Rows and events already there
        (same primary key or event id) are left as they are, so a retried batch is harmless.

        Args:
            rows: registry rows (bulletins, decision records, rejections ...), as ORM
                objects or as ``Insert`` values (``row_values``).
            events: audit events.
            withheld: the candidates the policy refused each bulletin of ``rows``; each
                agency's ``withheld_count`` goes up by the bulletins whose decision record
                this transaction inserts (``broker.store.withheld``).

        Raises:
            AuditStoreError: the database refused the transaction.
        """
        by_table: dict[Any, list[Mapping[str, Any]]] = {}
        models: list[SQLModel] = []
        for row in rows:
            if isinstance(row, Insert):
                table, dumped = row.table, dict(row.values)
            else:
                table, dumped = type(row), row.model_dump()
                models.append(row)
            if dumped.get("seq", 0) is None:
                del dumped["seq"]  # an autoincrement key the database assigns
            by_table.setdefault(table.__table__, []).append(dumped)  # type: ignore[attr-defined]
        audit = [_audit_values(e) for e in events]
        records = DecisionRecordRow.__table__  # type: ignore[attr-defined]
        # Directory records among the rows (ADR 14): ORM rows only, ``row_values`` refuses them.
        touched = touched_agencies(models)
        with store_errors("an audit write"), self.engine.begin() as conn:
            inserted: set[str] = set()
            for table, values in by_table.items():
                if values and withheld and table is records:
                    # Which records are new: a bulletin's refusals are counted once.
                    stmt = self.insert_new(table).returning(table.c.bulletin_id)
                    inserted = set(conn.execute(stmt, values).scalars())
                elif values:
                    conn.execute(self.insert_new(table), values)
            counts = tally(withheld, inserted)
            if audit or counts or touched:
                self._lock_outbox(conn)
            if audit:
                conn.execute(self.insert_new(AuditRow.__table__), audit)  # type: ignore[attr-defined]
            count_withheld(conn, counts)
            journal_changes(conn, touched)

    def record_receipts(
        self, receipts: Sequence[Mapping[str, Any]], events: Sequence[AuditEvent]
    ) -> None:
        """Insert ``receipts`` (``ReceiptRow`` column values: a batch of thousands costs no
        model objects) and ``events`` in one transaction; those already there are left as
        they are, so a redelivered batch records nothing new.

        Raises:
            AuditStoreError: the database refused the transaction.
        """
        audit = [_audit_values(e) for e in events]
        with store_errors("an audit write"), self.engine.begin() as conn:
            if receipts:
                conn.execute(self.insert_new(ReceiptRow.__table__), list(receipts))  # type: ignore[attr-defined]
            if audit:
                self._lock_outbox(conn)
                conn.execute(self.insert_new(AuditRow.__table__), audit)  # type: ignore[attr-defined]

    def change(self, apply: Callable[[Session], None], events: Sequence[AuditEvent]) -> None:
        """Run ``apply`` (updates to existing rows) and insert ``events`` in one transaction,
        so a status or key change and its audit event stand or fall together. The agencies
        whose records it changes are journaled in it too (``broker.store.journal``).

        Raises:
            AuditStoreError: the database refused the transaction.
        """
        with store_errors("a change"), Session(self.engine, expire_on_commit=False) as s:
            touched: set[str] = set()

            def collect(session: Session, *_: object) -> None:
                touched.update(touched_agencies([*session.new, *session.dirty, *session.deleted]))

            event.listen(s, "before_flush", collect)
            apply(s)
            s.flush()
            if events or touched:
                self._lock_outbox(s.connection())
            if events:
                s.connection().execute(
                    self.insert_new(AuditRow.__table__),  # type: ignore[attr-defined]
                    [_audit_values(e) for e in events],
                )
            journal_changes(s.connection(), touched)
            s.commit()

    def directory_serial(self) -> int:
        """The serial of the newest change to any agency's record (ADR 14; 0: none).

        Raises:
            AuditStoreError: the database refused.
        """
        with self.connect() as conn:
            return journal_serial(conn)

    def directory_journal(self, *, upto: int, limit: int) -> tuple[list[tuple[int, str]], int]:
        """The newest ``limit`` record changes up to serial ``upto`` and the serial after
        which they are complete (``broker.store.journal.journal_tail``).

        Raises:
            AuditStoreError: the database refused.
        """
        with self.connect() as conn:
            return journal_tail(conn, upto=upto, limit=limit)

    def _lock_outbox(self, conn: Any) -> None:
        """PostgreSQL: wait for the writers of earlier audit events to commit (see the
        module docstring); the lock goes with this transaction. SQLite: already alone."""
        if self._postgresql:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": OUTBOX_LOCK})

    def insert_new(self, table: Any) -> Any:
        """INSERT that skips rows whose key exists (SQLite and PostgreSQL alike); with
        ``.returning(...)`` it returns no row for one that was there already."""
        if self.engine.dialect.name == "postgresql":
            return postgresql_insert(table).on_conflict_do_nothing()
        return sqlite_insert(table).on_conflict_do_nothing()

    def audit_events(
        self,
        *,
        bulletin_id: str | None = None,
        type_: str | None = None,
        actor: str | None = None,
        subject: str | None = None,
        since_ms: int | None = None,
        after_seq: int = 0,
        limit: int = 1000,
    ) -> list[AuditRow]:
        """Audit events after ``after_seq`` in order, at most ``limit`` (1..1000), of the
        given bulletin, type, actor and subject, recorded at or after ``since_ms``."""
        limit = max(1, min(limit, 1000))
        with self.session() as s:
            q = select(AuditRow).where(AuditRow.seq > after_seq)  # type: ignore[operator]
            if subject is not None:
                q = q.where(AuditRow.subject == subject)
            if since_ms is not None:
                q = q.where(AuditRow.time >= since_ms)
            if bulletin_id is not None:
                q = q.where(AuditRow.bulletin_id == bulletin_id)
            if type_ is not None:
                q = q.where(AuditRow.type == type_)
            if actor is not None:
                q = q.where(AuditRow.actor == actor)
            return list(s.exec(q.order_by(AuditRow.seq).limit(limit)))  # type: ignore[arg-type]  # sqlmodel types a column as its value

    def latest_audit_event(self, type_: str, subject: str) -> AuditRow | None:
        """The newest event of ``type_`` about ``subject`` (both indexed), or None."""
        with self.session() as s:
            q = select(AuditRow).where(AuditRow.type == type_, AuditRow.subject == subject)
            return s.exec(q.order_by(AuditRow.seq.desc()).limit(1)).first()  # type: ignore[union-attr]


def _decisions_of(
    record: DecisionRecordRow, listed: Callable[[str], tuple[str, ...] | None]
) -> list[StoredDecision]:
    """The decisions a ``DecisionRecordRow`` holds, by agency (``_groups_of``).

    Raises:
        AuditStoreError: it is not laid out as the relay writes it (edited by hand), or it
            names a set that is not recorded.
    """
    out = [
        StoredDecision(a, allowed, policy_ids, reasons)
        for allowed, policy_ids, reasons, agencies in _groups_of(record, listed)
        for a in agencies
    ]
    return sorted(out, key=lambda d: d.agency)


def _groups_of(
    record: DecisionRecordRow, listed: Callable[[str], tuple[str, ...] | None]
) -> list[tuple[bool, tuple[str, ...], tuple[str, ...], tuple[str, ...]]]:
    """The groups a ``DecisionRecordRow`` holds: (allowed, policy ids, reasons, agencies).
    A group written by reference (ADR 36: ``listed``, a set's digest, and ``but``, the
    agencies of that set not in the group) is read through ``listed``.

    Raises:
        AuditStoreError: it is not laid out as the relay writes it (edited by hand), or it
            names a set that is not recorded.
    """
    unreadable = AuditStoreError(
        f"the decision record of bulletin {record.bulletin_id} is unreadable"
    )
    try:
        groups = json.loads(record.groups)
    except ValueError as exc:
        raise unreadable from exc
    out = []
    for g in groups if isinstance(groups, list) else [None]:
        if not isinstance(g, dict):
            raise unreadable
        policy_ids, reasons = _strings(g.get("policy_ids")), _strings(g.get("reasons"))
        if "listed" in g:
            digest, but = g.get("listed"), _strings(g.get("but"))
            members = listed(digest) if isinstance(digest, str) else None
            if members is None or but is None:
                raise unreadable
            left_out = set(but)
            agencies: tuple[str, ...] | None = (
                tuple(a for a in members if a not in left_out) if left_out else members
            )
        else:
            agencies = _strings(g.get("agencies"))
        if agencies is None or policy_ids is None or reasons is None:
            raise unreadable
        out.append((g.get("outcome") in _ALLOWED_OUTCOMES, policy_ids, reasons, agencies))
    return out


def _strings(value: object) -> tuple[str, ...] | None:
    """``value`` if it is a list of strings, as a tuple; None if it is anything else."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def _audit_values(e: AuditEvent) -> dict[str, Any]:
    return {
        "event_id": e.event_id,
        "type": e.type,
        "time": e.time,
        "actor": e.actor,
        "subject": e.subject,
        "bulletin_id": e.bulletin_id,
        "reason": e.reason,
        # What model_dump(mode="json") gives, at a tenth of the cost: a DataValue is a
        # JSON scalar or a tuple of strings (a JSON list either way).
        "data": json.dumps(e.data, sort_keys=True, separators=(",", ":")),
    }
