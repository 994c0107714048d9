"""An agency with an empty queue can tell "nothing was sent to me" from "the policy refused
me what was sent": the agency API's ``withheld`` answers how many bulletins the policy
withheld from the caller and when, nothing about them (issue 21, point 10).

A live stack (nats-server, relay, SQLite) proves the wiring: a refused agency counts the
bulletin, a permitted one does not, the answer names no bulletin, no agency can ask for
another's count, and the count is in the database (a restart keeps it). On both engines:
a bulletin decided twice (two relays racing on one message) counts once, and the upgrade
that adds the counters counts the refusals the database already holds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from sqlalchemy import text

from broker.config import Settings
from broker.policy.model import DecidedAlike, Decision
from broker.relay.decisions import DEFAULT_DENY, route
from broker.store import db
from broker.store.registry import BulletinRow, Registry
from broker.store.withheld import Withholding
from clients.results import Withheld
from clients.sdk import IstmoClient
from schemas.agency import ErrorReply, WithheldReply
from schemas.envelope import parse_model
from schemas.labels import Classification, Labels, Tlp
from tests.integration.stack_inproc import client, running_stack
from tests.storage_engines import ENGINES, Storage, pg_database

LABELS = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("SICA",),
)
REFUSED, PERMITTED = "jm-police", "hn-police"  # Jamaica is CARICOM only; Honduras is SICA
DENIED_WAIT_S = 0.5  # how long a request NATS refuses waits for an answer that never comes


async def ask_raw(c: IstmoClient, agency: str, body: bytes = b"{}") -> bytes:
    """The ``withheld`` request as any client sends it, on ``agency``'s subject."""
    reply = await c._nc.request(f"istmo.api.{agency}.withheld", body, timeout=5)
    data: bytes = reply.data
    return data


def withheld_of(raw: bytes) -> WithheldReply:
    return parse_model(WithheldReply, raw, max_bytes=1 << 16, what="reply")


# ---------------------------------------------------------------------- a live stack
async def test_a_refused_agency_is_told_how_many_and_nothing_else(tmp_path: Path) -> None:
    data_dir = tmp_path / "istmo"
    async with running_stack(data_dir) as stack:
        async with await client(stack, "gt-police") as gt:
            before = int(time.time())
            sent = await gt.publish(title="withheld", text="CANARY-body", labels=LABELS)
            after = int(time.time())
        assert sent.state == "accepted"
        assert REFUSED in {a for a, _ in sent.denied}
        assert PERMITTED in sent.routed

        async with await client(stack, REFUSED) as jm, await client(stack, PERMITTED) as hn:
            # 1. The refused agency: one bulletin, when to the minute, and nothing else.
            raw = await ask_raw(jm, REFUSED)
            answer = withheld_of(raw)
            assert answer.withheld == 1
            assert answer.first_at == answer.latest_at
            assert answer.latest_at is not None
            assert answer.latest_at % 60 == 0
            assert before - before % 60 <= answer.latest_at <= after
            assert set(json.loads(raw)) == {"withheld", "first_at", "latest_at"}
            for secret in (sent.bulletin_id, "drug", "SICA", "gt-police", "RESTRICTED", "CANARY"):
                assert secret.encode() not in raw, secret
            assert await jm.withheld() == Withheld(1, answer.first_at, answer.latest_at)

            # 2. The permitted agency got the bulletin: nothing withheld from it.
            assert await hn.withheld() == Withheld(0, None, None)

            # 3. No agency can ask for another's count: NATS refuses the subject, and the
            # request has no field to name one (refused as malformed, and audited).
            with pytest.raises(nats.errors.TimeoutError):
                await jm._nc.request(
                    f"istmo.api.{PERMITTED}.withheld", b"{}", timeout=DENIED_WAIT_S
                )
            raw = await ask_raw(jm, REFUSED, json.dumps({"agency": PERMITTED}).encode())
            assert parse_model(ErrorReply, raw, max_bytes=1 << 16, what="reply").error.code == (
                "malformed"
            )
            assert PERMITTED.encode() not in raw

        # 4. Asking is a read like status: only the refused request is in the log.
        assert stack.registry is not None
        asked = stack.registry.audit_events(actor=REFUSED)
        assert [(e.type, e.subject, e.reason) for e in asked] == [
            ("request.rejected", "api.withheld", "malformed")
        ]

    # 5. The count is in the database: a restarted broker answers the same, and counts on.
    async with running_stack(data_dir) as stack:
        async with await client(stack, REFUSED) as jm:
            assert await jm.withheld() == Withheld(1, answer.first_at, answer.latest_at)
        async with await client(stack, "gt-police") as gt:
            again = await gt.publish(title="again", text="again", labels=LABELS)
        assert REFUSED in {a for a, _ in again.denied}
        async with await client(stack, REFUSED) as jm, await client(stack, PERMITTED) as hn:
            counted = await jm.withheld()
            assert (counted.bulletins, counted.first_at) == (2, answer.first_at)
            assert counted.latest_at is not None
            assert counted.latest_at >= answer.latest_at
            assert (await hn.withheld()).bulletins == 0


