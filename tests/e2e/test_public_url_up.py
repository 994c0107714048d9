"""`istmo up --public-url` as an operator runs it, over real HTTP: it says and records the
public URL; on the broker's machine `istmo console login` gets a link to it, an enrolment
grant names it, and `istmo audit verify --from-url` works at either the public URL or the
loopback one. A bad URL stops `istmo up` before anything starts.

The public URL here is ``http://localhost:PORT`` (plain http is allowed for loopback
names): the API's own listener answers it, so no proxy is needed to reach it. The proxy
case itself (https, a foreign name) is tests/api/test_public_url_api.py.

Two standard OAuth clients get tokens at the public URL with no Istmo code on the client
side (the key is read from the demo keystore file, nothing more): authlib's requests
session with its stock ``private_key_jwt``, and requests-oauthlib with an assertion that
joserfc signs.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from authlib.integrations.requests_client import OAuth2Session as AuthlibSession
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc import jwt
from joserfc.jwk import OKPKey
from oauthlib.oauth2 import BackendApplicationClient
from requests_oauthlib import OAuth2Session

from tests.stackproc import UpProcess, free_port, run_cli
from tests.waiting import eventually_sync


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpProcess]:
    api = free_port()
    proc = UpProcess(
        tmp_path_factory.mktemp("public-url") / "istmo",
        ports={"nats": 0, "http": 0, "api": api},
        extra=("--public-url", f"http://LOCALHOST:{api}/"),
    ).start()
    try:
        yield proc
    finally:
        assert proc.stop() == 0, proc.output


def public_of(up: UpProcess) -> str:
    return f"http://localhost:{up.ports['api']}"


def loopback_of(up: UpProcess) -> str:
    return f"http://127.0.0.1:{up.ports['api']}"


def test_up_says_and_records_the_public_url(up: UpProcess) -> None:
    public = public_of(up)
    assert f"public    {public} " in up.output
    info = json.loads((up.data_dir / "stack.json").read_text())
    assert (info["public_url"], info["api_url"]) == (public, loopback_of(up))


def test_console_login_on_the_broker_machine_links_to_the_public_url(up: UpProcess) -> None:
    # Asked at loopback (stack.json's api_url), answered with the public URL.
    r = run_cli("console", "login", "--as", "auditor", "--no-open", data_dir=up.data_dir)
    assert r.returncode == 0, r.stderr
    link = r.stdout.strip()
    assert link.startswith(public_of(up) + "/console/login?code=")
    with httpx.Client(follow_redirects=False) as browser:
        assert browser.get(link).status_code == 303


def test_an_enrolment_grant_names_the_public_url(up: UpProcess) -> None:
    r = run_cli(
        "admin", "agency", "add", "gt-ports", "--name", "Guatemala: Ports", "--state", "GT",
        "--sector", "police", "--clearance", "CONFIDENTIAL", "--topic", "border-incident",
        "--json", data_dir=up.data_dir,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["broker"] == public_of(up)


@pytest.mark.parametrize("where", ["public", "loopback"])
def test_audit_verify_from_either_url(up: UpProcess, where: str) -> None:
    url = public_of(up) if where == "public" else loopback_of(up)
    r = eventually_sync(
        lambda: run_cli(
            "audit",
            "verify",
            "--from-url",
            url,
            "--as",
            "auditor",
            "--trust-log-key-alone",
            data_dir=up.data_dir,
        ),
        until=lambda r: r.returncode == 0 and "verified " in r.stdout,
        what="a signed log, verified from " + where,
        interval=0.2,
    )
    assert url in r.stdout


def auditor_key(up: UpProcess) -> OKPKey:
    """The demo auditor's signing key as a JWK, read from its keystore file."""
    stored = json.loads((up.data_dir / "keys" / "auditor.json").read_text())["signing_keys"][-1]
    return OKPKey.import_key(
        Ed25519PrivateKey.from_private_bytes(base64.b64decode(stored["private"]))
    )


def test_authlibs_stock_client_gets_tokens_at_the_public_url(up: UpProcess) -> None:
    token_url = public_of(up) + "/v1/token"
    session = AuthlibSession(
        "auditor", auditor_key(up), token_endpoint_auth_method=PrivateKeyJWT(alg="Ed25519")
    )
    for _ in range(2):  # each request signs a new assertion (an hour long, a fresh jti)
        token = session.fetch_token(token_url, grant_type="client_credentials")
        assert token["scope"] == "audit:read"
    session.close()
    entries = httpx.get(
        public_of(up) + "/v1/audit/entries",
        params={"limit": 1},
        headers={"Authorization": f"Bearer {token['access_token']}"},
    )
    assert entries.status_code == 200, entries.text


def test_requests_oauthlib_gets_a_token_with_a_signed_assertion(
    up: UpProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    # oauthlib insists on https; this loopback public URL is plain http (a proxy is https).
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    token_url = public_of(up) + "/v1/token"
    now = int(time.time())
    claims = {"iss": "auditor", "sub": "auditor", "aud": token_url, "iat": now,
              "exp": now + 3600, "jti": secrets.token_urlsafe(16)}  # fmt: skip
    assertion = jwt.encode({"alg": "Ed25519"}, claims, auditor_key(up), algorithms=["Ed25519"])
    with OAuth2Session(client=BackendApplicationClient(client_id="auditor")) as session:
        token = session.fetch_token(
            token_url,
            include_client_id=False,
            client_assertion_type="urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            client_assertion=assertion,
        )
    assert token["scope"] == ["audit:read"]


def test_a_bad_public_url_stops_up_before_anything_starts(tmp_path: Path) -> None:
    d = tmp_path / "istmo"
    r = run_cli("up", "--public-url", "http://istmo.example.org", data_dir=d)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    error, hint = r.stderr.strip().splitlines()
    assert error.startswith("istmo: ISTMO_PUBLIC_URL (--public-url) must use https://")
    assert hint.startswith("  hint: give the URL users reach the API at")
    assert not d.exists()
