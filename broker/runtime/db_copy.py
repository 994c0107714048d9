"""``istmo db copy --from-sqlite PATH``: a region's SQLite database moved into PostgreSQL.

A region that started with ``istmo up`` keeps its registry, bulletin metadata and audit log
in ``DATA_DIR/istmo.db``. ``copy_sqlite_region`` copies every row of it into an empty
PostgreSQL database at the same schema revision, so the region can grow onto PostgreSQL
with its history; the log key stays in ``DATA_DIR/broker`` and goes on signing.

What it guarantees, in order:

1. The source is an Istmo SQLite database at this Istmo's revision, opened read-only
   (``mode=ro``), and no ``istmo up`` or ``istmo sequencer`` holds its data directory's
   locks (they stay held by the copy, so none starts meanwhile).
2. The target is at this Istmo's revision and every table is empty; its tables are locked
   against other writers for the copy.
3. Every table is copied row for row in foreign-key order, a batch at a time, from one
   read snapshot of the source, inside one transaction on the target.
4. Before that transaction commits: the row counts are equal, the source did not change
   while it was read, and the audit log verifies on the target exactly as
   ``istmo audit verify`` checks it: every entry and signed head on the log key, then the
   witness quorum (ADR 24) on the region's checkpoint (``DATA_DIR/broker/checkpoint``),
   whose cosigned size and root the copied log must hold. Without witnesses the caller says
   ``trust_log_key_alone`` (``--trust-log-key-alone``). Then the sequences continue after
   the copied rows.

Any failure rolls the whole copy back and the target stays empty: the audit tables refuse
DELETE, so nothing half-trusted may ever land there.

Left to others: the command line (``broker.cli.db``), the schema (``broker.store.db``), the
verifier itself (``broker.audit.log``).
"""

from __future__ import annotations

import contextlib
import fcntl
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psycopg
from sqlalchemy import Engine, MetaData, Table, create_engine, event, func, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from broker.audit.entries import blob
from broker.audit.log import LogCorrupt, VerifyReport, verify_on
from broker.audit.sequencer import DEFAULT_ORIGIN, LOCK_FILE, log_verify_key
from broker.audit.witnessing import CHECKPOINT_FILE, read_checkpoint
from broker.store import db
from broker.store.tables import AUDIT_TABLES, RECORD_TABLES, REGISTRY_TABLES, SEQUENCES
from schemas.canonical import b64d
from schemas.checkpoint import AUDIT_WITNESSES_ENV, QuorumMissing, WitnessTrust
from schemas.errors import AuditStoreError, ConfigError, SignatureError
from schemas.keys import VerifyKey
from schemas.monitor import cosigned_checkpoint, witnessed_head
from schemas.treehead import TreeHeadConflict, parse_signed_tree_head

__all__ = [
    "BATCH_ROWS",
    "TABLES",
    "CopyReport",
    "copy_sqlite_region",
    "log_key_for",
    "region_database",
]

BATCH_ROWS = 5000  # rows read from SQLite at a time (COPY streams them on to PostgreSQL)
TABLES = (*REGISTRY_TABLES, *RECORD_TABLES, *AUDIT_TABLES)
_LOCK_TIMEOUT = "10s"  # waiting for a broker's transaction on the target to end
_STACK_LOCK = ".lock"  # held by a running `istmo up` (broker.runtime.stack)


@dataclass(frozen=True)
class CopyReport:
    """A committed copy.

    Attributes:
        source: the SQLite file copied.
        target: the PostgreSQL URL, password masked.
        rows: rows per table, in copy order (equal on both sides).
        next_values: each sequence's next value on the target.
        log: the audit log's verification on the target (None: the log was empty and
            there was no log key to check it with).
        seconds: the whole copy, checks included.
        witnessed: what the witness check found (None: ``trust_log_key_alone``, or no log
            to check).
    """

    source: Path
    target: str
    rows: dict[str, int]
    next_values: dict[str, int]
    log: VerifyReport | None
    seconds: float
    witnessed: str | None = None

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


