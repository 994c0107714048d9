"""Enrolment over HTTP: an administrator creates an agency, the agency enrols with its
one-time token through the SDK's ``enroll`` against the real app, and every way a token
or a request can be wrong is refused (a problem, an audit event, nothing changed).
Also the administrators' lifecycle endpoints, and that no secret leaks anywhere."""

from __future__ import annotations

import base64
import logging
import os
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import nkeys
import pytest
from sqlalchemy import func
from sqlmodel import select

from broker.directory.enrolment import EnrolmentTokenRow, issue_token
from broker.store.registry import AgencyRow, EncryptionKeyRow, NatsUserRow, SigningKeyRow
from clients.enroll import EnrolmentRefused, check_enrolment, enroll, write_new_keystore
from clients.keystore import load_keystore
from clients.oauth import token_form
from schemas.canonical import b64e
from schemas.enrolment import EnrolmentRequest, sign_enrolment, split_enrolment_token
from schemas.errors import ConfigError
from schemas.keys import EncryptionKey, SigningKey, encryption_kid, signing_kid
from schemas.keystore import KeystoreFile
from schemas.natskeys import new_user_seed
from tests.api.conftest import (
    BASE,
    TOKEN_URL,
    AppFactory,
    Broker,
    assert_problem,
    bearer,
    connect,
    token,
)
from tests.canary import files_holding

ADMIN_ENDPOINTS = [
    ("/v1/agencies", {"id": "zz-nobody", "name": "x", "sector": "police"}),
    ("/v1/agencies/gt-police/enrolment-tokens", {}),
    ("/v1/agencies/gt-police/suspend", {}),
    ("/v1/agencies/gt-police/reinstate", {}),
    ("/v1/agencies/gt-police/revoke", {}),
]
_counter = iter(range(10_000))


@pytest.fixture
async def api(make_app: AppFactory) -> AsyncIterator[tuple[httpx.AsyncClient, list[str]]]:
    """The app, with a recording hook where the stack would apply directory changes
    (here: refresh the app's own directory, as the stack does first)."""
    app = make_app()
    calls: list[str] = []
    state = app.state.istmo

    async def changed() -> None:
        state.directory.refresh()
        calls.append(state.directory.version)

    state.directory_changed = changed
    state.nats_url = "nats://127.0.0.1:4999"
    async with connect(app) as c:
        yield c, calls


@pytest.fixture
async def admin(api: tuple[httpx.AsyncClient, list[str]], broker: Broker) -> dict[str, str]:
    return bearer(await token(api[0], broker, "admin"))


def new_id() -> str:
    return f"gt-new-{next(_counter)}-{os.getpid() % 1000}"


async def create(
    c: httpx.AsyncClient, admin: dict[str, str], agency: str | None = None, **extra: Any
) -> dict[str, Any]:
    body = {
        "id": agency or new_id(),
        "name": "Guatemala: Customs",
        "sector": "police",
        "clearance": "CONFIDENTIAL",
        "state": "GT",
        "topics": ["drug-trafficking", "border-incident"],
        **extra,
    }
    r = await c.post("/v1/agencies", json=body, headers=admin)
    assert r.status_code == 201, r.text
    return dict(r.json())


def counts(broker: Broker) -> dict[str, Any]:
    """Everything a redemption could change, besides audit events."""
    with broker.registry.session() as s:
        out: dict[str, Any] = {
            table.__name__: s.exec(select(func.count()).select_from(table)).one()
            for table in (AgencyRow, SigningKeyRow, EncryptionKeyRow, NatsUserRow)
        }
        out["tokens"] = sorted(
            (t.id, t.used_at, t.revoked_at) for t in s.exec(select(EnrolmentTokenRow))
        )
    return out


def request_for(
    tok: str,
    *,
    signing: SigningKey | None = None,
    nats_seed: str | None = None,
    issued_at: int | None = None,
) -> EnrolmentRequest:
    parts = split_enrolment_token(tok)
    assert parts is not None
    return sign_enrolment(
        token_id=parts[0],
        issued_at=int(time.time()) if issued_at is None else issued_at,
        signing_key=signing or SigningKey.generate(),
        encryption=EncryptionKey.generate("X25519").public_key,
        nats_seed=nats_seed or new_user_seed(),
    )


