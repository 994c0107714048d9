"""The console over the real app, a real data directory (the demo directory, the demo
administrator, a sequenced audit log with signed tree heads) through httpx.ASGITransport.

``console_broker`` prepares the data directory once per module as ``istmo up`` does;
``console_app`` builds the real app over it (``dev_login`` on or off); ``signed_in`` gives
a client whose session came from a real one-time link obtained with a real bearer token.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from broker.audit import events
from broker.audit.sequencer import open_sequencer
from broker.config import Settings
from broker.directory.admins import create_demo_admin
from broker.runtime.app import create_app
from broker.runtime.stack import Stack
from broker.store.registry import AuditRow
from schemas.audit import AuditEvent
from tests.api.conftest import BASE, TOKEN_URL, Broker, bearer
from tests.console.browser import CHROMIUM, VIEWPORT
from tests.storage_engines import Storage

__all__ = [
    "BASE",
    "BULLETIN",
    "DECIDED",
    "NO_MILITARY",
    "TOKEN_URL",
    "csrf_of",
    "events_of",
    "link_for",
    "sequence",
    "sign_in",
    "token_for",
]

BULLETIN = "00000000-0000-4000-8000-0000000000b1"  # recorded per candidate (before ADR 8)
DECIDED = "00000000-0000-4000-8000-0000000000b2"  # the same decisions in one event (ADR 8)


# A candidate policy the admin tests adopt, check and simulate.
NO_MILITARY = """
@id("sica.test-no-military")
@reason("test: SICA bulletins go to no military agency")
forbid (principal, action == Istmo::Action::"receive", resource)
when
{
  principal.sector == "military" &&
  resource.releasableTo.contains(Istmo::Jurisdiction::"SICA")
};
"""


def decided_events(now_ms: int) -> tuple[AuditEvent, ...]:
    """What the relay writes now for DECIDED: the decisions of BULLETIN in one event."""
    return events.bulletin_decided(
        DECIDED,
        originator="gt-police",
        policy_version="p1",
        directory_version="d1",
        groups=[
            events.DecisionGroup("routed", ("permit-sica",), ("hn-police",)),
            events.DecisionGroup("routed", ("permit-rc",), ("rc-drugs",)),
            events.DecisionGroup("releasability", ("forbid-rel-to",), ("jm-police",)),
        ],
        at=now_ms - 4000,
    )


def relay_events(now_ms: int) -> list[AuditEvent]:
    """What the relay wrote for one bulletin before ADR 8: accepted, routed to two,
    denied to one, received by one."""
    b = BULLETIN
    data = {"originator": "gt-police", "policy_version": "p1", "directory_version": "d1"}
    return [
        AuditEvent(
            event_id=f"{b}:accepted",
            type="bulletin.accepted",
            time=now_ms - 5000,
            actor="gt-police",
            subject=b,
            bulletin_id=b,
            data={
                "topic": "drug-trafficking",
                "classification": "RESTRICTED",
                "tlp": "AMBER",
                "rel_to": ("SICA",),
                "policy_version": "p1",
            },
        ),
        AuditEvent(
            event_id=f"{b}:routed:rc-drugs",
            type="bulletin.routed",
            time=now_ms - 4000,
            actor="relay",
            subject="rc-drugs",
            bulletin_id=b,
            data={**data, "policy_ids": ("permit-rc",)},
        ),
        AuditEvent(
            event_id=f"{b}:routed:hn-police",
            type="bulletin.routed",
            time=now_ms - 4000,
            actor="relay",
            subject="hn-police",
            bulletin_id=b,
            data={**data, "policy_ids": ("permit-sica",)},
        ),
        AuditEvent(
            event_id=f"{b}:denied:jm-police",
            type="bulletin.denied",
            time=now_ms - 4000,
            actor="relay",
            subject="jm-police",
            bulletin_id=b,
            reason="releasability",
            data={**data, "policy_ids": ("forbid-rel-to",)},
        ),
        AuditEvent(
            event_id=f"{b}:received:rc-drugs",
            type="bulletin.received",
            time=now_ms - 1000,
            actor="rc-drugs",
            subject=b,
            bulletin_id=b,
            data={"received_at": now_ms - 1000},
        ),
    ]


def sequence(settings: Settings) -> None:
    """Integrate every pending audit event and sign a tree head, as the stack's sequencer."""
    seq = open_sequencer(settings, out=lambda _line: None)
    try:
        seq.drain()
    finally:
        seq.close()


