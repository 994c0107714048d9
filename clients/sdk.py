"""The async Istmo client: publish, receive, receipts.

A client connects to NATS with its agency's own nkey and inbox prefix; nats-server
confines it to its own subjects. Everything the client accepts from the broker is
checked: directory excerpts against the pinned directory key, envelopes against the
originator's registered signing key, and nothing reaches the application unless it
opened under its own key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from clients.dedupe import DedupeStore
from clients.keystore import Passphrase, load_keystore, save_keystore
from schemas.canonical import b64e, canonical_json
from schemas.directory import AgencyRecord, EncryptionKeyRecord, open_excerpt
from schemas.envelope import Content, Envelope
from schemas.errors import (
    BusUnavailable,
    DecryptionError,
    EnvelopeError,
    IstmoError,
    PolicyDenied,
    SignatureError,
)
from schemas.ids import AgencyId, BulletinId
from schemas.keys import EncryptionKey, EncryptionPublicKey, SigningKey
from schemas.keystore import KeystoreFile, StoredEncryptionKey, StoredSigningKey
from schemas.labels import Handling, Labels
from schemas.receipt import sign_receipt
from schemas.rotation import sign_rotation
from schemas.sealing import encode_envelope, envelope_digest, open_envelope, parse_envelope, seal
from schemas.subjects import (
    DELIVER_STREAM,
    api_subject,
    deliver_durable,
    inbox_prefix,
    ingest_msg_id,
    ingest_subject,
    receipt_subject,
)

__all__ = [
    "IstmoClient",
    "Preview",
    "PublishRejected",
    "PublishResult",
    "PublishUnacknowledged",
    "ReceiptReport",
    "ReceivedBulletin",
]

log = logging.getLogger("istmo.sdk")

DIRECTORY_TTL_S = 60.0
# Ride out a NATS restart or a cluster's leader election (F-04, F-05): about a minute of
# attempts, 0.5 s apart, before the client gives up and says the broker is gone.
RECONNECT_ATTEMPTS = 120
# A receipt NATS did not store: the bulletin is handed back and its receipt sent again.
RECEIPT_RETRY_S = 2
# What JetStream says when a stream or its volume has no room (nats-server's messages).
# No answer to a JetStream publish: nobody stored it (no broker gate running, JetStream
# electing a leader); a retry with the same Nats-Msg-Id is harmless.
_NOT_STORED = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
)
_STORE_FULL = ("maximum bytes", "maximum messages", "insufficient resources", "no space")
# JetStream is still deciding an earlier attempt with the same Nats-Msg-Id (a clustered
# stream whose leader moved mid-publish): not a refusal; asking again settles it.
_DUPLICATE_IN_PROCESS = 10158

CAVEATS = {
    Handling.H0: "use only for the purpose it was provided for",
    Handling.H1: "no judicial use without the originator's consent",
    Handling.H2: "no further dissemination without the originator's consent",
}


class PublishRejected(IstmoError):
    """The relay refused a bulletin; ``code`` is its reason."""

    default_code = "rejected"


class PublishUnacknowledged(BusUnavailable):
    """NATS never acknowledged the bulletin: it may or may not be stored. Publishing it
    again makes a new bulletin (a new id); ask ``status(bulletin_id)`` first."""

    default_code = "unacknowledged"

    def __init__(self, bulletin_id: str, why: str) -> None:
        super().__init__(
            f"NATS did not acknowledge bulletin {bulletin_id} ({why}): it may or may not "
            "be stored; check its status before publishing it again, which would make a "
            "new bulletin"
        )
        self.bulletin_id = bulletin_id


@dataclass(frozen=True)
class PublishResult:
    """What happened to a published bulletin.

    Attributes:
        bulletin_id: the id to quote for receipts.
        state: "accepted" once the relay routed it, "pending" if the wait timed out,
            "embargoed" if it was published with a ``not_before`` still to come.
        routed: agencies it was delivered to.
        denied: (agency, policy ids) the policy refused, with the deciding policies.
    """

    bulletin_id: str
    state: str
    routed: tuple[str, ...] = ()
    denied: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class ReceivedBulletin:
    """A verified, decrypted bulletin, as the application receives it."""

    id: str
    originator: str
    labels: Labels
    title: str
    body: str
    created_at: int
    received_at: int
    caveats: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "originator": self.originator,
            "labels": self.labels.model_dump(mode="json", exclude_none=True),
            "title": self.title,
            "body": self.body,
            "created_at": self.created_at,
            "received_at": self.received_at,
            "caveats": list(self.caveats),
        }


@dataclass(frozen=True)
class Preview:
    """The policy's answer before publishing: (agency, permitted, why) per candidate."""

    policy_version: str
    may_publish: bool
    candidates: tuple[tuple[str, bool, str], ...]


