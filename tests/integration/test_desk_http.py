"""`istmo desk` served by uvicorn on loopback, driven over real HTTP (httpx): an analyst
signs in, lists, filters, searches, reads (banners, caveats, thread), flags and signs out;
and the hostile cases: no session, a wrong Host, a form without its CSRF token, a disabled
analyst, another agency's archive, a tampered access log."""

from __future__ import annotations

import io
import os
import re
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pypdf
import pytest

from clients.archive import Archive
from clients.archive_keys import ArchiveSecret
from clients.keystore import save_keystore
from clients.results import ReceivedBulletin
from schemas.keys import SigningKey
from schemas.keystore import new_keystore
from schemas.labels import Classification, Labels, Precedence, Tlp
from schemas.natskeys import new_user_seed
from tests.stackproc import ISTMO, free_port, interrupt
from tests.waiting import eventually_sync
from tests.warm import run_istmo

# Tens of seconds of stack start-up: run among the first files (tests/conftest.py).
pytestmark = pytest.mark.slow

PASSPHRASE = "desk test passphrase"
PW = "analyst password one"
CANARY = "Puerto Barrios canary 7731"


def bulletin(n: int, **extra: object) -> ReceivedBulletin:
    fields: dict[str, object] = {
        "id": f"00000000-0000-4000-8000-{n:012d}",
        "originator": "gt-police",
        "labels": Labels(
            topic="drug-trafficking",
            classification=Classification.RESTRICTED,
            tlp=Tlp.AMBER,
            rel_to=("SICA",),
            precedence=Precedence.ROUTINE,
        ),
        "title": f"Bulletin {n}",
        "body": f"Body {n}",
        "created_at": 1_800_000_000 + n * 3600,
        "received_at": 1_800_000_100 + n * 3600,
        "caveats": (),
        **extra,
    }
    return ReceivedBulletin(**fields)  # type: ignore[arg-type]  # the test's fields


def run(*args: str, data: Path) -> subprocess.CompletedProcess[str]:
    return run_istmo([ISTMO, *args, "--passphrase-file", str(data / "pass")], timeout=120)


@dataclass
class Desk:
    url: str
    port: int
    data: Path
    ks: Path
    proc: subprocess.Popen[str]


