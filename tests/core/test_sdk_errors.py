"""The SDK's table from an error reply's code to the exception it raises
(``clients.errors``), and reading replies off the wire (``clients.requests``)."""

from __future__ import annotations

from typing import Any

import pytest

from clients.errors import ERRORS_BY_CODE, NotFound, RequestRefused, error_for
from clients.requests import error_in, make_request, read_reply
from schemas.agency import (
    ERROR_CODES,
    MAX_ERROR_MESSAGE_CHARS,
    BulletinRequest,
    RevokeKeyReply,
    StatusPending,
    StatusReply,
)
from schemas.errors import (
    AuditStoreError,
    BusUnavailable,
    ConfigError,
    EnvelopeError,
    IstmoError,
    PolicyDenied,
    SignatureError,
)

BID = "8f1c2d3e-1111-4222-8333-444455556666"
KID = "sig-" + "a" * 32


def test_the_table_has_every_code_of_the_contract() -> None:
    assert set(ERRORS_BY_CODE) == ERROR_CODES


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("bad_request", EnvelopeError),
        ("bad_agency_id", EnvelopeError),
        ("malformed", EnvelopeError),
        ("oversized", EnvelopeError),
        ("unknown_label", EnvelopeError),
        ("unknown_recipient", EnvelopeError),
        ("unsupported_version", EnvelopeError),
        ("unsupported_suite", EnvelopeError),
        ("too_many_recipients", EnvelopeError),
        ("answer_too_large", EnvelopeError),
        ("already_revoked", EnvelopeError),
        ("originator_mismatch", EnvelopeError),
        ("timestamp_out_of_window", EnvelopeError),
        ("key_reused", EnvelopeError),
        ("bad_key", EnvelopeError),
        ("not_found", NotFound),
        ("key_not_current", SignatureError),
        ("signature_invalid", SignatureError),
        ("policy_deny", PolicyDenied),
        ("agency_not_active", PolicyDenied),
        ("unknown_agency", ConfigError),
        ("audit_store", AuditStoreError),
        ("internal", BusUnavailable),
        # A code this SDK does not know (a newer broker): refused input, never the base.
        ("teapot", RequestRefused),
    ],
)
def test_each_code_raises_its_exception_with_code_and_message(
    code: str, kind: type[IstmoError]
) -> None:
    exc = error_for(code, "the broker's words")
    assert type(exc) is kind
    assert type(exc) is not IstmoError
    assert (exc.code, str(exc)) == (code, "the broker's words")


def test_the_sdks_own_branches_hang_from_the_tree() -> None:
    assert issubclass(NotFound, EnvelopeError)
    assert issubclass(RequestRefused, EnvelopeError)


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param({"state": "pending", "bulletin_id": BID}, id="an-answer"),
        pytest.param({"error": {"code": "x", "message": "y"}, "more": 1}, id="two-keys"),
        pytest.param([{"error": {}}], id="a-list"),
        pytest.param("error", id="a-string"),
    ],
)
def test_what_is_not_an_error_reply_is_left_alone(answer: Any) -> None:
    assert error_in(answer) is None


@pytest.mark.parametrize(
    "detail",
    [
        pytest.param("broken", id="not-an-object"),
        pytest.param({"code": "malformed"}, id="no-message"),
        pytest.param({"code": "malformed", "message": "m", "hint": "h"}, id="extra-field"),
        pytest.param({"code": 7, "message": "m"}, id="code-not-text"),
        pytest.param({"code": "Not A Code", "message": "m"}, id="code-not-a-code"),
        pytest.param({"code": "malformed", "message": ["m"]}, id="message-not-text"),
    ],
)
def test_an_error_reply_that_is_not_well_formed_is_an_envelope_error(detail: Any) -> None:
    exc = error_in({"error": detail})
    assert type(exc) is EnvelopeError
    assert exc.code == "malformed"


def test_an_error_message_is_kept_to_the_contract_limit() -> None:
    exc = error_in({"error": {"code": "policy_deny", "message": "n" * 5000}})
    assert isinstance(exc, PolicyDenied)
    assert len(str(exc)) == MAX_ERROR_MESSAGE_CHARS


def test_a_reply_is_read_into_its_model() -> None:
    raw = b'{"bulletin_id":"' + BID.encode() + b'","state":"pending"}'
    assert read_reply(raw, StatusReply, op="status").root == StatusPending(
        state="pending", bulletin_id=BID
    )


def test_an_error_reply_raises_the_exception_of_its_code() -> None:
    raw = b'{"error":{"code":"not_found","message":"gt-police has no signing key"}}'
    with pytest.raises(NotFound, match=r"^gt-police has no signing key$"):
        read_reply(raw, RevokeKeyReply, op="revoke-key")


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b'{"agency":"gt-police"}', id="fields-missing"),
        pytest.param(b'{"state":"gone","bulletin_id":"' + BID.encode() + b'"}', id="unknown-state"),
    ],
)
def test_an_answer_that_is_neither_is_an_envelope_error(raw: bytes) -> None:
    with pytest.raises(EnvelopeError) as err:
        read_reply(raw, StatusReply if b"state" in raw else RevokeKeyReply, op="status")
    assert type(err.value) is EnvelopeError


def test_a_bad_request_is_refused_before_it_is_sent_without_echoing_it() -> None:
    with pytest.raises(EnvelopeError) as err:
        make_request(BulletinRequest, bulletin_id="../../etc/passwd")
    assert err.value.code == "malformed"
    assert "passwd" not in str(err.value)
    assert str(err.value).startswith("request bulletin_id: ")
