"""Attachment chunks on the bus: stored for their originator, served to recipients (ADR 17).

Agencies never reach the chunk stream (``ISTMO_ATTACH``): they ask the relay on
``istmo.api.<agency>.att.<op>``, inside the ``istmo.api.<agency>.>`` their NATS account
already imports, so nats-server names the caller and no grant changes. The relays answer on
a subscription and thread of their own (``Relay``), so a 100 MB upload never queues
behind, or ahead of, other agencies' requests.

    put   store one chunk under the caller: ``istmo.attach.<caller>.<bulletin>.<i>.<j>``,
          write-once (a retry of the same bytes is answered as stored; other bytes are
          refused), with its SHA-256 recorded beside it, and the bulletin's expiry as TTL
    have  which chunks of one of the caller's attachments are stored (to resume), and
          the broker's limits
    get   one chunk, to the bulletin's originator or an agency it was routed to, while it
          is neither withdrawn nor expired; the chunk is hashed again first, and one that
          does not match what was recorded is refused. A forward's files are the
          original's chunks (ADR 20): asked for through the forward, they are served to
          its recipient while neither the forward nor the original is withdrawn or expired

Every refusal is a ``request.rejected`` audit event naming the bulletin, the relay never
decrypts anything, and nothing here logs a chunk. ``scan_chunks`` reads what is stored of a
bulletin for step 10 of the ingest checks (``attachment_checks.check_attachments``), and
``purge_chunks`` removes a withdrawn bulletin's. Left to others: the checks
(``broker.relay.attachment_checks``), the crypto (``schemas.attachments``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, NotFoundError

from broker.audit import events
from broker.clock import SYSTEM_CLOCK, Clock
from broker.config import Settings
from broker.directory.service import DirectoryService
from broker.relay.api_part import ApiPart
from broker.relay.attachment_checks import (
    AttachmentLimits,
    StoredChunk,
    check_put,
    may_fetch,
)
from broker.store.recalls import withdrawal
from broker.store.registry import Registry
from schemas.agency import KIND_HEADER, ErrorCode, ErrorReply, encode_reply
from schemas.attachments import (
    CHUNK_HEADER,
    CHUNK_KIND,
    MAX_CHUNK_REQUEST_BYTES,
    AttachmentAsk,
    ChunkGet,
    ChunkPut,
    ChunksHeld,
    ChunkStored,
)
from schemas.canonical import canonical_json
from schemas.envelope import parse_model
from schemas.errors import EnvelopeError, IstmoError
from schemas.ids import parse_agency_id
from schemas.subjects import (
    ATTACH_API_SUBJECTS,
    ATTACH_OPS,
    ATTACH_STREAM,
    chunk_subject,
    chunks_prefix,
)

__all__ = [
    "SHA_HEADER",
    "Attachments",
    "purge_chunks",
    "scan_chunks",
]

log = logging.getLogger("istmo.relay")

SHA_HEADER = "Istmo-Sha256"  # hex SHA-256 of the chunk ciphertext, computed by the relay
_WRONG_LAST_SEQUENCE = 10071  # Nats-Expected-Last-Subject-Sequence failed: stored already
_STORE_FULL = (10047, 10028)  # insufficient resources, maximum bytes/messages
# Who may fetch a bulletin's chunks is read once per bulletin for this long: a download is
# hundreds of requests. A recall also purges the chunks, so it takes effect at once.
_FETCH_CACHE_S = 10.0
_FETCH_CACHE_MAX = 4096
# Requests being answered at once on the attachments' connection: each waits on a
# JetStream write or read, which pipeline.
IN_FLIGHT = 32
SCAN_PAGE = 1000


@dataclass(frozen=True)
class _Fetchable:
    """Who may fetch a bulletin's files, and where its chunks are.

    ``originator`` and ``routed`` are the bulletin's; ``owner`` and ``chunks_of`` name the
    chunks' subjects: the bulletin's own, or for a forward the original's (ADR 20), which
    then counts as withdrawn or expired when either is."""

    originator: str
    routed: frozenset[str]
    withdrawn: bool
    expires_at: int | None
    read_at: float
    owner: str
    chunks_of: str


class Attachments(ApiPart):
    """Answers agencies' chunk requests (``put``, ``have``, ``get``)."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        directory: DirectoryService,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(settings, registry, directory, clock=clock)
        self.limits = AttachmentLimits(settings.max_attachment_bytes, settings.max_attachments)
        self._fetchable: OrderedDict[str, _Fetchable] = OrderedDict()

    async def serve_all(self, nc: NATS, stop: asyncio.Event) -> None:
        """Answer requests on ``nc`` until ``stop``, up to ``IN_FLIGHT`` at once."""
        gate = asyncio.Semaphore(IN_FLIGHT)
        async with asyncio.TaskGroup() as tg:

            async def on_msg(msg: Msg) -> None:
                await gate.acquire()
                task = tg.create_task(self.serve(nc, msg, now=self.clock.now_s()))
                task.add_done_callback(lambda _: gate.release())

            sub = await nc.subscribe(ATTACH_API_SUBJECTS, queue="relay-att", cb=on_msg)
            try:
                await nc.flush()
                await stop.wait()
            finally:
                try:
                    await sub.unsubscribe()
                except nats.errors.Error:
                    log.debug("could not unsubscribe the attachments' requests")

    async def serve(self, nc: NATS, msg: Msg, *, now: int) -> None:
        """Answer one request on ``istmo.api.<agency>.att.<op>``. Never raises."""
        if not msg.reply:
            return
        parts = msg.subject.split(".")
        op = parts[4] if len(parts) == 5 and parts[3] == "att" else ""
        js = nc.jetstream(timeout=10)
        try:
            caller = parse_agency_id(parts[2] if len(parts) > 2 else "")
            if caller not in self.directory.records:
                raise _Refusal("unknown_agency", "this agency is not in the directory")
            if op == "put":
                answer: bytes | tuple[bytes, dict[str, str]] = await self._put(js, caller, msg, now)
            elif op == "have":
                answer = await self._have(js, caller, msg.data)
            elif op == "get":
                answer = await self._get(js, caller, msg.data, now)
            else:
                raise _Refusal(
                    "bad_request", f"unknown operation: use att.{', att.'.join(ATTACH_OPS)}"
                )
        except _Refusal as exc:
            self._audit(parts, op, exc.code, exc.message, exc.bulletin_id, now)
            answer = encode_reply(ErrorReply.of(exc.code, exc.message))
        except EnvelopeError as exc:
            code: ErrorCode = "oversized" if exc.code == "oversized" else "malformed"
            self._audit(parts, op, code, str(exc), None, now)
            answer = encode_reply(ErrorReply.of(code, str(exc)))
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("attachments: JetStream did not answer att.%s (%s)", op, type(exc).__name__)
            answer = encode_reply(
                ErrorReply.of("internal", "the broker's store did not answer; try again")
            )
        except Exception:
            log.exception("could not answer att.%s", op[:8])
            answer = encode_reply(ErrorReply.of("internal", "the broker failed to answer"))
        try:
            if isinstance(answer, tuple):
                await nc.publish(msg.reply, answer[0], headers=answer[1])
            else:
                await nc.publish(msg.reply, answer)
        except nats.errors.Error as exc:  # the caller asks again
            log.debug("attachments: answer not sent (%s)", type(exc).__name__)

    # ------------------------------------------------------------------ put
    async def _put(self, js: JetStreamContext, caller: str, msg: Msg, now: int) -> bytes:
        raw = (msg.headers or {}).get(CHUNK_HEADER, "").encode()
        put = parse_model(ChunkPut, raw, max_bytes=MAX_CHUNK_REQUEST_BYTES, what="chunk")
        data = msg.data
        try:
            check_put(put, len(data), self.limits)
        except EnvelopeError as exc:
            raise _Refusal(_code(exc.code), str(exc), put.bulletin_id) from exc
        if put.expires_at is not None and put.expires_at <= now:
            raise _Refusal("expired", "the bulletin has expired", put.bulletin_id)
        sha = hashlib.sha256(data).hexdigest()
        subject = chunk_subject(caller, put.bulletin_id, put.attachment, put.chunk)
        headers = {
            SHA_HEADER: sha,
            "Nats-Msg-Id": f"{subject}:{sha[:32]}",
            # Write-once: a chunk of a bulletin is never replaced.
            "Nats-Expected-Last-Subject-Sequence": "0",
        }
        if put.expires_at is not None:
            headers["Nats-TTL"] = f"{max(put.expires_at - now, 1)}s"
        try:
            await js.publish(subject, data, stream=ATTACH_STREAM, headers=headers)
        except APIError as exc:
            if exc.err_code == _WRONG_LAST_SEQUENCE:
                if await _stored_sha(js, subject) != sha:
                    raise _Refusal(
                        "chunk_conflict",
                        f"chunk {put.chunk} of attachment {put.attachment} is stored already "
                        "with other content; publish the bulletin again (a new id)",
                        put.bulletin_id,
                    ) from exc
            elif exc.err_code in _STORE_FULL:
                raise _Refusal(
                    "store_full",
                    "the broker's attachment store is full: try again later, or ask its "
                    "administrators",
                    put.bulletin_id,
                ) from exc
            else:
                raise
        return canonical_json(ChunkStored(chunk=put.chunk).model_dump(mode="json"))

    # ------------------------------------------------------------------ have
    async def _have(self, js: JetStreamContext, caller: str, data: bytes) -> bytes:
        ask = parse_model(AttachmentAsk, data, max_bytes=MAX_CHUNK_REQUEST_BYTES, what="request")
        prefix = f"{chunks_prefix(caller, ask.bulletin_id)}.{ask.attachment}"
        try:
            info = await js.stream_info(ATTACH_STREAM, subjects_filter=f"{prefix}.*")
        except NotFoundError:
            info = None
        stored = sorted(
            int(s.rsplit(".", 1)[1])
            for s, n in ((info.state.subjects or {}) if info else {}).items()
            if n
        )
        held = ChunksHeld(
            stored=tuple(stored),
            max_attachment_bytes=self.limits.max_attachment_bytes,
            max_attachments=self.limits.max_attachments,
        )
        return canonical_json(held.model_dump(mode="json"))

    # ------------------------------------------------------------------ get
    async def _get(
        self, js: JetStreamContext, caller: str, data: bytes, now: int
    ) -> tuple[bytes, dict[str, str]]:
        ask = parse_model(ChunkGet, data, max_bytes=MAX_CHUNK_REQUEST_BYTES, what="request")
        bid = ask.bulletin_id
        seen = self._who_may_fetch(bid)
        expired = seen is not None and seen.expires_at is not None and seen.expires_at <= now
        if seen is None or not may_fetch(
            caller,
            originator=seen.originator,
            routed=seen.routed,
            withdrawn=seen.withdrawn,
            expired=expired,
        ):
            # One answer for an unknown bulletin, another agency's, a withdrawn and an
            # expired one: the caller learns nothing it could not know.
            raise _Refusal(
                "not_found",
                "no bulletin with this id was routed to you, or it was withdrawn or expired",
                bid,
            )
        subject = chunk_subject(seen.owner, seen.chunks_of, ask.attachment, ask.chunk)
        try:
            stored = await js.get_last_msg(ATTACH_STREAM, subject, direct=True)
        except NotFoundError as exc:
            now_seen = self._who_may_fetch(bid, fresh=True)
            if now_seen is None or now_seen.withdrawn:
                # Withdrawn since it was read (a recall purges the chunks): say so, as for
                # any bulletin withdrawn.
                raise _Refusal(
                    "not_found",
                    "no bulletin with this id was routed to you, or it was withdrawn or expired",
                    bid,
                ) from exc
            raise _Refusal(
                "chunk_missing",
                f"chunk {ask.chunk} of attachment {ask.attachment} is not in the broker's "
                "store (removed or lost); ask the originator to publish the file again",
                bid,
            ) from exc
        chunk = stored.data or b""
        recorded = (stored.headers or {}).get(SHA_HEADER)
        if recorded is None or hashlib.sha256(chunk).hexdigest() != recorded:
            log.error("attachments: chunk %s does not match its recorded hash", subject)
            raise _Refusal(
                "chunk_damaged",
                f"chunk {ask.chunk} of attachment {ask.attachment} is damaged in the "
                "broker's store; ask the broker's administrators",
                bid,
            )
        return chunk, {KIND_HEADER: CHUNK_KIND}

    def _who_may_fetch(self, bid: str, *, fresh: bool = False) -> _Fetchable | None:
        """Who may fetch ``bid``'s chunks, read from the registry at most every
        ``_FETCH_CACHE_S`` (unless ``fresh``); None if no such bulletin was accepted.

        A forward's files are the original's chunks (ADR 20): its recipients fetch them
        through it, and only while neither it nor the original is withdrawn or expired.
        """
        now = time.monotonic()
        kept = self._fetchable.get(bid)
        if not fresh and kept is not None and now - kept.read_at < _FETCH_CACHE_S:
            return kept
        row = self.registry.bulletin(bid)
        if row is None:
            return None
        withdrawn = withdrawal(self.registry, bid) is not None
        expires_at, owner, chunks_of = row.expires_at, row.originator, bid
        if row.forward_of is not None:
            original = self.registry.bulletin(row.forward_of)
            if original is None:  # not possible for an accepted forward: refuse
                return None
            owner, chunks_of = original.originator, original.id
            withdrawn = withdrawn or withdrawal(self.registry, original.id) is not None
            if original.expires_at is not None:
                expires_at = min(original.expires_at, expires_at or original.expires_at)
        seen = _Fetchable(
            originator=row.originator,
            routed=self._routed(bid, row.recipients),
            withdrawn=withdrawn,
            expires_at=expires_at,
            read_at=now,
            owner=owner,
            chunks_of=chunks_of,
        )
        self._fetchable[bid] = seen
        self._fetchable.move_to_end(bid)
        while len(self._fetchable) > _FETCH_CACHE_MAX:
            self._fetchable.popitem(last=False)
        return seen

    def _routed(self, bid: str, recipients: str) -> frozenset[str]:
        """The agencies ``bid`` was routed to: allowed by the policy, and addressed."""
        addressed = set(recipients.split(","))
        return frozenset(
            d.agency for d in self.registry.decisions(bid) if d.allowed and d.agency in addressed
        )

    def _audit(
        self,
        parts: list[str],
        op: str,
        code: str,
        message: str,
        bulletin_id: str | None,
        now: int,
    ) -> None:
        """A refused chunk request is an audit event (naming the bulletin when it parsed)."""
        try:
            actor: str = parse_agency_id(parts[2] if len(parts) > 2 else "")
        except IstmoError:
            actor = "unknown"
        event = events.request_rejected(
            actor,
            f"att.{op[:8]}",
            reason=code,
            message=message,
            at=now * 1000,
            bulletin_id=bulletin_id,
        )
        try:
            self.registry.record([], [event])
        except Exception:  # the store is away (AuditStoreError): the caller still hears
            log.exception("could not record the refusal of att.%s from %s", op[:8], actor)


