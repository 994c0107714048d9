"""The keystore file format: an agency's private keys, kept on its own machine.

This module only describes and converts the contents; reading and writing the file (mode
0600, atomic replace) is the client's job. Keys are listed oldest first; the last of each
kind is the current one, and older encryption keys stay so old bulletins still open.
"""

from __future__ import annotations

import functools
import os
from typing import Annotated, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from schemas.canonical import b64d, b64e, canonical_json, strict_loads
from schemas.envelope import Kid, Timestamp, parse_model
from schemas.errors import ConfigError, EnvelopeError
from schemas.ids import AgencyIdStr
from schemas.keys import EncryptionKey, KemName, SigningKey, VerifyKey

__all__ = [
    "MAX_NATS_JWT_CHARS",
    "KeystoreFile",
    "NatsJwt",
    "ProtectedKeystore",
    "StoredEncryptionKey",
    "StoredSigningKey",
    "new_keystore",
    "parse_any_keystore",
    "protect_keystore",
    "unprotect_keystore",
]

_STRICT = ConfigDict(frozen=True, extra="forbid", strict=True)
Private = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]*={0,2}$", max_length=256)]
MAX_KEYSTORE_BYTES = 256 * 1024
MAX_NATS_JWT_CHARS = 4096
# A NATS user JWT (ADR 0013): three base64url parts. Not a secret: it names the agency's
# NATS key, whose seed must still sign the server's challenge.
NatsJwt = Annotated[
    str,
    StringConstraints(
        pattern=r"^eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$",
        max_length=MAX_NATS_JWT_CHARS,
    ),
]


class StoredSigningKey(BaseModel):
    model_config = _STRICT
    kid: Kid
    private: Private = Field(repr=False)
    created_at: Timestamp


class StoredEncryptionKey(BaseModel):
    model_config = _STRICT
    kid: Kid
    kem: KemName
    private: Private = Field(repr=False)
    created_at: Timestamp


class PinnedKey(BaseModel):
    model_config = _STRICT
    kid: Kid
    public: Annotated[str, StringConstraints(max_length=64)]


class KeystoreFile(BaseModel):
    """Everything private an agency holds, plus the directory key it pinned."""

    model_config = _STRICT

    v: Literal[1]
    agency: AgencyIdStr
    signing_keys: tuple[StoredSigningKey, ...] = Field(min_length=1, max_length=64)
    encryption_keys: tuple[StoredEncryptionKey, ...] = Field(min_length=1, max_length=64)
    nats_seed: Annotated[str, StringConstraints(pattern=r"^SU[A-Z2-7]{56}$")] = Field(repr=False)
    directory_key: PinnedKey
    nats_url: Annotated[str, StringConstraints(max_length=200)] | None = None
    # The user JWT to connect with when the broker runs NATS in operator mode (ADR 0013);
    # None: connect with the NATS key alone (config mode).
    nats_jwt: NatsJwt | None = None

    def signing_key(self) -> SigningKey:
        """The current signing key."""
        stored = self.signing_keys[-1]
        decoded = self._decoded
        key = decoded.get(stored.kid)
        if not isinstance(key, SigningKey):
            key = SigningKey(b64d(stored.private, field="signing key", max_bytes=32))
            if key.verify_key.kid != stored.kid:
                raise ConfigError("keystore is damaged: signing key does not match its id")
            decoded[stored.kid] = key
        return key

    def encryption_key(self, kid: str) -> EncryptionKey | None:
        """The encryption key ``kid``, current or older, if this keystore has it."""
        decoded = self._decoded
        key = decoded.get(kid)
        if isinstance(key, EncryptionKey):
            return key
        for stored in self.encryption_keys:
            if stored.kid == kid:
                key = EncryptionKey(stored.kem, b64d(stored.private, field="kem key", max_bytes=96))
                decoded[kid] = key
                return key
        return None

    # Keys decoded once per keystore, by kid: the SDK signs and opens bulletin after
    # bulletin with the same keys, and a key object parses its bytes once
    # (``schemas.keys``). By kid, not by field, so a copy with rotated keys
    # (``model_copy``, which copies this dict along) still finds only what it holds.
    @functools.cached_property
    def _decoded(self) -> dict[str, SigningKey | EncryptionKey]:
        return {}

    def pinned_directory_key(self) -> VerifyKey:
        key = VerifyKey(b64d(self.directory_key.public, field="directory key", max_bytes=32))
        if key.kid != self.directory_key.kid:
            raise ConfigError("keystore is damaged: directory key does not match its id")
        return key

    @classmethod
    def parse(cls, raw: bytes) -> KeystoreFile:
        try:
            return parse_model(cls, raw, max_bytes=MAX_KEYSTORE_BYTES, what="keystore")
        except EnvelopeError as exc:
            raise ConfigError(f"keystore is not valid: {exc}") from exc

    def __repr__(self) -> str:
        return f"KeystoreFile(agency={self.agency!r})"

    def __str__(self) -> str:
        return repr(self)


