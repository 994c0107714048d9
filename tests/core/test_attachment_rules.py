"""Attachments as pure logic (ADR 17): the chunk construction in ``schemas.attachments``,
the references in the envelope, and the relay's checks in
``broker.relay.attachment_checks``. No NATS, no files."""

from __future__ import annotations

import hashlib
import os

import pytest
from pydantic import ValidationError

from broker.relay.attachment_checks import (
    AttachmentLimits,
    StoredChunk,
    check_attachments,
    check_cited,
    check_put,
    may_fetch,
)
from schemas.attachments import (
    MIN_CHUNK_BYTES,
    TAG_BYTES,
    AttachmentMeta,
    AttachmentRef,
    ChunkDigest,
    ChunkPut,
    attachment_key,
    chunk_count,
    chunk_plain_size,
    describe_bytes,
    open_chunk,
    seal_chunk,
)
from schemas.canonical import b64d, b64e
from schemas.envelope import Content, Envelope, Header
from schemas.errors import DecryptionError, EnvelopeError
from schemas.forwarding import Citation
from schemas.ids import AgencyId, new_bulletin_id
from schemas.keys import EncryptionKey, SigningKey
from schemas.labels import Classification, Labels, Tlp
from schemas.sealing import new_content_key, open_envelope_keyed, seal

BID = "0b8f3c2e-7d1a-4f6b-9c3e-2a1b4c5d6e7f"
KEY = attachment_key(bytes(range(32)), BID, 0)
CS = MIN_CHUNK_BYTES


def sealed_file(data: bytes, att: int = 0, chunk_size: int = CS) -> tuple[AttachmentRef, dict]:
    """``data`` sealed as attachment ``att``: its reference and its chunks by (att, j)."""
    n = chunk_count(len(data), chunk_size)
    key = attachment_key(bytes(range(32)), BID, att)
    digest = ChunkDigest(att, n)
    chunks = {}
    for j in range(n):
        ct = seal_chunk(
            key, BID, att, j, data[j * chunk_size : (j + 1) * chunk_size], last=j == n - 1
        )
        digest.add(hashlib.sha256(ct).digest())
        chunks[(att, j)] = ct
    ref = AttachmentRef(size=len(data), chunk_size=chunk_size, chunks=n, digest=digest.hexdigest())
    return ref, chunks


def stored(chunks: dict) -> dict[tuple[int, int], StoredChunk]:
    return {k: StoredChunk(len(ct), hashlib.sha256(ct).digest()) for k, ct in chunks.items()}


# --------------------------------------------------------------------------- chunks
@pytest.mark.parametrize(
    ("size", "chunks", "last"),
    [(0, 1, 0), (1, 1, 1), (CS - 1, 1, CS - 1), (CS, 1, CS), (CS + 1, 2, 1), (3 * CS, 3, CS)],
)
def test_chunk_count_and_sizes(size: int, chunks: int, last: int) -> None:
    assert chunk_count(size, CS) == chunks
    ref = AttachmentRef(size=size, chunk_size=CS, chunks=chunks, digest="0" * 64)
    assert chunk_plain_size(ref, chunks - 1) == last
    assert sum(chunk_plain_size(ref, j) for j in range(chunks)) == size


@pytest.mark.parametrize(
    ("place", "why"),
    [
        ((0, 1, True), "the right place opens"),
        ((0, 2, True), "another chunk index"),
        ((1, 1, True), "another attachment"),
        ((0, 1, False), "not flagged last: a truncation"),
    ],
)
def test_a_chunk_opens_only_in_its_own_place(place: tuple[int, int, bool], why: str) -> None:
    ct = seal_chunk(KEY, BID, 0, 1, b"plain", last=True)
    att, j, last = place
    if place == (0, 1, True):
        assert open_chunk(KEY, BID, att, j, ct, last=last) == b"plain", why
        return
    with pytest.raises(DecryptionError) as refused:
        open_chunk(KEY, BID, att, j, ct, last=last)
    assert refused.value.code == "chunk_invalid", why