@pytest.fixture(scope="module")
def console_broker(tmp_path_factory: pytest.TempPathFactory, storage_module: Storage) -> Broker:
    """The broker on each storage engine (SQLite, then a PostgreSQL database of its own)."""
    settings = storage_module.settings(tmp_path_factory.mktemp("console") / "istmo")
    stack = Stack(settings, out=lambda _line: None)
    stack.prepare()
    assert stack.registry is not None
    create_demo_admin(
        stack.registry, settings.keys_dir, stack.directory_key.verify_key, now=int(time.time())
    )
    sequence(settings)  # a first signed tree head: the demo directory
    now_ms = time.time_ns() // 1_000_000
    stack.registry.record([], [*relay_events(now_ms), *decided_events(now_ms)])
    sequence(settings)  # a second one: the bulletins
    return Broker(stack, settings)


AppFactory = Callable[..., FastAPI]


@pytest.fixture
def console_app(console_broker: Broker) -> AppFactory:
    def make(*, dev_login: bool = False) -> FastAPI:
        b = console_broker
        return create_app(
            b.registry, b.directory, lambda: True, auth=b.authority(), console_dev_login=dev_login
        )

    return make


def connect(app: FastAPI, base: str = BASE) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base)


@pytest_asyncio.fixture
async def web(console_app: AppFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with connect(console_app()) as c:
        yield c


async def token_for(client: httpx.AsyncClient, broker: Broker, who: str) -> str:
    from clients.oauth import token_form

    r = await client.post(
        "/v1/token", data=token_form(broker.keystore(who), TOKEN_URL, now=int(time.time()))
    )
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


async def link_for(client: httpx.AsyncClient, broker: Broker, who: str) -> str:
    tok = await token_for(client, broker, who)
    r = await client.post("/console/session-link", headers=bearer(tok))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["expires_in"] == 60
    return str(body["url"])


async def sign_in(client: httpx.AsyncClient, broker: Broker, who: str) -> None:
    url = await link_for(client, broker, who)
    r = await client.get(url.removeprefix(BASE))
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/console/"


@pytest_asyncio.fixture
async def admin(
    console_app: AppFactory, console_broker: Broker
) -> AsyncIterator[httpx.AsyncClient]:
    """A client signed in to the console as the demo admin."""
    async with connect(console_app()) as c:
        await sign_in(c, console_broker, "admin")
        yield c


@pytest_asyncio.fixture
async def auditor(
    console_app: AppFactory, console_broker: Broker
) -> AsyncIterator[httpx.AsyncClient]:
    """A client signed in to the console as the demo auditor."""
    async with connect(console_app()) as c:
        await sign_in(c, console_broker, "auditor")
        yield c


def events_of(broker: Broker, type_: str, after: int) -> list[AuditRow]:
    """Audit events of ``type_`` recorded after seq ``after``."""
    return broker.registry.audit_events(type_=type_, after_seq=after, limit=1000)


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF field in the page"
    return m.group(1)


def data_dir(broker: Broker) -> Path:
    return broker.settings.data_dir


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium under Playwright, one per test module (tests/console/browser.py)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page (en-US, the console's viewport); ``page.errors`` collects its console
    errors and uncaught exceptions."""
    context = browser.new_context(viewport=VIEWPORT, locale="en-US")
    pg = context.new_page()
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.errors = errors
    yield pg
    context.close()
