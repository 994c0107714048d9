"""A partner link between two regions' data directories on one machine (ADR 32): the
sending side's guard passes a releasable bulletin once (a redelivery adds nothing) and
blocks a TLP:RED one, both audited; the receiving side checks each arrival under its own
link file; `istmo federation counts` on each side and `istmo federation reconcile` agree;
a tampered counts file, a dropped and a widened bulletin each raise the alarm, audited.

Real SQLite registries and real sealed envelopes; the NATS transport between the hubs is
not built yet (ADR 32), so the test hands the guard's bytes to the other side itself."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from broker.config import Settings
from broker.policy.model import BulletinFacts
from broker.relay.federation import arrive, compare, day_counts, guard, link_key
from broker.runtime.datadir import DataDir
from broker.store.registry import Registry
from clients.cli import main as istmo
from schemas.federation import LinkCounts, Side, day_of, sign_counts
from schemas.keys import SigningKey
from schemas.labels import Classification, Handling, Labels, Tlp
from tests.core.federation_kit import GATEWAY, LABELS, LINK, LOCAL, NOW, sealed

DAY = day_of(NOW)
AT = NOW * 1000


def _registry(data_dir: Path) -> Registry:
    data_dir.mkdir(parents=True, exist_ok=True)
    return Registry(Settings.from_env(env={}, data_dir=data_dir).db_url)


@pytest.fixture(scope="module")
def regions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("regions")
    return {"a": root / "region-a", "b": root / "region-b"}


def test_two_regions_count_alike_and_any_difference_is_an_alarm(
    regions: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = _registry(regions["a"]), _registry(regions["b"])
    releasable = sealed()
    amber = sealed(labels=LABELS.model_copy(update={"tlp": Tlp.AMBER, "handling": ()}))
    red = sealed(labels=LABELS.model_copy(update={"tlp": Tlp.RED, "named": (GATEWAY,)}))
    try:
        crossed = []
        for raw in (releasable, amber, red, releasable):  # the last: a redelivery
            d = guard(a, LINK, raw, at_ms=AT)
            if d.passed:
                crossed.append(raw)
        assert len(crossed) == 3  # the redelivery passes again, but is counted once
        for raw in crossed:
            # The receiving side's own link file names the same code and gateway.
            assert arrive(b, LINK, raw, at_ms=AT + 500).passed

        passed = a.audit_events(type_="federation.passed")
        blocked = a.audit_events(type_="federation.blocked")
        assert len(passed) == 2
        assert [(e.reason, json.loads(e.data)["reasons"]) for e in blocked] == [
            ("tlp_red", ["tlp_red"])
        ]
        assert all("Go-fast" not in e.data for e in passed + blocked)  # labels only
        assert len(b.audit_events(type_="federation.arrived")) == 2
        counts_a = day_counts(a, LINK.name, "sent", DAY)
        assert [(c.tlp, c.handling, c.n) for c in counts_a] == [
            (Tlp.AMBER, (), 1),
            (Tlp.GREEN, (Handling.H0,), 1),
        ]
        assert day_counts(a, LINK.name, "sent", day_of(NOW + 86400)) == ()
    finally:
        a.close()
        b.close()

    # The guard's verdict on one envelope, from the link file in the data directory.
    (regions["a"] / "federation").mkdir()
    (regions["a"] / "federation" / f"{LINK.name}.json").write_text(LINK.model_dump_json())
    for name, raw in (("releasable", releasable), ("red", red)):
        (regions["a"].parent / f"{name}.json").write_bytes(raw)
    check = ["federation", "check", "--data-dir", str(regions["a"]), "--link", LINK.name]
    assert istmo([*check, str(regions["a"].parent / "releasable.json")]) == 0
    assert istmo([*check, str(regions["a"].parent / "red.json")]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"passes link {LINK.name} to {GATEWAY}",
        f"blocked at link {LINK.name}: tlp_red",
    ]
    # A link name is a file name here: anything else is refused before any file is made.
    assert istmo(["federation", "key", "--data-dir", str(regions["a"]), "--link", "../x"]) == 1
    assert "link name" in capsys.readouterr().err
    assert not (regions["a"] / "broker" / "x.key").exists()

    files = {}
    keys = {}
    for side, region in (("sent", "a"), ("received", "b")):
        out = regions[region].parent / f"{region}.json"
        assert istmo(["federation", "counts", "--data-dir", str(regions[region]), "--link",
                      LINK.name, "--day", DAY, "--side", side, "--region", f"region-{region}",
                      "--out", str(out)]) == 0  # fmt: skip
        assert istmo(["federation", "key", "--data-dir", str(regions[region]), "--link",
                      LINK.name]) == 0  # fmt: skip
        keys[side] = capsys.readouterr().out.strip().splitlines()[-1]
        files[side] = out
    assert keys["sent"].startswith(f"{LINK.name} sig-")
    assert keys["sent"] != keys["received"]

    def reconcile(sent: Path, received: Path) -> int:
        return istmo(["federation", "reconcile", "--data-dir", str(regions["a"]), "--sent",
                      str(sent), "--sent-key", keys["sent"], "--received", str(received),
                      "--received-key", keys["received"]])  # fmt: skip

    assert reconcile(files["sent"], files["received"]) == 0
    assert "they agree" in capsys.readouterr().out

    # One side's file changed after signing: one bulletin more on the sending side.
    doc = json.loads(files["sent"].read_bytes())
    doc["counts"][0]["n"] += 1
    doc["total"] += 1
    tampered = files["sent"].with_name("tampered.json")
    tampered.write_text(json.dumps(doc, separators=(",", ":"), sort_keys=True))
    assert reconcile(tampered, files["received"]) == 1
    err = capsys.readouterr().err
    assert "ALARM" in err
    assert "do not verify" in err
    # The keys swapped: neither side's file verifies.
    keys["sent"], keys["received"] = keys["received"], keys["sent"]
    assert reconcile(files["sent"], files["received"]) == 1
    keys["sent"], keys["received"] = keys["received"], keys["sent"]
    capsys.readouterr()

    a = _registry(regions["a"])
    try:
        alarms = a.audit_events(type_="federation.mismatch")
        assert len(alarms) == 2
        assert {e.subject for e in alarms} == {f"link:{LINK.name}"}
    finally:
        a.close()


def test_a_dropped_or_widened_bulletin_differs(regions: dict[str, Path]) -> None:
    """Counts signed by each side: one bulletin missing on the receiving side, then both
    there, then one there that the sending side never passed."""
    a, b = _registry(regions["a"] / "drop"), _registry(regions["b"] / "drop")
    ka, kb = link_key(regions["a"] / "drop", LINK.name), link_key(regions["b"] / "drop", LINK.name)
    one, two = sealed(), sealed()
    wide = sealed(labels=Labels(
        topic="arms-trafficking", classification=Classification.UNCLASSIFIED, tlp=Tlp.CLEAR,
        rel_to=("EU-SIENA",), handling=(Handling.H0,),
    ))  # fmt: skip
    try:
        for raw in (one, two):
            assert guard(a, LINK, raw, at_ms=AT).passed
        assert arrive(b, LINK, one, at_ms=AT).passed  # `two` never arrives

        def signed(reg: Registry, side: Side, key: SigningKey) -> LinkCounts:
            counts = day_counts(reg, LINK.name, side, DAY)
            return sign_counts(
                link=LINK.name, side=side, region=side, day=DAY, counts=counts,
                issued_at=NOW, key=key,
            )  # fmt: skip

        sent = signed(a, "sent", ka)
        diff = compare(sent, ka.verify_key, signed(b, "received", kb), kb.verify_key)
        assert diff == ["drug-trafficking/RESTRICTED/GREEN/H0: sent 2, received 1 (dropped)"]

        assert arrive(b, LINK, two, at_ms=AT).passed
        assert compare(sent, ka.verify_key, signed(b, "received", kb), kb.verify_key) == []

        assert arrive(b, LINK, wide, at_ms=AT).passed  # arrived, never passed by `a`
        diff = compare(sent, ka.verify_key, signed(b, "received", kb), kb.verify_key)
        assert diff == ["arms-trafficking/UNCLASSIFIED/CLEAR/H0: received 1, none sent (widened)"]
    finally:
        a.close()
        b.close()


def test_a_partner_region_reaches_its_gateway_only_when_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`istmo admin jurisdiction add` makes a partner region in no community; its gateway
    agency, enrolled in it, may receive a bulletin whose REL TO names it, and none that is
    releasable to SICA only."""
    data_dir = tmp_path / "istmo"
    where = ["--data-dir", str(data_dir)]
    add = ["admin", "jurisdiction", "add", "EU-SIENA", "--name", "Europol SIENA", *where]
    assert istmo(add) == 0
    assert "EU-SIENA: added" in capsys.readouterr().out
    assert istmo(add) == 1  # once
    assert "already a jurisdiction" in capsys.readouterr().err
    assert istmo(["admin", "jurisdiction", "add", "sica", "--name", "x", *where]) == 1
    assert istmo(["admin", "agency", "add", GATEWAY, "--name", "SIENA gateway", "--state",
                  "EU-SIENA", "--sector", "police", "--clearance", "RESTRICTED", "--topic",
                  "drug-trafficking", *where]) == 0  # fmt: skip
    assert istmo(["admin", "jurisdiction", "list", *where]) == 0
    assert "EU-SIENA\tpartner\tEuropol SIENA" in capsys.readouterr().out.splitlines()

    data = DataDir.open(Settings.from_env(env={}, data_dir=data_dir), out=lambda _l: None)
    try:
        data.directory.refresh()
        added = data.registry.audit_events(type_="jurisdiction.added")
        assert [(e.subject, json.loads(e.data)["kind"]) for e in added] == [("EU-SIENA", "partner")]

        def to_gateway(rel_to: tuple[str, ...]) -> bool:
            labels = LABELS.model_copy(update={"rel_to": rel_to})
            facts = BulletinFacts(str(uuid.uuid4()), LOCAL, "GT", labels, None, None)
            (d,) = data.directory.engine.decide_receive(facts, [GATEWAY], NOW)
            return d.allowed

        assert to_gateway(("GT", "EU-SIENA"))
        assert not to_gateway(("SICA",))
        assert not to_gateway(("GT", "SICA", "CARICOM"))
    finally:
        data.close()
