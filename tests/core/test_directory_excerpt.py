"""Directory excerpts: signed by the pinned directory key; tampered, substituted and
hostile ones refused; a record's kid must match its key."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from schemas.canonical import b64e, canonical_json
from schemas.directory import (
    DirectoryExcerpt,
    EncryptionKeyRecord,
    SigningKeyRecord,
    open_excerpt,
    sign_excerpt,
)
from schemas.errors import EnvelopeError, SignatureError
from schemas.keys import SigningKey
from tests.core.envelope_kit import (
    DIRECTORY_KEY,
    NOW,
    R1,
    A,
    M,
    as_json,
    drop,
    put,
    record_of,
)

EXCERPT = DirectoryExcerpt(
    v=1,
    directory_version="00112233445566778899aabbccddeeff",
    issued_at=NOW,
    agencies=(record_of(A), record_of(R1, "X25519")),
)


def _excerpt_raw(key: SigningKey = DIRECTORY_KEY) -> bytes:
    return canonical_json(sign_excerpt(EXCERPT, key).model_dump(mode="json"))


def test_excerpt_round_trip() -> None:
    excerpt = open_excerpt(_excerpt_raw(), DIRECTORY_KEY.verify_key)
    assert excerpt == EXCERPT
    a, r1 = excerpt.agencies
    assert a.signing_keys[0].verify_key() == A.verify_key
    assert a.encryption_key is not None
    assert a.encryption_key.public_key() == A.pub("MLKEM768-X25519")
    assert r1.encryption_key is not None
    assert r1.encryption_key.public_key() == R1.pub("X25519")


def test_excerpt_with_wrong_pinned_key() -> None:
    with pytest.raises(SignatureError) as exc_info:
        open_excerpt(_excerpt_raw(), SigningKey.generate().verify_key)
    assert exc_info.value.code == "directory_untrusted"


def test_excerpt_signed_by_impostor_under_pinned_kid() -> None:
    d = json.loads(_excerpt_raw(SigningKey.generate()))
    d["kid"] = DIRECTORY_KEY.verify_key.kid
    with pytest.raises(SignatureError) as exc_info:
        open_excerpt(canonical_json(d), DIRECTORY_KEY.verify_key)
    assert exc_info.value.code == "signature_invalid"


def _swap_encryption_key(d: dict[str, Any]) -> None:
    # A man in the middle substitutes its own encryption key for R1's, kid and all.
    pub = M.pub("X25519")
    d["excerpt"]["agencies"][1]["encryption_key"].update(kid=pub.kid, public=b64e(pub.public))


def _swap_signing_key(d: dict[str, Any]) -> None:
    vk = M.verify_key
    d["excerpt"]["agencies"][0]["signing_keys"][0].update(kid=vk.kid, public=b64e(vk.public))


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(_swap_encryption_key, id="encryption-key-substituted"),
        pytest.param(_swap_signing_key, id="signing-key-substituted"),
        pytest.param(put(("excerpt", "agencies", 0, "status"), "suspended"), id="status"),
        pytest.param(put(("excerpt", "issued_at"), NOW + 1), id="issued-at"),
        pytest.param(drop(("excerpt", "agencies", 1)), id="agency-dropped"),
        pytest.param(
            put(("excerpt", "directory_version"), "ffffffffffffffff"), id="directory-version"
        ),
    ],
)
def test_tampered_excerpt(mutate: Callable[[dict[str, Any]], None]) -> None:
    d = json.loads(_excerpt_raw())
    mutate(d)
    with pytest.raises(SignatureError) as exc_info:
        open_excerpt(canonical_json(d), DIRECTORY_KEY.verify_key)
    assert exc_info.value.code == "signature_invalid"


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        pytest.param(put(("excerpt", "v"), 2), "unsupported_version", id="version"),
        pytest.param(put(("excerpt", "agencies", 0, "role"), "admin"), "malformed", id="extra"),
        pytest.param(put(("excerpt", "agencies", 0, "id"), "Policia-pa"), "malformed", id="id"),
        pytest.param(put(("excerpt", "agencies", 0, "sector"), "navy"), "malformed", id="sector"),
        pytest.param(put(("sig",), "QR=="), "malformed", id="sig-non-canonical-b64"),
    ],
)
def test_hostile_excerpt(mutate: Callable[[dict[str, Any]], None], code: str) -> None:
    d = json.loads(_excerpt_raw())
    mutate(d)
    with pytest.raises(EnvelopeError) as exc_info:
        open_excerpt(as_json(d), DIRECTORY_KEY.verify_key)
    assert exc_info.value.code == code


def test_directory_record_kid_must_match_its_key() -> None:
    pub = R1.pub("X25519")
    wrong = EncryptionKeyRecord(
        kid=M.pub("X25519").kid, kem="X25519", public=b64e(pub.public), created_at=NOW
    )
    with pytest.raises(SignatureError) as exc_info:
        wrong.public_key()
    assert exc_info.value.code == "bad_key"
    vk = R1.verify_key
    wrong_sig = SigningKeyRecord(kid=M.verify_key.kid, public=b64e(vk.public), created_at=NOW)
    with pytest.raises(SignatureError) as exc_info:
        wrong_sig.verify_key()
    assert exc_info.value.code == "bad_key"


def test_directory_record_with_small_order_key() -> None:
    weak = bytes.fromhex("01" + "00" * 30 + "80")
    record = SigningKeyRecord(kid="sig-" + "0" * 32, public=b64e(weak), created_at=NOW)
    with pytest.raises(EnvelopeError) as exc_info:
        record.verify_key()
    assert exc_info.value.code == "bad_key"
