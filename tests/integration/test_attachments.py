"""Attachments on a live stack (ADR 17): nats-server, relay, sequencer, SQLite, and the SDK
as agencies use it.

gt-police publishes bulletins releasable to Belize with files; the demo policy routes them
to bz-justice, bz-military and bz-police. What is proven: the files arrive byte for byte,
through chunks the broker stores as ciphertext only; an upload and a download that stopped
resume; a missing or altered chunk is refused, before routing (the relay checks the signed
digest) and after (the relay hashes each chunk again, the SDK opens and checks each), and
the refusal is audited; a file over the broker's limit is refused before a byte is sent;
an agency the bulletin was not routed to gets nothing, and trying is audited; a recall
takes the chunks with it; and the audit log verifies after it all.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from sqlmodel import select

from broker.relay.attachments import SHA_HEADER
from broker.runtime.stack import Stack
from broker.store.registry import AuditRow
from clients.attachments import Attachment, download, upload
from clients.errors import AttachmentError, NotFound, PublishRejected
from clients.results import ReceivedAttachment, ReceivedBulletin
from schemas.attachments import (
    CHUNK_HEADER,
    MIN_CHUNK_BYTES,
    AttachmentMeta,
    ChunkPut,
    attachment_key,
)
from schemas.canonical import canonical_json
from schemas.envelope import Content
from schemas.errors import EnvelopeError
from schemas.ids import new_bulletin_id
from schemas.sealing import new_content_key, seal
from schemas.subjects import ATTACH_STREAM, attach_api_subject, chunk_subject, chunks_prefix
from tests.integration.recall_kit import BZ, LABELS, audit_verifies, take
from tests.integration.stack_inproc import client, nats_url, running_stack

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.slow,
]  # slow: run first (tests/conftest.py)
CANARY = b"CANARY-att-5e1d PLAINTEXT OF A FILE "
LIMIT = 4 * 1024 * 1024  # this stack's largest attachment


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with running_stack(
        tmp_path_factory.mktemp("att") / "istmo", max_attachment_bytes=LIMIT
    ) as s:
        yield s


def a_file(path: Path, size: int) -> Path:
    """``size`` bytes, random but for a canary every 64 KiB (found if ever stored clear)."""
    out = bytearray(os.urandom(size))
    for at in range(0, max(size - len(CANARY), 0), 64 * 1024):
        out[at : at + len(CANARY)] = CANARY
    path.write_bytes(bytes(out))
    return path


def audited(stack: Stack, type_: str, bulletin_id: str) -> list[AuditRow]:
    assert stack.registry is not None
    with stack.registry.session() as s:
        q = select(AuditRow).where(AuditRow.type == type_, AuditRow.bulletin_id == bulletin_id)
        return list(s.exec(q))


async def received(stack: Stack, agency: str, bid: str) -> ReceivedBulletin:
    """``bid`` as ``agency`` receives it (taking what else waits for it on the way)."""
    got = await take(stack, agency, count=20, timeout=3)
    (b,) = [b for b in got.bulletins if b.id == bid]
    return b


async def as_relay(stack: Stack) -> NATS:
    return await stack.connect_relay(nats_url(stack))


async def stage(
    stack: Stack, path: Path, *, chunk_size: int = MIN_CHUNK_BYTES
) -> tuple[str, bytes, object]:
    """gt-police uploads ``path`` for a new bulletin: (id, content key, reference)."""
    bid, key = new_bulletin_id(), new_content_key()
    async with await client(stack, "gt-police") as gt:
        ref = await upload(
            gt._nc,
            "gt-police",
            path,
            key=attachment_key(key, bid, 0),
            bulletin_id=bid,
            index=0,
            chunk_size=chunk_size,
        )
    return bid, key, ref


async def publish_staged(stack: Stack, bid: str, key: bytes, ref: object, name: str) -> str:
    """Seal and publish the bulletin ``stage`` uploaded for; the relay's verdict."""
    async with await client(stack, "gt-police") as gt:
        recipients = await gt.resolve(LABELS)
        env = seal(
            content=Content(title="staged", text="t", attachments=(AttachmentMeta(name=name),)),
            labels=LABELS,
            originator=gt.agency,
            signing_key=gt.keystore.signing_key(),
            recipients=recipients,
            now=int(time.time()),
            bulletin_id=bid,  # type: ignore[arg-type]
            content_key=key,
            attachments=(ref,),  # type: ignore[arg-type]
        )
        await gt._publish_envelope(env)
        return (await gt.wait_for_verdict(bid, timeout=20)).state


