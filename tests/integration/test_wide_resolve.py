"""A bulletin more agencies may receive than an envelope can carry one wrap each for
(MAX_WRAPS) is refused at resolve (the answer with keys, for SDKs that seal no other way)
with a reason the publisher can act on, and audited; the answer that would not fit in a
NATS message is never built. The ids-only answer (``recipients``) lists them, up to
MAX_RECIPIENTS, for an SDK that seals under community group keys (ADR 18). A synthetic
region of 800 agencies (bench/synthetic_directory.py): the wide labels reach about 600 of
them."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from bench.harness import WIDE_LABELS
from bench.synthetic_directory import write_policy_dir
from broker.policy.engine import BulletinFacts, PolicyEngine
from broker.relay.agency_api import AgencyApi
from broker.runtime.stack import Stack
from schemas.agency import (
    ErrorReply,
    RecipientsReply,
    ResolveReply,
    ResolveRequest,
    encode_reply,
)
from schemas.envelope import MAX_RECIPIENTS, MAX_WRAPS
from schemas.subjects import api_subject
from tests.integration.stack_inproc import prepared_stack

SENDER = "s0001-police"


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("wide")
    policies = write_policy_dir(root / "policies", 800)
    with prepared_stack(root / "istmo", policy_dir=policies) as stack:
        yield stack


def test_too_many_recipients_is_refused_with_the_limit_named(wide: Stack) -> None:
    op = "resolve"
    assert wide.registry is not None
    assert wide.directory is not None
    api = AgencyApi(wide.settings, wide.registry, wide.directory)
    now = int(time.time())
    _, permitted = api.queries.permitted(SENDER, ResolveRequest(labels=WIDE_LABELS), now)
    assert len(permitted) > MAX_WRAPS  # the premise: this region is wide enough

    ask = ResolveRequest(labels=WIDE_LABELS).model_dump_json().encode()
    answer = api.handle(api_subject(SENDER, op), ask, now=now)
    assert isinstance(answer, ErrorReply)
    error = answer.error
    assert error.code == "too_many_recipients"
    assert f"{len(permitted)} agencies may receive this" in error.message
    assert f"at most {MAX_WRAPS}" in error.message
    assert "narrow the labels" in error.message
    refused = wide.registry.audit_events(type_="request.rejected", limit=10)
    assert [(e.actor, e.subject, e.reason) for e in refused][-1:] == [
        (SENDER, f"api.{op}", "too_many_recipients")
    ]


def test_the_ids_only_answer_lists_more_than_one_envelope_wraps(wide: Stack) -> None:
    """``recipients`` answers past MAX_WRAPS: the SDK seals under group keys for them."""
    assert wide.registry is not None
    assert wide.directory is not None
    api = AgencyApi(wide.settings, wide.registry, wide.directory)
    now = int(time.time())
    _, permitted = api.queries.permitted(SENDER, ResolveRequest(labels=WIDE_LABELS), now)
    ask = ResolveRequest(labels=WIDE_LABELS).model_dump_json().encode()
    answer = api.handle(api_subject(SENDER, "recipients"), ask, now=now)
    assert isinstance(answer, RecipientsReply), answer
    assert list(answer.recipients) == permitted
    assert MAX_WRAPS < len(answer.recipients) <= MAX_RECIPIENTS


def test_the_recipients_answer_grows_by_an_id_a_recipient(wide: Stack) -> None:
    """To hundreds of recipients the answer is ids and versions, under 40 bytes a
    recipient (20 KB at MAX_RECIPIENTS), where the same answer with their keys
    (``resolve``) takes over 1.5 KB a recipient (a megabyte at MAX_RECIPIENTS)."""
    assert wide.registry is not None
    assert wide.directory is not None
    api = AgencyApi(wide.settings, wide.registry, wide.directory)
    now = int(time.time())
    labels = WIDE_LABELS.model_copy(update={"rel_to": ("CARICOM",)})
    ask = ResolveRequest(labels=labels).model_dump_json().encode()
    small = api.handle(api_subject(SENDER, "recipients"), ask, now=now)
    large = api.handle(api_subject(SENDER, "resolve"), ask, now=now)
    assert isinstance(small, RecipientsReply), small
    assert isinstance(large, ResolveReply), large
    n = len(small.recipients)
    assert 200 < n <= MAX_WRAPS
    assert set(small.recipients) == set(large.recipients)
    assert len(encode_reply(small)) < 200 + 40 * n
    assert len(encode_reply(large)) > 1500 * n


def test_a_narrower_bulletin_in_the_same_region_resolves(wide: Stack) -> None:
    assert wide.registry is not None
    assert wide.directory is not None
    api = AgencyApi(wide.settings, wide.registry, wide.directory)
    narrow = WIDE_LABELS.model_copy(update={"rel_to": ("S0001", "S0002")})
    ask = ResolveRequest(labels=narrow).model_dump_json().encode()
    answer = api.handle(api_subject(SENDER, "resolve"), ask, now=int(time.time()))
    assert isinstance(answer, ResolveReply), answer
    assert 0 < len(answer.recipients) <= MAX_RECIPIENTS
    listed = [a.id for a in answer.directory.excerpt.agencies]
    assert listed == sorted(answer.recipients)


def test_resolve_lists_whom_the_whole_evaluation_allows(wide: Stack) -> None:
    """Resolve leaves out, before Cedar, the candidates the policy set certainly denies,
    and decides the others over slices (ADR 0012): its recipients are those a Cedar
    evaluation of every candidate over the whole directory allows."""
    d = wide.directory
    assert d is not None
    assert wide.registry is not None
    queries = AgencyApi(wide.settings, wide.registry, d).queries
    whole = PolicyEngine(d.engine.bundle, d.engine.directory, entities="whole")
    now = int(time.time())
    for rel_to in [("S0001", "S0002"), ("SICA",), ("S0003", "CARICOM")]:
        labels = WIDE_LABELS.model_copy(update={"rel_to": rel_to})
        _, permitted = queries.permitted(SENDER, ResolveRequest(labels=labels), now)
        facts = BulletinFacts(
            "00000000-0000-4000-8000-000000000000",
            SENDER,
            d.records[SENDER].state,
            labels,
            None,
            None,
        )
        candidates = [c for c in d.candidates(labels.topic, labels.named) if c != SENDER]
        decisions = whole.decide_receive(facts, candidates, now)
        assert permitted == [x.agency for x in decisions if x.allowed], rel_to
        assert 0 < len(permitted) < len(candidates)
