"""The agency request/reply contract (``schemas.agency``): the typed replies put on the wire
exactly the bytes the broker sent as plain dicts before them, and the broker turns every
error into one of the contract's codes (``broker.relay.agency_api``)."""

from __future__ import annotations

import json
from typing import Any, get_args

import pytest
from pydantic import BaseModel

from broker.relay.agency_api import error_reply, reply_bytes
from broker.relay.queries import NotFound
from schemas.agency import (
    ERROR_CODES,
    MAX_ERROR_MESSAGE_CHARS,
    AgencyReply,
    ApiOp,
    CandidateVerdict,
    DeadLetterEntry,
    DeadLettersReply,
    DeniedRecipient,
    ErrorReply,
    ExplainReply,
    PublishVerdict,
    RecallReply,
    ReceiptEntry,
    ReceiptsReply,
    RecipientsReply,
    ResolveReply,
    ResolveRequest,
    RevokeKeyReply,
    RotateReply,
    StatusAccepted,
    StatusPending,
    StatusRejected,
    StatusReply,
    WithheldReply,
    encode_reply,
    encode_request,
)
from schemas.canonical import b64e, canonical_json
from schemas.directory import (
    AgencyRecord,
    DirectoryExcerpt,
    SignedChanges,
    SignedExcerpt,
    SigningKeyRecord,
    sign_excerpt,
)
from schemas.envelope import parse_model
from schemas.errors import (
    AuditStoreError,
    BusUnavailable,
    ConfigError,
    DecryptionError,
    EnvelopeError,
    IstmoError,
    PolicyDenied,
    SignatureError,
)
from schemas.export import MODELS
from schemas.keys import SigningKey
from schemas.labels import Classification, Labels, Tlp
from schemas.subjects import API_OPS

BID = "8f1c2d3e-1111-4222-8333-444455556666"
OTHER_BID = "8f1c2d3e-2222-4222-8333-444455556666"
THIRD_BID = "8f1c2d3e-3333-4222-8333-444455556666"
KID = "sig-" + "a" * 32
KEM_KID = "kem-" + "b" * 32
DIRECTORY_KEY = SigningKey(bytes(range(32)))
_GT = SigningKey(bytes(range(1, 33))).verify_key
RECORD = AgencyRecord(
    id="gt-police",
    name="Guatemala: Police",
    state="GT",
    communities=("SICA",),
    sector="police",
    status="active",
    signing_keys=(SigningKeyRecord(kid=_GT.kid, public=b64e(_GT.public), created_at=5),),
)
SIGNED = sign_excerpt(
    DirectoryExcerpt(v=1, directory_version="0123456789abcdef", issued_at=9, agencies=(RECORD,)),
    DIRECTORY_KEY,
)


def _old_excerpt() -> dict[str, Any]:
    """The excerpt as the broker put it in a resolve answer: decoded from its bytes."""
    decoded: dict[str, Any] = json.loads(canonical_json(SIGNED.model_dump(mode="json")))
    return decoded


