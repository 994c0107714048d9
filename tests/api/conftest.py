"""The real app over a real registry with the demo directory, through httpx.ASGITransport.

``broker`` prepares a data directory once per module (demo directory, keystores, the demo
administrator, the token key); ``make_app`` builds the app over it (or over a re-opened
registry: a restart). Nothing here is faked: the same ``Stack.prepare`` as ``istmo up``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy import func
from sqlmodel import select

from broker.api.guard import ApiLimits
from broker.api.oauth import TokenAuthority, load_token_key
from broker.config import Settings
from broker.directory.admins import create_demo_admin
from broker.directory.service import DirectoryService
from broker.policy.engine import PolicyBundle
from broker.runtime.app import create_app
from broker.runtime.stack import Stack
from broker.store.registry import AgencyRow, AuditRow, Registry
from clients.keystore import load_keystore
from clients.oauth import token_form
from schemas.keystore import KeystoreFile
from tests.storage_engines import Storage

BASE = "http://istmo.test"
HOST = "istmo.test"  # an app without a token issuer serves it only when told to
SCHEMATHESIS_HOST = "testserver"  # where schemathesis sends an ASGI app its requests
TOKEN_URL = f"{BASE}/v1/token"
EXPLAIN_BODY = {
    "labels": {
        "topic": "drug-trafficking",
        "classification": "RESTRICTED",
        "tlp": "AMBER",
        "rel_to": ["HN"],
    }
}


@dataclass
class Broker:
    """A prepared data directory and the services over it."""

    stack: Stack
    settings: Settings

    @property
    def registry(self) -> Registry:
        assert self.stack.registry is not None
        return self.stack.registry

    @property
    def directory(self) -> DirectoryService:
        assert self.stack.directory is not None
        return self.stack.directory

    def keystore(self, who: str) -> KeystoreFile:
        return load_keystore(self.settings.keys_dir / f"{who}.json")

    def authority(self, registry: Registry | None = None, **kw: Any) -> TokenAuthority:
        return TokenAuthority(
            registry or self.registry,
            load_token_key(self.settings.broker_dir),
            issuer=BASE,
            **kw,
        )

    def audit(self, type_: str, after: int = 0) -> list[AuditRow]:
        return self.registry.audit_events(type_=type_, after_seq=after, limit=1000)

    def last_seq(self) -> int:
        """The newest audit event's sequence number (0 if none)."""
        with self.registry.session() as s:
            return int(s.exec(select(func.max(AuditRow.seq))).one() or 0)

    def set_status(self, agency: str, status: str) -> None:
        """Suspend, reinstate or revoke an agency directly in the registry."""
        with self.registry.session() as s:
            row = s.get(AgencyRow, agency)
            assert row is not None
            row.status = status
            s.add(row)
            s.commit()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, storage_module: Storage) -> Iterator[Broker]:
    """The broker on each storage engine (SQLite, then a PostgreSQL database of its own)."""
    settings = storage_module.settings(tmp_path_factory.mktemp("api") / "istmo")
    stack = Stack(settings, out=lambda _line: None)
    stack.prepare()
    assert stack.registry is not None
    create_demo_admin(
        stack.registry, settings.keys_dir, stack.directory_key.verify_key, now=int(time.time())
    )
    yield Broker(stack, settings)
    stack.registry.close()  # its pooled connections, before the database is dropped


AppFactory = Callable[..., FastAPI]


@pytest.fixture
def make_app(broker: Broker) -> AppFactory:
    def make(
        *,
        registry: Registry | None = None,
        limits: ApiLimits | None = None,
        allowed_hosts: tuple[str, ...] = (),
        **kw: Any,
    ):
        reg = registry or broker.registry
        directory = broker.directory
        if registry is not None:  # a restart: everything re-opened from the data directory
            bundle = PolicyBundle.load(broker.settings.policy_dir)
            directory = DirectoryService(reg, bundle, broker.stack.directory_key)
        return create_app(
            reg,
            directory,
            lambda: True,
            auth=broker.authority(reg, **kw),
            limits=limits,
            allowed_hosts=allowed_hosts,
        )

    return make


@pytest_asyncio.fixture
async def client(make_app: AppFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with connect(make_app()) as c:
        yield c


def connect(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)


# ---------------------------------------------------------------------- JWT crafting
def b64u(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def segment(value: Any) -> str:
    return b64u(json.dumps(value, separators=(",", ":")).encode())


def claims_for(who: str, now: int | None = None, **overrides: Any) -> dict[str, Any]:
    now = int(time.time()) if now is None else now
    claims: dict[str, Any] = {
        "iss": who,
        "sub": who,
        "aud": TOKEN_URL,
        "iat": now,
        "exp": now + 60,
        "jti": uuid.uuid4().hex,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def signed(ks: KeystoreFile, claims: dict[str, Any], **header: Any) -> str:
    """A JWS signed with the keystore's signing key (header fields overridable)."""
    head = {"alg": "EdDSA", "typ": "JWT", "kid": ks.signing_keys[-1].kid, **header}
    head = {k: v for k, v in head.items() if v is not None}
    signing_input = f"{segment(head)}.{segment(claims)}"
    return f"{signing_input}.{b64u(ks.signing_key().sign(signing_input.encode()))}"


def unsigned(claims: dict[str, Any]) -> str:
    return f"{segment({'alg': 'none', 'typ': 'JWT'})}.{segment(claims)}."


def hs256(secret: bytes, claims: dict[str, Any]) -> str:
    signing_input = f"{segment({'alg': 'HS256', 'typ': 'JWT'})}.{segment(claims)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64u(mac)}"


def form(assertion: str, **extra: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
        **extra,
    }


async def token(client: httpx.AsyncClient, broker: Broker, who: str, **kw: Any) -> str:
    """A fresh access token for ``who`` through the real token endpoint."""
    r = await client.post(
        "/v1/token", data=token_form(broker.keystore(who), TOKEN_URL, now=int(time.time()), **kw)
    )
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


def assert_problem(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert {"type", "title", "status", "detail"} <= set(body)
    assert body["status"] == status
    if code is not None:
        assert body["type"].endswith("/" + code), body
    assert "Traceback" not in r.text
    return body
