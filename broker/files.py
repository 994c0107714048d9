"""The broker's own secret files: written atomically, mode 0600, read back strictly."""

from __future__ import annotations

import os
from pathlib import Path

from schemas.canonical import b64d, b64e
from schemas.errors import ConfigError, EnvelopeError
from schemas.keys import SigningKey

__all__ = ["signing_key_file", "write_file", "write_private"]


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename) with ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_private(path: Path, data: bytes) -> None:
    """Write a secret (a key, a keystore) readable by its owner only."""
    write_file(path, data, 0o600)


def signing_key_file(path: Path, what: str) -> SigningKey:
    """The Ed25519 key in ``path`` (base64, one line), made on first use.

    Raises:
        ConfigError: the file exists but does not hold a key.
    """
    if not path.exists():
        key = SigningKey.generate()
        write_private(path, b64e(key.private).encode() + b"\n")
        return key
    try:
        return SigningKey(b64d(path.read_text().strip(), field=what, max_bytes=32))
    except (OSError, EnvelopeError) as exc:
        raise ConfigError(f"cannot read the {what} {path}") from exc
