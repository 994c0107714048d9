"""Recall, correction and expiry through the real `istmo` command against `istmo up`
(ADR 15), as docs/conversations.md shows them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.stackproc import UpProcess, run_cli
from tests.waiting import eventually_sync

LABELS = [
    "--topic", "drug-trafficking", "--classification", "RESTRICTED", "--tlp", "AMBER",
    "--rel-to", "BZ",
]  # fmt: skip
REASON = "wrong vessel named; corrected version follows"


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory):
    proc = UpProcess(tmp_path_factory.mktemp("recall-cli") / "istmo").start()
    yield proc
    assert proc.stop() == 0, proc.output


def publish(d: Path, title: str, *extra: str) -> str:
    r = run_cli("publish", "--as", "gt-police", *LABELS, "--title", title, "--body", "b", *extra,
                data_dir=d)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def receive(d: Path, agency: str, *extra: str) -> list[dict[str, object]]:
    r = run_cli("receive", "--as", agency, "--json", *extra, data_dir=d)
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_recall_correct_and_expire_from_the_command_line(up: UpProcess) -> None:
    d = up.data_dir
    first = publish(d, "Go-fast boat off Dangriga", "--expires-in", "2h")
    (got,) = receive(d, "bz-police")
    assert (got["kind"], got["id"], got["supersedes"]) == ("bulletin", first, None)
    assert str(got["expires_at"]).endswith("Z")  # ISO 8601, UTC

    fix = publish(d, "Go-fast boat off Placencia", "--supersedes", first)
    (corrected,) = receive(d, "bz-police")
    assert (corrected["id"], corrected["supersedes"]) == (fix, first)

    # Someone else's recall: refused, one line, nothing about the bulletin.
    other = run_cli("recall", "--as", "bz-police", first, "--reason", "mine now", data_dir=d)
    assert other.returncode == 1
    assert "no bulletin of yours" in other.stderr
    assert first not in other.stderr

    recall = run_cli("recall", "--as", "gt-police", first, "--reason", REASON, "--json",
                     data_dir=d)  # fmt: skip
    assert recall.returncode == 0, recall.stderr
    outcome = json.loads(recall.stdout)
    assert outcome["state"] == "done"
    assert outcome["notified"] == ["bz-police"]
    assert set(outcome["removed"]) == {"bz-justice", "bz-military"}

    (told,) = receive(d, "bz-police")
    assert (told["kind"], told["id"], told["reason"], told["had_it"]) == (
        "withdrawal",
        first,
        REASON,
        True,
    )
    # In words, too.
    shown = run_cli("recall", "--as", "gt-police", first, "--reason", REASON, data_dir=d)
    assert "removed before delivery (2): bz-justice, bz-military" in shown.stdout
    status = run_cli("status", "--as", "gt-police", first, data_dir=d)
    assert "WITHDRAWN at " in status.stdout
    assert f"corrected by: {fix}" in status.stdout
    # bz-military was offline: it gets the correction, never the withdrawn bulletin.
    later = receive(d, "bz-military", "--count", "5", "--timeout", "3")
    assert [(x["kind"], x["id"]) for x in later] == [("bulletin", fix)]

    verified = eventually_sync(
        lambda: run_cli("audit", "verify", "--trust-log-key-alone", data_dir=d),
        until=lambda r: r.returncode == 0 and "wait for the sequencer" not in r.stdout,
        what="istmo audit verify to pass",
        interval=0.3,
    )
    assert "verified" in verified.stdout
