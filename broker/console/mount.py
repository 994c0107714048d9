"""Mount the console's pages, static files and headers on the API's app."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, FastAPI
from starlette.responses import RedirectResponse
from starlette.staticfiles import StaticFiles

from broker.api.context import ApiState
from broker.console.admin import admin_router
from broker.console.auditor import auditor_router
from broker.console.auth import auth_router
from broker.console.web import (
    PREFIX,
    STATIC,
    ConsoleHeaders,
    ConsolePage,
    ConsoleState,
    on_console_page,
)

__all__ = ["mount_console"]


def _page_routers() -> list[Callable[[ConsoleState], APIRouter]]:
    return [auth_router, auditor_router, admin_router]


def mount_console(app: FastAPI, api: ApiState, *, dev_login: bool = False) -> ConsoleState:
    """Serve the console from ``app`` under ``/console``.

    Args:
        app: the API's app (its guard is already added; the console's headers go outside).
        api: the API's state (registry, directory, token authority).
        dev_login: offer the development login (``istmo up`` only).
    """
    console = ConsoleState(api=api, dev_login=dev_login)
    app.state.console = console
    app.add_exception_handler(ConsolePage, on_console_page)  # type: ignore[arg-type]  # Starlette's handler type is loose
    for make in _page_routers():
        app.include_router(make(console))

    @app.get(PREFIX, include_in_schema=False)
    def console_root() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/", status_code=307)

    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC), name="console-static")
    app.add_middleware(ConsoleHeaders)
    return console
