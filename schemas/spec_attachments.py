"""The attachments of the spec's test vectors (ADR 17): two files of one bulletin, cut into
chunks, sealed and digested as docs/spec/attachments.md writes it, and the chunk requests.

A file's bytes are fixed by a label (SHAKE-256, ``schemas.spec_keys.seed``) and chunk
encryption is deterministic given its key, so everything here follows from the content
key of the envelope that carries the files (kept in ``envelopes.json``, see
``schemas.spec_envelopes``). Each value is computed from the spec's formulas and checked
against ``schemas.attachments``. Files are written by ``schemas.spec_vectors``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from schemas.agency import ErrorReply, encode_reply
from schemas.attachments import (
    CHUNK_HEADER,
    CHUNK_KIND,
    MIN_CHUNK_BYTES,
    AttachmentAsk,
    AttachmentMeta,
    AttachmentRef,
    ChunkDigest,
    ChunkGet,
    ChunkPut,
    ChunksHeld,
    ChunkStored,
    attachment_key,
    chunk_count,
    open_chunk,
    seal_chunk,
)
from schemas.canonical import b64e, canonical_json
from schemas.errors import DecryptionError
from schemas.spec_keys import hex_of, seed, text_of
from schemas.subjects import attach_api_subject

__all__ = ["CHUNK_SIZE", "FILES", "attachments_doc", "metas", "seal_files"]

CHUNK_SIZE = MIN_CHUNK_BYTES  # the smallest a header may sign: two chunks for a small file
# (name, media type, size): a file of one full chunk and a short last one, and an empty one.
FILES = (
    ("captura.bin", "application/octet-stream", CHUNK_SIZE + 45),
    ("vacío.txt", "text/plain", 0),
)
_MAX_ATTACHMENT_BYTES = 256 * 1024 * 1024  # the broker's default limits (broker.config)
_MAX_ATTACHMENTS = 16


def plaintext(index: int) -> bytes:
    """The bytes of file ``index``: SHAKE-256 of the vectors' domain and a label."""
    return seed(f"attachment/{index}", FILES[index][2])


def metas() -> tuple[AttachmentMeta, ...]:
    return tuple(AttachmentMeta(name=n, media_type=m) for n, m, _ in FILES)


def _key(content_key: bytes, bulletin_id: str, index: int) -> tuple[bytes, bytes]:
    info = b"istmo/v1/attachment\x00" + bulletin_id.encode() + b"\x00" + struct.pack(">I", index)
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=bytes(32), info=info).derive(content_key)
    if key != attachment_key(content_key, bulletin_id, index):
        raise AssertionError("the attachment key differs from the spec's")
    return info, key


def _chunks(key: bytes, bulletin_id: str, index: int, data: bytes) -> list[dict[str, Any]]:
    n = chunk_count(len(data), CHUNK_SIZE)
    out = []
    for j in range(n):
        last = j == n - 1
        piece = data[j * CHUNK_SIZE : (j + 1) * CHUNK_SIZE]
        nonce = j.to_bytes(11, "big") + bytes([last])
        aad = b"istmo/v1/chunk\x00" + bulletin_id.encode() + struct.pack(">IQB", index, j, last)
        ct = AESGCM(key).encrypt(nonce, piece, aad)
        if ct != seal_chunk(key, bulletin_id, index, j, piece, last=last):
            raise AssertionError("a chunk differs from the spec's")
        if open_chunk(key, bulletin_id, index, j, ct, last=last) != piece:
            raise AssertionError("a chunk does not open")
        out.append(
            {
                "chunk": j,
                "last": last,
                "plain_bytes": len(piece),
                "nonce_hex": hex_of(nonce),
                "aad_hex": hex_of(aad),
                "ct": b64e(ct),
                "ct_sha256": hashlib.sha256(ct).hexdigest(),
            }
        )
    return out


def _digest(index: int, chunks: list[dict[str, Any]]) -> tuple[bytes, str]:
    head = b"istmo/v1/chunks\x00" + struct.pack(">IQ", index, len(chunks))
    body = b"".join(bytes.fromhex(c["ct_sha256"]) for c in chunks)
    check = ChunkDigest(index, len(chunks))
    for c in chunks:
        check.add(bytes.fromhex(c["ct_sha256"]))
    digest = hashlib.sha256(head + body).hexdigest()
    if digest != check.hexdigest():
        raise AssertionError("the chunk digest differs from the spec's")
    return head + body, digest


def seal_files(content_key: bytes, bulletin_id: str) -> tuple[AttachmentRef, ...]:
    """The signed references of ``FILES`` for a bulletin with this content key."""
    refs = []
    for i, (_, _, size) in enumerate(FILES):
        _, key = _key(content_key, bulletin_id, i)
        _, digest = _digest(i, _chunks(key, bulletin_id, i, plaintext(i)))
        refs.append(
            AttachmentRef(
                size=size,
                chunk_size=CHUNK_SIZE,
                chunks=chunk_count(size, CHUNK_SIZE),
                digest=digest,
            )
        )
    return tuple(refs)


