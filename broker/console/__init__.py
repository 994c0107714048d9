"""The web console: server-rendered pages for auditors and administrators under ``/console``,
served by the API's own FastAPI app (``broker.console.mount.mount_console``, called by
``broker.runtime.app.create_app``).

Layout:

    broker/console/web.py        ConsoleState, render, page(scope), checked_form, ConsolePage,
                                 cookies, ConsoleHeaders (the console's CSP)
    broker/console/sessions.py   server-side sessions, one-time sign-in links, CSRF compare
    broker/console/i18n.py       catalogues (data/console/i18n/*.json), plurals, negotiation
    broker/console/auth.py       sign-in (session links, the dev login), sign-out, language
    broker/console/auditor.py    the auditor's pages (scope audit:read)
    broker/console/queries.py    what the log and integrity pages read
    broker/console/figures.py    what the pictures and the flow page read
    broker/console/charts.py     small accessible SVG charts, rendered on the server
    broker/console/admin*.py     the administrator's pages (scope admin; part 2)
    broker/data/console/templates/        Jinja2 templates (autoescaped); admin/ for part 2
    broker/data/console/static/           CSS and JS, vendored: no other host is ever asked

Templates and static files live under ``broker/data/`` because that is what the wheel ships
(``[tool.setuptools.package-data]``).

How to add a page (what part 2 does for ``admin*.py``)::

    from typing import Annotated
    from fastapi import APIRouter, Request
    from broker.console.web import PREFIX, ConsoleState, Session, checked_form, page, render
    # its words: add "admin.agencies" to each of broker/data/console/i18n/{en,es,fr,nl}.json

    Admin = Annotated[Session, page("admin")]   # a signed-in user with the admin scope

    def admin_router(console: ConsoleState) -> APIRouter:
        router = APIRouter(prefix=PREFIX + "/admin", include_in_schema=False)

        @router.get("/agencies")
        def agencies(request: Request, who: Admin):
            rows = console.api.registry.agencies()
            return render(request, "admin/agencies.html", {"rows": rows}, session=who)

        @router.post("/agencies/{agency}/suspend")
        async def suspend(request: Request, agency: str, who: Admin):
            fields = await checked_form(request, who)   # CSRF first: 403 + audit if wrong
            ...                                         # act, audit, then redirect (303)

        return router

Then list the router in ``_page_routers`` in ``mount.py`` (one line; ``admin_router`` is picked up
automatically if ``broker.console.admin`` defines it). A template extends the layout::

    {% extends "base.html" %}
    {% block title %}{{ _("admin.agencies") }}{% endblock %}
    {% block content %} ... <form method="post" action="...">
        <input type="hidden" name="csrf" value="{{ csrf }}"> ... {% endblock %}

Rules every page keeps: no inline ``<script>`` or ``style=`` (the CSP refuses them: put CSS
in ``static/console.css`` and JS in a ``static/*.js`` file), every state change is a POST
with the CSRF field, every string goes through ``_()`` with English and Spanish, every
input is bounded (FastAPI ``Query(max_length=...)``), and a refusal is ``raise
ConsolePage(status, key, audit=reason, who=...)``. The nav shows an "Administration" link
to ``/console/admin/`` for sessions with the ``admin`` scope.
"""