async def post_enrol(c: httpx.AsyncClient, tok: str, req: EnrolmentRequest) -> httpx.Response:
    return await c.post("/v1/enroll", json={"token": tok, "request": req.model_dump(mode="json")})


# ---------------------------------------------------------------------- happy path
async def test_an_agency_is_created_enrols_and_can_authenticate(
    api: tuple[httpx.AsyncClient, list[str]], admin: dict[str, str], broker: Broker
) -> None:
    c, calls = api
    agency = new_id()
    made = await create(c, admin, agency)
    kid = broker.stack.directory_key.verify_key.kid
    assert made["agency"] == agency
    assert made["directory_kid"] == kid
    assert made["token"].startswith("istmo-enrol.")
    assert len(calls) == 1  # the new agency reaches the running stack's directory
    assert broker.registry.agency(agency).status == "active"  # type: ignore[union-attr]
    assert broker.registry.signing_keys(agency) == []  # no keys until it enrols

    before = broker.last_seq()
    ks = await enroll(BASE, made["token"], directory_kid=kid, client=c)
    assert ks.agency == agency
    assert ks.nats_url == "nats://127.0.0.1:4999"
    assert ks.pinned_directory_key() == broker.stack.directory_key.verify_key
    assert len(calls) == 2  # and its keys: the stack reloads NATS and makes its consumer
    await check_enrolment(BASE, ks, client=c)

    # Registered: exactly the public halves of the keystore's keys.
    assert [k.kid for k in broker.registry.signing_keys(agency)] == [ks.signing_keys[0].kid]
    assert [k.kid for k in broker.registry.encryption_keys(agency)] == [ks.encryption_keys[0].kid]
    nats = {u.agency: u.nkey_public for u in broker.registry.nats_users()}
    kp = nkeys.from_seed(ks.nats_seed.encode())
    assert nats[agency] == kp.public_key.decode()
    # Audited in the same transaction: enrolled, and three keys registered.
    events = broker.registry.audit_events(after_seq=before, limit=1000)
    mine = [(e.type, e.actor, e.subject) for e in events if e.subject == agency]
    assert mine.count(("key.registered", agency, agency)) == 3
    assert ("agency.enrolled", agency, agency) in mine
    # It works at once: a token, and the API knows it.
    r = await c.post("/v1/token", data=token_form(ks, TOKEN_URL, now=int(time.time())))
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "bulletins:publish bulletins:read"


async def test_a_regional_body_enrols_with_communities(
    api: tuple[httpx.AsyncClient, list[str]], admin: dict[str, str], broker: Broker
) -> None:
    c, _ = api
    made = await create(
        c, admin, new_id(), state=None, communities=["SICA"], sector="regional-centre"
    )
    ks = await enroll(BASE, made["token"], client=c)
    row = broker.registry.agency(ks.agency)
    assert row is not None
    assert row.state is None
    assert row.communities == "SICA"


# ---------------------------------------------------------------------- bad tokens
async def _used(c: httpx.AsyncClient, admin: dict[str, str], broker: Broker) -> str:
    made = await create(c, admin)
    await enroll(BASE, made["token"], client=c)
    return str(made["token"])


async def _expired(c: httpx.AsyncClient, admin: dict[str, str], broker: Broker) -> str:
    made = await create(c, admin)
    return issue_token(broker.registry, made["agency"], 3600, "admin", now=int(time.time()) - 7200)


async def _forged(c: httpx.AsyncClient, admin: dict[str, str], broker: Broker) -> str:
    made = await create(c, admin)
    token_id = made["token_id"]
    return f"istmo-enrol.{token_id}.{base64.urlsafe_b64encode(os.urandom(32)).decode()[:43]}"


async def _unknown(c: httpx.AsyncClient, admin: dict[str, str], broker: Broker) -> str:
    return f"istmo-enrol.{'0' * 24}.{'A' * 43}"


async def _garbage(c: httpx.AsyncClient, admin: dict[str, str], broker: Broker) -> str:
    return "not a token at all"


