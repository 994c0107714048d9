"""A recall on the 3-node cluster (ADR 15): copies on a replicated delivery stream are
removed, and the withdrawal crosses routes, as on one node. The relay is on node 1, the
originator on node 2, the recipients on node 3."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.sdk import IstmoClient
from schemas.labels import Precedence
from tests.cluster.conftest import running_cluster_stack
from tests.integration.recall_kit import LABELS, audit_verifies, copies, take, waiting


@pytest.mark.slow
async def test_a_recall_on_the_cluster_removes_copies_and_tells_who_had_it(
    tmp_path: Path,
) -> None:
    async with running_cluster_stack(tmp_path / "istmo") as stack:
        keys = stack.settings.keys_dir / "gt-police.json"
        async with await IstmoClient.connect(keys, stack.nats_urls[1]) as gt:
            bid = (await gt.publish(title="on three nodes", text="b", labels=LABELS)).bulletin_id
            got = await take(stack, "bz-police", node=2)
            assert [b.id for b in got.bulletins] == [bid]
            result = await gt.recall(bid, reason="wrong recipients")
        assert (result.removed, result.notified, result.copies_kept) == (
            ("bz-justice", "bz-military"),
            ("bz-police",),
            0,
        )
        assert await copies(stack, bid) == {}
        for agency in ("bz-justice", "bz-military"):
            assert await waiting(stack, agency) == (0, 0)
        (told,) = (await take(stack, "bz-police", node=2)).withdrawals
        assert (told.id, told.had_it) == (bid, True)
        assert await waiting(stack, "bz-police", Precedence.IMMEDIATE) == (0, 0)
        assert await audit_verifies(stack.settings.data_dir)
