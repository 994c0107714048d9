"""The administrators' console pages over HTTP: the real app over a real data directory
(the demo directory, the demo administrator), signed in with real one-time links.

Refusals (no session, an auditor's session, a missing or wrong CSRF token, a bad
candidate) change nothing and are audited; suspend, reinstate and revoke go through a
confirmation step and are audited with the administrator as actor; an enrolment token
appears in one response only; a candidate policy is validated and simulated.
"""

from __future__ import annotations

import html
import json
import logging
import re
import time
import uuid

import cedarpy
import httpx
import pytest
from sqlmodel import select

from broker.config import default_policy_dir
from broker.console.admin_policy_data import MAX_CANDIDATE_CHARS, bundle_text, read_policy_dir
from broker.directory.enrolment import EnrolmentTokenRow, NewAgency, create_agency
from broker.store.registry import BulletinRow
from schemas.labels import Labels
from tests.api.conftest import Broker
from tests.console.conftest import NO_MILITARY, csrf_of, events_of


def status_of(broker: Broker, agency: str) -> str:
    row = broker.registry.agency(agency)
    assert row is not None
    return row.status


async def csrf(client: httpx.AsyncClient, path: str = "/console/admin/") -> str:
    r = await client.get(path)
    assert r.status_code == 200, r.text
    return csrf_of(r.text)


# ---------------------------------------------------------------------- refusals
async def test_no_session_goes_to_sign_in(web: httpx.AsyncClient) -> None:
    for path in ("/console/admin/", "/console/admin/agencies", "/console/admin/policy"):
        r = await web.get(path)
        assert r.status_code == 303
        assert r.headers["location"] == "/console/"


async def test_an_auditor_is_refused_and_audited(
    auditor: httpx.AsyncClient, console_broker: Broker
) -> None:
    after = console_broker.last_seq()
    for path in ("/console/admin/", "/console/admin/agencies/hn-police/suspend"):
        r = await auditor.get(path)
        assert r.status_code == 403
        assert "needs the scope admin" in r.text
    # even with the auditor's own valid CSRF token, a POST is refused and changes nothing
    token = csrf_of((await auditor.get("/console/")).text)
    r = await auditor.post(
        "/console/admin/agencies/hn-police/suspend", data={"csrf": token, "note": "x"}
    )
    assert r.status_code == 403
    assert status_of(console_broker, "hn-police") == "active"
    refused = events_of(console_broker, "auth.refused", after)
    assert [(e.actor, e.reason) for e in refused] == [("auditor", "insufficient_scope")] * 3
    assert refused[-1].subject == "POST /console/admin/agencies/{agency}/{action}"
    assert events_of(console_broker, "agency.suspended", after) == []


@pytest.mark.parametrize("sent", [None, "", "wrong-token", "x" * 5000])
async def test_csrf_missing_or_wrong_is_refused(
    admin: httpx.AsyncClient, console_broker: Broker, sent: str | None
) -> None:
    after = console_broker.last_seq()
    data = {"note": "no token"} if sent is None else {"csrf": sent, "note": "bad token"}
    r = await admin.post("/console/admin/agencies/hn-police/suspend", data=data)
    assert r.status_code == 403
    assert "security token" in r.text
    assert status_of(console_broker, "hn-police") == "active"
    refused = events_of(console_broker, "auth.refused", after)
    assert [(e.actor, e.reason) for e in refused] == [("admin", "csrf_mismatch")]
    # the policy forms check it too, before reading the candidate
    r = await admin.post("/console/admin/policy/check", data={**data, "candidate": "x"})
    assert r.status_code == 403


