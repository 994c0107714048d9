"""The frames ``broker.bus.batch`` writes for the middle of an atomic batch are the bytes
nats-py's ``publish`` writes for the same message, and every message ``publish`` would
change or refuse is left to it (``frame`` answers None)."""

from __future__ import annotations

import pytest
from nats.aio.client import Client as NATS

from broker.bus.batch import frame

BATCH = {"Nats-Batch-Id": "9f0c2a", "Nats-Batch-Sequence": "17"}
SAME = [
    ("batch headers", "istmo.deliver.policia-gt.routine", BATCH),
    ("dedupe id and TTL", "istmo.archive.x", {**BATCH, "Nats-Msg-Id": "b:gt", "Nats-TTL": "60s"}),
    ("a partner's header", "s", {**BATCH, "Istmo-Link": "a b=c;d", "X_y.z~1": "é ü"}),
    ("no headers", "s", {}),
    ("empty value", "s", {"K": ""}),
]
LEFT_TO_NATS_PY = [
    ("value with a trailing space", "s", {"K": "v "}),
    ("value with a leading tab", "s", {"K": "\tv"}),
    ("value with a CR", "s", {"K": "a\rb"}),
    ("value with a LF", "s", {"K": "a\nb"}),
    ("name with a colon", "s", {"K:": "v"}),
    ("name with a space", "s", {"K K": "v"}),
    ("subject with a space", "a b", BATCH),
    ("subject with a CR", "a\rb", BATCH),
    ("empty subject", "", BATCH),
]


async def as_published(subject: str, data: bytes, headers: dict[str, str]) -> bytes:
    """What nats-py's ``publish`` puts in its outgoing buffer (a client not connected
    buffers what it is given)."""
    nc = NATS()
    nc._max_pending_size = 1 << 20
    await nc.publish(subject, data, headers=headers)
    (sent,) = nc._pending
    return bytes(sent)


@pytest.mark.parametrize(("name", "subject", "headers"), SAME, ids=[c[0] for c in SAME])
async def test_a_frame_is_what_publish_writes(
    name: str, subject: str, headers: dict[str, str]
) -> None:
    data = b"\x00\r\nHPUB x 1 2\r\n" + bytes(range(256))
    assert frame(subject, data, headers) == await as_published(subject, data, headers)


@pytest.mark.parametrize(
    ("name", "subject", "headers"), LEFT_TO_NATS_PY, ids=[c[0] for c in LEFT_TO_NATS_PY]
)
def test_what_publish_would_change_is_not_framed(
    name: str, subject: str, headers: dict[str, str]
) -> None:
    assert frame(subject, b"x", headers) is None
