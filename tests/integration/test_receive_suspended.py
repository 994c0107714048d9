"""A receive under way when its agency is suspended (operator mode, ADR 13): nats-server
closes the connection, and ``receive`` says the agency was refused, as a connect would,
long before its own timeout; not nats-py's ConnectionClosedError."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from broker.directory.lifecycle import CONTROL_DIRECTORY_SUBJECT, set_agency_status
from clients.results import ReceivedBulletin
from schemas.errors import BusUnavailable
from tests.integration.stack_inproc import client, nats_url, running_stack


async def test_a_receive_under_way_says_its_agency_was_refused(tmp_path: Path) -> None:
    async with running_stack(tmp_path / "istmo", nats_auth="operator") as stack:
        assert stack.registry is not None
        got: list[ReceivedBulletin] = []

        async def keep(b: ReceivedBulletin) -> None:
            got.append(b)

        bz = await client(stack, "bz-police")
        receiving = asyncio.create_task(bz.receive(keep, count=1, timeout=600))
        relay = await stack.connect_relay(nats_url(stack))
        try:
            # As `istmo admin suspend` does: the change, then a word to the running stack.
            set_agency_status(stack.registry, "bz-police", "suspended", actor="t", note="x")
            await relay.publish(CONTROL_DIRECTORY_SUBJECT, b"{}")
            with pytest.raises(BusUnavailable) as refused:
                # Far inside its own 600 s: it ends once NATS has closed the connection.
                await asyncio.wait_for(receiving, 120)
        finally:
            await relay.close()
            await bz.close()
        assert refused.value.code == "not_authorized"
        assert "refused bz-police's credentials" in str(refused.value)
        assert got == []
