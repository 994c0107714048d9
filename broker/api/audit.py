"""The auditors' HTTP endpoints (scope ``audit:read``): entries, search, signed tree heads,
inclusion and consistency proofs, and the log's public key.

Everything an auditor needs to verify the log from the API alone, with their own tool
(``istmo audit verify --from-url``): an entry is served as the exact bytes its leaf hash
covers (``leaf``, base64) beside the parsed event, a tree head as the document the log
signed, byte for byte as stored, and proofs as base64 hashes, bottom up (RFC 9162).

Every request an auditor makes of the log is itself an ``audit.queried`` event, recorded
before the answer leaves (no access without an audit event): actor the token's subject,
subject ``audit.<what>``, the filter and the row count. The log key is public and is not
recorded: it reveals no entry, and auditors pin it out of band anyway (``log.pub``).

Sizes, indices and times are bounded in the query (at most 2**53 - 1), so nothing a client
sends reaches the database as an integer it cannot hold. A request that does not fit the
log (an index outside the tree, a size the log never signed, old > new) is a 400 problem;
a log the database cannot serve, or one whose stored nodes are gone, is a 503.

Left to others: the log itself (``broker.audit.log``), the command line
(``broker.cli.audit``, ``clients.log_verifier``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError

from broker.api.context import (
    AUTHED,
    BODY_MODELS,
    ApiProblem,
    ApiState,
    WholeNumber,
    problem_responses,
    require,
)
from broker.api.oauth import Caller
from broker.audit import events
from broker.audit.log import (
    MAX_PAGE,
    AuditLog,
    EntryFilter,
    LogCorrupt,
    LogEntry,
    MissingNode,
    shared_log,
)
from broker.audit.sequencer import DEFAULT_ORIGIN, log_verify_key
from broker.audit.witnessing import read_checkpoint
from schemas.audit import AuditEvent, EventType
from schemas.canonical import b64e
from schemas.errors import ConfigError, EnvelopeError
from schemas.ids import BULLETIN_ID_PATTERN
from schemas.treehead import SignedTreeHead, parse_signed_tree_head

__all__ = ["audit_router"]

MAX_INT = 2**53 - 1  # the largest size, index or time a query may name
_T = TypeVar("_T")

Auditor = Annotated[Caller, require("audit:read")]
Size = Annotated[WholeNumber, Query(ge=0, le=MAX_INT)]
AfterIndex = Annotated[
    WholeNumber,
    Query(ge=-1, le=MAX_INT, description="Entries after this index (-1: from the start)"),
]
Limit = Annotated[
    WholeNumber,
    Query(ge=1, le=MAX_INT, description=f"Entries per page; above {MAX_PAGE} it is capped"),
]
EpochMs = Annotated[WholeNumber | None, Query(ge=0, le=MAX_INT, description="Epoch milliseconds")]

_HEAD_DOC = {
    "description": "The SignedTreeHead document, byte for byte as the log signed and stored it",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SignedTreeHead"}}},
}
if SignedTreeHead not in BODY_MODELS:
    BODY_MODELS.append(SignedTreeHead)


# ---------------------------------------------------------------------- response models
class AuditEntry(BaseModel):
    """One log entry: the bytes hashed, their stored leaf hash, and the event they hold."""

    index: int = Field(description="Position in the log, from 0")
    leaf: str = Field(
        description="Base64 of the exact stored bytes the leaf hash covers: "
        "SHA-256(0x00 || leaf). Canonical JSON of the AuditEvent in an honest log."
    )
    leaf_hash: str = Field(description="Base64 of the leaf hash, as stored")
    entry: dict[str, Any] | None = Field(
        description="The leaf parsed: an AuditEvent (schemas/json/audit-event.schema.json); "
        "null if the stored bytes are not one"
    )


class EntryPage(BaseModel):
    entries: list[AuditEntry]
    limit: int = Field(description="The page size used (the request's, capped)")
    next_after_index: int | None = Field(
        description="Pass as after_index for the next page; null on the last one"
    )


class TreeHeadPage(BaseModel):
    heads: list[SignedTreeHead] = Field(description="Signed tree heads, smallest size first")
    limit: int
    next_after_size: int | None = Field(
        description="Pass as after_size for the next page; null on the last one"
    )


class InclusionProof(BaseModel):
    index: int
    tree_size: int
    proof: list[str] = Field(description="Base64 hashes, bottom up (RFC 9162 2.1.3.1)")


class ConsistencyProof(BaseModel):
    old_size: int
    new_size: int
    proof: list[str] = Field(description="Base64 hashes (RFC 9162 2.1.4.1); empty if old is 0")


class LogKey(BaseModel):
    """The log's public key: pin it, then every signed tree head must verify under it."""

    kid: str = Field(description="The key id tree heads name (sig-...)")
    public: str = Field(
        description="Base64 of the 32-byte Ed25519 public key: the contents of the broker's "
        "log.pub, to save and pass as --log-key"
    )
    algorithm: str = "Ed25519"
    origin: str = Field(description="The log's name, signed into every tree head")
    signed: str = Field(
        description="What a tree head's sig covers: this prefix, then the canonical JSON "
        "of its head"
    )