def test_keys_differ_by_bulletin_and_attachment_and_a_flipped_bit_does_not_open() -> None:
    content = bytes(range(32))
    keys = {attachment_key(content, b, i) for b in (BID, new_bulletin_id()) for i in (0, 1)}
    assert len(keys) == 4
    ct = bytearray(seal_chunk(KEY, BID, 0, 0, b"x" * 100, last=True))
    ct[5] ^= 1
    with pytest.raises(DecryptionError):
        open_chunk(KEY, BID, 0, 0, bytes(ct), last=True)
    with pytest.raises(DecryptionError):  # under another bulletin id
        open_chunk(
            KEY, new_bulletin_id(), 0, 0, seal_chunk(KEY, BID, 0, 0, b"", last=True), last=True
        )


def test_the_digest_commits_to_order_and_count() -> None:
    h = [hashlib.sha256(bytes([i])).digest() for i in range(3)]

    def digest(hashes: list[bytes], n: int, att: int = 0) -> str:
        d = ChunkDigest(att, n)
        for x in hashes:
            d.add(x)
        return d.hexdigest()

    base = digest(h, 3)
    assert digest([h[1], h[0], h[2]], 3) != base
    assert digest(h, 3, att=1) != base
    with pytest.raises(ValueError, match="not added"):
        digest(h[:2], 3)
    with pytest.raises(ValueError, match="no more than announced"):
        digest(h, 2)


# --------------------------------------------------------------------------- models
@pytest.mark.parametrize(
    "fields",
    [
        {"size": 10, "chunk_size": CS, "chunks": 2},  # count does not match
        {"size": 10, "chunk_size": CS - 1, "chunks": 1},  # chunk under the least
        {"size": 10, "chunk_size": 2 * 1024 * 1024, "chunks": 1},  # over the most
        {"size": -1, "chunk_size": CS, "chunks": 1},
        {"size": 10, "chunk_size": CS, "chunks": 1, "digest": "AB" * 32},  # not lower hex
    ],
)
def test_bad_references_are_refused(fields: dict) -> None:
    with pytest.raises(ValidationError):
        AttachmentRef(**{"digest": "0" * 64, **fields})


@pytest.mark.parametrize(
    "name", ["", ".", "..", "a/b", "..\\x", "a\x00b", "line\nbreak", " padded", "x" * 256]
)
def test_file_names_must_be_plain(name: str) -> None:
    with pytest.raises(ValidationError):
        AttachmentMeta(name=name)


@pytest.mark.parametrize("media", ["text", "text/plain; charset=utf-8", "a/b/c", "/x"])
def test_media_types_are_type_and_subtype(media: str) -> None:
    with pytest.raises(ValidationError):
        AttachmentMeta(name="a.txt", media_type=media)
    assert AttachmentMeta(name="informe final.pdf", media_type="application/pdf")


def test_attachments_travel_signed_in_the_header_and_named_inside() -> None:
    signer, mine = SigningKey.generate(), EncryptionKey.generate()
    content_key = new_content_key()
    bid = new_bulletin_id()
    ref, _ = sealed_file(b"data")
    labels = Labels(
        topic="drug-trafficking",
        classification=Classification.RESTRICTED,
        tlp=Tlp.AMBER,
        rel_to=("SICA",),
    )
    content = Content(title="t", text="b", attachments=(AttachmentMeta(name="ledger.xlsx"),))
    env = seal(
        content=content,
        labels=labels,
        originator=AgencyId("gt-police"),
        signing_key=signer,
        recipients={AgencyId("sv-police"): mine.public_key},
        now=1_780_000_000,
        bulletin_id=bid,
        content_key=content_key,
        attachments=(ref,),
    )
    assert env.header.attachments == (ref,)
    assert "ledger" not in env.model_dump_json()  # the name is not in clear
    inner, key = open_envelope_keyed(
        env, recipient=AgencyId("sv-police"), key=mine, sender_key=signer.verify_key
    )
    assert key == content_key
    assert inner.content.attachments == (AttachmentMeta(name="ledger.xlsx"),)
    with pytest.raises(ValueError, match="same files"):
        seal(
            content=Content(title="t", text="b"),
            labels=labels,
            originator=AgencyId("gt-police"),
            signing_key=signer,
            recipients={AgencyId("sv-police"): mine.public_key},
            now=1_780_000_000,
            attachments=(ref,),
        )


