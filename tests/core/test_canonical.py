"""Canonical JSON, the strict parser and canonical base64 (B-01, B-03, B-04, B-10)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.canonical import MAX_DEPTH, b64d, b64e, canonical_json, strict_loads
from schemas.errors import EnvelopeError

LIMIT = 1 << 20


# --- canonical_json ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param({"b": 1, "a": 2}, b'{"a":2,"b":1}', id="keys-sorted"),
        pytest.param({"z": {"y": 1, "x": [3, 2]}}, b'{"z":{"x":[3,2],"y":1}}', id="nested-sorted"),
        pytest.param([1, True, False, None], b"[1,true,false,null]", id="no-spaces"),
        pytest.param({"t": "policía"}, '{"t":"policía"}'.encode(), id="utf8-not-escaped"),
        pytest.param({"t": "\u2028"}, '{"t":"\u2028"}'.encode(), id="line-separator-raw"),
        pytest.param({"t": 'a"b\\c\n'}, b'{"t":"a\\"b\\\\c\\n"}', id="escapes"),
        pytest.param({"t": "\x00"}, b'{"t":"\\u0000"}', id="control-escaped"),
        pytest.param((1, 2), b"[1,2]", id="tuple-as-list"),
        pytest.param(2**64, b"18446744073709551616", id="big-int"),
        pytest.param(-0, b"0", id="minus-zero-int"),
        pytest.param({}, b"{}", id="empty-object"),
        pytest.param("x", b'"x"', id="scalar"),
    ],
)
def test_canonical_json_encoding(value: Any, expected: bytes) -> None:
    assert canonical_json(value) == expected


def test_canonical_json_is_independent_of_insertion_order() -> None:
    a = {"labels": {"tlp": "RED", "topic": "migration"}, "id": 1}
    b = {"id": 1, "labels": {"topic": "migration", "tlp": "RED"}}
    assert canonical_json(a) == canonical_json(b)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(1.5, id="float"),
        pytest.param(1.0, id="integral-float"),
        pytest.param({"a": [1, {"b": 0.1}]}, id="nested-float"),
        pytest.param(float("nan"), id="nan"),
        pytest.param(float("inf"), id="infinity"),
        pytest.param({"a": "\ud800"}, id="lone-surrogate"),
        pytest.param({"\udfff": 1}, id="lone-surrogate-key"),
    ],
)
def test_canonical_json_refuses_values_without_canonical_form(value: Any) -> None:
    with pytest.raises(ValueError, match=r"float|surrogate"):
        canonical_json(value)


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def test_canonical_json_depth_limit() -> None:
    canonical_json(_nested(MAX_DEPTH))
    with pytest.raises(ValueError, match="nested"):
        canonical_json(_nested(MAX_DEPTH + 1))


# --- strict_loads: accepted ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(b'{"a":1,"b":[true,null,"x"]}', {"a": 1, "b": [True, None, "x"]}, id="basic"),
        pytest.param(b' { "a" : 1 } ', {"a": 1}, id="whitespace"),
        pytest.param('{"t":"policía"}'.encode(), {"t": "policía"}, id="utf8"),
        pytest.param(b'{"t":"polic\\u00eda"}', {"t": "policía"}, id="escaped-utf8"),
        pytest.param(b'{"t":"\\ud83d\\ude00"}', {"t": "\U0001f600"}, id="surrogate-pair"),
        pytest.param(b'{"t":"\\u0000"}', {"t": "\x00"}, id="escaped-nul-in-text"),
        pytest.param(b"-0", 0, id="minus-zero"),
        pytest.param(b"18446744073709551616", 2**64, id="big-int"),
        pytest.param(b"[]", [], id="empty-list"),
    ],
)
def test_strict_loads_accepts(raw: bytes, expected: Any) -> None:
    assert strict_loads(raw, max_bytes=LIMIT) == expected


def test_strict_loads_accepts_max_depth() -> None:
    raw = canonical_json(_nested(MAX_DEPTH))
    assert strict_loads(raw, max_bytes=LIMIT) == _nested(MAX_DEPTH)


def test_strict_loads_size_limit_is_inclusive() -> None:
    raw = b'"' + b"a" * 98 + b'"'
    assert len(raw) == 100
    assert strict_loads(raw, max_bytes=100) == "a" * 98
    with pytest.raises(EnvelopeError) as exc_info:
        strict_loads(raw + b" ", max_bytes=100)
    assert exc_info.value.code == "oversized"
    assert "101 bytes" in str(exc_info.value)


# --- strict_loads: hostile -----------------------------------------------------------------

HOSTILE: list[Any] = [
    # B-01: duplicate keys, at any depth, even with equal values.
    pytest.param(b'{"sender":"A","sender":"B"}', id="B-01-duplicate-key"),
    pytest.param(b'{"a":1,"a":1}', id="B-01-duplicate-same-value"),
    pytest.param(b'{"h":{"x":1,"y":2,"x":3}}', id="B-01-duplicate-nested"),
    pytest.param(b'[{"k":1},{"k":1,"k":2}]', id="B-01-duplicate-in-list"),
    pytest.param(b'{"a":1,"\\u0061":2}', id="B-01-duplicate-escaped"),
    # B-03: deep nesting, in every container shape.
    pytest.param(b"[" * 10_000 + b"]" * 10_000, id="B-03-lists-10000"),
    pytest.param(b'{"a":' * 10_000 + b"1" + b"}" * 10_000, id="B-03-objects-10000"),
    pytest.param(b"[" * 10_000, id="B-03-unterminated-10000"),
    pytest.param(b"[" * 500 + b"]" * 500, id="depth-500"),
    pytest.param(
        canonical_json(_nested(MAX_DEPTH))[:-MAX_DEPTH] + b"[0]" + b"]" * MAX_DEPTH,
        id="depth-max-plus-one",
    ),
    # B-04: invalid UTF-8, overlong encodings, surrogates, NUL.
    pytest.param(b'{"a":"\xff"}', id="B-04-invalid-byte"),
    pytest.param(b'{"a":"\xc3"}', id="B-04-truncated-sequence"),
    pytest.param(b'{"a":"\xc0\xaf"}', id="B-04-overlong-slash"),
    pytest.param(b'{"a":"\xc0\x80"}', id="B-04-overlong-nul"),
    pytest.param(b'{"a":"\xe0\x80\xaf"}', id="B-04-overlong-3-byte"),
    pytest.param(b'{"a":"\xf0\x80\x80\xaf"}', id="B-04-overlong-4-byte"),
    pytest.param(b'{"a":"\xed\xa0\x80"}', id="B-04-utf8-encoded-surrogate"),
    pytest.param(b'{"a":"\xf4\x90\x80\x80"}', id="B-04-above-U+10FFFF"),
    pytest.param(b'{"a":"\\ud800"}', id="B-04-escaped-lone-high-surrogate"),
    pytest.param(b'{"a":"\\udc00x"}', id="B-04-escaped-lone-low-surrogate"),
    pytest.param(b'{"\\ud800":1}', id="B-04-lone-surrogate-in-key"),
    pytest.param(b'{"id":"policia\x00pa"}', id="B-04-raw-nul-in-string"),
    pytest.param(b'{"id":"policia-pa"}\x00', id="B-04-trailing-nul"),
    pytest.param(b'\xef\xbb\xbf{"a":1}', id="utf8-bom"),
    pytest.param('{"a":1}'.encode("utf-16"), id="utf16"),
    # Numbers: floats in every spelling, non-finite constants, huge integers.
    pytest.param(b'{"n":1.0}', id="float"),
    pytest.param(b'{"n":1e3}', id="float-exponent"),
    pytest.param(b'{"n":-0.0}', id="float-negative-zero"),
    pytest.param(b'{"n":NaN}', id="nan"),
    pytest.param(b'{"n":Infinity}', id="infinity"),
    pytest.param(b'{"n":-Infinity}', id="minus-infinity"),
    pytest.param(b'{"n":' + b"9" * 5000 + b"}", id="5000-digit-int"),
    # Not JSON at all, or JSON with extras.
    pytest.param(b"", id="empty"),
    pytest.param(b'{"a":1} {"a":2}', id="two-documents"),
    pytest.param(b"{'a':1}", id="single-quotes"),
    pytest.param(b'{"a":1,}', id="trailing-comma"),
    pytest.param(b'{"a":"line\nbreak"}', id="raw-control-char"),
    pytest.param(b'{"a":01}', id="leading-zero"),
]


@pytest.mark.parametrize("raw", HOSTILE)
def test_strict_loads_rejects(raw: bytes) -> None:
    with pytest.raises(EnvelopeError) as exc_info:
        strict_loads(raw, max_bytes=LIMIT)
    assert exc_info.value.code == "malformed"
    assert type(exc_info.value) is EnvelopeError


def test_deep_nesting_is_envelope_error_not_recursion_error() -> None:
    # B-03: the error is ours, with the parser's own failure chained, never a RecursionError.
    raw = b"[" * 10_000 + b"]" * 10_000
    with pytest.raises(EnvelopeError) as exc_info:
        strict_loads(raw, max_bytes=LIMIT)
    assert not isinstance(exc_info.value, RecursionError)
    # Still works afterwards: the worker is alive and the stack is intact.
    assert strict_loads(b"[[1]]", max_bytes=LIMIT) == [[1]]


def test_oversize_is_checked_before_parsing() -> None:
    # B-02: far over the limit, and not even JSON: the size is what is reported.
    with pytest.raises(EnvelopeError) as exc_info:
        strict_loads(b"\xff" * 2048, max_bytes=1024)
    assert exc_info.value.code == "oversized"


def test_error_messages_do_not_echo_values() -> None:
    with pytest.raises(EnvelopeError) as exc_info:
        strict_loads(b'{"n":"secret-value","n":1}', max_bytes=LIMIT)
    assert "secret-value" not in str(exc_info.value)


# --- b64d / b64e ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"", b"A", b"AB", b"ABC", bytes(range(256)), b"\xfb\xff\xbf"],
    ids=["empty", "1", "2", "3", "all-bytes", "plus-slash"],
)
def test_b64_round_trip(data: bytes) -> None:
    text = b64e(data)
    assert text == base64.b64encode(data).decode()
    assert b64d(text, field="f", max_bytes=len(data)) == data


@pytest.mark.parametrize(
    ("text", "code"),
    [
        pytest.param("QQ", "malformed", id="B-10-missing-padding"),
        pytest.param("QQ=", "malformed", id="B-10-short-padding"),
        pytest.param("QQ===", "malformed", id="B-10-extra-padding"),
        pytest.param("QUI", "malformed", id="B-10-missing-padding-2"),
        pytest.param("=QQ=", "malformed", id="B-10-padding-first"),
        pytest.param("QQ==QQ==", "malformed", id="B-10-padding-inside"),
        pytest.param("QR==", "malformed", id="B-10-trailing-bits-1-byte"),
        pytest.param("QUJ=", "malformed", id="B-10-trailing-bits-2-bytes"),
        pytest.param("-_8=", "malformed", id="B-10-url-safe-alphabet"),
        pytest.param("+_8=", "malformed", id="B-10-mixed-alphabets"),
        pytest.param("QUJD\n", "malformed", id="B-10-newline"),
        pytest.param("QU JD", "malformed", id="B-10-space"),
        pytest.param(" QUJD", "malformed", id="B-10-leading-space"),
        pytest.param("QUJD\x00", "malformed", id="B-10-nul"),
        pytest.param("QUJ\u0414", "malformed", id="B-10-non-ascii"),
        pytest.param("QUJ\uff24", "malformed", id="B-10-fullwidth-letter"),
        pytest.param("QUJDQUJDQUJD", "oversized", id="longer-than-field"),
    ],
)
def test_b64d_refuses_non_canonical(text: str, code: str) -> None:
    with pytest.raises(EnvelopeError) as exc_info:
        b64d(text, field="wrap.enc", max_bytes=6)
    assert exc_info.value.code == code
    assert "wrap.enc" in str(exc_info.value)


# --- properties ----------------------------------------------------------------------------

# No example database: it would write .hypothesis/ into the working tree.
PROPERTY = settings(max_examples=300, deadline=None, database=None)

_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.text(max_size=20)
)
_json_values = st.recursive(
    _json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


@PROPERTY
@given(_json_values)
def test_parse_of_canonical_is_identity(value: Any) -> None:
    raw = canonical_json(value)
    parsed = strict_loads(raw, max_bytes=LIMIT)
    assert parsed == value
    assert canonical_json(parsed) == raw


@PROPERTY
@given(_json_values)
def test_canonical_ignores_formatting(value: Any) -> None:
    pretty = json.dumps(value, indent=3, ensure_ascii=True).encode()
    assert canonical_json(strict_loads(pretty, max_bytes=LIMIT)) == canonical_json(value)


@PROPERTY
@given(st.binary(max_size=200))
def test_strict_loads_never_raises_anything_else(raw: bytes) -> None:
    try:
        value = strict_loads(raw, max_bytes=LIMIT)
    except EnvelopeError:
        return
    canonical_json(value)  # whatever it accepts has a canonical form


@PROPERTY
@given(st.binary(max_size=64))
def test_b64_canonical_round_trip(data: bytes) -> None:
    assert b64d(b64e(data), field="f", max_bytes=64) == data


@PROPERTY
@given(
    st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_", max_size=24
    )
)
def test_b64d_accepts_only_its_own_encoding(text: str) -> None:
    try:
        data = b64d(text, field="f", max_bytes=64)
    except EnvelopeError:
        return
    assert b64e(data) == text