async def _replaced(c: httpx.AsyncClient, admin: dict[str, str], broker: Broker) -> str:
    made = await create(c, admin)
    r = await c.post(f"/v1/agencies/{made['agency']}/enrolment-tokens", json={}, headers=admin)
    assert r.status_code == 201, r.text
    return str(made["token"])


async def _suspended(c: httpx.AsyncClient, admin: dict[str, str], broker: Broker) -> str:
    made = await create(c, admin)
    r = await c.post(f"/v1/agencies/{made['agency']}/suspend", json={}, headers=admin)
    assert r.status_code == 200, r.text
    return str(made["token"])


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (_used, "token_used"),
        (_expired, "token_expired"),
        (_forged, "invalid_token"),
        (_unknown, "invalid_token"),
        (_garbage, "invalid_token"),
        (_replaced, "token_revoked"),
        (_suspended, "agency_not_active"),
    ],
    ids=["used", "expired", "forged", "unknown", "garbage", "replaced", "suspended"],
)
async def test_a_bad_token_is_401_audited_and_changes_nothing(
    api: tuple[httpx.AsyncClient, list[str]],
    admin: dict[str, str],
    broker: Broker,
    make: Any,
    code: str,
) -> None:
    c, calls = api
    tok = await make(c, admin, broker)
    parts = split_enrolment_token(tok)
    req = request_for(tok if parts else f"istmo-enrol.{'1' * 24}.{'B' * 43}")
    before, seq, n_calls = counts(broker), broker.last_seq(), len(calls)

    body = assert_problem(await post_enrol(c, tok, req), 401, code)
    assert tok not in str(body)
    assert counts(broker) == before  # no key, no user, the token as it was
    assert len(calls) == n_calls
    refused = broker.audit("auth.refused", after=seq)
    assert [(e.reason, e.subject) for e in refused] == [(code, "POST /v1/enroll")]
    if code == "invalid_token":  # a forger learns nothing, not even the agency
        assert refused[0].actor == "unknown"
        assert body["detail"] == "the enrolment token is not valid"


async def test_the_client_reports_a_refused_token(
    api: tuple[httpx.AsyncClient, list[str]], admin: dict[str, str], broker: Broker
) -> None:
    c, _ = api
    tok = await _used(c, admin, broker)
    with pytest.raises(EnrolmentRefused) as info:
        await enroll(BASE, tok, client=c)
    assert info.value.code == "token_used"
    assert info.value.status == 401
    with pytest.raises(ConfigError, match="not an enrolment token"):
        await enroll(BASE, "abc", client=c)


async def test_a_wrong_directory_kid_stops_before_the_token_is_sent(
    api: tuple[httpx.AsyncClient, list[str]], admin: dict[str, str], broker: Broker
) -> None:
    c, _ = api
    made = await create(c, admin)
    with pytest.raises(ConfigError, match="nothing was sent"):
        await enroll(BASE, made["token"], directory_kid="sig-" + "0" * 32, client=c)
    await enroll(BASE, made["token"], client=c)  # the token is still good


# ---------------------------------------------------------------------- bad requests
def _nkey_of(raw: bytes) -> str:
    body = bytes([nkeys.PREFIX_BYTE_USER]) + raw
    return base64.b32encode(body + nkeys.crc16_checksum(body)).decode().rstrip("=")


def _weak_signing(req: EnrolmentRequest) -> EnrolmentRequest:
    identity = bytes([1]) + bytes(31)  # a small-order point
    signing = {"kid": signing_kid(identity), "public": b64e(identity)}
    return EnrolmentRequest.model_validate({**req.model_dump(mode="json"), "signing": signing})


def _weak_encryption(req: EnrolmentRequest) -> EnrolmentRequest:
    low = bytes([1]) + bytes(31)  # u = 1: a low-order X25519 point
    enc = {**req.encryption.model_dump(mode="json")}
    enc.update(kem="X25519", public=b64e(low), kid=encryption_kid("X25519", low))
    return EnrolmentRequest.model_validate({**req.model_dump(mode="json"), "encryption": enc})


def _weak_nats(req: EnrolmentRequest) -> EnrolmentRequest:
    zero = bytes(32)  # small order
    return EnrolmentRequest.model_validate(
        {**req.model_dump(mode="json"), "nats_user": _nkey_of(zero)}
    )


