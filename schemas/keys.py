"""Key material an agency holds, and the public halves it registers.

Three keys per agency: an Ed25519 signing key, an HPKE encryption key (hybrid
ML-KEM-768 + X25519 by default, plain X25519 accepted) and a NATS user nkey (handled by the
client, not here). A key id (``kid``) is derived from the public bytes, so a directory
cannot name one key and serve another.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ed25519, mlkem, x25519

from schemas.errors import EnvelopeError, SignatureError

__all__ = [
    "DEFAULT_KEM",
    "KEMS",
    "EncryptionKey",
    "EncryptionPublicKey",
    "KemName",
    "SigningKey",
    "VerifyKey",
    "encryption_kid",
    "signing_kid",
]

KemName = Literal["MLKEM768-X25519", "X25519"]
KEMS: tuple[KemName, ...] = ("MLKEM768-X25519", "X25519")
DEFAULT_KEM: KemName = "MLKEM768-X25519"

_MLKEM768_PUB = 1184
_MLKEM768_SEED = 64
_X25519 = 32

# Canonical encodings of the Ed25519 points of small order (libsodium's blocklist).
# Registration refuses them: a small-order key lets signatures verify for many messages.
# The check compares y only (sign bit masked) and refuses y >= p, as libsodium does:
# OpenSSL also loads the non-canonical encodings of these points (identity with the sign bit
# set, y = p + 1, ...), and under such a key (R = identity, S = 0) verifies for every message.
_ED25519_SMALL_ORDER = {
    bytes.fromhex(h)
    for h in (
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    )
}
_P25519 = 2**255 - 19
_LOW_255_BITS = (1 << 255) - 1


def _coordinate(public: bytes) -> int:
    """The 255-bit field element of an Ed25519 (y) or X25519 (u) encoding, top bit masked."""
    return int.from_bytes(public, "little") & _LOW_255_BITS


_ED25519_SMALL_ORDER_Y = frozenset(_coordinate(p) for p in _ED25519_SMALL_ORDER)
# u-coordinates of the X25519 points of low order (RFC 7748 masks the top bit; libsodium's
# blocklist). DH with any of them gives the all-zero secret, which HPKE refuses at seal time,
# so registration must refuse them first.
_X25519_LOW_ORDER_U = frozenset(
    (
        0,
        1,
        _coordinate(
            bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
        ),
        _coordinate(
            bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157")
        ),
        _P25519 - 1,
        _P25519,
        _P25519 + 1,
    )
)


def signing_kid(public: bytes) -> str:
    """Key id of an Ed25519 public key."""
    return "sig-" + hashlib.sha256(b"istmo/v1/kid/ed25519\x00" + public).hexdigest()[:32]


def encryption_kid(kem: KemName, public: bytes) -> str:
    """Key id of an HPKE public key."""
    tag = kem.encode("ascii")
    return "kem-" + hashlib.sha256(b"istmo/v1/kid/" + tag + b"\x00" + public).hexdigest()[:32]


@dataclass(frozen=True)
class VerifyKey:
    """An Ed25519 public key with its id."""

    public: bytes

    def __post_init__(self) -> None:
        if len(self.public) != 32:
            raise EnvelopeError("Ed25519 public key must be 32 bytes", code="bad_key")
        y = _coordinate(self.public)
        if y >= _P25519:
            raise EnvelopeError("Ed25519 public key is not canonically encoded", code="bad_key")
        if y in _ED25519_SMALL_ORDER_Y:
            raise EnvelopeError("Ed25519 public key is a small-order point", code="bad_key")

    # Both are derived once per key: the relay checks every envelope with a key it holds.
    @functools.cached_property
    def kid(self) -> str:
        return signing_kid(self.public)

    @functools.cached_property
    def _ed25519(self) -> ed25519.Ed25519PublicKey:
        return ed25519.Ed25519PublicKey.from_public_bytes(self.public)

    def verify(self, signature: bytes, message: bytes) -> None:
        """Raise SignatureError unless ``signature`` is valid for ``message``."""
        if len(signature) != 64:
            raise SignatureError("signature must be 64 bytes")
        try:
            self._ed25519.verify(signature, message)
        except (InvalidSignature, ValueError) as exc:
            raise SignatureError("signature does not verify") from exc


@dataclass(frozen=True, repr=False)
class SigningKey:
    """An Ed25519 private key. Never logged: ``repr`` shows only the kid."""

    private: bytes

    @classmethod
    def generate(cls) -> SigningKey:
        key = ed25519.Ed25519PrivateKey.generate()
        return cls(key.private_bytes_raw())

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.verify_key.kid!r})"

    # Parsed once per key, as the verify keys are: an SDK signs every bulletin, receipt
    # and request with the same key. The object holds no more than ``private`` does.
    @functools.cached_property
    def _ed25519(self) -> ed25519.Ed25519PrivateKey:
        return ed25519.Ed25519PrivateKey.from_private_bytes(self.private)

    @functools.cached_property
    def verify_key(self) -> VerifyKey:
        return VerifyKey(self._ed25519.public_key().public_bytes_raw())

    def sign(self, message: bytes) -> bytes:
        return self._ed25519.sign(message)


@dataclass(frozen=True)
class EncryptionPublicKey:
    """An HPKE public key: for the hybrid KEM, ML-KEM-768 public bytes then X25519's."""

    kem: KemName
    public: bytes

    def __post_init__(self) -> None:
        want = _MLKEM768_PUB + _X25519 if self.kem == "MLKEM768-X25519" else _X25519
        if len(self.public) != want:
            raise EnvelopeError(f"{self.kem} public key must be {want} bytes", code="bad_key")
        if self.public[-_X25519:] == bytes(_X25519):
            raise EnvelopeError("X25519 public key is all zeros", code="bad_key")
        if _coordinate(self.public[-_X25519:]) in _X25519_LOW_ORDER_U:
            raise EnvelopeError("X25519 public key is a low-order point", code="bad_key")

    # Both derived once per key: an SDK seals for the same recipients bulletin after
    # bulletin (parsing an ML-KEM-768 public key is most of a wrap's setup).
    @functools.cached_property
    def kid(self) -> str:
        return encryption_kid(self.kem, self.public)

    def hpke_public(self) -> hpke.MLKEM768X25519PublicKey | x25519.X25519PublicKey:
        return self._hpke

    @functools.cached_property
    def _hpke(self) -> hpke.MLKEM768X25519PublicKey | x25519.X25519PublicKey:
        xpub = x25519.X25519PublicKey.from_public_bytes(self.public[-_X25519:])
        if self.kem == "X25519":
            return xpub
        mpub = mlkem.MLKEM768PublicKey.from_public_bytes(self.public[:_MLKEM768_PUB])
        return hpke.MLKEM768X25519PublicKey(mpub, xpub)


