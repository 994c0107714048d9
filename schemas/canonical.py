"""Canonical JSON bytes and a strict parser.

Everything that is signed or hashed is the canonical encoding of a typed value: UTF-8 JSON
with sorted keys, no insignificant white space, no floats, no NaN. Parsing is strict: no
duplicate keys, bounded size, deep nesting refused, valid UTF-8 only, so the parsed view of a
message
and the signed view cannot differ. Base64 fields use the standard alphabet with padding and
must round-trip exactly.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from schemas.errors import EnvelopeError

__all__ = [
    "MAX_DEPTH",
    "b64d",
    "b64e",
    "canonical_json",
    "canonical_members",
    "join_members",
    "model_members",
    "strict_loads",
]

MAX_DEPTH = 16


def canonical_json(value: Any) -> bytes:
    """Encode ``value`` (dicts, lists, str, int, bool, None) as canonical JSON bytes."""
    _check_value(value, 0)
    return _dumps(value)


def canonical_members(value: dict[str, Any]) -> dict[str, bytes]:
    """The canonical encoding of each member of the object ``value``, by name: one pass
    gives both a whole object (``join_members``) and parts of it that are signed or
    hashed on their own.

    Checks exactly what ``canonical_json(value)`` checks, in the same order (each name,
    then its value one level down), and raises the same ValueError; names must be text.
    """
    out: dict[str, bytes] = {}
    for k, v in value.items():
        if not isinstance(k, str):
            raise ValueError("member names must be text")
        _check_text(k)
        _check_value(v, 1)
        out[k] = _dumps(v)
    return out


def model_members(dump: dict[str, Any]) -> dict[str, bytes]:
    """``canonical_members`` of a strict model's JSON dump (``model_dump(mode="json")``)
    whose fields hold only text, integers, booleans, None and nested such models and
    tuples (the envelope's): no float and no free-form value can be in it, and its depth
    is the model's. So the walk that looks for them is left out (on the relay, a twentieth
    of its work); text with a lone surrogate still raises the same ValueError."""
    try:
        return {k: _dumps(v) for k, v in dump.items()}
    except UnicodeEncodeError as exc:
        raise ValueError("text holds a lone surrogate") from exc


def join_members(members: Mapping[str, bytes]) -> bytes:
    """The canonical object whose members' encodings are ``members`` (from
    ``canonical_members``): ``canonical_json`` of the object, without encoding it again."""
    pieces = [b"{"]
    for n, k in enumerate(sorted(members)):
        pieces += (b"," if n else b"", _dumps(k), b":", members[k])
    pieces.append(b"}")
    return b"".join(pieces)  # each member's bytes copied once: some are megabytes


def _dumps(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _check_value(value: Any, depth: int) -> None:
    """Raise ValueError unless ``value`` has a canonical encoding.

    ``strict_loads`` runs the same walk on what it parsed, so anything it accepts can be
    re-encoded, and the two cannot disagree on depth or text.
    """
    if depth > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, float):
        raise ValueError("floats have no canonical form here; use integers")
    if isinstance(value, str):
        _check_text(value)
        return
    # A member that is exactly a str, int, bool or None within the depth limit is checked
    # here rather than by a call of its own (most of an envelope's values are): the same
    # checks as the call would make, a third of the walk's time. Anything else recurses.
    deeper = depth + 1
    leaves_ok = deeper <= MAX_DEPTH
    if isinstance(value, dict):
        for k, v in value.items():
            if type(k) is not str or not k.isascii():
                if isinstance(k, str):
                    _check_text(k)
            kind = type(v)
            if leaves_ok and kind is str:
                if not v.isascii():
                    _check_text(v)
            elif not (leaves_ok and (kind is int or kind is bool or v is None)):
                _check_value(v, deeper)
    elif isinstance(value, list | tuple):
        for v in value:
            kind = type(v)
            if leaves_ok and kind is str:
                if not v.isascii():
                    _check_text(v)
            elif not (leaves_ok and (kind is int or kind is bool or v is None)):
                _check_value(v, deeper)


def _check_text(text: str) -> None:
    # JSON's "\ud800" escapes decode to lone surrogates, which have no UTF-8 encoding.
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError("text holds a lone surrogate") from exc


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise EnvelopeError(f"duplicate key {key[:40]!r}", code="malformed")
        out[key] = value
    return out


def _no_float(text: str) -> int:
    raise EnvelopeError("numbers must be integers", code="malformed")


def _no_constant(text: str) -> Any:
    raise EnvelopeError(f"{text} is not allowed", code="malformed")


def strict_loads(raw: bytes, *, max_bytes: int) -> Any:
    """Parse ``raw`` as strict JSON.

    Raises:
        EnvelopeError: oversized, not UTF-8, not JSON, duplicate keys, floats, NaN, lone
            surrogate escapes, or nested deeper than ``MAX_DEPTH`` (never a RecursionError).
    """
    if len(raw) > max_bytes:
        raise EnvelopeError(
            f"message is {len(raw)} bytes, over the limit of {max_bytes}", code="oversized"
        )
    try:
        text = raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise EnvelopeError("message is not valid UTF-8", code="malformed") from exc
    if "\x00" in text:
        raise EnvelopeError("message contains a NUL character", code="malformed")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_float=_no_float,
            parse_constant=_no_constant,
        )
    except EnvelopeError:
        raise
    except (ValueError, RecursionError) as exc:
        raise EnvelopeError("message is not valid JSON", code="malformed") from exc
    try:
        _check_value(value, 0)
    except ValueError as exc:
        raise EnvelopeError(f"message is not canonical JSON: {exc}", code="malformed") from exc
    return value


def b64e(data: bytes) -> str:
    """Standard base64 with padding."""
    return base64.b64encode(data).decode("ascii")


def b64d(text: str, *, field: str, max_bytes: int) -> bytes:
    """Decode canonical standard base64, or raise EnvelopeError naming ``field``."""
    if len(text) > (max_bytes + 2) // 3 * 4:
        raise EnvelopeError(f"{field} is longer than {max_bytes} bytes", code="oversized")
    try:
        # binascii itself, not the base64 module's wrappers: the relay decodes about
        # ten fields a bulletin. A str outside ASCII is a ValueError.
        data = binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise EnvelopeError(f"{field} is not valid base64", code="malformed") from exc
    if binascii.b2a_base64(data, newline=False) != text.encode("ascii"):
        raise EnvelopeError(f"{field} is not canonical base64", code="malformed")
    return data
