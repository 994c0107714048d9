"""A suspension on ``istmo up --cluster 3`` reaches every node: the agency is refused on
each of the three, and admitted again on each after reinstatement."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import nats
import nats.errors
import pytest

from clients.keystore import load_keystore
from schemas.subjects import inbox_prefix
from tests.cluster.conftest import up_cluster_process
from tests.stackproc import run_cli
from tests.waiting import eventually

AGENCY = "hn-police"


async def admitted(url: str, seed: str) -> bool:
    nc = nats.NATS()
    try:
        await nc.connect(
            url,
            nkeys_seed_str=seed,
            inbox_prefix=inbox_prefix(AGENCY),
            allow_reconnect=False,
            connect_timeout=2,
        )
    except (nats.errors.Error, OSError, TimeoutError):
        return False
    finally:
        await nc.close()
    return True


@pytest.mark.slow
async def test_suspend_and_reinstate_apply_on_every_node(tmp_path: Path) -> None:
    up = up_cluster_process(tmp_path / "istmo")
    await asyncio.to_thread(up.start, 120)
    try:
        urls = json.loads((up.data_dir / "stack.json").read_text())["nats_urls"]
        seed = load_keystore(up.data_dir / "keys" / f"{AGENCY}.json").nats_seed
        assert [await admitted(u, seed) for u in urls] == [True, True, True]

        done = await asyncio.to_thread(
            run_cli, "admin", "suspend", AGENCY, "--note", "test", data_dir=up.data_dir
        )
        assert done.returncode == 0, done.stderr

        async def admitted_by_each() -> list[bool]:
            return [await admitted(u, seed) for u in urls]

        await eventually(  # the stack reloads the nodes one after another
            admitted_by_each, until=lambda got: got == [False] * 3, what="every node to refuse"
        )

        done = await asyncio.to_thread(
            run_cli, "admin", "reinstate", AGENCY, "--note", "test", data_dir=up.data_dir
        )
        assert done.returncode == 0, done.stderr
        await eventually(
            admitted_by_each, until=lambda got: got == [True] * 3, what="every node to admit"
        )
    finally:
        await asyncio.to_thread(up.stop, 60)
