"""``row_values``: the plain column values the relay records instead of ORM objects must be
exactly what the ORM row would have given ``Registry.record`` (``model_dump()``)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlmodel import SQLModel

from broker.store.registry import (
    AgencyRow,
    BulletinRow,
    DecisionRecordRow,
    RejectionRow,
    SigningKeyRow,
    row_values,
)

BULLETIN = {
    "id": "6f1c2a9e-0000-4000-8000-000000000001",
    "originator": "gt-police",
    "labels": '{"topic":"drug-trafficking"}',
    "envelope_digest": "ab" * 32,
    "ingest_seq": 7,
    "created_at": 1_780_000_000,
    "accepted_at": 1_780_000_001,
    "recipients": "bz-police,sv-police",
    "policy_version": "p1",
    "directory_version": "d1",
}
OPTIONAL = {
    "not_before": 1_780_000_000,
    "expires_at": 1_780_003_600,
    "supersedes": "6f1c2a9e-0000-4000-8000-000000000002",
    "in_reply_to": "6f1c2a9e-0000-4000-8000-000000000003",
    "thread": "6f1c2a9e-0000-4000-8000-000000000003",
    "reply_all": True,
    "forward_of": "6f1c2a9e-0000-4000-8000-000000000004",
}

CASES: list[tuple[str, type[SQLModel], dict[str, Any]]] = [
    ("bulletin, required columns only", BulletinRow, BULLETIN),
    ("bulletin, optional columns None", BulletinRow, {**BULLETIN, **dict.fromkeys(OPTIONAL)}),
    ("bulletin, every column", BulletinRow, {**BULLETIN, **OPTIONAL}),
    ("decision record", DecisionRecordRow, {"bulletin_id": "b", "routed": "a,b", "groups": "[]"}),
    (
        "rejection, autoincrement key left out",
        RejectionRow,
        {
            "ingest_seq": 3,
            "originator": "gt-police",
            "bulletin_id": None,
            "reason": "malformed",
            "message": "m",
            "time": 1,
        },
    ),
]


@pytest.mark.parametrize(("name", "table", "values"), CASES, ids=[c[0] for c in CASES])
def test_row_values_are_what_the_orm_row_dumps(
    name: str, table: type[SQLModel], values: dict[str, Any]
) -> None:
    got = row_values(table, **values)
    assert got.table is table
    want = table(**values).model_dump()
    assert dict(got.values) == want


REFUSED: list[tuple[str, type[SQLModel], dict[str, Any], str]] = [
    (
        "unknown column",
        DecisionRecordRow,
        {"bulletin_id": "b", "routed": "", "groups": "[]", "x": 1},
        "not columns",
    ),
    ("required column left out", DecisionRecordRow, {"bulletin_id": "b", "routed": ""}, "needs"),
    ("agency records are journaled", AgencyRow, {"id": "gt-police"}, "journaled"),
    ("so are their keys", SigningKeyRow, {"kid": "k"}, "journaled"),
]


@pytest.mark.parametrize(("name", "table", "values", "says"), REFUSED, ids=[r[0] for r in REFUSED])
def test_row_values_refuses_what_the_orm_would_not_record_as_such(
    name: str, table: type[SQLModel], values: dict[str, Any], says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        row_values(table, **values)