def new_keystore(
    *,
    agency: str,
    nats_seed: str,
    directory_key: VerifyKey,
    now: int,
    kem: KemName = "MLKEM768-X25519",
) -> tuple[KeystoreFile, SigningKey, EncryptionKey]:
    """Generate fresh signing and encryption keys for ``agency``.

    Returns:
        The keystore, and the two new private keys (whose public halves get registered).
    """
    sk = SigningKey.generate()
    ek = EncryptionKey.generate(kem)
    ks = KeystoreFile(
        v=1,
        agency=agency,
        signing_keys=(
            StoredSigningKey(kid=sk.verify_key.kid, private=b64e(sk.private), created_at=now),
        ),
        encryption_keys=(
            StoredEncryptionKey(
                kid=ek.public_key.kid, kem=kem, private=b64e(ek.private), created_at=now
            ),
        ),
        nats_seed=nats_seed,
        directory_key=PinnedKey(kid=directory_key.kid, public=b64e(directory_key.public)),
    )
    return ks, sk, ek


# ---------------------------------------------------------------- passphrase protection
# scrypt parameters: 2^15 x 8 x 1 costs about 32 MiB and 0.1 s, the OWASP-style minimum
# for interactive use. They are stored in the file, so they can rise later.
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1


class KdfParams(BaseModel):
    model_config = _STRICT
    alg: Literal["scrypt"]
    salt: Annotated[str, StringConstraints(max_length=64)]
    n: Annotated[int, Field(ge=2**14, le=2**20)]
    r: Annotated[int, Field(ge=8, le=32)]
    p: Annotated[int, Field(ge=1, le=16)]


class ProtectedKeystore(BaseModel):
    """A KeystoreFile encrypted with a key derived from a passphrase."""

    model_config = _STRICT

    v: Literal[1]
    agency: AgencyIdStr
    kdf: KdfParams
    aead: Literal["AES-256-GCM"]
    nonce: Annotated[str, StringConstraints(max_length=32)]
    ct: Annotated[str, StringConstraints(max_length=MAX_KEYSTORE_BYTES)]


def _protect_key(passphrase: str, kdf: KdfParams) -> bytes:
    salt = b64d(kdf.salt, field="kdf.salt", max_bytes=32)
    return Scrypt(salt=salt, length=32, n=kdf.n, r=kdf.r, p=kdf.p).derive(passphrase.encode())


def _protect_aad(agency: str, kdf: KdfParams) -> bytes:
    return b"istmo/v1/keystore\x00" + canonical_json({"agency": agency, "kdf": kdf.model_dump()})


def protect_keystore(keystore: KeystoreFile, passphrase: str) -> ProtectedKeystore:
    """Encrypt ``keystore`` under ``passphrase`` (scrypt, then AES-256-GCM).

    Raises:
        ValueError: an empty passphrase.
    """
    if not passphrase:
        raise ValueError("a passphrase is required")
    kdf = KdfParams(alg="scrypt", salt=b64e(os.urandom(16)), n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    nonce = os.urandom(12)
    plain = keystore.model_dump_json().encode()
    ct = AESGCM(_protect_key(passphrase, kdf)).encrypt(
        nonce, plain, _protect_aad(keystore.agency, kdf)
    )
    return ProtectedKeystore(
        v=1, agency=keystore.agency, kdf=kdf, aead="AES-256-GCM", nonce=b64e(nonce), ct=b64e(ct)
    )


def unprotect_keystore(protected: ProtectedKeystore, passphrase: str) -> KeystoreFile:
    """Decrypt a protected keystore.

    Raises:
        ConfigError: wrong passphrase, or the file was altered.
    """
    key = _protect_key(passphrase, protected.kdf)
    try:
        plain = AESGCM(key).decrypt(
            b64d(protected.nonce, field="nonce", max_bytes=12),
            b64d(protected.ct, field="ct", max_bytes=MAX_KEYSTORE_BYTES),
            _protect_aad(protected.agency, protected.kdf),
        )
    except InvalidTag as exc:
        raise ConfigError("wrong passphrase, or the keystore was altered") from exc
    inner = KeystoreFile.parse(plain)
    if inner.agency != protected.agency:
        raise ConfigError("keystore is damaged: its agency does not match")
    return inner


def parse_any_keystore(raw: bytes) -> KeystoreFile | ProtectedKeystore:
    """A keystore file as stored: plain, or protected by a passphrase."""
    doc = strict_loads(raw, max_bytes=MAX_KEYSTORE_BYTES)
    model: type[KeystoreFile] | type[ProtectedKeystore] = (
        ProtectedKeystore if isinstance(doc, dict) and "kdf" in doc else KeystoreFile
    )
    try:
        return parse_model(model, raw, max_bytes=MAX_KEYSTORE_BYTES, what="keystore")
    except EnvelopeError as exc:
        raise ConfigError(f"keystore is not valid: {exc}") from exc
