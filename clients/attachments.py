"""Moving attachments: sealing files chunk by chunk up to the broker, and back (ADR 17).

``upload`` reads a file one chunk at a time, seals each chunk with the attachment's key
(``schemas.attachments``), and sends it on ``istmo.api.<agency>.att.put`` with a few
chunks under way at once; it first asks which chunks are stored already (``att.have``)
and sends only the rest, so a publish that lost its connection and runs again resumes.
It returns the signed reference (size, chunk count, digest) for the header.

``download`` asks ``att.get`` for each chunk, a few ahead, checks each against the
signed digest as it goes, opens it, and appends it to ``<file>.part``; the hashes of the
chunks written are kept beside it (``<file>.part.sums``), so a download that stops
resumes from the last chunk it verified. The file gets its name only once the whole of it
matched the originator's signed digest. Neither side ever holds more than a few chunks.

Left to others: the crypto and the wire models (``schemas.attachments``), the relay's side
(``broker.relay.attachments``), choosing names and folders (``clients.sdk``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import mimetypes
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nats.errors
from nats.aio.client import Client as NATS
from pydantic import ValidationError

from clients.errors import AttachmentError
from clients.requests import read_reply
from clients.results import ReceivedAttachment
from schemas.agency import KIND_HEADER
from schemas.attachments import (
    CHUNK_HEADER,
    CHUNK_KIND,
    DEFAULT_CHUNK_BYTES,
    TAG_BYTES,
    AttachmentAsk,
    AttachmentMeta,
    AttachmentRef,
    ChunkDigest,
    ChunkGet,
    ChunkPut,
    ChunksHeld,
    ChunkStored,
    chunk_count,
    describe_bytes,
    open_chunk,
    seal_chunk,
)
from schemas.canonical import canonical_json
from schemas.errors import BusUnavailable, DecryptionError, EnvelopeError, IstmoError
from schemas.subjects import attach_api_subject

__all__ = [
    "IN_FLIGHT",
    "TRANSFER_TIMEOUT_S",
    "Attachment",
    "download",
    "limits",
    "upload",
]

log = logging.getLogger("istmo.sdk")

IN_FLIGHT = 4  # chunks under way at once, each way
REQUEST_TIMEOUT_S = 10.0  # one chunk request
# How long one chunk may keep failing (the connection dropped, a relay restarting) before
# the transfer gives up; the next attempt resumes where this one stopped.
TRANSFER_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Attachment:
    """A file to send with a bulletin.

    Attributes:
        path: where it is on this machine (read once, chunk by chunk, while publishing).
        name: the name recipients see (the path's by default); a plain name, no folders.
        media_type: e.g. ``application/pdf`` (guessed from the name by default).
    """

    path: Path
    name: str | None = None
    media_type: str | None = None

    def meta(self) -> AttachmentMeta:
        """The name and media type sealed inside the bulletin.

        Raises:
            EnvelopeError: the name is not a plain file name, or the media type is not
                ``type/subtype`` (code ``malformed``).
        """
        name = self.name or self.path.name
        media = self.media_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
        try:
            return AttachmentMeta(name=name, media_type=media)
        except ValidationError as exc:
            raise EnvelopeError(
                f"attachment {name[:60]!r}: give a plain file name (no folders or control "
                "characters) and a media type such as application/pdf",
                code="malformed",
            ) from exc


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first error of a task group's that is not a cancellation (what a caller of a
    transfer catches: an ``IstmoError``, not a group)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group


@dataclass(frozen=True)
class Limits:
    """The broker's limits on attachments."""

    max_attachment_bytes: int
    max_attachments: int


async def _request(
    nc: NATS, subject: str, data: bytes, headers: dict[str, str] | None, *, deadline_s: float
) -> tuple[bytes, dict[str, str]]:
    """One chunk request, asked again while nobody answers (a dropped connection that
    nats-py is re-establishing, a relay restarting) until ``deadline_s`` of failures.

    Raises:
        BusUnavailable: nobody answered for ``deadline_s`` seconds.
    """
    give_up = time.monotonic() + deadline_s
    delay = 0.2
    while True:
        try:
            msg = await nc.request(subject, data, timeout=REQUEST_TIMEOUT_S, headers=headers)
            return msg.data, dict(msg.headers or {})
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.Error) as exc:
            if time.monotonic() >= give_up:
                raise BusUnavailable(
                    f"the broker did not answer a chunk request for {deadline_s:.0f} s "
                    "(is the relay running?); run it again to resume"
                ) from exc
            log.info("chunk request not answered (%s); asking again", type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def _held(
    nc: NATS, agency: str, bulletin_id: str, attachment: int, *, deadline_s: float
) -> ChunksHeld:
    ask = AttachmentAsk(bulletin_id=bulletin_id, attachment=attachment)
    raw, _ = await _request(
        nc,
        attach_api_subject(agency, "have"),
        canonical_json(ask.model_dump(mode="json")),
        None,
        deadline_s=deadline_s,
    )
    return read_reply(raw, ChunksHeld, op="att.have")


async def limits(nc: NATS, agency: str, bulletin_id: str) -> Limits:
    """The broker's limits, asked with the first attachment of ``bulletin_id``.

    Raises:
        BusUnavailable: the broker did not answer.
        IstmoError: it refused (``clients.errors``).
    """
    held = await _held(nc, agency, bulletin_id, 0, deadline_s=REQUEST_TIMEOUT_S)
    return Limits(held.max_attachment_bytes, held.max_attachments)


async def upload(
    nc: NATS,
    agency: str,
    path: Path,
    *,
    key: bytes,
    bulletin_id: str,
    index: int,
    expires_at: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_BYTES,
    deadline_s: float = TRANSFER_TIMEOUT_S,
    progress: Callable[[int], None] | None = None,
) -> AttachmentRef:
    """Seal ``path`` chunk by chunk and store what the broker does not hold yet.

    Args:
        key: the attachment's key (``schemas.attachments.attachment_key``).
        bulletin_id, index: the bulletin it goes with and its place there.
        expires_at: the bulletin's expiry, if any: its chunks go then.
        progress: called with the bytes of the file done so far.

    Returns:
        The reference to sign in the header.

    Raises:
        EnvelopeError: the file is over the broker's limit (``attachment_too_large``,
            saying the limit) or changed while it was read.
        BusUnavailable: the broker stopped answering for ``deadline_s``.
        IstmoError: the broker refused a chunk (``clients.errors``).
    """
    size = path.stat().st_size  # noqa: ASYNC240  # one stat, before anything is read
    held = await _held(nc, agency, bulletin_id, index, deadline_s=deadline_s)
    if size > held.max_attachment_bytes:
        raise EnvelopeError(
            f"{path.name} is {describe_bytes(size)}, over the broker's limit of "
            f"{describe_bytes(held.max_attachment_bytes)} per attachment: send a smaller "
            "file, or split it",
            code="attachment_too_large",
        )
    if index >= held.max_attachments:
        raise EnvelopeError(
            f"the broker takes at most {held.max_attachments} attachments per bulletin",
            code="too_many_attachments",
        )
    stored = set(held.stored)
    chunks = chunk_count(size, chunk_size)
    digest = ChunkDigest(index, chunks)
    subject = attach_api_subject(agency, "put")
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def put(j: int, ct: bytes) -> None:
        try:
            header = ChunkPut(
                bulletin_id=bulletin_id,
                attachment=index,
                chunk=j,
                chunk_size=chunk_size,
                expires_at=expires_at,
            ).model_dump(mode="json", exclude_none=True)
            raw, _ = await _request(
                nc,
                subject,
                ct,
                {CHUNK_HEADER: canonical_json(header).decode()},
                deadline_s=deadline_s,
            )
            read_reply(raw, ChunkStored, op="att.put")
        finally:
            gate.release()

    done = 0
    try:
        with path.open("rb") as f:
            async with asyncio.TaskGroup() as tg:
                for j in range(chunks):
                    plain = f.read(chunk_size)
                    last = j == chunks - 1
                    if len(plain) != (size - chunk_size * j if last else chunk_size):
                        raise EnvelopeError(
                            f"{path.name} changed while it was read: send it again once it "
                            "is complete",
                            code="malformed",
                        )
                    ct = seal_chunk(key, bulletin_id, index, j, plain, last=last)
                    digest.add(hashlib.sha256(ct).digest())
                    done += len(plain)
                    if j not in stored:
                        await gate.acquire()
                        tg.create_task(put(j, ct))
                    if progress is not None:
                        progress(done)
                if f.read(1):
                    raise EnvelopeError(
                        f"{path.name} grew while it was read: send it again once it is complete",
                        code="malformed",
                    )
    except BaseExceptionGroup as group:
        raise first_error(group) from None
    return AttachmentRef(size=size, chunk_size=chunk_size, chunks=chunks, digest=digest.hexdigest())


async def _fetch(
    nc: NATS, agency: str, bulletin_id: str, att: int, j: int, *, deadline_s: float
) -> bytes:
    ask = ChunkGet(bulletin_id=bulletin_id, attachment=att, chunk=j)
    raw, headers = await _request(
        nc,
        attach_api_subject(agency, "get"),
        canonical_json(ask.model_dump(mode="json")),
        None,
        deadline_s=deadline_s,
    )
    if headers.get(KIND_HEADER) != CHUNK_KIND:
        read_reply(raw, ChunkStored, op="att.get")  # raises the error it carries
        raise EnvelopeError("the broker's answer to att.get is not a chunk", code="malformed")
    return raw


async def download(
    nc: NATS,
    agency: str,
    bulletin_id: str,
    att: ReceivedAttachment,
    dest: Path,
    *,
    deadline_s: float = TRANSFER_TIMEOUT_S,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Fetch, check and open ``att`` of bulletin ``bulletin_id`` (the bulletin received:
    for a forward, the forward, through which the original's chunks come) into ``dest``;
    resume a download that stopped.

    Raises:
        AttachmentError: a chunk is missing or damaged at the broker, or does not open, or
            the file does not match the originator's signed digest: nothing is kept.
        BusUnavailable: the broker stopped answering for ``deadline_s`` (run it again:
            it resumes).
        IstmoError: the broker refused (``NotFound``: not routed to this agency, or
            withdrawn or expired).
    """
    # A forward's file is the original's: fetched through the forward, sealed under the
    # original's id (ADR 20).
    sealed_under = att.original or bulletin_id
    part = dest.with_name(dest.name + ".part")
    sums_path = dest.with_name(dest.name + ".part.sums")
    digest = ChunkDigest(att.index, att.chunks)
    start = _resume(part, sums_path, att, digest)
    ahead: deque[asyncio.Task[bytes]] = deque()
    try:
        with part.open("r+b" if start else "wb") as out, sums_path.open("ab") as sums:
            out.seek(start * att.chunk_size)
            out.truncate()
            next_j = start
            for j in range(start, att.chunks):
                while next_j < att.chunks and len(ahead) < IN_FLIGHT:
                    ahead.append(
                        asyncio.create_task(
                            _fetch(
                                nc, agency, bulletin_id, att.index, next_j, deadline_s=deadline_s
                            )
                        )
                    )
                    next_j += 1
                ct = await ahead.popleft()
                last = j == att.chunks - 1
                expected = (att.size - att.chunk_size * j if last else att.chunk_size) + TAG_BYTES
                if len(ct) != expected:
                    raise AttachmentError(
                        f"{att.name}: chunk {j} is not the size its originator signed",
                        code="chunk_invalid",
                    )
                sha = hashlib.sha256(ct).digest()
                try:
                    plain = open_chunk(att.key, sealed_under, att.index, j, ct, last=last)
                except DecryptionError as exc:
                    raise AttachmentError(
                        f"{att.name}: chunk {j} does not open: it was altered", code=exc.code
                    ) from exc
                out.write(plain)
                out.flush()
                sums.write(sha)
                sums.flush()
                digest.add(sha)
                if progress is not None:
                    progress(min(att.size, (j + 1) * att.chunk_size))
            if digest.hexdigest() != att.digest:
                raise AttachmentError(
                    f"{att.name}: the chunks are not the ones its originator signed",
                    code="digest_mismatch",
                )
            os.fsync(out.fileno())
    except IstmoError as exc:
        # Refused (altered, missing, not routed, withdrawn): nothing of it is kept. The
        # broker not answering keeps what was verified, for the next attempt.
        if not isinstance(exc, BusUnavailable):
            part.unlink(missing_ok=True)
            sums_path.unlink(missing_ok=True)
        raise
    finally:
        for task in ahead:
            task.cancel()
        if ahead:
            await asyncio.gather(*ahead, return_exceptions=True)
    part.replace(dest)
    sums_path.unlink(missing_ok=True)
    return dest


def _resume(part: Path, sums_path: Path, att: ReceivedAttachment, digest: ChunkDigest) -> int:
    """How many chunks an earlier download verified and wrote (their hashes fed to
    ``digest``); 0 to start afresh."""
    if not (part.exists() and sums_path.exists()):
        part.unlink(missing_ok=True)
        sums_path.unlink(missing_ok=True)
        return 0
    sums = sums_path.read_bytes()
    done = min(len(sums) // 32, att.chunks - 1, part.stat().st_size // att.chunk_size)
    for k in range(done):
        digest.add(sums[32 * k : 32 * (k + 1)])
    with sums_path.open("r+b") as f:
        f.truncate(32 * done)
    return done
