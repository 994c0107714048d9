"""Forwarding with consent through the real `istmo` command against `istmo up` (ADR 20),
as docs/conversations.md shows it: asked, granted, sent, received with where it came
from; a refusal moves nothing; the audit log verifies."""

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
    "--rel-to", "BZ", "--source-grade", "B2", "--handling", "H2",
]  # fmt: skip


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory):
    proc = UpProcess(tmp_path_factory.mktemp("forward-cli") / "istmo").start()
    yield proc
    assert proc.stop() == 0, proc.output


def ok(d: Path, *args: str) -> str:
    r = run_cli(*args, data_dir=d)
    assert r.returncode == 0, r.stderr
    return r.stdout


def receive(d: Path, agency: str) -> list[dict[str, object]]:
    out = ok(d, "receive", "--as", agency, "--json", "--count", "1", "--timeout", "10")
    return [json.loads(line) for line in out.splitlines()]


def test_forward_with_consent_from_the_command_line(up: UpProcess) -> None:
    d = up.data_dir
    bid = ok(d, "publish", "--as", "gt-police", *LABELS, "--title", "Boats", "--body", "b").strip()
    (got,) = receive(d, "bz-police")
    assert (got["id"], got["source_grade"]) == (bid, "B2")
    assert str(got["created_at"]).endswith("Z")  # ISO 8601, UTC

    asked = ok(d, "forward", "--as", "bz-police", bid, "--to", "jm-police",
               "--reason", "Jamaica tracks the same boats")  # fmt: skip
    assert "asked its originator" in asked
    listed = json.loads(ok(d, "forward", "requests", "--as", "gt-police", "--json"))
    [req] = listed
    assert (req["forwarder"], req["recipient"], req["state"]) == ("bz-police", "jm-police",
                                                                  "pending")  # fmt: skip
    assert "granted" in ok(d, "forward", "grant", "--as", "gt-police", req["request_id"])

    sent = json.loads(ok(d, "forward", "--as", "bz-police", bid, "--to", "jm-police", "--json"))
    assert (sent["state"], sent["consent"]) == ("forwarded", "originator")
    (fwd,) = receive(d, "jm-police")
    assert fwd["id"] == sent["forward_id"]
    assert fwd["originator"] == "bz-police"
    assert fwd["forwarded"] == {"bulletin_id": bid, "originator": "gt-police",
                                "forwarded_by": "bz-police", "consent": "originator"}  # fmt: skip
    assert fwd["source_grade"] == "B2"

    # A refusal: nothing moves, and the forwarder is told why.
    ok(d, "forward", "--as", "bz-police", bid, "--to", "tt-police")
    [req2] = json.loads(ok(d, "forward", "requests", "--as", "gt-police", "--json"))
    ok(d, "forward", "refuse", "--as", "gt-police", req2["request_id"], "--reason", "not there")
    refused = run_cli("forward", "--as", "bz-police", bid, "--to", "tt-police", data_dir=d)
    assert refused.returncode == 1
    assert "not there" in refused.stderr
    # Another agency cannot grant it.
    other = run_cli("forward", "grant", "--as", "bz-police", req2["request_id"], data_dir=d)
    assert other.returncode == 1

    verified = eventually_sync(
        lambda: run_cli("audit", "verify", "--trust-log-key-alone", data_dir=d),
        until=lambda r: r.returncode == 0 and "wait for the sequencer" not in r.stdout,
        what="istmo audit verify to pass",
        interval=0.3,
    )
    assert "verified" in verified.stdout
    trail = ok(d, "audit", "search", "--bulletin", bid)
    for kind in ("forward.requested", "forward.granted", "forward.refused", "bulletin.forwarded"):
        assert kind in trail
