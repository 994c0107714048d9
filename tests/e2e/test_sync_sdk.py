"""The sync facade, as a script would use it, against a running `istmo up`."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients import Classification, Handling, Labels, Tlp
from clients.sdk import ReceivedBulletin
from clients.sync import Istmo
from schemas.errors import BusUnavailable, ConfigError, PolicyDenied
from tests.stackproc import UpProcess, free_port
from tests.waiting import eventually_sync


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory):
    proc = UpProcess(tmp_path_factory.mktemp("sync") / "istmo").start()
    yield proc
    assert proc.stop() == 0, proc.output


def keystore(up: UpProcess, agency: str) -> Path:
    return up.data_dir / "keys" / f"{agency}.json"


def test_publish_receive_receipts_from_a_script(up: UpProcess) -> None:
    labels = Labels(
        topic="human-trafficking",
        classification=Classification.CONFIDENTIAL,
        tlp=Tlp.AMBER,
        rel_to=("CARICOM",),
        handling=(Handling.H1,),
        judicial_consent=("tt-justice",),
    )
    with Istmo(keystore(up, "jm-police"), up.nats_url) as jm:
        result = jm.publish(title="Route through Kingston", text="sync canary", labels=labels)
    assert result.state == "accepted"
    assert "tt-justice" in result.routed
    assert not any(r.startswith("gt-") for r in result.routed)  # SICA-only states: no
    # H1: other justice ministries need the originator's consent for judicial use.
    assert dict(result.denied)["gy-justice"] == ("guard.h1-judicial-use",)

    got: list[ReceivedBulletin] = []
    with Istmo(keystore(up, "tt-justice"), up.nats_url) as tt:
        assert tt.receive(got.append, count=1, timeout=10) == 1
    assert got[0].id == result.bulletin_id
    assert got[0].body == "sync canary"
    assert got[0].caveats == ("no judicial use without the originator's consent",)

    with Istmo(keystore(up, "jm-police"), up.nats_url) as jm:
        report = eventually_sync(
            lambda: dict(jm.receipts(result.bulletin_id).recipients),
            until=lambda r: r.get("tt-justice"),
            what="tt-justice's receipt",
            interval=0.1,
        )
    assert report["tt-justice"] is not None
    assert all(report[a] is None for a in report if a != "tt-justice")


def test_nobody_to_send_to_is_a_clear_error(up: UpProcess) -> None:
    # TLP:RED with nobody named: the policy permits no recipient.
    labels = Labels(
        topic="migration", classification=Classification.SECRET, tlp=Tlp.RED, rel_to=("BZ",)
    )
    with Istmo(keystore(up, "bz-foreign"), up.nats_url) as bz, pytest.raises(PolicyDenied):
        bz.publish(title="t", text="b", labels=labels)


def test_connection_errors_are_named(up: UpProcess, tmp_path: Path) -> None:
    port = free_port()
    with pytest.raises(BusUnavailable, match=f"broker not running at nats://127.0.0.1:{port}"):
        Istmo(keystore(up, "gt-police"), f"nats://127.0.0.1:{port}")
    loose = tmp_path / "loose.json"
    loose.write_bytes(keystore(up, "gt-police").read_bytes())
    loose.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        Istmo(loose, up.nats_url)
