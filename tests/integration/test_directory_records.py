"""How the SDK keeps its directory records current over NATS (``clients.records``,
ADR 14), against a scripted broker on a real nats-server laid out as Istmo runs it: the
agency's own confined connection asks, and a responder in the broker's account answers
``changes`` and ``directory`` as a relay would, or as a relay still rebuilding, an older
broker, or one whose answer does not fit a NATS message would."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from nats.aio.msg import Msg

from clients.directory_cache import DirectoryCache
from clients.records import DirectoryRecords
from schemas.agency import ChangesRequest, DirectoryRequest, ErrorReply, encode_reply
from schemas.canonical import b64e
from schemas.directory import (
    AgencyRecord,
    DirectoryChanges,
    DirectoryExcerpt,
    EncryptionKeyRecord,
    directory_version,
    sign_changes,
    sign_excerpt,
)
from schemas.envelope import parse_model
from schemas.errors import BusUnavailable, SignatureError
from schemas.keys import SigningKey
from tests.conftest import NatsStack
from tests.core.envelope_kit import make_agency

GT = "gt-police"
KEY = SigningKey.generate()
AGENCIES = [make_agency(a) for a in ("hn-police", "sv-police", "cr-police", "pa-police")]
IDS = [a.id for a in AGENCIES]


def v(serial: int) -> str:
    return directory_version(serial, "e" * 32)


def record(i: int) -> AgencyRecord:
    pub = AGENCIES[i].pub("X25519")
    return AgencyRecord(
        id=IDS[i],
        name="Agency",
        state="HN",
        sector="police",
        status="active",
        encryption_key=EncryptionKeyRecord(
            kid=pub.kid, kem="X25519", public=b64e(pub.public), created_at=1
        ),
    )


def excerpt(serial: int, ids: tuple[str, ...]) -> bytes:
    records = tuple(record(IDS.index(a)) for a in ids)
    signed = sign_excerpt(
        DirectoryExcerpt(v=1, directory_version=v(serial), issued_at=1, agencies=records), KEY
    )
    return encode_reply(signed)


def changes(since: str, serial: int, changed: tuple[str, ...] | None) -> bytes:
    answer = DirectoryChanges(
        v=1, since=since, directory_version=v(serial), issued_at=1, changed=changed
    )
    return encode_reply(sign_changes(answer, KEY))


Answer = Callable[[str, bytes], bytes]
Seen = list[tuple[str, bytes]]


async def broker(stack: NatsStack, answer: Answer) -> Seen:
    """Answer every request of ``GT`` with ``answer(op, request)``; the requests seen."""
    seen: Seen = []
    relay = await stack.connect_relay()

    async def on(msg: Msg) -> None:
        op = msg.subject.rsplit(".", 1)[1]
        seen.append((op, msg.data))
        await msg.respond(answer(op, msg.data))

    await relay.subscribe(f"istmo.api.{GT}.>", cb=on)
    await relay.flush()
    return seen


async def records_of(
    nats_stack: Callable[[list[str]], Awaitable[NatsStack]], answer: Answer
) -> tuple[DirectoryRecords, Seen]:
    stack = await nats_stack([GT])
    seen = await broker(stack, answer)
    nc = await stack.connect_agency(GT)
    cache = DirectoryCache(KEY.verify_key)
    return DirectoryRecords(nc, GT, cache, lambda: 0), seen


def asked_ids(request: bytes) -> tuple[str, ...]:
    return parse_model(DirectoryRequest, request, max_bytes=1 << 16, what="request").agencies


def since_of(request: bytes) -> str:
    return parse_model(ChangesRequest, request, max_bytes=1 << 16, what="request").since


async def test_a_relay_behind_is_refused_and_the_next_answer_taken(
    nats_stack: Callable[[list[str]], Awaitable[NatsStack]],
) -> None:
    serials = iter([6, 5, 6])  # the second relay asked has not applied serial 6 yet

    def answer(op: str, request: bytes) -> bytes:
        return excerpt(next(serials), asked_ids(request))

    records, seen = await records_of(nats_stack, answer)
    got = await records.current(IDS[:1])
    assert list(got) == IDS[:1]
    records.cache.forget(IDS[0])
    got = await records.current(IDS[:1])  # serial 5 refused, serial 6 taken
    assert list(got) == IDS[:1]
    assert [op for op, _ in seen] == ["directory"] * 3
    assert records.cache.newest == 6


async def test_records_come_a_page_at_a_time_and_halve_when_too_large(
    nats_stack: Callable[[list[str]], Awaitable[NatsStack]],
) -> None:
    def answer(op: str, request: bytes) -> bytes:
        ids = asked_ids(request)
        if len(ids) > 2:
            return encode_reply(ErrorReply.of("answer_too_large", "over the limit"))
        return excerpt(3, ids)

    records, seen = await records_of(nats_stack, answer)
    records.page = 3
    got = await records.current(IDS)
    assert sorted(got) == sorted(IDS)
    ordered = sorted(IDS)
    assert [asked_ids(r) for _, r in seen] == [
        tuple(ordered[:3]),  # too large: halved, and the next page is no larger
        *((a,) for a in ordered),
    ]


async def test_only_what_changed_is_fetched_again(
    nats_stack: Callable[[list[str]], Awaitable[NatsStack]],
) -> None:
    def answer(op: str, request: bytes) -> bytes:
        if op == "changes":
            return changes(since_of(request), 4, (IDS[1],))
        return excerpt(3 if len(asked_ids(request)) > 1 else 4, asked_ids(request))

    records, seen = await records_of(nats_stack, answer)
    await records.current(IDS)
    records.cache.heard(v(4), interval_s=5, now=0, epoch=0)
    got = await records.current(IDS)
    assert sorted(got) == sorted(IDS)
    assert [(op, since_of(r) if op == "changes" else asked_ids(r)) for op, r in seen[1:]] == [
        ("changes", v(3)),
        ("directory", (IDS[1],)),
    ]


async def test_a_broker_without_change_lists_is_asked_for_the_records(
    nats_stack: Callable[[list[str]], Awaitable[NatsStack]],
) -> None:
    def answer(op: str, request: bytes) -> bytes:
        if op == "changes":
            return encode_reply(ErrorReply.of("bad_request", "unknown operation"))
        return excerpt(4, asked_ids(request))

    records, seen = await records_of(nats_stack, answer)
    await records.current(IDS[:2])
    records.cache.heard(v(5), interval_s=5, now=0, epoch=0)
    with pytest.raises(BusUnavailable) as behind:
        await records.current(IDS[:2])  # asked again and again, still at 4
    assert behind.value.code == "directory_behind"
    assert not records.has_changes
    assert [op for op, _ in seen].count("changes") == 1


async def test_relays_that_stay_behind_are_an_error_that_says_so(
    nats_stack: Callable[[list[str]], Awaitable[NatsStack]],
) -> None:
    def answer(op: str, request: bytes) -> bytes:
        if op == "changes":
            return changes(since_of(request), 2, ())
        return excerpt(3, asked_ids(request))

    records, _ = await records_of(nats_stack, answer)
    await records.current(IDS[:1])
    records.cache.heard(v(4), interval_s=5, now=0, epoch=0)
    with pytest.raises(SignatureError) as older:
        await records.current(IDS[:1])
    assert older.value.code == "directory_downgrade"
    assert "older than the serial 3" in str(older.value)