def _keystore(d: Path, agency: str) -> Path:
    ks, _, _ = new_keystore(
        agency=agency,
        nats_seed=new_user_seed(),
        directory_key=SigningKey.generate().verify_key,
        now=int(time.time()),
    )
    path = d / f"{agency}.json"
    save_keystore(path, ks)
    return path


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Desk]:
    d = tmp_path_factory.mktemp("desk")
    ks = _keystore(d, "sv-police")
    (d / "pass").write_text(PASSPHRASE + "\n")
    (d / "pw").write_text(PW + "\n")
    with Archive.open(
        d / "sv-police.archive.sqlite",
        "sv-police",
        lambda: ArchiveSecret("passphrase", PASSPHRASE.encode()),
    ) as archive:
        archive.add(bulletin(1, title="Go-fast boat sighted", body=f"Near {CANARY}."))
        archive.add(
            bulletin(
                2,
                title="Re: go-fast boat",
                body="Seen again at dawn.",
                in_reply_to=bulletin(1).id,
                thread=bulletin(1).id,
                caveats=("NOFORN-LOCAL", "ORCON"),
            )
        )
        archive.add(
            bulletin(
                3,
                title="Cyber alert",
                originator="hn-police",
                labels=Labels(
                    topic="early-warning",
                    classification=Classification.CONFIDENTIAL,
                    tlp=Tlp.RED,
                    rel_to=("SICA",),
                    precedence=Precedence.FLASH,
                ),
            )
        )
    for name, role in (("ana", "reader"), ("ben", "drafter")):
        r = run("desk", "user", "add", name, "--role", role, "--as", str(ks),
                "--password-file", str(d / "pw"), data=d)  # fmt: skip
        assert r.returncode == 0, r.stderr
    port = free_port()
    proc = subprocess.Popen(
        [ISTMO, "desk", "--as", str(ks), "--listen", f"127.0.0.1:{port}",
         "--passphrase-file", str(d / "pass"), "--no-sync"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip

    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"istmo desk exited: {proc.communicate()}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        eventually_sync(listening, what="the desk to listen")
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    yield Desk(f"http://127.0.0.1:{port}", port, d, ks, proc)
    out, err = interrupt(proc)
    assert PW not in out + err
    assert CANARY not in out + err


def _token(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, html[:500]
    return m.group(1)


def sign_in(c: httpx.Client, name: str = "ana", password: str = PW) -> httpx.Response:
    form = c.get("/login")
    return c.post("/login", data={"csrf": _token(form.text), "name": name, "password": password})


def test_read_search_flag_sign_out(desk: Desk) -> None:
    with httpx.Client(base_url=desk.url) as c:
        r = c.get("/")
        assert r.status_code == 303
        assert r.headers["location"] == "/login"
        r = sign_in(c)
        assert r.status_code == 303, r.text
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie.replace("Strict", "strict")
        assert "Secure" not in cookie  # plain HTTP on loopback
        page = c.get("/")
        assert page.status_code == 200
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
        assert "3 bulletins" in page.text
        assert "Go-fast boat sighted" in page.text
        # Filters, each on a clear column, and search on the sealed text.
        assert "1 bulletin<" in c.get("/", params={"tlp": "RED"}).text
        assert "Cyber alert" in c.get("/", params={"precedence": "FLASH"}).text
        assert "2 bulletins" in c.get("/", params={"from": "gt-police"}).text
        assert "2 bulletins" in c.get("/", params={"unread": "1", "topic": "drug-trafficking"}).text
        found = c.get("/", params={"q": "barrios"})
        assert "1 bulletin<" in found.text
        assert "Go-fast boat sighted" in found.text
        assert "0 bulletins" in c.get("/", params={"since": "2099-01-01"}).text
        bad = c.get("/", params={"tlp": "PURPLE"})
        assert bad.status_code == 400
        assert "TLP must be one of" in bad.text
        # Read: banners, caveats, thread; it becomes read.
        b2 = bulletin(2).id
        read = c.get(f"/b/{b2}")
        assert read.status_code == 200
        assert "RESTRICTED · TLP:AMBER" in read.text
        assert "NOFORN-LOCAL" in read.text
        assert "Go-fast boat sighted" in read.text  # the thread
        assert "1 bulletin<" in c.get("/", params={"unread": "1", "topic": "drug-trafficking"}).text
        # Flag with the form's token.
        r = c.post(
            f"/b/{b2}/mark", data={"csrf": _token(read.text), "what": "follow-up", "on": "1"}
        )
        assert r.status_code == 303
        assert "Re: go-fast boat" in c.get("/", params={"flag": "follow-up"}).text
        # Sign out: the cookie no longer opens anything.
        token = _token(c.get("/").text)
        assert c.post("/logout", data={"csrf": token}).status_code == 303
        assert c.get("/").status_code == 303
    r = run("desk", "log", "show", "--as", str(desk.ks), "--analyst", "ana", data=desk.data)
    assert r.returncode == 0, r.stderr
    actions = [line.split()[4] for line in r.stdout.splitlines()]
    assert actions[:4] == ["sign-out", "flag", "open", "sign-in"]
    assert CANARY not in r.stdout
    assert "go-fast" not in r.stdout.lower()


def test_french_and_dutch_and_the_language_switch(desk: Desk) -> None:
    """Accept-Language picks French or Dutch (words for codes and plural forms too);
    the switch's cookie wins over the browser; it only sends back to a page of the desk."""
    fr, nl = {"Accept-Language": "fr-HT,fr;q=0.9"}, {"Accept-Language": "nl-SR,nl;q=0.8"}
    with httpx.Client(base_url=desk.url) as c:
        signin = c.get("/login", headers=fr)
        assert '<html lang="fr">' in signin.text
        assert "Mot de passe" in signin.text
        assert sign_in(c, "ben").status_code == 303
        page = c.get("/", headers=fr)
        assert "<h1>Boîte de réception</h1>" in page.text
        assert "3 bulletins" in page.text
        assert "(rédacteur)" in page.text  # the role in words
        assert '<option value="early-warning">alerte précoce</option>' in page.text
        assert "CONFIDENTIEL (CONFIDENTIAL)" in page.text  # the marking of record stays
        assert "0 bulletin<" in c.get("/", params={"since": "2099-01-01"}, headers=fr).text
        assert "0 bulletins<" in c.get("/", params={"since": "2099-01-01"}).text
        page = c.get("/", headers=nl)
        assert '<html lang="nl">' in page.text
        assert "<h1>Postvak IN</h1>" in page.text
        assert "vroegtijdige waarschuwing" in page.text
        assert "1 bulletin<" in c.get("/", params={"tlp": "RED"}, headers=nl).text
        bad = c.get("/", params={"tlp": "PURPLE"}, headers=nl)
        assert "TLP moet een van de vermelde waarden zijn" in bad.text
        assert "geopend" not in c.get("/log", headers=nl).text  # nothing opened yet
        assert "aangemeld" in c.get("/log", headers=nl).text
        # The switch: a cookie for a year, back to where it was asked from.
        r = c.get("/lang/es", params={"next": "/?topic=migration"})
        assert r.status_code == 303
        assert r.headers["location"] == "/?topic=migration"
        assert "istmo_desk_lang=es" in r.headers["set-cookie"]
        page = c.get("/", headers=fr)
        assert '<html lang="es">' in page.text  # the cookie wins over the browser
        assert "Bandeja de entrada" in page.text
        assert 'id="lang-fr"' in page.text
        for bad_next in ("https://evil.example/", "//evil.example/", "/\\evil", "/lang/en"):
            r = c.get("/lang/en", params={"next": bad_next})
            assert r.headers["location"] == "/", bad_next
        assert c.get("/lang/ht").status_code == 404


def test_no_session_wrong_host_and_missing_csrf(desk: Desk) -> None:
    b1 = bulletin(1).id
    with httpx.Client(base_url=desk.url) as c:
        assert c.get(f"/b/{b1}").status_code == 303
        assert c.get("/log").status_code == 303
        r = c.get("/login", headers={"host": "evil.example:80"})
        assert r.status_code == 421
        # Sign-in's own form needs its double-submit token.
        r = c.post("/login", data={"name": "ana", "password": PW})
        assert r.status_code == 403
        assert sign_in(c).status_code == 303
        assert c.get("/", headers={"host": f"attacker.test:{desk.port}"}).status_code == 421
        r = c.post(f"/b/{b1}/mark", data={"what": "starred", "on": "1"})
        assert r.status_code == 403
        assert "security token" in r.text
        r = c.post(f"/b/{b1}/mark", data={"csrf": "forged", "what": "starred", "on": "1"})
        assert r.status_code == 403
        assert "starred" not in c.get("/", params={"flag": "starred"}).text.split("<h2")[-1]
        assert c.get("/b/not-an-id").status_code == 400
        big = c.post("/logout", content=b"csrf=" + b"a" * 20000)
        assert big.status_code == 413
        assert c.get("/").status_code == 200  # still signed in: nothing was done
    r = run("desk", "log", "show", "--as", str(desk.ks), "--analyst", "ana", data=desk.data)
    refusals = [line for line in r.stdout.splitlines() if "request-refused" in line]
    assert len(refusals) >= 2  # the two forged forms


def test_wrong_password_then_disabled_analyst(desk: Desk) -> None:
    with httpx.Client(base_url=desk.url) as c:
        r = sign_in(c, "ben", "not the password")
        assert r.status_code == 401
        assert "Sign-in refused" in r.text
        assert sign_in(c, "ben").status_code == 303
        assert c.get("/").status_code == 200
        r = run("desk", "user", "disable", "ben", "--as", str(desk.ks), data=desk.data)
        assert r.returncode == 0, r.stderr
        # The open session ends at its next request, and ben cannot sign in again.
        assert c.get("/").status_code == 403
        assert sign_in(c, "ben").status_code == 401
    listed = run("desk", "user", "list", "--as", str(desk.ks), "--json", data=desk.data)
    assert '"name": "ben", "role": "drafter", "active": false' in listed.stdout


def test_another_agencys_archive_refused(desk: Desk, tmp_path: Path) -> None:
    other = _keystore(tmp_path, "gt-police")
    (tmp_path / "pass").write_text(PASSPHRASE + "\n")
    r = run("desk", "user", "list", "--as", str(other),
            "--archive", str(desk.data / "sv-police.archive.sqlite"), data=tmp_path)  # fmt: skip
    assert r.returncode != 0
    assert "sv-police's, not gt-police's" in r.stderr
    # The right agency with the wrong secret: refused too, the desk does not start.
    (tmp_path / "pass").write_text("not the passphrase\n")
    r = run("desk", "--as", str(desk.ks), "--listen", "127.0.0.1:1", "--no-sync",
            "--archive", str(desk.data / "sv-police.archive.sqlite"), data=tmp_path)  # fmt: skip
    assert r.returncode != 0
    assert "wrong passphrase for this archive" in r.stderr


def test_log_verify_detects_tampering(desk: Desk, tmp_path: Path) -> None:
    # A copy of the archive, so the other tests keep theirs.
    copy = tmp_path / "copy.sqlite"
    with (
        sqlite3.connect(desk.data / "sv-police.archive.sqlite") as src,
        sqlite3.connect(copy) as dst,
    ):
        src.backup(dst)
    copy.chmod(0o600)
    (tmp_path / "pass").write_text(PASSPHRASE + "\n")
    args = ("desk", "log", "verify", "--as", str(desk.ks), "--archive", str(copy))
    r = run(*args, data=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "is whole" in r.stdout
    with sqlite3.connect(copy) as db:
        # Whichever entries the tests before wrote: the first one now names another analyst.
        db.execute(
            "UPDATE desk_log SET analyst = 'someone-else'"
            " WHERE seq = (SELECT MIN(seq) FROM desk_log)"
        )
    r = run(*args, data=tmp_path)
    assert r.returncode == 3
    assert "NOT whole" in r.stdout
    assert "altered" in r.stdout


def test_print_from_the_page_and_the_command_line(desk: Desk) -> None:
    b2 = bulletin(2).id
    with httpx.Client(base_url=desk.url) as c:
        assert c.get(f"/b/{b2}/print").status_code == 303  # no session, no printout
        assert sign_in(c).status_code == 303
        assert f'href="/b/{b2}/print"' in c.get(f"/b/{b2}").text
        r = c.get(f"/b/{b2}/print")
        assert r.status_code == 200, r.text[:300]
        assert r.headers["content-type"] == "application/pdf"
        assert f'filename="bulletin-{b2}.pdf"' in r.headers["content-disposition"]
        assert r.headers["cache-control"] == "no-store"
        assert c.get("/b/00000000-0000-4000-8000-000000000099/print").status_code == 404
        es = c.get(f"/b/{b2}/print", headers={"Accept-Language": "es-GT,es;q=0.9"})
        assert es.status_code == 200
        assert ">impreso<" in c.get("/log", headers={"Accept-Language": "es"}).text
    # The analyst's language on the desk; the markings of record unchanged (ADR 26).
    es_pages = [p.extract_text() for p in pypdf.PdfReader(io.BytesIO(es.content)).pages]
    assert all(t.count("RESTRICTED // REL TO SICA") == 2 for t in es_pages)
    assert "Firma verificada: emisor gt-police" in es_pages[0]
    assert "Signature verified" not in " ".join(es_pages)
    pages = [p.extract_text() for p in pypdf.PdfReader(io.BytesIO(r.content)).pages]
    for text in pages:
        assert text.count("RESTRICTED // REL TO SICA") == 2
        assert text.count("TLP:AMBER") == 2
        assert "Signature verified: originator gt-police" in text
    whole = " ".join(pages)
    assert "Caveat: NOFORN-LOCAL" in whole
    assert f"This bulletin answers {bulletin(1).id}" in whole
    assert "Go-fast boat sighted" in whole  # the thread's first bulletin, by title
    out = desk.data / "b2.pdf"
    r2 = run("inbox", "print", b2, "--out", str(out), "--as", str(desk.ks), data=desk.data)
    assert r2.returncode == 0, r2.stderr
    assert out.stat().st_mode & 0o077 == 0
    assert "Seen again at dawn." in " ".join(p.extract_text() for p in pypdf.PdfReader(out).pages)
    log = run("desk", "log", "show", "--as", str(desk.ks), "--limit", "20", data=desk.data)
    printed = [line.split()[3:6] for line in log.stdout.splitlines() if " print " in line]
    assert printed[:2] == [["-", "print", b2], ["ana", "print", b2]]
    assert "dawn" not in log.stdout
