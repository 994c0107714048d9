"""The relay's one-pass encodings (``envelope_bytes``, ``canonical_members``) equal the
definitions they replace on its path: ``canonical_json`` of the object, the signing input
of ``_signed_bytes`` and ``encode_envelope``/``envelope_digest``, on every envelope of
the spec's vectors and on parseable envelopes that are not canonical."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.canonical import (
    MAX_DEPTH,
    _check_value,
    canonical_json,
    canonical_members,
    join_members,
)
from schemas.envelope import Envelope
from schemas.errors import SignatureError
from schemas.sealing import (
    _dump,
    _signed_bytes,
    encode_envelope,
    envelope_bytes,
    envelope_digest,
    parse_envelope,
    verify_envelope,
)
from schemas.spec_keys import signing_key

VECTORS = Path(__file__).resolve().parents[2] / "docs" / "spec" / "vectors"
CASES = json.loads((VECTORS / "envelopes.json").read_text())["cases"]
ENCODE = json.loads((VECTORS / "canonical.json").read_text())["encode"]
PROPERTY = settings(max_examples=300, deadline=None, database=None)


def slow(env: Envelope) -> tuple[bytes, bytes, str]:
    """The definitions: signing input, canonical envelope, digest."""
    signed = _signed_bytes(env.header, env.body, env.wraps, env.groups)
    return signed, canonical_json(_dump(env)), envelope_digest(env)


def check_equal(env: Envelope) -> None:
    fast = envelope_bytes(env)
    signed, encoded, digest = slow(env)
    assert fast.signed == signed
    assert fast.encoded == encoded == encode_envelope(env)
    assert fast.digest == digest


# --------------------------------------------------------------------- members


def members_or_error(value: dict[str, Any]) -> bytes | str:
    try:
        return join_members(canonical_members(value))
    except ValueError as exc:
        return f"ValueError: {exc}"


def canonical_or_error(value: dict[str, Any]) -> bytes | str:
    try:
        return canonical_json(value)
    except ValueError as exc:
        return f"ValueError: {exc}"


def nested(depth: int) -> dict[str, Any]:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return {"a": value}


OBJECTS: list[tuple[str, dict[str, Any]]] = [
    ("empty", {}),
    ("keys out of order", {"b": 1, "a": 2, "": 3, "B": 4}),
    ("non-ASCII keys and values", {"é": "ü", "😀": ["\uffff"], "z": {"ñ": None}}),
    ("escapes", {"q": '"\\\n\t\x00\x1f\u2028', "k\n": True}),
    ("big and negative integers", {"n": -(2**70), "p": 2**70, "b": False}),
    ("deepest allowed", nested(MAX_DEPTH - 1)),
    ("one level too deep", nested(MAX_DEPTH)),
    ("float", {"a": 1, "f": 1.5}),
    ("lone surrogate value", {"s": "\ud800"}),
    ("lone surrogate key", {"\udfff": 1}),
    ("surrogate before a float", {"a": "\ud800", "b": 0.5}),
]


@pytest.mark.parametrize(("name", "value"), OBJECTS, ids=[o[0] for o in OBJECTS])
def test_members_joined_are_the_canonical_object_or_the_same_refusal(
    name: str, value: dict[str, Any]
) -> None:
    assert members_or_error(value) == canonical_or_error(value)


@pytest.mark.parametrize("case", ENCODE, ids=range(len(ENCODE)))
def test_members_joined_match_the_spec_vectors(case: dict[str, Any]) -> None:
    if isinstance(case["value"], dict):
        assert join_members(canonical_members(case["value"])) == case["canonical"].encode()


_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=20)
_values = st.recursive(
    _scalars,
    lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=10), c, max_size=5),
    max_leaves=30,
)


@PROPERTY
@given(st.dictionaries(st.text(max_size=10), _values, max_size=8))
def test_members_joined_are_the_canonical_object(value: dict[str, Any]) -> None:
    assert members_or_error(value) == canonical_or_error(value)


# ------------------------------------------------------------------- envelopes


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_envelope_bytes_match_the_spec_vectors(case: dict[str, Any]) -> None:
    raw = case["envelope"].encode()
    env = parse_envelope(raw)
    fast = envelope_bytes(env)
    assert fast.signed == b"istmo/v1/envelope\x00" + case["signed_json"].encode()
    assert hashlib.sha256(fast.signed).hexdigest() == case["signing_input_sha256"]
    assert fast.encoded == raw
    assert fast.digest == case["envelope_sha256"]
    check_equal(env)
    # verify_envelope hands back the encodings it verified.
    key = signing_key(case["originator"]).verify_key
    assert verify_envelope(env, key) == fast


def _reformatted(raw: str) -> str:
    """Same value, other bytes: keys reversed, white space, ASCII escaped."""

    def flip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: flip(value[k]) for k in reversed(list(value))}
        if isinstance(value, list):
            return [flip(v) for v in value]
        return value

    return json.dumps(flip(json.loads(raw)), indent=2, ensure_ascii=True)


def _escaped_letters(raw: str) -> str:
    """``\\u0064`` for every ``d`` inside strings (all of them are inside strings)."""
    return raw.replace("d", "\\u0064")


def _defaults_left_out(raw: str) -> str:
    """The labels' defaults omitted: the model fills them in, and they are signed."""
    value = json.loads(raw)
    labels = value["header"]["labels"]
    for name, default in (("handling", []), ("named", []), ("judicial_consent", [])):
        if labels.get(name) == default:
            del labels[name]
    return json.dumps(value)


