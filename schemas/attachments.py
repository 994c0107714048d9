"""Attachments: files sealed in chunks with keys derived from the bulletin's (ADR 17).

    header.attachments[i]    size, chunk size, chunk count, digest   (clear, signed)
    content.attachments[i]   file name, media type                   (inside the body)
                             and, in a forward only, the file's key K_i (ADR 20)
    chunk j of attachment i  AES-256-GCM(K_i, nonce(j, last), plaintext_j, aad(id, i, j, last))

Construction, pure, keys passed in:
  1. K_i = HKDF-SHA256(ikm = the bulletin's content key K, salt = none,
     info = "istmo/v1/attachment" || 0 || bulletin id || 0 || u32(i)): one key per file,
     bound to the bulletin and the file's place in it; K itself never touches a chunk.
  2. The plaintext is cut into ``chunk_size`` pieces (the last may be shorter; an empty
     file is one empty chunk). Chunk j is sealed with nonce = u88(j) || u8(last) and
     associated data "istmo/v1/chunk" || 0 || bulletin id || u32(i) || u64(j) || u8(last),
     as in the STREAM construction: a chunk moved to another place, a truncated file (no
     chunk flagged last where the header says the file ends) or a reordered one do not
     open.
  3. digest_i = SHA-256("istmo/v1/chunks" || 0 || u32(i) || u64(n) || SHA-256(c_0) || ... ||
     SHA-256(c_n-1)) over the chunk ciphertexts: it is signed with the header, so the
     broker, holding no key, can tell a stored chunk from a tampered one, and a recipient
     checks the whole file against what the originator signed.

A forward passes the original's files on without copying them (ADR 20): its citation
carries the original's references (``schemas.forwarding.Citation.attachments``), its body
each file's key K_i (``AttachmentMeta.key``: the derived keys only, never K), and its
recipient fetches the original's chunks through the forward; the chunks stay sealed under
the original's id.

Left to others: moving chunks (``clients.attachments``, ``broker.relay.attachments``) and
the envelope that carries the references (``schemas.envelope``, ``schemas.sealing``).
"""

from __future__ import annotations

import hashlib
import re
import struct
from typing import Annotated

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from schemas.errors import DecryptionError
from schemas.ids import BulletinIdStr
from schemas.limits import MAX_ATTACHMENT_BYTES, MAX_ATTACHMENTS

__all__ = [
    "CHUNK_HEADER",
    "CHUNK_KIND",
    "DEFAULT_CHUNK_BYTES",
    "MAX_ATTACHMENTS",
    "MAX_ATTACHMENT_BYTES",
    "MAX_CHUNK_BYTES",
    "MAX_CHUNK_REQUEST_BYTES",
    "MIN_CHUNK_BYTES",
    "TAG_BYTES",
    "AttachmentAsk",
    "AttachmentMeta",
    "AttachmentRef",
    "ChunkDigest",
    "ChunkGet",
    "ChunkPut",
    "ChunkStored",
    "ChunksHeld",
    "attachment_key",
    "chunk_count",
    "chunk_plain_size",
    "describe_bytes",
    "open_chunk",
    "safe_file_name",
    "seal_chunk",
]

# Protocol ceilings; a broker sets its own limits under them (``broker.config``).
# A chunk and its request fit NATS's message limit (2 MiB under ``istmo up``) with room.
MIN_CHUNK_BYTES = 64 * 1024
MAX_CHUNK_BYTES = 1024 * 1024
DEFAULT_CHUNK_BYTES = 512 * 1024
TAG_BYTES = 16
_KEY_BYTES = 32
MAX_NAME_CHARS = 255

_STRICT = ConfigDict(frozen=True, extra="forbid", strict=True)
Hex64 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
# type/subtype, as RFC 6838 restricts the names (no parameters).
MediaType = Annotated[
    str,
    StringConstraints(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,62}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,62}$"
    ),
]
# Canonical base64 of a 32-byte key: 43 characters, the last with its two low bits zero, "=".
FileKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$")]
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")


