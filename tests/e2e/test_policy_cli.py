"""`istmo policy` and `istmo preview`, as an administrator and a publisher use them."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import cedarpy
import pytest

from broker.config import default_policy_dir
from tests.stackproc import UpProcess, run_cli

SICA_DRUGS = {
    "originator": "gt-police",
    "labels": {
        "topic": "drug-trafficking",
        "classification": "RESTRICTED",
        "tlp": "AMBER",
        "rel_to": ["SICA"],
    },
}
NO_CENTRES = """
@id("sica.test-no-regional-centres")
@reason("test: SICA drug bulletins go to no regional centre")
forbid (principal, action == Istmo::Action::"receive", resource)
when
{
  principal.sector == "regional-centre" &&
  resource.releasableTo.contains(Istmo::Jurisdiction::"SICA")
};
"""


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory):
    proc = UpProcess(tmp_path_factory.mktemp("policy") / "istmo").start()
    yield proc
    assert proc.stop() == 0, proc.output


def candidate(tmp: Path, extra: str = NO_CENTRES, *, formatted: bool = True) -> Path:
    root = tmp / "candidate"
    shutil.copytree(default_policy_dir(), root, dirs_exist_ok=True)
    sica = root / "overrides" / "sica.cedar"
    text = sica.read_text() + "\n" + extra
    sica.write_text(cedarpy.format_policies(text) if formatted else text)
    return root


def test_check_names_the_version_and_the_problem(up: UpProcess, tmp_path: Path) -> None:
    ok = run_cli("policy", "check", data_dir=up.data_dir)
    assert ok.returncode == 0, ok.stderr
    assert "is valid" in ok.stdout
    assert "prefilter: clearance, releasability" in ok.stdout  # the shipped set proves both
    broken = candidate(
        tmp_path,
        extra='@id("sica.x")\nforbid (principal, action, resource) when {',
        formatted=False,
    )
    bad = run_cli("policy", "check", str(broken), data_dir=up.data_dir)
    assert bad.returncode == 1
    assert "sica.cedar" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_explain_and_preview_say_who_and_why(up: UpProcess, tmp_path: Path) -> None:
    header = tmp_path / "header.json"
    header.write_text(json.dumps(SICA_DRUGS))
    r = run_cli("policy", "explain", "--bulletin", str(header), "--json", data_dir=up.data_dir)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    rows = {c["agency"]: c for c in out["candidates"]}
    assert out["publish"]["allowed"]
    assert rows["rc-drugs"]["allowed"]
    assert not rows["jm-police"]["allowed"]  # CARICOM only
    assert rows["jm-police"]["summary"].startswith("DENY")
    pv = run_cli(
        "preview",
        "--as",
        "gt-police",
        "--topic",
        "drug-trafficking",
        "--classification",
        "RESTRICTED",
        "--tlp",
        "AMBER",
        "--rel-to",
        "SICA",
        "--json",
        data_dir=up.data_dir,
    )
    assert pv.returncode == 0, pv.stderr
    prev = {c["agency"]: c for c in json.loads(pv.stdout)["candidates"]}
    assert {a: c["allowed"] for a, c in prev.items()} == {a: c["allowed"] for a, c in rows.items()}


def publish_graded_sica(d: Path) -> subprocess.CompletedProcess[str]:
    """A graded SICA drug-trafficking bulletin from gt-police (the observatory takes it)."""
    return run_cli(
        "publish", "--as", "gt-police", "--topic", "drug-trafficking",
        "--classification", "RESTRICTED", "--tlp", "AMBER", "--rel-to", "SICA",
        "--title", "t", "--body", "b", "--source-grade", "A1", "--json", data_dir=d,
    )  # fmt: skip


def test_simulate_then_adopt_takes_effect_in_the_running_relay(
    up: UpProcess, tmp_path: Path
) -> None:
    d = up.data_dir
    pub = publish_graded_sica(d)
    assert pub.returncode == 0, pub.stderr
    assert "rc-drugs" in json.loads(pub.stdout)["routed"]
    cand = candidate(tmp_path)

    sim = run_cli("policy", "simulate", "--candidate", str(cand), "--json", data_dir=d)
    assert sim.returncode == 0, sim.stderr
    changes = {(c["agency"], c["old"], c["new"]) for c in json.loads(sim.stdout)["changes"]}
    assert ("rc-drugs", "PERMIT", "DENY") in changes
    assert ("rc-observatory", "PERMIT", "DENY") in changes
    assert all(a.startswith("rc-") for a, _, _ in changes)

    # A broken candidate is refused, audited, and changes nothing.
    broken = candidate(tmp_path / "b", extra='@id("sica.x")\nforbid (principal, action, resource);')
    bad = run_cli("policy", "adopt", str(broken), data_dir=d)
    assert bad.returncode == 1
    assert "unchanged" in bad.stderr

    ok = run_cli("policy", "adopt", str(cand), data_dir=d)
    assert ok.returncode == 0, ok.stderr
    assert "switched" in ok.stdout
    pub = publish_graded_sica(d)
    assert pub.returncode == 0, pub.stderr
    routed = json.loads(pub.stdout)["routed"]
    assert "rc-drugs" not in routed
    assert "hn-police" in routed

    db = sqlite3.connect(d / "istmo.db", timeout=60)
    kinds = [
        r[0]
        for r in db.execute("SELECT type FROM audit_event WHERE type LIKE 'policy.%' ORDER BY seq")
    ]
    assert kinds == ["policy.rejected", "policy.adopted"]
    data = json.loads(
        db.execute("SELECT data FROM audit_event WHERE type='policy.adopted'").fetchone()[0]
    )
    assert data["previous_version"] != data["version"]
    check = run_cli("policy", "check", data_dir=d)
    assert data["version"] in check.stdout


def test_an_administrator_adopts_over_http(up: UpProcess, tmp_path: Path) -> None:
    import asyncio

    from clients.keystore import load_keystore
    from clients.oauth import IstmoHttp

    base = f"http://127.0.0.1:{up.ports['api']}"
    admin = load_keystore(up.data_dir / "keys" / "admin.json")
    agency = load_keystore(up.data_dir / "keys" / "gt-police.json")
    root = candidate(tmp_path, extra=NO_CENTRES.replace("test-no-regional-centres", "http-test"))
    files = {str(p.relative_to(root)): p.read_text() for p in root.rglob("*.ceda*")}

    async def scenario() -> tuple[int, int, int, dict[str, str]]:
        async with IstmoHttp(base, agency) as api:
            denied = await api.request("POST", "/v1/policy/adopt", json={"files": files})
        async with IstmoHttp(base, admin) as api:
            bad = await api.request(
                "POST", "/v1/policy/adopt", json={"files": {**files, "base.cedar": "permit ("}}
            )
            ok = await api.request("POST", "/v1/policy/adopt", json={"files": files})
        return denied.status_code, bad.status_code, ok.status_code, ok.json()

    denied, bad, ok, answer = asyncio.run(scenario())
    assert denied == 403
    assert bad == 422
    assert ok == 200, answer
    check = run_cli("policy", "check", data_dir=up.data_dir)
    assert answer["version"] in check.stdout  # in force, and what the next start loads
    db = sqlite3.connect(up.data_dir / "istmo.db", timeout=60)
    actor = db.execute(
        "SELECT actor FROM audit_event WHERE type='policy.adopted' ORDER BY seq DESC LIMIT 1"
    ).fetchone()[0]
    assert actor == "admin:admin"