def _nulls_spelled_out(raw: str) -> str:
    """Absent optional header fields as explicit nulls: the dump leaves them out."""
    value = json.loads(raw)
    for name in ("not_before", "expires_at", "supersedes"):
        value["header"].setdefault(name, None)
    return json.dumps(value)


def _non_ascii_note(raw: str) -> str:
    """A handling note with text outside ASCII, written as escapes (changes the
    signed value: the signature no longer verifies, the encodings must still agree)."""
    value = json.loads(raw)
    value["header"]["labels"]["handling_note"] = "Sólo para 😀 uso\u2028interno"
    return json.dumps(value, ensure_ascii=True)


HOSTILE = [
    ("reformatted", _reformatted, True),
    ("escaped letters", _escaped_letters, True),
    ("defaults left out", _defaults_left_out, True),
    ("nulls spelled out", _nulls_spelled_out, True),
    ("non-ASCII note", _non_ascii_note, False),
]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
@pytest.mark.parametrize(("name", "change", "verifies"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_envelope_bytes_of_non_canonical_input_are_the_re_encoding(
    case: dict[str, Any], name: str, change: Any, verifies: bool
) -> None:
    raw = change(case["envelope"]).encode()
    env = parse_envelope(raw)
    check_equal(env)
    fast = envelope_bytes(env)
    # Never the received bytes: the digest is of the canonical re-encoding, as before.
    assert fast.encoded != raw
    key = signing_key(case["originator"]).verify_key
    if verifies:
        assert fast.digest == case["envelope_sha256"]
        verify_envelope(env, key)
    else:
        assert fast.digest != case["envelope_sha256"]
        with pytest.raises(SignatureError):
            verify_envelope(env, key)


def test_an_envelope_with_a_lone_surrogate_is_refused_as_before() -> None:
    # The envelope's encodings skip the float and depth walk (the model holds neither);
    # text without a UTF-8 encoding is still the same ValueError, not an encoding error.
    env = parse_envelope(CASES[0]["envelope"].encode())
    labels = env.header.labels.model_copy(update={"handling_note": "tr\ud800ap"})
    bad = env.model_copy(update={"header": env.header.model_copy(update={"labels": labels})})
    with pytest.raises(ValueError, match="lone surrogate") as fast:
        envelope_bytes(bad)
    assert type(fast.value) is ValueError
    with pytest.raises(ValueError, match="lone surrogate"):
        encode_envelope(bad)


# ------------------------------------------------------------ the check walk


def reference_check(value: Any, depth: int) -> None:
    """The check walk as it was before its leaves were inlined: one call per value."""
    if depth > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, float):
        raise ValueError("floats have no canonical form here; use integers")
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError("text holds a lone surrogate") from exc
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str):
                reference_check(k, 0)
            reference_check(v, depth + 1)
    elif isinstance(value, list | tuple):
        for v in value:
            reference_check(v, depth + 1)


def outcome(check: Any, value: Any) -> str:
    try:
        check(value, 0)
    except ValueError as exc:
        return str(exc)
    return "ok"


class Text(str):
    pass


class Number(int):
    pass


_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=6)
    | st.sampled_from(["\ud800", "é\udfff", Text("sub"), Text("\ud800"), Number(3)])
)
_any = st.recursive(
    _leaves,
    lambda c: (
        st.lists(c, max_size=4)
        | st.lists(c, max_size=3).map(tuple)
        | st.dictionaries(st.text(max_size=4) | st.just("\ud800"), c, max_size=4)
    ),
    max_leaves=40,
)


@PROPERTY
@given(_any, st.integers(0, MAX_DEPTH + 1))
def test_the_check_walk_refuses_exactly_what_it_did(value: Any, wrap: int) -> None:
    for _ in range(wrap):  # near the depth limit too
        value = [value]
    assert outcome(_check_value, value) == outcome(reference_check, value)
