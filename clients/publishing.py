"""Storing what an agency publishes in JetStream: its bulletins and its receipts, and
what JetStream's answers (or its silence) mean.

A publish carries a ``Nats-Msg-Id`` derived from what is published, so a retry after no
answer is harmless: JetStream stores it once. What is published is built elsewhere
(``schemas.sealing``, ``schemas.receipt``); this module only stores it.
"""

from __future__ import annotations

import asyncio
import logging

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from clients.errors import PublishUnacknowledged
from schemas.canonical import canonical_json
from schemas.envelope import Envelope
from schemas.errors import BusUnavailable
from schemas.receipt import Receipt
from schemas.sealing import encode_envelope, envelope_digest
from schemas.subjects import ingest_msg_id, ingest_subject, receipt_subject

__all__ = ["store_envelope", "store_receipt"]

log = logging.getLogger("istmo.sdk")

# No answer to a JetStream publish: nobody stored it (no broker gate running, JetStream
# electing a leader); a retry with the same Nats-Msg-Id is harmless.
_NOT_STORED = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
)
# What JetStream says when a stream or its volume has no room (nats-server's messages).
_STORE_FULL = ("maximum bytes", "maximum messages", "insufficient resources", "no space")
# JetStream is still deciding an earlier attempt with the same Nats-Msg-Id (a clustered
# stream whose leader moved mid-publish): not a refusal; asking again settles it.
_DUPLICATE_IN_PROCESS = 10158


async def store_envelope(
    js: JetStreamContext, agency: str, env: Envelope, *, attempts: int = 3
) -> None:
    """Publish ``env`` on ``agency``'s ingest subject until JetStream stores it.

    Raises:
        BusUnavailable: JetStream refused it (code ``store_full`` or ``refused``):
            nothing was stored.
        PublishUnacknowledged: no answer after ``attempts``: it may or may not be stored.
    """
    raw = encode_envelope(env)
    headers = {"Nats-Msg-Id": ingest_msg_id(agency, envelope_digest(env))}
    for attempt in range(attempts):
        try:
            await js.publish(ingest_subject(agency), raw, headers=headers, timeout=5)
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


async def store_receipt(js: JetStreamContext, receipt: Receipt) -> bool:
    """Publish ``receipt`` on its recipient's receipt subject, once.

    Returns:
        True once JetStream has stored it; False if it did not answer or refused (the
        caller hands the bulletin back, so the receipt is sent again when it returns).
    """
    try:
        await js.publish(
            receipt_subject(receipt.recipient),
            canonical_json(receipt.model_dump(mode="json")),
            headers={"Nats-Msg-Id": f"{receipt.bulletin_id}:{receipt.recipient}:receipt"},
            timeout=5,
        )
    except (*_NOT_STORED, nats.js.errors.APIError):
        log.warning("receipt for %s not acknowledged by NATS", receipt.bulletin_id)
        return False
    return True