def attachments_doc(case: dict[str, Any]) -> dict[str, Any]:
    """attachments.json, for the envelope ``case`` (as in envelopes.json) that carries
    ``FILES``: keys, chunks, digests, refusals and the chunk requests."""
    content_key = bytes.fromhex(case["content_key_hex"])
    header = json.loads(case["header_canonical"])
    bid = header["bulletin_id"]
    files = []
    for i, (name, media_type, size) in enumerate(FILES):
        info, key = _key(content_key, bid, i)
        chunks = _chunks(key, bid, i, plaintext(i))
        digest_input, digest = _digest(i, chunks)
        ref = header["attachments"][i]
        if (ref["digest"], ref["size"], ref["chunks"]) != (digest, size, len(chunks)):
            raise ValueError("the envelope signs other attachments")
        files.append(
            {
                "index": i,
                "name": name,
                "media_type": media_type,
                "size": size,
                "chunk_size": CHUNK_SIZE,
                "plaintext_label": f"attachment/{i}",
                "plaintext_sha256": hashlib.sha256(plaintext(i)).hexdigest(),
                "key_info_hex": hex_of(info),
                "key_hex": hex_of(key),
                "chunks": chunks,
                "digest_input_hex": hex_of(digest_input),
                "digest": digest,
            }
        )
    return {
        "description": "The attachments of envelopes.json case 'attachments' "
        "(attachments.md). Each file's plaintext is SHAKE-256('istmo spec vectors' 0x00 "
        "plaintext_label) of its size. key: HKDF-SHA256 of the content key; each chunk's "
        "nonce, associated data, ciphertext (base64, tag appended) and its SHA-256; the "
        "digest the header signs. failures: chunks opened where they do not belong. "
        "exchanges: the chunk requests on istmo.api.<agency>.att.<op>.",
        "envelope_case": case["name"],
        "bulletin_id": bid,
        "content_key_hex": case["content_key_hex"],
        "files": files,
        "failures": _failures(files, bid),
        "exchanges": _exchanges(files, bid, header.get("expires_at")),
    }


def _failures(files: list[dict[str, Any]], bid: str) -> list[dict[str, Any]]:
    """Chunks a recipient must refuse (``chunk_invalid``): each opened with one binding
    changed."""
    out: list[dict[str, Any]] = [
        {
            "why": "chunk 0 opened as the last chunk: a file cut short after it",
            "key_of": 0,
            "ct_of": [0, 0],
            "open_as": {"attachment": 0, "chunk": 0, "last": True},
        },
        {
            "why": "the last chunk opened as not last: a file that claims to go on",
            "key_of": 0,
            "ct_of": [0, 1],
            "open_as": {"attachment": 0, "chunk": 1, "last": False},
        },
        {
            "why": "chunk 1 opened as chunk 0: chunks swapped",
            "key_of": 0,
            "ct_of": [0, 1],
            "open_as": {"attachment": 0, "chunk": 0, "last": False},
        },
        {
            "why": "attachment 1's chunk opened as attachment 0's, under its key",
            "key_of": 0,
            "ct_of": [1, 0],
            "open_as": {"attachment": 0, "chunk": 0, "last": True},
        },
    ]
    for f in out:
        key = bytes.fromhex(files[f["key_of"]]["key_hex"])
        i, j = f["ct_of"]
        ct = base64.b64decode(files[i]["chunks"][j]["ct"])
        at = f["open_as"]
        try:
            open_chunk(key, bid, at["attachment"], at["chunk"], ct, last=at["last"])
        except DecryptionError as exc:
            f["fails"] = exc.code
            continue
        raise AssertionError(f"the failure vector '{f['why']}' opened")
    return out


def _exchanges(
    files: list[dict[str, Any]], bid: str, expires_at: int | None
) -> list[dict[str, Any]]:
    first = files[0]

    def put(j: int) -> dict[str, Any]:
        header = ChunkPut(
            bulletin_id=bid, attachment=0, chunk=j, chunk_size=CHUNK_SIZE, expires_at=expires_at
        ).model_dump(mode="json", exclude_none=True)
        return {
            "op": "put",
            "caller": "gt-police",
            "subject": attach_api_subject("gt-police", "put"),
            "headers": {CHUNK_HEADER: text_of(canonical_json(header))},
            "data": {"attachment": 0, "chunk": j},
            "reply": text_of(canonical_json(ChunkStored(chunk=j).model_dump(mode="json"))),
        }

    def have(stored: tuple[int, ...]) -> dict[str, Any]:
        held = ChunksHeld(
            stored=stored,
            max_attachment_bytes=_MAX_ATTACHMENT_BYTES,
            max_attachments=_MAX_ATTACHMENTS,
        )
        return {
            "op": "have",
            "caller": "gt-police",
            "subject": attach_api_subject("gt-police", "have"),
            "request": text_of(
                canonical_json(AttachmentAsk(bulletin_id=bid, attachment=0).model_dump(mode="json"))
            ),
            "reply": text_of(canonical_json(held.model_dump(mode="json"))),
        }

    def get(caller: str, j: int) -> dict[str, Any]:
        ask = ChunkGet(bulletin_id=bid, attachment=0, chunk=j).model_dump(mode="json")
        return {
            "op": "get",
            "caller": caller,
            "subject": attach_api_subject(caller, "get"),
            "request": text_of(canonical_json(ask)),
        }

    conflict = put(0)
    conflict["reply"] = text_of(
        encode_reply(
            ErrorReply.of(
                "chunk_conflict",
                "chunk 0 of attachment 0 is stored already with other content; publish the "
                "bulletin again (a new id)",
            )
        )
    )
    conflict["data"] = {"note": "other bytes than the stored chunk 0"}
    stranger = get("hn-police", 0)
    stranger["reply"] = text_of(
        encode_reply(
            ErrorReply.of(
                "not_found",
                "no bulletin with this id was routed to you, or it was withdrawn or expired",
            )
        )
    )
    return [
        have(()),
        *(put(c["chunk"]) for c in first["chunks"]),
        have(tuple(c["chunk"] for c in first["chunks"])),
        conflict,
        *(
            {**get("rc-drugs", c["chunk"]), "reply_headers": {"Istmo-Kind": CHUNK_KIND},
             "reply_data": {"attachment": 0, "chunk": c["chunk"]}}
            for c in first["chunks"]
        ),
        stranger,
    ]  # fmt: skip
