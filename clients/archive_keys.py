"""The keys of an agency's local archive (``clients.archive``), and sealing its rows.

An archive has one random 256-bit key. It is kept in the archive file wrapped (AES-256-GCM)
under a key-encryption key derived from a secret the agency holds: a passphrase (scrypt,
the keystore's parameters) or a key file (HKDF-SHA256 over its bytes, which must be at
least 32). Each row's content is sealed under the archive key with AES-256-GCM, a fresh
96-bit nonce, and the row's bulletin id (and what the row is) as associated data, so a
sealed value moved to another row does not open. Pure: no files, no SQLite; the archive
reads the secret and stores what this returns.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Annotated, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from schemas.canonical import b64d, b64e, canonical_json
from schemas.errors import ConfigError
from schemas.ids import AgencyIdStr
from schemas.keystore import SCRYPT_N, SCRYPT_P, SCRYPT_R

__all__ = [
    "MAX_KEY_FILE_BYTES",
    "MIN_KEY_FILE_BYTES",
    "ArchiveHeader",
    "ArchiveSecret",
    "derive_subkey",
    "new_archive_key",
    "open_archive_key",
    "open_row",
    "seal_row",
]

MIN_KEY_FILE_BYTES = 32
MAX_KEY_FILE_BYTES = 4096
_NONCE = 12
_STRICT = ConfigDict(frozen=True, extra="forbid", strict=True)


@dataclass(frozen=True)
class ArchiveSecret:
    """What the archive key is unwrapped with: a passphrase, or a key file's bytes."""

    kind: Literal["passphrase", "key-file"]
    value: bytes

    def __repr__(self) -> str:
        return f"ArchiveSecret(kind={self.kind!r})"


class ArchiveKdf(BaseModel):
    model_config = _STRICT
    alg: Literal["scrypt", "hkdf-sha256"]
    salt: Annotated[str, StringConstraints(max_length=64)]
    # scrypt only: its cost, stored so it can rise later.
    n: Annotated[int, Field(ge=2**14, le=2**20)] | None = None
    r: Annotated[int, Field(ge=8, le=32)] | None = None
    p: Annotated[int, Field(ge=1, le=16)] | None = None


class ArchiveHeader(BaseModel):
    """The archive's key, wrapped; stored in clear in the archive file (it holds no secret)."""

    model_config = _STRICT
    v: Literal[1]
    agency: AgencyIdStr
    kdf: ArchiveKdf
    nonce: Annotated[str, StringConstraints(max_length=32)]
    wrapped: Annotated[str, StringConstraints(max_length=128)]


def _kek(secret: ArchiveSecret, kdf: ArchiveKdf) -> bytes:
    salt = b64d(kdf.salt, field="kdf.salt", max_bytes=32)
    if kdf.alg == "scrypt":
        if secret.kind != "passphrase":
            raise ConfigError(
                "this archive is protected by a passphrase, not a key file",
                hint="give the passphrase (--passphrase-file), not --archive-key-file",
            )
        if kdf.n is None or kdf.r is None or kdf.p is None:
            raise ConfigError("the archive's header is damaged: its scrypt cost is missing")
        return Scrypt(salt=salt, length=32, n=kdf.n, r=kdf.r, p=kdf.p).derive(secret.value)
    if secret.kind != "key-file":
        raise ConfigError(
            "this archive is protected by a key file, not a passphrase",
            hint="give --archive-key-file with the file it was made with",
        )
    info = b"istmo/v1/archive-kek"
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(secret.value)


def _wrap_aad(agency: str, kdf: ArchiveKdf) -> bytes:
    return b"istmo/v1/archive-key\x00" + canonical_json(
        {"agency": agency, "kdf": kdf.model_dump(exclude_none=True)}
    )


def _check_secret(secret: ArchiveSecret) -> None:
    if secret.kind == "passphrase" and not secret.value:
        raise ConfigError("the archive's passphrase is empty", hint="give a passphrase")
    if secret.kind == "key-file" and not (
        MIN_KEY_FILE_BYTES <= len(secret.value) <= MAX_KEY_FILE_BYTES
    ):
        raise ConfigError(
            f"an archive key file holds {MIN_KEY_FILE_BYTES} to {MAX_KEY_FILE_BYTES} bytes",
            hint="make one with `head -c 32 /dev/urandom > archive.key && chmod 600 archive.key`",
        )


def new_archive_key(agency: str, secret: ArchiveSecret) -> tuple[bytes, ArchiveHeader]:
    """A fresh archive key, and the header that keeps it wrapped under ``secret``.

    Raises:
        ConfigError: an empty passphrase, or a key file too short or too long.
    """
    _check_secret(secret)
    salt = b64e(os.urandom(16))
    kdf = (
        ArchiveKdf(alg="scrypt", salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
        if secret.kind == "passphrase"
        else ArchiveKdf(alg="hkdf-sha256", salt=salt)
    )
    key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(_NONCE)
    wrapped = AESGCM(_kek(secret, kdf)).encrypt(nonce, key, _wrap_aad(agency, kdf))
    header = ArchiveHeader(v=1, agency=agency, kdf=kdf, nonce=b64e(nonce), wrapped=b64e(wrapped))
    return key, header


def open_archive_key(header: ArchiveHeader, secret: ArchiveSecret) -> bytes:
    """The archive key ``header`` wraps.

    Raises:
        ConfigError: the wrong passphrase or key file (or the header was altered).
    """
    _check_secret(secret)
    try:
        return AESGCM(_kek(secret, header.kdf)).decrypt(
            b64d(header.nonce, field="nonce", max_bytes=_NONCE),
            b64d(header.wrapped, field="wrapped", max_bytes=64),
            _wrap_aad(header.agency, header.kdf),
        )
    except InvalidTag as exc:
        what = "passphrase" if secret.kind == "passphrase" else "key file"
        raise ConfigError(
            f"wrong {what} for this archive (or its header was altered)",
            hint="give the passphrase or key file the archive was made with",
        ) from exc


def derive_subkey(key: bytes, purpose: str) -> bytes:
    """A key for ``purpose`` derived from the archive key: HKDF-SHA256, no salt, the
    purpose in its info (a different purpose gives an unrelated key)."""
    info = b"istmo/v1/archive-subkey\x00" + purpose.encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)


def _row_aad(row_id: str, part: str) -> bytes:
    return b"istmo/v1/archive-row\x00" + row_id.encode() + b"\x00" + part.encode()


def seal_row(key: bytes, row_id: str, part: str, plain: bytes) -> bytes:
    """``plain`` sealed for row ``row_id``'s ``part``: nonce then ciphertext and tag."""
    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(key).encrypt(nonce, plain, _row_aad(row_id, part))


def open_row(key: bytes, row_id: str, part: str, sealed: bytes) -> bytes:
    """What ``seal_row`` sealed for the same row and part.

    Raises:
        ConfigError: the value does not open: altered, or moved from another row.
    """
    try:
        return AESGCM(key).decrypt(sealed[:_NONCE], sealed[_NONCE:], _row_aad(row_id, part))
    except (InvalidTag, ValueError) as exc:
        raise ConfigError(f"archive row {row_id[:40]} was altered: it does not open") from exc
