"""Replies and requests for information in the spec's test vectors (ADR 16): the agency API
exchanges about them. The envelopes themselves (an RFI and a reply to it) are cases of
``schemas.spec_envelopes``; everything here is deterministic. Files are written by
``schemas.spec_vectors``.
"""

from __future__ import annotations

import json
from typing import Any

from schemas.agency import (
    BulletinRequest,
    ErrorReply,
    RecipientsReply,
    ReplyContextReply,
    ResolveRequest,
    RfiEntry,
    RfiListReply,
    RfiListRequest,
    StatusRejected,
    StatusReply,
    encode_reply,
    encode_request,
)
from schemas.labels import Labels
from schemas.spec_keys import NOW, POLICY_VERSION

__all__ = ["conversation_exchanges"]


def _case(envelopes: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in envelopes["cases"] if c["name"] == name)


def conversation_exchanges(
    envelopes: dict[str, Any], directory_version: str
) -> list[tuple[str, str, bytes, bytes]]:
    """(caller, op, request, reply) of the RFI and reply cases' requests, and refusals."""
    rfi = json.loads(_case(envelopes, "rfi")["header_canonical"])
    reply = json.loads(_case(envelopes, "reply")["header_canonical"])
    first_id = json.loads(_case(envelopes, "two-suites")["header_canonical"])["bulletin_id"]
    rfi_id, rfi_labels = rfi["bulletin_id"], Labels.model_validate_json(json.dumps(rfi["labels"]))
    entry = RfiEntry(
        rfi_id=rfi_id,
        asker="gt-police",
        topic=rfi_labels.topic,
        precedence=rfi_labels.precedence.value,
        created_at=rfi["created_at"],
        due_at=rfi["rfi_due"],
        state="answered",
        addressees=("rc-drugs", "sv-police"),
        acknowledged_by=("rc-drugs",),
        answered_by=("rc-drugs",),
        closed_at=None,
        overdue_since=None,
    )
    # What an addressee sees of the same RFI: only whether it answered itself.
    seen_by_sv = entry.model_copy(
        update={"addressees": (), "acknowledged_by": (), "answered_by": ()}
    )
    closed = entry.model_copy(update={"state": "closed", "closed_at": NOW + 3600})
    not_received = (
        "no bulletin you received or sent has this id: reply to one `istmo receive` handed you"
    )
    return [
        (
            "gt-police",
            "recipients",
            encode_request(ResolveRequest(labels=rfi_labels, addressees=("rc-drugs", "sv-police"))),
            encode_reply(
                RecipientsReply(
                    recipients=("rc-drugs", "sv-police"),
                    policy_version=POLICY_VERSION,
                    directory_version=directory_version,
                )
            ),
        ),
        (
            "gt-police",
            "recipients",
            encode_request(ResolveRequest(labels=rfi_labels, addressees=("hn-police",))),
            encode_reply(
                ErrorReply.of(
                    "rfi_addressee_denied",
                    "the policy does not let hn-police receive this request (no policy grants "
                    "it): leave it out of --to, or ask with labels it may receive (`istmo "
                    "preview` says who may)",
                )
            ),
        ),
        (
            "rc-drugs",
            "reply-context",
            encode_request(BulletinRequest(bulletin_id=rfi_id)),
            encode_reply(
                ReplyContextReply(
                    bulletin_id=rfi_id,
                    originator="gt-police",
                    labels=rfi_labels,
                    thread=rfi_id,
                    reply_all=True,
                    rfi_due=rfi["rfi_due"],
                    audience=("gt-police", "sv-police"),
                )
            ),
        ),
        (
            "rc-drugs",
            "recipients",
            encode_request(
                ResolveRequest(
                    labels=Labels.model_validate_json(json.dumps(reply["labels"])),
                    in_reply_to=rfi_id,
                )
            ),
            encode_reply(
                RecipientsReply(
                    recipients=("gt-police", "sv-police"),
                    policy_version=POLICY_VERSION,
                    directory_version=directory_version,
                )
            ),
        ),
        (
            "hn-police",
            "reply-context",
            encode_request(BulletinRequest(bulletin_id=rfi_id)),
            encode_reply(ErrorReply.of("not_found", not_received)),
        ),
        (
            "rc-drugs",
            "status",
            encode_request(BulletinRequest(bulletin_id=reply["bulletin_id"])),
            encode_reply(
                StatusReply(
                    StatusRejected(
                        state="rejected",
                        bulletin_id=reply["bulletin_id"],
                        reason="unknown_in_reply_to",
                        message="answers no bulletin you received: reply to the id of a "
                        "bulletin `istmo receive` handed you",
                    )
                )
            ),
        ),
        (
            "gt-police",
            "rfi-list",
            encode_request(RfiListRequest()),
            encode_reply(RfiListReply(rfis=(entry,))),
        ),
        (
            "sv-police",
            "rfi-list",
            encode_request(RfiListRequest(closed=True)),
            encode_reply(RfiListReply(rfis=(seen_by_sv,))),
        ),
        (
            "gt-police",
            "rfi-close",
            encode_request(BulletinRequest(bulletin_id=rfi_id)),
            encode_reply(RfiListReply(rfis=(closed,))),
        ),
        (
            "gt-police",
            "rfi-close",
            encode_request(BulletinRequest(bulletin_id=first_id)),
            encode_reply(
                ErrorReply.of(
                    "not_an_rfi",
                    "that bulletin of yours is not a request for information (publish one with "
                    "`istmo rfi`)",
                )
            ),
        ),
    ]
