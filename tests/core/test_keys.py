"""Keys (B-14): small-order, non-canonical and wrong-length public keys refused; kids;
private keys never shown."""

from __future__ import annotations

import base64
import os

import pytest

from schemas.errors import EnvelopeError
from schemas.keys import (
    _ED25519_SMALL_ORDER,
    KEMS,
    EncryptionKey,
    EncryptionPublicKey,
    KemName,
    SigningKey,
    VerifyKey,
)
from tests.core.envelope_kit import A

_P = 2**255 - 19
_NON_CANONICAL_SMALL_ORDER = {
    "identity-sign-bit": "01" + "00" * 30 + "80",
    "order-2-sign-bit": "ec" + "ff" * 31,
    "y=p": "ed" + "ff" * 30 + "7f",
    "y=p-sign-bit": "ed" + "ff" * 31,
    "y=p+1": "ee" + "ff" * 30 + "7f",
    "y=p+1-sign-bit": "ee" + "ff" * 31,
}


@pytest.mark.parametrize(
    "public",
    [
        *[
            pytest.param(p, id=f"small-order-{p.hex()[:8]}-{p[31]:02x}")
            for p in sorted(_ED25519_SMALL_ORDER)
        ],
        *[
            pytest.param(bytes.fromhex(h), id=name)
            for name, h in _NON_CANONICAL_SMALL_ORDER.items()
        ],
        pytest.param((_P + 5).to_bytes(32, "little"), id="y-non-canonical-p+5"),
        pytest.param(b"\xff" * 32, id="y-all-ones"),
    ],
)
def test_small_order_and_non_canonical_ed25519_keys_are_refused(public: bytes) -> None:
    # OpenSSL loads all of these, and under several of them (R = identity, S = 0) verifies
    # for every message: registration must refuse them.
    with pytest.raises(EnvelopeError) as exc_info:
        VerifyKey(public)
    assert exc_info.value.code == "bad_key"


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_ed25519_key_length(length: int) -> None:
    with pytest.raises(EnvelopeError) as exc_info:
        VerifyKey(os.urandom(length))
    assert exc_info.value.code == "bad_key"


_X25519_LOW_ORDER = {
    "zero": "00" * 32,
    "zero-top-bit": "00" * 31 + "80",
    "one": "01" + "00" * 31,
    "order-8-a": "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "order-8-b": "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "p-1": "ec" + "ff" * 30 + "7f",
    "p": "ed" + "ff" * 30 + "7f",
    "p+1": "ee" + "ff" * 30 + "7f",
    "p+1-top-bit": "ee" + "ff" * 31,
}


@pytest.mark.parametrize("kem", KEMS)
@pytest.mark.parametrize("u", list(_X25519_LOW_ORDER.values()), ids=list(_X25519_LOW_ORDER))
def test_low_order_x25519_keys_are_refused(kem: KemName, u: str) -> None:
    # DH with these gives the all-zero secret: HPKE would refuse to seal to them later.
    prefix = A.pub(kem).public[:-32]
    with pytest.raises(EnvelopeError) as exc_info:
        EncryptionPublicKey(kem, prefix + bytes.fromhex(u))
    assert exc_info.value.code == "bad_key"


def test_all_zero_x25519_key_message() -> None:
    with pytest.raises(EnvelopeError, match="all zeros"):
        EncryptionPublicKey("X25519", bytes(32))


@pytest.mark.parametrize(
    ("kem", "length"), [("X25519", 31), ("X25519", 1216), ("MLKEM768-X25519", 32)]
)
def test_encryption_key_length(kem: KemName, length: int) -> None:
    with pytest.raises(EnvelopeError) as exc_info:
        EncryptionPublicKey(kem, os.urandom(length))
    assert exc_info.value.code == "bad_key"


@pytest.mark.parametrize("kem", KEMS)
def test_honest_keys_are_accepted(kem: KemName) -> None:
    key = EncryptionKey.generate(kem)
    assert EncryptionPublicKey(kem, key.public_key.public) == key.public_key
    sk = SigningKey.generate()
    assert VerifyKey(sk.verify_key.public) == sk.verify_key


def test_default_kem_is_hybrid() -> None:
    assert EncryptionKey.generate().kem == "MLKEM768-X25519"


@pytest.mark.parametrize("kem", KEMS)
def test_kid_changes_with_the_key(kem: KemName) -> None:
    one, two = EncryptionKey.generate(kem), EncryptionKey.generate(kem)
    assert one.public_key.kid != two.public_key.kid
    assert one.public_key.kid == EncryptionKey(kem, one.private).public_key.kid  # deterministic
    assert one.public_key.kid.startswith("kem-")
    s1, s2 = SigningKey.generate(), SigningKey.generate()
    assert s1.verify_key.kid != s2.verify_key.kid
    assert s1.verify_key.kid == SigningKey(s1.private).verify_key.kid
    assert s1.verify_key.kid.startswith("sig-")
    # A kid also names the KEM: the same X25519 bytes under both KEMs get different kids.
    flipped = bytearray(one.public_key.public)
    flipped[0] ^= 1
    assert EncryptionPublicKey(kem, bytes(flipped)).kid != one.public_key.kid


def _encodings(secret: bytes) -> list[str]:
    out = [
        secret.hex(),
        secret.hex().upper(),
        base64.b64encode(secret).decode(),
        base64.b64encode(secret).decode().rstrip("="),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
        base64.b32encode(secret).decode().rstrip("="),
        repr(secret)[2:-1],
        str(list(secret))[1:-1],
    ]
    # A long fragment of each is enough to leak: look for 12-character windows too.
    return out + [s[i : i + 12] for s in out[:4] for i in range(0, len(s) - 12, 12)]


@pytest.mark.parametrize("kem", KEMS)
def test_private_keys_never_appear_in_repr(kem: KemName) -> None:
    sk, ek = SigningKey.generate(), EncryptionKey.generate(kem)
    secrets = [sk.private, ek.private]
    if kem == "MLKEM768-X25519":
        secrets += [ek.private[:64], ek.private[64:]]
    for key in (sk, ek):
        shown = [repr(key), str(key), f"{key}", f"{key!r}", repr([key]), repr({"k": key})]
        for text in shown:
            assert "kid=" in text
            for secret in secrets:
                for encoding in _encodings(secret):
                    assert encoding not in text
