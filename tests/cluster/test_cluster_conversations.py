"""A reply and an RFI on the 3-node cluster (ADR 16): the relay is on node 1, the
originator on node 2, the replier on node 3; the answer reaches the RFI's asker across
routes and the RFI's state follows it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from clients.sdk import IstmoClient, ReceivedBulletin
from schemas.labels import Classification, Labels, Tlp
from tests.cluster.conftest import running_cluster_stack
from tests.integration.recall_kit import BZ, LABELS, audit_verifies, take

QUESTION = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("SICA",),
)


@pytest.mark.slow
async def test_an_rfi_answered_by_a_reply_on_the_cluster(tmp_path: Path) -> None:
    async with running_cluster_stack(tmp_path / "istmo") as stack:
        keys = stack.settings.keys_dir
        async with await IstmoClient.connect(keys / "gt-police.json", stack.nats_urls[1]) as gt:
            asked = await gt.rfi(
                to=["rc-drugs"], title="owners?", text="?", labels=QUESTION,
                due_at=int(time.time()) + 600,
            )  # fmt: skip
            assert asked.routed == ("rc-drugs",)
            (question,) = (await take(stack, "rc-drugs", node=2)).bulletins
            assert question.rfi_due is not None
            async with await IstmoClient.connect(keys / "rc-drugs.json", stack.nats_urls[2]) as rc:
                answer = await rc.reply(asked.bulletin_id, text="Los Zetas")
            assert answer.routed == ("gt-police",)
            (got,) = (await take(stack, "gt-police", node=1)).bulletins
            assert (got.in_reply_to, got.thread) == (asked.bulletin_id, asked.bulletin_id)
            (entry,) = [r for r in await gt.rfis() if r.id == asked.bulletin_id]
            assert (entry.state, entry.answered_by) == ("answered", ("rc-drugs",))
        assert await audit_verifies(stack.settings.data_dir)


@pytest.mark.slow
async def test_a_file_and_a_forward_cross_the_cluster(tmp_path: Path) -> None:
    """Attachments (ADR 17) and forwarding with consent (ADR 20) on the 3-node cluster:
    the file goes up through node 2 and comes down, checked, through node 3; the forward
    is asked on node 3, granted on node 2 and reaches its new recipient on node 1 with the
    file, fetched through the forward from the original's chunks."""
    photo = tmp_path / "boats.jpg"
    photo.write_bytes(bytes(range(256)) * 3000)  # 768 KB: two chunks
    async with running_cluster_stack(tmp_path / "istmo") as stack:
        keys = stack.settings.keys_dir
        async with await IstmoClient.connect(keys / "gt-police.json", stack.nats_urls[1]) as gt:
            sent = await gt.publish(
                title="Boats at Dangriga",
                text="photos attached",
                labels=LABELS,
                attachments=[photo],
            )
            assert tuple(sorted(sent.routed)) == BZ
            async with await IstmoClient.connect(keys / "bz-police.json", stack.nats_urls[2]) as bz:
                got: list[ReceivedBulletin] = []

                async def keep(b: ReceivedBulletin) -> None:
                    got.append(b)

                assert await bz.receive(keep, count=1, timeout=20) == 1
                [b] = got
                assert [a.name for a in b.attachments] == ["boats.jpg"]
                [saved] = await bz.save_attachments(b, tmp_path / "inbox")
                assert saved.read_bytes() == photo.read_bytes()

                asked = await bz.forward(sent.bulletin_id, to="jm-police", reason="same boats")
                assert asked.state == "requested"
                [req] = await gt.forward_requests()
                assert await gt.grant_forward(req.request_id, valid_for_s=600) == "granted"
                done = await bz.forward(sent.bulletin_id, to="jm-police")
            assert (done.state, done.consent) == ("forwarded", "originator")
        (fwd,) = (await take(stack, "jm-police", node=0)).bulletins
        assert fwd.id == done.forward_id
        assert fwd.forwarded is not None
        assert (fwd.forwarded.bulletin_id, fwd.forwarded.originator) == (
            sent.bulletin_id,
            "gt-police",
        )
        assert [(a.name, a.original) for a in fwd.attachments] == [("boats.jpg", sent.bulletin_id)]
        async with await IstmoClient.connect(keys / "jm-police.json", stack.nats_urls[0]) as jm:
            [forwarded] = await jm.save_attachments(fwd, tmp_path / "jm-inbox")
        assert forwarded == tmp_path / "jm-inbox" / fwd.id / "boats.jpg"
        assert forwarded.read_bytes() == photo.read_bytes()
        assert await audit_verifies(stack.settings.data_dir)