# ---------------------------------------------------------------------- agencies
async def test_agencies_by_state_and_sector_with_keys(
    admin: httpx.AsyncClient, console_broker: Broker
) -> None:
    r = await admin.get("/console/admin/agencies")
    assert r.status_code == 200
    assert 'id="g-GT"' in r.text
    assert 'id="g-JM"' in r.text
    gt = r.text[r.text.index('id="g-GT"') :]
    gt = gt[: gt.index("</section>")]
    order = [m for m in re.findall(r'id="row-([a-z0-9-]+)"', gt)]
    assert order == ["gt-police", "gt-military", "gt-foreign", "gt-justice"]
    r = await admin.get("/console/admin/agencies?place=HN&sector=justice")
    assert re.findall(r'id="row-([a-z0-9-]+)"', r.text) == ["hn-justice"]
    r = await admin.get("/console/admin/agencies?sector=pirates")
    assert r.status_code == 400
    assert "sector: not a sector" in r.text  # the parameter named as in the URL
    r = await admin.get("/console/admin/agencies/jm-justice")
    key = console_broker.registry.signing_keys("jm-justice")[0]
    assert key.kid in r.text
    assert "Ed25519" in r.text
    assert "MLKEM768-X25519" in r.text
    assert "Fingerprint (SHA-256)" in r.text
    r = await admin.get("/console/admin/agencies/zz-nobody")
    assert r.status_code == 404
    assert "There is no such agency." in r.text  # the message does not echo the id


async def test_suspend_confirm_reinstate_audited(
    admin: httpx.AsyncClient, console_broker: Broker
) -> None:
    after = console_broker.last_seq()
    page = await admin.get("/console/admin/agencies/sv-police")
    assert 'id="do-suspend"' in page.text
    assert 'id="do-reinstate"' not in page.text
    confirm = await admin.get("/console/admin/agencies/sv-police/suspend")
    assert confirm.status_code == 200
    assert 'action="/console/admin/agencies/sv-police/suspend"' in confirm.text
    assert status_of(console_broker, "sv-police") == "active"  # showing it changes nothing
    token = csrf_of(confirm.text)
    r = await admin.post(
        "/console/admin/agencies/sv-police/suspend",
        data={"csrf": token, "note": "compromised workstation"},
    )
    assert r.status_code == 303
    assert r.headers["location"].startswith("/console/admin/agencies/sv-police?done=suspend")
    assert status_of(console_broker, "sv-police") == "suspended"
    [event] = events_of(console_broker, "agency.suspended", after)
    assert (event.actor, event.subject) == ("admin", "sv-police")
    assert json.loads(event.data)["note"] == "compromised workstation"
    done = await admin.get(r.headers["location"])
    assert "sv-police is suspended" in done.text
    assert 'id="do-reinstate"' in done.text
    # suspending again is a conflict, named, audited, and changes nothing
    r = await admin.post("/console/admin/agencies/sv-police/suspend", data={"csrf": token})
    assert r.status_code == 409
    assert "already suspended" in r.text
    [rejected] = events_of(console_broker, "request.rejected", after)
    assert (rejected.actor, rejected.reason) == ("admin", "conflict")
    r = await admin.post("/console/admin/agencies/sv-police/reinstate", data={"csrf": token})
    assert r.status_code == 303
    assert status_of(console_broker, "sv-police") == "active"
    [back] = events_of(console_broker, "agency.reinstated", after)
    assert back.actor == "admin"


async def test_revocation_is_final(admin: httpx.AsyncClient, console_broker: Broker) -> None:
    token = await csrf(admin, "/console/admin/agencies/ni-justice/revoke")
    r = await admin.post("/console/admin/agencies/ni-justice/revoke", data={"csrf": token})
    assert r.status_code == 303
    assert status_of(console_broker, "ni-justice") == "revoked"
    page = await admin.get("/console/admin/agencies/ni-justice")
    assert "revocation is final" in page.text
    assert 'id="do-reinstate"' not in page.text
    confirm = await admin.get("/console/admin/agencies/ni-justice/reinstate")
    assert 'id="not-allowed"' in confirm.text
    assert 'id="confirm"' not in confirm.text
    r = await admin.post("/console/admin/agencies/ni-justice/reinstate", data={"csrf": token})
    assert r.status_code == 409
    assert status_of(console_broker, "ni-justice") == "revoked"
    r = await admin.get("/console/admin/agencies/ni-justice/delete")
    assert r.status_code == 404


