"""The async Istmo client: publish, receive, receipts.

A client connects to NATS with its agency's own nkey and inbox prefix; nats-server
confines it to its own subjects. Everything the client accepts from the broker is
checked: directory excerpts against the pinned directory key, envelopes against the
originator's registered signing key, and nothing reaches the application unless it
opened under its own key.

Its parts live beside it, one concept each: the connection (``clients.connection``),
requests to the broker and their typed replies (``clients.requests``, ``schemas.agency``),
the SDK's errors and the one each error code raises (``clients.errors``), storing
bulletins and receipts in JetStream (``clients.publishing``), pulling deliveries most
urgent first (``clients.queues``), opening a delivery (``clients.opening``), new keys
(``clients.rotation``), the resolve answers it keeps while the relays' announcements say
they hold (``clients.resolve_cache``, ADR 0009), the signed directory records it takes
recipients' and senders' keys from (``clients.directory_cache``, kept current by
``clients.records``, ADR 0014), checking a delivered withdrawal (``clients.withdrawals``,
ADR 15) and the values handed back (``clients.results``,
importable from here too).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import BaseModel, ValidationError

from clients.connection import connect_agency
from clients.dedupe import DedupeStore
from clients.directory_cache import DirectoryCache
from clients.errors import PublishRejected, PublishUnacknowledged
from clients.keystore import Passphrase, load_keystore, save_keystore
from clients.opening import open_delivery, signing_key_of
from clients.publishing import store_envelope, store_receipt
from clients.queues import DeliveryQueues, hand_back
from clients.records import DirectoryRecords
from clients.requests import REQUEST_TIMEOUT_S, ask, make_request
from clients.resolve_cache import ResolveCache, Versions
from clients.results import (
    Preview,
    PublishResult,
    RecallResult,
    ReceiptReport,
    ReceivedBulletin,
    Withdrawn,
    Withheld,
)
from clients.rotation import new_keys
from clients.withdrawals import check_delivered_withdrawal
from schemas.agency import (
    Announcement,
    ApiOp,
    BulletinRequest,
    DeadLettersReply,
    DeadLettersRequest,
    ExplainReply,
    RecallReply,
    ReceiptsReply,
    RecipientsReply,
    ResolveReply,
    ResolveRequest,
    RevokeKeyReply,
    RevokeKeyRequest,
    RotateReply,
    StatusAccepted,
    StatusRejected,
    StatusReply,
    WithheldReply,
    WithheldRequest,
    encode_request,
)
from schemas.directory import AgencyRecord, SigningKeyRecord
from schemas.envelope import Content, Envelope, parse_model
from schemas.errors import (
    BusUnavailable,
    DecryptionError,
    EnvelopeError,
    IstmoError,
    PolicyDenied,
    SignatureError,
)
from schemas.ids import AgencyId, BulletinId
from schemas.keys import EncryptionPublicKey
from schemas.keystore import KeystoreFile
from schemas.labels import Labels
from schemas.receipt import sign_receipt
from schemas.sealing import envelope_digest, parse_envelope, seal
from schemas.subjects import ANNOUNCE_SUBJECT
from schemas.withdrawal import (
    MAX_REASON_CHARS,
    WITHDRAWAL_KIND,
    parse_withdrawal,
    sign_withdrawal,
)

__all__ = [
    "Handler",
    "IstmoClient",
    "Preview",
    "PublishRejected",
    "PublishResult",
    "PublishUnacknowledged",
    "RecallResult",
    "ReceiptReport",
    "ReceivedBulletin",
    "WithdrawalHandler",
    "Withdrawn",
    "Withheld",
]

log = logging.getLogger("istmo.sdk")

R = TypeVar("R", bound=BaseModel)

# How long a directory record is used while no relay's announcement is heard (or the
# broker predates ADR 14): a change reaches a client that hears none within this.
DIRECTORY_TTL_S = 60.0
# A receipt NATS did not store: the bulletin is handed back and its receipt sent again.
RECEIPT_RETRY_S = 2
# Receipts and acks under way at once while receive goes on to the next bulletin: each is a
# JetStream round trip (and a flush) that need not hold up the next handler.
SETTLE_IN_FLIGHT = 64
# An announcement is three short fields; anything much larger is not one.
MAX_ANNOUNCEMENT_BYTES = 1024

Handler = Callable[[ReceivedBulletin], Awaitable[None]]
WithdrawalHandler = Callable[[Withdrawn], Awaitable[None]]
# What a delivery that is not a bulletin says it is (ADR 15); a bulletin has no such header.
KIND_HEADER = "Istmo-Kind"
# A recall may scan the delivery stream for copies before the relay answers.
RECALL_TIMEOUT_S = 30.0


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

    ``resolve_cache`` is the ``clients.resolve_cache.ResolveCache`` of resolve answers
    kept for ``publish`` (None when turned off). ``directory`` is the
    ``clients.directory_cache.DirectoryCache`` of signed directory records that recipients'
    and senders' keys are taken from (ADR 14), in memory only.
    """

    def __init__(
        self,
        keystore: KeystoreFile,
        nc: NATS,
        dedupe: DedupeStore,
        keystore_path: Path | None = None,
        *,
        resolve_cache: bool = True,
    ) -> None:
        self.resolve_cache = ResolveCache() if resolve_cache else None
        self._announcements: Subscription | None = None
        self.keystore_path = keystore_path
        self.keystore = keystore
        self.agency = AgencyId(keystore.agency)
        self._nc = nc
        self._js = nc.jetstream(timeout=10)
        self._dedupe = dedupe
        self._pinned = keystore.pinned_directory_key()
        # Directory records by agency, each checked against the pinned key and kept
        # current by the relays' announcements and signed change lists (ADR 14).
        self.directory = DirectoryCache(self._pinned, unheard_ttl_s=DIRECTORY_TTL_S)
        self._records = DirectoryRecords(nc, self.agency, self.directory, self._epoch)
        # A broker before ADR 14 answers no "recipients": resolve as it did then.
        self._resolves_with_keys = False
        # Receipts being stored and deliveries being acked, behind the handler (_settle_later).
        self._settling: set[asyncio.Task[None]] = set()

    @classmethod
    async def connect(
        cls,
        keystore_path: Path,
        nats_url: str,
        *,
        dedupe_path: Path | None = None,
        connect_timeout: float = 5.0,
        passphrase: Passphrase = None,
        resolve_cache: bool = True,
    ) -> IstmoClient:
        """Open the keystore and connect to NATS as its agency.

        Args:
            resolve_cache: keep resolve answers while the relays announce that the
                directory and policy are unchanged, so publishing again with the same
                labels asks the relay nothing (ADR 0009). False: ask every time.

        Raises:
            ConfigError: the keystore is missing, too open or damaged.
            BusUnavailable: NATS is not reachable at ``nats_url``, refused the key, or
                presented a certificate that does not verify against the trusted CAs
                (``SSL_CERT_FILE``; code ``tls_untrusted``).
        """
        keystore = load_keystore(keystore_path, passphrase)
        nc = await connect_agency(keystore, nats_url, timeout=connect_timeout)
        path = dedupe_path or keystore_path.with_name(keystore_path.stem + ".received.sqlite")
        client = cls(keystore, nc, DedupeStore(path), keystore_path, resolve_cache=resolve_cache)
        try:
            await client.listen_for_announcements()
        except BaseException:
            await client.close()
            raise
        return client

    async def listen_for_announcements(self) -> None:
        """Subscribe to the relays' announcements, which ``resolve_cache`` needs before
        it keeps anything and ``directory`` to use its records without asking (``connect``
        does this; a client built around its own connection calls it once). A broker too
        old to announce refuses the subscription: nothing is then kept, records are checked
        with the broker once they are ``DIRECTORY_TTL_S`` old, and NATS logs the refusal
        once."""
        if self._announcements is not None:
            return
        self._announcements = await self._nc.subscribe(ANNOUNCE_SUBJECT, cb=self._on_announcement)

    async def _on_announcement(self, msg: Msg) -> None:
        cache = self.resolve_cache
        try:
            announced = parse_model(
                Announcement, msg.data, max_bytes=MAX_ANNOUNCEMENT_BYTES, what="announcement"
            )
        except EnvelopeError as exc:
            log.warning("ignored a malformed announcement (%s); resolving afresh", exc.code)
            if cache is not None:
                cache.lost()
            self.directory.lost()
            return
        now, epoch = time.monotonic(), self._epoch()
        if cache is not None:
            cache.heard(announced, now=now, epoch=epoch)
        self.directory.heard(
            announced.directory_version, interval_s=announced.interval_s, now=now, epoch=epoch
        )

    def _epoch(self) -> int:
        """Which connection this is: NATS's reconnect count, -1 while disconnected. What
        was kept on one connection is not used on the next (announcements may have been
        missed in between)."""
        if not self._nc.is_connected:
            return -1
        return int(self._nc.stats["reconnects"])

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
    async def _ask(
        self, op: ApiOp, request: BaseModel, reply: type[R], timeout: float = REQUEST_TIMEOUT_S
    ) -> R:
        """One request to the broker (``clients.requests.ask``) as this agency."""
        return await ask(self._nc, self.agency, op, request, reply, timeout=timeout)

    async def _directory(
        self, agencies: list[str], *, floor: str | None = None
    ) -> dict[str, AgencyRecord]:
        """The records of ``agencies`` the directory lists, as ``directory`` may use them
        now (``clients.records``: asked for only when missing or out of date).

        Raises:
            BusUnavailable: the broker did not answer.
            SignatureError: an answer is not signed by the pinned directory key, or the
                relays answer with an older directory than this client holds.
            IstmoError: the broker refused the request (``clients.errors``).
        """
        return await self._records.current(agencies, floor=floor)

    # ------------------------------------------------------------------ publish
    async def resolve(
        self, labels: Labels, *, expires_at: int | None = None, not_before: int | None = None
    ) -> dict[AgencyId, EncryptionPublicKey]:
        """Ask the broker who may receive a bulletin with ``labels``, with their keys.

        The broker answers with the recipients' ids (``recipients``); their keys come from
        the directory records this client keeps (``directory``), each signed by the pinned
        directory key and at least as new as the answer, fetched when missing or changed
        (ADR 14). A recipient whose record is not active, or has no encryption key, is
        left out. With ``resolve_cache`` on, an answer to the same labels, ``expires_at``
        and ``not_before`` is used again while the relays announce no change (ADR 0009).

        Raises:
            PolicyDenied: this agency may not publish it.
            EnvelopeError: a label names something the broker does not know, or more
                agencies may receive it than one bulletin carries (``too_many_recipients``).
            SignatureError: a directory answer is not signed by the pinned key
                (``directory_untrusted``), names an agency not asked for
                (``directory_mismatch``), or is older than one held
                (``directory_downgrade``).
            BusUnavailable: the broker did not answer.
        """
        req = make_request(
            ResolveRequest, labels=labels, expires_at=expires_at, not_before=not_before
        )
        cache, key = self.resolve_cache, encode_request(req)
        ticket = 0
        if cache is not None:
            kept = cache.get(
                key, now=time.monotonic(), wall_now=int(time.time()), epoch=self._epoch()
            )
            if kept is not None:
                return kept
            ticket = cache.ticket()
        recipients, versions = await self._ask_recipients(req)
        if cache is not None:
            cache.put(
                key,
                recipients,
                versions,
                expires_at=expires_at,
                ticket=ticket,
                now=time.monotonic(),
                epoch=self._epoch(),
            )
        return recipients

    async def _ask_recipients(
        self, req: ResolveRequest
    ) -> tuple[dict[AgencyId, EncryptionPublicKey], Versions]:
        """Who may receive it, with the keys of those whose records let this client seal
        for them, and the versions the relay decided with."""
        if not self._resolves_with_keys:
            try:
                answer = await self._ask("recipients", req, RecipientsReply)
            except EnvelopeError as exc:
                if exc.code != "bad_request":
                    raise
                log.info("this broker answers no recipients request; resolving with keys")
                self._resolves_with_keys = True
            else:
                records = await self._directory(
                    list(answer.recipients), floor=answer.directory_version
                )
                return _sealable(answer.recipients, records), Versions(
                    answer.directory_version, answer.policy_version
                )
        old = await self._ask("resolve", req, ResolveReply)
        excerpt = self.directory.add_excerpt(
            old.directory, asked=old.recipients, now=time.monotonic()
        )
        return _sealable(old.recipients, {r.id: r for r in excerpt.agencies}), Versions(
            excerpt.directory_version, old.policy_version
        )

    async def preview(
        self, labels: Labels, *, expires_at: int | None = None, not_before: int | None = None
    ) -> Preview:
        """Who would receive a bulletin with ``labels``, and why not the others."""
        req = make_request(
            ResolveRequest, labels=labels, expires_at=expires_at, not_before=not_before
        )
        answer = await self._ask("explain", req, ExplainReply)
        return Preview(
            policy_version=answer.policy_version,
            may_publish=answer.publish.allowed,
            candidates=tuple((c.agency, c.allowed, c.summary) for c in answer.candidates),
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
        supersedes: str | None = None,
    ) -> PublishResult:
        """Seal, sign and publish a bulletin, then wait for the relay's verdict.

        Args:
            supersedes: the id of one of this agency's accepted bulletins that this one
                corrects (ADR 15): recipients are handed the link. It does not withdraw
                the corrected one (``recall`` does).

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
            supersedes=BulletinId(supersedes) if supersedes is not None else None,
        )
        await self._publish_envelope(env)
        if not_before is not None and not_before > env.header.created_at:
            # The relay decides and delivers it only once the embargo ends.
            return PublishResult(env.header.bulletin_id, "embargoed")
        if not wait:
            return PublishResult(env.header.bulletin_id, "pending")
        return await self.wait_for_verdict(env.header.bulletin_id, timeout=timeout)

    async def _publish_envelope(self, env: Envelope, attempts: int = 3) -> None:
        await store_envelope(self._js, self.agency, env, attempts=attempts)

    async def status(self, bulletin_id: str) -> dict[str, Any]:
        """The relay's verdict on one of this agency's bulletins, as JSON: ``state``
        (``accepted``, ``rejected`` or ``pending``) and the fields of
        ``schemas.agency.StatusReply`` for it.

        Raises:
            NotFound: no bulletin of this agency's has this id, decided or waiting for the
                relay (``clients.errors``; another agency's looks the same).
        """
        reply = await self._status(bulletin_id)
        answer: dict[str, Any] = reply.root.model_dump(mode="json")
        return answer

    async def _status(self, bulletin_id: str) -> StatusReply:
        req = make_request(BulletinRequest, bulletin_id=bulletin_id)
        return await self._ask("status", req, StatusReply)

    async def wait_for_verdict(self, bulletin_id: str, *, timeout: float = 10.0) -> PublishResult:
        """Ask the relay for the bulletin's status until it is decided or ``timeout``
        passes (then ``pending``). A relay that does not answer for a moment (restarting,
        reconnecting) is asked again until the deadline.

        Raises:
            PublishRejected: the relay refused it; ``code`` names the reason.
            NotFound: no bulletin of this agency's has this id (or the relay could not
                process it: ``dead_letters``).
            BusUnavailable: no relay answered until the deadline.
        """
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            try:
                st = (await self._status(bulletin_id)).root
            except BusUnavailable:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            if isinstance(st, StatusAccepted):
                return PublishResult(
                    bulletin_id,
                    "accepted",
                    st.routed,
                    tuple((d.agency, d.policy_ids) for d in st.denied),
                )
            if isinstance(st, StatusRejected):
                raise PublishRejected(
                    f"bulletin {bulletin_id} rejected: {st.message}", code=st.reason
                )
            if time.monotonic() >= deadline:
                return PublishResult(bulletin_id, "pending")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def receipts(self, bulletin_id: str) -> ReceiptReport:
        """Which recipients have received one of this agency's bulletins.

        Raises:
            NotFound: no such bulletin of this agency's (``clients.errors``).
        """
        req = make_request(BulletinRequest, bulletin_id=bulletin_id)
        answer = await self._ask("receipts", req, ReceiptsReply)
        return ReceiptReport(
            bulletin_id, tuple((r.agency, r.received_at) for r in answer.recipients)
        )

    async def recall(
        self, bulletin_id: str, *, reason: str, timeout: float = RECALL_TIMEOUT_S
    ) -> RecallResult:
        """Withdraw one of this agency's bulletins (ADR 15): the broker removes the copies
        not yet delivered, and recipients that had it get this withdrawal, signed with this
        agency's current key, which their SDK checks and applies. Asking again is harmless:
        the answer is the first recall's.

        Args:
            bulletin_id: the id ``publish`` returned.
            reason: why, 1-280 characters without control characters; recipients read it,
                and the broker carries it in clear: no bulletin content.
            timeout: seconds to wait for the broker (it may scan for copies first).

        Raises:
            NotFound: no accepted bulletin of this agency's has this id (another agency's
                looks the same; the attempt is audited).
            EnvelopeError: the reason is empty, too long or holds control characters
                (code ``malformed``), or this machine's clock is off
                (``timestamp_out_of_window``).
            SignatureError: the keystore's key is not this agency's current one.
            BusUnavailable: the broker did not answer; ask again.
        """
        # The id's form is checked before anything is signed.
        request = make_request(BulletinRequest, bulletin_id=bulletin_id)
        try:
            withdrawal = sign_withdrawal(
                bulletin_id=BulletinId(request.bulletin_id),
                originator=self.agency,
                reason=reason,
                issued_at=int(time.time()),
                key=self.keystore.signing_key(),
            )
        except ValidationError as exc:
            raise EnvelopeError(
                f"the reason must be 1-{MAX_REASON_CHARS} characters without control "
                "characters (no line breaks)",
                code="malformed",
            ) from exc
        answer = await self._ask("recall", withdrawal, RecallReply, timeout)
        return RecallResult(
            answer.bulletin_id,
            answer.withdrawn_at,
            answer.state,
            answer.removed,
            answer.notified,
            answer.copies_kept,
        )

    async def dead_letters(self) -> list[dict[str, Any]]:
        """This agency's dead letters: bulletins its handler failed on 10 times, and its
        own bulletins no relay could process, each with ``kind``, ``bulletin_id``,
        ``deliveries``, ``dead_seq`` and ``time_ms``. An operator redrives them (``istmo
        admin redrive``) once the handler is fixed."""
        answer = await self._ask("dead-letters", DeadLettersRequest(), DeadLettersReply)
        return [letter.model_dump(mode="json") for letter in answer.dead_letters]

    async def withheld(self, *, timeout: float = REQUEST_TIMEOUT_S) -> Withheld:
        """How many bulletins the policy withheld from this agency (bulletins on topics it
        follows, or naming it, that the policy refused it), and when the first and the
        latest were: nothing about which they were. With an empty queue it tells "nothing
        was sent" from "the policy refused what was sent"; the broker's administrators
        can say why (``istmo audit search --agency``).

        Args:
            timeout: seconds to wait for the broker's answer.

        Raises:
            BusUnavailable: the broker did not answer.
            EnvelopeError: a broker older than this SDK, which knows no such request
                (code ``bad_request``).
        """
        answer = await self._ask("withheld", WithheldRequest(), WithheldReply, timeout)
        return Withheld(answer.withheld, answer.first_at, answer.latest_at)

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
            IstmoError: the broker refused the rotation (``code`` says why; see
                ``clients.errors``), or did not answer (``BusUnavailable``).
            RuntimeError: this client was not opened from a keystore file.
        """
        if self.keystore_path is None:
            raise RuntimeError("rotate_keys needs a client opened with IstmoClient.connect")
        request, rotated = new_keys(self.keystore, now=int(time.time()))
        pending = self.keystore_path.with_name(self.keystore_path.name + ".rotating")
        save_keystore(pending, rotated, passphrase)
        try:
            await self._ask("rotate", request, RotateReply)
        except IstmoError:
            pending.unlink(missing_ok=True)
            raise
        pending.replace(self.keystore_path)
        self.keystore = rotated
        self.directory.forget(self.agency)
        return request.signing.kid, request.encryption.kid

    async def revoke_key(self, kid: str, *, force: bool = False) -> int:
        """Revoke one of this agency's own signing keys, from now on (after a leak).

        What the key signed before still verifies; what it signs from now on is refused
        (``key_revoked``). A rotation (``rotate_keys``) already revokes the old key, so
        this is for a key that leaked: if it is your only valid one (the usual case), the
        broker refuses (``last_key``) unless ``force``, because afterwards this agency can
        neither publish nor rotate until its administrator re-enrols it
        (``istmo admin agency reenrol``), which gives it new keys.

        Returns:
            When the revocation took effect (epoch seconds).

        Raises:
            NotFound: not a signing key of this agency.
            EnvelopeError: ``already_revoked``, ``last_key`` (see above), or ``malformed``
                (not a key id).
        """
        req = make_request(RevokeKeyRequest, kid=kid, force=True if force else None)
        answer = await self._ask("revoke-key", req, RevokeKeyReply)
        self.directory.forget(self.agency)
        return answer.revoked_at

    # ------------------------------------------------------------------ receive
    async def receive(
        self,
        handler: Handler,
        *,
        count: int | None = None,
        timeout: float | None = None,
        batch: int = 16,
        on_withdrawal: WithdrawalHandler | None = None,
    ) -> int:
        """Hand verified bulletins to ``handler``, then ack and send a signed receipt.

        Most urgent first: every round takes what waits at FLASH or IMMEDIATE before
        anything at PRIORITY or ROUTINE, however long the agency was away, and hands a
        batch over in precedence order (``clients.queues``, ADR 7).

        A bulletin is acknowledged only after ``handler`` returned, and its id is then
        remembered durably, so a redelivery never reaches ``handler`` twice. Waiting for
        bulletins that do not come is not an error: it ends at ``timeout`` or ``count``.

        A bulletin's originator may withdraw it (ADR 15): the SDK checks the signed
        withdrawal against the directory, remembers it durably, awaits ``on_withdrawal``
        once with a ``Withdrawn`` (``had_it`` says whether ``handler`` had been given the
        bulletin), and drops a copy that arrives after it. Without ``on_withdrawal`` it is
        remembered and logged. A bulletin past its ``expires_at`` is dropped, not handed.

        Args:
            handler: awaited once per new bulletin.
            count: stop after this many bulletins and withdrawals (None: no limit).
            timeout: stop after this many seconds (None: no limit).
            batch: how many messages to fetch at once.
            on_withdrawal: awaited once per withdrawal of a bulletin.

        Returns:
            How many bulletins and withdrawals were handed over.

        Raises:
            BusUnavailable: the broker did not answer the directory lookup that verifies
                a bulletin's sender. The bulletin stays with the server, unopened and not
                lost: it comes back on the consumer's backoff (first after 30 s).
            IstmoError: the directory lookup failed otherwise (its excerpt is not signed
                by the pinned key, or the broker refused it); it stays likewise.
        """
        queues = DeliveryQueues(self._nc, self.agency)
        await queues.open()
        deadline = None if timeout is None else time.monotonic() + timeout
        handed = 0
        try:
            while count is None or handed < count:
                _stop_if_cancelled()
                wait = 5.0 if deadline is None else min(5.0, deadline - time.monotonic())
                if wait <= 0:
                    break
                want = batch if count is None else max(1, min(batch, count - handed))
                msgs = await queues.take(want, wait)
                for i, msg in enumerate(msgs):
                    if (count is not None and handed >= count) or _cancel_requested():
                        # Not ours to process now: back to the server, soon.
                        await hand_back(msgs[i:])
                        break
                    # An IstmoError here is mostly the broker not answering the lookup
                    # that opens a bulletin (_handle). Nothing of the batch is handed back
                    # (nak): an immediate redelivery counts as an attempt, and a caller that
                    # retries through an outage would spend all of a delivery's attempts
                    # (AGENCY_MAX_DELIVER) in seconds and dead-letter it. Unsettled, each
                    # comes back on the consumer's backoff (30 s, 60 s, ... hours).
                    if await self._dispatch(msg, handler, on_withdrawal):
                        handed += 1
        finally:
            try:
                await self._settled()
            finally:
                await queues.close()
        return handed

    async def _settle_later(self, msg: Msg, env: Envelope, digest: str, handed_at: int) -> None:
        """Store the receipt, then ack (``_settle``), while ``receive`` goes on: the order
        for each bulletin stays handler, dedupe record, receipt, ack, so a crash anywhere
        still redelivers it and the dedupe branch sends the receipt again. At most
        ``SETTLE_IN_FLIGHT`` at once."""
        while len(self._settling) >= SETTLE_IN_FLIGHT:
            await asyncio.wait(self._settling, return_when=asyncio.FIRST_COMPLETED)

        async def settle() -> None:
            try:
                await self._settle(msg, await self._send_receipt(env, digest, handed_at))
            except (nats.errors.Error, IstmoError, OSError) as exc:
                # Unsettled, it comes back after the ack wait; the dedupe branch settles it.
                log.warning("could not settle a delivery (%s); it will come back", exc)

        task = asyncio.get_running_loop().create_task(settle())
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settled(self) -> None:
        """Wait for every receipt and ack under way (receive returns only after them)."""
        while self._settling:
            await asyncio.wait(set(self._settling))

    async def _dispatch(
        self, msg: Msg, handler: Handler, on_withdrawal: WithdrawalHandler | None
    ) -> bool:
        """A delivery is a bulletin, or a withdrawal of one (its ``Istmo-Kind`` header)."""
        if (msg.headers or {}).get(KIND_HEADER) == WITHDRAWAL_KIND:
            return await self._handle_withdrawal(msg, on_withdrawal)
        return await self._handle(msg, handler)

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
            await self._settle_later(msg, env, digest, handed_at)
            return False
        if self._dedupe.withdrawn_by(bid) == env.header.originator:
            # Its originator withdrew it before this copy came (a delivery stream made
            # before ADR 15 keeps copies a recall could not remove).
            log.info("dropped bulletin %s: withdrawn by %s", bid, env.header.originator)
            await msg.ack()
            return False
        # Not the bulletin's fault if this fails: the broker did not answer (or not as it
        # should). The error goes up and the bulletin stays unsettled, unopened, for a
        # later receive (see receive: no nak, so an outage spends no delivery attempts).
        sender_key = await self._sender_key(env)
        try:
            bulletin = open_delivery(
                env,
                sender_key=sender_key,
                keystore=self.keystore,
                agency=self.agency,
                now=int(time.time()),
            )
        except (SignatureError, DecryptionError, EnvelopeError) as exc:
            log.warning("refused bulletin %s from %s: %s", bid, env.header.originator, exc.code)
            await msg.term()
            return False
        await handler(bulletin)
        self._dedupe.remember(bid, digest, bulletin.received_at, env.header.originator)
        # Receipt before ack: a crash in between redelivers it, and the dedupe branch
        # above sends the receipt again, so no receipt is lost to a crash.
        await self._settle_later(msg, env, digest, bulletin.received_at)
        return True

    async def _handle_withdrawal(self, msg: Msg, on_withdrawal: WithdrawalHandler | None) -> bool:
        """Check a delivered withdrawal (``clients.withdrawals``), tell the application once,
        remember it, ack. Refused: dropped (term) and logged. True if the application was
        told now."""
        try:
            w = parse_withdrawal(msg.data)
        except EnvelopeError as exc:
            log.warning("dropped a malformed withdrawal on %s: %s", msg.subject, exc.code)
            await msg.term()
            return False
        if self._dedupe.withdrawn_by(w.bulletin_id) is not None:
            await msg.ack()  # told before: a redelivery
            return False
        # As for a bulletin: the broker not answering leaves it unsettled, for later.
        signer = await self._signing_key(w.originator, w.kid)
        handed, handed_originator = self._dedupe.handed_by(w.bulletin_id)
        try:
            withdrawn = check_delivered_withdrawal(
                w, signer=signer, handed=handed, handed_originator=handed_originator
            )
        except (SignatureError, EnvelopeError) as exc:
            log.warning(
                "refused a withdrawal of %s from %s: %s", w.bulletin_id, w.originator, exc.code
            )
            await msg.term()
            return False
        if on_withdrawal is not None:
            await on_withdrawal(withdrawn)
        else:
            log.warning(
                "bulletin %s withdrawn by %s; pass on_withdrawal to receive to be told",
                w.bulletin_id,
                w.originator,
            )
        self._dedupe.remember_withdrawal(w.bulletin_id, w.originator, w.issued_at)
        try:
            await msg.ack_sync()
        except nats.errors.TimeoutError:
            log.warning("NATS did not confirm the ack of a withdrawal; it may come back once")
        return True

    @staticmethod
    async def _settle(msg: Msg, receipt_stored: bool) -> None:
        """Ack once the receipt is stored; otherwise hand the bulletin back for a while: it
        returns, the dedupe store keeps it from the application, and the receipt is sent
        again (NATS may be electing a leader, or a node may be down)."""
        if not receipt_stored:
            await msg.nak(delay=RECEIPT_RETRY_S)
            return
        try:
            await msg.ack_sync()
        except nats.errors.TimeoutError:
            # The ack may not have reached JetStream: then the bulletin comes back after
            # the ack wait, and the dedupe branch of _handle sends the receipt and acks.
            log.warning("NATS did not confirm the ack of a delivery; it may come back once")

    async def _sender_key(self, env: Envelope) -> SigningKeyRecord | None:
        """The originator's signing key ``env`` names, as the directory lists it (None if
        it does not); the directory is asked again once if the cached record lacks it
        (the originator may have rotated).

        Raises:
            BusUnavailable, SignatureError, IstmoError: as ``_directory``.
        """
        return await self._signing_key(env.header.originator, env.sig.kid)

    async def _signing_key(self, originator: str, kid: str) -> SigningKeyRecord | None:
        """``originator``'s signing key ``kid`` as the directory lists it (None if it does
        not), asking the directory again once if the cached record lacks it.

        Raises:
            BusUnavailable, SignatureError, IstmoError: as ``_directory``.
        """
        key = signing_key_of((await self._directory([originator])).get(originator), kid)
        if key is None:
            self.directory.forget(originator)  # maybe rotated: ask once more
            key = signing_key_of((await self._directory([originator])).get(originator), kid)
        return key

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
        return await store_receipt(self._js, receipt)


def _sealable(
    recipients: tuple[str, ...], records: dict[str, AgencyRecord]
) -> dict[AgencyId, EncryptionPublicKey]:
    """The keys to seal for: of ``recipients``, those whose signed record is active and
    has an encryption key. A recipient suspended or revoked in the record is never sealed
    for, whatever the answer that named it (a relay not yet rebuilt) says."""
    keys: dict[AgencyId, EncryptionPublicKey] = {}
    for agency in recipients:
        record = records.get(agency)
        if record is None or record.status != "active" or record.encryption_key is None:
            log.info("not sealing for %s: its directory record does not allow it", agency)
            continue
        keys[AgencyId(agency)] = record.encryption_key.public_key()
    return keys
