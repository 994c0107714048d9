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
import dataclasses
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import BaseModel, ValidationError

from clients.attachments import Attachment, download, upload
from clients.connection import connect_agency, connection_lost
from clients.conversations import reply_labels, rfi_due, split_addressees
from clients.dedupe import DedupeStore, DedupeWriteError, Record
from clients.directory_cache import DirectoryCache
from clients.errors import NotFound, PublishRejected, PublishUnacknowledged
from clients.group_keys import GroupKeys, Rotation
from clients.groups import cover
from clients.key_log import KeyLogCheck, load_key_log_trust, trust_from_env
from clients.keystore import Passphrase, load_keystore, save_keystore
from clients.opening import open_delivery, signing_key_of
from clients.partners import (
    PartnerPins,
    PartnerSender,
    load_partner_pins,
    partner_pins_path,
    partner_signing_key,
)
from clients.publishing import store_envelope, store_receipt
from clients.queues import DeliveryQueues, Pushed, hand_back
from clients.receipt_checks import check_receipts, keys_named
from clients.records import DirectoryRecords
from clients.requests import REQUEST_TIMEOUT_S, ask, make_request
from clients.resolve_cache import ResolveCache, Versions
from clients.results import (
    ForwardOutcome,
    ForwardRequest,
    Preview,
    PublishResult,
    RecallResult,
    ReceiptReport,
    ReceivedBulletin,
    ReplyContext,
    Rfi,
    VerifiedReceipts,
    Withdrawn,
    Withheld,
)
from clients.rotation import new_keys
from clients.withdrawals import check_delivered_withdrawal
from schemas.agency import (
    KIND_HEADER,
    Announcement,
    ApiOp,
    BulletinRequest,
    DeadLettersReply,
    DeadLettersRequest,
    ExplainReply,
    RecallReply,
    ReceiptsReply,
    RecipientsReply,
    ReplyContextReply,
    ResolveReply,
    ResolveRequest,
    RevokeKeyReply,
    RevokeKeyRequest,
    RfiEntry,
    RfiListReply,
    RfiListRequest,
    RotateReply,
    StatusAccepted,
    StatusRejected,
    StatusReply,
    WithheldReply,
    WithheldRequest,
    encode_request,
)
from schemas.attachments import AttachmentMeta, attachment_key
from schemas.canonical import b64e
from schemas.desk_summary import DeskSummaryReply, SummaryCount, sign_summary
from schemas.directory import AgencyRecord, SignedExcerpt, SigningKeyRecord
from schemas.envelope import MAX_RECIPIENTS, MAX_WRAPS, Content, Envelope, parse_model
from schemas.errors import (
    BusUnavailable,
    ConfigError,
    DecryptionError,
    EnvelopeError,
    IstmoError,
    PolicyDenied,
    SignatureError,
)
from schemas.forwarding import (
    Citation,
    ForwardAnswer,
    ForwardAsk,
    ForwardDecision,
    ForwardGrant,
    ForwardRequestsReply,
    ForwardRequestsRequest,
    sign_grant,
)
from schemas.groups import EpochKey
from schemas.ids import AgencyId, BulletinId, new_bulletin_id
from schemas.keylog import KeyLogReply, KeyLogRequest, KeyLogTrust, KeyNotLogged
from schemas.keys import EncryptionPublicKey
from schemas.keystore import KeystoreFile
from schemas.labels import Labels
from schemas.partner_delivery import LINK_HEADER, parse_partner_record
from schemas.receipt import sign_receipt
from schemas.receipt_requests import MAX_SIGNED_RECEIPTS, ReceiptsRequest, SignedReceiptsReply
from schemas.sealing import envelope_digest, new_content_key, parse_envelope, seal
from schemas.subjects import ANNOUNCE_SUBJECT, delivered_bulletin
from schemas.withdrawal import (
    MAX_REASON_CHARS,
    WITHDRAWAL_KIND,
    parse_withdrawal,
    sign_withdrawal,
)

__all__ = [
    "Attachment",
    "ForwardOutcome",
    "ForwardRequest",
    "Handler",
    "IstmoClient",
    "Preview",
    "PublishRejected",
    "PublishResult",
    "PublishUnacknowledged",
    "RecallResult",
    "ReceiptReport",
    "ReceivedBulletin",
    "ReplyContext",
    "Rfi",
    "VerifiedReceipts",
    "WithdrawalHandler",
    "Withdrawn",
    "Withheld",
]

log = logging.getLogger("istmo.sdk")

R = TypeVar("R", bound=BaseModel)

