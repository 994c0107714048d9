"""Replies and requests for information through the real `istmo` command against
`istmo up` (ADR 16), as docs/conversations.md shows them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.stackproc import UpProcess, run_cli
from tests.waiting import eventually_sync

# Tens of seconds of stack start-up: run among the first files (tests/conftest.py).
pytestmark = pytest.mark.slow

LABELS = [
    "--topic", "drug-trafficking", "--classification", "RESTRICTED", "--tlp", "AMBER",
]  # fmt: skip


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory):
    proc = UpProcess(
        tmp_path_factory.mktemp("conv-cli") / "istmo", env={"ISTMO_RFI_SWEEP_S": "1"}
    ).start()
    yield proc
    assert proc.stop() == 0, proc.output


def receive(d: Path, agency: str, *extra: str) -> list[dict[str, object]]:
    r = run_cli("receive", "--as", agency, "--json", *extra, data_dir=d)
    return [json.loads(line) for line in r.stdout.splitlines()]


def verified(d: Path) -> None:
    done = eventually_sync(
        lambda: run_cli("audit", "verify", "--trust-log-key-alone", data_dir=d),
        until=lambda r: r.returncode == 0 and "wait for the sequencer" not in r.stdout,
        what="istmo audit verify to pass",
        interval=0.3,
    )
    assert "verified" in done.stdout


def test_reply_and_rfi_from_the_command_line(up: UpProcess) -> None:
    d = up.data_dir
    # An RFI to the regional centre, answered by a reply.
    asked = run_cli("rfi", "--as", "gt-police", "--to", "rc-drugs", *LABELS, "--title",
                    "Who owns the boats?", "--body", "names?", "--due", "2h",
                    data_dir=d)  # fmt: skip
    assert asked.returncode == 0, asked.stderr
    rfi = asked.stdout.strip()
    (question,) = receive(d, "rc-drugs")
    assert (question["id"], question["in_reply_to"]) == (rfi, None)
    assert str(question["rfi_due"]).endswith("Z")

    answer = run_cli("reply", "--as", "rc-drugs", rfi, "--body", "Los Zetas", data_dir=d)
    assert answer.returncode == 0, answer.stderr
    (got,) = receive(d, "gt-police")
    assert (got["in_reply_to"], got["thread"], got["body"]) == (rfi, rfi, "Los Zetas")

    listed = run_cli("rfi", "list", "--as", "gt-police", "--json", data_dir=d)
    (entry,) = [r for r in json.loads(listed.stdout) if r["id"] == rfi]
    assert (entry["state"], entry["answered_by"]) == ("answered", ["rc-drugs"])

    # Refusals: weaker labels, a bulletin never received, an unknown id, a bad --due, an
    # addressee the policy refuses. Each one line, exit 1 (2 for a --due argparse refuses).
    weaker = run_cli("reply", "--as", "gt-police", answer.stdout.strip(), "--body", "x",
                     "--classification", "UNCLASSIFIED", data_dir=d)  # fmt: skip
    assert weaker.returncode == 1
    assert "guard.reply-classification" in weaker.stderr
    stranger = run_cli("reply", "--as", "jm-police", rfi, "--body", "x", data_dir=d)
    unknown = run_cli("reply", "--as", "jm-police", "6f1c1a8e-3c1e-4a55-9d55-6c0e0b7d2a10",
                      "--body", "x", data_dir=d)  # fmt: skip
    assert stranger.returncode == unknown.returncode == 1
    assert stranger.stderr == unknown.stderr
    assert "no bulletin you received or sent has this id" in stranger.stderr
    bad_due = run_cli("rfi", "--as", "gt-police", "--to", "rc-drugs", *LABELS, "--title", "t",
                      "--body", "b", "--due", "yesterday", data_dir=d)  # fmt: skip
    assert bad_due.returncode == 2
    assert "is not a deadline" in bad_due.stderr
    denied = run_cli("rfi", "--as", "gt-military", "--to", "rc-drugs", "--topic",
                     "drug-trafficking", "--classification", "SECRET", "--tlp", "AMBER",
                     "--title", "t", "--body", "b", data_dir=d)  # fmt: skip
    assert denied.returncode == 1
    assert "rc-drugs" in denied.stderr
    assert "guard.clearance" in denied.stderr

    # An RFI nobody answers in time: overdue in the list, an alarm, counted by health.
    late = run_cli("rfi", "--as", "gt-police", "--to", "rc-drugs", *LABELS, "--title", "soon",
                   "--body", "?", "--due", "2s", data_dir=d)  # fmt: skip
    assert late.returncode == 0, late.stderr
    shown = eventually_sync(
        lambda: run_cli("rfi", "list", "--as", "gt-police", data_dir=d),
        until=lambda r: "OVERDUE" in r.stdout,
        what="the RFI to be overdue",
        interval=0.5,
    )
    assert "ALARM: 1 of your requests for information is overdue" in shown.stderr
    health = run_cli("health", "--json", data_dir=d)
    (rfis,) = [c for c in json.loads(health.stdout)["checks"] if c["name"] == "rfis"]
    assert rfis["value"] == 1
    closed = run_cli("rfi", "close", late.stdout.strip(), "--as", "gt-police", data_dir=d)
    assert closed.returncode == 0, closed.stderr
    verified(d)
