"""Keystores protected by a passphrase (scrypt + AES-256-GCM)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clients.keystore import load_keystore, save_keystore
from schemas.canonical import b64e
from schemas.errors import ConfigError
from schemas.keys import SigningKey
from schemas.keystore import (
    KeystoreFile,
    ProtectedKeystore,
    new_keystore,
    parse_any_keystore,
    protect_keystore,
    unprotect_keystore,
)
from schemas.natskeys import new_user_seed

PASS = "correct horse battery staple"


@pytest.fixture(scope="module")
def keystore() -> KeystoreFile:
    ks, _, _ = new_keystore(
        agency="gt-police",
        nats_seed=new_user_seed(),
        directory_key=SigningKey.generate().verify_key,
        now=1,
    )
    return ks


def test_round_trip_and_nothing_private_in_clear(keystore: KeystoreFile) -> None:
    protected = protect_keystore(keystore, PASS)
    raw = protected.model_dump_json().encode()
    assert keystore.signing_keys[0].private.encode() not in raw
    assert keystore.nats_seed.encode() not in raw
    assert isinstance(parse_any_keystore(raw), ProtectedKeystore)
    assert unprotect_keystore(protected, PASS) == keystore


def test_wrong_passphrase_and_tampering_are_refused(keystore: KeystoreFile) -> None:
    protected = protect_keystore(keystore, PASS)
    with pytest.raises(ConfigError, match="wrong passphrase"):
        unprotect_keystore(protected, PASS + "!")
    moved = protected.model_copy(update={"agency": "jm-police"})  # bound as associated data
    with pytest.raises(ConfigError, match="wrong passphrase, or the keystore was altered"):
        unprotect_keystore(moved, PASS)
    with pytest.raises(ValueError, match="passphrase is required"):
        protect_keystore(keystore, "")


@pytest.mark.parametrize("n", [2**10, 2**21])
def test_kdf_parameters_are_bounded(keystore: KeystoreFile, n: int) -> None:
    doc = json.loads(protect_keystore(keystore, PASS).model_dump_json())
    doc["kdf"]["n"] = n  # too weak, or a memory bomb
    with pytest.raises(ConfigError, match="keystore is not valid"):
        parse_any_keystore(json.dumps(doc).encode())


def test_files_on_disk(
    keystore: KeystoreFile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "gt-police.json"
    save_keystore(path, keystore, passphrase=PASS)
    assert path.stat().st_mode & 0o777 == 0o600
    assert b64e(SigningKey(b"\x00" * 32).private) not in path.read_text()
    monkeypatch.delenv("ISTMO_PASSPHRASE_FILE", raising=False)
    with pytest.raises(ConfigError, match="protected by a passphrase"):
        load_keystore(path)
    assert load_keystore(path, PASS) == keystore
    assert load_keystore(path, lambda: PASS) == keystore
    secret = tmp_path / "pass"
    secret.write_text(PASS + "\n")
    monkeypatch.setenv("ISTMO_PASSPHRASE_FILE", str(secret))
    assert load_keystore(path) == keystore
    with pytest.raises(ConfigError, match=f"keystore {path}: wrong passphrase"):
        load_keystore(path, "nope")
