"""Rotating an agency's keys on its side: new keys, the request that registers them
(signed by the current key and the new one, ``schemas.rotation``), and the keystore that
holds old and new. Writing the keystore and asking the broker are ``IstmoClient``'s.
"""

from __future__ import annotations

from schemas.canonical import b64e
from schemas.directory import EncryptionKeyRecord
from schemas.keys import EncryptionKey, SigningKey
from schemas.keystore import KeystoreFile, StoredEncryptionKey, StoredSigningKey
from schemas.rotation import RotationRequest, sign_rotation

__all__ = ["new_keys"]


def new_keys(keystore: KeystoreFile, *, now: int) -> tuple[RotationRequest, KeystoreFile]:
    """Fresh signing and encryption keys for ``keystore``'s agency.

    Returns:
        The rotation request to send, and the keystore with the new keys added as the
        current ones (the old ones stay: old bulletins still open).
    """
    new_sk = SigningKey.generate()
    new_ek = EncryptionKey.generate(keystore.encryption_keys[-1].kem)
    pub = new_ek.public_key
    request = sign_rotation(
        agency=keystore.agency,
        issued_at=now,
        current=keystore.signing_key(),
        new=new_sk,
        encryption=EncryptionKeyRecord(
            kid=pub.kid, kem=pub.kem, public=b64e(pub.public), created_at=now
        ),
    )
    rotated = keystore.model_copy(
        update={
            "signing_keys": (
                *keystore.signing_keys,
                StoredSigningKey(
                    kid=new_sk.verify_key.kid, private=b64e(new_sk.private), created_at=now
                ),
            ),
            "encryption_keys": (
                *keystore.encryption_keys,
                StoredEncryptionKey(
                    kid=pub.kid, kem=pub.kem, private=b64e(new_ek.private), created_at=now
                ),
            ),
        }
    )
    return request, rotated