async def test_an_enrolment_token_is_shown_once(
    admin: httpx.AsyncClient, console_broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    reg = console_broker.registry
    create_agency(
        reg,
        NewAgency(
            id="pa-customs",
            name="Panamá: Aduanas",
            sector="police",
            clearance="RESTRICTED",
            topics=("drug-trafficking",),
            state="PA",
        ),
        created_by="admin",
        now=int(time.time()),
    )
    after = console_broker.last_seq()
    page = await admin.get("/console/admin/agencies/pa-customs")
    assert "not enrolled yet" in page.text or "has not enrolled yet" in page.text
    token = await csrf(admin, "/console/admin/agencies/pa-customs/token")
    caplog.set_level(logging.DEBUG)
    r = await admin.post(
        "/console/admin/agencies/pa-customs/token", data={"csrf": token, "ttl": "hour"}
    )
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-store"
    m = re.search(r'id="token" tabindex="0">(istmo-enrol\.[^<]+)</pre>', r.text)
    assert m, r.text
    first = html.unescape(m.group(1))
    secret = first.rsplit(".", 1)[1]
    assert "only time the token is shown" in r.text
    # never again: not on the agency's page, not in the audit log, not in the logs
    again = await admin.get("/console/admin/agencies/pa-customs")
    assert secret not in again.text
    [issued] = [
        e
        for e in events_of(console_broker, "agency.enrolled", after)
        if json.loads(e.data)["stage"] == "token_issued"
    ]
    assert issued.actor == "admin"
    assert secret not in issued.data
    assert all(secret not in rec.getMessage() for rec in caplog.records)
    # a second token cancels the first
    r = await admin.post(
        "/console/admin/agencies/pa-customs/token", data={"csrf": token, "ttl": "day"}
    )
    second = re.search(r'id="token" tabindex="0">(istmo-enrol\.[^<]+)</pre>', r.text)
    assert second
    assert second.group(1) != m.group(1)
    with reg.session() as s:
        rows = list(
            s.exec(select(EnrolmentTokenRow).where(EnrolmentTokenRow.agency == "pa-customs"))
        )
    assert sorted(r.revoked_at is None for r in rows) == [False, True]
    # an enrolled agency gets none
    r = await admin.post("/console/admin/agencies/gt-police/token", data={"csrf": token})
    assert r.status_code == 409
    assert "enrolled already" in r.text
    r = await admin.post(
        "/console/admin/agencies/pa-customs/token", data={"csrf": token, "ttl": "year"}
    )
    assert r.status_code == 400


# ---------------------------------------------------------------------- policy
def store_bulletin(broker: Broker, rel_to: str = "SICA") -> str:
    bid = str(uuid.uuid4())
    now = int(time.time())
    labels = Labels.model_validate_json(
        json.dumps(
            {
                "topic": "border-incident",
                "classification": "RESTRICTED",
                "tlp": "AMBER",
                "rel_to": [rel_to],
            }
        )
    )
    broker.registry.add_all(
        [
            BulletinRow(
                id=bid,
                originator="gt-police",
                labels=labels.model_dump_json(),
                envelope_digest="0" * 64,
                ingest_seq=now,
                created_at=now,
                accepted_at=now,
                recipients="hn-military,hn-police",
                policy_version="p",
                directory_version="d",
            )
        ]
    )
    return bid


async def test_the_policy_in_force_highlighted(
    admin: httpx.AsyncClient, console_broker: Broker
) -> None:
    r = await admin.get("/console/admin/policy")
    assert r.status_code == 200
    assert console_broker.directory.bundle.version in r.text
    assert '<span class="cd-kw">permit</span>' in r.text
    assert '<span class="cd-ann">@id</span>' in r.text
    assert "overrides/sica.cedar" in r.text
    assert "schema.cedarschema" in r.text
    assert "style=" not in r.text
    assert "<script>" not in r.text
    r = await admin.get("/console/admin/policy/candidate")
    m = re.search(r'<textarea id="candidate"[^>]*>(.*?)</textarea>', r.text, re.S)
    assert m
    assert html.unescape(m.group(1)) == bundle_text(read_policy_dir(default_policy_dir()))


async def test_a_bad_candidate_is_named(admin: httpx.AsyncClient, console_broker: Broker) -> None:
    token = await csrf(admin)
    after = console_broker.last_seq()
    base = read_policy_dir(default_policy_dir())["base.cedar"]
    broken = base.replace("permit (", "permit ((", 1)
    r = await admin.post("/console/admin/policy/check", data={"csrf": token, "candidate": broken})
    assert r.status_code == 200
    assert "Not valid: 1 problem." in r.text
    problems = re.findall(r'<li class="mono"><a href="#([^"]+)">([^<]+)</a>', r.text)
    assert problems
    # The first policy's @id line, and its permit two lines below (wherever the header
    # comment of base.cedar ends).
    at = base.splitlines().index('@id("grant.publish-own")') + 1
    assert problems[0][1].startswith(f"base.cedar:{at}: grant.publish-own: parse error")
    assert problems[0][0] == f"base-cedar-L{at}"  # a link to the line, shown highlighted below
    assert f'<span class="line" id="base-cedar-L{at}"><span class="cd-ann">@id</span>' in r.text
    permit = f'<span class="line" id="base-cedar-L{at + 2}"><span class="cd-kw">permit</span> (('
    assert permit in r.text
    assert 'id="adopt"' not in r.text
    # too long: refused before anything is parsed, named, audited
    r = await admin.post(
        "/console/admin/policy/check",
        data={"csrf": token, "candidate": "x" * (MAX_CANDIDATE_CHARS + 1)},
    )
    assert r.status_code == 400
    assert f"the limit is {MAX_CANDIDATE_CHARS}" in r.text
    r = await admin.post(
        "/console/admin/policy/check",
        data={"csrf": token, "candidate": "junk\n// ---- base.cedar\n" + base},
    )
    assert r.status_code == 400
    assert "before the first" in r.text
    r = await admin.post(
        "/console/admin/policy/check", data={"csrf": token, "candidate": base, "last": "0"}
    )
    assert r.status_code == 400
    rejected = events_of(console_broker, "request.rejected", after)
    assert [e.reason for e in rejected] == ["bad_candidate", "bad_candidate", "bad_attribute"]
    assert events_of(console_broker, "policy.adopted", after) == []


async def test_validate_and_simulate_a_candidate(
    admin: httpx.AsyncClient, console_broker: Broker
) -> None:
    bid = store_bulletin(console_broker)
    token = await csrf(admin)
    active = read_policy_dir(default_policy_dir())
    same = await admin.post(
        "/console/admin/policy/check", data={"csrf": token, "candidate": bundle_text(active)}
    )
    assert "It is the set in force" in same.text
    assert 'id="sim-none"' in same.text
    sica = cedarpy.format_policies(active["overrides/sica.cedar"] + "\n" + NO_MILITARY)
    candidate = f"// ---- overrides/sica.cedar\n{sica}"  # the rest from the set in force
    r = await admin.post(
        "/console/admin/policy/check", data={"csrf": token, "candidate": candidate, "last": "5"}
    )
    assert r.status_code == 200
    version = re.search(r"Valid: version ([0-9a-f]{16})", r.text)
    assert version
    assert version.group(1) != console_broker.directory.bundle.version
    assert re.findall(r'<ul id="changed"><li class="mono">([^<]+)', r.text) == [
        "overrides/sica.cedar"
    ]
    losers = re.findall(r'<tr><td class="mono">([a-z0-9-]+)</td>\s*<td></td>', r.text)
    assert "hn-military" in losers
    assert all(a.endswith("-military") for a in losers)
    assert bid[:8] in r.text
    assert "sica.test-no-military" in r.text
    # the confirmation step carries the checked candidate; this app has no stack to adopt
    form = re.search(r'action="/console/admin/policy/confirm".*?</form>', r.text, re.S)
    assert form
    carried = html.unescape(re.search(r"<textarea[^>]*>(.*?)</textarea>", form.group(0), re.S)[1])
    confirm = await admin.post(
        "/console/admin/policy/confirm",
        data={"csrf": token, "candidate": carried, "version": version.group(1)},
    )
    assert confirm.status_code == 200
    assert f"Adopt {version.group(1)}" in confirm.text
    changed = await admin.post(
        "/console/admin/policy/confirm",
        data={"csrf": token, "candidate": carried + "\n// extra\n", "version": version.group(1)},
    )
    assert changed.status_code == 409
    adopt = await admin.post(
        "/console/admin/policy/adopt",
        data={"csrf": token, "candidate": carried, "version": version.group(1)},
    )
    assert adopt.status_code == 503
    assert console_broker.directory.bundle.version != version.group(1)


async def test_spanish(admin: httpx.AsyncClient) -> None:
    admin.cookies.set("istmo_lang", "es", path="/console")
    r = await admin.get("/console/admin/agencies?place=GT")
    assert "<h1>Agencias</h1>" in r.text
    assert "relaciones exteriores" in r.text
    r = await admin.get("/console/admin/policy")
    assert "Política vigente" in r.text


async def test_counts_agree_with_their_number(admin: httpx.AsyncClient) -> None:
    """The agency counts take the plural form of their number in each language (the
    console once said "1 activas")."""
    from broker.console.i18n import plural_form

    words = {
        "en": ("active", "active"),
        "es": ("agencia activa", "agencias activas"),
        "fr": ("agence active", "agences actives"),
        "nl": ("actieve instantie", "actieve instanties"),
    }
    for lang, (one, other) in words.items():
        r = await admin.get("/console/admin/", headers={"Accept-Language": lang})
        assert f'lang="{lang}"' in r.text
        m = re.search(r'class="st st-active">(\d+) ([^<]+)</span>', r.text)
        assert m, r.text
        n = int(m.group(1))
        assert m.group(2) == (one if plural_form(lang, n) == "one" else other), (lang, n)
    r = await admin.get("/console/admin/agencies", headers={"Accept-Language": "fr"})
    shown = re.search(r'id="shown">(\d+) ([^<]+)</p>', r.text)
    assert shown
    assert shown.group(2) == (
        "agence affichée." if int(shown.group(1)) < 2 else "agences affichées."
    )


async def test_revoke_one_signing_key(admin: httpx.AsyncClient, console_broker: Broker) -> None:
    after = console_broker.last_seq()
    [key] = console_broker.registry.signing_keys("pa-police")
    path = f"/console/admin/agencies/pa-police/keys/{key.kid}/revoke"
    page = await admin.get("/console/admin/agencies/pa-police")
    assert f'href="{path}"' in page.text
    confirm = await admin.get(path)
    assert confirm.status_code == 200
    assert 'id="last-key"' in confirm.text  # its only key: the page says what that means
    r = await admin.post(path, data={"csrf": "wrong"})
    assert r.status_code == 403
    assert console_broker.registry.signing_keys("pa-police")[0].revoked_at is None
    r = await admin.post(path, data={"csrf": csrf_of(confirm.text)})
    assert r.status_code == 303
    assert r.headers["location"].startswith(
        f"/console/admin/agencies/pa-police?done=key&kid={key.kid}"
    )
    assert console_broker.registry.signing_keys("pa-police")[0].revoked_at is not None
    [event] = events_of(console_broker, "key.revoked", after)
    assert (event.actor, event.subject) == ("admin", "pa-police")
    assert json.loads(event.data)["kid"] == key.kid
    done = await admin.get(r.headers["location"])
    assert f"Key {key.kid} is revoked" in done.text
    assert f'href="{path}"' not in done.text
    again = await admin.post(path, data={"csrf": csrf_of(confirm.text)})
    assert again.status_code == 409
    assert "already revoked" in again.text
    other = f"/console/admin/agencies/gt-police/keys/{key.kid}/revoke"  # not gt-police's key
    assert (await admin.get(other)).status_code == 404
    r = await admin.post(other, data={"csrf": csrf_of(confirm.text)})
    assert r.status_code == 409
    assert "has no signing key" in r.text
    assert (
        await admin.get("/console/admin/agencies/pa-police/keys/nope/revoke")
    ).status_code == 404