# Each reply model beside the dict the broker built for the same answer before it.
WIRE: list[tuple[str, AgencyReply | ErrorReply, Any]] = [
    (
        "resolve",
        ResolveReply(recipients=("gt-police",), policy_version="p" * 16, directory=SIGNED),
        {"recipients": ["gt-police"], "policy_version": "p" * 16, "directory": _old_excerpt()},
    ),
    (
        "explain",
        ExplainReply(
            policy_version="p" * 16,
            publish=PublishVerdict(allowed=True, policy_ids=("grant.sica",)),
            candidates=(
                CandidateVerdict(
                    agency="hn-police", allowed=False, summary="denied: TLP", policy_ids=("g.t",)
                ),
            ),
        ),
        {
            "policy_version": "p" * 16,
            "publish": {"allowed": True, "policy_ids": ["grant.sica"]},
            "candidates": [
                {
                    "agency": "hn-police",
                    "allowed": False,
                    "summary": "denied: TLP",
                    "policy_ids": ["g.t"],
                }
            ],
        },
    ),
    ("directory", SIGNED, _old_excerpt()),
    (
        "status-accepted",
        StatusReply(
            StatusAccepted(
                state="accepted",
                bulletin_id=BID,
                routed=("hn-police", "sv-police"),
                denied=(
                    DeniedRecipient(
                        agency="jm-police", policy_ids=(), reasons=("no policy grants it",)
                    ),
                ),
                policy_version="p" * 16,
            )
        ),
        {
            "state": "accepted",
            "bulletin_id": BID,
            "routed": ["hn-police", "sv-police"],
            "denied": [
                {"agency": "jm-police", "policy_ids": [], "reasons": ["no policy grants it"]}
            ],
            "policy_version": "p" * 16,
        },
    ),
    (
        # ADR 15: the links are on the wire only when set (above: the bytes as before).
        "status-withdrawn-correction",
        StatusReply(
            StatusAccepted(
                state="accepted",
                bulletin_id=BID,
                routed=("hn-police",),
                denied=(),
                policy_version="p" * 16,
                withdrawn_at=1_780_000_100,
                supersedes=OTHER_BID,
                superseded_by=(THIRD_BID,),
            )
        ),
        {
            "state": "accepted",
            "bulletin_id": BID,
            "routed": ["hn-police"],
            "denied": [],
            "policy_version": "p" * 16,
            "withdrawn_at": 1_780_000_100,
            "supersedes": OTHER_BID,
            "superseded_by": [THIRD_BID],
        },
    ),
    (
        "recall",
        RecallReply(
            bulletin_id=BID,
            withdrawn_at=1_780_000_100,
            state="done",
            removed=("jm-police",),
            notified=("hn-police",),
            copies_kept=0,
        ),
        {
            "bulletin_id": BID,
            "withdrawn_at": 1_780_000_100,
            "state": "done",
            "removed": ["jm-police"],
            "notified": ["hn-police"],
            "copies_kept": 0,
        },
    ),
    (
        "status-rejected",
        StatusReply(
            StatusRejected(
                state="rejected", bulletin_id=BID, reason="expired", message="expired 7 s ago"
            )
        ),
        {
            "state": "rejected",
            "bulletin_id": BID,
            "reason": "expired",
            "message": "expired 7 s ago",
        },
    ),
    (
        "status-pending",
        StatusReply(StatusPending(state="pending", bulletin_id=BID)),
        {"state": "pending", "bulletin_id": BID},
    ),
    (
        "receipts",
        ReceiptsReply(
            bulletin_id=BID,
            recipients=(
                ReceiptEntry(agency="hn-police", received_at=12, signature="c2ln"),
                ReceiptEntry(agency="sv-police", received_at=None, signature=None),
            ),
        ),
        {
            "bulletin_id": BID,
            "recipients": [
                {"agency": "hn-police", "received_at": 12, "signature": "c2ln"},
                {"agency": "sv-police", "received_at": None, "signature": None},
            ],
        },
    ),
    (
        "rotate",
        RotateReply(signing_kid=KID, encryption_kid=KEM_KID),
        {"signing_kid": KID, "encryption_kid": KEM_KID},
    ),
    (
        "revoke-key",
        RevokeKeyReply(agency="gt-police", kid=KID, revoked_at=77),
        {"agency": "gt-police", "kid": KID, "revoked_at": 77},
    ),
    (
        "dead-letters",
        DeadLettersReply(
            dead_letters=(
                DeadLetterEntry(
                    kind="ingest",
                    agency="gt-police",
                    bulletin_id=None,
                    dead_seq=None,
                    source_seq=4,
                    deliveries=11,
                    time_ms=1000,
                    redriven=False,
                ),
            )
        ),
        {
            "dead_letters": [
                {
                    "kind": "ingest",
                    "agency": "gt-police",
                    "bulletin_id": None,
                    "dead_seq": None,
                    "source_seq": 4,
                    "deliveries": 11,
                    "time_ms": 1000,
                    "redriven": False,
                }
            ]
        },
    ),
    (
        "withheld",
        WithheldReply(withheld=3, first_at=1_780_000_020, latest_at=1_780_000_560),
        {"withheld": 3, "first_at": 1_780_000_020, "latest_at": 1_780_000_560},
    ),
    (
        "withheld-none",
        WithheldReply(withheld=0, first_at=None, latest_at=None),
        {"withheld": 0, "first_at": None, "latest_at": None},
    ),
    (
        "error",
        ErrorReply.of("not_found", "no bulletin of gt-police"),
        {"error": {"code": "not_found", "message": "no bulletin of gt-police"}},
    ),
]


@pytest.mark.parametrize(("reply", "old"), [w[1:] for w in WIRE], ids=[w[0] for w in WIRE])
def test_a_reply_puts_the_same_bytes_on_the_wire_as_before(
    reply: AgencyReply | ErrorReply, old: Any
) -> None:
    raw = encode_reply(reply)
    assert raw == canonical_json(old)
    # ... and reads back as itself (what the SDK does with it).
    assert parse_model(type(reply), raw, max_bytes=1 << 20, what="reply") == reply


def test_a_request_puts_the_same_bytes_on_the_wire_as_before() -> None:
    labels = Labels(
        topic="drug-trafficking", classification=Classification.RESTRICTED, tlp=Tlp.AMBER,
        rel_to=("SICA",),
    )  # fmt: skip
    old = {"labels": labels.model_dump(mode="json", exclude_none=True), "expires_at": 99}
    assert encode_request(ResolveRequest(labels=labels, expires_at=99)) == canonical_json(old)


