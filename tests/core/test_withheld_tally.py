"""What a batch adds to each agency's count of bulletins the policy withheld from it
(``broker.store.withheld.tally``): per agency, how many of the batch's newly recorded
bulletins refused it, and the earliest and latest decision time."""

from __future__ import annotations

import pytest

from broker.store.withheld import WithheldCount, Withholding, tally

A, B, C = (f"00000000-0000-4000-8000-00000000000{i}" for i in (1, 2, 3))

CASES = [
    pytest.param([], {A}, [], id="nothing-refused"),
    pytest.param([Withholding(A, (), 100)], {A}, [], id="a-bulletin-that-refused-no-one"),
    pytest.param(
        [Withholding(A, ("jm-police", "gt-justice"), 100)],
        {A},
        [WithheldCount("gt-justice", 1, 100, 100), WithheldCount("jm-police", 1, 100, 100)],
        id="one-bulletin-two-agencies-sorted",
    ),
    pytest.param(
        [Withholding(A, ("jm-police",), 160), Withholding(B, ("jm-police",), 100)],
        {A, B},
        [WithheldCount("jm-police", 2, 100, 160)],
        id="two-bulletins-first-and-latest",
    ),
    pytest.param(
        [Withholding(A, ("jm-police",), 100), Withholding(B, ("jm-police", "hn-police"), 160)],
        {B},
        [WithheldCount("hn-police", 1, 160, 160), WithheldCount("jm-police", 1, 160, 160)],
        id="a-record-already-there-is-not-counted-again",
    ),
    pytest.param(
        [Withholding(A, ("jm-police",), 100)], set(), [], id="nothing-recorded-nothing-counted"
    ),
    pytest.param(
        [Withholding(A, ("jm-police", "jm-police"), 100)],
        {A},
        [WithheldCount("jm-police", 1, 100, 100)],
        id="named-twice-counts-once",
    ),
    pytest.param(
        [
            Withholding(A, ("jm-police",), 100),
            Withholding(B, ("gt-justice",), 130),
            Withholding(C, ("jm-police", "gt-justice"), 120),
        ],
        {A, B, C},
        [WithheldCount("gt-justice", 2, 120, 130), WithheldCount("jm-police", 2, 100, 120)],
        id="a-batch-of-three",
    ),
]


@pytest.mark.parametrize(("withheld", "recorded", "expected"), CASES)
def test_tally(
    withheld: list[Withholding], recorded: set[str], expected: list[WithheldCount]
) -> None:
    assert tally(withheld, recorded) == expected
