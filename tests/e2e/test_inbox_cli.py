"""`istmo inbox` against `istmo up`: received into the encrypted archive with receipts,
read back, nothing in clear on disk, the wrong secret refused before anything is taken."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.stackproc import UpProcess, publish_args, run_cli

# Tens of seconds of stack start-up: run among the first files (tests/conftest.py).
pytestmark = pytest.mark.slow

TITLE = "CANARY-title-a81c Go-fast boat sighted"
BODY = "CANARY-body-d20e Two go-fast boats left Puerto Barrios at 03:10."


@pytest.fixture
def up(tmp_path: Path):
    proc = UpProcess(tmp_path / "istmo").start()
    yield proc
    assert proc.stop() == 0, proc.output


def test_sync_list_search_show_and_no_plaintext(up: UpProcess, tmp_path: Path) -> None:
    d = up.data_dir
    attached = tmp_path / "CANARY-name-6f0b.txt"
    attached.write_text("ledger\n")
    pub = run_cli(
        "publish", "--as", "gt-police", *publish_args(TITLE, BODY), "--attach", str(attached),
        data_dir=d,
    )  # fmt: skip
    assert pub.returncode == 0, pub.stderr
    bid = pub.stdout.strip()
    passphrase = tmp_path / "pass.txt"
    passphrase.write_text("the desk's passphrase\n")
    inbox = ["--as", "sv-police", "--passphrase-file", str(passphrase)]

    synced = run_cli(
        "inbox", "sync", *inbox, "--count", "1", "--timeout", "20", "--no-push", data_dir=d
    )  # fmt: skip
    assert synced.returncode == 0, synced.stderr
    assert "archived 1 new bulletin;" in synced.stdout
    # The receipt went out as `istmo receive` sends it.
    receipts = run_cli("receipts", "--as", "gt-police", bid, "--json", data_dir=d)
    got = {r["agency"]: r["received_at"] for r in json.loads(receipts.stdout)["recipients"]}
    assert got["sv-police"] is not None

    listed = run_cli("inbox", "list", *inbox, "--unread", "--json", data_dir=d)
    assert listed.returncode == 0, listed.stderr
    (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (row["id"], row["originator"], row["tlp"]) == (bid, "gt-police", "AMBER")
    found = run_cli("inbox", "search", *inbox, "puerto", "BARRIOS", data_dir=d)
    assert found.returncode == 0, found.stderr
    assert bid in found.stdout
    assert run_cli("inbox", "search", *inbox, "submarine", data_dir=d).returncode == 1
    shown = run_cli("inbox", "show", *inbox, bid, data_dir=d)
    assert shown.returncode == 0, shown.stderr
    assert BODY in shown.stdout
    assert "attached: CANARY-name-6f0b.txt" in shown.stdout
    flagged = run_cli("inbox", "flag", *inbox, bid, "follow-up", data_dir=d)
    assert flagged.returncode == 0, flagged.stderr
    listed = run_cli("inbox", "list", *inbox, "--flag", "follow-up", "--json", data_dir=d)
    assert json.loads(listed.stdout)["read"] is True

    archive = d / "keys" / "sv-police.archive.sqlite"
    assert archive.stat().st_mode & 0o077 == 0
    needles = [b"CANARY", b"Puerto Barrios", b"6f0b", b"go-fast"]
    hits = [
        f"{f.name}: {n!r}"
        for f in archive.parent.glob("sv-police.archive.sqlite*")
        for n in needles
        if n in f.read_bytes()
    ]
    assert hits == []


def test_wrong_passphrase_refused_before_receiving(up: UpProcess, tmp_path: Path) -> None:
    d = up.data_dir
    right, wrong = tmp_path / "right.txt", tmp_path / "wrong.txt"
    right.write_text("right one\n")
    wrong.write_text("wrong one\n")
    made = run_cli(
        "inbox", "sync", "--as", "hn-police", "--passphrase-file", str(right),
        "--timeout", "1", data_dir=d,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    pub = run_cli("publish", "--as", "gt-police", *publish_args("t", "b"), data_dir=d)
    assert pub.returncode == 0, pub.stderr

    refused = run_cli(
        "inbox", "sync", "--as", "hn-police", "--passphrase-file", str(wrong),
        "--count", "1", "--timeout", "5", data_dir=d,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "wrong passphrase for this archive" in refused.stderr
    assert "hint: give the passphrase or key file the archive was made with" in refused.stderr
    # Nothing was taken from the queue: the right passphrase still gets it.
    synced = run_cli(
        "inbox", "sync", "--as", "hn-police", "--passphrase-file", str(right),
        "--count", "1", "--timeout", "20", data_dir=d,
    )  # fmt: skip
    assert synced.returncode == 0, synced.stderr
    assert "archived 1 new bulletin;" in synced.stdout
    key = tmp_path / "archive.key"
    key.write_bytes(bytes(range(40)))
    key.chmod(0o600)
    wrong_kind = run_cli(
        "inbox", "list", "--as", "hn-police", "--archive-key-file", str(key), data_dir=d
    )
    assert wrong_kind.returncode == 1
    assert "protected by a passphrase, not a key file" in wrong_kind.stderr


def test_publish_stix_bundle_end_to_end(up: UpProcess, tmp_path: Path) -> None:
    d = up.data_dir
    green = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"
    amber = "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421"
    report = {
        "type": "report", "spec_version": "2.1",
        "id": "report--7a1e2c3b-0a9f-4e8d-b7c6-a5f4e3d2c1b0",
        "created": "2026-12-05T10:00:00.000Z", "modified": "2026-12-05T10:00:00.000Z",
        "name": "Go-fast boats, STIX", "published": "2026-12-05T10:00:00.000Z",
        "object_refs": ["indicator--0b2f4e1c-1111-4a2b-8c3d-000000000001"],
        "object_marking_refs": [amber],
    }  # fmt: skip
    indicator = {
        "type": "indicator", "spec_version": "2.1",
        "id": "indicator--0b2f4e1c-1111-4a2b-8c3d-000000000001",
        "created": "2026-12-05T10:00:00.000Z", "modified": "2026-12-05T10:00:00.000Z",
        "pattern": "[ipv4-addr:value = '198.51.100.7']", "pattern_type": "stix",
        "valid_from": "2026-12-05T10:00:00Z", "object_marking_refs": [green],
    }  # fmt: skip
    bundle = {"type": "bundle", "id": "bundle--5d1e2c3b-0a9f-4e8d-b7c6-a5f4e3d2c1b0"}
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps({**bundle, "objects": [report, indicator]}))
    labels = ["--topic", "drug-trafficking", "--classification", "RESTRICTED", "--rel-to", "SICA"]
    pub = run_cli("publish", "--as", "gt-police", *labels, "--stix", str(path), data_dir=d)
    assert pub.returncode == 0, pub.stderr
    bid = pub.stdout.strip()
    got = run_cli(
        "receive", "--as", "bz-police", "--count", "1", "--timeout", "20", "--json", data_dir=d
    )
    assert got.returncode == 0, got.stderr
    shown = json.loads(got.stdout)
    assert (shown["id"], shown["title"], shown["labels"]["tlp"]) == (
        bid, "Go-fast boats, STIX", "AMBER",
    )  # fmt: skip
    assert json.loads(shown["body"])["objects"][1]["pattern"] == indicator["pattern"]

    # A custom marking is refused before anything is sent.
    custom = "marking-definition--1e9a1c3e-5e1c-4b5e-9d3e-2a1f0c9b8a77"
    path.write_text(
        json.dumps({**bundle, "objects": [{**indicator, "object_marking_refs": [custom]}]})
    )
    refused = run_cli(
        "publish", "--as", "gt-police", *labels, "--stix", str(path), "--title", "t", data_dir=d
    )
    assert refused.returncode == 1
    assert f"marking {custom} is not TLP: Istmo cannot map it" in refused.stderr
    # So is a --tlp the markings contradict.
    path.write_text(json.dumps({**bundle, "objects": [report]}))
    refused = run_cli(
        "publish", "--as", "gt-police", *labels, "--tlp", "GREEN", "--stix", str(path), data_dir=d
    )
    assert refused.returncode == 1
    assert "--tlp GREEN contradicts the bundle's markings (TLP:AMBER)" in refused.stderr
    nothing = run_cli("receive", "--as", "bz-police", "--count", "1", "--timeout", "2", data_dir=d)
    assert nothing.returncode == 1
