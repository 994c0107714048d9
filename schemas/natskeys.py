"""NATS user keys (nkeys): an agency's third key, used only to connect to NATS."""

from __future__ import annotations

import os

import nkeys

__all__ = ["new_user_seed", "user_public_key"]


def new_user_seed() -> str:
    """A fresh NATS user seed ("SU..."). Private: keep it in the keystore only."""
    seed: bytes = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    return seed.decode("ascii")


def user_public_key(seed: str) -> str:
    """The public nkey ("U...") of a user seed."""
    kp = nkeys.from_seed(seed.encode("ascii"))
    try:
        public: bytes = kp.public_key
        return public.decode("ascii")
    finally:
        kp.wipe()
