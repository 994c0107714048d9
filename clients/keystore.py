"""Reading and writing an agency's keystore file (mode 0600, atomic replace).

A keystore that other users can read is refused, as ssh refuses such a key: the private
keys inside must never leave the agency's machine.
"""

from __future__ import annotations

import difflib
import getpass
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

from schemas.errors import ConfigError
from schemas.keystore import (
    MAX_KEYSTORE_BYTES,
    KeystoreFile,
    parse_any_keystore,
    protect_keystore,
    unprotect_keystore,
)

__all__ = [
    "Passphrase",
    "ask_passphrase",
    "load_keystore",
    "on_a_terminal",
    "passphrase_from_env",
    "resolve_keystore_path",
    "save_keystore",
]


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
        known = sorted(p.stem for p in (data_dir / "keys").glob("*.json"))
        close = difflib.get_close_matches(who, known, n=1, cutoff=0.75)
        raise ConfigError(
            f"no keystore for agency {who!r} at {path}",
            hint=f"did you mean {close[0]}?"
            if close
            else "check the agency id, or pass the --data-dir that holds its keystore",
        )
    return path


Passphrase = str | Callable[[], str] | None


def on_a_terminal() -> bool:
    """Whether a prompt can be answered: standard input is open and is a terminal.

    A command started by cron, a service manager or CI may have no standard input at all
    (``sys.stdin`` is None when descriptor 0 is closed); that is "not a terminal" too, so
    the caller says which file to give instead of failing with a traceback.
    """
    return sys.stdin is not None and sys.stdin.isatty()


def passphrase_from_env() -> str | None:
    """The passphrase in the file named by ``ISTMO_PASSPHRASE_FILE``, if set (first line)."""
    name = os.environ.get("ISTMO_PASSPHRASE_FILE")
    if not name:
        return None
    return _first_line(Path(name), "ISTMO_PASSPHRASE_FILE")


def _first_line(path: Path, named_by: str) -> str:
    try:
        with path.open(encoding="utf-8") as f:
            return f.readline().rstrip("\n")
    except OSError as exc:
        raise ConfigError(f"cannot read {named_by} {path}: {exc.strerror}") from exc


def ask_passphrase(path: Path, file: Path | str | None = None) -> Callable[[], str]:
    """A function that gets the passphrase of the protected keystore ``path``: from ``file``
    (``--passphrase-file``; its first line) if given, else from the file named by
    ``ISTMO_PASSPHRASE_FILE`` if set, else asked on the terminal.

    The function raises ConfigError when there is none of them (no terminal to ask on), or
    ``file`` cannot be read.
    """

    def ask() -> str:
        if file is not None:
            return _first_line(Path(file), "--passphrase-file")
        env = passphrase_from_env()
        if env is not None:
            return env
        if not on_a_terminal():
            raise _passphrase_needed(path)
        return getpass.getpass(f"passphrase for {path}: ")

    return ask


def _passphrase_needed(path: Path) -> ConfigError:
    return ConfigError(
        f"keystore {path} is protected by a passphrase",
        hint="run interactively, or give --passphrase-file (or set ISTMO_PASSPHRASE_FILE to) "
        "a file that holds it",
    )


def load_keystore(path: Path, passphrase: Passphrase = None) -> KeystoreFile:
    """Load a keystore, refusing one that group or others can read.

    Args:
        path: the keystore file.
        passphrase: for a protected keystore: the passphrase, or a function that asks for
            it; by default the file named by ``ISTMO_PASSPHRASE_FILE``.

    Raises:
        ConfigError: missing, too open, too large, not a keystore, or protected and no
            (or a wrong) passphrase.
    """
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(f"no keystore at {path}") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"keystore {path} is readable by others", hint=f"chmod 600 {path}")
    if st.st_size > MAX_KEYSTORE_BYTES:
        raise ConfigError(f"keystore {path} is too large to be a keystore")
    stored = parse_any_keystore(path.read_bytes())
    if isinstance(stored, KeystoreFile):
        return stored
    secret = passphrase() if callable(passphrase) else passphrase
    secret = secret if secret is not None else passphrase_from_env()
    if secret is None:
        raise _passphrase_needed(path)
    try:
        return unprotect_keystore(stored, secret)
    except ConfigError as exc:
        raise ConfigError(f"keystore {path}: {exc}") from exc


def save_keystore(path: Path, keystore: KeystoreFile, passphrase: str | None = None) -> None:
    """Write ``keystore`` to ``path`` atomically with mode 0600, protected by
    ``passphrase`` when one is given."""
    body = (
        protect_keystore(keystore, passphrase).model_dump_json(indent=2)
        if passphrase
        else keystore.model_dump_json(indent=2)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(body.encode())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
