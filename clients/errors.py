"""The SDK's own errors, and which exception each error code of the broker raises.

The SDK's branches of the tree drawn in ``schemas.errors``::

    IstmoError
    ├── EnvelopeError
    │   ├── AttachmentError          an attachment missing, damaged or not opening
    │   ├── NotFound                 no such bulletin or key of this agency's
    │   └── RequestRefused           refused with a code this SDK does not know
    ├── BusUnavailable
    │   └── PublishUnacknowledged    NATS never acknowledged a bulletin
    └── PublishRejected              the relay refused a bulletin (``code`` says why)

``error_for`` turns the code and message of an error reply (``schemas.agency.ErrorReply``)
into the exception a program catches, keeping both: a request the broker found faulty is
an ``EnvelopeError`` (or ``SignatureError``), a refusal by policy a ``PolicyDenied``, a
broker that failed to answer a ``BusUnavailable`` or ``AuditStoreError``. This module
leaves reading replies off the wire to ``clients.requests``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import cast

from schemas.agency import ErrorCode
from schemas.errors import (
    AuditStoreError,
    BusUnavailable,
    ConfigError,
    EnvelopeError,
    IstmoError,
    PolicyDenied,
    SignatureError,
)

__all__ = [
    "ERRORS_BY_CODE",
    "AttachmentError",
    "NotFound",
    "PublishRejected",
    "PublishUnacknowledged",
    "RequestRefused",
    "error_for",
]


class NotFound(EnvelopeError):
    """The request names no bulletin or key of this agency's: one that does not exist and
    another agency's look the same."""

    default_code = "not_found"


class RequestRefused(EnvelopeError):
    """The broker refused a request with a code this SDK does not know (a newer broker);
    ``code`` and the message are the broker's."""

    default_code = "refused"


class AttachmentError(EnvelopeError):
    """An attachment could not be fetched as its originator signed it: a chunk is missing
    or damaged in the broker's store, or does not open. Nothing of it was kept."""

    default_code = "attachment_refused"


class PublishRejected(IstmoError):
    """The relay refused a bulletin; ``code`` is its reason."""

    default_code = "rejected"


class PublishUnacknowledged(BusUnavailable):
    """NATS never acknowledged the bulletin: it may or may not be stored. Publishing it
    again makes a new bulletin (a new id); ask ``status(bulletin_id)`` first."""

    default_code = "unacknowledged"

    def __init__(self, bulletin_id: str, why: str) -> None:
        super().__init__(
            f"NATS did not acknowledge bulletin {bulletin_id} ({why}): it may or may not "
            "be stored; check its status before publishing it again, which would make a "
            "new bulletin"
        )
        self.bulletin_id = bulletin_id


# Every code of the contract, by what a program does about it.
ERRORS_BY_CODE: Mapping[ErrorCode, type[IstmoError]] = MappingProxyType(
    {
        # The request is faulty: fix it; asking again as it is gets the same answer.
        "bad_request": EnvelopeError,
        "bad_agency_id": EnvelopeError,
        "malformed": EnvelopeError,
        "oversized": EnvelopeError,
        "unknown_label": EnvelopeError,
        "unknown_recipient": EnvelopeError,
        "unsupported_version": EnvelopeError,
        "unsupported_suite": EnvelopeError,
        "too_many_recipients": EnvelopeError,  # narrow the labels
        "answer_too_large": EnvelopeError,  # narrow the labels
        "already_revoked": EnvelopeError,
        "last_key": EnvelopeError,
        "not_an_rfi": EnvelopeError,  # rfi-close of a bulletin that asks for nothing
        "forward_not_received": NotFound,
        "forward_denied": PolicyDenied,
        "forward_not_allowed": EnvelopeError,
        "forward_decided": EnvelopeError,
        "originator_mismatch": EnvelopeError,
        "timestamp_out_of_window": EnvelopeError,  # check this machine's clock
        "key_reused": EnvelopeError,
        "bad_key": EnvelopeError,
        "not_found": NotFound,
        # Community groups (ADR 18): a stale epoch or roster is asked for again.
        "unknown_group": NotFound,
        "stale_group_epoch": EnvelopeError,
        "roster_changed": EnvelopeError,
        # A desk summary that does not follow the last one recorded (ADR 31).
        "summary_out_of_order": EnvelopeError,
        "attachment_too_large": EnvelopeError,  # send a smaller file
        "too_many_attachments": EnvelopeError,
        "chunk_conflict": EnvelopeError,  # publish it again: a new bulletin id
        "expired": EnvelopeError,
        # An attachment the broker cannot serve as it was signed (clients.attachments).
        "chunk_missing": AttachmentError,
        "chunk_damaged": AttachmentError,
        # A signature of the request does not verify.
        "key_not_current": SignatureError,
        "signature_invalid": SignatureError,
        # The broker will not let this agency do it.
        "policy_deny": PolicyDenied,
        "rfi_addressee_denied": PolicyDenied,  # ask others, or with labels they may receive
        "agency_not_active": PolicyDenied,  # suspended or revoked
        "not_group_manager": PolicyDenied,
        # The keystore names an agency this broker's directory does not list (yet).
        "unknown_agency": ConfigError,
        # The broker failed: nothing is wrong with the request; try again later.
        "audit_store": AuditStoreError,
        "store_full": BusUnavailable,
        "internal": BusUnavailable,
    }
)


def error_for(code: str, message: str) -> IstmoError:
    """The exception for an error reply, carrying its ``code`` and ``message``; a code
    this SDK does not know is a ``RequestRefused``.

    Args:
        code: the reply's code (a newer broker may send one missing from the table).
        message: the reply's message, as the broker wrote it.
    """
    if code not in ERRORS_BY_CODE:
        return RequestRefused(message, code=code)
    return ERRORS_BY_CODE[cast(ErrorCode, code)](message, code=code)
