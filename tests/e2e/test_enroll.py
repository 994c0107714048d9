"""Enrolment on a running `istmo up`, as users do it: the administrator adds an agency
with `istmo admin agency add`, the agency runs `istmo enroll` against the HTTP API, and
at once (nats-server reloaded, not restarted) it receives a bulletin published to it and
publishes one of its own, with `--as KEYSTORE_PATH`."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest

from clients.keystore import load_keystore
from tests.stackproc import ISTMO, UpProcess, run_cli
from tests.waiting import eventually, eventually_sync
from tests.warm import run_istmo

AGENCY = "gt-customs"
PASSPHRASE = "customs passphrase, long enough"


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory):
    proc = UpProcess(tmp_path_factory.mktemp("enrol") / "istmo").start()
    yield proc
    assert proc.stop() == 0, proc.output


def enroll(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`istmo enroll ARGS` on the agency's machine: no data directory, no terminal."""
    return run_istmo([ISTMO, "enroll", *args], cwd=cwd)


def publish(d: Path, who: str, topic: str) -> dict[str, object]:
    r = run_cli(
        "publish",
        "--as",
        who,
        "--topic",
        topic,
        "--classification",
        "RESTRICTED",
        "--tlp",
        "AMBER",
        "--rel-to",
        "GT",
        "--title",
        f"from {who}",
        "--body",
        "seen at the border",
        "--json",
        data_dir=d,
    )
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def receive(d: Path, who: str) -> list[dict[str, object]]:
    r = run_cli("receive", "--as", who, "--count", "1", "--timeout", "15", "--json", data_dir=d)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_an_agency_added_by_the_admin_enrols_and_works_at_once(
    up: UpProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = up.data_dir
    # 1. The administrator adds the agency; the token is printed once.
    added = run_cli(
        "admin",
        "agency",
        "add",
        AGENCY,
        "--name",
        "Guatemala: Customs",
        "--state",
        "GT",
        "--sector",
        "police",
        "--clearance",
        "CONFIDENTIAL",
        "--topic",
        "drug-trafficking",
        "--topic",
        "border-incident",
        "--token-ttl",
        "2h",
        "--json",
        data_dir=d,
    )
    assert added.returncode == 0, added.stderr
    grant = json.loads(added.stdout)
    assert grant["applied"] is True
    token, kid, broker = grant["token"], grant["directory_kid"], grant["broker"]
    assert broker == f"http://127.0.0.1:{up.ports['api']}"

    # 2. On its own machine, the agency enrols: keys made there, keystore protected.
    machine = tmp_path / "agency"
    machine.mkdir()
    (machine / "token").write_text(token + "\n")
    (machine / "pass").write_text(PASSPHRASE + "\n")
    keystore = machine / "gt-customs.json"
    r = enroll(
        "--broker",
        broker,
        "--token-file",
        "token",
        "--directory-kid",
        kid,
        "--out",
        str(keystore),
        "--passphrase-file",
        "pass",
        cwd=machine,
    )
    assert r.returncode == 0, r.stderr
    assert f"enrolled as {AGENCY}" in r.stdout
    assert "checked: the signed directory lists your keys" in r.stdout
    assert stat.S_IMODE(keystore.stat().st_mode) == 0o600
    stored = json.loads(keystore.read_text())
    assert set(stored) == {"v", "agency", "kdf", "aead", "nonce", "ct"}  # protected
    ks = load_keystore(keystore, PASSPHRASE)
    assert ks.nats_url == up.nats_url
    assert ks.directory_key.kid == kid

    # 3. The same token again: refused; nothing written.
    again = enroll(
        "--broker", broker, "--token", token, "--out", "second.json", "--no-passphrase", cwd=machine
    )
    assert again.returncode == 1
    assert "was used already" in again.stderr
    assert not (machine / "second.json").exists()

    # 4. It works at once: it receives a bulletin published to it...
    monkeypatch.setenv("ISTMO_PASSPHRASE_FILE", str(machine / "pass"))
    sent = publish(d, "gt-police", "drug-trafficking")
    assert AGENCY in sent["routed"], sent
    got = receive(d, str(keystore))
    assert [b["id"] for b in got] == [sent["id"]]
    # ...and publishes one, which gt-police receives and verifies.
    mine = publish(d, str(keystore), "border-incident")
    assert "gt-police" in mine["routed"], mine
    theirs = receive(d, "gt-police")
    assert [(b["id"], b["originator"]) for b in theirs] == [(mine["id"], AGENCY)]

    # 5. nats-server was reloaded, never restarted.
    assert up.output.count("NATS      nats://") == 1
    assert up.proc is not None
    assert up.proc.poll() is None

    # 6. Audited; and no secret in the stack's log or its database.
    db = sqlite3.connect(d / "istmo.db", timeout=60)
    kinds = [
        row[0]
        for row in db.execute(
            "SELECT type FROM audit_event WHERE subject = ? ORDER BY seq", (AGENCY,)
        )
    ]
    db.close()
    assert kinds[:6] == [
        "agency.enrolled",  # created
        "agency.enrolled",  # token issued
        "agency.enrolled",  # keys registered
        "key.registered",
        "key.registered",
        "key.registered",
    ]
    stored_bytes = b"".join(p.read_bytes() for p in d.glob("istmo.db*") if p.is_file())
    secrets = [token, token.rsplit(".", 1)[1], ks.signing_keys[0].private, ks.nats_seed]
    secrets.append(ks.encryption_keys[0].private)
    for secret in secrets:
        assert secret not in up.output
        assert secret.encode() not in stored_bytes


def test_a_forged_token_writes_no_keystore(up: UpProcess, tmp_path: Path) -> None:
    broker = f"http://127.0.0.1:{up.ports['api']}"
    forged = "istmo-enrol." + "ab" * 12 + "." + "x" * 43
    r = enroll(
        "--broker", broker, "--token", forged, "--out", "ks.json", "--no-passphrase", cwd=tmp_path
    )
    assert r.returncode == 1
    assert "the enrolment token is not valid" in r.stderr
    assert "Traceback" not in r.stderr
    assert os.listdir(tmp_path) == []


def test_enroll_refuses_to_write_an_unprotected_keystore_by_default(
    up: UpProcess, tmp_path: Path
) -> None:
    broker = f"http://127.0.0.1:{up.ports['api']}"
    token = "istmo-enrol." + "cd" * 12 + "." + "y" * 43
    r = enroll("--broker", broker, "--token", token, "--out", "ks.json", cwd=tmp_path)
    assert r.returncode == 1
    assert "needs a passphrase" in r.stderr
    (tmp_path / "taken.json").write_text("{}")
    r = enroll(
        "--broker", broker, "--token", token, "--out", "taken.json", "--no-passphrase", cwd=tmp_path
    )
    assert r.returncode == 1
    assert "never overwritten" in r.stderr
    assert (tmp_path / "taken.json").read_text() == "{}"


def test_over_http_an_admin_adds_and_suspends_an_agency_on_the_live_stack(
    up: UpProcess, tmp_path: Path
) -> None:
    """The administrators' endpoints on the running stack: create, enrol with the SDK,
    connect to NATS, suspend (its connection drops at once), reinstate."""
    import asyncio
    import time

    from clients.enroll import enroll as sdk_enroll
    from clients.enroll import write_new_keystore
    from clients.oauth import IstmoHttp
    from clients.sdk import IstmoClient

    base = f"http://127.0.0.1:{up.ports['api']}"
    admin_ks = load_keystore(up.data_dir / "keys" / "admin.json")
    agency = "sv-customs"

    async def scenario() -> float:
        async with IstmoHttp(base, admin_ks) as api:
            created = await api.request(
                "POST",
                "/v1/agencies",
                json={
                    "id": agency,
                    "name": "El Salvador: Customs",
                    "sector": "police",
                    "clearance": "RESTRICTED",
                    "state": "SV",
                    "topics": ["border-incident"],
                },
            )
            assert created.status_code == 201, created.text  # IstmoHttp.post wants a 200
            made = created.json()
            ks = await sdk_enroll(base, made["token"], directory_kid=made["directory_kid"])
            path = tmp_path / "sv-customs.json"
            write_new_keystore(path, ks, None)
            client = await IstmoClient.connect(path, str(ks.nats_url))
            nc = client._nc
            assert nc.is_connected
            t0 = time.monotonic()
            answer = await api.post(f"/v1/agencies/{agency}/suspend", json={"note": "test"})
            assert answer == {
                "agency": agency,
                "previous": "active",
                "status": "suspended",
                "applied": True,
            }
            await eventually(
                lambda: not nc.is_connected, what="the suspended agency to lose its connection"
            )
            lost = time.monotonic() - t0
            await client.close()
            back = await api.post(f"/v1/agencies/{agency}/reinstate", json={})
            assert back["applied"] is True
            again = await IstmoClient.connect(path, str(ks.nats_url))
            await again.close()
            return lost

    lost = asyncio.run(scenario())
    print(f"\nsuspended connection closed {lost:.2f} s after the API call")
    assert up.output.count("NATS      nats://") == 1  # reloaded, never restarted


def test_an_agency_that_lost_its_keys_is_reenrolled(up: UpProcess, tmp_path: Path) -> None:
    """hn-justice's keystore leaked: the administrator withdraws every key of it and
    issues a token; with it the agency enrols new keys and publishes again."""
    d = up.data_dir
    who = "hn-justice"
    before = json.loads(run_cli("admin", "agency", "show", who, "--json", data_dir=d).stdout)
    (old_kid,) = [k["kid"] for k in before["signing_keys"] if k["revoked_at"] is None]
    # A token for an enrolled agency is refused, and names the way out.
    plain = run_cli("admin", "agency", "token", who, data_dir=d)
    assert plain.returncode == 1
    assert "istmo admin agency reenrol AGENCY" in plain.stderr

    r = run_cli("admin", "agency", "reenrol", who, "--json", data_dir=d)
    assert r.returncode == 0, r.stderr
    grant = json.loads(r.stdout)
    assert grant["applied"] is True
    withdrawn = json.loads(run_cli("admin", "agency", "show", who, "--json", data_dir=d).stdout)
    assert [k["revoked_at"] is not None for k in withdrawn["signing_keys"]] == [True]
    assert [k["current"] for k in withdrawn["encryption_keys"]] == [False]
    assert withdrawn["nats_user"] is None
    # The old keystore no longer gets in: its NATS user is gone.
    old = run_cli("receive", "--as", who, "--count", "1", "--timeout", "5", data_dir=d)
    assert old.returncode == 1
    assert "refused" in old.stderr

    machine = tmp_path / "hn-justice"
    machine.mkdir()
    (machine / "token").write_text(grant["token"] + "\n")
    new = machine / "hn-justice.json"
    r = enroll(
        "--broker", grant["broker"], "--token-file", "token", "--directory-kid",
        grant["directory_kid"], "--out", str(new), "--no-passphrase", cwd=machine,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    sent = publish(d, str(new), "border-incident")
    assert sent["state"] == "accepted"
    after = json.loads(run_cli("admin", "agency", "show", who, "--json", data_dir=d).stdout)
    valid = [k["kid"] for k in after["signing_keys"] if k["revoked_at"] is None]
    assert len(valid) == 1
    assert valid != [old_kid]
    assert after["nats_user"] is not None

    # Every withdrawn key is an audit event, the encryption key and NATS user named so.
    def withdrawn_uses() -> list[str]:  # once the sequencer has logged them
        found = run_cli(
            "audit", "search", "--type", "key.revoked", "--agency", who, "--json", data_dir=d
        )
        assert found.returncode == 0, found.stderr
        entries = json.loads(found.stdout)["entries"]
        return sorted(e["entry"]["data"].get("use", "signing") for e in entries)

    uses = eventually_sync(
        withdrawn_uses, what="the key.revoked events", until=lambda u: len(u) >= 3
    )
    assert uses == ["encryption", "nats", "signing"]
