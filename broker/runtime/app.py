"""The broker's whole HTTP app: the API with the web console mounted on it.

The API (``broker.api``) and the console (``broker.console``, which builds on the API's
state and routers) are separate layers; this module is where they meet, for ``istmo up``,
the deploy units and the tests that exercise both.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from fastapi import FastAPI

from broker.api.app import create_api
from broker.api.context import ApiState
from broker.api.guard import ApiLimits
from broker.api.oauth import TokenAuthority
from broker.clock import SYSTEM_CLOCK, Clock
from broker.console.mount import mount_console
from broker.directory.service import DirectoryService
from broker.store.registry import Registry

__all__ = ["create_app"]


def create_app(
    registry: Registry,
    directory: DirectoryService,
    bus_ok: Callable[[], bool],
    *,
    auth: TokenAuthority | None = None,
    limits: ApiLimits | None = None,
    console_dev_login: bool = False,
    allowed_hosts: Collection[str] = (),
    clock: Clock = SYSTEM_CLOCK,
    base_url: str | None = None,
) -> FastAPI:
    """Build the API and its console over live services.

    Args:
        registry: the broker's store.
        directory: the live directory and policy.
        bus_ok: whether NATS is connected (for ``/readyz``).
        auth: the token authority; without one, everything that needs a token answers
            503 and the public endpoints still work.
        limits: body, page and rate limits.
        console_dev_login: offer the web console's development login (``istmo up`` only).
        clock: the time of the audit events the API and the console write.
        allowed_hosts: host names served besides loopback, the token issuer's and
            ``base_url``'s.
        base_url: where the links the API and the console build point
            (``Settings.base_url``); default: the token issuer.
    """
    app = create_api(
        registry,
        directory,
        bus_ok,
        auth=auth,
        limits=limits,
        clock=clock,
        allowed_hosts=allowed_hosts,
        base_url=base_url,
    )
    state: ApiState = app.state.istmo
    mount_console(app, state, dev_login=console_dev_login)
    return app