def test_only_the_error_reply_has_a_field_named_error() -> None:
    """Readers tell an error from an answer by its one key (``clients.requests``)."""
    replies: list[type[BaseModel]] = [
        ResolveReply, ExplainReply, ReceiptsReply, RotateReply, RevokeKeyReply,
        DeadLettersReply, StatusAccepted, StatusRejected, StatusPending, WithheldReply,
        RecipientsReply, RecallReply, SignedChanges, SignedExcerpt,
    ]  # fmt: skip
    assert [m.__name__ for m in replies if "error" in m.model_fields] == []
    assert set(ErrorReply.model_fields) == {"error"}


def test_every_operation_has_a_subject_and_its_models_are_exported() -> None:
    assert set(get_args(ApiOp)) == set(API_OPS)
    assert {"ResolveRequest", "StatusReply", "ErrorReply"} <= {m.__name__ for m in MODELS.values()}


def test_an_error_message_is_cut_to_the_contract_limit() -> None:
    reply = ErrorReply.of("malformed", "x" * 1000)
    assert len(reply.error.message) == MAX_ERROR_MESSAGE_CHARS


def test_an_error_code_outside_the_closed_set_is_not_a_valid_reply() -> None:
    raw = b'{"error":{"code":"teapot","message":"short and stout"}}'
    with pytest.raises(EnvelopeError):
        parse_model(ErrorReply, raw, max_bytes=1000, what="reply")


# --- the broker: errors into replies ------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        pytest.param(EnvelopeError("bad", code="unknown_label"), "unknown_label", id="own-code"),
        pytest.param(SignatureError("bad", code="key_not_current"), "key_not_current", id="sig"),
        pytest.param(PolicyDenied("no"), "policy_deny", id="policy"),
        pytest.param(NotFound("none"), "not_found", id="not-found"),
        pytest.param(
            IstmoError("wide", code="too_many_recipients"), "too_many_recipients", id="limit"
        ),
        pytest.param(AuditStoreError("down"), "audit_store", id="audit-store"),
        # A code the contract lacks becomes its branch's (a bug, logged), never a new code.
        pytest.param(EnvelopeError("bad", code="new_check"), "malformed", id="envelope-branch"),
        pytest.param(DecryptionError("bad", code="odd"), "malformed", id="decryption-branch"),
        pytest.param(SignatureError("bad", code="odd"), "signature_invalid", id="sig-branch"),
        pytest.param(PolicyDenied("no", code="odd"), "policy_deny", id="policy-branch"),
        pytest.param(BusUnavailable("down"), "internal", id="bus"),
        pytest.param(IstmoError("what", code="odd"), "internal", id="base"),
    ],
)
def test_every_error_becomes_a_code_of_the_contract(exc: IstmoError, code: str) -> None:
    reply = error_reply(exc)
    assert reply.error.code == code
    assert reply.error.code in ERROR_CODES
    if code != "internal":
        assert reply.error.message == str(exc)


def test_a_fault_of_the_broker_says_nothing_of_itself() -> None:
    """A ConfigError names files and settings: the caller gets "internal", the log the rest."""
    reply = error_reply(ConfigError("cannot read /etc/istmo/directory.json", code="directory"))
    assert reply.error.code == "internal"
    assert "/etc" not in reply.error.message


def test_an_answer_over_the_message_limit_is_replaced_by_a_refusal() -> None:
    reply = RevokeKeyReply(agency="gt-police", kid=KID, revoked_at=1)
    raw = encode_reply(reply)
    assert reply_bytes(reply, max_bytes=len(raw)) == raw
    refused = json.loads(reply_bytes(reply, max_bytes=len(raw) - 1))
    assert refused["error"]["code"] == "answer_too_large"
    assert f"the answer is {len(raw)} bytes" in refused["error"]["message"]


def test_a_receipts_request_reads_old_and_new_and_an_old_broker_refuses_signed() -> None:
    """An SDK before signed receipts sends a plain ``BulletinRequest``: this broker reads it
    as the plain request. A broker before it reads a signed request as a ``BulletinRequest``
    and refuses it as ``malformed``, which the SDK reports as a broker too old."""
    from schemas.agency import BulletinRequest
    from schemas.receipt_requests import ReceiptsRequest

    bid = "5f0c7d2e-9a41-4c36-8d0b-1e2f3a4b5c6d"
    old = encode_request(BulletinRequest(bulletin_id=bid))
    assert parse_model(ReceiptsRequest, old, max_bytes=1000, what="request").signed is None
    signed = encode_request(ReceiptsRequest(bulletin_id=bid, signed=True))
    assert signed == canonical_json({"bulletin_id": bid, "signed": True})
    with pytest.raises(EnvelopeError) as refused:
        parse_model(BulletinRequest, signed, max_bytes=1000, what="request")
    assert refused.value.code == "malformed"
    unsigned_page = canonical_json({"bulletin_id": bid, "after": "hn-police"})
    with pytest.raises(EnvelopeError) as paged:
        parse_model(ReceiptsRequest, unsigned_page, max_bytes=1000, what="request")
    assert paged.value.code == "malformed"
