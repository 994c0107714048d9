"""Keeping the agencies' NATS accounts in step with the registry (``broker.runtime.accounts``,
ADR 0013): a real registry (SQLite and PostgreSQL), a real nats-server in operator mode.

What an agency's account admits follows from (agency, NATS key, active) alone, so a start
pushes only what the resolver lacks, and a directory change only what changed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from broker.bus.natsjwt import decode_jwt
from broker.runtime.accounts import AccountSync
from broker.store.registry import AgencyRow, NatsUserRow, Registry
from schemas.natskeys import new_user_seed, user_public_key
from schemas.subjects import INGEST_STREAM, ingest_subject
from tests.clocks import ManualClock
from tests.integration.test_nats_operator import refused
from tests.storage_engines import Storage
from tests.waiting import eventually

GT = "gt-police"
JM = "jm-police"
StackFactory = Callable[..., Awaitable[Any]]


@pytest.fixture
def registry(storage: Storage, tmp_path: Path) -> Iterator[Registry]:
    """On SQLite and on PostgreSQL: the accounts are read in one query of both tables."""
    reg = Registry(storage.url(tmp_path))
    yield reg
    reg.close()


def enrol(registry: Registry, stack: Any, agencies: list[str]) -> None:
    """The registry's rows for ``agencies``, with the NATS keys ``stack`` holds."""
    rows: list[Any] = []
    for agency in agencies:
        rows.append(AgencyRow(id=agency, name=agency, sector="police"))
        rows.append(NatsUserRow(agency=agency, nkey_public=user_public_key(stack.seeds[agency])))
    registry.add_all(rows)


def set_status(registry: Registry, agency: str, status: str) -> None:
    with registry.session() as s:
        row = s.get(AgencyRow, agency)
        assert row is not None
        row.status = status
        s.add(row)
        s.commit()


def set_key(registry: Registry, agency: str, seed: str) -> None:
    with registry.session() as s:
        row = s.exec(select(NatsUserRow).where(NatsUserRow.agency == agency)).one()
        row.nkey_public = user_public_key(seed)
        s.add(row)
        s.commit()


async def test_start_pushes_what_is_missing_and_a_change_only_what_changed(
    nats_stack: StackFactory, registry: Registry
) -> None:
    stack = await nats_stack([], auth="operator")
    stack.seeds.update({GT: new_user_seed(), JM: new_user_seed()})
    await stack.provision([GT, JM])
    enrol(registry, stack, [GT, JM])
    sync = AccountSync(stack.operator, registry, stack.pusher)

    assert await sync.start() == 2
    # A broker started again finds them in the resolver.
    assert await AccountSync(stack.operator, registry, stack.pusher).start() == 0
    assert await sync.apply() == 0  # nothing changed
    gt = await stack.connect_agency(GT, allow_reconnect=False)
    assert (await gt.jetstream(timeout=2).publish(ingest_subject(GT), b"x")).stream == INGEST_STREAM

    set_status(registry, GT, "suspended")
    assert await sync.apply() == 1
    await eventually(lambda: not gt.is_connected, what="gt to be cut off")
    assert (
        "authorization violation"
        in (await refused(stack.url, stack.seeds[GT], GT, stack.agency_jwt(GT))).lower()
    )
    jm = await stack.connect_agency(JM)  # the other agency was not touched
    assert jm.is_connected

    # Re-enrolled with a new key: the old one is refused, the new one admitted.
    set_status(registry, GT, "active")
    old_seed, old_jwt = stack.seeds[GT], stack.agency_jwt(GT)
    stack.seeds[GT] = new_user_seed()
    set_key(registry, GT, stack.seeds[GT])
    assert await sync.apply() == 1
    assert "authorization violation" in (await refused(stack.url, old_seed, GT, old_jwt)).lower()
    assert (await stack.connect_agency(GT)).is_connected


async def test_each_new_jwt_of_an_account_is_issued_later_than_the_last(
    nats_stack: StackFactory, registry: Registry
) -> None:
    """Nodes comparing stores keep the later JWT, and two issued in one second share a jti:
    so three changes within a second still get three increasing issue times."""
    stack = await nats_stack([GT], auth="operator")
    enrol(registry, stack, [GT])
    sync = AccountSync(stack.operator, registry, stack.pusher, clock=ManualClock.at(1_800_000_000))
    await sync.start()
    issued = []
    for status in ("suspended", "active", "revoked"):
        set_status(registry, GT, status)
        await sync.apply()
        held = await stack.pusher.stored()
        issued.append(decode_jwt(held[stack.operator.agency_account(GT)]).issued_at)

    assert issued == sorted(set(issued))
    assert len(issued) == 3