def _kid_mismatch(req: EnrolmentRequest) -> EnrolmentRequest:
    other = SigningKey.generate().verify_key
    signing = {"kid": other.kid, "public": req.signing.public}
    return EnrolmentRequest.model_validate({**req.model_dump(mode="json"), "signing": signing})


def _other_signer(req: EnrolmentRequest) -> EnrolmentRequest:
    forged = request_for(f"istmo-enrol.{req.token_id}.{'C' * 43}", issued_at=req.issued_at)
    return req.model_copy(update={"proof": forged.proof})


def _other_nats_signer(req: EnrolmentRequest) -> EnrolmentRequest:
    forged = request_for(f"istmo-enrol.{req.token_id}.{'C' * 43}", issued_at=req.issued_at)
    return req.model_copy(update={"nats_proof": forged.nats_proof})


def _tampered(req: EnrolmentRequest) -> EnrolmentRequest:
    return req.model_copy(update={"issued_at": req.issued_at + 1})


def _stale(req: EnrolmentRequest) -> EnrolmentRequest:
    return req  # built with an old issued_at below


def _other_token(req: EnrolmentRequest) -> EnrolmentRequest:
    return req.model_copy(update={"token_id": "f" * 24})


@pytest.mark.parametrize(
    ("tamper", "status", "code"),
    [
        (_weak_signing, 422, "bad_key"),
        (_weak_encryption, 422, "bad_key"),
        (_weak_nats, 422, "bad_key"),
        (_kid_mismatch, 422, "bad_key"),
        (_other_signer, 422, "bad_proof"),
        (_other_nats_signer, 422, "bad_proof"),
        (_tampered, 422, "bad_proof"),
        (_stale, 422, "timestamp_out_of_window"),
        (_other_token, 422, "token_mismatch"),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)).strip("_"),
)
async def test_a_weak_key_or_a_bad_proof_is_refused_and_the_token_stays_good(
    api: tuple[httpx.AsyncClient, list[str]],
    admin: dict[str, str],
    broker: Broker,
    tamper: Any,
    status: int,
    code: str,
) -> None:
    c, _ = api
    made = await create(c, admin)
    issued_at = int(time.time()) - (3600 if tamper is _stale else 0)
    req = tamper(request_for(made["token"], issued_at=issued_at))
    before, seq = counts(broker), broker.last_seq()

    assert_problem(await post_enrol(c, made["token"], req), status, code)
    assert counts(broker) == before
    refused = broker.audit("request.rejected", after=seq)
    assert [(e.reason, e.actor) for e in refused] == [(code, made["agency"])]
    ks = await enroll(BASE, made["token"], client=c)  # the honest request still works
    assert ks.agency == made["agency"]


async def test_a_key_already_registered_is_409(
    api: tuple[httpx.AsyncClient, list[str]], admin: dict[str, str], broker: Broker
) -> None:
    c, _ = api
    made = await create(c, admin)
    gt = broker.keystore("gt-police")
    taken = request_for(made["token"], signing=gt.signing_key())  # gt-police's own key
    assert_problem(await post_enrol(c, made["token"], taken), 409, "key_reused")
    reused_nats = request_for(made["token"], nats_seed=gt.nats_seed)
    assert_problem(await post_enrol(c, made["token"], reused_nats), 409, "key_reused")


async def test_malformed_and_oversized_bodies(
    api: tuple[httpx.AsyncClient, list[str]], broker: Broker
) -> None:
    c, _ = api
    seq = broker.last_seq()
    assert_problem(await c.post("/v1/enroll", content=b"{"), 422)
    assert_problem(await c.post("/v1/enroll", json={"token": "x"}), 422)
    big = {"token": "x", "request": {"pad": "A" * 20_000}}
    assert_problem(await c.post("/v1/enroll", json=big), 413)
    # The second malformed body is alike the first (reason, route, address): counted in
    # its aggregation window, written as a summary when the window closes.
    reasons = [e.reason for e in broker.audit("request.rejected", after=seq)]
    assert reasons == ["malformed", "oversized"]


