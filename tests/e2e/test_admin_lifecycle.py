"""Suspension, reinstatement and key revocation on a running stack."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import nats.errors
import pytest

from broker.cli._common import operator_name
from broker.config import Settings
from broker.runtime.broker_user import connect_broker
from broker.runtime.status_requests import STATUS_REQUEST_SUBJECT, StatusAnswer
from clients.sdk import IstmoClient
from tests.stackproc import UpProcess, run_cli
from tests.waiting import eventually
from tests.warm import run_istmo


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory):
    proc = UpProcess(tmp_path_factory.mktemp("admin") / "istmo").start()
    yield proc
    assert proc.stop() == 0, proc.output


def publish_to_hn(d: Path, who: str = "gt-police"):
    return run_cli(
        "publish",
        "--as",
        who,
        "--topic",
        "border-incident",
        "--classification",
        "RESTRICTED",
        "--tlp",
        "AMBER",
        "--rel-to",
        "HN",
        "--title",
        "t",
        "--body",
        "b",
        "--json",
        data_dir=d,
    )


def test_suspended_agency_loses_its_connection_and_keeps_its_deliveries(up: UpProcess) -> None:
    d = up.data_dir
    held = publish_to_hn(d)
    assert held.returncode == 0, held.stderr
    held_id = json.loads(held.stdout)["id"]
    assert "hn-police" in json.loads(held.stdout)["routed"]

    async def watch() -> float:
        client = await IstmoClient.connect(d / "keys" / "hn-police.json", up.nats_url)
        nc = client._nc
        t0 = time.monotonic()
        r = await asyncio.to_thread(
            run_cli, "admin", "suspend", "hn-police", "--note", "test", data_dir=d
        )
        assert r.returncode == 0, r.stderr
        assert "the running stack applied it" in r.stdout
        await eventually(
            lambda: not nc.is_connected, what="the suspended agency to lose its connection"
        )
        lost = time.monotonic() - t0
        await nc.close()
        client._dedupe.close()
        return lost

    lost = asyncio.run(watch())
    print(f"\nsuspended connection lost its rights {lost:.2f} s after `istmo admin suspend` began")

    refused = run_cli("receive", "--as", "hn-police", "--count", "1", "--timeout", "2", data_dir=d)
    assert refused.returncode == 1
    assert "refused hn-police's credentials" in refused.stderr
    # One line: not preceded by each connection attempt's nats-py complaint.
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    during = publish_to_hn(d)
    assert during.returncode == 0, during.stderr
    out = json.loads(during.stdout)
    assert "hn-police" not in out["routed"]
    assert dict((x["agency"], x["policy_ids"]) for x in out["denied"])["hn-police"] == [
        "guard.agency-suspended"
    ]

    ok = run_cli("admin", "reinstate", "hn-police", data_dir=d)
    assert ok.returncode == 0, ok.stderr
    got = run_cli(
        "receive", "--as", "hn-police", "--count", "2", "--timeout", "5", "--json", data_dir=d
    )
    ids = [json.loads(line)["id"] for line in got.stdout.splitlines()]
    assert ids == [held_id]  # held while suspended, delivered now; nothing decided during it

    db = sqlite3.connect(d / "istmo.db", timeout=60)
    events = db.execute(
        "SELECT type, actor FROM audit_event WHERE subject='hn-police'"
        " AND type IN ('agency.suspended', 'agency.reinstated') ORDER BY seq"
    ).fetchall()
    # Made by the running stack at the command's request, in the operator's name.
    assert events == [
        ("agency.suspended", operator_name()),
        ("agency.reinstated", operator_name()),
    ]


def _status_events(d: Path) -> list[tuple[str, str]]:
    db = sqlite3.connect(d / "istmo.db", timeout=60)
    try:
        return db.execute(
            "SELECT type, subject FROM audit_event WHERE type LIKE 'agency.%' ORDER BY seq"
        ).fetchall()
    finally:
        db.close()


def test_a_status_request_the_stack_cannot_take_changes_nothing(up: UpProcess) -> None:
    """Asked over NATS as the broker's own user (as the command asks): every bad request
    gets an answer naming what is wrong, and neither a change nor an audit event."""
    d = up.data_dir
    before = _status_events(d)
    good = {"agency": "gt-police", "status": "suspended", "actor": "local:test", "note": ""}
    bad = [
        (b"not json", "JSON object"),
        (json.dumps({**good, "status": "frozen"}).encode(), "status is one of"),
        (json.dumps({**good, "agency": "GT.police"}).encode(), "invalid agency id"),
        (json.dumps({**good, "note": "x" * 201}).encode(), "at most 200"),
        (json.dumps({**good, "actor": ""}).encode(), "actor is a name"),
        (json.dumps({**good, "extra": 1}).encode(), "holds agency, status"),
        (b"{" + b" " * 4096 + b"}", "at most 2048 bytes"),
        (json.dumps({**good, "agency": "xx-nobody"}).encode(), "no such agency"),
        (json.dumps({**good, "status": "active"}).encode(), "already active"),
    ]

    async def ask_all() -> list[StatusAnswer]:
        settings = Settings.from_env(data_dir=d)
        nc = await connect_broker(settings, up.nats_url, reconnects=1)
        try:
            return [
                StatusAnswer.parse((await nc.request(STATUS_REQUEST_SUBJECT, b, timeout=30)).data)
                for b, _ in bad
            ]
        finally:
            await nc.close()

    for answer, (_, said) in zip(asyncio.run(ask_all()), bad, strict=True):
        assert answer.previous is None
        assert answer.error is not None
        assert said in answer.error
    assert _status_events(d) == before
    shown = run_cli("admin", "agency", "show", "gt-police", data_dir=d).stdout
    assert "(police, active)" in shown


def test_an_agency_cannot_ask_for_a_status_change(up: UpProcess) -> None:
    """An agency's NATS user reaches no one on the stack's control subjects."""
    d = up.data_dir
    before = _status_events(d)
    wanted = {"agency": "gt-police", "status": "revoked", "actor": "local:jm", "note": ""}

    async def ask() -> None:
        client = await IstmoClient.connect(d / "keys" / "jm-police.json", up.nats_url)
        try:
            with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
                await client._nc.request(
                    STATUS_REQUEST_SUBJECT, json.dumps(wanted).encode(), timeout=3
                )
        finally:
            await client.close()

    asyncio.run(ask())
    assert _status_events(d) == before


def test_admin_errors_are_one_line(up: UpProcess) -> None:
    for args, message in (
        (("admin", "suspend", "xx-nobody"), "no such agency"),
        (("admin", "reinstate", "gt-police"), "already active"),
        (("admin", "revoke-key", "gt-police", "sig-" + "0" * 32), "has no signing key"),
    ):
        r = run_cli(*args, data_dir=up.data_dir)
        assert r.returncode == 1
        assert message in r.stderr
        assert "Traceback" not in r.stderr


def test_revoked_key_refuses_new_bulletins(up: UpProcess) -> None:
    d = up.data_dir
    keystore = json.loads((d / "keys" / "sv-police.json").read_text())
    kid = keystore["signing_keys"][-1]["kid"]
    last = run_cli("admin", "revoke-key", "sv-police", kid, data_dir=d)
    assert last.returncode == 1
    assert "last valid signing key" in last.stderr
    assert "istmo admin agency reenrol AGENCY" in last.stderr
    r = run_cli("admin", "revoke-key", "sv-police", kid, "--force", data_dir=d)
    assert r.returncode == 0, r.stderr
    time.sleep(1.1)  # signed strictly after the revocation second
    refused = publish_to_hn(d, who="sv-police")
    assert refused.returncode == 1
    assert "revoked" in refused.stderr


def test_protected_keystore_from_the_command_line(up: UpProcess, tmp_path: Path) -> None:
    import os
    import subprocess

    from tests.stackproc import ISTMO

    d = up.data_dir
    secret = tmp_path / "pass"
    secret.write_text("a long enough passphrase\n")
    r = run_cli(
        "keys", "protect", "--as", "ni-foreign", "--passphrase-file", str(secret), data_dir=d
    )
    assert r.returncode == 0, r.stderr
    stored = json.loads((d / "keys" / "ni-foreign.json").read_text())
    assert set(stored) == {"v", "agency", "kdf", "aead", "nonce", "ct"}

    args = [
        ISTMO,
        "receive",
        "--as",
        "ni-foreign",
        "--count",
        "1",
        "--timeout",
        "1",
        "--data-dir",
        str(d),
    ]
    env = {k: v for k, v in os.environ.items() if k != "ISTMO_PASSPHRASE_FILE"}
    locked = subprocess.run(
        args, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, check=False
    )
    assert locked.returncode == 1
    assert "protected by a passphrase" in locked.stderr
    opened = subprocess.run(
        args,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**env, "ISTMO_PASSPHRASE_FILE": str(secret)},
        check=False,
    )
    assert opened.returncode == 1  # nothing to receive, but it connected
    assert "received 0 of 1" in opened.stderr
    # The same with --passphrase-file, the environment unset.
    flagged = subprocess.run(
        [*args, "--passphrase-file", str(secret)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env=env,
        check=False,
    )
    assert flagged.returncode == 1  # nothing to receive, but it connected
    assert "received 0 of 1" in flagged.stderr
    status = run_istmo(
        [ISTMO, "status", "--as", "ni-foreign", "--data-dir", str(d), "--passphrase-file",
         str(secret), "00000000-0000-4000-8000-000000000000"],
        env=env,
    )  # fmt: skip
    assert "no bulletin of yours" in status.stderr  # it connected and asked


def test_without_a_running_stack_the_command_writes_the_registry(tmp_path: Path) -> None:
    """No stack: the command records the change itself; a stack recorded as running whose
    NATS is gone (it crashed) does not hold the command up, and the change is kept."""
    d = tmp_path / "istmo"
    assert run_cli("admin", "agency", "list", data_dir=d).returncode == 0  # the demo directory
    r = run_cli("admin", "suspend", "gt-police", "--note", "no stack", data_dir=d)
    assert r.returncode == 0, r.stderr
    assert "gt-police: active -> suspended" in r.stdout
    assert "no running stack for this data directory" in r.stdout
    (d / "stack.json").write_text(json.dumps({"nats_url": "nats://127.0.0.1:1"}))
    r = run_cli("admin", "reinstate", "gt-police", data_dir=d)
    assert r.returncode == 1
    assert "gt-police: suspended -> active" in r.stdout
    assert "NATS is not reachable at nats://127.0.0.1:1" in r.stderr
    assert _status_events(d)[-2:] == [
        ("agency.suspended", "gt-police"),
        ("agency.reinstated", "gt-police"),
    ]
