"""``istmo up --nats-auth operator`` (ADR 0013) as users run it: enrolment, suspension and a
restart, with nats-server never reloaded.

The demo keystores carry their agency's NATS user JWT; an enrolled agency gets its own in
the enrolment answer. Every directory change is an account JWT pushed to nats-server, so
its ``/varz`` ``config_load_time`` never moves.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path

import pytest

from broker.config import Settings
from broker.runtime.claim import nats_auth_of
from clients.keystore import load_keystore
from clients.sdk import IstmoClient
from schemas.errors import ConfigError
from tests.stackproc import ISTMO, UpProcess, publish_args, run_cli
from tests.waiting import eventually
from tests.warm import run_istmo

AGENCY = "gt-customs"


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory):
    proc = UpProcess(
        tmp_path_factory.mktemp("operator") / "istmo", extra=("--nats-auth", "operator")
    ).start()
    yield proc
    assert proc.stop() == 0, proc.output


def load_time(up: UpProcess) -> str:
    url = f"http://127.0.0.1:{up.ports['http']}/varz"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(json.loads(resp.read())["config_load_time"])


def receive(d: Path, who: str, count: int = 1) -> list[str]:
    r = run_cli(
        "receive", "--as", who, "--count", str(count), "--timeout", "15", "--json", data_dir=d
    )
    assert r.returncode == 0, r.stderr
    return [json.loads(line)["id"] for line in r.stdout.splitlines()]


def publish(d: Path, who: str, rel_to: str) -> dict[str, object]:
    r = run_cli(
        "publish", "--as", who, *publish_args("t", "b", rel_to=rel_to), "--json", data_dir=d
    )
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def test_demo_agencies_hold_user_jwts_and_exchange_bulletins(up: UpProcess) -> None:
    d = up.data_dir
    keystore = json.loads((d / "keys" / "hn-police.json").read_text())
    assert keystore["nats_jwt"].startswith("eyJ")

    sent = publish(d, "gt-police", "HN")

    assert "hn-police" in sent["routed"], sent
    assert receive(d, "hn-police") == [sent["id"]]
    assert "operator mode" in up.output


def test_an_enrolled_agency_connects_at_once_without_a_reload(
    up: UpProcess, tmp_path: Path
) -> None:
    d = up.data_dir
    loaded = load_time(up)
    added = run_cli(
        "admin", "agency", "add", AGENCY, "--name", "Guatemala: Customs", "--state", "GT",
        "--sector", "police", "--clearance", "CONFIDENTIAL", "--topic", "drug-trafficking",
        "--json", data_dir=d,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    grant = json.loads(added.stdout)
    keystore = tmp_path / f"{AGENCY}.json"
    enrolled = run_istmo(
        [ISTMO, "enroll", "--broker", grant["broker"], "--token", grant["token"],
         "--out", str(keystore), "--no-passphrase"],
        cwd=tmp_path,
    )  # fmt: skip
    assert enrolled.returncode == 0, enrolled.stderr
    ks = load_keystore(keystore, None)
    assert ks.nats_jwt is not None

    async def connect() -> None:
        # At the first try: enrolment answers once the account is pushed (ADR 0013; how
        # soon is the bench's to measure, item 9).
        client = await IstmoClient.connect(keystore, up.nats_url)
        await client.close()

    asyncio.run(connect())
    sent = publish(d, "gt-police", "GT")
    assert AGENCY in sent["routed"], sent
    assert receive(d, str(keystore)) == [sent["id"]]
    assert load_time(up) == loaded  # pushed, never reloaded


def test_a_suspended_agency_is_cut_off_and_readmitted(up: UpProcess) -> None:
    d = up.data_dir
    loaded = load_time(up)

    async def watch() -> float:
        client = await IstmoClient.connect(d / "keys" / "sv-police.json", up.nats_url)
        nc = client._nc
        t0 = time.monotonic()
        r = await asyncio.to_thread(run_cli, "admin", "suspend", "sv-police", data_dir=d)
        assert r.returncode == 0, r.stderr
        await eventually(lambda: not nc.is_connected, what="sv-police to lose its connection")
        lost = time.monotonic() - t0
        await nc.close()
        client._dedupe.close()
        return lost

    lost = asyncio.run(watch())
    print(f"\nsuspended connection closed {lost:.2f} s after `istmo admin suspend` began")

    refused = run_cli("receive", "--as", "sv-police", "--count", "1", "--timeout", "2", data_dir=d)
    assert refused.returncode == 1
    assert "refused sv-police's credentials" in refused.stderr
    ok = run_cli("admin", "reinstate", "sv-police", data_dir=d)
    assert ok.returncode == 0, ok.stderr
    sent = publish(d, "gt-police", "SV")
    assert receive(d, "sv-police") == [sent["id"]]
    assert load_time(up) == loaded


def test_a_restarted_stack_finds_its_accounts_and_keeps_its_mode(up: UpProcess) -> None:
    d = up.data_dir
    assert up.stop() == 0, up.output
    # Without --nats-auth: the data directory keeps the mode it was first run in.
    again = UpProcess(d, ports=dict(up.ports)).start()
    try:
        assert "0 pushed" in again.output  # every account was still in the resolver
        sent = publish(d, "gt-police", "HN")
        assert receive(d, "hn-police") == [sent["id"]]
    finally:
        assert again.stop() == 0, again.output
    with pytest.raises(ConfigError, match="cannot switch to config mode"):
        nats_auth_of(Settings(data_dir=d, nats_auth="config"))
    up.start()  # for whatever runs after, as the fixture left it


def test_an_old_data_directory_stays_in_config_mode(tmp_path: Path) -> None:
    (tmp_path / "nats").mkdir()  # a JetStream store from before the mode was recorded
    assert nats_auth_of(Settings(data_dir=tmp_path)) == "config"
    with pytest.raises(ConfigError, match="cannot switch to operator mode"):
        nats_auth_of(Settings(data_dir=tmp_path, nats_auth="operator"))
    assert nats_auth_of(Settings(data_dir=tmp_path / "new", nats_auth="operator")) == "operator"
