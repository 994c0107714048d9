"""A partner link's signed daily counts (ADR 32): counting per label set, each bulletin
once; the signature covering every field; and every way two sides' counts can differ."""

from __future__ import annotations

import json
from typing import Any

import pytest

from schemas.errors import EnvelopeError, SignatureError
from schemas.federation import (
    LabelSet,
    LinkCounts,
    count_labels,
    day_of,
    differences,
    encode_counts,
    parse_counts,
    sign_counts,
    verify_counts,
)
from schemas.keys import SigningKey

KEY = SigningKey.generate()
GREEN: LabelSet = ("drug-trafficking", "RESTRICTED", "GREEN", ("H0",))
AMBER: LabelSet = ("migration", "UNCLASSIFIED", "AMBER", ())


def bid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def counts_of(*items: tuple[str, LabelSet], side: str = "sent", day: str = "2026-12-05",
              link: str = "eu-siena") -> LinkCounts:  # fmt: skip
    return sign_counts(
        link=link, side=side, region="istmo", day=day,  # type: ignore[arg-type]
        counts=count_labels(items), issued_at=1_796_000_000, key=KEY,
    )  # fmt: skip


def test_each_bulletin_counts_once_per_label_set_sorted() -> None:
    counted = count_labels([(bid(2), GREEN), (bid(1), AMBER), (bid(2), GREEN), (bid(3), GREEN)])
    assert [(c.label_set, c.n) for c in counted] == [(GREEN, 2), (AMBER, 1)]
    assert count_labels([]) == ()
    # Handling codes in any order are one label set.
    again = count_labels([(bid(1), ("migration", "UNCLASSIFIED", "AMBER", ("H1", "H0")))])
    assert again[0].handling == ("H0", "H1")


@pytest.mark.parametrize(
    ("items", "needle"),
    [
        ([("not-an-id", GREEN)], "malformed"),
        ([(bid(1), GREEN), (bid(1), AMBER)], "two label sets"),
        ([(bid(1), ("weather", "RESTRICTED", "GREEN", ()))], "not a known value"),
        ([(bid(1), ("migration", "TOP SECRET", "GREEN", ()))], "not a known value"),
        ([(bid(1), ("migration", "RESTRICTED", "WHITE", ()))], "not a known value"),
        ([(bid(1), ("migration", "RESTRICTED", "GREEN", ("H9",)))], "not a known value"),
    ],
)
def test_counting_refuses(items: list[tuple[str, LabelSet]], needle: str) -> None:
    with pytest.raises(EnvelopeError, match=needle):
        count_labels(items)


def test_signed_counts_round_trip_and_verify() -> None:
    c = counts_of((bid(1), GREEN), (bid(2), AMBER))
    assert c.total == 2
    back = parse_counts(encode_counts(c))
    assert back == c
    verify_counts(back, KEY.verify_key)
    with pytest.raises(SignatureError):
        verify_counts(back, SigningKey.generate().verify_key)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("link",), "eu-other"),
        (("side",), "received"),
        (("region",), "elsewhere"),
        (("day",), "2026-12-06"),
        (("issued_at",), 1),
        (("counts", 0, "n"), 2),
        (("counts", 0, "ids"), "0" * 64),
        (("counts", 0, "tlp"), "CLEAR"),
        (("counts", 0, "classification"), "UNCLASSIFIED"),
    ],
)
def test_any_field_changed_after_signing_fails(path: tuple[Any, ...], value: Any) -> None:
    d = json.loads(encode_counts(counts_of((bid(1), GREEN), (bid(2), AMBER))))
    target = d
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    if path[-1] == "n":
        d["total"] += 1  # still adds up: only the signature can tell
    c = parse_counts(json.dumps(d).encode())
    with pytest.raises(SignatureError):
        verify_counts(c, KEY.verify_key)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d.update(total=d["total"] + 1), "add up"),
        (lambda d: d["counts"].reverse(), "sorted"),
        (lambda d: d["counts"].append(dict(d["counts"][0])), "sorted"),
        (lambda d: d.update(extra=1), "extra"),
        (lambda d: d.update(day="2026-13-01"), "day"),
        (lambda d: d["counts"][0].update(n=0), "n"),
    ],
)
def test_inconsistent_or_malformed_counts_are_refused(mutate: Any, needle: str) -> None:
    d = json.loads(encode_counts(counts_of((bid(1), GREEN), (bid(2), AMBER))))
    mutate(d)
    with pytest.raises(EnvelopeError, match=needle):
        verify_counts(parse_counts(json.dumps(d).encode()), KEY.verify_key)


def test_differences_name_every_kind() -> None:
    sent = counts_of((bid(1), GREEN), (bid(2), GREEN), (bid(3), AMBER))
    same = counts_of((bid(3), AMBER), (bid(2), GREEN), (bid(1), GREEN), side="received")
    assert differences(sent, same) == []
    dropped = counts_of((bid(1), GREEN), (bid(3), AMBER), side="received")
    assert differences(sent, dropped) == [
        "drug-trafficking/RESTRICTED/GREEN/H0: sent 2, received 1 (dropped)"
    ]
    lost = counts_of((bid(1), GREEN), (bid(2), GREEN), side="received")
    assert differences(sent, lost) == [
        "migration/UNCLASSIFIED/AMBER/-: sent 1, none received (dropped)"
    ]
    swapped = counts_of((bid(1), GREEN), (bid(9), GREEN), (bid(3), AMBER), side="received")
    assert differences(sent, swapped) == [
        "drug-trafficking/RESTRICTED/GREEN/H0: 2 each, but not the same bulletins"
    ]
    widened = counts_of((bid(1), GREEN), (bid(2), GREEN), (bid(3), AMBER), (bid(4), AMBER),
                        side="received")  # fmt: skip
    assert differences(sent, widened) == [
        "migration/UNCLASSIFIED/AMBER/-: sent 1, received 2 (widened)"
    ]
    elsewhere = counts_of((bid(1), GREEN), (bid(2), GREEN), (bid(3), AMBER), side="received",
                          day="2026-12-06", link="eu-other")  # fmt: skip
    assert differences(sent, elsewhere) == [
        "links differ: eu-siena and eu-other",
        "days differ: 2026-12-05 and 2026-12-06",
    ]
    assert differences(sent, sent) == ["sides are sent and sent, not sent and received"]


def test_the_day_is_utc() -> None:
    assert day_of(1_796_083_199) == "2026-11-30"
    assert day_of(1_796_083_200) == "2026-12-01"
