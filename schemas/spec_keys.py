"""The fixed keys and constants every test vector of the spec uses (docs/spec/vectors/).

Every key is derived from a fixed label (``seed``), so keys and key ids are the same on every
run; they are published in ``keys.json`` and must never be used elsewhere. The modules that
make the vectors (``schemas.spec_envelopes``, ``spec_groups``, ``spec_attachments``,
``spec_messages``) take their keys from here.
"""

from __future__ import annotations

import hashlib

from schemas.keys import EncryptionKey, KemName, SigningKey

__all__ = [
    "AGENCIES",
    "DIRECTORY_OWNER",
    "NOW",
    "POLICY_VERSION",
    "encryption_key",
    "hex_of",
    "seed",
    "signing_key",
    "text_of",
]

NOW = 1_767_225_600  # 2026-01-01T00:00:00Z
_SEED_DOMAIN = b"istmo spec vectors\x00"
# Which keys each agency of the vectors holds: (signing, encryption suite).
AGENCIES: dict[str, KemName] = {
    "gt-police": "MLKEM768-X25519",  # the originator
    "rc-drugs": "MLKEM768-X25519",  # also the manager of the community group
    "sv-police": "X25519",
    "hn-police": "MLKEM768-X25519",  # never a recipient
    "cr-police": "MLKEM768-X25519",  # a recipient outside the community group
}
DIRECTORY_OWNER = "directory"
POLICY_VERSION = "49cbbc5781d0b027"


def seed(label: str, size: int) -> bytes:
    """``size`` bytes fixed by ``label``: SHAKE-256 of a domain string and the label."""
    return hashlib.shake_256(_SEED_DOMAIN + label.encode()).digest(size)


def signing_key(owner: str) -> SigningKey:
    return SigningKey(seed(f"{owner}/ed25519", 32))


def encryption_key(agency: str) -> EncryptionKey:
    kem = AGENCIES[agency]
    x_private = seed(f"{agency}/x25519", 32)
    if kem == "X25519":
        return EncryptionKey(kem, x_private)
    return EncryptionKey(kem, seed(f"{agency}/mlkem768-seed", 64) + x_private)


def hex_of(data: bytes) -> str:
    return data.hex()


def text_of(data: bytes) -> str:
    return data.decode("utf-8")