# --------------------------------------------------------------------------- round trip
async def test_files_arrive_whole_and_the_broker_holds_ciphertext_only(
    stack: Stack, tmp_path: Path
) -> None:
    big = a_file(tmp_path / "survey.bin", 3 * 1024 * 1024 + 17)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    async with await client(stack, "gt-police") as gt:
        result = await gt.publish(
            title="with files",
            text="see attached",
            labels=LABELS,
            attachments=[big, Attachment(empty, name="nothing.txt", media_type="text/plain")],
        )
    assert result.state == "accepted"
    assert tuple(sorted(result.routed)) == BZ
    b = await received(stack, "bz-police", result.bulletin_id)
    assert [(a.name, a.media_type, a.size) for a in b.attachments] == [
        ("survey.bin", "application/octet-stream", big.stat().st_size),
        ("nothing.txt", "text/plain", 0),
    ]
    async with await client(stack, "bz-police") as bz:
        saved = await bz.save_attachments(b, tmp_path / "inbox")
    assert saved == [
        tmp_path / "inbox" / b.id / "survey.bin",
        tmp_path / "inbox" / b.id / "nothing.txt",
    ]
    assert saved[0].read_bytes() == big.read_bytes()
    assert saved[1].read_bytes() == b""
    assert not list((tmp_path / "inbox" / b.id).glob("*.part*"))
    # The broker's store holds the chunks as ciphertext: no canary in any of them.
    nc = await as_relay(stack)
    try:
        js = nc.jetstream(timeout=10)
        info = await js.stream_info(
            ATTACH_STREAM, subjects_filter=f"{chunks_prefix('gt-police', b.id)}.>"
        )
        assert len(info.state.subjects or {}) == 7 + 1  # 512 KiB chunks, and the empty file
    finally:
        await nc.close()
    await audit_verifies(stack.settings.data_dir)


# --------------------------------------------------------------------------- resuming
async def test_an_upload_and_a_download_that_stopped_resume(stack: Stack, tmp_path: Path) -> None:
    path = a_file(tmp_path / "resume.bin", 6 * MIN_CHUNK_BYTES + 5)
    bid, key, ref = await stage(stack, path)
    # Run again (a dropped connection, a restarted publisher): nothing is sent twice, and
    # the same chunks make the same reference.
    nc = await as_relay(stack)
    try:
        before = (await nc.jetstream().stream_info(ATTACH_STREAM)).state.messages
        async with await client(stack, "gt-police") as gt:
            again = await upload(
                gt._nc,
                "gt-police",
                path,
                key=attachment_key(key, bid, 0),
                bulletin_id=bid,
                index=0,
                chunk_size=MIN_CHUNK_BYTES,
            )
        assert again == ref
        assert (await nc.jetstream().stream_info(ATTACH_STREAM)).state.messages == before
    finally:
        await nc.close()
    assert await publish_staged(stack, bid, key, ref, "resume.bin") == "accepted"
    b = await received(stack, "bz-justice", bid)
    att = b.attachments[0]

    # The download stops after three chunks (the application's progress callback raises).
    class Stopped(Exception):
        pass

    def stop_after_three(done: int) -> None:
        if done >= 3 * MIN_CHUNK_BYTES:
            raise Stopped

    dest = tmp_path / "got.bin"
    async with await client(stack, "bz-justice") as bz:
        with pytest.raises(Stopped):
            await download(bz._nc, "bz-justice", b.id, att, dest, progress=stop_after_three)
        assert not dest.exists()
        assert (tmp_path / "got.bin.part").stat().st_size == 3 * MIN_CHUNK_BYTES
        fetched: list[int] = []
        await download(bz._nc, "bz-justice", b.id, att, dest, progress=fetched.append)
    assert fetched[0] == 4 * MIN_CHUNK_BYTES  # it went on from the fourth chunk
    assert dest.read_bytes() == path.read_bytes()
    assert not (tmp_path / "got.bin.part").exists()


