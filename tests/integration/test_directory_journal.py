"""The change journal behind the agency API's ``changes`` (ADR 14), on both engines: every
change to an agency's record moves the directory's serial and names the agency, whatever
wrote it; a subscription moves the digest only; a relay's answer names exactly the agencies
changed since the version a client holds, signed by the directory key; a journal pruned
past that version says "fetch everything"."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from broker.directory.lifecycle import set_agency_status
from broker.directory.rotation import apply_rotation
from broker.directory.subscriptions import set_subscriptions
from broker.relay.agency_api import AgencyApi
from broker.runtime.stack import Stack
from clients.keystore import load_keystore
from clients.rotation import new_keys
from schemas.agency import ChangesRequest, encode_request
from schemas.canonical import canonical_json
from schemas.directory import SignedChanges, directory_serial, verify_changes
from schemas.subjects import api_subject
from tests.storage_engines import Storage

GT, HN, SV = "gt-police", "hn-police", "sv-police"


@pytest.fixture
def stack(storage: Storage, tmp_path: Path) -> Iterator[Stack]:
    """The demo directory in a fresh database of ``storage``'s engine (no NATS)."""
    s = Stack(storage.settings(tmp_path / "istmo"), out=lambda _line: None)
    s.prepare()
    try:
        yield s
    finally:
        assert s.registry is not None
        s.registry.close()


def changes_since(stack: Stack, since: str) -> SignedChanges:
    assert stack.registry is not None
    assert stack.directory is not None
    api = AgencyApi(stack.settings, stack.registry, stack.directory)
    ask = encode_request(ChangesRequest(since=since))
    answer = api.handle(api_subject(GT, "changes"), ask, now=int(time.time()))
    assert isinstance(answer, SignedChanges), answer
    return answer


def test_each_record_change_is_journaled_in_commit_order(stack: Stack) -> None:
    registry, directory = stack.registry, stack.directory
    assert registry is not None
    assert directory is not None
    # The demo directory was loaded through the registry: journaled too.
    start = registry.directory_serial()
    assert start > 0
    assert directory_serial(directory.version) == start
    loaded = directory.version

    set_agency_status(registry, HN, "suspended", actor="test", note="journal")
    keystore = load_keystore(stack.settings.keys_dir / f"{SV}.json")
    request, _ = new_keys(keystore, now=int(time.time()))
    apply_rotation(
        registry,
        directory.records,
        canonical_json(request.model_dump(mode="json")),
        caller=SV,
        now=int(time.time()),
        max_skew_s=120,
    )
    assert registry.directory_serial() == start + 2  # one per change: its two keys are one
    directory.refresh()
    rotated = directory.version
    assert directory_serial(rotated) == start + 2

    # A subscription is no record: the digest moves, the serial does not.
    set_subscriptions(registry, GT, ["migration"], "test")
    directory.refresh()
    assert directory.version != rotated
    assert directory_serial(directory.version) == start + 2

    # The relay's answer: exactly the agencies changed since each version, signed.
    assert stack.directory_key is not None
    pinned = stack.directory_key.verify_key
    since_load = verify_changes(changes_since(stack, loaded), pinned)
    assert since_load.changed == (HN, SV)
    assert since_load.directory_version == directory.version
    assert since_load.since == loaded
    assert verify_changes(changes_since(stack, rotated), pinned).changed == ()
    assert verify_changes(changes_since(stack, "a" * 32), pinned).changed is None


def test_a_journal_pruned_past_a_version_says_fetch_everything(
    stack: Stack, storage: Storage, tmp_path: Path
) -> None:
    registry, directory = stack.registry, stack.directory
    assert registry is not None
    assert directory is not None
    loaded = directory.version
    set_agency_status(registry, HN, "suspended", actor="test", note="journal")
    mid = registry.directory_serial()
    set_agency_status(registry, HN, "active", actor="test", note="journal")
    engine = storage.admin_engine(tmp_path / "istmo")
    try:
        with engine.begin() as conn:  # as the journal prunes itself, kept rows only
            conn.execute(text("DELETE FROM directory_change WHERE serial <= :n"), {"n": mid})
    finally:
        engine.dispose()
    entries, complete_after = registry.directory_journal(upto=mid + 1, limit=100)
    assert (entries, complete_after) == ([(mid + 1, HN)], mid)
    directory.refresh()
    pinned = stack.directory_key
    assert pinned is not None
    assert verify_changes(changes_since(stack, loaded), pinned.verify_key).changed is None
