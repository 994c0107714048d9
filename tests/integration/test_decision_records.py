"""One decision record and one ``bulletin.decided`` event per bulletin (ADR 8), and the
per-candidate rows and events of older data directories, answer the same questions.

A live stack (real nats-server, relay and sequencer on SQLite) proves the wiring: the
relay writes one record and one event, and status, explain and the audit log agree on
who got the bulletin and why the others did not. Then a data directory laid out by the
previous version (revision 0002, a ``decision`` row and a ``bulletin.routed`` or
``bulletin.denied`` event per candidate), upgraded, with a bulletin of the new version
beside it, on SQLite and PostgreSQL: both bulletins answer status, receipts, the
auditor's flow and search, and the log verifies.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import text

from broker.audit.entries import EntryFilter
from broker.audit.log import AuditLog
from broker.audit.sequencer import DEFAULT_ORIGIN, log_verify_key, open_sequencer
from broker.config import Settings
from broker.console.figures import bulletin_flow, chart_stats
from broker.policy.model import DecidedAlike, Decision
from broker.relay.decisions import DEFAULT_DENY, route
from broker.relay.queries import AgencyQueries
from broker.runtime.stack import Stack
from broker.store import db
from broker.store.registry import BulletinRow, Registry
from schemas.agency import DeniedRecipient, ResolveRequest, StatusAccepted
from schemas.errors import AuditStoreError
from schemas.labels import Classification, Labels, Tlp
from tests.integration.stack_inproc import client, running_stack
from tests.storage_engines import ENGINES, pg_database
from tests.tamper import drop_append_only
from tests.waiting import eventually

LABELS = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("HN",),
)


def _log_types(log: AuditLog, bulletin_id: str) -> list[str]:
    return [e.event()["type"] for e in log.search(EntryFilter(bulletin_id=bulletin_id))]


def _bulletin_ids(log: AuditLog, f: EntryFilter) -> set[str]:
    return {str(e.event()["bulletin_id"]) for e in log.search(f)}


# ---------------------------------------------------------------------- a live stack
@pytest_asyncio.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path / "istmo") as s:
        yield s


async def test_status_explain_and_the_log_agree_on_one_record_per_bulletin(stack: Stack) -> None:
    registry, directory = stack.registry, stack.directory
    assert registry is not None
    assert directory is not None
    async with await client(stack, "gt-police") as gt:
        sent = await gt.publish(title="record", text="one record", labels=LABELS)
    assert sent.state == "accepted"
    bid = sent.bulletin_id
    assert sent.routed
    assert sent.denied

    # 1. One row and one event for the bulletin's decisions, none per candidate.
    with registry.connect() as conn:
        count = {
            table: conn.execute(
                text(f"SELECT count(*) FROM {table} WHERE bulletin_id = :b"),  # noqa: S608  # a fixed table name
                {"b": bid},
            ).scalar()
            for table in ("decision", "decision_record")
        }
    assert count == {"decision": 0, "decision_record": 1}

    # 2. Status and explain agree, candidate by candidate, with the deciding policies.
    queries = AgencyQueries(registry, directory)
    status = queries.status("gt-police", bid).root
    assert isinstance(status, StatusAccepted)
    explained = queries.explain("gt-police", ResolveRequest(labels=LABELS), int(time.time()))
    verdicts = {c.agency: c for c in explained.candidates if c.agency != "gt-police"}
    assert set(status.routed) == {a for a, c in verdicts.items() if c.allowed}
    assert {d.agency: d.policy_ids for d in status.denied} == {
        a: c.policy_ids for a, c in verdicts.items() if not c.allowed
    }
    assert all(d.reasons for d in status.denied)  # the policies' reasons, or default deny

    # 3. The log, once integrated: accepted and decided; the flow and a search by a
    # refused agency answer "why not", a search by a recipient "who got it".
    log = AuditLog(stack.settings.db_url)
    try:
        types = await eventually(
            lambda: _log_types(log, bid), until=lambda t: len(t) == 2, what="both entries"
        )
        assert types == ["bulletin.accepted", "bulletin.decided"]
        flow = bulletin_flow(registry, bid)
        decided = {c["agency"]: c for c in flow["candidates"]}
        assert {a for a, c in decided.items() if c["decision"] == "permitted"} == set(sent.routed)
        for d in status.denied:
            assert decided[d.agency]["decision"] == "denied"
            assert tuple(decided[d.agency]["policy_ids"]) == d.policy_ids
        refused, recipient = status.denied[0].agency, status.routed[0]
        for agency in (refused, recipient):
            assert bid in _bulletin_ids(log, EntryFilter(agency=agency, type="bulletin.decided"))
    finally:
        log.close()


# ---------------------------------------------------------------------- old data
OLD = "00000000-0000-4000-8000-0000000000a1"
NEW = "00000000-0000-4000-8000-0000000000a2"
AT_MS = 1_780_000_000_000
# The candidates of both bulletins: (agency, allowed, deciding policies, reasons).
CANDIDATES = (
    ("gt-justice", False, (), (DEFAULT_DENY,)),
    ("hn-police", True, ("grant.releasable",), ()),
    ("jm-police", False, ("guard.clearance",), ("below the classification",)),
    ("sv-police", True, ("grant.releasable",), ()),
)
ADDRESSED = ("hn-police", "sv-police")
EXPECTED = StatusAccepted(
    state="accepted",
    bulletin_id=OLD,
    routed=ADDRESSED,
    denied=(
        DeniedRecipient(agency="gt-justice", policy_ids=(), reasons=(DEFAULT_DENY,)),
        DeniedRecipient(
            agency="jm-police",
            policy_ids=("guard.clearance",),
            reasons=("below the classification",),
        ),
    ),
    policy_version="p1",
)


def _old_events() -> list[dict[str, Any]]:
    """The audit events of OLD exactly as the previous version wrote them."""
    common = {"originator": "gt-police", "policy_version": "p1", "directory_version": "d1"}
    out: list[dict[str, Any]] = [
        {
            "event_id": f"{OLD}:accepted",
            "type": "bulletin.accepted",
            "actor": "gt-police",
            "subject": OLD,
            "reason": None,
            "data": {"recipients": list(ADDRESSED), "policy_version": "p1"},
        }
    ]
    for agency, allowed, policy_ids, _ in CANDIDATES:
        kind = "routed" if allowed else "denied"
        out.append(
            {
                "event_id": f"{OLD}:{kind}:{agency}",
                "type": f"bulletin.{kind}",
                "actor": "relay",
                "subject": agency,
                "reason": None if allowed else ("policy_deny" if policy_ids else "default_deny"),
                "data": {**common, "policy_ids": list(policy_ids)},
            }
        )
    return out


def _write_previous_version(url: str) -> None:
    """OLD as the previous version stored it, at revision 0002."""
    assert db.upgrade(url, "0002")[1] == "0002"
    engine = db.make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO bulletin (id, originator, labels, envelope_digest, ingest_seq, "
                    "created_at, accepted_at, recipients, policy_version, directory_version) "
                    "VALUES (:id, 'gt-police', '{}', 'digest', 1, 1, 1, :r, 'p1', 'd1')"
                ),
                {"id": OLD, "r": ",".join(ADDRESSED)},
            )
            conn.execute(
                text(
                    "INSERT INTO decision (bulletin_id, agency, allowed, policy_ids, reasons) "
                    "VALUES (:b, :a, :allowed, :p, :r)"
                ),
                [
                    {"b": OLD, "a": a, "allowed": ok, "p": ",".join(p), "r": json.dumps(list(r))}
                    for a, ok, p, r in CANDIDATES
                ],
            )
            conn.execute(
                text(
                    "INSERT INTO receipt (bulletin_id, recipient, received_at, recorded_at, "
                    "signature) VALUES (:b, 'hn-police', 5, 5, 'c2ln')"
                ),
                {"b": OLD},
            )
            conn.execute(
                text(
                    "INSERT INTO audit_event (event_id, type, time, actor, subject, "
                    "bulletin_id, reason, data) VALUES (:event_id, :type, :time, :actor, "
                    ":subject, :bulletin_id, :reason, :data)"
                ),
                [
                    {
                        **e,
                        "time": AT_MS,
                        "bulletin_id": OLD,
                        "data": json.dumps(e["data"], sort_keys=True, separators=(",", ":")),
                    }
                    for e in _old_events()
                ],
            )
    finally:
        engine.dispose()


def _record_new_version(registry: Registry) -> None:
    """NEW, decided alike, recorded by this version."""
    decisions = [Decision(a, "receive", ok, p, r, "p1", "d1") for a, ok, p, r in CANDIDATES]
    routing = route(
        NEW,
        originator="gt-police",
        addressed=ADDRESSED,
        decided=[DecidedAlike(d, (d.agency,)) for d in decisions],
        policy_version="p1",
        directory_version="d1",
        at=AT_MS + 1,
    )
    bulletin = BulletinRow(
        id=NEW,
        originator="gt-police",
        labels="{}",
        envelope_digest="digest",
        ingest_seq=2,
        created_at=1,
        accepted_at=1,
        recipients=",".join(ADDRESSED),
        policy_version="p1",
        directory_version="d1",
    )
    registry.record([bulletin, routing.record], routing.events)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_data_directory_of_the_previous_version_still_answers(
    engine: str, tmp_path: Path
) -> None:
    if engine == "sqlite":
        _old_data_answers(Settings(data_dir=tmp_path / "istmo"))
        return
    with pg_database(migrated=False) as url:
        _old_data_answers(Settings(data_dir=tmp_path / "istmo", database_url=url))


def _old_data_answers(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True)
    _write_previous_version(settings.db_url)
    assert db.upgrade(settings.db_url) == ("0002", db.HEAD_REVISION)  # `istmo db upgrade`
    stack = Stack(settings, out=lambda _line: None)
    stack.prepare()  # the demo directory, into the upgraded database
    registry, directory = stack.registry, stack.directory
    assert registry is not None
    assert directory is not None
    try:
        _record_new_version(registry)
        sequencer = open_sequencer(settings, out=lambda _line: None)
        try:
            sequencer.drain()
        finally:
            sequencer.close()

        # Status and receipts: the same answer from the old rows and the new record.
        queries = AgencyQueries(registry, directory)
        for bid in (OLD, NEW):
            assert queries.status("gt-police", bid).root == EXPECTED.model_copy(
                update={"bulletin_id": bid}
            )
            assert registry.decisions(bid) == registry.decisions(OLD)
        # Who the policy allowed, as the relay reads it for a batch of receipts: the old
        # rows and the new record in one call, and nobody for a bulletin never decided.
        never = "00000000-0000-4000-8000-0000000000ff"
        permitted = {"hn-police", "sv-police"}
        assert registry.routed([OLD, NEW, never, OLD]) == {
            OLD: permitted,
            NEW: permitted,
            never: set(),
        }
        assert registry.routed([]) == {}
        old_receipts = queries.receipts("gt-police", OLD).recipients
        assert [(r.agency, r.received_at) for r in old_receipts] == [
            ("hn-police", 5),
            ("sv-police", None),
        ]

        # The auditor's flow of each bulletin: the same candidates, decisions, policies.
        def candidates(bid: str) -> list[tuple[str, str, tuple[str, ...], str | None]]:
            return [
                (c["agency"], c["decision"], tuple(c["policy_ids"]), c["reason"])
                for c in bulletin_flow(registry, bid)["candidates"]
            ]

        assert (
            candidates(OLD)
            == candidates(NEW)
            == [
                ("hn-police", "permitted", ("grant.releasable",), None),
                ("sv-police", "permitted", ("grant.releasable",), None),
                ("gt-justice", "denied", (), "default_deny"),
                ("jm-police", "denied", ("guard.clearance",), "policy_deny"),
            ]
        )

        # The auditor's charts count each bulletin's denials and deliveries alike.
        stats = chart_stats(registry, AT_MS, AT_MS + 1000)
        assert stats["denials"] == {
            "gt-justice": {"default_deny": 2},
            "jm-police": {"policy_deny": 2},
        }
        assert stats["delivered"] == 4

        # A search by agency finds both, in their own shapes; the log verifies, old and new.
        log = AuditLog(settings.db_url)
        try:
            assert _bulletin_ids(log, EntryFilter(agency="jm-police")) >= {OLD, NEW}
            assert _log_types(log, NEW) == ["bulletin.decided"]
            # Only a whole id, taken literally: no prefix, no LIKE wildcard, no quote games.
            for hostile in ("jm-polic", "%", "_m-police", 'jm-police"', "\\", "%jm-police%"):
                assert NEW not in _bulletin_ids(log, EntryFilter(agency=hostile)), hostile
            key = log_verify_key(settings.broker_dir)
            assert key is not None
            report = log.verify_all(key, DEFAULT_ORIGIN)
            assert report.ok, report
        finally:
            log.close()
    finally:
        assert stack.data is not None
        stack.data.close()


def test_a_decision_record_edited_by_hand_is_a_store_error_not_an_answer(
    tmp_path: Path,
) -> None:
    registry = Registry(f"sqlite:///{tmp_path / 'istmo.db'}")
    try:
        with registry.begin() as conn:  # as the tables' owner could (migration 0013)
            drop_append_only(conn, ["decision_record"])
        for groups in (
            "not json",
            '{"outcome": "routed"}',
            '[{"outcome": "routed"}]',
            "[1]",
            '[{"outcome": "routed", "policy_ids": [], "reasons": [], "agencies": "hn-police"}]',
        ):
            with registry.begin() as conn:
                conn.execute(text("DELETE FROM decision_record"))
                conn.execute(
                    text("INSERT INTO decision_record VALUES (:b, 'hn-police', :g)"),
                    {"b": NEW, "g": groups},
                )
            with pytest.raises(AuditStoreError, match=f"decision record of bulletin {NEW}"):
                registry.decisions(NEW)
            with pytest.raises(AuditStoreError, match=f"decision record of bulletin {NEW}"):
                registry.routed([NEW])  # a receipt for it is not judged on a guess
    finally:
        registry.close()
