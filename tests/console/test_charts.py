"""The console's charts: axes with whole, distinct ticks; no agency silently left out."""

from __future__ import annotations

from typing import Any

import pytest

from broker.console.charts import axis, render_all
from broker.console.i18n import translator


@pytest.mark.parametrize(
    ("top", "expected"),
    [
        (0, (1, 1)),
        (1, (1, 1)),
        (2, (2, 1)),
        (5, (5, 1)),
        (6, (6, 2)),
        (7, (8, 2)),
        (9, (10, 2)),
        (11, (15, 5)),
        (23, (25, 5)),
        (26, (30, 10)),
        (99, (100, 20)),
        (1234, (1500, 500)),
    ],
)
def test_axis_ticks_are_distinct_whole_numbers(top: int, expected: tuple[int, int]) -> None:
    vmax, step = axis(top)
    assert (vmax, step) == expected
    ticks = list(range(0, vmax + 1, step))
    assert ticks[-1] == vmax >= top
    assert len(ticks) <= 6
    assert len(set(ticks)) == len(ticks)


def _stats(days: dict[str, dict[str, int]], denials: dict[str, dict[str, int]]) -> dict[str, Any]:
    return {
        "per_day": days,
        "days": sorted(days),
        "topics": sorted({t for d in days.values() for t in d}),
        "denials": denials,
        "reasons": sorted({r for d in denials.values() for r in d}),
        "ack_buckets": [],
        "delivered": 0,
        "received": 0,
        "median_ack_s": None,
    }


def test_two_bulletins_read_0_1_2_on_the_axis() -> None:
    stats = _stats({"2026-12-04": {"migration": 2}}, {})
    per_day = render_all(stats, translator("en"))[0]
    labels = [
        part.split(">")[1].split("<")[0]
        for part in str(per_day.svg).split('class="axis" text-anchor="end"')[1:]
    ]
    assert labels == ["0", "1", "2"]


def test_more_denied_agencies_than_the_chart_shows_are_said_and_tabled() -> None:
    denials = {f"a{i:02d}-police": {"default deny": 40 - i} for i in range(39)}
    denied = render_all(_stats({}, denials), translator("en"))[1]
    assert str(denied.svg).count("<rect") == 30 + 1  # 30 bars and the legend's swatch
    assert denied.note == (
        "The chart shows the agencies with the most denials (30 of 39); "
        "the table lists all of them."
    )
    assert len(denied.table["rows"]) == 39


def test_a_chart_with_every_agency_has_no_note() -> None:
    denied = render_all(_stats({}, {"gt-police": {"default deny": 1}}), translator("en"))[1]
    assert denied.note == ""
