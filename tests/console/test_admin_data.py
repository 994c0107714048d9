"""The administrators' console data layer over a real registry (SQLite) and policy set."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid

import cedarpy
import pytest
from sqlmodel import select

from broker.config import Settings, default_policy_dir
from broker.console.admin_data import (
    agency_groups,
    agency_view,
    change_status,
    issue_enrolment_token,
)
from broker.console.admin_highlight import highlight_lines
from broker.console.admin_policy_data import (
    MAX_CANDIDATE_CHARS,
    CandidateError,
    bundle_files,
    bundle_text,
    check_candidate,
    parse_bundle_text,
    read_policy_dir,
    simulate_candidate,
)
from broker.directory.enrolment import NewAgency, create_agency
from broker.runtime.stack import Stack
from broker.store.registry import AuditRow, BulletinRow, Registry
from schemas.errors import ConfigError
from schemas.labels import Labels
from tests.console.conftest import NO_MILITARY


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Stack:
    settings = Settings(data_dir=tmp_path_factory.mktemp("admin-data") / "istmo")
    s = Stack(settings, out=lambda _line: None)
    s.prepare()
    return s


def registry_of(stack: Stack) -> Registry:
    assert stack.registry is not None
    return stack.registry


def events(stack: Stack, type_: str, subject: str) -> list[AuditRow]:
    with registry_of(stack).session() as s:
        q = select(AuditRow).where(AuditRow.type == type_, AuditRow.subject == subject)
        return list(s.exec(q))


def test_agencies_grouped_by_state_then_sector_with_their_keys(stack: Stack) -> None:
    groups = agency_groups(registry_of(stack))
    codes = [g.code for g in groups]
    assert "GT" in codes
    assert "JM" in codes
    gt = next(g for g in groups if g.code == "GT")
    assert gt.kind == "state"
    sectors = [a.sector for a in gt.agencies]
    assert sectors == ["police", "military", "foreign", "justice"]
    police = gt.agencies[0]
    assert police.id == "gt-police"
    assert police.status == "active"
    assert police.enrolled
    signing = [k for k in police.keys if k.kind == "signing"]
    assert len(signing) == 1
    assert signing[0].algorithm == "Ed25519"
    row = registry_of(stack).signing_keys("gt-police")[0]
    digest = hashlib.sha256(base64.b64decode(row.public)).hexdigest()[:32]
    assert signing[0].fingerprint.replace(" ", "") == digest
    assert police.last_rotation == row.created_at
    assert {k.kind for k in police.keys} == {"signing", "encryption", "nats"}
    # regional bodies sit under a community, after every state
    kinds = [g.kind for g in groups]
    assert kinds == sorted(kinds, key=lambda k: k != "state")
    only = agency_groups(registry_of(stack), place="HN", sector="justice")
    assert [[a.id for a in g.agencies] for g in only] == [["hn-justice"]]
    assert agency_groups(registry_of(stack), status="revoked") == []


def test_status_changes_are_the_lifecycle_ones_and_audited(stack: Stack) -> None:
    reg = registry_of(stack)
    assert change_status(reg, "bz-police", "suspend", actor="admin", note="test") == "active"
    view = agency_view(reg, "bz-police")
    assert view is not None
    assert view.status == "suspended"
    assert view.allows("reinstate")
    assert not view.allows("suspend")
    [event] = events(stack, "agency.suspended", "bz-police")
    assert event.actor == "admin"
    assert json.loads(event.data)["note"] == "test"
    with pytest.raises(ConfigError, match="already suspended"):
        change_status(reg, "bz-police", "suspend", actor="admin")
    assert change_status(reg, "bz-police", "revoke", actor="admin") == "suspended"
    with pytest.raises(ConfigError, match="revocation is final"):
        change_status(reg, "bz-police", "reinstate", actor="admin")
    with pytest.raises(ConfigError, match="no such agency"):
        change_status(reg, "zz-nobody", "suspend", actor="admin")
    assert agency_view(reg, "zz-nobody") is None


def test_an_enrolment_token_is_returned_once_and_never_stored(stack: Stack) -> None:
    reg = registry_of(stack)
    now = int(time.time())
    new = NewAgency(
        id="gt-customs",
        name="Guatemala: Customs",
        sector="police",
        clearance="RESTRICTED",
        topics=("drug-trafficking",),
        state="GT",
    )
    create_agency(reg, new, created_by="admin", now=now)
    view = agency_view(reg, "gt-customs")
    assert view is not None
    assert view.can_enrol
    assert not view.enrolled
    assert stack.directory is not None
    issued = issue_enrolment_token(reg, stack.directory, "gt-customs", actor="admin", now=now)
    assert issued.token.startswith("istmo-enrol.")
    assert issued.token not in repr(issued)
    secret = issued.token.rsplit(".", 1)[1]
    with reg.session() as s:
        dump = " ".join(r.data + r.actor + r.subject for r in s.exec(select(AuditRow)))
    assert secret not in dump
    assert issued.token_id in dump
    db = (stack.settings.data_dir / "istmo.db").read_bytes()
    assert secret.encode() not in db
    with pytest.raises(ConfigError, match="enrolled already"):
        issue_enrolment_token(reg, stack.directory, "gt-police", actor="admin")


def test_the_active_set_round_trips_as_text() -> None:
    root = default_policy_dir()
    files = read_policy_dir(root)
    from broker.policy.engine import PolicyBundle

    bundle = PolicyBundle.load(root)
    assert {k: v for k, v in files.items() if k != "schema.cedarschema"} == bundle_files(bundle)
    text = bundle_text(files)
    assert text.startswith("// ---- schema.cedarschema\n")
    assert parse_bundle_text(text, active=files) == files
    # base.cedar alone, the rest from the set in force
    only_base = parse_bundle_text(files["base.cedar"], active=files)
    assert only_base == files
    replaced = parse_bundle_text(files["base.cedar"], active=files, replace_all=True)
    assert sorted(replaced) == ["base.cedar", "schema.cedarschema"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x" * (MAX_CANDIDATE_CHARS + 1), "the limit is"),
        ("stray\n// ---- base.cedar\npermit (principal, action, resource);\n", "before the first"),
        ("// ---- base.cedar\na\n// ---- base.cedar\nb\n", "appears twice"),
        ("   \n", "empty"),
    ],
)
def test_a_malformed_candidate_is_named(text: str, message: str) -> None:
    with pytest.raises(CandidateError, match=message):
        parse_bundle_text(text, active=read_policy_dir(default_policy_dir()))


def test_check_a_candidate_valid_and_broken(stack: Stack) -> None:
    assert stack.directory is not None
    active = read_policy_dir(default_policy_dir())
    ok = check_candidate(active, stack.directory, active)
    assert ok.valid
    assert ok.version == stack.directory.bundle.version
    assert ok.changed == ()
    broken = {**active, "base.cedar": active["base.cedar"] + "\npermit(;\n"}
    bad = check_candidate(broken, stack.directory, active)
    assert not bad.valid
    assert bad.version is None
    assert bad.problems[0].startswith("base.cedar")
    assert bad.changed == ("base.cedar",)
    with pytest.raises(CandidateError, match="policy files are"):
        check_candidate({**active, "../etc.cedar": "x"}, stack.directory, active)


def _store_bulletin(reg: Registry, originator: str, labels: Labels, recipients: list[str]) -> str:
    bid = str(uuid.uuid4())
    now = int(time.time())
    reg.add_all(
        [
            BulletinRow(
                id=bid,
                originator=originator,
                labels=labels.model_dump_json(),
                envelope_digest="0" * 64,
                ingest_seq=now,
                created_at=now,
                accepted_at=now,
                recipients=",".join(recipients),
                policy_version="x",
                directory_version="y",
            )
        ]
    )
    return bid


def test_simulate_says_who_loses_access(stack: Stack) -> None:
    reg = registry_of(stack)
    assert stack.directory is not None
    labels = Labels.model_validate_json(
        json.dumps(
            {
                "topic": "border-incident",
                "classification": "RESTRICTED",
                "tlp": "AMBER",
                "rel_to": ["SICA"],
            }
        )
    )
    bid = _store_bulletin(reg, "gt-police", labels, ["hn-military", "hn-police"])
    active = read_policy_dir(default_policy_dir())
    same = simulate_candidate(active, reg, stack.directory, last=10)
    assert same.changes == ()
    assert same.bulletins >= 1
    sica = active["overrides/sica.cedar"] + "\n" + NO_MILITARY
    candidate = {**active, "overrides/sica.cedar": cedarpy.format_policies(sica)}
    sim = simulate_candidate(candidate, reg, stack.directory, last=10)
    assert sim.candidate != sim.active
    lost = [c for c in sim.changes if c.bulletin_id == bid]
    assert {c.agency for c in lost} >= {"hn-military"}
    assert all(not c.gains for c in lost)
    assert all("sica.test-no-military" in c.new_policy_ids for c in lost)
    assert all(a.endswith("-military") for a, _g, _l in sim.by_agency)
    with pytest.raises(CandidateError):
        simulate_candidate({**active, "base.cedar": "nonsense"}, reg, stack.directory, last=10)


def test_highlighting_escapes_everything() -> None:
    lines = highlight_lines('@id("x<b>")\nforbid (principal, action, resource) // </pre>\n')
    assert len(lines) == 2
    assert lines[0].html == (
        '<span class="cd-ann">@id</span>(<span class="cd-str">&quot;x&lt;b&gt;&quot;</span>)'
    )
    assert '<span class="cd-kw">forbid</span>' in lines[1].html
    assert '<span class="cd-com">// &lt;/pre&gt;</span>' in lines[1].html
    assert "<b>" not in "".join(line.html for line in lines)


def test_admin_strings_translated() -> None:
    from broker.console.i18n import translator

    assert translator("es")("admin.confirm.suspend", id="hn-police") == "¿Suspender hn-police?"
    assert translator("fr")("admin.confirm.suspend", id="hn-police") == "Suspendre hn-police\u00a0?"
    assert translator("nl")("admin.confirm.suspend", id="hn-police") == "hn-police schorsen?"
