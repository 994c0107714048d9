"""`istmo up` on PostgreSQL, through the real command: one URL moves the whole store.

The operator points ``ISTMO_DATABASE_URL`` at an empty database; `istmo up` refuses it and
names `istmo db upgrade`; after the upgrade the stack starts, a bulletin goes from a
ministry to a regional centre, its row and audit events are in PostgreSQL (no SQLite file
is made), the audit log verifies, and the API serves the log key.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.stackproc import UpProcess, run_cli
from tests.storage_engines import pg_database
from tests.waiting import eventually_sync

BODY = "CANARY-pg-4b1e Two go-fast boats, 40 bales, heading north-east at 03:10."


@pytest.mark.postgres
def test_istmo_up_on_postgresql_carries_a_bulletin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pg_database(migrated=False) as url:
        monkeypatch.setenv("ISTMO_DATABASE_URL", url)
        d = tmp_path / "istmo"
        with pytest.raises(RuntimeError, match=r"run `istmo db upgrade`"):
            UpProcess(d).start()
        upgraded = run_cli("db", "upgrade", data_dir=d)
        assert upgraded.returncode == 0, upgraded.stderr
        up = UpProcess(d).start()
        try:
            assert f"database  {url}" in up.output
            report = tmp_path / "report.md"
            report.write_text(BODY)
            pub = run_cli(
                "publish",
                "--as",
                "gt-police",
                "--topic",
                "drug-trafficking",
                "--classification",
                "RESTRICTED",
                "--tlp",
                "AMBER",
                "--rel-to",
                "SICA",
                "--title",
                "Go-fast boats",
                "--body-file",
                str(report),
                data_dir=d,
            )
            assert pub.returncode == 0, pub.stderr
            bid = pub.stdout.strip()
            got = run_cli(
                "receive", "--as", "rc-drugs", "--count", "1", "--timeout", "15", "--json",
                data_dir=d,
            )  # fmt: skip
            assert got.returncode == 0, got.stderr
            line = json.loads(got.stdout)
            assert (line["id"], line["body"]) == (bid, BODY)

            assert not (d / "istmo.db").exists()  # the store is PostgreSQL alone
            with psycopg.connect(url.replace("+psycopg", "")) as conn:
                (originator,) = conn.execute(
                    "SELECT originator FROM bulletin WHERE id = %s", (bid,)
                ).fetchone() or (None,)
                types = {
                    r[0]
                    for r in conn.execute(
                        "SELECT type FROM audit_event WHERE bulletin_id = %s", (bid,)
                    )
                }
                body_rows = conn.execute(
                    "SELECT count(*) FROM audit_event WHERE data LIKE %s", ("%CANARY-pg%",)
                ).fetchone()
            assert originator == "gt-police"
            assert {"bulletin.accepted", "bulletin.decided"} <= types
            assert body_rows == (0,)  # the broker routes; it never stores what it cannot read

            verified = eventually_sync(  # the sequencer integrates within its idle poll
                lambda: run_cli("audit", "verify", "--trust-log-key-alone", data_dir=d),
                until=lambda r: r.returncode == 0 and "wait for the sequencer" not in r.stdout,
                what="the sequencer to integrate every event",
                interval=0.1,
            )
            assert verified.returncode == 0, verified.stdout + verified.stderr
            assert "wait for the sequencer" not in verified.stdout

            # The API serves the log key from the data directory, whatever the database.
            api = json.loads((d / "stack.json").read_text())["api_url"]
            served = httpx.get(f"{api}/v1/audit/log-key", timeout=10)
            assert served.status_code == 200, served.text
            pub_line = (d / "broker" / "log.pub").read_text().strip()
            assert served.json()["public"] == pub_line
        finally:
            assert up.stop() == 0, up.output
