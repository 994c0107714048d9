"""The relay's clock window for a bulletin a gate stamped (ADR 0034), as a table.

``check_window`` judges ``created_at`` against when a gate first stored the bulletin (its
``Istmo-Gated-At`` stamp), never later than when the hub stored it, and refuses a stamp
that waited longer than ``max_queue_age_s`` before the hub stored it. No stamp: the check
before ADR 0034, against the hub's store time. ``gated_at_of`` reads the header strictly.
"""

from __future__ import annotations

import pytest

from broker.config import Settings
from broker.relay.checks import IngestLimits, check_window
from schemas.errors import ConfigError, EnvelopeError
from schemas.subjects import gated_at_of

SKEW = 120
QUEUE = 7 * 86400
LIMITS = IngestLimits(max_envelope_bytes=64 * 1024, max_clock_skew_s=SKEW, max_queue_age_s=QUEUE)
STORED = 1_780_000_000  # when the hub's JetStream stored it
HOUR = 3600

# name, created_at, gated_at (None: no stamp), the time judged by or the refusal's code
CASES: list[tuple[str, int, int | None, int | str]] = [
    ("fresh, stamped on the hub", STORED - 1, STORED, STORED),
    ("fresh, no stamp", STORED - 1, None, STORED),
    ("created at the edge of the window", STORED - SKEW, STORED, STORED),
    ("skewed behind", STORED - SKEW - 1, STORED, "timestamp_out_of_window"),
    ("skewed ahead", STORED + SKEW + 1, STORED, "timestamp_out_of_window"),
    ("skewed behind, no stamp", STORED - SKEW - 1, None, "timestamp_out_of_window"),
    # The known gap closed: an hour on a cut-off node, fresh when its gate stored it.
    ("queued an hour, fresh at the gate", STORED - HOUR - 5, STORED - HOUR, STORED - HOUR),
    ("queued an hour, no stamp", STORED - HOUR - 5, None, "timestamp_out_of_window"),
    (
        "queued an hour, skewed at the gate",
        STORED - 2 * HOUR,
        STORED - HOUR,
        "timestamp_out_of_window",
    ),
    ("queued a week to the second", STORED - QUEUE, STORED - QUEUE, STORED - QUEUE),
    ("gate stamp too old", STORED - QUEUE - 1, STORED - QUEUE - 1, "queued_too_long"),
    ("gate stamp too old, created now", STORED, STORED - QUEUE - 1, "queued_too_long"),
    # A stamp after the hub's store is a clock ahead: it cannot move the window forwards.
    ("stamp in the future", STORED + HOUR, STORED + HOUR, "timestamp_out_of_window"),
    ("stamp in the future, fresh by the hub", STORED + 5, STORED + HOUR, STORED),
    ("stamp of zero", STORED, 0, "queued_too_long"),
]


@pytest.mark.parametrize(
    ("created_at", "gated_at", "outcome"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_the_window_of_a_stamped_bulletin(
    created_at: int, gated_at: int | None, outcome: int | str
) -> None:
    if isinstance(outcome, str):
        with pytest.raises(EnvelopeError) as caught:
            check_window(created_at, stored_at=STORED, gated_at=gated_at, limits=LIMITS)
        assert caught.value.code == outcome
    else:
        judged = check_window(created_at, stored_at=STORED, gated_at=gated_at, limits=LIMITS)
        assert judged == outcome


def test_the_refusals_say_what_happened() -> None:
    with pytest.raises(EnvelopeError, match=r"held 604801 s .* \(allowed 604800 s\)"):
        check_window(STORED, stored_at=STORED, gated_at=STORED - QUEUE - 1, limits=LIMITS)
    with pytest.raises(EnvelopeError, match=r"created_at is 121 s behind"):
        check_window(STORED - 121, stored_at=STORED, gated_at=None, limits=LIMITS)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("1780000000123", 1_780_000_000),
        ("0", 0),
        ("999999999999999", 999_999_999_999),
        (None, None),
        ("", None),
        ("-1780000000000", None),
        ("+1780000000000", None),
        ("1780000000000.5", None),
        (" 1780000000000", None),
        ("1780000000000\n", None),
        ("1_780_000_000_000", None),
        ("١٧٨٠٠٠٠٠٠٠٠٠٠", None),  # digits int() reads, not ASCII ones
        ("1" * 16, None),  # bounded before int()
        ("9" * 5000, None),
    ],
)
def test_the_stamp_is_read_strictly(header: str | None, seconds: int | None) -> None:
    assert gated_at_of(header) == seconds


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, 7 * 86400),
        ({"ISTMO_MAX_QUEUE_AGE_S": "3600"}, 3600),
        ({"ISTMO_MAX_QUEUE_AGE_S": "120"}, 120),  # no longer than the clock window
        ({"ISTMO_MAX_QUEUE_AGE_S": "119"}, r"between ISTMO_MAX_CLOCK_SKEW_S \(120 s\) and"),
        ({"ISTMO_MAX_QUEUE_AGE_S": "0"}, "between ISTMO_MAX_CLOCK_SKEW_S"),
        ({"ISTMO_MAX_QUEUE_AGE_S": "5", "ISTMO_MAX_CLOCK_SKEW_S": "3"}, 5),
        ({"ISTMO_MAX_QUEUE_AGE_S": str(366 * 86400)}, "and 365 days"),
        ({"ISTMO_MAX_QUEUE_AGE_S": "a week"}, "must be an integer"),
    ],
)
def test_the_queue_limit_is_a_setting(env: dict[str, str], expected: int | str) -> None:
    if isinstance(expected, str):
        with pytest.raises(ConfigError, match=expected):
            Settings.from_env(env)
    else:
        assert Settings.from_env(env).max_queue_age_s == expected
