"""A partner link, live (ADR 33): the sending side's guard process and the receiving
side's ingest.

**The guard** (``LinkGuard``, ``istmo federation guard``) reads the link's gateways'
deliveries from this region's delivery stream with a durable consumer of its own
(``federation-<link>``), decides each with the guard (audited before anything crosses),
and POSTs what passed, as a signed transfer, to the partner's ingest. It acks a delivery
only once the partner answered that it holds the bulletin (or refused it for good);
until then the delivery stays in the stream and comes back, so a guard stopped or killed
at any point loses nothing. The partner keeps a bulletin once by its id, so the one sent
twice across a restart is not duplicated there.

**The ingest** (``ingest_app``, ``istmo federation ingest``) is a small HTTP server on
the receiving side: one route per link, ``POST /v1/federation/<link>/transfers``. It
checks each transfer (``broker.relay.link_transfer.receive``: the link key's signature,
the sending region's signed directory record, the originator's signature, then the
link's rules, each outcome audited) and hands what arrived on to this side's delivery
stream for the link's own agencies, deduplicated by ``<bulletin>:<agency>`` as the
relay's own deliveries are, with the link's name and the originator's signed record as
headers (``schemas.partner_delivery``: the agency's SDK checks that record against the
key its operator pinned). It answers 200 only once JetStream stored it.

Answers: 200 ``arrived`` (now or before), 422 ``blocked`` by this side's rules, 400
``refused`` (one uniform answer whatever failed: the reason is in the audit log), 413 too
large, 404 another link, 503 try again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import httpx
import nats.errors
import uvicorn
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from broker.api.guard import LOOPBACK_HOSTS, host_name
from broker.bus.batch import Message, publish_batch
from broker.clock import SYSTEM_CLOCK, Clock
from broker.directory.service import DirectoryService
from broker.relay.federation import guard
from broker.relay.guard import Link
from broker.relay.link_transfer import Arrival, receive, transfer_for
from broker.store.registry import Registry
from schemas.agency import KIND_HEADER
from schemas.envelope import Envelope
from schemas.errors import AuditStoreError, BusUnavailable
from schemas.keys import SigningKey, VerifyKey
from schemas.link_transfer import max_transfer_bytes
from schemas.partner_delivery import crossed_headers
from schemas.subjects import (
    DELIVER_STREAM,
    deliver_subject,
    delivery_msg_id,
    legacy_deliver_subject,
)
from schemas.withdrawal import WITHDRAWAL_KIND

__all__ = [
    "ACK_WAIT_S",
    "LinkGuard",
    "guard_durable",
    "ingest_app",
    "serve_ingest",
    "transfers_path",
]

log = logging.getLogger("istmo.federation")

# How long a delivery the guard took stays its own: longer than one POST may take
# (HTTP_TIMEOUT_S; the clock restarts before each). A guard killed mid-stream leaves what
# it held unacked: the next one gets it after this.
ACK_WAIT_S = 15.0
HTTP_TIMEOUT_S = 10.0
BATCH = 8
MAX_ACK_PENDING = 64
DIRECTORY_MAX_AGE_S = 60  # the records a transfer carries are at most this old (ADR 14's TTL)
RETRY_S = (1, 2, 5, 10, 30, 60)  # a partner away: each delivery handed back for this long


def guard_durable(link: str) -> str:
    """The guard's durable consumer on the delivery stream: ``federation-<link>``."""
    return f"federation-{link}"


def transfers_path(link: str) -> str:
    """Where the partner's ingest takes transfers over ``link``."""
    return f"/v1/federation/{link}/transfers"


def _guard_consumer(link: Link) -> ConsumerConfig:
    subjects = []
    for gw in link.agencies:
        subjects += [legacy_deliver_subject(gw) + ".*", legacy_deliver_subject(gw)]
    return ConsumerConfig(
        durable_name=guard_durable(link.name),
        filter_subjects=subjects,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_S,
        max_ack_pending=MAX_ACK_PENDING,
        max_deliver=-1,  # never given up on: a partner away for days still gets it all
    )