def describe_bytes(n: int) -> str:
    """``n`` bytes in words a user reads: "256 MiB", "1.5 GiB", "900 bytes"."""
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            value = n / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} bytes"


def chunk_count(size: int, chunk_size: int) -> int:
    """How many chunks a file of ``size`` bytes makes (an empty file is one chunk)."""
    return max(1, -(-size // chunk_size))


class AttachmentRef(BaseModel):
    """What the signed header says of one attachment: no name, no type, no content."""

    model_config = _STRICT

    size: int = Field(ge=0, le=MAX_ATTACHMENT_BYTES)
    chunk_size: int = Field(ge=MIN_CHUNK_BYTES, le=MAX_CHUNK_BYTES)
    chunks: int = Field(ge=1, le=MAX_ATTACHMENT_BYTES // MIN_CHUNK_BYTES + 1)
    digest: Hex64

    @model_validator(mode="after")
    def _count(self) -> AttachmentRef:
        if self.chunks != chunk_count(self.size, self.chunk_size):
            raise ValueError("chunks does not match size and chunk_size")
        return self


def safe_file_name(name: str) -> str:
    """``name`` if it is a plain file name (no directory, no control character, not
    ``.`` or ``..``, at most ``MAX_NAME_CHARS``), else ValueError."""
    if not 0 < len(name) <= MAX_NAME_CHARS or _UNSAFE_NAME.search(name):
        raise ValueError("a file name without directories or control characters")
    if name in (".", "..") or name != name.strip():
        raise ValueError("a file name without directories or surrounding spaces")
    return name


class AttachmentMeta(BaseModel):
    """What only the recipients read of one attachment: its name and media type, and, in
    a forward, the key the original's chunks of it open with (ADR 20; absent otherwise:
    a bulletin's own files take keys derived from its content key)."""

    model_config = _STRICT

    name: str
    media_type: MediaType = "application/octet-stream"
    key: FileKey | None = None

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        return safe_file_name(value)


def chunk_plain_size(ref: AttachmentRef, index: int) -> int:
    """The plaintext length of chunk ``index`` of ``ref`` (its ciphertext is ``TAG_BYTES``
    longer)."""
    if not 0 <= index < ref.chunks:
        raise ValueError(f"chunk {index} is outside 0..{ref.chunks - 1}")
    if index < ref.chunks - 1:
        return ref.chunk_size
    return ref.size - ref.chunk_size * (ref.chunks - 1)


def attachment_key(content_key: bytes, bulletin_id: str, index: int) -> bytes:
    """Step 1: the key of attachment ``index``, derived from the bulletin's content key."""
    if len(content_key) != _KEY_BYTES:
        raise ValueError("a content key is 32 bytes")
    info = b"istmo/v1/attachment\x00" + bulletin_id.encode() + b"\x00" + struct.pack(">I", index)
    return HKDF(algorithm=hashes.SHA256(), length=_KEY_BYTES, salt=None, info=info).derive(
        content_key
    )


def _nonce(chunk: int, last: bool) -> bytes:
    return chunk.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def _aad(bulletin_id: str, attachment: int, chunk: int, last: bool) -> bytes:
    return (
        b"istmo/v1/chunk\x00"
        + bulletin_id.encode()
        + struct.pack(">IQB", attachment, chunk, 1 if last else 0)
    )


def seal_chunk(
    key: bytes, bulletin_id: str, attachment: int, chunk: int, plain: bytes, *, last: bool
) -> bytes:
    """Step 2: the ciphertext (tag appended) of one chunk."""
    return AESGCM(key).encrypt(
        _nonce(chunk, last), plain, _aad(bulletin_id, attachment, chunk, last)
    )


def open_chunk(
    key: bytes, bulletin_id: str, attachment: int, chunk: int, ct: bytes, *, last: bool
) -> bytes:
    """Step 2 in reverse.

    Raises:
        DecryptionError: ``chunk_invalid``: altered, moved, or not the last where it
            claims to be (or the other way round).
    """
    try:
        return AESGCM(key).decrypt(
            _nonce(chunk, last), ct, _aad(bulletin_id, attachment, chunk, last)
        )
    except (InvalidTag, ValueError) as exc:
        raise DecryptionError("attachment chunk does not open", code="chunk_invalid") from exc


class ChunkDigest:
    """Step 3, fed one chunk ciphertext's SHA-256 at a time, in order."""

    def __init__(self, attachment: int, chunks: int) -> None:
        self._h = hashlib.sha256(b"istmo/v1/chunks\x00" + struct.pack(">IQ", attachment, chunks))
        self._left = chunks

    def add(self, chunk_sha256: bytes) -> None:
        """The next chunk's SHA-256 (of its ciphertext)."""
        if self._left <= 0 or len(chunk_sha256) != 32:
            raise ValueError("one 32-byte hash per chunk, no more than announced")
        self._h.update(chunk_sha256)
        self._left -= 1

    def hexdigest(self) -> str:
        """The digest, once every chunk was added."""
        if self._left:
            raise ValueError(f"{self._left} chunks not added yet")
        return self._h.hexdigest()


# ---------------------------------------------------------------- the chunk requests
# On istmo.api.<agency>.att.<op> (``schemas.subjects.attach_api_subject``):
#   put   headers Istmo-Chunk: canonical ChunkPut; data: the chunk ciphertext -> ChunkStored
#   have  AttachmentAsk -> ChunksHeld (which chunks of the caller's own upload are stored)
#   get   ChunkGet -> the chunk ciphertext (header Istmo-Kind: chunk), or an error reply
CHUNK_HEADER = "Istmo-Chunk"
CHUNK_KIND = "chunk"
MAX_CHUNK_REQUEST_BYTES = 1024


class ChunkPut(BaseModel):
    """Where one uploaded chunk goes: the caller's own bulletin, attachment and chunk."""

    model_config = _STRICT

    bulletin_id: BulletinIdStr
    attachment: int = Field(ge=0, lt=MAX_ATTACHMENTS)
    chunk: int = Field(ge=0, le=MAX_ATTACHMENT_BYTES // MIN_CHUNK_BYTES)
    chunk_size: int = Field(ge=MIN_CHUNK_BYTES, le=MAX_CHUNK_BYTES)
    # The bulletin's signed expiry, if any: its chunks go then (ADR 15's TTLs).
    expires_at: int | None = Field(default=None, ge=0, le=2**40)


class ChunkStored(BaseModel):
    """A put answered: the chunk is stored (now, or it was already, unchanged)."""

    model_config = _STRICT

    chunk: int = Field(ge=0)


class AttachmentAsk(BaseModel):
    """Which chunks of attachment ``attachment`` of the caller's upload are stored."""

    model_config = _STRICT

    bulletin_id: BulletinIdStr
    attachment: int = Field(ge=0, lt=MAX_ATTACHMENTS)


class ChunksHeld(BaseModel):
    """The chunks stored, and the broker's limits (so an SDK refuses before it uploads)."""

    model_config = _STRICT

    stored: tuple[int, ...] = Field(max_length=MAX_ATTACHMENT_BYTES // MIN_CHUNK_BYTES + 1)
    max_attachment_bytes: int = Field(ge=0)
    max_attachments: int = Field(ge=0)


class ChunkGet(BaseModel):
    """One chunk of a bulletin the caller published or was routed."""

    model_config = _STRICT

    bulletin_id: BulletinIdStr
    attachment: int = Field(ge=0, lt=MAX_ATTACHMENTS)
    chunk: int = Field(ge=0, le=MAX_ATTACHMENT_BYTES // MIN_CHUNK_BYTES)
