"""The keystore file format: an agency's private keys, kept on its own machine.

This module only describes and converts the contents; reading and writing the file (mode
0600, atomic replace) is the client's job. Keys are listed oldest first; the last of each
kind is the current one, and older encryption keys stay so old bulletins still open.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from schemas.canonical import b64d, b64e
from schemas.envelope import Kid, Timestamp, parse_model
from schemas.errors import ConfigError, EnvelopeError
from schemas.ids import AgencyIdStr
from schemas.keys import EncryptionKey, KemName, SigningKey, VerifyKey

__all__ = ["KeystoreFile", "StoredEncryptionKey", "StoredSigningKey", "new_keystore"]

_STRICT = ConfigDict(frozen=True, extra="forbid", strict=True)
Private = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]*={0,2}$", max_length=256)]
MAX_KEYSTORE_BYTES = 256 * 1024


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

    def signing_key(self) -> SigningKey:
        """The current signing key."""
        stored = self.signing_keys[-1]
        key = SigningKey(b64d(stored.private, field="signing key", max_bytes=32))
        if key.verify_key.kid != stored.kid:
            raise ConfigError("keystore is damaged: signing key does not match its id")
        return key

    def encryption_key(self, kid: str) -> EncryptionKey | None:
        """The encryption key ``kid``, current or older, if this keystore has it."""
        for stored in self.encryption_keys:
            if stored.kid == kid:
                return EncryptionKey(
                    stored.kem, b64d(stored.private, field="kem key", max_bytes=96)
                )
        return None

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