class _Refusal(Exception):
    """A refused chunk request: its code and message for the caller and the audit log."""

    def __init__(self, code: ErrorCode, message: str, bulletin_id: str | None = None) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.bulletin_id = bulletin_id


def _code(code: str) -> ErrorCode:
    if code in ("attachment_too_large", "too_many_attachments"):
        return code  # type: ignore[return-value]  # both are ErrorCodes
    return "malformed"


async def _stored_sha(js: JetStreamContext, subject: str) -> str | None:
    try:
        stored = await js.get_last_msg(ATTACH_STREAM, subject, direct=True)
    except NotFoundError:
        return None
    return (stored.headers or {}).get(SHA_HEADER)


async def scan_chunks(
    js: JetStreamContext, originator: str, bulletin_id: str, *, most: int
) -> dict[tuple[int, int], StoredChunk]:
    """What the attachment stream holds of ``bulletin_id`` under ``originator``: each
    chunk's ciphertext length and recorded SHA-256, by (attachment, chunk); headers only,
    at most ``most`` chunks read.

    Raises:
        nats.errors.Error, TimeoutError: JetStream did not answer (the batch comes back).
    """
    found: dict[tuple[int, int], StoredChunk] = {}
    prefix = chunks_prefix(originator, bulletin_id)
    try:
        sub = await js.pull_subscribe(
            "",
            stream=ATTACH_STREAM,
            config=ConsumerConfig(
                filter_subject=f"{prefix}.>",
                ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.ALL,
                headers_only=True,
                inactive_threshold=30.0,
            ),
        )
    except NotFoundError:  # no attachment stream at all
        return found
    try:
        if not (await sub.consumer_info()).num_pending:
            return found
        while len(found) < most:
            try:
                msgs = await sub.fetch(min(SCAN_PAGE, most), timeout=2)
            except TimeoutError:
                break
            for msg in msgs:
                where = msg.subject.removeprefix(prefix + ".").split(".")
                headers = msg.headers or {}
                try:
                    key = (int(where[0]), int(where[1]))
                    chunk = StoredChunk(
                        size=int(headers.get("Nats-Msg-Size", "-1")),
                        sha256=bytes.fromhex(headers.get(SHA_HEADER, "")),
                    )
                except (ValueError, IndexError):
                    continue  # not a chunk the relay stored: counts as missing
                found[key] = chunk
            if not msgs or msgs[-1].metadata.num_pending == 0:
                break
    finally:
        try:
            await sub.unsubscribe()
        except nats.errors.Error:  # its inactive threshold removes it anyway
            log.debug("could not unsubscribe the chunk scan of %s", bulletin_id)
    return found


async def purge_chunks(js: JetStreamContext, originator: str, bulletin_id: str) -> None:
    """Remove every chunk of ``bulletin_id`` (a withdrawn bulletin's; ADR 17).

    Raises:
        nats.errors.Error, TimeoutError: JetStream did not answer.
    """
    try:
        await js.purge_stream(ATTACH_STREAM, subject=f"{chunks_prefix(originator, bulletin_id)}.>")
    except NotFoundError:
        return
