"""The directory's rebuild off the event loop (``refresh_async``): it sees what changed, it
never swaps an older rebuild over a newer one, and its two-query key load equals the
per-agency queries it replaced. On SQLite and PostgreSQL (the ``broker`` fixture)."""

from __future__ import annotations

from tests.api.conftest import Broker


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


def test_a_rebuild_older_than_the_one_in_force_is_dropped(broker: Broker) -> None:
    directory = broker.directory
    stale = directory._build()  # started before the change, finished after (a slow thread)
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


def test_keys_by_agency_equals_the_per_agency_queries(broker: Broker) -> None:
    registry = broker.registry
    signing, encryption = registry.keys_by_agency()
    agencies = [a.id for a in registry.agencies()]
    assert len(agencies) > 80
    for agency in agencies:
        assert sorted(k.kid for k in signing.get(agency, [])) == sorted(
            k.kid for k in registry.signing_keys(agency)
        )
        assert sorted(k.kid for k in encryption.get(agency, [])) == sorted(
            k.kid for k in registry.encryption_keys(agency)
        )
    assert set(signing) <= set(agencies) | {"admin"}
    # Every agency's record carries its current encryption key and every signing key.
    record = broker.directory.records["gt-police"]
    assert record.encryption_key is not None
    assert {k.kid for k in record.signing_keys} == {k.kid for k in signing["gt-police"]}