# ---------------------------------------------------------------------- the store
CANDIDATES = (
    ("gt-justice", False, (), (DEFAULT_DENY,)),
    ("hn-police", True, ("grant.releasable",), ()),
    ("jm-police", False, ("guard.clearance",), ("below the classification",)),
    ("sv-police", True, ("grant.releasable",), ()),  # allowed, not addressed: not withheld
)
ADDRESSED = ("hn-police",)


def _decided(registry: Registry, bid: str, at: int) -> None:
    """Record ``bid`` decided on ``CANDIDATES`` at ``at`` as the relay does."""
    decisions = [Decision(a, "receive", ok, p, r, "p1", "d1") for a, ok, p, r in CANDIDATES]
    routing = route(
        bid,
        originator="gt-police",
        addressed=ADDRESSED,
        decided=[DecidedAlike(d, (d.agency,)) for d in decisions],
        policy_version="p1",
        directory_version="d1",
        at=at * 1000,
    )
    bulletin = BulletinRow(
        id=bid,
        originator="gt-police",
        labels="{}",
        envelope_digest="digest",
        ingest_seq=1,
        created_at=at,
        accepted_at=at,
        recipients=",".join(ADDRESSED),
        policy_version="p1",
        directory_version="d1",
    )
    refused = tuple(d.agency for d in decisions if not d.allowed)
    registry.record(
        [bulletin, routing.record], routing.events, withheld=[Withholding(bid, refused, at)]
    )


def _counts(registry: Registry) -> dict[str, tuple[int, int, int]]:
    out = {}
    for agency in ("gt-justice", "hn-police", "jm-police", "sv-police"):
        row = registry.withheld_count(agency)
        if row is not None:
            out[agency] = (row.bulletins, row.first_at, row.latest_at)
    return out


def test_a_bulletin_decided_twice_is_counted_once(storage: Storage, tmp_path: Path) -> None:
    registry = Registry(storage.url(tmp_path))
    try:
        first = "00000000-0000-4000-8000-0000000000b1"
        _decided(registry, first, 1_000)
        # Two relays racing on a redelivered message both decide it: the second
        # transaction inserts no record, so it counts nothing.
        _decided(registry, first, 1_005)
        assert _counts(registry) == {
            "gt-justice": (1, 1_000, 1_000),
            "jm-police": (1, 1_000, 1_000),
        }
        _decided(registry, "00000000-0000-4000-8000-0000000000b2", 2_000)
        assert _counts(registry) == {
            "gt-justice": (2, 1_000, 2_000),
            "jm-police": (2, 1_000, 2_000),
        }
    finally:
        registry.close()


# ---------------------------------------------------------------------- the upgrade
R1, R2, OLD = (f"00000000-0000-4000-8000-0000000000c{i}" for i in (1, 2, 3))


def _group(outcome: str, agencies: list[str]) -> dict[str, Any]:
    return {"outcome": outcome, "policy_ids": [], "reasons": [], "agencies": agencies}


def _write_revision_0003(url: str) -> None:
    """Two bulletins with decision records and one with the older per-candidate rows."""
    assert db.upgrade(url, "0003")[1] == "0003"
    engine = db.make_engine(url)
    records = {
        R1: [
            _group("routed", ["hn-police"]),
            _group("unaddressed", ["sv-police"]),
            _group("default_deny", ["gt-justice", "jm-police"]),
        ],
        R2: [_group("routed", ["hn-police"]), _group("policy_deny", ["jm-police"])],
    }
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO bulletin (id, originator, labels, envelope_digest, ingest_seq, "
                    "created_at, accepted_at, recipients, policy_version, directory_version) "
                    "VALUES (:id, 'gt-police', '{}', 'digest', 1, :at, :at, 'hn-police', "
                    "'p1', 'd1')"
                ),
                [{"id": R1, "at": 300}, {"id": R2, "at": 500}, {"id": OLD, "at": 100}],
            )
            conn.execute(
                text(
                    "INSERT INTO decision_record (bulletin_id, routed, groups) "
                    "VALUES (:b, 'hn-police', :g)"
                ),
                [{"b": b, "g": json.dumps(g)} for b, g in records.items()],
            )
            conn.execute(
                text(
                    "INSERT INTO decision (bulletin_id, agency, allowed, policy_ids, reasons) "
                    "VALUES (:b, :a, :ok, '', '[]')"
                ),
                [
                    {"b": OLD, "a": "hn-police", "ok": True},
                    {"b": OLD, "a": "jm-police", "ok": False},
                ],
            )
    finally:
        engine.dispose()


@pytest.mark.parametrize("engine", ENGINES)
def test_the_upgrade_counts_the_refusals_the_database_holds(engine: str, tmp_path: Path) -> None:
    def upgraded(settings: Settings) -> None:
        settings.data_dir.mkdir(parents=True)
        _write_revision_0003(settings.db_url)
        assert db.upgrade(settings.db_url) == ("0003", db.HEAD_REVISION)
        registry = Registry(settings.db_url)
        try:
            # Refusals only: routed and unaddressed candidates are not withheld from.
            assert _counts(registry) == {"gt-justice": (1, 300, 300), "jm-police": (3, 100, 500)}
        finally:
            registry.close()

    if engine == "sqlite":
        upgraded(Settings(data_dir=tmp_path / "istmo"))
        return
    with pg_database(migrated=False) as url:
        upgraded(Settings(data_dir=tmp_path / "istmo", database_url=url))
