"""A method a path does not serve is 405 with an ``Allow`` header naming every method the
path does serve, as the OpenAPI document lists them (RFC 9110 15.5.6)."""

from __future__ import annotations

import re

from tests.api.conftest import AppFactory, connect

_PARAM = re.compile(r"\{[^}]+\}")
_VERBS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}


async def test_every_405_allows_what_the_openapi_document_lists(make_app: AppFactory) -> None:
    async with connect(make_app()) as client:
        doc = (await client.get("/openapi.json")).json()
        checked = 0
        for template, ops in doc["paths"].items():
            documented = {m.upper() for m in ops if m in _VERBS}
            if "GET" in documented:
                documented.add("HEAD")
            absent = next(m for m in ("PATCH", "PUT", "DELETE") if m not in documented)
            path = _PARAM.sub("1", template)
            r = await client.request(absent, path)
            assert r.status_code == 405, (absent, path, r.status_code)
            allowed = {m.strip() for m in r.headers["allow"].split(",")}
            assert allowed == documented, (path, allowed, documented)
            checked += 1
        assert checked >= 20
