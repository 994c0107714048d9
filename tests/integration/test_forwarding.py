"""Forwarding with consent on a live stack (ADR 20): nats-server, relay, sequencer,
SQLite, and the SDK as agencies use it.

gt-police publishes a bulletin releasable to Belize (routed to bz-justice, bz-military and
bz-police); bz-police would pass it on. What is proven: with the originator's grant the
forward reaches the new recipient alone, signed by the forwarder, citing the original,
and its SDK says where it came from; without consent nothing moves (asked, refused, or a
forward sent anyway); an agency that never received it, a recipient the policy denies, a
tampered citation and a grant by anyone but the originator are refused; every step is in
the audit log, filed under the original, and the log verifies after each.

A bulletin with a file is forwarded with it, without a copy: the new recipient saves it
byte for byte with `istmo receive --save-attachments`, from the original's chunks fetched
through the forward; the broker holds those chunks once, as ciphertext. A forward citing
files that are not the original's, or leaving them behind, is refused; a fetch by an
agency routed neither the original nor the forward, or by the forward's recipient
around the forward, is refused and audited; wrong keys in the forward's body are caught by
the recipient's SDK; a recall of the original takes the forward's files with it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlmodel import col, select

from broker.runtime.stack import Stack
from broker.store.forwards import forward_request
from broker.store.registry import AuditRow
from clients.attachments import download
from clients.errors import AttachmentError, NotFound, PublishRejected
from clients.keystore import load_keystore
from clients.sdk import IstmoClient
from schemas.agency import ErrorReply
from schemas.attachments import AttachmentMeta
from schemas.canonical import b64e
from schemas.envelope import Content, Envelope, parse_model
from schemas.errors import PolicyDenied
from schemas.forwarding import ForwardDecision, sign_grant
from schemas.ids import AgencyId, BulletinId
from schemas.sealing import parse_envelope, seal
from schemas.subjects import ATTACH_STREAM, api_subject, chunk_subject, chunks_prefix
from tests.canary import files_holding
from tests.integration.recall_kit import BZ, ISTMO, LABELS, audit_verifies, take
from tests.integration.stack_inproc import client, nats_url, running_stack
from tests.warm import run_istmo

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.slow,
]  # slow: run first (tests/conftest.py)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path_factory.mktemp("forward") / "istmo") as s:
        yield s


async def received_by_bz_police(stack: Stack, title: str, *files: Path) -> str:
    """A bulletin of gt-police's (with ``files``) that bz-police received (its SDK holds
    it)."""
    async with await client(stack, "gt-police") as gt:
        result = await gt.publish(
            title=title, text=f"body of {title}", labels=LABELS, attachments=files
        )
    assert result.state == "accepted"
    assert tuple(sorted(result.routed)) == BZ
    got = await take(stack, "bz-police")
    assert [b.id for b in got.bulletins] == [result.bulletin_id]
    return result.bulletin_id


def events_of(stack: Stack, type_: str, bulletin_id: str) -> list[AuditRow]:
    assert stack.registry is not None
    with stack.registry.session() as s:
        q = select(AuditRow).where(AuditRow.type == type_, AuditRow.bulletin_id == bulletin_id)
        return list(s.exec(q))


def audit_rows(stack: Stack, type_: str) -> list[AuditRow]:
    assert stack.registry is not None
    with stack.registry.session() as s:
        return list(
            s.exec(select(AuditRow).where(AuditRow.type == type_).order_by(col(AuditRow.seq)))
        )


def grant_by(stack: Stack, signer: str, bid: str, to: str, originator: str = "gt-police") -> Any:
    """A grant for bz-police to forward ``bid`` to ``to``, signed by ``signer``."""
    now = int(time.time())
    key = load_keystore(stack.settings.keys_dir / f"{signer}.json").signing_key()
    return sign_grant(bulletin_id=BulletinId(bid), originator=AgencyId(originator),
                      forwarder=AgencyId("bz-police"), recipient=AgencyId(to),
                      issued_at=now, expires_at=now + 3600, key=key)  # fmt: skip


async def forged_forward(
    bz: IstmoClient, bid: str, to: str, grant: Any, file_key: bytes = bytes(32), **cite: Any
) -> Envelope:
    """bz-police's forward of ``bid``, sealed by hand with ``cite`` changed in its
    citation (and ``file_key`` as every cited file's key), as a lying client would."""
    env = await bz._forward_envelope(bid, to, grant)
    h = env.header
    assert h.forward_of is not None
    citation = h.forward_of.model_copy(update=cite)
    files = tuple(
        AttachmentMeta(name=f"f{i}", key=b64e(file_key))
        for i in range(len(citation.attachments or ()))
    )
    keys = {AgencyId(to): (await bz._directory([to]))[to].encryption_key.public_key()}  # type: ignore[union-attr]
    return seal(content=Content(title="x", text="y", attachments=files or None), labels=h.labels,
                originator=bz.agency, signing_key=bz.keystore.signing_key(), recipients=keys,
                now=int(time.time()), forward_of=citation)  # fmt: skip


async def send_forward(bz: IstmoClient, bid: str, to: str, grant: Any, **cite: Any) -> str:
    """bz-police seals and sends a forward of ``bid`` itself, as a client that skips the
    request (or lies in its citation) would; returns the relay's refusal code."""
    env = await bz._forward_envelope(bid, to, grant)
    if cite:
        env = await forged_forward(bz, bid, to, grant, **cite)
    await bz._publish_envelope(env)
    with pytest.raises(PublishRejected) as refused:
        await bz.wait_for_verdict(env.header.bulletin_id)
    return refused.value.code


async def test_a_forward_with_the_originators_consent(stack: Stack) -> None:
    bid = await received_by_bz_police(stack, "boats off Dangriga")
    async with await client(stack, "bz-police") as bz:
        asked = await bz.forward(bid, to="jm-police", reason="Jamaica tracks the same boats")
        assert (asked.state, asked.forward_id) == ("requested", None)
        # Asking again finds the same request.
        assert (await bz.forward(bid, to="jm-police")).request_id == asked.request_id
    async with await client(stack, "gt-police") as gt:
        [req] = await gt.forward_requests()
        want = (asked.request_id, "bz-police", "jm-police", "Jamaica tracks the same boats")
        assert (req.request_id, req.forwarder, req.recipient, req.reason) == want
        assert await gt.grant_forward(req.request_id, valid_for_s=3600) == "granted"
        assert await gt.forward_requests() == []
    async with await client(stack, "bz-police") as bz:
        done = await bz.forward(bid, to="jm-police")
    assert (done.state, done.consent) == ("forwarded", "originator")
    got = (await take(stack, "jm-police")).bulletins
    assert [b.id for b in got] == [done.forward_id]
    [b] = got
    assert (b.originator, b.title, b.body) == ("bz-police", "boats off Dangriga",
                                               "body of boats off Dangriga")  # fmt: skip
    assert b.forwarded is not None
    assert (b.forwarded.bulletin_id, b.forwarded.originator, b.forwarded.consent) == (
        bid, "gt-police", "originator")  # fmt: skip
    assert "forwarded by bz-police, originally from gt-police" in b.forwarded.describe()
    assert b.labels.named == ("jm-police",)
    assert b.labels.tlp == LABELS.tlp
    # Sealed for the new recipient alone: nobody else got a copy.
    assert stack.registry is not None
    assert stack.registry.routed([done.forward_id or ""]) == {done.forward_id: {"jm-police"}}
    # Audited on both sides, filed under the original.
    assert [e.actor for e in events_of(stack, "forward.requested", bid)] == ["bz-police"]
    assert [e.actor for e in events_of(stack, "forward.granted", bid)] == ["gt-police"]
    [fwd] = events_of(stack, "bulletin.forwarded", bid)
    assert (fwd.actor, fwd.subject) == ("bz-police", done.forward_id)
    assert await audit_verifies(stack.settings.data_dir)


async def test_without_consent_nothing_moves(stack: Stack) -> None:
    bid = await received_by_bz_police(stack, "no consent yet")
    async with await client(stack, "bz-police") as bz:
        assert (await bz.forward(bid, to="jm-police")).state == "requested"
        # Sent anyway, without a grant: the relay refuses it.
        assert await send_forward(bz, bid, "jm-police", None) == "forward_not_consented"
    async with await client(stack, "gt-police") as gt:
        [req] = await gt.forward_requests()
        assert await gt.refuse_forward(req.request_id, reason="not outside Belize") == "refused"
    async with await client(stack, "bz-police") as bz:
        with pytest.raises(PolicyDenied, match="not outside Belize"):
            await bz.forward(bid, to="jm-police")
    assert (await take(stack, "jm-police", count=1, timeout=2)).bulletins == []
    assert [e.actor for e in events_of(stack, "forward.refused", bid)] == ["gt-police"]
    assert events_of(stack, "bulletin.forwarded", bid) == []
    assert await audit_verifies(stack.settings.data_dir)


async def test_an_agency_that_never_received_it_cannot_forward_it(stack: Stack) -> None:
    bid = await received_by_bz_police(stack, "not for El Salvador")
    async with await client(stack, "sv-police") as sv:
        with pytest.raises(NotFound) as err:
            await sv.forward(bid, to="jm-police")
        assert err.value.code == "forward_not_received"
    async with await client(stack, "bz-police") as bz:
        unknown = "0b1e5a8c-1111-4222-8333-444455556666"
        with pytest.raises(NotFound):
            await bz.forward(unknown, to="jm-police")
    [refused] = events_of(stack, "request.rejected", bid)
    assert (refused.actor, refused.subject, refused.reason) == (
        "sv-police", "api.forward-request", "forward_not_received")  # fmt: skip
    assert await audit_verifies(stack.settings.data_dir)


async def test_a_forward_to_an_agency_the_policy_denies(stack: Stack) -> None:
    """The auditor's clearance is below RESTRICTED: not even the originator's consent lets
    it have the bulletin; asked or sent with a genuine grant, nothing moves."""
    bid = await received_by_bz_police(stack, "not for auditors")
    async with await client(stack, "bz-police") as bz:
        with pytest.raises(PolicyDenied) as err:
            await bz.forward(bid, to="auditor")
        assert err.value.code == "forward_denied"
        grant = grant_by(stack, "gt-police", bid, "auditor")
        assert await send_forward(bz, bid, "auditor", grant) == "forward_denied"
    [refused] = events_of(stack, "request.rejected", bid)
    assert (refused.subject, refused.reason) == ("api.forward-request", "forward_denied")
    assert await audit_verifies(stack.settings.data_dir)


async def test_a_tampered_citation_is_refused(stack: Stack) -> None:
    bid = await received_by_bz_police(stack, "cited as it was")
    async with await client(stack, "bz-police") as bz:
        grant = grant_by(stack, "gt-police", bid, "jm-police")
        code = await send_forward(bz, bid, "jm-police", grant, envelope_digest="0" * 64)
        assert code == "forward_citation_mismatch"
        # A grant the originator did not sign (bz-police's own) is no consent.
        forged = grant_by(stack, "bz-police", bid, "jm-police")
        assert await send_forward(bz, bid, "jm-police", forged) == "forward_consent_invalid"
    assert (await take(stack, "jm-police", count=1, timeout=2)).bulletins == []
    assert await audit_verifies(stack.settings.data_dir)


async def test_a_grant_by_a_non_originator_is_refused_and_audited(stack: Stack) -> None:
    bid = await received_by_bz_police(stack, "only gt grants")
    async with await client(stack, "bz-police") as bz:
        asked = await bz.forward(bid, to="jm-police")
    grant = grant_by(stack, "bz-police", bid, "jm-police")  # the forwarder grants itself
    decision = ForwardDecision(request_id=asked.request_id or "", grant=grant)
    async with await client(stack, "bz-police") as bz:
        raw = await bz._nc.request(
            api_subject("bz-police", "forward-decide"),
            decision.model_dump_json(exclude_none=True).encode(),
            timeout=10,
        )
    reply = parse_model(ErrorReply, raw.data, max_bytes=4096, what="reply")
    assert reply.error.code == "not_found"
    assert stack.registry is not None
    row = forward_request(stack.registry, asked.request_id or "")
    assert row is not None
    assert row.state == "pending"
    [refused] = events_of(stack, "request.rejected", bid)
    assert (refused.actor, refused.subject, refused.reason) == (
        "bz-police", "api.forward-decide", "not_found")  # fmt: skip
    assert await audit_verifies(stack.settings.data_dir)


# --------------------------------------------------------------------------- with files
CANARY = b"CANARY-fwd-8c1f PLAINTEXT OF A FORWARDED FILE "


def two_chunk_file(path: Path) -> Path:
    """768 KiB and a bit: two chunks at the SDK's 512 KiB, random but for a canary every
    64 KiB (found if it were ever stored in clear)."""
    out = bytearray(os.urandom(768 * 1024 + 11))
    for at in range(0, len(out) - len(CANARY), 64 * 1024):
        out[at : at + len(CANARY)] = CANARY
    path.write_bytes(bytes(out))
    return path


async def forwarded_with_consent(stack: Stack, bid: str, to: str = "jm-police") -> Any:
    """bz-police asks, gt-police grants, bz-police forwards ``bid`` to ``to``."""
    async with await client(stack, "bz-police") as bz:
        assert (await bz.forward(bid, to=to)).state == "requested"
    async with await client(stack, "gt-police") as gt:
        [req] = [r for r in await gt.forward_requests() if r.bulletin_id == bid]
        assert await gt.grant_forward(req.request_id, valid_for_s=3600) == "granted"
    async with await client(stack, "bz-police") as bz:
        done = await bz.forward(bid, to=to)
    assert (done.state, done.consent) == ("forwarded", "originator")
    return done


def istmo_receive(stack: Stack, agency: str, inbox: Path) -> subprocess.CompletedProcess[str]:
    """``istmo receive --save-attachments`` as ``agency``, the real command (this
    checkout's code: it inherits PYTHONPATH), against the stack's data directory."""
    return run_istmo(
        [ISTMO, "receive", "--as", agency, "--data-dir", str(stack.settings.data_dir),
         "--count", "1", "--timeout", "20", "--json", "--save-attachments", str(inbox)],
        timeout=120,
    )  # fmt: skip


async def stored_chunk_subjects(stack: Stack, originator: str, bid: str) -> list[str]:
    nc = await stack.connect_relay(nats_url(stack))
    try:
        info = await nc.jetstream(timeout=10).stream_info(
            ATTACH_STREAM, subjects_filter=f"{chunks_prefix(originator, bid)}.>"
        )
        return sorted(info.state.subjects or {})
    finally:
        await nc.close()


async def test_a_forward_carries_the_originals_file(stack: Stack, tmp_path: Path) -> None:
    photo = two_chunk_file(tmp_path / "seized-boat.jpg")
    bid = await received_by_bz_police(stack, "seizure at Big Creek", photo)
    done = await forwarded_with_consent(stack, bid)
    inbox = tmp_path / "inbox"
    got = await asyncio.to_thread(istmo_receive, stack, "jm-police", inbox)
    assert got.returncode == 0, got.stderr
    shown = json.loads(got.stdout.splitlines()[0])
    assert (shown["id"], shown["originator"]) == (done.forward_id, "bz-police")
    assert (shown["forwarded"]["bulletin_id"], shown["forwarded"]["originator"]) == (
        bid, "gt-police")  # fmt: skip
    saved = inbox / str(done.forward_id) / "seized-boat.jpg"
    size = photo.stat().st_size
    assert shown["attachments"] == [
        {
            "name": "seized-boat.jpg",
            "media_type": "image/jpeg",
            "size": size,
            "saved_to": str(saved),
        }
    ]
    assert saved.read_bytes() == photo.read_bytes()  # byte for byte, checked as it came
    assert not list(saved.parent.glob("*.part*"))
    # No copy: the broker holds the original's two chunks, nothing under the forward.
    assert await stored_chunk_subjects(stack, "gt-police", bid) == [
        chunk_subject("gt-police", bid, 0, 0), chunk_subject("gt-police", bid, 0, 1)]  # fmt: skip
    assert await stored_chunk_subjects(stack, "bz-police", str(done.forward_id)) == []
    # And not a byte of the file in clear anywhere in the broker's data directory.
    assert files_holding(stack.settings.data_dir, CANARY) == []
    [fwd] = events_of(stack, "bulletin.forwarded", bid)
    assert json.loads(fwd.data)["files"] == 1
    assert await audit_verifies(stack.settings.data_dir)


async def test_a_forward_whose_files_are_not_the_originals_is_refused(
    stack: Stack, tmp_path: Path
) -> None:
    photo = two_chunk_file(tmp_path / "photo.jpg")
    bid = await received_by_bz_police(stack, "photos, not for swapping", photo)
    other = await received_by_bz_police(stack, "another file", two_chunk_file(tmp_path / "o.bin"))
    async with await client(stack, "bz-police") as bz:
        theirs = parse_envelope(bz._dedupe.held(other) or b"").header.attachments
        grant = grant_by(stack, "gt-police", bid, "jm-police")
        # Another bulletin's file cited as this one's; the file left behind (text alone).
        codes = [await send_forward(bz, bid, "jm-police", grant, attachments=theirs),
                 await send_forward(bz, bid, "jm-police", grant, attachments=None)]  # fmt: skip
    assert codes == ["forward_attachments_mismatch"] * 2
    refusals = [e for e in audit_rows(stack, "bulletin.rejected") if e.actor == "bz-police"]
    assert [e.reason for e in refusals[-2:]] == ["forward_attachments_mismatch"] * 2
    assert (await take(stack, "jm-police", count=1, timeout=2)).bulletins == []
    assert events_of(stack, "bulletin.forwarded", bid) == []
    assert await audit_verifies(stack.settings.data_dir)


async def test_only_the_forwards_recipient_fetches_the_files_and_only_through_it(
    stack: Stack, tmp_path: Path
) -> None:
    photo = two_chunk_file(tmp_path / "dock.jpg")
    bid = await received_by_bz_police(stack, "dock photos", photo)
    done = await forwarded_with_consent(stack, bid)
    [b] = (await take(stack, "jm-police")).bulletins
    [att] = b.attachments
    assert att.original == bid
    fid = str(done.forward_id)
    # sv-police was routed neither: not through the forward, not through the original.
    async with await client(stack, "sv-police") as sv:
        for asked in (fid, bid):
            with pytest.raises(NotFound):
                await download(sv._nc, "sv-police", asked, att, tmp_path / f"sv-{asked}")
    # jm-police has the forward, not the original: only through the forward.
    async with await client(stack, "jm-police") as jm:
        with pytest.raises(NotFound):
            await download(jm._nc, "jm-police", bid, att, tmp_path / "around.jpg")
        [saved] = await jm.save_attachments(b, tmp_path / "inbox")
    assert saved.read_bytes() == photo.read_bytes()
    refused = {(e.actor, e.bulletin_id, e.reason) for e in audit_rows(stack, "request.rejected")
               if e.subject == "api.att.get" and e.bulletin_id in (fid, bid)}  # fmt: skip
    assert refused == {("sv-police", fid, "not_found"), ("sv-police", bid, "not_found"),
                       ("jm-police", bid, "not_found")}  # fmt: skip
    assert not list(tmp_path.glob("sv-*"))  # noqa: ASYNC240  # a test, on tmp
    assert not (tmp_path / "around.jpg").exists()
    assert await audit_verifies(stack.settings.data_dir)


async def test_wrong_keys_in_a_forward_are_caught_by_the_recipient(
    stack: Stack, tmp_path: Path
) -> None:
    """The relay cannot see keys: a forward citing the right chunks with wrong keys is
    accepted, and the recipient's SDK refuses the file it does not open, keeping none."""
    bid = await received_by_bz_police(stack, "keys kept", two_chunk_file(tmp_path / "k.bin"))
    async with await client(stack, "bz-police") as bz:
        grant = grant_by(stack, "gt-police", bid, "jm-police")
        env = await forged_forward(bz, bid, "jm-police", grant, file_key=os.urandom(32))
        await bz._publish_envelope(env)
        assert (await bz.wait_for_verdict(env.header.bulletin_id)).state == "accepted"
    [b] = (await take(stack, "jm-police")).bulletins
    async with await client(stack, "jm-police") as jm:
        with pytest.raises(AttachmentError) as refused:
            await jm.save_attachments(b, tmp_path / "inbox")
    assert refused.value.code == "chunk_invalid"
    assert list((tmp_path / "inbox" / b.id).iterdir()) == []


async def test_a_recall_of_the_original_takes_the_forwards_files(
    stack: Stack, tmp_path: Path
) -> None:
    bid = await received_by_bz_police(stack, "wrong photos", two_chunk_file(tmp_path / "w.jpg"))
    done = await forwarded_with_consent(stack, bid)
    [b] = (await take(stack, "jm-police")).bulletins
    async with await client(stack, "jm-police") as jm:
        await jm.save_attachments(b, tmp_path / "before")  # fetched once: the relay knows it
    async with await client(stack, "gt-police") as gt:
        assert (await gt.recall(bid, reason="wrong photos")).state == "done"
    assert await stored_chunk_subjects(stack, "gt-police", bid) == []
    async with await client(stack, "jm-police") as jm:
        with pytest.raises(NotFound):
            await jm.save_attachments(b, tmp_path / "after")
    assert not list((tmp_path / "after").rglob("*.jpg*"))
    # Each chunk asked for (a few are asked ahead) is refused, and audited.
    refused = {(e.actor, e.reason) for e in audit_rows(stack, "request.rejected")
               if e.bulletin_id == done.forward_id and e.subject == "api.att.get"}  # fmt: skip
    assert refused == {("jm-police", "not_found")}
    await take(stack, "bz-police", count=10, timeout=1)  # the withdrawal notice
    assert await audit_verifies(stack.settings.data_dir)
