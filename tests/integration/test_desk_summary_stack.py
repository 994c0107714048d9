"""A desk's access-log summary reaches the broker's audit log (ADR 31), on a live stack
(nats-server, relay, SQLite): the summary the desk sends is recorded as a ``desk.summary``
event with the right counts and head MAC and without the analyst's name or the bulletin;
the same one sent again records nothing; a forged one, one sent as another agency and
one out of order are refused, each with a ``request.rejected`` event and no
``desk.summary``; the background sync sends one when it is due; and ``istmo desk log
summarise`` sends the next one."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from broker.runtime.stack import Stack
from clients.archive import Archive, archive_path
from clients.archive_keys import ArchiveSecret
from clients.cli import main as istmo
from clients.desk_commands import SdkLink
from clients.desk_people import DeskPeople
from clients.desk_summary import build_summary, log_id, pseudonym, sdk_sender, send_summaries
from clients.desk_web import DeskState, summarise_if_due
from clients.sdk import IstmoClient
from schemas.desk_summary import GENESIS_MAC, encode_summary, sign_summary
from tests.integration.stack_inproc import client, nats_url, running_stack

BID = "00000000-0000-4000-8000-00000000c0de"
NAME = "canary.ana"
KEY = bytes(range(32, 64))


def summaries(stack: Stack) -> list[dict[str, Any]]:
    assert stack.registry is not None
    return [json.loads(r.data) for r in stack.registry.audit_events(type_="desk.summary")]


def refusals(stack: Stack) -> list[str | None]:
    assert stack.registry is not None
    rows = stack.registry.audit_events(type_="request.rejected")
    return [r.reason for r in rows if r.subject == "api.desk-summary"]


async def ask(c: IstmoClient, agency: str, body: bytes) -> dict[str, Any]:
    reply = await c._nc.request(f"istmo.api.{agency}.desk-summary", body, timeout=10)
    got: dict[str, Any] = json.loads(reply.data)
    return got


def open_people(ks: Path) -> tuple[Archive, DeskPeople]:
    archive = Archive.open(
        archive_path(ks), "rc-drugs", lambda: ArchiveSecret("key-file", KEY), create=True
    )
    return archive, DeskPeople(archive.path, archive.subkey("desk-log"))


async def test_a_desk_summary_is_recorded_once_and_forgeries_are_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "istmo"
    async with running_stack(data_dir) as stack:
        ks = stack.settings.keys_dir / "rc-drugs.json"
        archive, people = open_people(ks)
        people.add(NAME, "reader", "correct horse battery")
        for action in ("sign-in", "open", "open", "print"):
            people.record(NAME, action, None if action == "sign-in" else BID)

        async with await client(stack, "rc-drugs") as rc, await client(stack, "gt-police") as gt:
            # 1. The desk's summary is recorded, with the counts and the head MAC.
            assert await send_summaries(people, sdk_sender(rc)) == 1
            (event,) = summaries(stack)
            me = pseudonym(people.log_key, NAME)
            want = ["-:account-added=1", f"{me}:open=2", f"{me}:print=1", f"{me}:sign-in=1"]
            assert event["counts"] == want
            assert (event["first_seq"], event["last_seq"]) == (1, 5)
            assert event["head_mac"] == people.mac_at(5)
            assert stack.registry is not None
            (row,) = stack.registry.audit_events(type_="desk.summary")
            assert (row.actor, row.subject) == (
                "rc-drugs",
                f"desk:rc-drugs:{log_id(people.log_key)}",
            )
            for secret in (NAME, "canary", BID):
                assert secret not in row.model_dump_json()

            # 2. The same summary again (its answer lost): answered, nothing recorded.
            draft = build_summary(
                people.rows_after(0, 100), key=people.log_key, after=0, prev_mac=GENESIS_MAC
            )
            assert draft is not None
            same = sign_summary(
                agency="rc-drugs",
                log=log_id(people.log_key),
                first_seq=draft.first_seq,
                last_seq=draft.last_seq,
                prev_mac=draft.prev_mac,
                head_mac=draft.head_mac,
                from_at=draft.from_at,
                to_at=draft.to_at,
                counts=draft.counts,
                issued_at=int(time.time()),
                key=rc.keystore.signing_key(),
            )
            body = encode_summary(same)
            assert (await ask(rc, "rc-drugs", body))["again"] is True
            assert len(summaries(stack)) == 1

            # 3. Forged (a count changed under the signature), sent as another agency, and
            #    the first once a second followed it: refused, audited, not recorded.
            forged = body.replace(b'"n":2', b'"n":3', 1)
            assert forged != body
            assert (await ask(rc, "rc-drugs", forged))["error"]["code"] == "signature_invalid"
            assert (await ask(gt, "gt-police", body))["error"]["code"] == "originator_mismatch"
            people.record(NAME, "sign-out", None)
            assert await send_summaries(people, sdk_sender(rc)) == 1
            assert (await ask(rc, "rc-drugs", body))["error"]["code"] == "summary_out_of_order"
            assert [s["last_seq"] for s in summaries(stack)] == [5, 6]
            assert refusals(stack) == [
                "signature_invalid",
                "originator_mismatch",
                "summary_out_of_order",
            ]
        # 4. The background sync's part: not due a minute after the last summary; due
        #    a day later, when it sends what waits.
        people.record(NAME, "open", BID)
        now = [time.time() + 60]
        link = SdkLink(ks, lambda: nats_url(stack), lambda: "")
        state = DeskState(
            archive, people, frozenset({"desk.test"}), link=link, clock=lambda: now[0]
        )
        assert await summarise_if_due(state) == 0
        now[0] += 86_400
        assert await summarise_if_due(state) == 1
        assert [s["last_seq"] for s in summaries(stack)] == [5, 6, 7]
        people.record(NAME, "print", BID)
        assert state.drafts is not None
        state.drafts.close()
        people.close()
        archive.close()

        # 5. From the command line: the entry since, summarised and sent.
        key_file = tmp_path / "archive.key"
        key_file.write_bytes(KEY)
        os.chmod(key_file, 0o600)
        argv = ["desk", "log", "summarise", "--data-dir", str(data_dir), "--as", "rc-drugs",
                "--archive-key-file", str(key_file), "--json"]  # fmt: skip
        assert await asyncio.to_thread(istmo, argv) == 0
        assert [(s["first_seq"], s["last_seq"]) for s in summaries(stack)][-1] == (8, 8)