def test_a_forward_passes_the_originals_files_on_with_their_keys_inside() -> None:
    """The citation carries the original's references, the body each file's key (never
    the content key); the chunks stay sealed under the original's id (ADR 20)."""
    signer, theirs = SigningKey.generate(), EncryptionKey.generate()
    ref, chunks = sealed_file(b"photo bytes")
    meta = AttachmentMeta(name="boats.jpg", media_type="image/jpeg", key=b64e(KEY))
    cite = Citation(bulletin_id=BID, originator="gt-police", envelope_digest="ab" * 32,
                    attachments=(ref,))  # fmt: skip
    labels = Labels(topic="drug-trafficking", classification=Classification.RESTRICTED,
                    tlp=Tlp.AMBER, rel_to=("SICA",))  # fmt: skip

    def forward(content: Content, **more: object) -> Envelope:
        return seal(content=content, labels=labels, originator=AgencyId("sv-police"),
                    signing_key=signer, recipients={AgencyId("jm-police"): theirs.public_key},
                    now=1_780_000_000, **more)  # type: ignore[arg-type]  # fmt: skip

    env = forward(Content(title="t", text="b", attachments=(meta,)), forward_of=cite)
    assert env.header.attachments is None
    assert env.header.file_refs() == (ref,)
    assert b64e(KEY) not in env.model_dump_json()  # the key travels sealed
    inner, _ = open_envelope_keyed(
        env, recipient=AgencyId("jm-police"), key=theirs, sender_key=signer.verify_key
    )
    [got] = inner.content.attachments or ()
    assert got.key is not None
    assert open_chunk(b64d(got.key, field="k", max_bytes=32), BID, 0, 0, chunks[(0, 0)],
                      last=True) == b"photo bytes"  # fmt: skip
    # A forward gives every file's key, another bulletin none; a forward has no files of
    # its own (they would be stored under it, not the original).
    with pytest.raises(ValueError, match="key"):
        forward(Content(title="t", text="b", attachments=(AttachmentMeta(name="x"),)),
                forward_of=cite)  # fmt: skip
    with pytest.raises(ValueError, match="key"):
        forward(Content(title="t", text="b", attachments=(meta,)), attachments=(ref,))
    with pytest.raises(ValueError, match="original's files"):
        forward(Content(title="t", text="b", attachments=(meta,)), attachments=(ref,),
                forward_of=cite.model_copy(update={"attachments": None}))  # fmt: skip
    with pytest.raises(ValidationError, match="original's files"):
        Header.model_validate(
            env.header.model_dump() | {"attachments": (ref.model_dump(),)}, strict=False
        )
    with pytest.raises(ValidationError):  # a key is 32 bytes of canonical base64
        AttachmentMeta(name="x", key=b64e(KEY[:31]))


# --------------------------------------------------------------------------- relay checks
LIMITS = AttachmentLimits(max_attachment_bytes=4 * CS, max_attachments=2)
DATA = os.urandom(2 * CS + 100)


def test_stored_as_signed_passes() -> None:
    ref, chunks = sealed_file(DATA)
    check_attachments((ref,), stored(chunks), LIMITS)
    check_attachments(None, {}, LIMITS)


@pytest.mark.parametrize(
    ("alter", "code"),
    [
        (lambda c: c.pop((0, 1)), "attachment_missing"),
        (lambda c: c.pop((0, 2)), "attachment_missing"),
        (lambda c: c.update({(0, 1): c[(0, 1)][:-1]}), "attachment_mismatch"),  # shorter
        (lambda c: c.update({(0, 1): os.urandom(CS + TAG_BYTES)}), "attachment_mismatch"),
        (lambda c: c.update({(0, 0): c[(0, 1)], (0, 1): c[(0, 0)]}), "attachment_mismatch"),
    ],
)
def test_missing_or_altered_chunks_are_refused(alter, code: str) -> None:  # type: ignore[no-untyped-def]
    ref, chunks = sealed_file(DATA)
    alter(chunks)
    with pytest.raises(EnvelopeError) as refused:
        check_attachments((ref,), stored(chunks), LIMITS)
    assert refused.value.code == code