async def test_enrolment_is_rate_limited_per_address(
    api: tuple[httpx.AsyncClient, list[str]], broker: Broker
) -> None:
    c, _ = api
    statuses = [(await c.post("/v1/enroll", content=b"{}")).status_code for _ in range(12)]
    assert statuses[:10] == [422] * 10
    r = await c.post("/v1/enroll", content=b"{}")
    assert_problem(r, 429, "rate_limited")
    assert int(r.headers["Retry-After"]) >= 1


# ---------------------------------------------------------------------- administrators
@pytest.mark.parametrize(("path", "body"), ADMIN_ENDPOINTS, ids=[p for p, _ in ADMIN_ENDPOINTS])
async def test_admin_endpoints_need_the_admin_scope(
    api: tuple[httpx.AsyncClient, list[str]], broker: Broker, path: str, body: dict[str, Any]
) -> None:
    c, _ = api
    before, seq = counts(broker), broker.last_seq()
    assert_problem(await c.post(path, json=body), 401, "missing_token")
    agency = bearer(await token(c, broker, "hn-police"))
    assert_problem(await c.post(path, json=body, headers=agency), 403, "insufficient_scope")
    assert counts(broker) == before
    assert broker.registry.agency("gt-police").status == "active"  # type: ignore[union-attr]
    reasons = [e.reason for e in broker.audit("auth.refused", after=seq)]
    assert reasons == ["missing_token", "insufficient_scope"]


async def test_suspend_reinstate_revoke_are_audited_with_the_admin_as_actor(
    api: tuple[httpx.AsyncClient, list[str]], admin: dict[str, str], broker: Broker
) -> None:
    c, calls = api
    made = await create(c, admin)
    agency = made["agency"]
    ks = await enroll(BASE, made["token"], client=c)
    seq, n = broker.last_seq(), len(calls)

    r = await c.post(f"/v1/agencies/{agency}/suspend", json={"note": "inquiry"}, headers=admin)
    assert r.json() == {
        "agency": agency,
        "previous": "active",
        "status": "suspended",
        "applied": True,
    }
    assert broker.directory.records[agency].status == "suspended"  # applied before the answer
    refused = await c.post("/v1/token", data=token_form(ks, TOKEN_URL, now=int(time.time())))
    assert_problem(refused, 401, "client_suspended")
    assert_problem(await c.post(f"/v1/agencies/{agency}/suspend", headers=admin), 409, "conflict")
    r = await c.post(f"/v1/agencies/{agency}/reinstate", headers=admin)  # no body: no note
    assert r.json()["status"] == "active"
    r = await c.post(f"/v1/agencies/{agency}/revoke", json={}, headers=admin)
    assert r.json()["previous"] == "active"
    assert_problem(await c.post(f"/v1/agencies/{agency}/reinstate", headers=admin), 409)
    assert_problem(await c.post("/v1/agencies/zz-nobody/suspend", headers=admin), 404)
    assert len(calls) == n + 3

    events = [
        (e.type, e.actor, e.subject)
        for e in broker.registry.audit_events(after_seq=seq, limit=1000)
        if e.type.startswith("agency.")
    ]
    assert events == [
        ("agency.suspended", "admin", agency),
        ("agency.reinstated", "admin", agency),
        ("agency.revoked", "admin", agency),
    ]


async def test_create_checks_every_field(
    api: tuple[httpx.AsyncClient, list[str]], admin: dict[str, str], broker: Broker
) -> None:
    c, _ = api
    good = {
        "id": new_id(),
        "name": "x",
        "sector": "police",
        "clearance": "SECRET",
        "state": "GT",
    }
    before = counts(broker)
    for change, status, code in (
        ({"id": "gt-police"}, 409, "id_taken"),
        ({"id": "admin"}, 409, "id_taken"),
        ({"state": "XX"}, 422, "bad_attribute"),
        ({"communities": ["SICA"]}, 422, "bad_attribute"),  # a state and communities
        ({"state": None}, 422, "bad_attribute"),  # neither
        ({"communities": ["GT"], "state": None}, 422, "bad_attribute"),  # a state
        ({"sector": "navy"}, 422, None),
        ({"clearance": "TOP"}, 422, None),
        ({"topics": ["gossip"]}, 422, None),
        ({"name": "a\x07b"}, 422, None),
        ({"token_ttl_s": 10}, 422, None),
        ({"extra": 1}, 422, None),
    ):
        r = await c.post("/v1/agencies", json={**good, **change}, headers=admin)
        assert_problem(r, status, code)
    assert counts(broker) == before


