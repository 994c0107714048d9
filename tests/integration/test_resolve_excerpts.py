"""The signed excerpt a relay answers ``resolve`` and ``directory`` with is kept with the
directory view it was built from (``broker.directory.excerpts``): a second answer for the
same agencies within ``EXCERPT_REUSE_S`` repeats it, and its bytes on the wire are those
``encode_reply`` gives; but once the directory changes (an agency suspended, keys
rotated) the next answer, even in the same second, is built from the new records. Over a
prepared data directory (SQLite, the demo directory), in process, as the relay's
``AgencyApi`` answers."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import pytest

from broker.directory.excerpts import EXCERPT_REUSE_S
from broker.directory.lifecycle import set_agency_status
from broker.relay.agency_api import AgencyApi, reply_bytes
from broker.runtime.stack import Stack
from clients.keystore import load_keystore
from clients.rotation import new_keys
from schemas.agency import (
    DirectoryRequest,
    ResolveReply,
    ResolveRequest,
    encode_reply,
    encode_request,
)
from schemas.canonical import canonical_json
from schemas.directory import AgencyRecord, SignedExcerpt, directory_version, open_excerpt
from schemas.labels import Classification, Labels, Tlp
from schemas.subjects import api_subject
from tests.integration.stack_inproc import prepared_stack

GT, HN = "gt-police", "hn-police"

TO_SICA = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("SICA",),
)
ASK = encode_request(ResolveRequest(labels=TO_SICA))
BIG = 64 * 1024 * 1024  # no answer here is too large


@pytest.fixture
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with prepared_stack(tmp_path_factory.mktemp("excerpts") / "istmo") as stack:
        yield stack


def _api(stack: Stack) -> AgencyApi:
    assert stack.registry is not None
    assert stack.directory is not None
    return AgencyApi(stack.settings, stack.registry, stack.directory)


def _resolve(api: AgencyApi, now: int) -> tuple[ResolveReply, bytes]:
    answer = api.handle(api_subject(GT, "resolve"), ASK, now=now)
    assert isinstance(answer, ResolveReply), answer
    raw = reply_bytes(answer, max_bytes=BIG, directory=api.directory)
    assert raw == encode_reply(answer)  # the kept bytes are the answer's encoding
    return answer, raw


def _records(api: AgencyApi, raw: bytes) -> dict[str, AgencyRecord]:
    """The records of a resolve answer on the wire, checked against the pinned key."""
    assert api.directory.directory_key is not None
    body = raw[raw.index(b'{"excerpt":') : raw.rindex(b',"policy_version":')]
    excerpt = open_excerpt(body, api.directory.directory_key.verify_key)
    return {r.id: r for r in excerpt.agencies}


def test_a_second_answer_repeats_the_signed_excerpt_and_its_bytes(stack: Stack) -> None:
    api = _api(stack)
    now = int(time.time())
    first, raw = _resolve(api, now)
    assert HN in first.recipients
    assert set(_records(api, raw)) == set(first.recipients)
    again, raw_again = _resolve(api, now + EXCERPT_REUSE_S)
    assert again.directory is first.directory
    assert raw_again == raw
    later, _ = _resolve(api, now + EXCERPT_REUSE_S + 1)
    assert later.directory.excerpt.issued_at == now + EXCERPT_REUSE_S + 1
    assert later.directory.excerpt.agencies == first.directory.excerpt.agencies

    # A directory page of the same agencies is the same excerpt, its bytes as encoded.
    page = encode_request(DirectoryRequest(agencies=tuple(reversed(later.recipients))))
    records = api.handle(api_subject(HN, "directory"), page, now=now + EXCERPT_REUSE_S + 2)
    assert records is later.directory
    wire = reply_bytes(records, max_bytes=BIG, directory=api.directory)
    assert wire == canonical_json(records.model_dump(mode="json"))


def test_a_suspended_agency_is_not_answered_from_a_kept_excerpt(stack: Stack) -> None:
    api = _api(stack)
    now = int(time.time())
    before, _ = _resolve(api, now)
    assert HN in before.recipients
    assert stack.registry is not None
    set_agency_status(stack.registry, HN, "suspended", actor="test")
    api.directory.refresh()  # what the relay does on the announcement

    after, raw = _resolve(api, now)  # the same second: a kept excerpt would still fit
    assert HN not in after.recipients
    assert HN not in _records(api, raw)
    assert after.directory.excerpt.directory_version != before.directory.excerpt.directory_version
    page = encode_request(DirectoryRequest(agencies=(HN,)))
    record = api.handle(api_subject(GT, "directory"), page, now=now)
    assert isinstance(record, SignedExcerpt)
    assert [r.status for r in record.excerpt.agencies] == ["suspended"]


def test_a_rotated_key_is_answered_at_once(stack: Stack) -> None:
    api = _api(stack)
    now = int(time.time())
    before, _ = _resolve(api, now)
    old = {r.id: r for r in before.directory.excerpt.agencies}[HN].encryption_key
    assert old is not None

    keystore = load_keystore(stack.settings.keys_dir / f"{HN}.json")
    request, _rotated = new_keys(keystore, now=now)
    rotated = api.handle(api_subject(HN, "rotate"), encode_request(request), now=now)
    assert rotated.model_dump().get("encryption_kid") == request.encryption.kid, rotated

    _, raw = _resolve(api, now)  # the same second: a kept excerpt would still fit
    record = _records(api, raw)[HN]
    assert record.encryption_key is not None
    assert record.encryption_key.kid == request.encryption.kid
    assert old.public.encode() not in raw


def test_the_directory_version_is_the_digest_of_its_records_as_before(stack: Stack) -> None:
    d = _api(stack).directory
    records = list(d.records.values())
    old = hashlib.sha256(
        d.engine.directory.version.encode()
        + canonical_json([r.model_dump(mode="json") for r in records])
    ).hexdigest()
    assert d.version == directory_version(int(d.version[:16], 16), old)
