"""The relay's checks on attachments (ADR 17): pure, every input passed in.

``check_put`` bounds one uploaded chunk before it is stored; ``check_attachments`` is
step 10 of an ingest message's checks (``broker.relay.plan``): every chunk the signed
header names is stored, under the originator, with the size it must have, and the
chunks' hashes add up to the signed digest. ``check_cited`` is the same for the files a
forward cites, against the original's chunks (ADR 20). The relay hashes ciphertext only:
it holds no key that opens a chunk. ``may_fetch`` says who may download a chunk.

Left to others: storing and reading chunks (``broker.relay.attachments``), the crypto
(``schemas.attachments``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from schemas.attachments import (
    TAG_BYTES,
    AttachmentRef,
    ChunkDigest,
    ChunkPut,
    chunk_plain_size,
    describe_bytes,
)
from schemas.errors import EnvelopeError

__all__ = [
    "AttachmentLimits",
    "StoredChunk",
    "check_attachments",
    "check_cited",
    "check_put",
    "may_fetch",
]


@dataclass(frozen=True)
class AttachmentLimits:
    """A broker's limits on attachments (``broker.config.Settings``)."""

    max_attachment_bytes: int
    max_attachments: int


@dataclass(frozen=True)
class StoredChunk:
    """What the relay recorded of a stored chunk: its ciphertext's length and SHA-256."""

    size: int
    sha256: bytes


def _too_large(limits: AttachmentLimits) -> EnvelopeError:
    return EnvelopeError(
        f"an attachment is over this broker's limit of "
        f"{describe_bytes(limits.max_attachment_bytes)}: send a smaller file, or split it",
        code="attachment_too_large",
    )


def check_put(put: ChunkPut, size: int, limits: AttachmentLimits) -> None:
    """Bounds of one uploaded chunk, before anything is stored.

    Raises:
        EnvelopeError: ``attachment_too_large`` (past the broker's file size limit),
            ``too_many_attachments``, or ``malformed`` (a chunk longer than its size).
    """
    # 1. Within the number of attachments a bulletin may carry.
    if put.attachment >= limits.max_attachments:
        raise EnvelopeError(
            f"a bulletin carries at most {limits.max_attachments} attachments on this broker",
            code="too_many_attachments",
        )
    # 2. The chunk starts inside the largest file the broker takes.
    if put.chunk * put.chunk_size >= max(limits.max_attachment_bytes, 1):
        raise _too_large(limits)
    # 3. No longer than a chunk of that size sealed.
    if not TAG_BYTES <= size <= put.chunk_size + TAG_BYTES:
        raise EnvelopeError(
            f"a chunk is {TAG_BYTES} to {put.chunk_size + TAG_BYTES} bytes of ciphertext",
            code="malformed",
        )


def check_attachments(
    refs: tuple[AttachmentRef, ...] | None,
    stored: Mapping[tuple[int, int], StoredChunk],
    limits: AttachmentLimits,
) -> None:
    """Step 10: the attachments the signed header names are stored as signed.

    Args:
        refs: ``header.attachments``.
        stored: what the relay holds under the originator for this bulletin, by
            (attachment, chunk).
        limits: the broker's limits.

    Raises:
        EnvelopeError: ``too_many_attachments``, ``attachment_too_large``,
            ``attachment_missing`` (a chunk is not stored: upload it before publishing) or
            ``attachment_mismatch`` (a stored chunk is not the one signed).
    """
    if not refs:
        return
    if len(refs) > limits.max_attachments:
        raise EnvelopeError(
            f"a bulletin carries at most {limits.max_attachments} attachments on this broker",
            code="too_many_attachments",
        )
    for i, ref in enumerate(refs):
        if ref.size > limits.max_attachment_bytes:
            raise _too_large(limits)
        _check_stored(i, ref, stored)


def _check_stored(
    i: int, ref: AttachmentRef, stored: Mapping[tuple[int, int], StoredChunk]
) -> None:
    """File ``i``'s chunks are all in ``stored``, of the sizes ``ref`` gives, and their
    hashes add up to its digest.

    Raises:
        EnvelopeError: ``attachment_missing`` or ``attachment_mismatch``.
    """
    missing = [j for j in range(ref.chunks) if (i, j) not in stored]
    if missing:
        raise EnvelopeError(
            f"attachment {i}: {len(missing)} of {ref.chunks} chunks are not stored "
            f"(first: {missing[0]}); upload them before publishing the bulletin",
            code="attachment_missing",
        )
    digest = ChunkDigest(i, ref.chunks)
    for j in range(ref.chunks):
        chunk = stored[(i, j)]
        if chunk.size != chunk_plain_size(ref, j) + TAG_BYTES:
            raise EnvelopeError(
                f"attachment {i}: chunk {j} is {chunk.size} bytes, not the signed size",
                code="attachment_mismatch",
            )
        digest.add(chunk.sha256)
    if digest.hexdigest() != ref.digest:
        raise EnvelopeError(
            f"attachment {i}: the stored chunks are not the ones signed",
            code="attachment_mismatch",
        )


def check_cited(
    refs: tuple[AttachmentRef, ...] | None, stored: Mapping[tuple[int, int], StoredChunk]
) -> None:
    """The files a forward cites are the original's, all of them, as its originator
    signed them (ADR 20): a forward never leaves a file behind unsaid.

    The original's chunks are write-once, and the relay checked them against the
    originator's signed references when it accepted the original, so a cited reference
    that adds up over them is the originator's. No limit applies: the original passed
    them.

    Args:
        refs: the forward's ``forward_of.attachments``.
        stored: what the attachment stream holds of the original, under its originator,
            by (attachment, chunk).

    Raises:
        EnvelopeError: ``forward_attachments_mismatch``: a cited file is not stored as
            cited, or the forward leaves one of the original's files out.
    """
    refs = refs or ()
    for i, ref in enumerate(refs):
        try:
            _check_stored(i, ref, stored)
        except EnvelopeError as exc:
            raise EnvelopeError(
                f"the forward's file {i} is not the original's as its originator signed it "
                "(or is no longer stored): forward it again as you received it",
                code="forward_attachments_mismatch",
            ) from exc
    left_out = sorted({i for i, _ in stored} - set(range(len(refs))))
    if left_out:
        raise EnvelopeError(
            f"the forward leaves out the original's file {left_out[0]}: a forward passes "
            "on every file of the original (the SDK does; upgrade an older one)",
            code="forward_attachments_mismatch",
        )


def may_fetch(
    caller: str, *, originator: str, routed: Collection[str], withdrawn: bool, expired: bool
) -> bool:
    """Whether ``caller`` may download a bulletin's chunks: its originator, or an agency
    it was routed to, while it is neither withdrawn nor expired."""
    if withdrawn or expired:
        return False
    return caller == originator or caller in routed
