"""HPKE opened step by step, as docs/spec/envelope.md writes it: the intermediate values
of one wrap, for the spec's test vectors.

``sealing`` opens wraps with ``cryptography``'s HPKE (OpenSSL). This module spells the same
computation out from RFC 9180 (base mode, single shot) and, for the hybrid suite, the
X-Wing combiner, using only the primitives (ML-KEM-768 decapsulation, X25519, SHA3-256,
HMAC-SHA256, AES-256-GCM). ``schemas.spec_vectors`` records what it computes beside each
wrap and checks that it opens to the key ``cryptography`` opens, so the spec's description
and the code cannot drift apart unnoticed. Nothing else uses it.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from schemas.keys import KemName

__all__ = ["HPKE_IDS", "XWING_LABEL", "WrapTrace", "open_wrap_traced"]

# RFC 9180 identifiers: (KEM, KDF, AEAD). 0x647a is X-Wing (ML-KEM-768 + X25519), the
# value draft-ietf-hpke-pq and draft-connolly-cfrg-xwing-kem give it; 0x0020 is
# DHKEM(X25519, HKDF-SHA256). KDF 0x0001 is HKDF-SHA256, AEAD 0x0002 AES-256-GCM.
HPKE_IDS: dict[KemName, tuple[int, int, int]] = {
    "MLKEM768-X25519": (0x647A, 0x0001, 0x0002),
    "X25519": (0x0020, 0x0001, 0x0002),
}
# X-Wing's label: the six ASCII characters \.//^\
XWING_LABEL = b"\\.//^\\"
_MLKEM768_CT = 1088
_MLKEM768_SEED = 64
_X25519 = 32


def _i2osp(value: int, length: int) -> bytes:
    return value.to_bytes(length, "big")


def _extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()


def _expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def _labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return _extract(salt, b"HPKE-v1" + suite_id + label + ikm)


def _labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    return _expand(prk, _i2osp(length, 2) + b"HPKE-v1" + suite_id + label + info, length)


@dataclass(frozen=True)
class WrapTrace:
    """Every intermediate value of opening one wrap, in the order the spec computes them."""

    suite_id: bytes
    enc: bytes  # the KEM's encapsulation: the first Nenc bytes of the wrap
    aead_ct: bytes  # the rest: the sealed content key and its tag
    kem_secrets: dict[str, bytes]  # the KEM's inner values (ML-KEM's, X25519's)
    shared_secret: bytes
    key: bytes
    base_nonce: bytes
    plaintext: bytes


def _kem_xwing(private: bytes, enc: bytes) -> tuple[bytes, dict[str, bytes]]:
    seed, x_private = private[:_MLKEM768_SEED], private[_MLKEM768_SEED:]
    ct_m, ct_x = enc[:_MLKEM768_CT], enc[_MLKEM768_CT:]
    ss_m = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed).decapsulate(ct_m)
    x_key = x25519.X25519PrivateKey.from_private_bytes(x_private)
    ss_x = x_key.exchange(x25519.X25519PublicKey.from_public_bytes(ct_x))
    pk_x = x_key.public_key().public_bytes_raw()
    shared = hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + XWING_LABEL).digest()
    return shared, {"mlkem_shared_secret": ss_m, "x25519_shared_secret": ss_x}


def _kem_dhkem_x25519(private: bytes, enc: bytes) -> tuple[bytes, dict[str, bytes]]:
    key = x25519.X25519PrivateKey.from_private_bytes(private)
    dh = key.exchange(x25519.X25519PublicKey.from_public_bytes(enc))
    kem_context = enc + key.public_key().public_bytes_raw()
    kem_suite = b"KEM" + _i2osp(HPKE_IDS["X25519"][0], 2)
    eae_prk = _labeled_extract(kem_suite, b"", b"eae_prk", dh)
    shared = _labeled_expand(kem_suite, eae_prk, b"shared_secret", kem_context, 32)
    return shared, {"x25519_dh": dh}


def open_wrap_traced(kem: KemName, private: bytes, wrap: bytes, info: bytes) -> WrapTrace:
    """Open ``wrap`` (HPKE enc then ciphertext) with ``private`` and ``info``, keeping
    every intermediate value.

    Raises:
        cryptography.exceptions.InvalidTag: the wrap does not open.
        ValueError: a key or the wrap has the wrong length.
    """
    kem_id, kdf_id, aead_id = HPKE_IDS[kem]
    n_enc = _MLKEM768_CT + _X25519 if kem == "MLKEM768-X25519" else _X25519
    enc, aead_ct = wrap[:n_enc], wrap[n_enc:]
    if kem == "MLKEM768-X25519":
        shared, secrets = _kem_xwing(private, enc)
    else:
        shared, secrets = _kem_dhkem_x25519(private, enc)
    suite_id = b"HPKE" + _i2osp(kem_id, 2) + _i2osp(kdf_id, 2) + _i2osp(aead_id, 2)
    # KeySchedule(mode_base = 0, shared_secret, info, psk = "", psk_id = "")
    psk_id_hash = _labeled_extract(suite_id, b"", b"psk_id_hash", b"")
    info_hash = _labeled_extract(suite_id, b"", b"info_hash", info)
    context = b"\x00" + psk_id_hash + info_hash
    secret = _labeled_extract(suite_id, shared, b"secret", b"")
    key = _labeled_expand(suite_id, secret, b"key", context, 32)
    base_nonce = _labeled_expand(suite_id, secret, b"base_nonce", context, 12)
    # Single shot: sequence number 0, so the nonce is base_nonce itself; no aad.
    plaintext = AESGCM(key).decrypt(base_nonce, aead_ct, b"")
    return WrapTrace(suite_id, enc, aead_ct, secrets, shared, key, base_nonce, plaintext)