# --------------------------------------------------------------------------- refusals
async def test_a_missing_chunk_is_refused_before_routing_and_audited(
    stack: Stack, tmp_path: Path
) -> None:
    bid, key, ref = await stage(stack, a_file(tmp_path / "m.bin", 3 * MIN_CHUNK_BYTES))
    nc = await as_relay(stack)
    try:  # chunk 1 goes missing from the store (an operator, a fault)
        await nc.jetstream().purge_stream(
            ATTACH_STREAM, subject=chunk_subject("gt-police", bid, 0, 1)
        )
    finally:
        await nc.close()
    with pytest.raises(PublishRejected) as refused:
        await publish_staged(stack, bid, key, ref, "m.bin")
    assert refused.value.code == "attachment_missing"
    assert "1 of 3 chunks are not stored (first: 1)" in str(refused.value)
    (event,) = audited(stack, "bulletin.rejected", bid)
    assert event.reason == "attachment_missing"
    assert audited(stack, "bulletin.accepted", bid) == []


async def test_a_tampered_chunk_is_refused_before_routing_and_audited(
    stack: Stack, tmp_path: Path
) -> None:
    bid, key, ref = await stage(stack, a_file(tmp_path / "t.bin", 2 * MIN_CHUNK_BYTES))
    nc = await as_relay(stack)
    try:  # chunk 0 replaced in the store, with a hash recorded for the new bytes
        forged = os.urandom(MIN_CHUNK_BYTES + 16)
        await nc.jetstream().publish(
            chunk_subject("gt-police", bid, 0, 0),
            forged,
            headers={SHA_HEADER: hashlib.sha256(forged).hexdigest()},
        )
    finally:
        await nc.close()
    with pytest.raises(PublishRejected) as refused:
        await publish_staged(stack, bid, key, ref, "t.bin")
    assert refused.value.code == "attachment_mismatch"
    (event,) = audited(stack, "bulletin.rejected", bid)
    assert event.reason == "attachment_mismatch"


async def published_with_file(stack: Stack, path: Path) -> tuple[str, ReceivedAttachment]:
    async with await client(stack, "gt-police") as gt:
        result = await gt.publish(title="f", text="t", labels=LABELS, attachments=[path])
    assert result.state == "accepted"
    b = await received(stack, "bz-police", result.bulletin_id)
    return b.id, b.attachments[0]


@pytest.mark.parametrize("what", ["damaged", "rewritten", "missing"])
async def test_a_chunk_altered_or_lost_after_routing_is_refused(
    stack: Stack, tmp_path: Path, what: str
) -> None:
    path = a_file(tmp_path / f"{what}.bin", 2 * 512 * 1024 + 3)
    bid, att = await published_with_file(stack, path)
    subject = chunk_subject("gt-police", bid, 0, 1)
    nc = await as_relay(stack)
    try:
        js = nc.jetstream()
        stored = await js.get_last_msg(ATTACH_STREAM, subject, direct=True)
        data = bytearray(stored.data or b"")
        data[100] ^= 1
        if what == "missing":
            await js.purge_stream(ATTACH_STREAM, subject=subject)
        else:
            # damaged: the bytes change, the recorded hash stays (the relay sees it);
            # rewritten: the hash is recomputed too (only the SDK can see it).
            sha = hashlib.sha256(data).hexdigest() if what == "rewritten" else None
            await js.publish(
                subject, bytes(data), headers={SHA_HEADER: sha or stored.headers[SHA_HEADER]}
            )
    finally:
        await nc.close()
    dest = tmp_path / "inbox" / "x.bin"
    dest.parent.mkdir()
    async with await client(stack, "bz-police") as bz:
        with pytest.raises(AttachmentError) as refused:
            await download(bz._nc, "bz-police", bid, att, dest)
    code = {"damaged": "chunk_damaged", "rewritten": "chunk_invalid", "missing": "chunk_missing"}
    assert refused.value.code == code[what]
    assert "chunk 1" in str(refused.value)
    assert list(dest.parent.iterdir()) == []  # nothing of it kept
    if what != "rewritten":  # the relay saw it: audited, naming the bulletin
        (event,) = audited(stack, "request.rejected", bid)
        assert (event.actor, event.subject, event.reason) == (
            "bz-police",
            "api.att.get",
            code[what],
        )


