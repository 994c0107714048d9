"""Decision records and ``bulletin.decided`` events that name agency sets (ADR 36), on
SQLite and PostgreSQL.

Two bulletins decided alike are recorded, one with its big groups by reference (a set
threshold of 3, so the demo directory's agencies make them) and one in full; every
reader answers the same for both: the registry's decisions and allowed recipients (what
status, explain and receipts use), the auditor's flow and charts, a search of the log by
agency, and the log verifies. A registry opened afresh reads the sets from the database
(a restart). A set edited or deleted behind the broker's back is a store error, not an
answer, and recording a set again changes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import text

from broker.audit.entries import EntryFilter
from broker.audit.log import AuditLog
from broker.audit.sequencer import DEFAULT_ORIGIN, log_verify_key, open_sequencer
from broker.config import Settings
from broker.console.figures import bulletin_flow, chart_stats
from broker.policy.model import DecidedAlike, Decision
from broker.relay.decisions import DEFAULT_DENY, route
from broker.relay.plan import set_records
from broker.runtime.stack import Stack
from broker.store.registry import BulletinRow, Registry
from schemas.errors import AuditStoreError
from tests.storage_engines import ENGINES, pg_database
from tests.tamper import drop_append_only

BY_SET = "00000000-0000-4000-8000-0000000000b1"
IN_FULL = "00000000-0000-4000-8000-0000000000b2"
AT_MS = 1_780_000_000_000


def _classes(agencies: list[str]) -> list[DecidedAlike]:
    """12 agencies allowed alike, the rest refused by default, 2 refused by a guard."""
    allowed, guarded, refused = agencies[:12], agencies[12:14], agencies[14:]

    def alike(members: list[str], ok: bool, ids: tuple[str, ...], why: tuple[str, ...]):
        return DecidedAlike(Decision(members[0], "receive", ok, ids, why, "p1", "d1"),
                            tuple(members))  # fmt: skip

    return [
        alike(allowed, True, ("grant.releasable",), ("releasable to it",)),
        alike(guarded, False, ("guard.clearance",), ("below the classification",)),
        alike(refused, False, (), (DEFAULT_DENY,)),
    ]


def _record(registry: Registry, bid: str, decided: list[DecidedAlike], listed_from: int) -> None:
    addressed = decided[0].agencies[:2]
    routing = route(bid, originator="gt-police", addressed=addressed, decided=decided,
                    policy_version="p1", directory_version="d1", at=AT_MS,
                    listed_from=listed_from)  # fmt: skip
    set_rows, set_events = set_records(routing.listed, AT_MS)
    bulletin = BulletinRow(id=bid, originator="gt-police", labels="{}", envelope_digest="x",
                           ingest_seq=1 if bid == BY_SET else 2, created_at=1, accepted_at=1,
                           recipients=",".join(addressed), policy_version="p1",
                           directory_version="d1")  # fmt: skip
    registry.record([*set_rows, bulletin, routing.record], [*set_events, *routing.events])


@pytest.mark.parametrize("engine", ENGINES)
def test_every_reader_answers_alike_for_a_record_by_set(engine: str, tmp_path: Path) -> None:
    if engine == "sqlite":
        _readers_agree(Settings(data_dir=tmp_path / "istmo"))
        return
    with pg_database() as url:
        _readers_agree(Settings(data_dir=tmp_path / "istmo", database_url=url))


def _readers_agree(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True)
    stack = Stack(settings, out=lambda _line: None)
    stack.prepare()
    registry = stack.registry
    assert registry is not None
    try:
        agencies = sorted(a.id for a in registry.agencies() if a.id != "gt-police")
        decided = _classes(agencies)
        _record(registry, BY_SET, decided, listed_from=3)
        _record(registry, IN_FULL, decided, listed_from=10**9)
        with registry.connect() as conn:
            sets = conn.execute(text("SELECT digest, count FROM agency_set")).all()
            groups = conn.execute(
                text("SELECT groups FROM decision_record WHERE bulletin_id = :b"), {"b": BY_SET}
            ).scalar_one()
        # The allowed class (12) and the default refusal (the rest) are sets; the guard's
        # 2 and the 2 routed are written in full.
        assert sorted(n for _, n in sets) == sorted([12, len(agencies) - 14])
        assert sum("listed" in g for g in json.loads(groups)) == 2

        def answers(reg: Registry) -> None:
            assert reg.decisions(BY_SET) == reg.decisions(IN_FULL)
            assert len(reg.decisions(BY_SET)) == len(agencies)
            allowed = set(agencies[:12])
            assert reg.routed([BY_SET, IN_FULL]) == {BY_SET: allowed, IN_FULL: allowed}

        answers(registry)
        # A relay recording the same set again (after a restart it forgets what it
        # recorded): nothing changes, nothing fails.
        _record(registry, BY_SET, decided, listed_from=3)
        with registry.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM agency_set")).scalar_one() == 2

        sequencer = open_sequencer(settings, out=lambda _line: None)
        try:
            sequencer.drain()
        finally:
            sequencer.close()

        def flow(bid: str) -> list[tuple[str, str, tuple[str, ...], str | None]]:
            return [
                (c["agency"], c["decision"], tuple(c["policy_ids"]), c["reason"])
                for c in bulletin_flow(registry, bid)["candidates"]
            ]

        assert flow(BY_SET) == flow(IN_FULL)
        assert len(flow(BY_SET)) == len(agencies) - 10  # unaddressed ones are not shown
        stats = chart_stats(registry, AT_MS, AT_MS + 1000)
        assert stats["denials"][agencies[-1]] == {"default_deny": 2}
        assert stats["denials"][agencies[12]] == {"policy_deny": 2}

        log = AuditLog(settings.db_url)
        try:
            # A refused agency finds both bulletins' decisions, through the set or not; a
            # whole id only, taken literally.
            found = {str(e.event()["bulletin_id"]) for e in log.search(EntryFilter(
                agency=agencies[-1], type="bulletin.decided"))}  # fmt: skip
            assert found == {BY_SET, IN_FULL}
            for hostile in (agencies[-1][:-1], "%", "_" + agencies[-1][1:], "0", "a"):
                hits = log.search(EntryFilter(agency=hostile, type="bulletin.decided"))
                assert BY_SET not in {str(e.event()["bulletin_id"]) for e in hits}, hostile
            key = log_verify_key(settings.broker_dir)
            assert key is not None
            report = log.verify_all(key, DEFAULT_ORIGIN)
            assert report.ok, report
        finally:
            log.close()

        # A restart: a registry opened afresh reads the sets from the database.
        fresh = Registry(settings.db_url)
        try:
            answers(fresh)
        finally:
            fresh.close()

        # Edited behind the broker's back: one agency dropped from a set, then the set gone.
        # The database refuses it (migration 0013) until the tables' owner drops the triggers.
        with registry.begin() as conn:
            digest, members = conn.execute(
                text("SELECT digest, agencies FROM agency_set WHERE count = 12")
            ).one()
        shorter = json.dumps(json.loads(members)[1:], separators=(",", ":"))
        with pytest.raises(AuditStoreError) as refused, registry.begin() as conn:
            conn.execute(text("DELETE FROM agency_set WHERE digest = :d"), {"d": digest})
        assert "append-only" in str(refused.value.__cause__)
        with registry.begin() as conn:
            drop_append_only(conn, ["agency_set"])
            conn.execute(
                text("UPDATE agency_set SET agencies = :a WHERE digest = :d"),
                {"a": shorter, "d": digest},
            )
        edited = Registry(settings.db_url)
        try:
            with pytest.raises(AuditStoreError, match="does not match its digest"):
                edited.decisions(BY_SET)
            with pytest.raises(AuditStoreError, match="does not match its digest"):
                edited.routed([BY_SET])
            assert edited.decisions(IN_FULL)  # the record in full is untouched
            with edited.begin() as conn:
                conn.execute(text("DELETE FROM agency_set WHERE digest = :d"), {"d": digest})
            with pytest.raises(AuditStoreError, match=f"decision record of bulletin {BY_SET}"):
                edited.decisions(BY_SET)
        finally:
            edited.close()
    finally:
        assert stack.data is not None
        stack.data.close()