def region_database(path: Path) -> Path:
    """The SQLite file of ``path``: the file itself, or ``istmo.db`` in a data directory.

    Raises:
        ConfigError: there is no such file.
    """
    found = path / "istmo.db" if path.is_dir() else path
    if not found.is_file():
        raise ConfigError(f"no SQLite database at {found}: name a region's istmo.db")
    return found


def log_key_for(database: Path, key_file: Path | None) -> VerifyKey | None:
    """The log's public key: ``key_file`` if given, else the one in ``broker/`` beside
    ``database`` (None if there is none yet).

    Raises:
        ConfigError: the key file is unreadable or malformed.
    """
    if key_file is None:
        return log_verify_key(database.parent / "broker")
    try:
        return VerifyKey(b64d(key_file.read_text().strip(), field="--log-key", max_bytes=32))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the log key {key_file}") from exc


def copy_sqlite_region(
    source: Path,
    target_url: str,
    log_key: VerifyKey | None,
    *,
    origin: str = DEFAULT_ORIGIN,
    batch_rows: int = BATCH_ROWS,
    out: Callable[[str], None] = print,
    trust: WitnessTrust | None = None,
    trust_log_key_alone: bool = False,
) -> CopyReport:
    """Copy the Istmo SQLite database ``source`` into the empty PostgreSQL ``target_url``.

    Args:
        source: the region's ``istmo.db``.
        target_url: a PostgreSQL URL, at this Istmo's revision (``istmo db upgrade``).
        log_key: the audit log's verify key; needed unless the log has no tree head.
        origin: the log's name in its tree heads.
        batch_rows: rows per batch (memory stays bounded by one batch).
        out: where progress lines go.
        trust: the witnesses whose quorum the region's checkpoint must carry. Required:
            without it the log key alone vouches for the copied log, and whoever holds that
            key can truncate the log and re-sign its heads.
        trust_log_key_alone: check the copy on the log key alone (no ``trust``).

    Returns:
        What was copied and verified; the copy is committed.

    Raises:
        ConfigError: the source or target is not what it must be (named), or a running
            stack uses the source, or neither ``trust`` nor ``trust_log_key_alone`` (or
            both): nothing was written.
        LogCorrupt: the copied log does not verify, or is not the log the witnesses
            cosigned: the copy was rolled back.
        QuorumMissing: the region's checkpoint lacks the quorum of ``trust``: the copy
            was rolled back.
        AuditStoreError: a database refused: the copy was rolled back.
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows {batch_rows} must be at least 1")
    if (trust is None) != trust_log_key_alone:
        raise ConfigError(
            "the copy needs the witnesses you trust (trust=WitnessTrust) or, for a log "
            "without witnesses, trust_log_key_alone=True, not both"
            if trust is not None
            else "no witnesses to check the copied audit log against: pass --witnesses FILE "
            f"or --witness NAME=KEY --quorum K, or name your trust file in ${AUDIT_WITNESSES_ENV}",
            code=None if trust is not None else "witnesses_required",
        )
    if db.is_sqlite(target_url):
        raise ConfigError("the copy goes into PostgreSQL: ISTMO_DATABASE_URL names SQLite")
    started = time.monotonic()
    shown = db.display_url(target_url)
    with _data_dir_idle(source.parent), contextlib.ExitStack() as stack:
        src_engine = _source_engine(source)
        stack.callback(src_engine.dispose)
        tgt_engine = db.make_engine(target_url)
        stack.callback(tgt_engine.dispose)
        src, version = _open_source(stack, src_engine, source)
        src_tables = _check_source(src, source)  # its first read begins the snapshot
        try:
            with tgt_engine.begin() as tgt:
                tgt_tables = _claim_target(tgt, shown)
                counts = _source_counts(src, src_tables)
                if counts["tree_head"] and log_key is None:
                    raise ConfigError(
                        f"no log key in {source.parent / 'broker'} to verify the copied log "
                        "with: pass the log's public key with --log-key FILE"
                    )
                out(f"copying {source} into {shown}")
                for name in _copy_order(tgt_tables):
                    _copy_table(
                        src, tgt, src_tables[name], tgt_tables[name], batch_rows, source, shown
                    )
                    out(f"  {name:<16} {counts[name]:>12,} rows")
                _check_counts(tgt, counts, shown)
                src.rollback()  # the snapshot ends: did anyone commit since it began?
                if _data_version(src, source) != version:
                    raise ConfigError(
                        f"{source} changed while it was copied: stop every istmo command "
                        "using it, then run the copy again"
                    )
                report, witnessed = None, None
                if log_key is not None:
                    out("verifying the copied audit log (as `istmo audit verify` does)")
                    report = _verify(tgt, log_key, origin, shown)
                    if trust is not None:
                        witnessed = _witnessed(tgt, trust, source, log_key, origin, report, shown)
                next_values = _continue_sequences(tgt)
        except SQLAlchemyError as exc:
            raise AuditStoreError(
                f"the copy into {shown} failed and nothing of it was kept: "
                f"{type(exc).__name__}: {_first_line(exc)}"
            ) from exc
    return CopyReport(
        source=source,
        target=shown,
        rows={name: counts[name] for name in _copy_order(tgt_tables)},
        next_values=next_values,
        log=report,
        seconds=time.monotonic() - started,
        witnessed=witnessed,
    )


# ---------------------------------------------------------------------- the source
@contextlib.contextmanager
def _data_dir_idle(data_dir: Path) -> Iterator[None]:
    """Hold the locks of ``istmo up`` and the sequencer on ``data_dir`` while copying.

    Only lock files already there are taken (one that never existed guards nothing, and a
    backup's directory is left as it is); a lock another process holds is refused.
    """
    held: list[IO[bytes]] = []
    try:
        for path, what in (
            (data_dir / _STACK_LOCK, "istmo up"),
            (data_dir / "broker" / LOCK_FILE, "a sequencer"),
        ):
            try:
                f = path.open("rb")
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise ConfigError(f"cannot check whether {what} runs on {data_dir}") from exc
            held.append(f)
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise ConfigError(
                    f"{what} is running on {data_dir} ({path} is locked): stop istmo up "
                    "first, a live log could change under the copy"
                ) from None
        yield
    finally:
        for lock in held:
            lock.close()  # closing the file releases the flock


def _source_engine(path: Path) -> Engine:
    uri = path.resolve().as_uri() + "?mode=ro"  # read-only: the copy never writes the source

    def connect() -> sqlite3.Connection:
        # isolation_level=None: the driver must not BEGIN on its own; the engine's begin
        # event does, so the copy reads one snapshot.
        return sqlite3.connect(uri, uri=True, timeout=10, isolation_level=None)

    engine = create_engine("sqlite://", creator=connect, poolclass=NullPool)
    event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN"))
    return engine


def _open_source(
    stack: contextlib.ExitStack[Any], engine: Engine, path: Path
) -> tuple[Connection, int]:
    """A connection to the source and its data version, read before any snapshot."""
    try:
        conn = stack.enter_context(engine.connect())
    except DBAPIError as exc:
        raise ConfigError(f"cannot open {path}: {_first_line(exc)}") from exc
    return conn, _data_version(conn, path)


def _data_version(conn: Connection, path: Path) -> int:
    """SQLite's count of commits by other connections: it moves when anyone writes the file,
    but not inside a read transaction, so it is read through the driver outside one."""
    raw: sqlite3.Connection = conn.connection.driver_connection  # type: ignore[assignment]  # creator's
    try:
        return int(raw.execute("PRAGMA data_version").fetchone()[0])
    except sqlite3.OperationalError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{path} is not a SQLite database ({exc})") from exc


def _check_source(conn: Connection, path: Path) -> dict[str, Table]:
    """The source's tables, once it is an Istmo database at this Istmo's revision."""
    meta = MetaData()
    try:
        meta.reflect(conn)
        rev = db.current_revision(conn)
    except DBAPIError as exc:
        raise ConfigError(f"cannot read {path}: {_first_line(exc)}") from exc
    missing = [t for t in TABLES if t not in meta.tables]
    if missing:
        raise ConfigError(f"{path} is not an Istmo database: it has no {missing[0]} table")
    if rev is None or rev < db.HEAD_REVISION:
        raise ConfigError(
            f"{path} is at schema revision {rev or 'none'}, this Istmo copies revision "
            f"{db.HEAD_REVISION}: upgrade it first with `ISTMO_DATABASE_URL= istmo db upgrade "
            f"--data-dir {path.parent}`"
        )
    if rev != db.HEAD_REVISION:
        raise ConfigError(
            f"{path} is at schema revision {rev}, made by a newer Istmo: upgrade Istmo"
        )
    return {name: meta.tables[name] for name in TABLES}


def _source_counts(conn: Connection, tables: dict[str, Table]) -> dict[str, int]:
    return {
        name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
        for name, t in tables.items()
    }


# ---------------------------------------------------------------------- the target
def _claim_target(conn: Connection, shown: str) -> dict[str, Table]:
    """The target's tables, locked against other writers, once the target is at this
    Istmo's revision and empty."""
    rev = db.current_revision(conn)
    if rev != db.HEAD_REVISION:
        raise ConfigError(
            f"the database {shown} is at schema revision {rev or 'none'}; the copy needs "
            f"revision {db.HEAD_REVISION}: run `istmo db upgrade` (with ISTMO_DATABASE_URL "
            "set) first"
        )
    meta = MetaData()
    meta.reflect(conn, only=list(TABLES))
    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'")
    try:
        # EXCLUSIVE: others may still read, but nobody inserts until the copy commits.
        conn.exec_driver_sql(f"LOCK TABLE {', '.join(TABLES)} IN EXCLUSIVE MODE")
    except OperationalError as exc:
        raise ConfigError(
            f"the database {shown} is in use (its tables stayed locked for {_LOCK_TIMEOUT}): "
            "stop the brokers using it"
        ) from exc
    except DBAPIError as exc:
        if not isinstance(exc.orig, psycopg.errors.InsufficientPrivilege):
            raise
        raise ConfigError(
            f"{_first_line(exc)}: run the copy as the role that owns the tables (the one "
            "that ran `istmo db upgrade`), not the broker's"
        ) from exc
    for name in TABLES:
        found = conn.execute(select(text("1")).select_from(meta.tables[name]).limit(1)).first()
        if found is not None:
            raise ConfigError(
                f"the database {shown} is not empty (table {name} has rows): the copy goes "
                "only into a new database, made with `istmo db upgrade`"
            )
    return {name: meta.tables[name] for name in TABLES}


def _copy_order(tables: dict[str, Table]) -> list[str]:
    """Parents before children (``log_entry`` after ``audit_event``), else by name."""
    meta = next(iter(tables.values())).metadata
    return [t.name for t in meta.sorted_tables if t.name in tables]


def _copy_table(
    src: Connection,
    tgt: Connection,
    s: Table,
    t: Table,
    batch_rows: int,
    source: Path,
    shown: str,
) -> None:
    """Stream ``s`` into ``t`` through one COPY, a batch of source rows at a time.

    COPY inserts: the append-only triggers (BEFORE UPDATE, DELETE, TRUNCATE) let it in.
    """
    if {c.name for c in s.columns} != {c.name for c in t.columns}:
        raise ConfigError(f"table {s.name} has other columns in {source} than in {shown}")
    names = [c.name for c in t.columns]
    rows = src.execution_options(yield_per=batch_rows).execute(
        select(*(s.c[n] for n in names)).order_by(*s.primary_key.columns)
    )
    batches = rows.partitions()
    raw: psycopg.Connection[Any] = tgt.connection.driver_connection  # type: ignore[assignment]  # the engine is postgresql+psycopg
    quoted = ", ".join(f'"{n}"' for n in names)
    try:
        with raw.cursor() as cur, cur.copy(f'COPY "{t.name}" ({quoted}) FROM STDIN') as copy:
            while True:
                try:
                    part = next(batches, None)
                except SQLAlchemyError as exc:
                    raise ConfigError(
                        f"cannot read table {s.name} of {source}: {_first_line(exc)}"
                    ) from exc
                if part is None:
                    break
                for row in part:
                    copy.write_row(tuple(row))
    except psycopg.Error as exc:
        raise AuditStoreError(
            f"{shown} refused a row of table {s.name}, so the copy was rolled back "
            f"(the target is still empty): {_first_line(exc)}"
        ) from exc
    finally:
        rows.close()


def _check_counts(conn: Connection, counts: dict[str, int], shown: str) -> None:
    for name, expected in counts.items():
        got = int(conn.execute(text(f'SELECT COUNT(*) FROM "{name}"')).scalar_one())  # noqa: S608  # our table names
        if got != expected:
            raise AuditStoreError(
                f"table {name}: {got} rows in {shown} after the copy, {expected} in the source"
            )


def _verify(conn: Connection, key: VerifyKey, origin: str, shown: str) -> VerifyReport:
    """The checks of ``istmo audit verify``, on the copy before it commits (the audit
    tables refuse DELETE: a bad copy could never be taken out)."""
    report = verify_on(conn, key, origin)
    if report.first is not None:
        more = f" ({report.problems - 1} further problems)" if report.problems > 1 else ""
        raise LogCorrupt(
            f"the copied audit log does not verify, so the copy was rolled back (the target "
            f"{shown} is still empty): first bad index {report.first.index}: "
            f"{report.first.message}{more}"
        )
    return report


def _witnessed(
    conn: Connection,
    trust: WitnessTrust,
    source: Path,
    key: VerifyKey,
    origin: str,
    report: VerifyReport,
    shown: str,
) -> str:
    """The witness quorum of ``istmo audit verify``, on the copy before it commits: the
    region's checkpoint carries it, and the copied log holds the cosigned tree."""
    broker_dir = source.parent / "broker"
    note = read_checkpoint(broker_dir)
    latest = report.latest.tree_size if report.latest is not None else 0
    if note is None and latest == 0:
        return "the audit log has no signed tree head yet: nothing for the witnesses to cosign"
    back = f"so the copy was rolled back (the target {shown} is still empty)"
    try:
        cp, good = cosigned_checkpoint(trust, note, key, origin, str(broker_dir / CHECKPOINT_FILE))
    except QuorumMissing as exc:
        raise QuorumMissing(
            f"{exc}, {back}",
            hint="are the region's witnesses running and configured "
            "(DATA_DIR/broker/witnesses.json)?",
        ) from exc
    row = conn.execute(
        text("SELECT raw FROM tree_head WHERE tree_size = :n"), {"n": cp.size}
    ).first()
    head = None if row is None else parse_signed_tree_head(blob(row.raw))
    try:
        witnessed_head(cp, head, key, origin, latest)
    except (TreeHeadConflict, SignatureError) as exc:
        raise LogCorrupt(
            f"the copied audit log is not the one the witnesses cosigned, {back}: {exc}"
        ) from exc
    later = f"; {latest - cp.size} later entries not witnessed yet" if latest > cp.size else ""
    return (
        f"witnessed: size {cp.size} cosigned by {len(good)} of {len(trust.witnesses)} "
        f"witnesses (quorum {trust.quorum}: {', '.join(good)}){later}"
    )


def _continue_sequences(conn: Connection) -> dict[str, int]:
    """Each sequence's next value past the copied rows (the copy inserted explicit ones).

    Sequences are not transactional: this runs last, just before the commit. Every result
    is read to its end: the verifier left the connection streaming (server-side cursors).
    """
    next_values: dict[str, int] = {}
    for sequence in SEQUENCES:
        table, column = sequence.removesuffix("_seq").rsplit("_", 1)
        nxt = int(
            conn.execute(
                text(f'SELECT COALESCE(MAX("{column}"), 0) + 1 FROM "{table}"')  # noqa: S608  # our names
            ).scalar_one()
        )
        conn.execute(text("SELECT setval(:s, :n, false)"), {"s": sequence, "n": nxt}).all()
        next_values[f"{table}.{column}"] = nxt
    return next_values


def _first_line(exc: BaseException) -> str:
    """The driver's first line (the server's reason, never the row's values), bounded."""
    orig: Any = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0][:200] if lines else type(orig).__name__