# How long a directory record is used while no relay's announcement is heard (or the
# broker predates ADR 14): a change reaches a client that hears none within this.
DIRECTORY_TTL_S = 60.0
# Pages of a signed receipts answer a client reads at most: a bulletin reaches at most
# MAX_RECIPIENTS agencies, so a broker that goes on is answering wrongly.
MAX_RECEIPT_PAGES = -(-MAX_RECIPIENTS // MAX_SIGNED_RECEIPTS)
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
# A receipt NATS did not store: the bulletin is handed back and its receipt sent again.
RECEIPT_RETRY_S = 2
# Receipts and acks under way at once while receive goes on to the next bulletin: each is a
# JetStream round trip (and a flush) that need not hold up the next handler.
SETTLE_IN_FLIGHT = 64
# How many bulletins' stored receipts a client remembers, so that the queued copy of a
# bulletin pushed to it (ADR 38, ADR 43) is acked without sending its receipt again.
RECEIPTED_KEPT = 4096
# An announcement is three short fields; anything much larger is not one.
MAX_ANNOUNCEMENT_BYTES = 1024

Handler = Callable[[ReceivedBulletin], Awaitable[None]]
WithdrawalHandler = Callable[[Withdrawn], Awaitable[None]]
# What a delivery that is not a bulletin says it is (ADR 15); a bulletin has no such header.
# A recall may scan the delivery stream for copies before the relay answers.
RECALL_TIMEOUT_S = 30.0
# The title of a human acknowledgement (ADR 27); the flag in its sealed content is what counts.
ACK_TITLE = "Acknowledged: read and acted on"


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
        key_log: KeyLogTrust | None = None,
        partners: PartnerPins | None = None,
    ) -> None:
        self.resolve_cache = ResolveCache() if resolve_cache else None
        # Partner regions' directory keys this agency's operator pinned, by link (ADR 33):
        # none, and nothing that crossed a link is opened.
        self.partners = partners or PartnerPins()
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
        # Recipients' keys seen in the audit log before anything is sealed (ADR 28).
        self.key_log = KeyLogCheck(key_log, self._ask_key_log)
        # Community group epoch keys this agency holds, in memory (ADR 18).
        self.groups = GroupKeys(
            self.agency,
            lambda: self.keystore,
            self._ask,
            self._directory,
            check_keys=self.key_log.check,
        )
        # A broker before ADR 14 answers no "recipients": resolve as it did then.
        self._resolves_with_keys = False
        # Receipts being stored and deliveries being acked, behind the handler (_settle_later).
        self._settling: set[asyncio.Task[None]] = set()
        # Bulletins whose receipt this client stored, latest last (at most
        # RECEIPTED_KEPT): a pushed bulletin's queued copy is then only acked.
        self._receipted: dict[str, None] = {}

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
        key_log: KeyLogTrust | Path | None = None,
        partners: PartnerPins | Path | None = None,
    ) -> IstmoClient:
        """Open the keystore and connect to NATS as its agency.

        Args:
            resolve_cache: keep resolve answers while the relays announce that the
                directory and policy are unchanged, so publishing again with the same
                labels asks the relay nothing (ADR 0009). False: ask every time.
            key_log: check each recipient's key is in the audit log before sealing for
                it (ADR 28): the log's key and witnesses (``clients.key_log``), or a
                trust file with them. None: the file ``ISTMO_KEY_LOG`` names, if any;
                without one, keys are not checked against the log.
            partners: the partner regions' directory keys pinned to open bulletins that
                crossed a partner link (``clients.partners``), or a pins file. None: the
                file beside the keystore (``<keystore>.partners.json``), if any; without
                one, no such bulletin is opened.

        Raises:
            ConfigError: the keystore is missing, too open or damaged; the pins file
                cannot be read.
            BusUnavailable: NATS is not reachable at ``nats_url``, refused the key, or
                presented a certificate that does not verify against the trusted CAs
                (``SSL_CERT_FILE``; code ``tls_untrusted``).
        """
        keystore = load_keystore(keystore_path, passphrase)
        trust = load_key_log_trust(key_log) if isinstance(key_log, Path) else key_log
        if trust is None:
            trust = trust_from_env()
        if not isinstance(partners, PartnerPins):
            partners = load_partner_pins(partners or partner_pins_path(keystore_path))
        nc = await connect_agency(keystore, nats_url, timeout=connect_timeout)
        path = dedupe_path or keystore_path.with_name(keystore_path.stem + ".received.sqlite")
        client = cls(
            keystore,
            nc,
            DedupeStore(path),
            keystore_path,
            resolve_cache=resolve_cache,
            key_log=trust,
            partners=partners,
        )
        try:
            await client.listen_for_announcements()
        except nats.errors.ConnectionClosedError as exc:
            # Refused just after it was let in (a re-enrolment's reload landing as it
            # connected), or NATS gone: said as such, not as nats-py's traceback.
            await client.close()
            raise connection_lost(nc, keystore.agency) from exc
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
        try:
            await self._nc.close()
        except asyncio.CancelledError:
            # nats-py closing a socket the server dropped (this agency suspended) while it
            # reconnects can raise the cancellation of its own waiter. Only a cancellation
            # of this task goes on.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            log.warning("NATS was reconnecting when the client closed")
        self._dedupe.close()  # commits what is queued, then stops its writer

    # ------------------------------------------------------------------ requests
    async def _ask(
        self, op: ApiOp, request: BaseModel, reply: type[R], timeout: float = REQUEST_TIMEOUT_S
    ) -> R:
        """One request to the broker (``clients.requests.ask``) as this agency."""
        return await ask(self._nc, self.agency, op, request, reply, timeout=timeout)

    async def _ask_key_log(self, request: KeyLogRequest) -> KeyLogReply:
        try:
            return await self._ask("key-log", request, KeyLogReply)
        except EnvelopeError as exc:
            if exc.code != "bad_request":
                raise
            raise KeyNotLogged(
                "this broker answers no key-log request (it is older than ADR 28), and this "
                "client is set to check recipients' keys against the audit log: nothing sealed",
                hint="upgrade the broker, or connect without key_log / ISTMO_KEY_LOG",
            ) from exc

    async def key_log_entries(self) -> KeyLogReply:
        """This agency's own newest key entries in the audit log, with their proofs (for
        ``istmo keys monitor``: check each against the keystore, ``schemas.keylog``)."""
        return await self._ask("key-log", KeyLogRequest(mine=True), KeyLogReply)

    async def _sealable_logged(
        self, recipients: tuple[str, ...], records: dict[str, AgencyRecord]
    ) -> dict[AgencyId, EncryptionPublicKey]:
        """``_sealable``, once every key to seal for is seen in the audit log (ADR 28).

        Raises:
            KeyNotLogged: a key the log does not show registered to its agency.
        """
        keys = _sealable(recipients, records)
        await self.key_log.check([records[a] for a in keys])
        return keys

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
        self,
        labels: Labels,
        *,
        expires_at: int | None = None,
        not_before: int | None = None,
        in_reply_to: str | None = None,
        addressees: tuple[str, ...] | None = None,
    ) -> dict[AgencyId, EncryptionPublicKey]:
        """Ask the broker who may receive a bulletin with ``labels``, with their keys.

        The broker answers with the recipients' ids (``recipients``); their keys come from
        the directory records this client keeps (``directory``), each signed by the pinned
        directory key and at least as new as the answer, fetched when missing or changed
        (ADR 14). A recipient whose record is not active, or has no encryption key, is
        left out. With ``resolve_cache`` on, an answer to the same labels, ``expires_at``
        and ``not_before`` is used again while the relays announce no change (ADR 0009).

        Raises:
            PolicyDenied: this agency may not publish it (for a reply: which label is
                weaker than the bulletin it answers).
            NotFound: a reply to a bulletin this agency neither received nor sent.
            EnvelopeError: a label names something the broker does not know, or more
                agencies may receive it than one bulletin carries (``too_many_recipients``).
            SignatureError: a directory answer is not signed by the pinned key
                (``directory_untrusted``), names an agency not asked for
                (``directory_mismatch``), or is older than one held
                (``directory_downgrade``).
            BusUnavailable: the broker did not answer.
        """
        req = make_request(
            ResolveRequest,
            labels=labels,
            expires_at=expires_at,
            not_before=not_before,
            in_reply_to=in_reply_to,
            addressees=addressees or None,
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
                _fits_wraps(len(answer.recipients))
                records = await self._directory(
                    list(answer.recipients), floor=answer.directory_version
                )
                sealable = await self._sealable_logged(answer.recipients, records)
                return sealable, Versions(answer.directory_version, answer.policy_version)
        old = await self._ask("resolve", req, ResolveReply)
        excerpt = self.directory.add_excerpt(
            old.directory, asked=old.recipients, now=time.monotonic()
        )
        listed = {r.id: r for r in excerpt.agencies}
        return await self._sealable_logged(old.recipients, listed), Versions(
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
        groups: bool = False,
        reply_all: bool = False,
        attachments: Sequence[Attachment | Path | str] = (),
    ) -> PublishResult:
        """Seal, sign and publish a bulletin, then wait for the relay's verdict.

        Args:
            supersedes: the id of one of this agency's accepted bulletins that this one
                corrects (ADR 15): recipients are handed the link. It does not withdraw
                the corrected one (``recall`` does).
            groups: seal under the community groups this agency holds keys of whose
                members may all receive it, and one wrap each for the rest (ADR 18): for
                audiences of thousands. Without it, one wrap per recipient, at most
                ``MAX_WRAPS``.
            reply_all: let replies to it reach every recipient, not only this agency
                (ADR 16).
            attachments: files to send with it (paths, or ``Attachment`` to give another
                name or media type). Each is sealed in chunks and stored before the
                bulletin is published (ADR 17); names and types travel inside it only.

        Raises:
            PolicyDenied: no agency may receive it, or the originator may not publish it.
            PublishRejected: the relay refused it; ``code`` names the reason.
            EnvelopeError: an attachment is over the broker's limit
                (``attachment_too_large``, the message says the limit), there are more than
                it takes (``too_many_attachments``), or a name is not a plain file name.
            BusUnavailable: NATS or the relay did not answer (publishing again resumes
                nothing: a new bulletin uploads its files again).
        """
        return await self._publish(
            title=title,
            text=text,
            labels=labels,
            expires_at=expires_at,
            not_before=not_before,
            wait=wait,
            timeout=timeout,
            supersedes=supersedes,
            reply_all=reply_all,
            groups=groups,
            attachments=attachments,
        )

    async def _publish(
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
        reply_all: bool = False,
        in_reply_to: str | None = None,
        thread: str | None = None,
        rfi_due_at: int | None = None,
        only: tuple[str, ...] | None = None,
        addressees: tuple[str, ...] | None = None,
        now: int | None = None,
        groups: bool = False,
        attachments: Sequence[Attachment | Path | str] = (),
        acknowledges: bool = False,
    ) -> PublishResult:
        """``publish``, for a reply (``in_reply_to``, ``thread``), an acknowledgement or an
        RFI too, sealed only for the agencies in ``only`` when given."""
        files = [a if isinstance(a, Attachment) else Attachment(Path(a)) for a in attachments]
        metas = tuple(f.meta() for f in files)  # refuse a bad name before anything is sent
        keys: tuple[EpochKey, ...] = ()
        members: Mapping[str, frozenset[str]] | None = None
        if groups:
            recipients, keys, members = await self._cover(labels, expires_at, not_before, only)
        else:
            recipients = await self.resolve(
                labels,
                expires_at=expires_at,
                not_before=not_before,
                in_reply_to=in_reply_to,
                addressees=addressees,
            )
        if only is not None:
            recipients = {a: k for a, k in recipients.items() if a in only}
        if not recipients and not keys:
            raise PolicyDenied("no agency may receive this bulletin under the current policy")
        bid, content_key = new_bulletin_id(), new_content_key()
        refs = []
        for i, f in enumerate(files):
            refs.append(
                await upload(
                    self._nc,
                    self.agency,
                    f.path,
                    key=attachment_key(content_key, bid, i),
                    bulletin_id=bid,
                    index=i,
                    expires_at=expires_at,
                )
            )
        env = seal(
            content=Content(
                title=title,
                text=text,
                attachments=metas or None,
                acknowledges=True if acknowledges else None,
            ),
            bulletin_id=bid,
            content_key=content_key,
            attachments=tuple(refs) or None,
            labels=labels,
            originator=self.agency,
            signing_key=self.keystore.signing_key(),
            recipients=recipients,
            now=int(time.time()) if now is None else now,
            expires_at=expires_at,
            not_before=not_before,
            supersedes=BulletinId(supersedes) if supersedes is not None else None,
            groups=keys,
            members=members if keys else None,
            in_reply_to=BulletinId(in_reply_to) if in_reply_to is not None else None,
            thread=BulletinId(thread) if thread is not None else None,
            reply_all=reply_all,
            rfi_due=rfi_due_at,
        )
        await self._publish_envelope(env)
        digest = envelope_digest(env)  # what each recipient's receipt will name
        if not_before is not None and not_before > env.header.created_at:
            # The relay decides and delivers it only once the embargo ends.
            return PublishResult(env.header.bulletin_id, "embargoed", envelope_digest=digest)
        if not wait:
            return PublishResult(env.header.bulletin_id, "pending", envelope_digest=digest)
        verdict = await self.wait_for_verdict(env.header.bulletin_id, timeout=timeout)
        return dataclasses.replace(verdict, envelope_digest=digest)

    async def _cover(
        self,
        labels: Labels,
        expires_at: int | None,
        not_before: int | None,
        only: tuple[str, ...] | None,
    ) -> tuple[
        dict[AgencyId, EncryptionPublicKey], tuple[EpochKey, ...], Mapping[str, frozenset[str]]
    ]:
        """Who may receive it (of ``only``, when given), split into the groups this agency
        holds whose members may all have it and the rest, with the rest's keys (ADR 18):
        records are fetched for the rest only. The groups' epochs are addressed as a
        whole, by their signed members (ADR 37)."""
        req = make_request(
            ResolveRequest, labels=labels, expires_at=expires_at, not_before=not_before
        )
        answer = await self._ask("recipients", req, RecipientsReply)
        permitted = answer.recipients
        if only is not None:
            permitted = tuple(a for a in permitted if a in only)
        plan = cover(permitted, await self.groups.known(), publisher=self.agency)
        _fits_wraps(len(plan.rest))
        records = (
            await self._directory(list(plan.rest), floor=answer.directory_version)
            if plan.rest
            else {}
        )
        return await self._sealable_logged(plan.rest, records), plan.keys, plan.members

    async def rotate_groups(self, *, force: bool = False) -> list[Rotation]:
        """As a group's manager: make a new epoch of each group this agency manages whose
        members, their keys or clearances changed (every one with ``force``), wrap its key
        to each member and post it (ADR 18). Run it after every directory change
        (``istmo groups rotate --follow`` does).

        Raises:
            IstmoError: the broker refused (``roster_changed``: run it again).
        """
        return await self.groups.rotate(force=force)

    # ------------------------------------------------------------------ conversations
    async def reply_context(self, bulletin_id: str) -> ReplyContext:
        """What a reply to ``bulletin_id`` starts from, as the broker recorded it: its
        originator, labels, thread and who a reply may reach (ADR 16).

        Raises:
            NotFound: this agency neither received nor sent a bulletin with this id (one
                that does not exist looks the same; the attempt is audited).
        """
        req = make_request(BulletinRequest, bulletin_id=bulletin_id)
        c = await self._ask("reply-context", req, ReplyContextReply)
        return ReplyContext(
            c.bulletin_id, c.originator, c.labels, c.thread, c.reply_all, c.rfi_due, c.audience
        )

    async def reply(
        self,
        bulletin_id: str,
        *,
        text: str,
        title: str | None = None,
        labels: Labels | None = None,
        reply_all: bool = False,
        expires_at: int | None = None,
        wait: bool = True,
        timeout: float = 10.0,
        attachments: Sequence[Attachment | Path | str] = (),
    ) -> PublishResult:
        """Answer a bulletin this agency received (or sent): a signed bulletin naming it
        and its thread, sent to its originator and, if that originator allowed reply-all,
        to its other recipients; the policy decides each (ADR 16). A reply to a request
        for information is its answer.

        Args:
            bulletin_id: the bulletin answered.
            text: the reply.
            title: its title (default ``Re: <bulletin id>``).
            labels: its labels; by default those of the bulletin answered, naming its
                originator. Stricter labels are fine; weaker ones are refused.
            reply_all: let replies to this reply reach all its recipients too.
            expires_at: optional expiry, epoch seconds.
            attachments: files to send with it, as ``publish`` takes them (ADR 17).

        Raises:
            NotFound: this agency neither received nor sent ``bulletin_id``.
            PolicyDenied: a label is weaker than the bulletin answered (the message names
                the policy and which label), or no agency may receive the reply.
            PublishRejected: the relay refused it; ``code`` names the reason.
        """
        context = await self.reply_context(bulletin_id)
        return await self._publish(
            title=title or f"Re: {bulletin_id}",
            text=text,
            labels=labels or reply_labels(context, self.agency),
            expires_at=expires_at,
            wait=wait,
            timeout=timeout,
            reply_all=reply_all,
            in_reply_to=bulletin_id,
            thread=context.thread,
            attachments=attachments,
        )

    async def acknowledge(
        self,
        bulletin_id: str,
        *,
        title: str = ACK_TITLE,
        text: str = "",
        wait: bool = True,
        timeout: float = 10.0,
    ) -> PublishResult:
        """Tell the originator of a bulletin this agency received that a person read it
        and acted on it: a signed reply to its originator alone, with the bulletin's
        labels, whose sealed content says it acknowledges (ADR 27). Apart from the
        receipt, which the SDK sends by itself on delivery.

        Raises:
            NotFound: this agency did not receive ``bulletin_id``.
            ConfigError: this agency sent it (there is nobody to tell).
            PolicyDenied: the policy no longer lets its originator receive the answer.
        """
        context = await self.reply_context(bulletin_id)
        if context.originator == self.agency:
            raise ConfigError(
                f"{bulletin_id} is this agency's own bulletin: there is nobody to tell",
                hint="acknowledge bulletins other agencies sent",
            )
        return await self._publish(
            title=title,
            text=text,
            labels=reply_labels(context, self.agency),
            wait=wait,
            timeout=timeout,
            in_reply_to=bulletin_id,
            thread=context.thread,
            only=(context.originator,),
            acknowledges=True,
        )

    async def rfi(
        self,
        *,
        to: Sequence[str],
        title: str,
        text: str,
        labels: Labels,
        due_at: int | None = None,
        reply_all: bool = False,
        wait: bool = True,
        timeout: float = 10.0,
        attachments: Sequence[Attachment | Path | str] = (),
    ) -> PublishResult:
        """Ask for information: a bulletin that says by when answers are due, addressed to
        agencies and/or states and communities (``to``). Its addressees answer with
        ``reply``; ``rfis`` says where it stands (ADR 16).

        The agencies in ``to`` are named in its labels, the states and communities added
        to ``rel_to``. Addressed to agencies only, it is sealed for them alone; with a
        state or community, for every agency the policy lets receive it there. If the
        policy does not let a named agency receive it, the relay refuses the whole request
        and says why.

        Args:
            to: agency ids and state or community codes.
            labels: its labels (topic, classification, TLP, rel_to, precedence ...).
            due_at: when answers are due, epoch seconds; by default its precedence's
                (FLASH 10 min, IMMEDIATE 30 min, PRIORITY 3 h, ROUTINE 12 h).
            attachments: files to send with it, as ``publish`` takes them (ADR 17).

        Raises:
            EnvelopeError: ``bad_due`` (passed, or more than 30 days away), ``malformed``
                (an entry of ``to`` is neither an agency nor a code).
            PolicyDenied: ``rfi_addressee_denied``: the policy does not let an agency of
                ``to`` receive it (the message names it and the policies; nothing is sent,
                the refusal is audited).
            PublishRejected: the relay refused it.
        """
        agencies, codes = split_addressees(to)
        now = int(time.time())
        due = rfi_due(labels.precedence, now=now, due_at=due_at)
        asked = labels.model_copy(
            update={
                "named": tuple(sorted(set(labels.named) | set(agencies))),
                "rel_to": tuple(dict.fromkeys((*labels.rel_to, *codes))),
            }
        )
        return await self._publish(
            title=title,
            text=text,
            labels=asked,
            wait=wait,
            timeout=timeout,
            reply_all=reply_all,
            rfi_due_at=due,
            only=None if codes else agencies,
            addressees=agencies,
            now=now,
            attachments=attachments,
        )

    async def jurisdictions_of(self, agencies: Sequence[str]) -> list[str]:
        """The states (or, for a regional body, the communities) of ``agencies``, from the
        signed directory: where an RFI addressed to them alone is releasable."""
        records = await self._directory(list(agencies))
        codes: dict[str, None] = {}
        for agency in agencies:
            record = records.get(agency)
            if record is not None:
                codes.update(dict.fromkeys([record.state] if record.state else record.communities))
        return list(codes)

    async def rfis(self, *, closed: bool = False) -> list[Rfi]:
        """The requests for information this agency asked and those asked of it, newest
        first (at most 200), each where it stands now; ``closed`` to include closed ones."""
        req = make_request(RfiListRequest, closed=True if closed else None)
        answer = await self._ask("rfi-list", req, RfiListReply)
        return [_rfi(e) for e in answer.rfis]

    async def close_rfi(self, rfi_id: str) -> Rfi:
        """Close one of this agency's requests for information: no longer open, never
        overdue. Closing it again changes nothing.

        Raises:
            NotFound: no RFI of this agency's has this id.
            EnvelopeError: ``not_an_rfi``: that bulletin of this agency's asks for nothing.
        """
        req = make_request(BulletinRequest, bulletin_id=rfi_id)
        (entry,) = (await self._ask("rfi-close", req, RfiListReply)).rfis
        return _rfi(entry)

    async def save_attachments(
        self, bulletin: ReceivedBulletin, directory: Path | str
    ) -> list[Path]:
        """Fetch a received bulletin's attachments into ``directory/<bulletin id>/``,
        each checked against what its originator signed before it gets its name (ADR 17).
        A download that stopped resumes where it did when asked again.

        Returns:
            The files written, in the bulletin's order.

        Raises:
            AttachmentError: a chunk is missing or damaged at the broker, or was altered:
                nothing of that file is kept.
            NotFound: the bulletin was withdrawn or has expired (its files went with it).
            BusUnavailable: the broker stopped answering (ask again: it resumes).
        """
        folder = Path(directory) / bulletin.id
        if bulletin.attachments:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        saved = []
        for att in bulletin.attachments:
            saved.append(await download(self._nc, self.agency, bulletin.id, att, folder / att.name))
        return saved

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

    async def verify_receipts(
        self, bulletin_id: str, *, envelope_digest: str | None = None
    ) -> VerifiedReceipts:
        """Check every receipt of one of this agency's bulletins here, without trusting
        the broker with them: each must be signed by its recipient's key from the signed
        directory (not revoked by the time it claims), for this bulletin and originator,
        and name the envelope this agency published (``clients.receipt_checks``).

        Args:
            bulletin_id: the id ``publish`` returned.
            envelope_digest: ``PublishResult.envelope_digest`` of that publish, hex. Without
                it, each receipt is checked against the digest the broker recorded, which
                shows the receipts agree with the broker, not with what was published.

        Returns:
            One check per routed recipient: ``verified``, ``not_received`` or ``failed``
            with the reason (``VerifiedReceipts.failed``).

        Raises:
            NotFound: no such bulletin of this agency's.
            EnvelopeError: ``envelope_digest`` is not 64 hex digits (``malformed``), or the
                broker is older than this SDK and cannot give receipts whole
                (``broker_too_old``).
            BusUnavailable, SignatureError: as ``resolve`` (the directory).
        """
        if envelope_digest is not None:
            envelope_digest = envelope_digest.lower()
            if not _DIGEST.fullmatch(envelope_digest):
                raise EnvelopeError(
                    "the envelope digest is not 64 hex digits",
                    code="malformed",
                    hint="give the envelope_digest `istmo publish --json` printed",
                )
        pages = await self._signed_receipts(bulletin_id)
        kids = keys_named(pages)
        records = await self._directory(list(kids))
        stale = [a for a, kid in kids.items() if signing_key_of(records.get(a), kid) is None]
        if stale:  # maybe rotated since this client fetched the record: ask once more
            for agency in stale:
                self.directory.forget(agency)
            records.update(await self._directory(stale))
        return check_receipts(
            pages,
            bulletin_id=bulletin_id,
            originator=self.agency,
            records=records,
            envelope_digest=envelope_digest,
        )

    async def _signed_receipts(self, bulletin_id: str) -> list[SignedReceiptsReply]:
        """Every page of the broker's signed receipts answer."""
        pages: list[SignedReceiptsReply] = []
        after: str | None = None
        while len(pages) < MAX_RECEIPT_PAGES:
            req = make_request(ReceiptsRequest, bulletin_id=bulletin_id, signed=True, after=after)
            try:
                page = await self._ask("receipts", req, SignedReceiptsReply)
            except NotFound:
                raise
            except EnvelopeError as exc:
                # A broker before signed receipts refuses the field it does not know; an
                # answer this SDK cannot read says "the receipts answer ..." instead.
                if exc.code not in ("malformed", "bad_request") or str(exc).startswith("the "):
                    raise
                raise EnvelopeError(
                    "the broker is older than this SDK: receipts cannot be verified",
                    code="broker_too_old",
                    hint="ask its operators to upgrade it; `istmo receipts` without --verify "
                    "still lists who received it",
                ) from exc
            pages.append(page)
            if page.next is None:
                return pages
            if after is not None and page.next <= after:
                break
            after = page.next
        raise EnvelopeError("the broker's receipts answer does not end", code="malformed")

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

    # ------------------------------------------------------------------ forward
    async def forward(
        self,
        bulletin_id: str,
        *,
        to: str,
        reason: str | None = None,
        wait: bool = True,
        timeout: float = 10.0,
    ) -> ForwardOutcome:
        """Pass a bulletin this agency received on to one more agency, with consent
        (ADR 20). Asks the broker first: if the policy lets this agency forward it
        without asking, or its originator granted this very forward, the SDK re-seals the
        bulletin it holds for ``to`` alone, signs it as this agency, cites the original
        (id, originator, envelope digest, and the grant) and publishes it. Otherwise the
        originator is asked, and the outcome is ``requested``: call ``forward`` again
        once it answered (``istmo forward requests`` on its side).

        Args:
            bulletin_id: a bulletin this client handed to the application.
            to: the agency to pass it to.
            reason: shown to the originator (one line, at most 280 characters; the
                broker carries it in clear: no bulletin content).
            wait, timeout: as ``publish``.

        Raises:
            NotFound: this agency was not routed the bulletin, or this client does not
                hold it (``forward_not_received``).
            PolicyDenied: the originator refused, or the policy would not let ``to``
                have it even with consent (``forward_denied``).
            EnvelopeError: a forward of one's own bulletin, of a forward, of a withdrawn
                or expired one (``forward_not_allowed``), a bad reason (``malformed``).
            PublishRejected: the relay refused the forward; ``code`` names why.
        """
        try:
            ask = make_request(ForwardAsk, bulletin_id=bulletin_id, to=to, reason=reason)
        except EnvelopeError as exc:
            raise EnvelopeError(
                "the reason must be 1-280 characters on one line, and the ids well formed",
                code="malformed",
            ) from exc
        answer = await self._ask("forward-request", ask, ForwardAnswer)
        if answer.state == "refused":
            raise PolicyDenied(
                f"{to}: the originator refused this forward: {answer.refusal}",
                code="forward_refused",
            )
        if answer.state == "pending":
            return ForwardOutcome("requested", bulletin_id, to, request_id=answer.request_id)
        env = await self._forward_envelope(bulletin_id, to, answer.grant)
        await self._publish_envelope(env)
        consent = "originator" if answer.grant is not None else "policy"
        fid = env.header.bulletin_id
        if not wait:
            return ForwardOutcome("pending", bulletin_id, to, answer.request_id, fid, consent)
        result = await self.wait_for_verdict(fid, timeout=timeout)
        state = "forwarded" if result.state == "accepted" else result.state
        return ForwardOutcome(state, bulletin_id, to, answer.request_id, fid, consent)

    async def _forward_envelope(
        self, bulletin_id: str, to: str, grant: ForwardGrant | None
    ) -> Envelope:
        """The original, opened again from the sealed copy this client kept, sealed for
        ``to`` alone with labels no looser than the original's and citing it, its files
        with it."""
        raw = self._dedupe.held(bulletin_id)
        if raw is None:
            raise NotFound(
                "this client does not hold that bulletin: forward one it received and handed "
                "over (this keystore's received.sqlite)",
                code="forward_not_received",
            )
        original = parse_envelope(raw)
        opened = open_delivery(
            original,
            sender_key=await self._sender_key(original),
            keystore=self.keystore,
            agency=self.agency,
            now=int(time.time()),
        )
        oh = original.header
        labels = oh.labels
        if grant is not None and to not in labels.named:
            labels = labels.model_copy(update={"named": (*labels.named, to)})
        records = await self._directory([to])
        keys = await self._sealable_logged((to,), records)
        if not keys:
            raise PolicyDenied(f"{to} cannot be sealed for: its directory record is not active")
        # Its files go with it, without a copy (ADR 20): the original's references in the
        # citation, each file's key (derived, never the content key) in the body; the new
        # recipient fetches the original's chunks through the forward.
        files = tuple(
            AttachmentMeta(name=a.name, media_type=a.media_type, key=b64e(a.key))
            for a in opened.attachments
        )
        return seal(
            content=Content(title=opened.title, text=opened.body, attachments=files or None),
            labels=labels,
            originator=self.agency,
            signing_key=self.keystore.signing_key(),
            recipients=keys,
            now=int(time.time()),
            expires_at=oh.expires_at,
            forward_of=Citation(
                bulletin_id=oh.bulletin_id,
                originator=oh.originator,
                envelope_digest=envelope_digest(original),
                grant=grant,
                attachments=oh.attachments,
            ),
        )

    async def forward_requests(self, *, include_answered: bool = False) -> list[ForwardRequest]:
        """The requests to forward this agency's bulletins: those waiting for an answer,
        or every one (``include_answered``), oldest first."""
        req = ForwardRequestsRequest(all=True if include_answered else None)
        answer = await self._ask("forward-requests", req, ForwardRequestsReply)
        return [
            ForwardRequest(r.request_id, r.bulletin_id, r.forwarder, r.recipient, r.reason,
                           r.requested_at, r.state)
            for r in answer.requests
        ]  # fmt: skip

    async def grant_forward(self, request_id: str, *, valid_for_s: int = 7 * 86400) -> str:
        """Consent to one request to forward one of this agency's bulletins: a grant
        signed with this agency's current key, good for ``valid_for_s`` seconds (at most
        30 days), for exactly that bulletin, forwarder and recipient. Returns the state
        (``granted``).

        Raises:
            NotFound: no request with this id was asked of this agency's bulletins.
            EnvelopeError: it was answered already (``forward_decided``).
        """
        asked = {r.request_id: r for r in await self.forward_requests(include_answered=True)}
        r = asked.get(request_id)
        if r is None:  # the grant names what was asked: nothing to sign without it
            raise NotFound("no request to forward a bulletin of yours has this id")
        now = int(time.time())
        try:
            grant = sign_grant(
                bulletin_id=BulletinId(r.bulletin_id),
                originator=self.agency,
                forwarder=AgencyId(r.forwarder),
                recipient=AgencyId(r.recipient),
                issued_at=now,
                expires_at=now + valid_for_s,
                key=self.keystore.signing_key(),
            )
        except ValidationError as exc:
            raise EnvelopeError("a grant is valid for 1 s to 30 days", code="malformed") from exc
        decision = ForwardDecision(request_id=request_id, grant=grant)
        return (await self._ask("forward-decide", decision, ForwardAnswer)).state

    async def refuse_forward(self, request_id: str, *, reason: str) -> str:
        """Refuse one request to forward one of this agency's bulletins; ``reason`` is
        shown to the forwarder. Returns the state (``refused``).

        Raises:
            NotFound: no request with this id was asked of this agency's bulletins.
            EnvelopeError: it was answered already, or the reason is not one line of
                1-280 characters.
        """
        try:
            decision = ForwardDecision(request_id=request_id, refusal=reason)
        except ValidationError as exc:
            raise EnvelopeError(
                "the reason must be 1-280 characters on one line", code="malformed"
            ) from exc
        return (await self._ask("forward-decide", decision, ForwardAnswer)).state

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

    async def send_desk_summary(
        self,
        *,
        log: str,
        first_seq: int,
        last_seq: int,
        prev_mac: str,
        head_mac: str,
        from_at: int,
        to_at: int,
        counts: Sequence[SummaryCount],
        timeout: float = REQUEST_TIMEOUT_S,
    ) -> DeskSummaryReply:
        """Send a summary of this agency's desk access log (ADR 31), signed with its
        current key; the broker records it as a ``desk.summary`` audit event. The desk
        builds the fields (``clients.desk_summary``): counts by analyst pseudonym and
        action, the range and its chain MACs, never content. Sending the same summary
        again is harmless (the answer says ``again``).

        Raises:
            EnvelopeError: the fields do not add up (``malformed``), the summary does not
                follow the last one the broker recorded of this log
                (``summary_out_of_order``), or this machine's clock is off
                (``timestamp_out_of_window``).
            SignatureError: the keystore's key is not this agency's current one.
            BusUnavailable: the broker did not answer; send it again.
        """
        try:
            summary = sign_summary(
                agency=self.agency,
                log=log,
                first_seq=first_seq,
                last_seq=last_seq,
                prev_mac=prev_mac,
                head_mac=head_mac,
                from_at=from_at,
                to_at=to_at,
                counts=tuple(counts),
                issued_at=int(time.time()),
                key=self.keystore.signing_key(),
            )
        except ValidationError as exc:
            raise EnvelopeError(
                f"the desk summary is out of bounds: {exc.error_count()} faults", code="malformed"
            ) from exc
        return await self._ask("desk-summary", summary, DeskSummaryReply, timeout)

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
        push: bool = True,
    ) -> int:
        """Hand verified bulletins to ``handler``, then ack and send a signed receipt.

        Most urgent first: every round takes what waits at FLASH or IMMEDIATE before
        anything at PRIORITY or ROUTINE, however long the agency was away, and hands a
        batch over in precedence order (``clients.queues``, ADR 7).

        With ``push`` (the default), a FLASH or IMMEDIATE bulletin routed to the agency
        while it receives comes at once over core NATS, ahead of its queued copy (ADR
        38): it is verified and opened the same way, handed over and receipted; its
        queued copy, when it comes, is only acked. Pushes go to one receiving process
        per agency (the one that asked last); run ``push=False`` in any other.

        A bulletin is acknowledged only after ``handler`` returned, and its id is then
        remembered durably, so a redelivery never reaches ``handler`` twice. Waiting for
        bulletins that do not come is not an error: it ends at ``timeout`` or ``count``.

        A bulletin's originator may withdraw it (ADR 15): the SDK checks the signed
        withdrawal against the directory, remembers it durably, awaits ``on_withdrawal``
        once with a ``Withdrawn`` (``had_it`` says whether ``handler`` had been given the
        bulletin), and drops a copy that arrives after it. Without ``on_withdrawal`` it is
        remembered and logged. A bulletin past its ``expires_at`` is dropped, not handed.

        A bulletin that crossed a partner link (ADR 33) is verified against its
        originator's record signed by the sending region's directory key, as pinned for
        the link (``partners`` of ``connect``, ``clients.partners``), never against a key
        from the wire or this region's broker alone; it is handed over with ``region``
        set, and acked without a receipt (receipts do not cross links). A record signed
        by another key, forged, or naming an agency of this region is refused (dropped,
        logged).

        Args:
            handler: awaited once per new bulletin.
            count: stop after this many bulletins and withdrawals (None: no limit).
            timeout: stop after this many seconds (None: no limit).
            batch: how many messages to fetch at once.
            on_withdrawal: awaited once per withdrawal of a bulletin.
            push: ask the relays to push urgent bulletins ahead of their queued copies.

        Returns:
            How many bulletins and withdrawals were handed over.

        Raises:
            BusUnavailable: the connection closed under it (code ``not_authorized``: NATS
                refused this agency's credentials, as for a suspension), or the broker
                did not answer the directory lookup that verifies a bulletin's sender
                (the bulletin stays with the server, unopened and not lost: it comes
                back on the consumer's backoff, first after 30 s).
            IstmoError: the directory lookup failed otherwise (its excerpt is not signed
                by the pinned key, or the broker refused it); it stays likewise.
            ConfigError: ``partner_not_pinned``: a bulletin crossed a partner link this
                agency pins no key for (the hint says what to pin); it stays likewise.
            SignatureError: ``partner_untrusted``: its record is signed by another key
                than the one pinned for its link (a wrong pin, or the partner changed
                its key); it stays likewise.
        """
        queues = DeliveryQueues(self._nc, self.agency, push=push)
        deadline = None if timeout is None else time.monotonic() + timeout
        handed = 0
        try:
            await queues.open()
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
        except nats.errors.ConnectionClosedError as exc:
            # Closed under it: refused credentials (a suspension) or NATS gone.
            raise connection_lost(self._nc, self.agency) from exc
        finally:
            try:
                await self._settled()
            finally:
                await queues.close()
        return handed

    async def _settle_later(
        self,
        msg: Msg | Pushed,
        env: Envelope,
        digest: str,
        handed_at: int,
        record: Record | None,
    ) -> None:
        """Wait until the bulletin's dedupe ``record`` is durable (the store's writer
        commits what is queued a transaction at a time, ``clients.dedupe``), store the
        receipt, then ack (``_settle``), while ``receive`` goes on: the order for each
        bulletin stays handler, dedupe record, receipt, ack, so a crash anywhere still
        redelivers it and the dedupe branch sends the receipt again. A record that could
        not be written leaves the bulletin unsettled: it comes back after the ack wait and
        is handed over again. At most ``SETTLE_IN_FLIGHT`` at once. A bulletin that
        crossed a partner link is acked without a receipt: receipts do not cross links
        (ADR 33), and its originator is not in this region to read one. A pushed
        bulletin (ADR 38) is receipted, with nothing to ack: its queued copy is acked
        when it comes, without a second receipt while this client remembers storing
        the first (``RECEIPTED_KEPT``)."""
        while len(self._settling) >= SETTLE_IN_FLIGHT:
            await asyncio.wait(self._settling, return_when=asyncio.FIRST_COMPLETED)
        crossed = LINK_HEADER in (msg.headers or {})

        async def settle() -> None:
            if record is not None:
                try:
                    await asyncio.wrap_future(record)
                except DedupeWriteError as exc:
                    # Not acked: it comes back after the ack wait (ids and causes only).
                    log.error(
                        "left bulletin %s unsettled: its dedupe record failed (%s)",
                        env.header.bulletin_id,
                        exc,
                    )
                    return
            bid = env.header.bulletin_id
            try:
                stored = (
                    crossed
                    or bid in self._receipted
                    or await self._send_receipt(env, digest, handed_at)
                )
                if stored and not crossed:
                    self._remember_receipt(bid)
                if isinstance(msg, Msg):
                    await self._settle(msg, stored)
            except (nats.errors.Error, IstmoError, OSError) as exc:
                # Unsettled, it comes back after the ack wait; the dedupe branch settles it.
                log.warning("could not settle a delivery (%s); it will come back", exc)

        task = asyncio.get_running_loop().create_task(settle())
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    def _remember_receipt(self, bulletin_id: str) -> None:
        """Keep ``bulletin_id`` among the bulletins whose receipt is stored (the latest
        ``RECEIPTED_KEPT``): a copy of it that comes again is acked without one."""
        self._receipted.pop(bulletin_id, None)
        self._receipted[bulletin_id] = None
        if len(self._receipted) > RECEIPTED_KEPT:
            del self._receipted[next(iter(self._receipted))]

    async def _settled(self) -> None:
        """Wait for every receipt and ack under way (receive returns only after them)."""
        while self._settling:
            await asyncio.wait(set(self._settling))

    async def _dispatch(
        self, msg: Msg | Pushed, handler: Handler, on_withdrawal: WithdrawalHandler | None
    ) -> bool:
        """A delivery is a bulletin, or a withdrawal of one (its ``Istmo-Kind`` header).
        A pushed bulletin (ADR 38) is only ever sooner: if it cannot be opened now (the
        broker did not answer a lookup), its queued copy will be."""
        if isinstance(msg, Pushed):
            try:
                return await self._handle(msg, handler)
            except IstmoError as exc:
                log.info("left a pushed bulletin to its queued copy (%s)", exc.code)
                return False
        headers = msg.headers or {}
        if headers.get(KIND_HEADER) == WITHDRAWAL_KIND:
            return await self._handle_withdrawal(msg, on_withdrawal)
        if delivered_bulletin(headers.get("Nats-Msg-Id"), self.agency) in self._receipted:
            # The queued copy of a bulletin this client was pushed (ADR 43), handed over
            # and receipted: its dedupe record was durable before the receipt was sent,
            # so there is nothing left to do but ack it; no need to parse it again.
            await _ack(msg)
            return False
        return await self._handle(msg, handler)

    async def _handle(self, msg: Msg | Pushed, handler: Handler) -> bool:
        try:
            env = parse_envelope(msg.data)
        except EnvelopeError as exc:
            # Not an Istmo message (e.g. a server-made reply planted on our subject).
            log.warning("dropped a non-Istmo message on %s: %s", msg.subject, exc.code)
            await _term(msg)
            return False
        bid = env.header.bulletin_id
        digest = envelope_digest(env)
        handed_at, record = self._dedupe.handed_record(bid)
        if handed_at is not None:
            # Handed over before (or pushed, ADR 38), but this process may have died
            # before it acked or sent the receipt: send the receipt again (stored once by
            # id), then ack; if its record is still queued, once it is durable.
            if isinstance(msg, Msg):
                await self._settle_later(msg, env, digest, handed_at, record)
            return False
        if not env.header.addresses(self.agency):
            # A group's one shared copy (ADR 21) reaches every member of its epoch; a member
            # the bulletin does not address (its originator) has nothing to open.
            log.debug("dropped bulletin %s: a group copy not addressed to %s", bid, self.agency)
            await _ack(msg)
            return False
        if self._dedupe.withdrawn_by(bid) == env.header.originator:
            # Its originator withdrew it before this copy came (a delivery stream made
            # before ADR 15 keeps copies a recall could not remove).
            log.info("dropped bulletin %s: withdrawn by %s", bid, env.header.originator)
            await _ack(msg)
            return False
        # Not the bulletin's fault if this fails: the broker did not answer (or not as it
        # should). The error goes up and the bulletin stays unsettled, unopened, for a
        # later receive (see receive: no nak, so an outage spends no delivery attempts).
        region: str | None = None
        try:
            crossed = parse_partner_record(dict(msg.headers or {}))
        except EnvelopeError as exc:
            log.warning("refused bulletin %s: its partner record is %s", bid, exc.code)
            await _term(msg)
            return False
        if crossed is None:
            sender_key = await self._sender_key(env)
        else:
            try:
                found = await self._partner_sender(env, *crossed)
            except SignatureError as exc:
                if exc.code == "partner_untrusted":
                    raise  # a pin to fix: it stays, unopened, for a later receive
                log.warning("refused bulletin %s from link %s: %s", bid, crossed[0], exc.code)
                await _term(msg)
                return False
            sender_key, region = found.key, found.region
        epoch_keys: list[EpochKey] = []
        if env.groups and all(w.recipient != self.agency for w in env.wraps):
            # Sealed under a community group's key (ADR 18): this agency's wrap of it.
            epoch_keys = await self.groups.keys_for((g.group, g.epoch) for g in env.groups)
        cite = env.header.forward_of
        grant_key = None
        if cite is not None and cite.grant is not None:
            grant_key = await self._signing_key(cite.grant.originator, cite.grant.kid)
        try:
            bulletin = open_delivery(
                env,
                sender_key=sender_key,
                keystore=self.keystore,
                agency=self.agency,
                now=int(time.time()),
                epoch_keys=epoch_keys,
                grant_key=grant_key,
            )
        except (SignatureError, DecryptionError, EnvelopeError) as exc:
            log.warning("refused bulletin %s from %s: %s", bid, env.header.originator, exc.code)
            await _term(msg)
            return False
        if region is not None:
            bulletin = dataclasses.replace(bulletin, region=region)
        await handler(bulletin)
        # The envelope is kept sealed as it came, for a later forward (ADR 20). Queued,
        # not waited for: the next bulletin is opened while the writer commits.
        record = self._dedupe.queue_handed(
            bid, digest, bulletin.received_at, env.header.originator, msg.data
        )
        # Record, then receipt, then ack: a crash in between redelivers it, and the
        # dedupe branch above sends the receipt again, so no receipt is lost to a crash.
        await self._settle_later(msg, env, digest, bulletin.received_at, record)
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
        try:
            await asyncio.wrap_future(
                self._dedupe.queue_withdrawal(w.bulletin_id, w.originator, w.issued_at)
            )
        except DedupeWriteError as exc:
            # Not acked: it comes back, and the application may be told again.
            log.error(
                "left a withdrawal of %s unsettled: its record failed (%s)", w.bulletin_id, exc
            )
            return True
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

    async def _partner_sender(
        self, env: Envelope, link: str, record: SignedExcerpt
    ) -> PartnerSender:
        """The originator of a bulletin that crossed ``link``, from the record that came
        with it, checked against the key pinned for the link (``partner_signing_key``);
        and never an agency of this region's own directory: that one's keys come only
        from this region's directory.

        Raises:
            ConfigError: ``partner_not_pinned``.
            SignatureError: ``partner_untrusted``, ``partner_record_forged``,
                ``partner_unknown_originator``, ``partner_record_local``.
            BusUnavailable, IstmoError: as ``_directory``.
        """
        found = partner_signing_key(env, link, record, self.partners)
        originator = env.header.originator
        if (await self._directory([originator])).get(originator) is not None:
            raise SignatureError(
                f"a partner's record names {originator}, an agency of this region",
                code="partner_record_local",
            )
        return found

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


async def _term(msg: Msg | Pushed) -> None:
    """Refuse a delivery for good; a pushed one has nothing to refuse (its queued copy is
    refused when it comes)."""
    if isinstance(msg, Msg):
        await msg.term()


async def _ack(msg: Msg | Pushed) -> None:
    if isinstance(msg, Msg):
        await msg.ack()


def _fits_wraps(count: int) -> None:
    """Refuse to seal one wrap each for more recipients than an envelope carries."""
    if count > MAX_WRAPS:
        raise EnvelopeError(
            f"{count} agencies need a key wrap of their own, and one bulletin carries at most "
            f"{MAX_WRAPS}: publish with community groups (`istmo publish --groups`, "
            "publish(groups=True)) once an administrator defined one that covers them",
            code="too_many_recipients",
        )


def _rfi(e: RfiEntry) -> Rfi:
    return Rfi(
        e.rfi_id,
        e.asker,
        e.topic,
        e.precedence,
        e.created_at,
        e.due_at,
        e.state,
        e.addressees,
        e.acknowledged_by,
        e.answered_by,
        e.closed_at,
        e.overdue_since,
    )


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