@dataclass(frozen=True)
class ReceiptReport:
    """Who received a bulletin: (agency, received_at or None) per routed recipient."""

    bulletin_id: str
    recipients: tuple[tuple[str, int | None], ...]


Handler = Callable[[ReceivedBulletin], Awaitable[None]]


def _cancel_requested() -> bool:
    """Whether this task was asked to stop and has not taken it back. Python 3.11's
    ``asyncio.wait_for`` (inside nats-py's fetch) can swallow a cancellation that arrives
    as its inner wait completes, and a handler may catch one: the request is still
    counted, so ``receive`` honours it at its next step instead of running on."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _stop_if_cancelled() -> None:
    if _cancel_requested():
        raise asyncio.CancelledError


class IstmoClient:
    """One agency's connection to Istmo.

    Use ``await IstmoClient.connect(...)``, ideally as ``async with``.
    """

    def __init__(
        self,
        keystore: KeystoreFile,
        nc: NATS,
        dedupe: DedupeStore,
        keystore_path: Path | None = None,
    ) -> None:
        self.keystore_path = keystore_path
        self.keystore = keystore
        self.agency = AgencyId(keystore.agency)
        self._nc = nc
        self._js = nc.jetstream(timeout=10)
        self._dedupe = dedupe
        # Directory records by agency, with when they were fetched: a revocation or a
        # rotation reaches a long-running client within DIRECTORY_TTL_S.
        self._records: dict[str, tuple[float, AgencyRecord]] = {}
        self._pinned = keystore.pinned_directory_key()

    @classmethod
    async def connect(
        cls,
        keystore_path: Path,
        nats_url: str,
        *,
        dedupe_path: Path | None = None,
        connect_timeout: float = 5.0,
        passphrase: Passphrase = None,
    ) -> IstmoClient:
        """Open the keystore and connect to NATS as its agency.

        Raises:
            ConfigError: the keystore is missing, too open or damaged.
            BusUnavailable: NATS is not reachable at ``nats_url``, refused the key, or
                presented a certificate that does not verify against the trusted CAs
                (``SSL_CERT_FILE``; code ``tls_untrusted``).
        """
        keystore = load_keystore(keystore_path, passphrase)
        errors: list[str] = []
        connected: list[NATS] = []
        closing: set[asyncio.Task[None]] = set()

        async def on_error(exc: Exception) -> None:
            if not connected and isinstance(exc, ssl.SSLError):
                # A TLS handshake that failed (an untrusted certificate, a wrong name) fails
                # the same way on every retry, and nats-py 2.16 then hangs for ever closing
                # the socket (nats-io/nats.py#718): raised here, it ends nats.connect.
                raise exc
            # Permission violations reach only this callback; log the subject, no payload.
            errors.append(str(exc))
            log.warning("nats: %s", exc)
            if connected and "authorization violation" in str(exc).lower():
                # Suspended or revoked while connected: retrying cannot help; stop now.
                task = asyncio.get_running_loop().create_task(connected[0].close())
                closing.add(task)
                task.add_done_callback(closing.discard)

        try:
            nc = await nats.connect(
                nats_url,
                nkeys_seed_str=keystore.nats_seed,
                inbox_prefix=inbox_prefix(keystore.agency),
                name=keystore.agency,
                connect_timeout=connect_timeout,
                allow_reconnect=True,
                max_reconnect_attempts=3,  # a first connection fails fast
                reconnect_time_wait=0.5,
                error_cb=on_error,
            )
        except ssl.SSLCertVerificationError as exc:
            raise BusUnavailable(
                f"the certificate of NATS at {nats_url} could not be verified "
                f"({exc.verify_message}): set SSL_CERT_FILE to the region's CA certificate",
                code="tls_untrusted",
            ) from exc
        except ssl.SSLError as exc:
            raise BusUnavailable(
                f"TLS with NATS at {nats_url} failed ({exc.reason or exc})", code="tls_failed"
            ) from exc
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            detail = "; ".join(errors[-1:]) or type(exc).__name__
            if any("authorization violation" in e.lower() for e in errors):
                raise BusUnavailable(
                    f"NATS at {nats_url} refused {keystore.agency}'s credentials "
                    "(suspended, revoked, or not in this directory)",
                    code="not_authorized",
                ) from exc
            raise BusUnavailable(f"broker not running at {nats_url} ({detail})") from exc
        # Once connected, ride out restarts and elections (nats-py reads this per attempt).
        nc.options["max_reconnect_attempts"] = RECONNECT_ATTEMPTS
        connected.append(nc)
        path = dedupe_path or keystore_path.with_name(keystore_path.stem + ".received.sqlite")
        return cls(keystore, nc, DedupeStore(path), keystore_path)

    async def __aenter__(self) -> IstmoClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Flush what was published (receipts included), then close."""
        try:
            await asyncio.wait_for(self._nc.flush(), 5)
        except (nats.errors.Error, TimeoutError, OSError):
            log.warning("closing before NATS confirmed the last messages")
        await self._nc.close()
        self._dedupe.close()

    # ------------------------------------------------------------------ requests
    async def _request(self, op: str, payload: dict[str, Any], timeout: float = 5.0) -> Any:
        try:
            msg = await self._nc.request(
                api_subject(self.agency, op), canonical_json(payload), timeout=timeout
            )
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            raise BusUnavailable(
                f"the broker did not answer {op!r} (is the relay running?)"
            ) from exc
        answer = json.loads(msg.data)
        if isinstance(answer, dict) and "error" in answer and len(answer) == 1:
            err = answer["error"]
            code = str(err.get("code", "error"))
            if code == "policy_deny":
                raise PolicyDenied(str(err.get("message", "")), code=code)
            raise IstmoError(str(err.get("message", "request failed")), code=code)
        return answer

    async def _directory(self, agencies: list[str]) -> dict[str, AgencyRecord]:
        fresh_after = time.monotonic() - DIRECTORY_TTL_S
        missing = [a for a in agencies if self._records.get(a, (0.0, None))[0] < fresh_after]
        if missing:
            msg = await self._nc.request(
                api_subject(self.agency, "directory"),
                canonical_json({"agencies": sorted(set(missing))}),
                timeout=5,
            )
            excerpt = open_excerpt(msg.data, self._pinned)
            for rec in excerpt.agencies:
                self._records[rec.id] = (time.monotonic(), rec)
        return {a: self._records[a][1] for a in agencies if a in self._records}

    # ------------------------------------------------------------------ publish
    async def resolve(
        self, labels: Labels, *, expires_at: int | None = None, not_before: int | None = None
    ) -> dict[AgencyId, EncryptionPublicKey]:
        """Ask the broker who may receive a bulletin with ``labels``, with their keys.

        The answer comes in a directory excerpt signed by the pinned directory key.
        """
        req: dict[str, Any] = {"labels": labels.model_dump(mode="json", exclude_none=True)}
        if expires_at is not None:
            req["expires_at"] = expires_at
        if not_before is not None:
            req["not_before"] = not_before
        answer = await self._request("resolve", req)
        excerpt = open_excerpt(canonical_json(answer["directory"]), self._pinned)
        out: dict[AgencyId, EncryptionPublicKey] = {}
        for rec in excerpt.agencies:
            self._records[rec.id] = (time.monotonic(), rec)
            if rec.id in answer["recipients"] and rec.encryption_key is not None:
                out[AgencyId(rec.id)] = rec.encryption_key.public_key()
        return out

    async def preview(
        self, labels: Labels, *, expires_at: int | None = None, not_before: int | None = None
    ) -> Preview:
        """Who would receive a bulletin with ``labels``, and why not the others."""
        req: dict[str, Any] = {"labels": labels.model_dump(mode="json", exclude_none=True)}
        if expires_at is not None:
            req["expires_at"] = expires_at
        if not_before is not None:
            req["not_before"] = not_before
        answer = await self._request("explain", req)
        return Preview(
            policy_version=answer["policy_version"],
            may_publish=bool(answer["publish"]["allowed"]),
            candidates=tuple(
                (c["agency"], bool(c["allowed"]), c["summary"]) for c in answer["candidates"]
            ),
        )

    async def publish(
        self,
        *,
        title: str,
        text: str,
        labels: Labels,
        expires_at: int | None = None,
        not_before: int | None = None,
        wait: bool = True,
        timeout: float = 10.0,
    ) -> PublishResult:
        """Seal, sign and publish a bulletin, then wait for the relay's verdict.

        Raises:
            PolicyDenied: no agency may receive it, or the originator may not publish it.
            PublishRejected: the relay refused it; ``code`` names the reason.
            BusUnavailable: NATS or the relay did not answer.
        """
        recipients = await self.resolve(labels, expires_at=expires_at, not_before=not_before)
        if not recipients:
            raise PolicyDenied("no agency may receive this bulletin under the current policy")
        env = seal(
            content=Content(title=title, text=text),
            labels=labels,
            originator=self.agency,
            signing_key=self.keystore.signing_key(),
            recipients=recipients,
            now=int(time.time()),
            expires_at=expires_at,
            not_before=not_before,
        )
        await self._publish_envelope(env)
        if not_before is not None and not_before > env.header.created_at:
            # The relay decides and delivers it only once the embargo ends.
            return PublishResult(env.header.bulletin_id, "embargoed")
        if not wait:
            return PublishResult(env.header.bulletin_id, "pending")
        return await self.wait_for_verdict(env.header.bulletin_id, timeout=timeout)

    async def _publish_envelope(self, env: Envelope, attempts: int = 3) -> None:
        raw = encode_envelope(env)
        headers = {"Nats-Msg-Id": ingest_msg_id(self.agency, envelope_digest(env))}
        for attempt in range(attempts):
            try:
                await self._js.publish(ingest_subject(self.agency), raw, headers=headers, timeout=5)
                return
            except nats.js.errors.APIError as exc:
                if exc.err_code == _DUPLICATE_IN_PROCESS:
                    # It may yet be stored: never "nothing was stored". Ask again.
                    if attempt == attempts - 1:
                        raise PublishUnacknowledged(
                            str(env.header.bulletin_id), "an earlier attempt is still being stored"
                        ) from exc
                    await asyncio.sleep(0.5 * (attempt + 1))
                    continue
                # JetStream refused to store it: nothing was stored; say why.
                text = str(exc.description or "")[:120]
                full = any(w in text.lower() for w in _STORE_FULL)
                raise BusUnavailable(
                    f"NATS refused the bulletin: {'the store is full' if full else 'refused'}"
                    f" ({text}); nothing was stored, publish it again later",
                    code="store_full" if full else "refused",
                ) from exc
            except _NOT_STORED as exc:
                if attempt == attempts - 1:
                    raise PublishUnacknowledged(str(env.header.bulletin_id), "no answer") from exc
                await asyncio.sleep(0.5 * (attempt + 1))  # same Nats-Msg-Id: a retry is harmless

    async def status(self, bulletin_id: str) -> dict[str, Any]:
        """The relay's verdict on one of this agency's bulletins."""
        answer: dict[str, Any] = await self._request("status", {"bulletin_id": bulletin_id})
        return answer

    async def wait_for_verdict(self, bulletin_id: str, *, timeout: float = 10.0) -> PublishResult:
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            st = await self.status(bulletin_id)
            if st["state"] == "accepted":
                return PublishResult(
                    bulletin_id,
                    "accepted",
                    tuple(st["routed"]),
                    tuple((d["agency"], tuple(d["policy_ids"])) for d in st["denied"]),
                )
            if st["state"] == "rejected":
                raise PublishRejected(
                    f"bulletin {bulletin_id} rejected: {st['message']}", code=st["reason"]
                )
            if time.monotonic() >= deadline:
                return PublishResult(bulletin_id, "pending")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def receipts(self, bulletin_id: str) -> ReceiptReport:
        """Which recipients have received one of this agency's bulletins."""
        answer = await self._request("receipts", {"bulletin_id": bulletin_id})
        return ReceiptReport(
            bulletin_id,
            tuple((r["agency"], r["received_at"]) for r in answer["recipients"]),
        )

    async def dead_letters(self) -> list[dict[str, Any]]:
        """This agency's dead letters: bulletins its handler failed on 10 times, and its
        own bulletins no relay could process, each with ``kind``, ``bulletin_id``,
        ``deliveries``, ``dead_seq`` and ``time_ms``. An operator redrives them (``istmo
        admin redrive``) once the handler is fixed."""
        answer = await self._request("dead-letters", {})
        letters: list[dict[str, Any]] = answer["dead_letters"]
        return letters

    # ------------------------------------------------------------------ keys
    async def rotate_keys(self, *, passphrase: str | None = None) -> tuple[str, str]:
        """Register new signing and encryption keys, vouched for by the current one.

        The new keys are written beside the keystore first (``<keystore>.rotating``), so
        nothing is lost if the broker accepts and this process dies before the keystore
        is replaced; the old keys stay in the keystore (old bulletins still open).

        Args:
            passphrase: the keystore's passphrase, if it is protected by one.

        Returns:
            The new signing and encryption key ids.

        Raises:
            IstmoError: the broker refused the rotation (``code`` says why).
            RuntimeError: this client was not opened from a keystore file.
        """
        if self.keystore_path is None:
            raise RuntimeError("rotate_keys needs a client opened with IstmoClient.connect")
        ks = self.keystore
        current = ks.signing_key()
        new_sk = SigningKey.generate()
        new_ek = EncryptionKey.generate(ks.encryption_keys[-1].kem)
        now = int(time.time())
        pub = new_ek.public_key
        request = sign_rotation(
            agency=self.agency,
            issued_at=now,
            current=current,
            new=new_sk,
            encryption=EncryptionKeyRecord(
                kid=pub.kid, kem=pub.kem, public=b64e(pub.public), created_at=now
            ),
        )
        rotated = ks.model_copy(
            update={
                "signing_keys": (
                    *ks.signing_keys,
                    StoredSigningKey(
                        kid=new_sk.verify_key.kid, private=b64e(new_sk.private), created_at=now
                    ),
                ),
                "encryption_keys": (
                    *ks.encryption_keys,
                    StoredEncryptionKey(
                        kid=pub.kid, kem=pub.kem, private=b64e(new_ek.private), created_at=now
                    ),
                ),
            }
        )
        pending = self.keystore_path.with_name(self.keystore_path.name + ".rotating")
        save_keystore(pending, rotated, passphrase)
        try:
            await self._request("rotate", request.model_dump(mode="json"))
        except IstmoError:
            pending.unlink(missing_ok=True)
            raise
        pending.replace(self.keystore_path)
        self.keystore = rotated
        self._records.pop(self.agency, None)
        return new_sk.verify_key.kid, pub.kid

    async def revoke_key(self, kid: str) -> int:
        """Revoke one of this agency's own signing keys, from now on (after a leak).

        What the key signed before still verifies; what it signs from now on is refused
        (``key_revoked``). Revoking the current key leaves nothing to sign with: rotate
        first (``rotate_keys``) and revoke the old key, unless the keystore itself leaked.

        Returns:
            When the revocation took effect (epoch seconds).

        Raises:
            IstmoError: ``not_found`` (not a signing key of this agency),
                ``already_revoked``, or ``malformed`` (not a key id).
        """
        answer = await self._request("revoke-key", {"kid": kid})
        self._records.pop(self.agency, None)
        return int(answer["revoked_at"])

    # ------------------------------------------------------------------ receive
    async def receive(
        self,
        handler: Handler,
        *,
        count: int | None = None,
        timeout: float | None = None,
        batch: int = 16,
    ) -> int:
        """Hand verified bulletins to ``handler``, then ack and send a signed receipt.

        A bulletin is acknowledged only after ``handler`` returned, and its id is then
        remembered durably, so a redelivery never reaches ``handler`` twice.

        Args:
            handler: awaited once per new bulletin.
            count: stop after this many bulletins (None: no limit).
            timeout: stop after this many seconds (None: no limit).
            batch: how many messages to fetch at once.

        Returns:
            How many bulletins were handed over.
        """
        sub = await self._js.pull_subscribe_bind(
            deliver_durable(self.agency), stream=DELIVER_STREAM
        )
        deadline = None if timeout is None else time.monotonic() + timeout
        handed = 0
        try:
            while count is None or handed < count:
                _stop_if_cancelled()
                wait = 5.0 if deadline is None else min(5.0, deadline - time.monotonic())
                if wait <= 0:
                    break
                want = batch if count is None else max(1, min(batch, count - handed))
                try:
                    msgs = await sub.fetch(want, timeout=wait)
                except TimeoutError:  # nats-py raises both its own and asyncio's
                    continue
                for i, msg in enumerate(msgs):
                    if (count is not None and handed >= count) or _cancel_requested():
                        # Not ours to process now: back to the server at once.
                        for rest in msgs[i:]:
                            await rest.nak()
                        break
                    if await self._handle(msg, handler):
                        handed += 1
        finally:
            await sub.unsubscribe()
        return handed

    async def _handle(self, msg: Msg, handler: Handler) -> bool:
        try:
            env = parse_envelope(msg.data)
        except EnvelopeError as exc:
            # Not an Istmo message (e.g. a server-made reply planted on our subject).
            log.warning("dropped a non-Istmo message on %s: %s", msg.subject, exc.code)
            await msg.term()
            return False
        bid = env.header.bulletin_id
        digest = envelope_digest(env)
        handed_at = self._dedupe.handed_at(bid)
        if handed_at is not None:
            # Handed over before, but this process may have died before it acked or sent
            # the receipt: send the receipt again (stored once by id), then ack.
            await self._settle(msg, await self._send_receipt(env, digest, handed_at))
            return False
        try:
            bulletin = await self._open(env)
        except (SignatureError, DecryptionError, EnvelopeError) as exc:
            log.warning("refused bulletin %s from %s: %s", bid, env.header.originator, exc.code)
            await msg.term()
            return False
        await handler(bulletin)
        self._dedupe.remember(bid, digest, bulletin.received_at)
        # Receipt before ack: a crash in between redelivers it, and the dedupe branch
        # above sends the receipt again, so no receipt is lost to a crash.
        await self._settle(msg, await self._send_receipt(env, digest, bulletin.received_at))
        return True

    @staticmethod
    async def _settle(msg: Msg, receipt_stored: bool) -> None:
        """Ack once the receipt is stored; otherwise hand the bulletin back for a while: it
        returns, the dedupe store keeps it from the application, and the receipt is sent
        again (NATS may be electing a leader, or a node may be down)."""
        if receipt_stored:
            await msg.ack_sync()
        else:
            await msg.nak(delay=RECEIPT_RETRY_S)

    async def _open(self, env: Envelope) -> ReceivedBulletin:
        h = env.header
        records = await self._directory([h.originator])
        rec = records.get(h.originator)
        key = next((k for k in rec.signing_keys if k.kid == env.sig.kid), None) if rec else None
        if key is None:
            self._records.pop(h.originator, None)  # maybe rotated: ask once more
            rec = (await self._directory([h.originator])).get(h.originator)
            key = next((k for k in rec.signing_keys if k.kid == env.sig.kid), None) if rec else None
        if key is None:
            raise SignatureError("signed by a key the directory does not know")
        if key.revoked_at is not None and key.revoked_at <= h.created_at:
            raise SignatureError("signed after its key was revoked", code="key_revoked")
        wrap = next((w for w in env.wraps if w.recipient == self.agency), None)
        my_key = self.keystore.encryption_key(wrap.kid) if wrap else None
        if my_key is None:
            raise DecryptionError("bulletin does not open", code="recipient_key_unknown")
        inner = open_envelope(env, recipient=self.agency, key=my_key, sender_key=key.verify_key())
        caveats = [CAVEATS[c] for c in h.labels.handling if c in CAVEATS]
        if h.labels.handling_note:
            caveats.append(h.labels.handling_note)
        return ReceivedBulletin(
            id=h.bulletin_id,
            originator=h.originator,
            labels=h.labels,
            title=inner.content.title,
            body=inner.content.text,
            created_at=h.created_at,
            received_at=int(time.time()),
            caveats=tuple(caveats),
        )

    async def _send_receipt(self, env: Envelope, digest: str, received_at: int) -> bool:
        """Sign and send the receipt; True once JetStream has stored it."""
        h = env.header
        receipt = sign_receipt(
            bulletin_id=BulletinId(h.bulletin_id),
            originator=AgencyId(h.originator),
            recipient=self.agency,
            envelope_digest=digest,
            received_at=received_at,
            key=self.keystore.signing_key(),
        )
        try:
            await self._js.publish(
                receipt_subject(self.agency),
                canonical_json(receipt.model_dump(mode="json")),
                headers={"Nats-Msg-Id": f"{h.bulletin_id}:{self.agency}:receipt"},
                timeout=5,
            )
        except (*_NOT_STORED, nats.js.errors.APIError):
            # Not stored: the caller hands the bulletin back, so the receipt is sent again.
            log.warning(
                "receipt for %s not acknowledged by NATS; retrying in %d s",
                h.bulletin_id,
                RECEIPT_RETRY_S,
            )
            return False
        return True
