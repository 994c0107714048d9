"""The directory's rebuild off the event loop (``refresh_async``): it sees what changed, it
never swaps an older rebuild over a newer one, it parses the whole directory for Cedar
after the swap, and its two-query key load equals the per-agency queries it replaced. On
SQLite and PostgreSQL (the ``broker`` fixture)."""

from __future__ import annotations

import gc
import weakref

import pytest

from broker.directory import service
from broker.directory.service import DirectoryService
from broker.policy.engine import PolicyEngine
from broker.policy.model import BulletinFacts
from broker.store.registry import AgencyValues, EncryptionKeyValues, SigningKeyValues
from schemas.labels import Classification, Labels, Tlp
from tests.api.conftest import Broker
from tests.waiting import eventually


async def test_refresh_async_applies_a_status_change(broker: Broker) -> None:
    directory = broker.directory
    before = directory.version
    broker.set_status("hn-police", "suspended")
    try:
        await directory.refresh_async()
        assert directory.agency_rows["hn-police"].status == "suspended"
        assert directory.records["hn-police"].status == "suspended"
        assert directory.version != before
    finally:
        broker.set_status("hn-police", "active")
        await directory.refresh_async()
    assert directory.version == before  # the same directory, the same version


async def test_after_a_change_the_whole_directory_is_parsed_behind_the_swap(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "PARSE_AFTER_S", 0.0)  # at once: this test waits for it
    directory = broker.directory
    labels = Labels(topic="drug-trafficking", classification=Classification.RESTRICTED,
                    tlp=Tlp.AMBER, rel_to=("SICA", "CARICOM"))  # fmt: skip
    facts = BulletinFacts(
        "0f8fad5b-d9cb-469f-a165-70867728950e", "gt-police", "GT", labels, None, None
    )
    everyone = sorted(directory.records)
    broker.set_status("hn-police", "suspended")
    try:
        await directory.refresh_async()
        view = directory._view
        assert view is not None
        # Installed at once; the parse follows on its own thread, and is then kept.
        await eventually(
            lambda: view.snapshot._whole._parsed is not None, what="the whole directory parsed"
        )
        whole = PolicyEngine(directory.bundle, view.snapshot, entities="whole")
        sliced = PolicyEngine(directory.bundle, view.snapshot, entities="slice")
        now = 1_780_000_000
        got = whole.decide_receive(facts, everyone, now)
        assert got == sliced.decide_receive(facts, everyone, now)
        assert not next(d for d in got if d.agency == "hn-police").allowed
    finally:
        broker.set_status("hn-police", "active")
        await directory.refresh_async()


async def test_a_view_is_parsed_only_if_no_rebuild_started_since(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "PARSE_AFTER_S", 3600.0)  # no timer fires in this test
    directory = broker.directory
    broker.set_status("hn-police", "suspended")
    try:
        await directory.refresh_async()
        replaced = directory._view
        broker.set_status("hn-police", "active")
        await directory.refresh_async()
        current = directory._view
        assert replaced is not None
        assert current is not None
        assert replaced is not current
        directory._parse_if_in_force(replaced)  # its timer fires after the next swap
        assert replaced.snapshot._whole._parsed is None
        stale = directory._build(parse=False)  # a rebuild started, not swapped in yet
        directory._parse_if_in_force(current)
        assert current.snapshot._whole._parsed is None
        assert directory._install(stale)
        directory._parse_if_in_force(stale)
        assert stale.snapshot._whole._parsed is not None
    finally:
        broker.set_status("hn-police", "active")
        await directory.refresh_async()


def test_a_rebuild_makes_again_only_the_records_that_changed(broker: Broker) -> None:
    directory = broker.directory
    before = dict(directory.records)
    broker.set_status("hn-police", "suspended")
    try:
        directory.refresh()
        assert directory.records["hn-police"].status == "suspended"
        kept = [a for a, r in before.items() if directory.records[a] is r]
        assert sorted(kept) == sorted(set(before) - {"hn-police"})
        # The same records, version and excerpts as a directory built afresh.
        fresh = DirectoryService(broker.registry, directory.bundle, directory.directory_key)
        assert fresh.records == directory.records
        assert fresh.version == directory.version
        assert fresh.excerpt(["hn-police", "gt-police"], 1) == directory.excerpt(
            ["hn-police", "gt-police"], 1
        )
    finally:
        broker.set_status("hn-police", "active")
        directory.refresh()
    assert directory.records["hn-police"] == before["hn-police"]


def test_a_rebuild_older_than_the_one_in_force_is_dropped(broker: Broker) -> None:
    directory = broker.directory
    stale = directory._build(
        parse=True
    )  # started before the change, finished after (a slow thread)
    broker.set_status("sv-police", "suspended")
    try:
        directory.refresh()
        current = directory.version
        directory._install(stale)
        assert directory.version == current
        assert directory.records["sv-police"].status == "suspended"
    finally:
        broker.set_status("sv-police", "active")
        directory.refresh()
    assert directory.records["sv-police"].status == "active"


def test_a_settled_directory_lets_the_view_it_replaced_go(broker: Broker) -> None:
    """``keep_heap_settled`` (``istmo up``, ``istmo relay``): the heap is frozen, and after
    a rebuild the view it replaced is collected, even held in a cycle made before."""
    assert gc.get_freeze_count() == 0
    key = broker.stack.directory_key
    assert key is not None
    directory = DirectoryService(broker.registry, broker.directory.bundle, key)
    try:
        directory.refresh()
        assert gc.get_freeze_count() == 0  # not asked to: a command that exits soon
        old = directory._installed_view()
        cycle: list[object] = [old]
        cycle.append(cycle)
        gone = weakref.ref(old)
        directory.keep_heap_settled()
        assert gc.get_freeze_count() > 0
        del cycle, old
        directory.refresh()
        assert gone() is None
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_the_rebuilds_plain_reads_equal_the_orm_queries(broker: Broker) -> None:
    """The rows a rebuild reads as the driver gives them (``_driver_rows``) hold the values
    the ORM objects hold, of the same types (a boolean a bool, also from SQLite)."""
    registry = broker.registry
    signing, encryption = registry.keys_by_agency()
    rows = registry.agencies()
    agencies = [a.id for a in rows]
    assert len(agencies) > 80
    plain = registry.agency_values()
    assert [tuple(a) for a in plain] == [
        tuple(getattr(a, f) for f in AgencyValues._fields) for a in rows
    ]
    assert {type(v) for a in plain for v in (a.clearance, a.status)} == {int, str}
    for agency in agencies:
        assert sorted(signing.get(agency, [])) == sorted(
            SigningKeyValues(k.kid, k.public, k.created_at, k.revoked_at)
            for k in registry.signing_keys(agency)
        )
        assert sorted(encryption.get(agency, [])) == sorted(
            EncryptionKeyValues(k.kid, k.kem, k.public, k.created_at, k.current)
            for k in registry.encryption_keys(agency)
        )
        assert all(type(k.current) is bool for k in encryption.get(agency, []))
    subscriptions = registry.subscriptions()
    assert sum(map(len, subscriptions.values())) > 80
    assert all(type(a) is str and type(t) is str for a, ts in subscriptions.items() for t in ts)
    assert set(signing) <= set(agencies) | {"admin"}
    # Every agency's record carries its current encryption key and every signing key.
    record = broker.directory.records["gt-police"]
    assert record.encryption_key is not None
    assert {k.kid for k in record.signing_keys} == {k.kid for k in signing["gt-police"]}
