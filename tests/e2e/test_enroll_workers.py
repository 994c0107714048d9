"""The production shape: the API (``istmo up --no-relay``) and relays in processes of
their own (``istmo relay``, as ``istmo-relay@.service`` runs them). A directory change
made over HTTP on the API must reach every relay, or an agency enrolled there could not
publish through them (and a suspended one would still receive)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.faults.harness import RelayProcess, Target
from tests.stackproc import ISTMO, UpProcess, publish_args, run_cli
from tests.warm import run_istmo

pytestmark = pytest.mark.slow

AGENCY = "gt-customs"


def test_an_agency_enrolled_over_http_publishes_through_a_separate_relay(
    tmp_path: Path,
) -> None:
    up = UpProcess(tmp_path / "istmo", extra=("--no-relay",)).start()
    relay = RelayProcess(Target.of_up(up), tmp_path / "relay.log")
    try:
        relay.start()
        added = run_cli(
            "admin", "agency", "add", AGENCY, "--name", "Guatemala: Customs", "--state", "GT",
            "--sector", "police", "--clearance", "CONFIDENTIAL", "--topic", "drug-trafficking",
            "--json", data_dir=up.data_dir,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        grant = json.loads(added.stdout)
        machine = tmp_path / "agency"
        machine.mkdir()
        keystore = machine / f"{AGENCY}.json"
        enrolled = run_istmo(
            [
                ISTMO, "enroll", "--broker", grant["broker"], "--token", grant["token"],
                "--directory-kid", grant["directory_kid"], "--out", str(keystore),
                "--no-passphrase",
            ],
            cwd=machine,
        )  # fmt: skip
        assert enrolled.returncode == 0, enrolled.stderr
        # Its keys were registered over HTTP by the API; only the relay decides.
        sent = run_cli(
            "publish", "--as", str(keystore), *publish_args("from customs", "x", rel_to="GT"),
            "--json", data_dir=up.data_dir,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr + relay.log.read_text()[-2000:]
        result = json.loads(sent.stdout)
        assert result["state"] == "accepted", result
        assert "gt-police" in result["routed"], result
    finally:
        relay.kill()
        up.stop()
