"""The auditors' endpoints: scope ``audit:read`` only, pages capped at 1,000, entries as the
exact bytes hashed, tree heads as signed, proofs that verify, 400 (never 500) for a request
outside the log, and every query an ``audit.queried`` entry naming the auditor (S-22).

The log is the module's demo directory plus 1,600 relay-shaped events, sequenced in
batches of 500 (signed heads at 500, 1000, 1500 and the end).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
import schemathesis

from broker.api.guard import ApiLimits
from broker.api.oauth import AGENCY_SCOPES, AUDITOR_SCOPES, Client
from broker.audit.log import AuditLog
from broker.audit.sequencer import SequencerLimits, log_verify_key, open_sequencer
from broker.audit.witnessing import CHECKPOINT_FILE
from broker.files import signing_key_file
from schemas.audit import AuditEvent
from schemas.canonical import b64d, canonical_json
from schemas.checkpoint import (
    Checkpoint,
    CosignerKey,
    cosign,
    parse_note,
    sign_checkpoint,
    verify_checkpoint,
)
from schemas.errors import AuditStoreError
from schemas.keys import SigningKey
from schemas.merkle_verify import TreeBuilder, leaf_hash, verify_consistency, verify_inclusion
from schemas.treehead import parse_signed_tree_head, verify_tree_head
from tests.api.conftest import (
    SCHEMATHESIS_HOST,
    AppFactory,
    Broker,
    assert_problem,
    bearer,
    connect,
    token,
)
from tests.api.test_schemathesis import _run

AUDITOR = "auditor"
EVENTS = 1600
BATCH = 500
BULLETIN = "00000000-0000-4000-8000-999999999999"
ORIGIN = "istmo.local/audit"

# (path, query) of every endpoint that needs audit:read
ENDPOINTS: list[tuple[str, dict[str, Any]]] = [
    ("/v1/audit/entries", {"limit": 2}),
    ("/v1/audit/entries/3", {}),
    ("/v1/audit/search", {"type": "bulletin.denied", "limit": 2}),
    ("/v1/audit/tree-heads", {}),
    ("/v1/audit/tree-heads/latest", {}),
    ("/v1/audit/tree-heads/500", {}),
    ("/v1/audit/proofs/inclusion", {"index": 3, "tree_size": 500}),
    ("/v1/audit/proofs/consistency", {"old": 500, "new": 1000}),
]
IDS = [p for p, _ in ENDPOINTS]


def drain(broker: Broker) -> None:
    """Integrate the outbox, as the sequencer of `istmo up` would."""
    seq = open_sequencer(
        broker.settings, limits=SequencerLimits(batch_entries=BATCH), out=lambda _line: None
    )
    try:
        seq.drain()
    finally:
        seq.close()


def events(n: int) -> list[AuditEvent]:
    return [
        AuditEvent(
            event_id=f"http-test-{i}",
            type="bulletin.routed" if i % 4 else "bulletin.denied",
            time=1_767_225_600_000 + i * 1000,
            actor="relay",
            subject="gt-police" if i % 2 else "jm-police",
            bulletin_id=BULLETIN if i == 7 else f"00000000-0000-4000-8000-{i:012d}",
            data={"n": i},
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def log(broker: Broker) -> AuditLog:
    broker.registry.record([], events(EVENTS))
    drain(broker)
    audit_log = AuditLog(broker.settings.db_url)
    yield audit_log
    audit_log.close()


@pytest.fixture(scope="module")
def size(log: AuditLog) -> int:
    return log.size()


@pytest_asyncio.fixture
async def client(make_app: AppFactory, log: AuditLog) -> AsyncIterator[httpx.AsyncClient]:
    """The app with rate limits out of the way (a page walk is many calls)."""
    limits = ApiLimits(
        api_rate_per_s=1e6, api_burst=10**6, refusal_rate_per_min=1e9, refusal_burst=10**6
    )
    async with connect(make_app(limits=limits)) as c:
        yield c


@pytest_asyncio.fixture
async def auditor(client: httpx.AsyncClient, broker: Broker) -> dict[str, str]:
    return bearer(await token(client, broker, AUDITOR))


async def get(client: httpx.AsyncClient, auth: dict[str, str], path: str, **q: Any) -> Any:
    r = await client.get(path, params=q, headers=auth)
    assert r.status_code == 200, r.text
    return r.json()


def pinned(broker: Broker) -> Any:
    key = log_verify_key(broker.settings.broker_dir)
    assert key is not None
    return key


# ------------------------------------------------------------------------------ scope
async def test_the_log_key_is_public_and_is_log_pub(
    client: httpx.AsyncClient, broker: Broker, log: AuditLog
) -> None:
    r = await client.get("/v1/audit/log-key")
    assert r.status_code == 200, r.text
    body = r.json()
    pub = (broker.settings.broker_dir / "log.pub").read_text().strip()
    assert body["public"] == pub
    latest = log.latest_head()
    assert latest is not None
    assert body["kid"] == latest.kid == pinned(broker).kid
    assert body["origin"] == ORIGIN
    assert body["algorithm"] == "Ed25519"


@pytest.mark.parametrize(("path", "query"), ENDPOINTS, ids=IDS)
async def test_no_token_is_401(client: httpx.AsyncClient, path: str, query: dict[str, Any]) -> None:
    r = await client.get(path, params=query)
    assert_problem(r, 401, "missing_token")
    assert r.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("path", "query"), ENDPOINTS, ids=IDS)
async def test_an_agency_or_admin_token_is_403(
    client: httpx.AsyncClient, broker: Broker, path: str, query: dict[str, Any]
) -> None:
    for who in ("gt-police", "admin"):
        before = broker.last_seq()
        r = await client.get(path, params=query, headers=bearer(await token(client, broker, who)))
        assert_problem(r, 403, "insufficient_scope")
        assert 'scope="audit:read"' in r.headers["www-authenticate"]
        refused = broker.audit("auth.refused", after=before)
        assert [(e.actor, e.reason) for e in refused] == [(who, "insufficient_scope")]
        assert not broker.audit("audit.queried", after=before)


@pytest.mark.parametrize(("path", "query"), ENDPOINTS, ids=IDS)
async def test_an_expired_auditor_token_is_401(
    client: httpx.AsyncClient, broker: Broker, path: str, query: dict[str, Any]
) -> None:
    old = broker.authority().issue(
        Client(AUDITOR, "agency", AUDITOR_SCOPES, "test"), None, now=int(time.time()) - 301
    )
    before = broker.last_seq()
    r = await client.get(path, params=query, headers=bearer(old.access_token))
    assert_problem(r, 401, "token_expired")
    assert [e.actor for e in broker.audit("auth.refused", after=before)] == [AUDITOR]
    assert not broker.audit("audit.queried", after=before)


# ------------------------------------------------------------------------------ entries
async def test_pages_are_capped_at_1000_and_walk_the_whole_log(
    client: httpx.AsyncClient, auditor: dict[str, str], log: AuditLog, size: int
) -> None:
    first = await get(client, auditor, "/v1/audit/entries", limit=5000)
    assert first["limit"] == 1000
    assert [e["index"] for e in first["entries"]] == list(range(1000))
    assert first["next_after_index"] == 999
    seen = [e["index"] for e in first["entries"]]
    after: int | None = first["next_after_index"]
    while after is not None:
        page = await get(client, auditor, "/v1/audit/entries", after_index=after, limit=1000)
        seen += [e["index"] for e in page["entries"]]
        after = page["next_after_index"]
    assert seen[:size] == list(range(size))  # (the walk's own queries may follow)
    small = await get(client, auditor, "/v1/audit/entries", after_index=10, limit=3)
    assert [e["index"] for e in small["entries"]] == [11, 12, 13]
    assert small["next_after_index"] == 13
    for bad in ({"limit": 0}, {"after_index": -2}, {"limit": 2**60}, {"limit": "x"}):
        assert_problem(await client.get("/v1/audit/entries", params=bad, headers=auditor), 422)
    # JSON Schema's integer (what the OpenAPI document says) includes 3.0, not 3.5.
    whole = await get(client, auditor, "/v1/audit/entries", after_index="10.0", limit="3.00")
    assert [e["index"] for e in whole["entries"]] == [11, 12, 13]
    assert (await get(client, auditor, "/v1/audit/entries/3.0"))["index"] == 3
    for bad in ({"limit": "3.5"}, {"limit": "3."}, {"limit": "1e3"}):
        assert_problem(await client.get("/v1/audit/entries", params=bad, headers=auditor), 422)


async def test_an_entry_is_the_exact_bytes_its_leaf_hash_covers(
    client: httpx.AsyncClient, auditor: dict[str, str], log: AuditLog, size: int
) -> None:
    page = await get(client, auditor, "/v1/audit/entries", after_index=1199, limit=50)
    for e in page["entries"]:
        leaf = base64.b64decode(e["leaf"], validate=True)
        stored = log.entry(e["index"])
        assert stored is not None
        assert leaf == stored.leaf
        assert leaf_hash(leaf) == stored.leaf_hash == b64d(e["leaf_hash"], field="h", max_bytes=32)
        assert e["entry"] == json.loads(leaf)
        assert canonical_json(e["entry"]) == leaf  # canonical: recomputable from the object
        one = await get(client, auditor, f"/v1/audit/entries/{e['index']}")
        assert one == e
    r = await client.get(f"/v1/audit/entries/{10**9}", headers=auditor)
    assert_problem(r, 404, "no_entry")
    for bad in ("-1", "x", str(2**70)):
        assert_problem(await client.get(f"/v1/audit/entries/{bad}", headers=auditor), 422)


async def test_search_filters_by_agency_bulletin_type_and_time(
    client: httpx.AsyncClient, auditor: dict[str, str], log: AuditLog
) -> None:
    base = 1_767_225_600_000
    got = await get(client, auditor, "/v1/audit/search", bulletin=BULLETIN)
    assert [e["entry"]["data"]["n"] for e in got["entries"]] == [7]
    got = await get(
        client,
        auditor,
        "/v1/audit/search",
        type="bulletin.denied",
        agency="jm-police",
        since=base + 100_000,
        until=base + 120_000,
    )
    assert [e["entry"]["data"]["n"] for e in got["entries"]] == [100, 104, 108, 112, 116]
    assert got["next_after_index"] is None
    paged = await get(client, auditor, "/v1/audit/search", type="bulletin.denied", limit=5000)
    assert paged["limit"] == 1000
    assert len(paged["entries"]) == EVENTS // 4
    for bad in (
        {"type": "bulletin.nothing"},
        {"bulletin": "not-a-uuid"},
        {"since": -1},
        {"until": 2**63},
        {"agency": "x" * 201},
    ):
        assert_problem(await client.get("/v1/audit/search", params=bad, headers=auditor), 422)


# ------------------------------------------------------------------------------ heads
async def test_tree_heads_are_the_documents_the_log_signed(
    client: httpx.AsyncClient, broker: Broker, auditor: dict[str, str], log: AuditLog, size: int
) -> None:
    r = await client.get("/v1/audit/tree-heads/latest", headers=auditor)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.content == log.head_document()
    latest = verify_tree_head(parse_signed_tree_head(r.content), pinned(broker), ORIGIN)
    assert latest.tree_size >= size
    listed: list[dict[str, Any]] = []
    after = -1
    while True:
        page = await get(client, auditor, "/v1/audit/tree-heads", after_size=after, limit=2)
        listed += page["heads"]
        if page["next_after_size"] is None:
            break
        after = page["next_after_size"]
    sizes = [h["head"]["tree_size"] for h in listed]
    assert sizes[:3] == [500, 1000, 1500]
    assert sizes == sorted(set(sizes))
    for doc in listed:
        n = doc["head"]["tree_size"]
        raw = (await client.get(f"/v1/audit/tree-heads/{n}", headers=auditor)).content
        assert raw == log.head_document(n)
        assert json.loads(raw) == doc
        verify_tree_head(parse_signed_tree_head(raw), pinned(broker), ORIGIN)
    assert_problem(
        await client.get("/v1/audit/tree-heads/777", headers=auditor), 404, "no_tree_head"
    )
    assert_problem(await client.get("/v1/audit/tree-heads/-1", headers=auditor), 422)


async def test_the_checkpoint_is_the_cosigned_note_as_stored(
    client: httpx.AsyncClient, broker: Broker, auditor: dict[str, str], log: AuditLog
) -> None:
    stored = broker.settings.broker_dir / CHECKPOINT_FILE
    stored.unlink(missing_ok=True)
    r = await client.get("/v1/audit/checkpoint", headers=auditor)
    assert_problem(r, 404, "no_checkpoint")
    latest = log.latest_head()
    assert latest is not None
    witness = SigningKey.generate()
    key = signing_key_file(broker.settings.broker_dir / "log.key", "log key")
    note = sign_checkpoint(Checkpoint(ORIGIN, latest.head.tree_size, latest.head.root()), key)
    note = note.with_signatures([cosign(note.body, "witness.test", witness, 1_767_225_600)])
    stored.write_bytes(note.encode())
    try:
        r = await client.get("/v1/audit/checkpoint", headers=auditor)
        assert r.status_code == 200, r.text
        assert r.content == note.encode()
        trusted = [CosignerKey("witness.test", witness.verify_key)]
        log_key = CosignerKey(ORIGIN, pinned(broker), 0x01)
        cp, good = verify_checkpoint(parse_note(r.content), log_key, trusted, 1)
        assert (cp.size, good) == (latest.head.tree_size, ["witness.test"])
        assert (await client.get("/v1/audit/checkpoint")).status_code == 401
    finally:
        stored.unlink()


# ------------------------------------------------------------------------------ proofs
async def test_proofs_from_the_api_verify(
    client: httpx.AsyncClient, broker: Broker, auditor: dict[str, str], log: AuditLog, size: int
) -> None:
    heads = [
        verify_tree_head(parse_signed_tree_head(json.dumps(h).encode()), pinned(broker), ORIGIN)
        for h in (await get(client, auditor, "/v1/audit/tree-heads", limit=1000))["heads"]
    ]
    leaves = [e.leaf_hash for e in log.iter_entries()]
    for head in heads[:4]:
        n = head.tree_size
        for index in sorted({0, 1, n // 3, n // 2, n - 2, n - 1}):
            body = await get(
                client, auditor, "/v1/audit/proofs/inclusion", index=index, tree_size=n
            )
            assert (body["index"], body["tree_size"]) == (index, n)
            proof = [b64d(h, field="p", max_bytes=32) for h in body["proof"]]
            verify_inclusion(leaves[index], index, n, proof, head.root())
    for old in heads[:4]:
        for new in heads[:4]:
            if old.tree_size > new.tree_size:
                continue
            q = {"old": old.tree_size, "new": new.tree_size}
            body = await get(client, auditor, "/v1/audit/proofs/consistency", **q)
            proof = [b64d(h, field="p", max_bytes=32) for h in body["proof"]]
            verify_consistency(old.tree_size, new.tree_size, old.root(), new.root(), proof)
    # From any size, not only a signed one: the root the auditor computes from the entries.
    tree = TreeBuilder()
    tree.extend(leaves[:777])
    body = await get(client, auditor, "/v1/audit/proofs/consistency", old=777, new=1500)
    proof = [b64d(h, field="p", max_bytes=32) for h in body["proof"]]
    verify_consistency(777, 1500, tree.root(), heads[2].root(), proof)
    assert (await get(client, auditor, "/v1/audit/proofs/consistency", old=0, new=500)) == {
        "old_size": 0,
        "new_size": 500,
        "proof": [],
    }


@pytest.mark.parametrize(
    ("path", "query", "status", "code"),
    [
        ("inclusion", {"index": 500, "tree_size": 500}, 400, "out_of_range"),
        ("inclusion", {"index": 10**12, "tree_size": 500}, 400, "out_of_range"),
        ("inclusion", {"index": 3, "tree_size": 777}, 400, "unsigned_tree_size"),
        ("inclusion", {"index": 3, "tree_size": 10**12}, 400, "unsigned_tree_size"),
        ("inclusion", {"index": 0, "tree_size": 0}, 400, "out_of_range"),
        ("consistency", {"old": 1000, "new": 500}, 400, "out_of_range"),
        ("consistency", {"old": 500, "new": 777}, 400, "unsigned_tree_size"),
        ("consistency", {"old": 0, "new": 0}, 400, "unsigned_tree_size"),
        ("consistency", {"old": 2**53 - 2, "new": 2**53 - 1}, 400, "unsigned_tree_size"),
        ("inclusion", {"index": -1, "tree_size": 500}, 422, "invalid_request"),
        ("inclusion", {"index": 1, "tree_size": 2**64}, 422, "invalid_request"),
        ("inclusion", {"tree_size": 500}, 422, "invalid_request"),
        ("consistency", {"old": "1e3", "new": 500}, 422, "invalid_request"),
        ("consistency", {"old": 1, "new": 2**53}, 422, "invalid_request"),
    ],
)
async def test_a_request_outside_the_log_is_a_problem_never_a_500(
    client: httpx.AsyncClient,
    auditor: dict[str, str],
    path: str,
    query: dict[str, Any],
    status: int,
    code: str,
) -> None:
    r = await client.get(f"/v1/audit/proofs/{path}", params=query, headers=auditor)
    assert_problem(r, status, code)


# ------------------------------------------------------------------------------ recorded
async def test_each_query_is_an_audit_queried_entry_naming_the_auditor(
    client: httpx.AsyncClient, broker: Broker, auditor: dict[str, str], log: AuditLog
) -> None:
    before, since = broker.last_seq(), int(time.time() * 1000)
    await get(client, auditor, "/v1/audit/log-key")  # public, reveals no entry: not recorded
    answers = [await get(client, auditor, path, **query) for path, query in ENDPOINTS]
    await get(client, auditor, "/v1/audit/search", agency="gt-police", since=5, limit=3)
    r = await client.get("/v1/audit/entries/999999999", headers=auditor)
    assert r.status_code == 404
    rows = broker.audit("audit.queried", after=before)
    assert {r.actor for r in rows} == {AUDITOR}
    got = [(r.subject, json.loads(r.data)) for r in rows]
    heads, inclusion, consistency = answers[3], answers[6], answers[7]
    assert got == [
        ("audit.entries", {"after_index": -1, "limit": 2, "rows": 2}),
        ("audit.entry", {"index": 3, "rows": 1}),
        ("audit.search", {"type": "bulletin.denied", "after_index": -1, "limit": 2, "rows": 2}),
        ("audit.tree_heads", {"after_size": -1, "limit": 100, "rows": len(heads["heads"])}),
        ("audit.tree_head", {"tree_size": "latest", "rows": 1}),
        ("audit.tree_head", {"tree_size": 500, "rows": 1}),
        (
            "audit.inclusion_proof",
            {"index": 3, "tree_size": 500, "rows": len(inclusion["proof"])},
        ),
        ("audit.consistency_proof", {"old": 500, "new": 1000, "rows": len(consistency["proof"])}),
        (
            "audit.search",
            {"agency": "gt-police", "since": 5, "after_index": -1, "limit": 3, "rows": 3},
        ),
        ("audit.entry", {"index": 999999999, "rows": 0}),
    ]
    # Integrated, they are entries like any other, found by the auditor's own id.
    drain(broker)
    found = await get(
        client, auditor, "/v1/audit/search", type="audit.queried", agency=AUDITOR, since=since
    )
    assert [(e["entry"]["subject"], e["entry"]["data"]) for e in found["entries"]] == got
    assert {e["entry"]["actor"] for e in found["entries"]} == {AUDITOR}


async def test_no_answer_leaves_without_its_audit_event(
    client: httpx.AsyncClient,
    broker: Broker,
    auditor: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*_args: Any, **_kw: Any) -> None:
        raise AuditStoreError("the store refused an audit write: OperationalError")

    monkeypatch.setattr(broker.registry, "record", refuse)
    for path, query in ENDPOINTS:
        r = await client.get(path, params=query, headers=auditor)
        body = assert_problem(r, 503, "audit_store")
        assert "leaf" not in r.text
        assert body["detail"].startswith("the store refused")


async def test_an_agency_token_with_every_scope_it_has_still_gets_nothing(
    client: httpx.AsyncClient, broker: Broker
) -> None:
    tok = broker.authority().issue(
        Client("gt-police", "agency", AGENCY_SCOPES, "t"), None, int(time.time())
    )
    r = await client.get("/v1/audit/entries", headers=bearer(tok.access_token))
    assert_problem(r, 403, "insufficient_scope")


# ------------------------------------------------------------------------------ contract
def test_the_audit_endpoints_conform_to_their_openapi_document(
    broker: Broker, log: AuditLog, make_app: AppFactory
) -> None:
    limits = ApiLimits(
        api_rate_per_s=1e6, api_burst=10**6, refusal_rate_per_min=1e9, refusal_burst=10**6
    )
    schema = schemathesis.openapi.from_asgi(
        "/openapi.json", make_app(limits=limits, allowed_hosts=(SCHEMATHESIS_HOST,))
    )
    tok = broker.authority().issue(
        Client(AUDITOR, "agency", AUDITOR_SCOPES, "t"), None, int(time.time())
    )
    operations = [
        op.ok() for op in schema.get_all_operations() if op.ok().path.startswith("/v1/audit/")
    ]
    assert len(operations) == 10  # with /v1/audit/checkpoint
    statuses: dict[tuple[str, str, int], int] = {}
    for op in operations:
        public = op.path == "/v1/audit/log-key"
        _run(op, None if public else tok.access_token, statuses)
    ok = {path for _method, path, status in statuses if status == 200}
    # Random sizes and indices mostly miss the log (documented 400s and 404s); these do not.
    assert {
        "/v1/audit/entries",
        "/v1/audit/search",
        "/v1/audit/tree-heads",
        "/v1/audit/tree-heads/latest",
        "/v1/audit/log-key",
    } <= ok
