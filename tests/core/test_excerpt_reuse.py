"""Signed directory excerpts built from each record's bytes, encoded once per directory
view (``schemas.directory.sign_excerpt_of``), are the excerpts ``sign_excerpt`` signs,
byte for byte; and which answers repeat a kept excerpt (``broker.directory.excerpts``):
the same agencies, signed at most ``EXCERPT_REUSE_S`` earlier, never later."""

from __future__ import annotations

import itertools

import pytest

from broker.directory.excerpts import _KEPT, EXCERPT_REUSE_S, Excerpts
from schemas.canonical import b64e, canonical_json
from schemas.directory import (
    DirectoryExcerpt,
    SigningKeyRecord,
    open_excerpt,
    record_bytes,
    sign_excerpt,
    sign_excerpt_of,
)
from tests.core.envelope_kit import DIRECTORY_KEY, NOW, R1, R2, R3, A, C, record_of

VERSION = "0000000000000007" + "ab" * 16


RECORDS = {
    r.id: r
    for r in (
        record_of(A),
        record_of(R1, "X25519"),
        record_of(R2, name='Ejército "GT" \\ 🚤', state=None, communities=()),
        record_of(R3, status="suspended", encryption_key=None),
        record_of(
            C,
            signing_keys=(
                SigningKeyRecord(
                    kid=C.verify_key.kid,
                    public=b64e(C.verify_key.public),
                    created_at=NOW - 9,
                    revoked_at=NOW - 1,
                ),
            ),
        ),
    )
}
ENCODED = {a: record_bytes(r) for a, r in RECORDS.items()}


@pytest.mark.parametrize(
    "ids",
    [
        pytest.param((), id="none"),
        pytest.param((A.id,), id="one"),
        pytest.param(tuple(sorted(RECORDS)), id="all"),
        pytest.param((R2.id, R3.id), id="odd-name-no-key"),
        pytest.param((C.id,), id="revoked-signing-key"),
    ],
)
def test_an_excerpt_from_encoded_records_is_the_one_sign_excerpt_signs(
    ids: tuple[str, ...],
) -> None:
    records = [RECORDS[a] for a in ids]
    signed, raw = sign_excerpt_of(VERSION, NOW, records, [ENCODED[a] for a in ids], DIRECTORY_KEY)
    excerpt = DirectoryExcerpt(
        v=1, directory_version=VERSION, issued_at=NOW, agencies=tuple(records)
    )
    expected = sign_excerpt(excerpt, DIRECTORY_KEY)
    assert signed == expected
    assert raw == canonical_json(expected.model_dump(mode="json"))
    assert open_excerpt(raw, DIRECTORY_KEY.verify_key) == excerpt


def test_encodings_that_do_not_pair_with_the_records_are_refused() -> None:
    with pytest.raises(ValueError, match="one encoding a record"):
        sign_excerpt_of(VERSION, NOW, [RECORDS[A.id]], [], DIRECTORY_KEY)


def _excerpts() -> Excerpts:
    return Excerpts(VERSION, RECORDS, ENCODED, DIRECTORY_KEY)


ASKED = [R1.id, A.id]


@pytest.mark.parametrize(
    ("again", "then_at", "reused"),
    [
        pytest.param(ASKED, NOW, True, id="same-second"),
        pytest.param(ASKED, NOW + EXCERPT_REUSE_S, True, id="at-the-limit"),
        pytest.param(ASKED, NOW + EXCERPT_REUSE_S + 1, False, id="past-the-limit"),
        pytest.param(ASKED, NOW - 1, False, id="signed-after-now"),
        pytest.param([A.id, R1.id, R1.id, "x-unknown"], NOW + 1, True, id="same-agencies"),
        pytest.param([A.id], NOW, False, id="fewer-agencies"),
        pytest.param([A.id, R1.id, R2.id], NOW, False, id="more-agencies"),
    ],
)
def test_which_answers_repeat_a_kept_excerpt(again: list[str], then_at: int, reused: bool) -> None:
    excerpts = _excerpts()
    first = excerpts.answer(ASKED, NOW)
    second = excerpts.answer(again, then_at)
    assert (second is first) is reused
    if not reused:
        assert second.signed.excerpt.issued_at == then_at
    listed = sorted({a for a in again if a in RECORDS})
    assert [r.id for r in second.signed.excerpt.agencies] == listed
    assert second.raw == canonical_json(second.signed.model_dump(mode="json"))


def test_a_fresh_excerpt_is_signed_as_of_now_every_time() -> None:
    excerpts = _excerpts()
    kept = excerpts.answer(ASKED, NOW)
    fresh = excerpts.sign(ASKED, NOW + 1)
    assert fresh.signed.excerpt.issued_at == NOW + 1
    assert excerpts.sign(ASKED, NOW) is not kept
    assert excerpts.answer(ASKED, NOW + 1) is kept  # sign() keeps nothing


def test_only_a_kept_answer_has_its_bytes_given_back() -> None:
    excerpts = _excerpts()
    kept = excerpts.answer(ASKED, NOW)
    assert excerpts.encoded(kept.signed) is kept.raw
    assert excerpts.encoded(excerpts.sign(ASKED, NOW).signed) is None  # equal, not it
    assert excerpts.encoded(kept.signed.model_copy()) is None


def test_a_kept_answer_is_let_go_when_replaced_or_pushed_out() -> None:
    excerpts = _excerpts()
    kept = excerpts.answer(ASKED, NOW)
    newer = excerpts.answer(ASKED, NOW + EXCERPT_REUSE_S + 1)
    assert excerpts.encoded(kept.signed) is None
    assert excerpts.encoded(newer.signed) is newer.raw
    others = [
        ids
        for n in (1, 2)
        for ids in itertools.combinations(sorted(RECORDS), n)
        if list(ids) != sorted(ASKED)
    ]
    for ids in others[: _KEPT - 1]:
        excerpts.answer(ids, NOW)
    assert excerpts.encoded(newer.signed) is newer.raw  # still among the newest _KEPT
    excerpts.answer(others[_KEPT - 1], NOW)
    assert excerpts.encoded(newer.signed) is None