async def test_an_agency_it_was_not_routed_to_gets_no_chunk_and_is_audited(
    stack: Stack, tmp_path: Path
) -> None:
    path = a_file(tmp_path / "secret.bin", 1000)
    bid, att = await published_with_file(stack, path)
    for outsider in ("hn-police", "jm-police"):
        async with await client(stack, outsider) as other:
            with pytest.raises(NotFound):
                await download(other._nc, outsider, bid, att, tmp_path / f"{outsider}.bin")
    assert not list(tmp_path.glob("*-police.bin*"))  # noqa: ASYNC240  # a test, on tmp
    refusals = audited(stack, "request.rejected", bid)
    assert {(e.actor, e.reason) for e in refusals} == {
        ("hn-police", "not_found"),
        ("jm-police", "not_found"),
    }
    # The originator may fetch its own.
    async with await client(stack, "gt-police") as gt:
        mine = await download(gt._nc, "gt-police", bid, att, tmp_path / "mine.bin")
    assert mine.read_bytes() == path.read_bytes()


async def test_a_file_over_the_limit_is_refused_before_a_byte_is_sent(
    stack: Stack, tmp_path: Path
) -> None:
    path = tmp_path / "huge.bin"
    with path.open("wb") as f:
        f.truncate(LIMIT + 1)
    nc = await as_relay(stack)
    try:
        before = (await nc.jetstream().stream_info(ATTACH_STREAM)).state.messages
        async with await client(stack, "gt-police") as gt:
            with pytest.raises(EnvelopeError) as refused:
                await gt.publish(title="too big", text="t", labels=LABELS, attachments=[path])
        assert refused.value.code == "attachment_too_large"
        assert "over the broker's limit of 4 MiB per attachment" in str(refused.value)
        assert (await nc.jetstream().stream_info(ATTACH_STREAM)).state.messages == before
    finally:
        await nc.close()
    # A chunk sent past the limit anyway (not through the SDK) is refused and audited.
    bid = new_bulletin_id()
    put = ChunkPut(
        bulletin_id=bid, attachment=0, chunk=LIMIT // MIN_CHUNK_BYTES, chunk_size=MIN_CHUNK_BYTES
    )
    async with await client(stack, "gt-police") as gt:
        answer = await gt._nc.request(
            attach_api_subject("gt-police", "put"),
            b"x" * 100,
            headers={
                CHUNK_HEADER: canonical_json(
                    put.model_dump(mode="json", exclude_none=True)
                ).decode()
            },
            timeout=10,
        )
    assert b'"attachment_too_large"' in answer.data
    assert b"4 MiB" in answer.data
    (event,) = audited(stack, "request.rejected", bid)
    assert (event.subject, event.reason) == ("api.att.put", "attachment_too_large")


async def test_a_stored_chunk_is_never_replaced(stack: Stack, tmp_path: Path) -> None:
    bid, _, _ = await stage(stack, a_file(tmp_path / "w.bin", 1000))
    put = ChunkPut(bulletin_id=bid, attachment=0, chunk=0, chunk_size=MIN_CHUNK_BYTES)
    async with await client(stack, "gt-police") as gt:
        answer = await gt._nc.request(
            attach_api_subject("gt-police", "put"),
            os.urandom(1016),
            headers={
                CHUNK_HEADER: canonical_json(
                    put.model_dump(mode="json", exclude_none=True)
                ).decode()
            },
            timeout=10,
        )
    assert b'"chunk_conflict"' in answer.data
    (event,) = audited(stack, "request.rejected", bid)
    assert event.reason == "chunk_conflict"


async def test_a_recall_takes_the_chunks_with_it(stack: Stack, tmp_path: Path) -> None:
    path = a_file(tmp_path / "r.bin", 2000)
    bid, att = await published_with_file(stack, path)
    async with await client(stack, "gt-police") as gt:
        assert (await gt.recall(bid, reason="wrong file")).state == "done"
    nc = await as_relay(stack)
    try:
        info = await nc.jetstream().stream_info(
            ATTACH_STREAM, subjects_filter=f"{chunks_prefix('gt-police', bid)}.>"
        )
        assert not info.state.subjects
    finally:
        await nc.close()
    async with await client(stack, "bz-police") as bz:
        with pytest.raises(NotFound):
            await download(bz._nc, "bz-police", bid, att, tmp_path / "late.bin")
    await take(stack, "bz-police", count=10, timeout=1)  # the withdrawal notice
    await audit_verifies(stack.settings.data_dir)
