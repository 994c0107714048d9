"""Documents signed by their author, with the key id and signature beside their fields: a
receipt (the recipient's), a withdrawal (the originator's).

The signed bytes are ``istmo/v1/<domain>`` NUL, then the canonical JSON of every field but
``sig``: the domain keeps a signature made for one kind of document from passing as
another's.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel

from schemas.canonical import b64d, b64e, canonical_json
from schemas.errors import SignatureError
from schemas.keys import SigningKey, VerifyKey

__all__ = ["sign_document", "signing_input", "verify_document"]

D = TypeVar("D", bound=BaseModel)


def signing_input(domain: str, doc: BaseModel) -> bytes:
    """The bytes ``doc``'s signature covers."""
    body = doc.model_dump(mode="json", exclude={"sig"})
    return b"istmo/v1/" + domain.encode("ascii") + b"\x00" + canonical_json(body)


def sign_document(domain: str, unsigned: D, key: SigningKey) -> D:
    """``unsigned`` (its ``sig`` empty) with ``sig`` filled in by ``key``."""
    return unsigned.model_copy(update={"sig": b64e(key.sign(signing_input(domain, unsigned)))})


def verify_document(domain: str, doc: BaseModel, *, kid: str, sig: str, key: VerifyKey) -> None:
    """Raise SignatureError unless ``doc`` (naming ``kid`` and carrying ``sig``) is signed
    by ``key``; EnvelopeError if ``sig`` is not canonical base64."""
    if key.kid != kid:
        raise SignatureError(f"{domain} is signed by another key", code="key_not_bound_to_sender")
    key.verify(b64d(sig, field=f"{domain}.sig", max_bytes=64), signing_input(domain, doc))
