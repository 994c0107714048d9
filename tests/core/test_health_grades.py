"""The thresholds of ``istmo health``: each grade changes exactly where the docs say."""

from __future__ import annotations

import pytest

from broker.runtime.health import (
    AUDIT_ALARM_S,
    BACKLOG_ALARM_S,
    BACKLOG_WARN_S,
    Check,
    HealthReport,
    age_check,
    consumers_check,
    dead_letter_check,
    exit_code,
    retention_check,
    usage_check,
    volume_check,
)

MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("used", "level"),
    [(0, "ok"), (79, "ok"), (80, "warn"), (89, "warn"), (90, "alarm"), (100, "alarm")],
)
def test_storage_grades_by_share_of_the_limit(used: int, level: str) -> None:
    check = usage_check("nats.store", used * MIB, 100 * MIB, "JetStream store")
    assert check.level == level
    assert check.value == used / 100
    assert ("publishes are refused" in check.detail) == (level != "ok")


def test_storage_without_a_limit_is_not_graded() -> None:
    check = usage_check("nats.stream.X", 5 * MIB, -1, "stream X")
    assert check.level == "ok"
    assert "no limit set" in check.detail


@pytest.mark.parametrize(
    ("free", "level"),
    [(100, "ok"), (20, "ok"), (19, "warn"), (10, "warn"), (9, "alarm"), (0, "alarm")],
)
def test_volumes_grade_by_free_share(free: int, level: str) -> None:
    check = volume_check("database.volume", "/srv/istmo", free * MIB, 100 * MIB, "database")
    assert check.level == level
    assert "/srv/istmo" in check.detail


def test_an_empty_volume_reading_is_an_alarm_not_a_division_error() -> None:
    assert volume_check("v", "/x", 0, 0, "database").level == "alarm"


DAY = 86400.0


@pytest.mark.parametrize(
    ("age_days", "level"), [(1, "ok"), (14.9, "ok"), (15, "warn"), (23.9, "warn"), (24, "alarm")]
)
def test_retention_alarms_when_headroom_falls_below_20_percent(age_days: float, level: str) -> None:
    check = retention_check("bz-police", 3, age_days * DAY, 30 * DAY)
    assert check.name == "retention.bz-police"
    assert check.level == level
    if level == "alarm":
        assert "expires unread in 6.0 days" in check.detail


def test_nothing_waiting_is_ok_whatever_the_age() -> None:
    assert retention_check("bz-police", 0, 29 * DAY, 30 * DAY).level == "ok"


def test_age_checks_grade_the_oldest_waiting_item() -> None:
    assert age_check("b", 0, 10_000, BACKLOG_WARN_S, BACKLOG_ALARM_S, ("x", "xs")).level == "ok"
    assert (
        age_check("b", 5, BACKLOG_WARN_S - 1, BACKLOG_WARN_S, BACKLOG_ALARM_S, ("x", "xs")).level
        == "ok"
    )
    assert (
        age_check("b", 5, BACKLOG_WARN_S, BACKLOG_WARN_S, BACKLOG_ALARM_S, ("x", "xs")).level
        == "warn"
    )
    events = ("audit event", "audit events")
    check = age_check("audit.sequencer", 7, AUDIT_ALARM_S, 10, AUDIT_ALARM_S, events)
    assert check.level == "alarm"
    assert check.detail == "7 audit events waiting, the oldest for 60 s"
    assert (
        age_check("a", 1, 1, 10, 60, events).detail == "1 audit event waiting, the oldest for 1 s"
    )


def test_dead_letters_are_a_warning() -> None:
    assert dead_letter_check(0).level == "ok"
    check = dead_letter_check(2)
    assert check.level == "warn"
    assert "istmo admin dead-letters" in check.detail


def test_the_worst_check_sets_the_exit_code() -> None:
    ok, warn, alarm = (Check("a", "ok", ""), Check("b", "warn", ""), Check("c", "alarm", ""))
    assert exit_code(HealthReport((ok,)).level) == 0
    assert exit_code(HealthReport((ok, warn)).level) == 1
    assert exit_code(HealthReport((warn, alarm, ok)).level) == 3
    assert HealthReport(()).level == "ok"
    assert HealthReport((ok, alarm)).to_json()["level"] == "alarm"


@pytest.mark.parametrize(
    ("missing", "shown"), [(0, None), (1, "1 agency has"), (8000, "8000 agencies have")]
)
def test_agencies_without_a_delivery_consumer_warn(missing: int, shown: str | None) -> None:
    checks = consumers_check(missing)
    if shown is None:
        assert checks == []
        return
    [check] = checks
    assert (check.name, check.level, check.value) == ("consumers", "warn", float(missing))
    assert check.detail.startswith(f"{shown} no delivery consumer yet")