@dataclass(frozen=True, repr=False)
class EncryptionKey:
    """An HPKE private key: for the hybrid KEM, the ML-KEM-768 seed then X25519's key."""

    kem: KemName
    private: bytes

    @classmethod
    def generate(cls, kem: KemName = DEFAULT_KEM) -> EncryptionKey:
        xkey = x25519.X25519PrivateKey.generate().private_bytes_raw()
        if kem == "X25519":
            return cls(kem, xkey)
        return cls(kem, mlkem.MLKEM768PrivateKey.generate().private_bytes_raw() + xkey)

    def __repr__(self) -> str:
        return f"EncryptionKey(kem={self.kem!r}, kid={self.public_key.kid!r})"

    # Parsed once per key (expanding the ML-KEM seed costs about as much as a decapsulation,
    # once per bulletin received before this); the objects hold no more than ``private``.
    @functools.cached_property
    def _parts(self) -> tuple[mlkem.MLKEM768PrivateKey | None, x25519.X25519PrivateKey]:
        if self.kem == "X25519":
            if len(self.private) != _X25519:
                raise EnvelopeError("X25519 private key must be 32 bytes", code="bad_key")
            return None, x25519.X25519PrivateKey.from_private_bytes(self.private)
        if len(self.private) != _MLKEM768_SEED + _X25519:
            raise EnvelopeError("hybrid private key must be 96 bytes", code="bad_key")
        return (
            mlkem.MLKEM768PrivateKey.from_seed_bytes(self.private[:_MLKEM768_SEED]),
            x25519.X25519PrivateKey.from_private_bytes(self.private[_MLKEM768_SEED:]),
        )

    @functools.cached_property
    def public_key(self) -> EncryptionPublicKey:
        mkey, xkey = self._parts
        xpub = xkey.public_key().public_bytes_raw()
        if mkey is None:
            return EncryptionPublicKey(self.kem, xpub)
        return EncryptionPublicKey(self.kem, mkey.public_key().public_bytes_raw() + xpub)

    def hpke_private(self) -> hpke.MLKEM768X25519PrivateKey | x25519.X25519PrivateKey:
        mkey, xkey = self._parts
        if mkey is None:
            return xkey
        return hpke.MLKEM768X25519PrivateKey(mkey, xkey)


def hpke_suite(kem: KemName) -> hpke.Suite:
    """The HPKE suite for ``kem``: HKDF-SHA256 and AES-256-GCM in both cases."""
    k = hpke.KEM.MLKEM768_X25519 if kem == "MLKEM768-X25519" else hpke.KEM.X25519
    return hpke.Suite(k, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
