"""What reaches the audit log of a stream of refusals (``broker.api.refusals``): the first
of each kind per source and window at once, one summary per window with the count of the
rest, and nothing lost."""

from __future__ import annotations

import pytest

from broker.api.refusals import RefusalLedger
from broker.audit import events
from schemas.audit import AuditEvent

WINDOW_MS = 60_000


def refused(reason: str = "malformed_token", peer: str = "198.51.100.7") -> AuditEvent:
    return events.http_refused(
        "auth.refused",
        None,
        method="GET",
        route="/v1/agencies",
        reason=reason,
        status=401,
        message="the access token is not a compact JWS",
        peer=peer,
        at=0,
    )


def kind(e: AuditEvent) -> tuple[str | None, ...]:
    return (e.type, e.reason, e.actor, e.subject)


def note(ledger: RefusalLedger, source: str, e: AuditEvent, now_ms: int) -> list[AuditEvent]:
    return ledger.note(source, kind(e), e, now_ms=now_ms)


def counted(written: list[AuditEvent]) -> int:
    """The refusals the written events stand for: one each, or a summary's count."""
    total = 0
    for e in written:
        count = e.data.get("count", 1)
        assert isinstance(count, int)
        total += count
    return total


def test_the_first_is_written_at_once_and_the_rest_once_the_window_closed() -> None:
    ledger = RefusalLedger(WINDOW_MS)
    first = refused()
    assert note(ledger, "a", first, 1_000) == [first]
    for i in range(999):
        assert note(ledger, "a", refused(), 1_000 + i) == []
    # The window closes at 61 s: the next refusal (anyone's) writes its summary first.
    other = refused(peer="b")
    summary, again = note(ledger, "b", other, 61_000)
    assert again == other
    assert summary.type == "auth.refused"
    assert summary.reason == "malformed_token"
    assert summary.event_id == f"{first.event_id}:more"
    assert summary.data == {
        "peer": "198.51.100.7",
        "count": 999,
        "first_at": 1_000,
        "last_at": 1_998,
        "summary_of": first.event_id,
    }
    assert counted([first, summary]) == 1000


@pytest.mark.parametrize(
    ("second_source", "second_reason", "written_at_once"),
    [
        ("a", "malformed_token", False),  # the same kind from the same source: counted
        ("a", "token_expired", True),  # another kind: its own first
        ("b", "malformed_token", True),  # another source: its own first
    ],
)
def test_a_window_is_per_source_and_kind(
    second_source: str, second_reason: str, written_at_once: bool
) -> None:
    ledger = RefusalLedger(WINDOW_MS)
    note(ledger, "a", refused(), 0)
    second = refused(second_reason)
    assert (note(ledger, second_source, second, 10) == [second]) is written_at_once


def test_a_lone_refusal_owes_no_summary() -> None:
    ledger = RefusalLedger(WINDOW_MS)
    note(ledger, "a", refused(), 0)
    assert ledger.close_due(WINDOW_MS) == []
    assert ledger.close_all(WINDOW_MS) == []


def test_stopping_writes_every_summary_still_owed() -> None:
    ledger = RefusalLedger(WINDOW_MS)
    for source in ("a", "b"):
        for i in range(3):
            note(ledger, source, refused(), i)
    assert ledger.close_due(WINDOW_MS - 1) == []  # not closed yet
    owed = ledger.close_all(5)
    assert [(e.data["peer"], e.data["count"]) for e in owed] == [
        ("198.51.100.7", 2),
        ("198.51.100.7", 2),
    ]
    assert ledger.close_all(6) == []


def test_many_sources_close_the_oldest_window_early_not_silently() -> None:
    ledger = RefusalLedger(WINDOW_MS, max_windows=2)
    written: list[AuditEvent] = []
    for source in ("a", "b", "c"):
        written += note(ledger, source, refused(peer=source), 0)
        written += note(ledger, source, refused(peer=source), 1)
    written += ledger.close_all(2)
    assert counted(written) == 6
    assert len(ledger._open) == 0
