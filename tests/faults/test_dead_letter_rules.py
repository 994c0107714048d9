"""The pure rules behind dead letters and reconciliation (fast; no stack)."""

from __future__ import annotations

import json
import time

import pytest

from broker.cli.reconcile import _since
from broker.relay.dead_letters import (
    INGEST_MAX_ATTEMPTS,
    dead_subject,
    handle_advisory,
    ingest_attempts_allowed,
)
from broker.relay.reconcile import archive_subject
from schemas.envelope import Content
from schemas.errors import ConfigError, EnvelopeError
from schemas.ids import AgencyId
from schemas.keys import EncryptionKey, SigningKey
from schemas.labels import Classification, Labels, Tlp
from schemas.sealing import encode_envelope, seal

LABELS = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("BZ",),
)


def envelope(now: int, not_before: int | None = None) -> bytes:
    key = EncryptionKey.generate("X25519")
    env = seal(
        content=Content(title="t", text="x"),
        labels=LABELS,
        originator=AgencyId("gt-police"),
        signing_key=SigningKey.generate(),
        recipients={AgencyId("bz-police"): key.public_key},
        now=now,
        not_before=not_before,
    )
    return encode_envelope(env)


@pytest.mark.parametrize(
    ("embargo_s", "allowed"),
    [
        (None, INGEST_MAX_ATTEMPTS),
        (0, INGEST_MAX_ATTEMPTS),
        (60, INGEST_MAX_ATTEMPTS + 2),  # one hand-back, plus the one that ends it
        (3600, INGEST_MAX_ATTEMPTS + 2),
        (3601, INGEST_MAX_ATTEMPTS + 3),
        (10 * 3600, INGEST_MAX_ATTEMPTS + 11),
    ],
)
def test_an_embargo_explains_its_hand_backs(embargo_s: int | None, allowed: int) -> None:
    now = int(time.time())
    nb = None if embargo_s is None else now + embargo_s
    assert ingest_attempts_allowed(envelope(now, nb), stored_at=now) == allowed


def test_garbage_on_ingest_gets_the_plain_limit() -> None:
    assert ingest_attempts_allowed(b"\xff not json", stored_at=0) == INGEST_MAX_ATTEMPTS


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"{}",
        json.dumps({"type": "io.nats.jetstream.advisory.v1.max_deliver"}).encode(),
        # another stream's, or a consumer that is not an agency's
        json.dumps(
            {
                "type": "io.nats.jetstream.advisory.v1.max_deliver",
                "stream": "ISTMO_INGEST",
                "consumer": "relay-ingest",
                "stream_seq": 3,
                "deliveries": 10,
            }
        ).encode(),
        json.dumps(
            {
                "type": "io.nats.jetstream.advisory.v1.max_deliver",
                "stream": "ISTMO_DELIVER",
                "consumer": "deliver-Not_An_Agency",
                "stream_seq": 3,
                "deliveries": 10,
            }
        ).encode(),
        b"{" + b" " * 5000 + b"}",
    ],
)
async def test_advisories_not_ours_are_ignored_without_io(raw: bytes) -> None:
    # None for JetStream and the registry: touching either would raise.
    assert await handle_advisory(None, None, raw) is None  # type: ignore[arg-type]


def test_subjects_are_built_from_checked_ids() -> None:
    assert dead_subject("deliver", "bz-police") == "istmo.dead.deliver.bz-police"
    with pytest.raises(EnvelopeError):
        dead_subject("ingest", "bz.police")
    with pytest.raises(ValueError, match="kind"):
        dead_subject("other", "bz-police")
    with pytest.raises(EnvelopeError):
        archive_subject("*")


def test_reconcile_window() -> None:
    assert _since("90m", 10_000_000) == 10_000_000 - 90 * 60_000
    assert _since("2d", 500_000_000) == 500_000_000 - 2 * 86_400_000
    for bad in ("", "1y", "-1h", "h", "99999999d"):
        with pytest.raises(ConfigError, match="--since"):
            _since(bad, 0)