# ---------------------------------------------------------------------- the log
def _entry(e: LogEntry) -> dict[str, Any]:
    # Parsed only if the bytes are an audit event (strict: no NaN, no lone surrogate, no
    # float), so what is shown always serializes; edited bytes are still served as ``leaf``,
    # for the auditor's verifier to catch.
    try:
        AuditEvent.model_validate_json(e.leaf)
        value = json.loads(e.leaf)
    except (ValidationError, ValueError, RecursionError):
        value = None
    return {
        "index": e.index,
        "leaf": b64e(e.leaf),
        "leaf_hash": b64e(e.leaf_hash),
        "entry": value if isinstance(value, dict) else None,
    }


def _page(entries: list[LogEntry], limit: int) -> dict[str, Any]:
    return {
        "entries": [_entry(e) for e in entries],
        "limit": limit,
        "next_after_index": entries[-1].index if len(entries) == limit else None,
    }


def _head(size: int, raw: bytes) -> SignedTreeHead:
    try:
        return parse_signed_tree_head(raw)
    except EnvelopeError as exc:
        raise LogCorrupt(f"the stored tree head at size {size} is malformed") from exc


def _b64s(hashes: list[bytes]) -> list[str]:
    return [b64e(h) for h in hashes]


# ---------------------------------------------------------------------- the router
def audit_router(state: ApiState) -> APIRouter:
    """The ``audit:read`` endpoints (and the public log key) over ``state``'s registry."""
    router = APIRouter(tags=["audit"])
    url = state.registry.url

    def opened() -> AuditLog:
        return shared_log(url)

    registry = state.registry

    def record(who: Caller, what: str, query: dict[str, Any], rows: int) -> None:
        """The query's audit event, before its answer: AuditStoreError (503) otherwise."""
        event = events.audit_queried(who.id, f"audit.{what}", query, rows, at=state.clock.now_ms())
        registry.record([], [event])

    @router.get(
        "/v1/audit/entries",
        summary="A page of log entries, in index order",
        description=(
            f"Entries after `after_index`, at most `limit` (capped at {MAX_PAGE}). Each "
            "carries the exact bytes its leaf hash covers. Recorded as `audit.queried`."
        ),
        response_model=EntryPage,
        responses=problem_responses(*AUTHED),
    )
    def entries(who: Auditor, after_index: AfterIndex = -1, limit: Limit = 100) -> dict[str, Any]:
        size = min(limit, MAX_PAGE)
        got = opened().entries(after_index, size)
        record(who, "entries", {"after_index": after_index, "limit": size}, len(got))
        return _page(got, size)

    @router.get(
        "/v1/audit/entries/{index}",
        summary="One log entry",
        description="The entry at `index`, as in a page. Recorded as `audit.queried`.",
        response_model=AuditEntry,
        responses=problem_responses(404, *AUTHED),
    )
    def entry(
        who: Auditor, index: Annotated[WholeNumber, PathParam(ge=0, le=MAX_INT)]
    ) -> dict[str, Any]:
        got = opened().entry(index)
        record(who, "entry", {"index": index}, 0 if got is None else 1)
        if got is None:
            raise ApiProblem(404, "no_entry", "the log has no such entry")
        return _entry(got)

    @router.get(
        "/v1/audit/search",
        summary="Entries by agency, bulletin, event type and time",
        description=(
            "Every filter given must match. `agency` matches the actor, the subject, or a "
            "candidate a `bulletin.decided` event lists (routed or denied), also through an "
            "agency set it names (`from.N`, listed once by `agencies.listed` events); in logs from "
            "before that event, a `bulletin.routed` or `bulletin.denied` event names the "
            "candidate as subject. Times are epoch "
            f"milliseconds, `until` exclusive. In index order, at most `limit` (capped at "
            f"{MAX_PAGE}); page on with `after_index`. Recorded as `audit.queried`."
        ),
        response_model=EntryPage,
        responses=problem_responses(*AUTHED),
    )
    def search(
        who: Auditor,
        agency: Annotated[
            str | None,
            Query(min_length=1, max_length=200, description="actor, subject or candidate"),
        ] = None,
        bulletin: Annotated[
            str | None, Query(pattern=BULLETIN_ID_PATTERN, max_length=36, description="an id")
        ] = None,
        event_type: Annotated[
            EventType | None, Query(alias="type", description="an event type")
        ] = None,
        since: EpochMs = None,
        until: EpochMs = None,
        after_index: AfterIndex = -1,
        limit: Limit = 100,
    ) -> dict[str, Any]:
        size = min(limit, MAX_PAGE)
        f = EntryFilter(
            agency=agency,
            bulletin_id=bulletin,
            type=event_type,
            since_ms=since,
            until_ms=until,
            after_index=after_index,
            limit=size,
        )
        got = opened().search(f)
        query = {
            "agency": agency,
            "bulletin": bulletin,
            "type": event_type,
            "since": since,
            "until": until,
            "after_index": after_index,
            "limit": size,
        }
        record(who, "search", query, len(got))
        return _page(got, size)

    @router.get(
        "/v1/audit/tree-heads",
        summary="A page of the signed tree heads, smallest size first",
        description=(
            "Every head the log signed (one per sequencer batch) with size above "
            f"`after_size`, at most `limit` (capped at {MAX_PAGE}). Recorded as "
            "`audit.queried`."
        ),
        response_model=TreeHeadPage,
        responses=problem_responses(*AUTHED),
    )
    def tree_heads(
        who: Auditor,
        after_size: Annotated[WholeNumber, Query(ge=-1, le=MAX_INT)] = -1,
        limit: Limit = 100,
    ) -> dict[str, Any]:
        size = min(limit, MAX_PAGE)
        docs = opened().head_documents(after_size, size)
        heads = [_head(n, raw) for n, raw in docs]
        record(who, "tree_heads", {"after_size": after_size, "limit": size}, len(heads))
        return {
            "heads": heads,
            "limit": size,
            "next_after_size": heads[-1].head.tree_size if len(heads) == size else None,
        }

    def head_document(who: Auditor, tree_size: int | None) -> Response:
        raw = opened().head_document(tree_size)
        query = {"tree_size": "latest" if tree_size is None else tree_size}
        record(who, "tree_head", query, 0 if raw is None else 1)
        if raw is None:
            which = "yet" if tree_size is None else "at that size"
            raise ApiProblem(404, "no_tree_head", f"the log signed no tree head {which}")
        return Response(content=raw, media_type="application/json")

    @router.get(
        "/v1/audit/tree-heads/latest",
        summary="The latest signed tree head, as stored",
        description="Verify it under the pinned log key. Recorded as `audit.queried`.",
        response_class=Response,
        responses={200: _HEAD_DOC, **problem_responses(404, *AUTHED)},
    )
    def latest_tree_head(who: Auditor) -> Response:
        return head_document(who, None)

    @router.get(
        "/v1/audit/tree-heads/{tree_size}",
        summary="The signed tree head at one size, as stored",
        description="404 unless the log signed a head at exactly this size. Recorded as "
        "`audit.queried`.",
        response_class=Response,
        responses={200: _HEAD_DOC, **problem_responses(404, *AUTHED)},
    )
    def tree_head(
        who: Auditor, tree_size: Annotated[WholeNumber, PathParam(ge=0, le=MAX_INT)]
    ) -> Response:
        return head_document(who, tree_size)

    @router.get(
        "/v1/audit/proofs/inclusion",
        summary="Inclusion proof of an entry in a signed tree",
        description=(
            "RFC 9162 inclusion proof of entry `index` in the tree of a signed head of "
            "`tree_size`. 400 if the index lies outside the tree or no head was signed at "
            "that size. Recorded as `audit.queried`."
        ),
        response_model=InclusionProof,
        responses=problem_responses(400, *AUTHED),
    )
    def inclusion(who: Auditor, index: Size, tree_size: Size) -> dict[str, Any]:
        if index >= tree_size:
            raise ApiProblem(400, "out_of_range", "the entry lies outside a tree of that size")
        proof = _proof("inclusion", lambda: opened().inclusion_proof(index, tree_size))
        record(who, "inclusion_proof", {"index": index, "tree_size": tree_size}, len(proof))
        return {"index": index, "tree_size": tree_size, "proof": _b64s(proof)}

    @router.get(
        "/v1/audit/proofs/consistency",
        summary="Consistency proof between two signed trees",
        description=(
            "RFC 9162 consistency proof that the signed tree of size `new` extends the tree "
            "of size `old` (any size up to `new`). 400 if `old` > `new` or no head was "
            "signed at `new`. Recorded as `audit.queried`."
        ),
        response_model=ConsistencyProof,
        responses=problem_responses(400, *AUTHED),
    )
    def consistency(who: Auditor, old: Size, new: Size) -> dict[str, Any]:
        if old > new:
            raise ApiProblem(400, "out_of_range", "the old size is above the new size")
        proof = _proof("consistency", lambda: opened().consistency_proof(old, new))
        record(who, "consistency_proof", {"old": old, "new": new}, len(proof))
        return {"old_size": old, "new_size": new, "proof": _b64s(proof)}

    @router.get(
        "/v1/audit/checkpoint",
        summary="The latest checkpoint the witnesses cosigned (C2SP signed note)",
        description=(
            "The latest signed tree head in C2SP tlog-checkpoint form, signed by the log key "
            "and cosigned by at least the configured quorum of witnesses "
            "(docs/audit.md#witnesses). Verify it with your own witness keys. 404 when no "
            "checkpoint gathered the quorum yet, or no witnesses are configured. Recorded "
            "as `audit.queried`."
        ),
        response_class=Response,
        responses={
            200: {"content": {"text/plain": {}}, "description": "the signed note"},
            **problem_responses(404, 503, *AUTHED),
        },
    )
    def checkpoint(who: Auditor) -> Response:
        broker_dir = state.registry.broker_dir
        if broker_dir is None:
            raise ApiProblem(503, "checkpoint_unavailable", "this broker serves no checkpoint")
        try:
            note = read_checkpoint(broker_dir)
        except (OSError, EnvelopeError) as exc:
            raise ApiProblem(503, "checkpoint_unavailable", "the checkpoint is unreadable") from exc
        record(who, "checkpoint", {}, 0 if note is None else 1)
        if note is None:
            raise ApiProblem(404, "no_checkpoint", "no checkpoint has a witness quorum yet")
        return Response(content=note.encode(), media_type="text/plain; charset=utf-8")

    @router.get(
        "/v1/audit/log-key",
        summary="The log's public key (public: pin it)",
        description=(
            "The Ed25519 key every signed tree head must verify under, and the log's name. "
            "Compare it with the broker's `log.pub` obtained out of band before pinning it; "
            "a key fetched from the same server it vouches for proves nothing on its own. "
            "404 before the sequencer's first run."
        ),
        response_model=LogKey,
        responses=problem_responses(404, 503),
    )
    def log_key() -> dict[str, Any]:
        broker_dir = state.registry.broker_dir  # the data directory's, on any database
        if broker_dir is None:
            raise ApiProblem(503, "log_key_unavailable", "this broker does not serve its log key")
        try:
            key = log_verify_key(broker_dir)
        except ConfigError as exc:
            raise ApiProblem(503, "log_key_unavailable", "the log key file is unreadable") from exc
        if key is None:
            raise ApiProblem(404, "no_log_key", "the log has no key yet: no sequencer has run")
        return {
            "kid": key.kid,
            "public": b64e(key.public),
            "algorithm": "Ed25519",
            "origin": DEFAULT_ORIGIN,
            "signed": "istmo/v1/tree-head\x00",
        }

    return router


def _proof(what: str, make: Callable[[], list[bytes]]) -> list[bytes]:
    """A proof from the store: 400 for a request the log cannot answer, 503 if it is broken."""
    try:
        return make()
    except MissingNode:
        raise  # LogCorrupt: the store lost a node it needs (503, run `istmo audit verify`)
    except LookupError as exc:  # no head signed at that size
        raise ApiProblem(400, "unsigned_tree_size", str(exc)) from exc
    except ValueError as exc:  # pragma: no cover - the endpoints check the ranges first
        raise ApiProblem(400, "out_of_range", str(exc)) from exc
