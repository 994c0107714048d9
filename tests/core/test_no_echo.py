"""Error messages never repeat what the caller sent: each refusal built from a canary
input names the field or its place, not the value (issue 21, point 4)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from broker.relay.agency_api import error_reply
from broker.relay.checks import check_labels
from broker.relay.queries import NotFound
from schemas.agency import ResolveRequest
from schemas.enrolment import parse_enrolment_body
from schemas.envelope import parse_model
from schemas.errors import IstmoError
from schemas.ids import parse_agency_id, parse_bulletin_id
from schemas.labels import Classification, Labels, Tlp

LABELS = Labels(
    topic="drug-trafficking",
    classification=Classification.RESTRICTED,
    tlp=Tlp.AMBER,
    rel_to=("HN",),
)


def labels(**update: object) -> Labels:
    return LABELS.model_copy(update=update)


CASES: list[tuple[str, Callable[[], object], str]] = [
    ("agency-id", lambda: parse_agency_id("CANARY-x"), "CANARY"),
    ("bulletin-id", lambda: parse_bulletin_id("CANARY"), "CANARY"),
    (
        "unknown-jurisdiction",
        lambda: check_labels(labels(rel_to=("HN", "QZ")), {}, {"HN"}),
        "QZ",
    ),
    (
        "unknown-named-agency",
        lambda: check_labels(labels(named=("canary-agency",)), {}, {"HN"}),
        "canary",
    ),
    (
        "request-field",
        lambda: parse_model(
            ResolveRequest, b'{"labels": {"topic": "CANARY"}}', max_bytes=4096, what="request"
        ),
        "CANARY",
    ),
    (
        "enrolment-body",
        lambda: parse_enrolment_body(b'{"token": "CANARY", "request": {"CANARY": 1}}'),
        "CANARY",
    ),
]


@pytest.mark.parametrize(("name", "refuse", "canary"), CASES, ids=[c[0] for c in CASES])
def test_a_refusal_does_not_echo_its_input(
    name: str, refuse: Callable[[], object], canary: str
) -> None:
    with pytest.raises(IstmoError) as err:
        refuse()
    assert canary not in str(err.value)
    # Nor does the reply the NATS door makes of it.
    assert canary not in error_reply(err.value).model_dump_json()


def test_not_found_says_nothing_of_what_was_asked() -> None:
    reply = error_reply(NotFound("no such bulletin of yours"))
    assert reply.error.model_dump() == {"code": "not_found", "message": "no such bulletin of yours"}