def test_limits_are_said_in_the_refusal() -> None:
    ref, chunks = sealed_file(os.urandom(4 * CS + 1))
    with pytest.raises(EnvelopeError) as refused:
        check_attachments((ref,), stored(chunks), LIMITS)
    assert refused.value.code == "attachment_too_large"
    assert "limit of 256 KiB" in str(refused.value)
    small, small_chunks = sealed_file(b"x")
    with pytest.raises(EnvelopeError) as refused:
        check_attachments((small, small, small), stored(small_chunks), LIMITS)
    assert refused.value.code == "too_many_attachments"


def _two_files() -> tuple[tuple[AttachmentRef, ...], dict]:
    ref0, chunks0 = sealed_file(DATA)
    ref1, chunks1 = sealed_file(b"second file", att=1)
    return (ref0, ref1), chunks0 | chunks1


@pytest.mark.parametrize(
    ("cite", "alter", "passes"),
    [
        (lambda r: r, lambda c: None, True),
        (lambda r: None, lambda c: None, False),  # text alone: the files left behind
        (lambda r: r[:1], lambda c: None, False),  # the second file left out
        (lambda r: (r[1], r[0]), lambda c: None, False),  # swapped: each in another place
        (lambda r: r, lambda c: c.pop((1, 0)), False),  # no longer stored (recalled)
        (lambda r: r, lambda c: c.update({(0, 1): os.urandom(CS + TAG_BYTES)}), False),
        (lambda r: (*r, r[1]), lambda c: None, False),  # a file the original did not have
    ],
)
def test_a_forward_cites_all_the_originals_files_as_stored(cite, alter, passes: bool) -> None:  # type: ignore[no-untyped-def]
    refs, chunks = _two_files()
    alter(chunks)
    if passes:
        check_cited(cite(refs), stored(chunks))
        return
    with pytest.raises(EnvelopeError) as refused:
        check_cited(cite(refs), stored(chunks))
    assert refused.value.code == "forward_attachments_mismatch"
    check_cited(None, {})  # an original without files: nothing to pass on


@pytest.mark.parametrize(
    ("attachment", "chunk", "size", "code"),
    [
        (0, 0, CS + TAG_BYTES, None),
        (1, 3, 1 + TAG_BYTES, None),
        (2, 0, 100, "too_many_attachments"),
        (0, 4, 100, "attachment_too_large"),  # starts at the limit
        (0, 0, CS + TAG_BYTES + 1, "malformed"),  # longer than a sealed chunk
        (0, 0, TAG_BYTES - 1, "malformed"),
    ],
)
def test_puts_are_bounded(attachment: int, chunk: int, size: int, code: str | None) -> None:
    put = ChunkPut(bulletin_id=BID, attachment=attachment, chunk=chunk, chunk_size=CS)
    if code is None:
        check_put(put, size, LIMITS)
        return
    with pytest.raises(EnvelopeError) as refused:
        check_put(put, size, LIMITS)
    assert refused.value.code == code


@pytest.mark.parametrize(
    ("caller", "withdrawn", "expired", "allowed"),
    [
        ("gt-police", False, False, True),  # the originator
        ("sv-police", False, False, True),  # routed
        ("jm-police", False, False, False),  # not routed
        ("sv-police", True, False, False),
        ("sv-police", False, True, False),
        ("gt-police", True, False, False),
    ],
)
def test_who_may_fetch(caller: str, withdrawn: bool, expired: bool, allowed: bool) -> None:
    assert (
        may_fetch(
            caller,
            originator="gt-police",
            routed={"sv-police", "hn-police"},
            withdrawn=withdrawn,
            expired=expired,
        )
        is allowed
    )


@pytest.mark.parametrize(
    ("n", "shown"),
    [
        (900, "900 bytes"),
        (1024, "1 KiB"),
        (256 * 1024**2, "256 MiB"),
        (3 * 1024**3 // 2, "1.5 GiB"),
    ],
)
def test_sizes_in_words(n: int, shown: str) -> None:
    assert describe_bytes(n) == shown
