"""A TAXII 2.1 server over the agency's archive: a plain ASGI application (ADR 23).

Read-only: discovery, one API root (``/istmo/``), one collection per topic, and each
collection's objects, manifest, an object and its versions. Every request passes, in
order: (1) the Host header is one the server was told it is reached by; (2) the
credentials match the agency's bearer token or basic-auth pair (compared in constant
time; there is no anonymous access); (3) the method is GET; (4) the Accept header admits
``application/taxii+json;version=2.1``. Pages run by the archive's sequence (``next`` is
the last sequence served) and its archive time (``added_after``): index ranges, never
an offset. Withdrawn and expired bulletins are not served, nor TLP levels above the
configured ceiling. Running it (uvicorn) is ``clients.taxii_commands``'s job.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import parse_qsl

from clients.archive import MAX_PAGE, Archive, ArchivedBulletin
from clients.stix import (
    STIX_MEDIA_TYPE,
    collection_id,
    stix_objects_of,
    topic_of_collection,
)
from schemas.errors import ConfigError
from schemas.labels import TOPICS

__all__ = ["TAXII_MEDIA_TYPE", "Credentials", "TaxiiApp", "taxii_time"]

log = logging.getLogger("istmo.taxii")

TAXII_MEDIA_TYPE: Final = "application/taxii+json;version=2.1"
API_ROOT: Final = "istmo"
DEFAULT_LIMIT = 100
MAX_QUERY_CHARS = 4096
MAX_MATCH_IDS = 100
_TAXII_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d{1,6})?Z$")
_STIX_ID = re.compile(
    r"^(report|note)--([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$"
)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def taxii_time(us: int) -> str:
    """Microseconds since the epoch as a TAXII timestamp (microsecond precision, UTC)."""
    return datetime.fromtimestamp(us / 1_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: str) -> int:
    """A TAXII timestamp as microseconds since the epoch; ValueError if it is not one."""
    m = _TAXII_TIME.fullmatch(text)
    if m is None:
        raise ValueError(text)
    at = datetime.fromisoformat(m.group(1)).replace(tzinfo=UTC)
    frac = (m.group(2) or ".")[1:].ljust(6, "0")
    return int(at.timestamp()) * 1_000_000 + int(frac)


@dataclass(frozen=True)
class Credentials:
    """What a request must present: ``Bearer <token>`` or ``Basic <user:password>``.
    Only a SHA-256 of the expected header is kept, compared in constant time."""

    scheme: str  # "Bearer" or "Basic"
    digest: bytes

    @classmethod
    def bearer(cls, token: str) -> Credentials:
        if len(token) < 32:
            raise ConfigError(
                "a TAXII bearer token is at least 32 characters",
                hint="make one with `openssl rand -hex 32 > taxii.token && chmod 600 taxii.token`",
            )
        return cls("Bearer", hashlib.sha256(f"Bearer {token}".encode()).digest())

    @classmethod
    def basic(cls, user: str, password: str) -> Credentials:
        if not user or ":" in user or len(password) < 16:
            raise ConfigError(
                "TAXII basic auth needs a user (no colon) and a password of 16 characters or more",
                hint="write USER:PASSWORD on the first line of the file",
            )
        pair = base64.b64encode(f"{user}:{password}".encode()).decode()
        return cls("Basic", hashlib.sha256(f"Basic {pair}".encode()).digest())

    def admits(self, header: str | None) -> bool:
        given = hashlib.sha256((header or "").strip().encode()).digest()
        return hmac.compare_digest(given, self.digest)


class _Refusal(Exception):
    def __init__(self, status: int, title: str, description: str) -> None:
        super().__init__(title)
        self.status, self.title, self.description = status, title, description


@dataclass(frozen=True)
class _Page:
    items: list[ArchivedBulletin]
    more: bool


class TaxiiApp:
    """The ASGI application.

    Args:
        archive: the agency's archive, open.
        credentials: what every request must present.
        hosts: the Host header values the server answers to (``host:port``).
        base_url: the URL clients reach it by (for discovery), without a trailing slash.
        tlps: the TLP levels it serves (a ceiling: RED is left out unless asked for).
    """

    def __init__(
        self,
        archive: Archive,
        credentials: Credentials,
        *,
        hosts: frozenset[str],
        base_url: str,
        tlps: tuple[str, ...],
    ) -> None:
        self.archive = archive
        self.credentials = credentials
        self.hosts = frozenset(h.lower() for h in hosts)
        self.base_url = base_url.rstrip("/")
        self.tlps = tlps

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = (await receive())["type"]
                if event == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif event == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            status, body, extra = self._answer(scope, headers)
        except _Refusal as r:
            if r.status in (400, 401, 403, 421):
                client = scope.get("client") or ("?", 0)
                log.warning(
                    "refused %s %s from %s: %s", scope["method"], scope["path"][:200], client[0],
                    r.title,
                )  # fmt: skip
            status, body = (
                r.status,
                _json(
                    {"title": r.title, "description": r.description, "http_status": str(r.status)}
                ),
            )
            extra = []
            if r.status == 401:
                realm = f'{self.credentials.scheme} realm="istmo"'
                extra = [(b"www-authenticate", realm.encode())]
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", TAXII_MEDIA_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    # ------------------------------------------------------------------ checks
    def _answer(
        self, scope: Scope, headers: dict[str, str]
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        # 1. The Host header names this server (a DNS-rebinding page cannot reach it).
        if headers.get("host", "").lower() not in self.hosts:
            raise _Refusal(421, "Misdirected request", "this server does not answer to that host")
        # 2. The agency's credentials, never anonymous.
        if not self.credentials.admits(headers.get("authorization")):
            raise _Refusal(401, "Unauthorized", "give the agency's TAXII credentials")
        # 3. Read-only.
        if scope["method"] != "GET":
            raise _Refusal(405, "Method not allowed", "this TAXII server is read-only")
        # 4. A TAXII 2.1 client.
        if not _accepts_taxii(headers.get("accept", "")):
            raise _Refusal(
                406, "Not acceptable", f"send Accept: {TAXII_MEDIA_TYPE} (TAXII 2.1 only)"
            )
        raw_query = scope.get("query_string", b"")
        if len(raw_query) > MAX_QUERY_CHARS:
            raise _Refusal(400, "Query too long", f"at most {MAX_QUERY_CHARS} characters")
        query = parse_qsl(raw_query.decode("latin-1"), keep_blank_values=True)
        return self._route(scope["path"], dict(query))

    def _route(
        self, path: str, query: dict[str, str]
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        parts = [p for p in path.split("/") if p]
        if parts == ["taxii2"]:
            return 200, _json(self._discovery()), []
        if not parts or parts[0] != API_ROOT:
            raise _Refusal(404, "Not found", "the API root is /istmo/")
        rest = parts[1:]
        if not rest:
            return 200, _json(self._api_root()), []
        if rest == ["collections"]:
            return 200, _json({"collections": [_collection(t) for t in TOPICS]}), []
        if rest[0] != "collections" or len(rest) < 2:
            raise _Refusal(404, "Not found", "no such resource")
        topic = topic_of_collection(rest[1])
        if topic is None:
            raise _Refusal(404, "Not found", "no such collection")
        tail = rest[2:]
        if not tail:
            return 200, _json(_collection(topic)), []
        if tail == ["objects"]:
            page = self._page(topic, query)
            objects = [stix_objects_of(i.bulletin) for i in page.items]
            return 200, _json(_envelope("objects", objects, page)), _added_headers(page)
        if tail == ["manifest"]:
            page = self._page(topic, query)
            records = [
                {
                    "id": o["id"],
                    "date_added": taxii_time(i.entry.added_us),
                    "version": o["modified"],
                    "media_type": STIX_MEDIA_TYPE,
                }
                for i, o in ((i, stix_objects_of(i.bulletin)) for i in page.items)
            ]
            return 200, _json(_envelope("objects", records, page)), _added_headers(page)
        if tail[0] == "objects" and len(tail) in (2, 3) and tail[2:] in ([], ["versions"]):
            page = self._one(topic, tail[1])
            if len(tail) == 3:
                versions = [stix_objects_of(i.bulletin)["modified"] for i in page.items]
                return 200, _json({"more": False, "versions": versions}), _added_headers(page)
            objects = [stix_objects_of(i.bulletin) for i in page.items]
            return 200, _json(_envelope("objects", objects, page)), _added_headers(page)
        raise _Refusal(404, "Not found", "no such resource")

    # ------------------------------------------------------------------ resources
    def _discovery(self) -> dict[str, Any]:
        root = f"{self.base_url}/{API_ROOT}/"
        return {
            "title": f"Istmo: bulletins received by {self.archive.agency}",
            "description": "Read-only TAXII 2.1 feed of the agency's Istmo archive",
            "default": root,
            "api_roots": [root],
        }

    def _api_root(self) -> dict[str, Any]:
        return {
            "title": f"Istmo bulletins of {self.archive.agency}",
            "description": "One collection per topic; bulletins as STIX 2.1 reports and notes",
            "versions": [TAXII_MEDIA_TYPE],
            "max_content_length": 0,
        }

    def _page(self, topic: str, query: dict[str, str]) -> _Page:
        unknown = [k for k in query if k not in _FILTERS]
        if unknown:
            raise _Refusal(400, "Unknown parameter", f"{unknown[0][:40]!r} is not supported")
        limit = _limit(query.get("limit"))
        after_seq = _next(query.get("next"))
        after_us = 0
        if "added_after" in query:
            try:
                after_us = _parse_time(query["added_after"])
            except ValueError:
                raise _Refusal(
                    400, "Bad added_after", "give a timestamp like 2026-12-05T10:30:00.000Z"
                ) from None
        if "match[id]" in query:
            return self._by_ids(topic, query["match[id]"], query)
        replies = _replies(query)
        if replies == "none" or not _spec_ok(query) or not _version_ok(query):
            return _Page([], False)
        items = self.archive.after(
            topic,
            after_seq=after_seq,
            after_us=after_us,
            limit=limit + 1,
            tlps=self.tlps,
            replies=None if replies == "all" else replies == "note",
            now=int(time.time()),
        )
        return _Page(items[:limit], len(items) > limit)

    def _by_ids(self, topic: str, ids: str, query: dict[str, str]) -> _Page:
        wanted = ids.split(",")
        if len(wanted) > MAX_MATCH_IDS:
            raise _Refusal(400, "Too many ids", f"match[id] takes at most {MAX_MATCH_IDS}")
        items: list[ArchivedBulletin] = []
        for oid in wanted:
            items += self._one(topic, oid, missing_ok=True).items
        return _Page(items, False)

    def _one(self, topic: str, oid: str, *, missing_ok: bool = False) -> _Page:
        m = _STIX_ID.fullmatch(oid)
        got = self.archive.get(m.group(2)) if m else None
        now = int(time.time())
        visible = (
            got is not None
            and m is not None
            and got.entry.topic == topic
            and got.entry.tlp in self.tlps
            and got.entry.withdrawn_at is None
            and (got.entry.expires_at is None or got.entry.expires_at > now)
            and m.group(1) == ("note" if got.entry.in_reply_to else "report")
        )
        if not visible or got is None:
            if missing_ok:
                return _Page([], False)
            raise _Refusal(404, "Not found", "no such object in this collection")
        return _Page([got], False)


_FILTERS: Final = frozenset(
    {"added_after", "limit", "next", "match[id]", "match[type]", "match[version]",
     "match[spec_version]"}
)  # fmt: skip


def _accepts_taxii(accept: str) -> bool:
    for item in accept.split(","):
        parts = [p.strip().lower() for p in item.split(";")]
        params = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        if parts[0] == "application/taxii+json" and params.get("version", "2.1") == "2.1":
            return True
    return False


def _limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIMIT
    if not text.isdigit() or len(text) > 9 or int(text) < 1:
        raise _Refusal(400, "Bad limit", f"limit is a whole number from 1 (at most {MAX_PAGE})")
    return min(int(text), MAX_PAGE)


def _next(text: str | None) -> int:
    if text is None or text == "":
        return 0
    if not text.isdigit() or len(text) > 18:
        raise _Refusal(400, "Bad next", "give next as the server returned it")
    return int(text)


def _replies(query: dict[str, str]) -> str:
    """Which bulletins ``match[type]`` asks for: ``all``, ``report``, ``note`` or ``none``."""
    if "match[type]" not in query:
        return "all"
    types = set(query["match[type]"].split(",")) & {"report", "note"}
    if types == {"report", "note"}:
        return "all"
    return types.pop() if types else "none"


def _spec_ok(query: dict[str, str]) -> bool:
    return "2.1" in query.get("match[spec_version]", "2.1").split(",")


def _version_ok(query: dict[str, str]) -> bool:
    # One version of each object: first, last and all are the same one. A timestamp is
    # not supported as a version filter: nothing matches it rather than everything.
    wanted = set(query.get("match[version]", "last").split(","))
    return bool(wanted & {"first", "last", "all"})


def _envelope(key: str, items: list[dict[str, Any]], page: _Page) -> dict[str, Any]:
    shown: dict[str, Any] = {"more": page.more}
    if page.more:
        shown["next"] = str(page.items[-1].entry.seq)
    if items:
        shown[key] = items
    return shown


def _added_headers(page: _Page) -> list[tuple[bytes, bytes]]:
    if not page.items:
        return []
    first, last = page.items[0].entry.added_us, page.items[-1].entry.added_us
    return [
        (b"x-taxii-date-added-first", taxii_time(first).encode()),
        (b"x-taxii-date-added-last", taxii_time(last).encode()),
    ]


def _collection(topic: str) -> dict[str, Any]:
    return {
        "id": collection_id(topic),
        "title": topic,
        "description": f"Istmo bulletins on {topic} received by this agency",
        "can_read": True,
        "can_write": False,
        "media_types": [STIX_MEDIA_TYPE],
    }


def _json(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