async def test_tokens_for_an_enrolled_or_unknown_agency_are_refused(
    api: tuple[httpx.AsyncClient, list[str]], admin: dict[str, str]
) -> None:
    c, _ = api
    r = await c.post("/v1/agencies/gt-police/enrolment-tokens", json={}, headers=admin)
    assert_problem(r, 409, "not_enrollable")
    r = await c.post("/v1/agencies/zz-nobody/enrolment-tokens", headers=admin)
    assert_problem(r, 404, "unknown_agency")
    r = await c.post(
        "/v1/agencies/gt-police/enrolment-tokens", json={"ttl_s": 10**9}, headers=admin
    )
    assert_problem(r, 422)


# ---------------------------------------------------------------------- secrets
async def test_no_private_key_or_token_secret_in_logs_answers_audit_or_database(
    api: tuple[httpx.AsyncClient, list[str]],
    admin: dict[str, str],
    broker: Broker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    c, _ = api
    seq = broker.last_seq()
    made = await create(c, admin)
    tok = made["token"]
    secret = tok.rsplit(".", 1)[1]
    answers: list[str] = []
    ks = await enroll(BASE, tok, client=c)
    answers.append((await post_enrol(c, tok, request_for(tok))).text)  # refused: used
    answers.append((await post_enrol(c, tok + "x", request_for(tok))).text)
    answers.append((await c.get(f"/v1/agencies/{ks.agency}", headers=admin)).text)
    answers.append((await c.get("/v1/directory", params={"agency": ks.agency})).text)
    secrets = [
        tok,
        secret,
        ks.signing_keys[0].private,
        ks.encryption_keys[0].private,
        ks.nats_seed,
    ]

    logged = "\n".join(
        f"{r.getMessage()} {r.exc_text or ''}"
        for r in caplog.records
        if not r.name.startswith(("httpx", "httpcore"))
    )
    audit = "\n".join(
        f"{e.actor} {e.subject} {e.reason} {e.data}"
        for e in broker.registry.audit_events(after_seq=seq, limit=1000)
    )
    assert "enrolled" in logged
    for s in secrets:
        assert s not in logged
        assert s not in audit
        assert files_holding(broker.settings.data_dir, s.encode(), "istmo.db*") == []
        for answer in answers:
            assert s not in answer
    with broker.registry.session() as s:
        row = s.exec(select(EnrolmentTokenRow).where(EnrolmentTokenRow.agency == ks.agency)).one()
    assert row.secret_sha256 != secret
    assert len(row.secret_sha256) == 64
    assert secret not in repr(ks)
    assert tok not in repr(ks)


# ---------------------------------------------------------------------- the keystore file
def _keystore() -> KeystoreFile:
    from schemas.keystore import new_keystore

    ks, _, _ = new_keystore(
        agency="gt-customs",
        nats_seed=new_user_seed(),
        directory_key=SigningKey.generate().verify_key,
        now=int(time.time()),
    )
    return ks


def test_the_new_keystore_is_protected_0600_and_never_overwrites(tmp_path: Path) -> None:
    ks = _keystore()
    path = tmp_path / "ks.json"
    write_new_keystore(path, ks, "a long enough passphrase")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_text()
    assert ks.signing_keys[0].private not in raw
    assert ks.nats_seed not in raw
    assert load_keystore(path, "a long enough passphrase") == ks
    with pytest.raises(ConfigError, match="never overwritten"):
        write_new_keystore(path, _keystore(), "another passphrase!")
    assert path.read_text() == raw
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ks.json"]  # no temporary left
    os.symlink(tmp_path / "elsewhere", tmp_path / "link.json")
    with pytest.raises(ConfigError, match="never overwritten"):
        write_new_keystore(tmp_path / "link.json", ks, None)
    assert not (tmp_path / "elsewhere").exists()