@dataclass
class LinkGuard:
    """The sending side of one link: this region's deliveries to the link's gateways,
    guarded, to the partner's ingest at ``partner_url`` (its base URL).

    Attributes:
        registry: this region's store (the guard's audit events).
        directory: this region's live directory (the originators' signed records).
        link: this side's link file.
        key: this side's link key (signs each transfer).
        partner_url: the partner ingest's base URL, e.g. ``https://eu-hub:8850``.
        timeout_s: how long one transfer may take before the partner counts as not
            reached (``istmo federation guard --timeout``).
    """

    registry: Registry
    directory: DirectoryService
    link: Link
    key: SigningKey
    partner_url: str
    timeout_s: float = HTTP_TIMEOUT_S
    clock: Clock = SYSTEM_CLOCK
    crossed: int = 0
    blocked: int = 0
    _attempts: dict[str, int] = field(default_factory=dict)
    _refreshed_ms: int = 0

    async def run(
        self, nc: NATS, stop: asyncio.Event, *, ready: Callable[[], None] | None = None
    ) -> None:
        """Guard the link until ``stop``: its durable consumer is made (or kept) first."""
        js = nc.jetstream(timeout=10)
        await self._refresh()
        config = _guard_consumer(self.link)
        try:
            await js.add_consumer(DELIVER_STREAM, config)
        except APIError as exc:
            raise BusUnavailable(f"cannot make the link's consumer: {exc.description}") from exc
        sub = await js.pull_subscribe_bind(config.durable_name or "", stream=DELIVER_STREAM)
        url = self.partner_url.rstrip("/") + transfers_path(self.link.name)
        async with httpx.AsyncClient(timeout=self.timeout_s) as http:
            if ready is not None:
                ready()
            while not stop.is_set():
                try:
                    msgs = await sub.fetch(BATCH, timeout=0.5)
                except TimeoutError:
                    continue
                except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
                    return
                except nats.errors.Error as exc:
                    log.warning("fetch failed (%s); retrying", type(exc).__name__)
                    await asyncio.sleep(0.5)
                    continue
                for i, msg in enumerate(msgs):  # in order: one bulletin at a time across the link
                    try:
                        away = await self._one(http, url, msg)
                        if away is not None:
                            # The partner is not reached: the rest of the batch would
                            # each wait out the same timeout. Hand it back with the
                            # same delay; the next batch's first bulletin tries again.
                            for rest in msgs[i + 1 :]:
                                await rest.nak(delay=away)
                            break
                    except (nats.errors.Error, TimeoutError) as exc:
                        # An ack or nak not sent: what is left of the batch comes back
                        # after the ack wait.
                        log.warning("NATS did not answer (%s); fetching again", exc)
                        break

    async def _one(self, http: httpx.AsyncClient, url: str, msg: Msg) -> float | None:
        """Guard one delivery and send it on if it passes; the seconds it was handed back
        for if the partner was not reached (else None)."""
        if (msg.headers or {}).get(KIND_HEADER) == WITHDRAWAL_KIND:
            # A recall of a bulletin delivered to the gateway: recalls do not cross yet
            # (ADR 32); the partner's copy stays until its own expiry.
            log.info("a withdrawal for the link's gateway does not cross (not carried yet)")
            await msg.ack()
            return None
        now_ms = self.clock.now_ms()
        try:
            d = await asyncio.to_thread(guard, self.registry, self.link, msg.data, at_ms=now_ms)
        except AuditStoreError:
            log.warning("the guard's decision could not be recorded; it comes back")
            await msg.nak(delay=RETRY_S[0])
            return None
        if not d.passed or d.envelope is None:
            self.blocked += 1
            await msg.ack()  # audited as federation.blocked: it never crosses
            return None
        bid = d.envelope.header.bulletin_id
        try:
            body = await self._transfer(d.envelope, msg.data, now_ms // 1000)
        except ValueError:
            log.warning("bulletin %s: its originator is not in the directory yet", bid)
            await self._later(msg, bid)
            return None
        try:
            await msg.in_progress()  # the ack wait starts again: this POST has all of it
            answer = await http.post(
                url, content=body, headers={"content-type": "application/json"}
            )
        except httpx.HTTPError as exc:
            log.warning("partner not reached for %s (%s); it comes back", bid, type(exc).__name__)
            return await self._later(msg, bid)
        if answer.status_code == 200:
            self._attempts.pop(bid, None)
            self.crossed += 1
            with contextlib.suppress(nats.errors.TimeoutError):
                # Not confirmed: it comes back after the ack wait and the partner, which
                # holds it, answers 200 again without keeping it twice.
                await msg.ack_sync()
            return None
        if answer.status_code in (413, 422):
            # The partner will never take it: its own link rules blocked it, or it is
            # larger than its link carries (audited there). The day's counts of the two
            # sides then differ: the reconciler names it.
            log.warning("partner blocked bulletin %s (HTTP %d)", bid, answer.status_code)
            self._attempts.pop(bid, None)
            await msg.term()
            return None
        # 400 (refused: a key pinned wrongly, a clock far off), 404 (another link), 5xx:
        # kept and sent again, so fixing the configuration lets everything through.
        log.warning("partner answered %d for %s; it comes back", answer.status_code, bid)
        await self._later(msg, bid)
        return None

    async def _refresh(self) -> None:
        await asyncio.to_thread(self.directory.refresh)
        self._refreshed_ms = self.clock.now_ms()

    async def _transfer(self, env: Envelope, raw: bytes, now: int) -> bytes:
        """The signed transfer, with the originator's record from a directory at most
        ``DIRECTORY_MAX_AGE_S`` old (a rotated key must reach the partner)."""
        if self.clock.now_ms() - self._refreshed_ms > DIRECTORY_MAX_AGE_S * 1000:
            await self._refresh()
        try:
            return transfer_for(self.directory, self.link, env, raw, self.key, now)
        except ValueError:
            await self._refresh()  # enrolled since: build again
            return transfer_for(self.directory, self.link, env, raw, self.key, now)

    async def _later(self, msg: Msg, bid: str) -> float:
        """Hand ``msg`` back for longer each time its bulletin comes back; the delay."""
        n = self._attempts.get(bid, 0)
        self._attempts[bid] = n + 1
        delay = float(RETRY_S[min(n, len(RETRY_S) - 1)])
        await msg.nak(delay=delay)
        return delay


def ingest_app(
    registry: Registry,
    link: Link,
    *,
    nc: NATS,
    sender_key: VerifyKey,
    directory_key: VerifyKey,
    clock: Clock = SYSTEM_CLOCK,
    allowed_hosts: Collection[str] = LOOPBACK_HOSTS,
) -> Starlette:
    """The receiving side's HTTP ingest of ``link``: checks each transfer (signed by
    ``sender_key``, with records signed by ``directory_key``) and hands what arrived on
    to this side's delivery stream over ``nc`` (the broker's own connection). A request
    whose ``Host`` is none of ``allowed_hosts`` is refused (421), as the API does."""
    limit = max_transfer_bytes(link.max_envelope_bytes)
    hosts = frozenset(h.lower() for h in allowed_hosts)

    async def transfers(request: Request) -> JSONResponse:
        if host_name(request.scope) not in hosts:
            return JSONResponse({"error": "not this ingest's host"}, status_code=421)
        if request.path_params["link"] != link.name:
            return JSONResponse({"error": "unknown link"}, status_code=404)
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return JSONResponse({"error": "too large"}, status_code=413)
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    return JSONResponse({"error": "too large"}, status_code=413)
        except ClientDisconnect:
            return JSONResponse({"error": "disconnected"}, status_code=400)
        try:
            arrival = await asyncio.to_thread(
                receive,
                registry,
                link,
                bytes(body),
                sender_key=sender_key,
                directory_key=directory_key,
                at_ms=clock.now_ms(),
            )
        except AuditStoreError:
            return JSONResponse({"error": "try again"}, status_code=503)
        if arrival.outcome == "refused":
            return JSONResponse({"outcome": "refused"}, status_code=400)
        if arrival.outcome == "blocked":
            return JSONResponse(
                {"outcome": "blocked", "reasons": list(arrival.reasons)}, status_code=422
            )
        env = arrival.envelope
        if env is None:  # an arrival always has one
            return JSONResponse({"error": "try again"}, status_code=503)
        try:
            await _hand_on(nc, link, env, arrival, clock)
        except (nats.errors.Error, APIError, TimeoutError) as exc:
            log.warning("could not hand on a bulletin (%s)", type(exc).__name__)
            return JSONResponse({"error": "try again"}, status_code=503)
        bid = env.header.bulletin_id
        return JSONResponse({"outcome": "arrived", "bulletin_id": bid, "to": list(arrival.to)})

    return Starlette(routes=[Route("/v1/federation/{link}/transfers", transfers, methods=["POST"])])


async def _hand_on(nc: NATS, link: Link, env: Envelope, arrival: Arrival, clock: Clock) -> None:
    """Store the arrived envelope for each of this side's link agencies it addresses, as
    the relay stores a delivery (same subject, same dedupe id ``<bulletin>:<agency>``),
    with the link's name and the originator's signed record as headers, for the agency's
    SDK to check the originator's signature against (``schemas.partner_delivery``)."""
    h = env.header
    now = clock.now_s()
    ttl = None if h.expires_at is None else max(h.expires_at - now, 1)
    if arrival.record is None:  # an arrival always has one
        raise ValueError("an arrival without the originator's record")
    extra = tuple(crossed_headers(link.name, arrival.record).items())
    messages = [
        Message(
            deliver_subject(agency, h.labels.precedence),
            arrival.raw,
            delivery_msg_id(h.bulletin_id, agency),
            ttl,
            extra,
        )
        for agency in arrival.to
    ]
    await publish_batch(nc, DELIVER_STREAM, messages)


async def serve_ingest(
    app: Starlette,
    host: str,
    port: int,
    stop: asyncio.Event,
    *,
    ready: Callable[[], None] | None = None,
) -> None:
    """Serve ``app`` on ``host:port`` until ``stop``; ``ready`` is called once it listens."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)

    async def watch(serving: asyncio.Task[None]) -> None:
        while not server.started and not serving.done():  # noqa: ASYNC110  # uvicorn has a flag, no event
            await asyncio.sleep(0.05)
        if server.started and ready is not None:
            ready()
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        server.should_exit = True

    async with asyncio.TaskGroup() as tg:
        serving = tg.create_task(server.serve())
        tg.create_task(watch(serving))
