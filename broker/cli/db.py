"""``istmo db upgrade | current | copy``: the broker's database, its schema revision, and a
region's SQLite database copied into PostgreSQL (``broker.runtime.db_copy``).

The database is ``ISTMO_DATABASE_URL`` if set, else the SQLite file of ``--data-dir``. The URL
is read from the environment only (never a flag: a password on the command line shows in
``ps``), and printed with its password masked.

``--grant-role NAME`` (PostgreSQL) also makes the broker's own role (``broker.store.roles``):
it may log in, read and write the registry's tables, and only INSERT and SELECT the audit
tables (S-18), so even with the append-only triggers dropped it could not rewrite the log.

Only ``argparse`` at import time: ``istmo`` loads this module for every command, and the
client-only install has no SQLAlchemy.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from broker.cli._common import add_log_key_alone, add_witness_trust
from broker.store.tables import AUDIT_TABLES, RECORD_TABLES

__all__ = ["add_db_commands"]


def add_db_commands(sub: Any) -> None:
    """Add ``db upgrade``, ``db current`` and ``db copy`` to the ``istmo`` sub-command parser."""
    p = sub.add_parser(
        "db",
        help="the database's schema: upgrade it, show its revision",
        description="The broker's database is ISTMO_DATABASE_URL (PostgreSQL) if set, else "
        "DATA_DIR/istmo.db (SQLite, upgraded automatically by `istmo up`).",
    )
    cmds = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    c = cmds.add_parser(
        "upgrade",
        help="migrate the schema to this Istmo's revision (safe to repeat)",
        description="Run the migrations up to this Istmo's revision, one upgrade at a time "
        "per database. Run it as the role that owns the tables, before `istmo up`.",
    )
    _data_dir(c)
    c.add_argument(
        "--grant-role",
        metavar="NAME",
        help="PostgreSQL: create the broker's role NAME if missing (LOGIN, no password: "
        "set one or use certificates), grant it the registry's tables and INSERT+SELECT "
        "only on the audit tables",
    )
    c.set_defaults(func=_upgrade_command)
    c = cmds.add_parser(
        "current",
        help="the database's schema revision (exit 1 unless it is this Istmo's)",
    )
    _data_dir(c)
    c.set_defaults(func=_current_command)
    c = cmds.add_parser(
        "copy",
        help="copy a region's SQLite database into the empty PostgreSQL ISTMO_DATABASE_URL",
        description="Copy every table of a region's SQLite database (registry, bulletin "
        "metadata, audit log) into ISTMO_DATABASE_URL, which must be empty and at this "
        "Istmo's revision (`istmo db upgrade`). One transaction: the counts are compared and "
        "the audit log verified before it commits, with the witness quorum on the region's "
        "checkpoint (witnesses as for `istmo audit verify`: --witnesses FILE or "
        "--witness/--quorum, else the file $ISTMO_AUDIT_WITNESSES names, else the region's "
        "own broker/witnesses.json; without any, the copy refuses unless "
        "--trust-log-key-alone); any failure leaves the target empty. Stop `istmo up` first. "
        "The SQLite file is only read.",
    )
    c.add_argument(
        "--from-sqlite",
        metavar="PATH",
        type=Path,
        required=True,
        help="the region's istmo.db, or its data directory",
    )
    c.add_argument(
        "--log-key",
        metavar="FILE",
        type=Path,
        help="the audit log's public key (default: broker/log.pub beside the database)",
    )
    add_witness_trust(c)
    add_log_key_alone(c)
    c.set_defaults(func=_copy_command)


def _data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("ISTMO_DATA_DIR", ".istmo")),
        help="the broker's data directory, for its SQLite file when ISTMO_DATABASE_URL is "
        "not set (default ./.istmo, or $ISTMO_DATA_DIR)",
    )


def _settings(args: argparse.Namespace) -> Any:
    from broker.config import Settings

    return Settings.from_env(data_dir=args.data_dir)


def _upgrade_command(args: argparse.Namespace) -> int:
    from broker.store import db
    from schemas.errors import ConfigError

    settings = _settings(args)
    url = settings.db_url
    if args.grant_role is not None and db.is_sqlite(url):
        raise ConfigError(
            "--grant-role is for PostgreSQL (ISTMO_DATABASE_URL); SQLite has no roles"
        )
    if db.is_sqlite(url):
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    before, after = db.upgrade(url)
    shown = db.display_url(url)
    if before == after:
        print(f"{shown}: already at revision {after} (this Istmo's)")
    else:
        print(f"{shown}: upgraded from revision {before or 'none'} to {after}")
    if args.grant_role is not None:
        from broker.store.roles import grant_role

        grant_role(url, args.grant_role)
        print(
            f"role {args.grant_role}: registry tables read/write, audit and decision "
            f"tables {', '.join((*RECORD_TABLES, *AUDIT_TABLES))} INSERT and SELECT only"
        )
    return 0


def _current_command(args: argparse.Namespace) -> int:
    from broker.store import db

    url = _settings(args).db_url
    shown = db.display_url(url)
    if (path := db.sqlite_path(url)) is not None and not path.exists():
        print(f"{shown}: no database yet (this Istmo needs revision {db.HEAD_REVISION})")
        return 1
    rev = db.revision_at(url)
    if rev == db.HEAD_REVISION:
        print(f"{shown}: revision {rev} (this Istmo's: up to date)")
        return 0
    print(
        f"{shown}: revision {rev or 'none'}, this Istmo needs {db.HEAD_REVISION}: "
        "run `istmo db upgrade`"
    )
    return 1


def _copy_command(args: argparse.Namespace) -> int:
    from broker.cli.audit import witness_trust
    from broker.config import Settings
    from broker.runtime.db_copy import copy_sqlite_region, log_key_for, region_database
    from broker.store import db
    from schemas.errors import ConfigError

    url = Settings.from_env().database_url
    if url is None:
        raise ConfigError(
            "set ISTMO_DATABASE_URL to the PostgreSQL database to copy into (made with "
            "`istmo db upgrade`)"
        )
    source = region_database(args.from_sqlite)
    # The witnesses as `istmo audit verify` takes them; the region's own list by default.
    chosen = witness_trust(args, Settings.from_env(data_dir=source.parent))
    report = copy_sqlite_region(
        source,
        url,
        log_key_for(source, args.log_key),
        trust=chosen.witnesses,
        trust_log_key_alone=chosen.witnesses is None,
    )
    rate = report.total_rows / report.seconds if report.seconds > 0 else 0.0
    print(
        f"copied {report.total_rows:,} rows into {db.display_url(url)} in "
        f"{report.seconds:.1f} s ({rate:,.0f} rows/s); row counts equal in every table"
    )
    print("next " + ", ".join(f"{k} {v}" for k, v in report.next_values.items()))
    log = report.log
    if log is None:
        print("the audit log is empty: nothing to verify")
    else:
        print(
            f"audit log verified on PostgreSQL: {log.entries} entries and {log.heads} signed "
            f"tree heads in {log.seconds:.2f} s"
        )
        if log.latest is not None:
            print(f"latest head: size {log.latest.tree_size}, root {log.latest.root_hash}")
        if report.witnessed is not None:
            print(report.witnessed)
        if log.pending:
            print(f"{log.pending} events wait for the sequencer")
    if chosen.note:
        print(chosen.note, file=sys.stderr)
    return 0
