"""Reading and writing an agency's keystore file (mode 0600, atomic replace).

A keystore that other users can read is refused, as ssh refuses such a key: the private
keys inside must never leave the agency's machine.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from schemas.errors import ConfigError
from schemas.keystore import MAX_KEYSTORE_BYTES, KeystoreFile

__all__ = ["load_keystore", "resolve_keystore_path", "save_keystore"]


def resolve_keystore_path(who: str, data_dir: Path) -> Path:
    """``--as`` takes an agency id (its keystore in ``data_dir/keys``) or a keystore path.

    Raises:
        ConfigError: no such keystore, with the path that was tried.
    """
    looks_like_path = os.sep in who or who.endswith(".json")
    path = Path(who) if looks_like_path else data_dir / "keys" / f"{who}.json"
    if not path.is_file():
        if looks_like_path:
            raise ConfigError(f"no keystore at {path}")
        raise ConfigError(
            f"no keystore for agency {who!r} at {path} (unknown agency, or another --data-dir?)"
        )
    return path


def load_keystore(path: Path) -> KeystoreFile:
    """Load a keystore, refusing one that group or others can read.

    Raises:
        ConfigError: missing, too open, too large or not a keystore.
    """
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(f"no keystore at {path}") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"keystore {path} is readable by others; run: chmod 600 {path}")
    if st.st_size > MAX_KEYSTORE_BYTES:
        raise ConfigError(f"keystore {path} is too large to be a keystore")
    return KeystoreFile.parse(path.read_bytes())


def save_keystore(path: Path, keystore: KeystoreFile) -> None:
    """Write ``keystore`` to ``path`` atomically with mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(keystore.model_dump_json(indent=2).encode())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
