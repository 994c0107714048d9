"""Receipts: signed, parsed and verified; tampered, forged and hostile ones refused."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from schemas.canonical import b64e, canonical_json
from schemas.errors import EnvelopeError, SignatureError
from schemas.ids import BulletinId
from schemas.keys import SigningKey
from schemas.receipt import Receipt, parse_receipt, sign_receipt, verify_receipt
from schemas.sealing import envelope_digest
from tests.core.envelope_kit import BASE, NOW, R1, R2, A, M, as_json, drop, put


def _receipt(key: SigningKey | None = None, **overrides: Any) -> Receipt:
    fields: dict[str, Any] = {
        "bulletin_id": BulletinId(BASE.header.bulletin_id),
        "originator": A.id,
        "recipient": R1.id,
        "envelope_digest": envelope_digest(BASE),
        "received_at": NOW + 5,
        "key": key or R1.sign,
    }
    fields.update(overrides)
    return sign_receipt(**fields)


def _receipt_raw(r: Receipt) -> bytes:
    return canonical_json(r.model_dump(mode="json"))


def test_receipt_round_trip() -> None:
    r = _receipt()
    parsed = parse_receipt(_receipt_raw(r))
    assert parsed == r
    assert parsed.kid == R1.verify_key.kid
    verify_receipt(parsed, R1.verify_key)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("bulletin_id", "11111111-2222-4333-8444-555555555555"),
        ("originator", M.id),
        ("recipient", R2.id),
        ("envelope_digest", "0" * 64),
        ("received_at", NOW + 6),
        ("sig", b64e(bytes(64))),
    ],
)
def test_tampered_receipt(field: str, value: Any) -> None:
    d = _receipt().model_dump(mode="json")
    d[field] = value
    r = parse_receipt(canonical_json(d))
    with pytest.raises(SignatureError) as exc_info:
        verify_receipt(r, R1.verify_key)
    assert exc_info.value.code == "signature_invalid"


def test_receipt_by_another_key() -> None:
    r = _receipt(key=R2.sign)  # R2 signs a receipt claiming to be R1's
    with pytest.raises(SignatureError) as exc_info:
        verify_receipt(r, R1.verify_key)
    assert exc_info.value.code == "key_not_bound_to_sender"
    forged = parse_receipt(
        _receipt_raw(r).replace(R2.verify_key.kid.encode(), R1.verify_key.kid.encode())
    )
    with pytest.raises(SignatureError) as exc_info:
        verify_receipt(forged, R1.verify_key)
    assert exc_info.value.code == "signature_invalid"


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("sig", "QR==", "malformed"),
        ("sig", b64e(bytes(63)), "signature_invalid"),
        ("sig", b64e(bytes(65)), "signature_invalid"),
        ("sig", "", "signature_invalid"),
    ],
)
def test_receipt_signature_encoding(field: str, value: str, code: str) -> None:
    d = _receipt().model_dump(mode="json")
    d[field] = value
    with pytest.raises(EnvelopeError) as exc_info:
        verify_receipt(parse_receipt(canonical_json(d)), R1.verify_key)
    assert exc_info.value.code == code


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        pytest.param(put(("received_at",), 2**63), "malformed", id="B-09-received-at"),
        pytest.param(put(("received_at",), -1), "malformed", id="negative"),
        pytest.param(put(("v",), 2), "unsupported_version", id="B-05-version"),
        pytest.param(put(("recipient",), "POLICIA-CR"), "malformed", id="B-06-recipient"),
        pytest.param(put(("envelope_digest",), "A" * 64), "malformed", id="digest-upper"),
        pytest.param(put(("note",), "x"), "malformed", id="extra-field"),
        pytest.param(drop(("kid",)), "malformed", id="missing-kid"),
        pytest.param(put(("note",), "x" * 5000), "oversized", id="oversized"),
    ],
)
def test_hostile_receipts(mutate: Callable[[dict[str, Any]], None], code: str) -> None:
    d = _receipt().model_dump(mode="json")
    mutate(d)
    with pytest.raises(EnvelopeError) as exc_info:
        parse_receipt(as_json(d))
    assert exc_info.value.code == code
