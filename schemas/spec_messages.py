"""Receipts, withdrawals, signed directory answers and agency API exchanges for the spec's
test vectors: deterministic (Ed25519 signatures included), from the fixed keys of
``schemas.spec_envelopes``. Files are written by ``schemas.spec_vectors``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from schemas.agency import (
    Announcement,
    BulletinRequest,
    ChangesRequest,
    DeniedRecipient,
    DirectoryRequest,
    ErrorReply,
    RecallReply,
    ReceiptEntry,
    ReceiptsReply,
    RecipientsReply,
    ResolveRequest,
    StatusAccepted,
    StatusPending,
    StatusRejected,
    StatusReply,
    WithheldReply,
    WithheldRequest,
    encode_announcement,
    encode_reply,
    encode_request,
)
from schemas.canonical import b64e, canonical_json
from schemas.desk_summary import (
    GENESIS_MAC,
    DeskSummaryReply,
    SummaryCount,
    encode_summary,
    sign_summary,
)
from schemas.directory import (
    AgencyRecord,
    DirectoryChanges,
    DirectoryExcerpt,
    EncryptionKeyRecord,
    SigningKeyRecord,
    directory_version,
    sign_changes,
    sign_excerpt,
)
from schemas.federation import count_labels, encode_counts, sign_counts
from schemas.ids import AgencyId, BulletinId
from schemas.link_transfer import encode_transfer, sign_transfer
from schemas.receipt import Receipt, sign_receipt
from schemas.receipt_requests import ReceiptsRequest, SignedReceiptEntry, SignedReceiptsReply
from schemas.selfsigned import signing_input
from schemas.spec_conversations import conversation_exchanges
from schemas.spec_envelopes import CASES
from schemas.spec_forwarding import forward_exchanges
from schemas.spec_groups import group_exchanges
from schemas.spec_keylog import key_log_exchanges
from schemas.spec_keys import (
    DIRECTORY_OWNER,
    NOW,
    POLICY_VERSION,
    encryption_key,
    signing_key,
    text_of,
)
from schemas.subjects import (
    api_subject,
    receipt_subject,
)
from schemas.withdrawal import encode_withdrawal, sign_withdrawal

__all__ = ["agency_api", "directory", "signed_documents"]


# ---------------------------------------------------------------------------- signed documents
def signed_documents(envelopes: dict[str, Any]) -> dict[str, Any]:
    first = envelopes["cases"][0]
    header = json.loads(first["envelope"])["header"]
    receipt = sign_receipt(
        bulletin_id=BulletinId(header["bulletin_id"]),
        originator=AgencyId("gt-police"),
        recipient=AgencyId("rc-drugs"),
        envelope_digest=first["envelope_sha256"],
        received_at=NOW + 5,
        key=signing_key("rc-drugs"),
    )
    withdrawal = sign_withdrawal(
        bulletin_id=BulletinId(header["bulletin_id"]),
        originator=AgencyId("gt-police"),
        reason="Wrong vessel count; a correction follows.",
        issued_at=NOW + 600,
        key=signing_key("gt-police"),
    )
    return {
        "description": "Documents signed by their author: signing input is "
        '"istmo/v1/<domain>" 0x00 canonical(every field but sig). Ed25519 is deterministic, '
        "so sig must come out exactly as here.",
        "receipt": {
            "signer": "rc-drugs",
            "domain": "receipt",
            "signing_input": text_of(signing_input("receipt", receipt)),
            "message": text_of(canonical_json(receipt.model_dump(mode="json"))),
            "subject": receipt_subject("rc-drugs"),
            "nats_msg_id": f"{receipt.bulletin_id}:{receipt.recipient}:receipt",
        },
        "withdrawal": {
            "signer": "gt-police",
            "domain": "withdrawal",
            "signing_input": text_of(signing_input("withdrawal", withdrawal)),
            "message": text_of(encode_withdrawal(withdrawal)),
            "subject": api_subject("gt-police", "recall"),
            "delivered_nats_msg_id": f"{withdrawal.bulletin_id}:rc-drugs:withdrawn",
        },
        "federation_counts": _federation_counts(header["bulletin_id"]),
        "federation_transfer": _federation_transfer(first["envelope"]),
    }


def _federation_transfer(envelope: str) -> dict[str, Any]:
    """One bulletin handed across a partner link (ADR 33): the envelope unchanged, with the
    signed directory excerpt naming its originator, signed by the sending side's link key."""
    key = signing_key("link.eu-siena.sent")
    raw = envelope.encode("utf-8")
    transfer = sign_transfer(
        link="eu-siena",
        bulletin_id=json.loads(raw)["header"]["bulletin_id"],
        envelope=raw,
        directory=_directory_answers()[0],
        issued_at=NOW + 60,
        key=key,
    )
    return {
        "signer": "the sending side's link key (the federation_counts key)",
        "public": b64e(key.verify_key.public),
        "domain": "federation-transfer",
        "signing_input": text_of(signing_input("federation-transfer", transfer)),
        "message": text_of(encode_transfer(transfer)),
    }


def _federation_counts(bulletin_id: str) -> dict[str, Any]:
    """A partner link's signed daily counts (ADR 32): two bulletins of one label set and
    one of another, signed by the sending side's link key."""
    key = signing_key("link.eu-siena.sent")
    green = ("drug-trafficking", "RESTRICTED", "GREEN", ("H0",))
    amber = ("migration", "UNCLASSIFIED", "AMBER", ())
    counts = sign_counts(
        link="eu-siena",
        side="sent",
        region="istmo-sica",
        day="2026-01-01",
        counts=count_labels(
            [
                (bulletin_id, green),
                ("00000000-0000-4000-8000-000000000002", green),
                ("00000000-0000-4000-8000-000000000003", amber),
            ]
        ),
        issued_at=NOW + 86_400,
        key=key,
    )
    return {
        "signer": "the sending side's link key",
        "public": b64e(key.verify_key.public),
        "domain": "federation-counts",
        "ids_digest": "hex SHA-256 of the label set's bulletin ids, sorted, joined by LF",
        "signing_input": text_of(signing_input("federation-counts", counts)),
        "message": text_of(encode_counts(counts)),
    }


def _record(agency: str, name: str, state: str | None, sector: Any) -> AgencyRecord:
    sk, ek = signing_key(agency).verify_key, encryption_key(agency).public_key
    return AgencyRecord(
        id=agency,
        name=name,
        state=state,
        communities=("SICA",),
        sector=sector,
        status="active",
        signing_keys=(
            SigningKeyRecord(kid=sk.kid, public=b64e(sk.public), created_at=NOW - 86400),
        ),
        encryption_key=EncryptionKeyRecord(
            kid=ek.kid, kem=ek.kem, public=b64e(ek.public), created_at=NOW - 86400
        ),
    )


_DIR_VERSION = directory_version(42, hashlib.sha256(b"istmo spec vectors directory").hexdigest())
_DIR_SINCE = directory_version(40, hashlib.sha256(b"istmo spec vectors since").hexdigest())


def _directory_answers() -> tuple[Any, Any]:
    records = (
        _record("gt-police", "Guatemala: Policía Nacional Civil", "GT", "police"),
        _record("rc-drugs", "Regional centre: drug trafficking", None, "regional-centre"),
        _record("sv-police", "El Salvador: Policía Nacional Civil", "SV", "police"),
    )
    excerpt = DirectoryExcerpt(v=1, directory_version=_DIR_VERSION, issued_at=NOW, agencies=records)
    changes = DirectoryChanges(
        v=1, since=_DIR_SINCE, directory_version=_DIR_VERSION, issued_at=NOW, changed=("rc-drugs",)
    )
    key = signing_key(DIRECTORY_OWNER)
    return sign_excerpt(excerpt, key), sign_changes(changes, key)


def directory() -> dict[str, Any]:
    signed, changes = _directory_answers()
    return {
        "description": "Answers signed by the broker's directory key (keys.json "
        'directory_key). Signing input: "istmo/v1/directory" 0x00 canonical(excerpt), '
        '"istmo/v1/directory-changes" 0x00 canonical(changes); null fields are written.',
        "excerpt": {
            "signing_input": text_of(
                b"istmo/v1/directory\x00" + canonical_json(signed.excerpt.model_dump(mode="json"))
            ),
            "message": text_of(encode_reply(signed)),
        },
        "changes": {
            "signing_input": text_of(
                b"istmo/v1/directory-changes\x00"
                + canonical_json(changes.changes.model_dump(mode="json"))
            ),
            "message": text_of(encode_reply(changes)),
        },
    }


# ---------------------------------------------------------------------------- agency API
def _desk_summary_exchanges() -> list[tuple[str, str, bytes, bytes]]:
    """A desk's first access-log summary (ADR 31), recorded; the same one sent again once
    another followed it, refused as out of order."""
    summary = sign_summary(
        agency="rc-drugs",
        log="0f1e2d3c4b5a6978",
        first_seq=1,
        last_seq=7,
        prev_mac=GENESIS_MAC,
        head_mac=hashlib.sha256(b"the desk log's 7th MAC").hexdigest(),
        from_at=NOW - 3600,
        to_at=NOW - 60,
        counts=(
            SummaryCount(analyst="-", action="account-added", n=1),
            SummaryCount(analyst="3fa1c2d4e5b6", action="open", n=3),
            SummaryCount(analyst="3fa1c2d4e5b6", action="print", n=1),
            SummaryCount(analyst="3fa1c2d4e5b6", action="sign-in", n=2),
        ),
        issued_at=NOW,
        key=signing_key("rc-drugs"),
    )
    raw = encode_summary(summary)
    recorded = DeskSummaryReply(log=summary.log, last_seq=7, recorded_at=NOW + 1, again=False)
    late = ErrorReply.of(
        "summary_out_of_order",
        "the summary does not follow the last one recorded of this desk log: it must start "
        "at entry 12, after the MAC that one ended with",
    )
    return [
        ("rc-drugs", "desk-summary", raw, encode_reply(recorded)),
        ("rc-drugs", "desk-summary", raw, encode_reply(late)),
    ]


def agency_api(
    envelopes: dict[str, Any], signed_docs: dict[str, Any], groups: dict[str, Any]
) -> dict[str, Any]:
    first = json.loads(envelopes["cases"][0]["envelope"])["header"]
    bid = first["bulletin_id"]
    receipt = json.loads(signed_docs["receipt"]["message"])
    withdrawal = signed_docs["withdrawal"]["message"]
    excerpt, changes = _directory_answers()
    labels = CASES["two-suites"]["labels"]
    exchanges: list[tuple[str, str, bytes, bytes]] = [
        ("gt-police", *exchange)
        for exchange in _first_edition(bid, receipt, withdrawal, excerpt, changes, labels, first)
    ]
    exchanges += conversation_exchanges(envelopes, _DIR_VERSION)
    exchanges += group_exchanges(groups)
    exchanges += forward_exchanges(envelopes)
    exchanges += key_log_exchanges()
    exchanges += _desk_summary_exchanges()
    return {
        "description": "One request and reply per exchange, as canonical JSON on "
        "istmo.api.<caller>.<op>. A reply with the one key 'error' is an error reply. "
        "announcement: what relays publish on istmo.announce.",
        "exchanges": [
            {
                "op": op,
                "caller": caller,
                "subject": api_subject(caller, op),
                "request": text_of(q),
                "reply": text_of(a),
            }
            for caller, op, q, a in exchanges
        ],
        "announcement": text_of(
            encode_announcement(
                Announcement(
                    directory_version=_DIR_VERSION, policy_version=POLICY_VERSION, interval_s=5
                )
            )
        ),
    }


def _first_edition(
    bid: str,
    receipt: dict[str, Any],
    withdrawal: str,
    excerpt: Any,
    changes: Any,
    labels: Any,
    first: dict[str, Any],
) -> list[tuple[str, bytes, bytes]]:
    """The exchanges of the spec's first edition, all as gt-police."""
    return [
        (
            "recipients",
            encode_request(ResolveRequest(labels=labels, expires_at=first["expires_at"])),
            encode_reply(
                RecipientsReply(
                    recipients=("rc-drugs", "sv-police"),
                    policy_version=POLICY_VERSION,
                    directory_version=_DIR_VERSION,
                )
            ),
        ),
        (
            "directory",
            encode_request(DirectoryRequest(agencies=("gt-police", "rc-drugs", "sv-police"))),
            encode_reply(excerpt),
        ),
        ("changes", encode_request(ChangesRequest(since=_DIR_SINCE)), encode_reply(changes)),
        (
            "status",
            encode_request(BulletinRequest(bulletin_id=bid)),
            encode_reply(
                StatusReply(
                    StatusAccepted(
                        state="accepted",
                        bulletin_id=bid,
                        routed=("rc-drugs", "sv-police"),
                        denied=(
                            DeniedRecipient(
                                agency="hn-police", policy_ids=(), reasons=("no policy grants it",)
                            ),
                        ),
                        policy_version=POLICY_VERSION,
                    )
                )
            ),
        ),
        (
            "status",
            encode_request(BulletinRequest(bulletin_id=bid)),
            encode_reply(StatusReply(StatusPending(state="pending", bulletin_id=bid))),
        ),
        (
            "status",
            encode_request(BulletinRequest(bulletin_id=bid)),
            encode_reply(
                StatusReply(
                    StatusRejected(
                        state="rejected",
                        bulletin_id=bid,
                        reason="timestamp_out_of_window",
                        message="created_at is 900 s behind the broker clock (allowed 300 s)",
                    )
                )
            ),
        ),
        (
            "receipts",
            encode_request(BulletinRequest(bulletin_id=bid)),
            encode_reply(
                ReceiptsReply(
                    bulletin_id=bid,
                    recipients=(
                        ReceiptEntry(
                            agency="rc-drugs",
                            received_at=receipt["received_at"],
                            signature=receipt["sig"],
                        ),
                        ReceiptEntry(agency="sv-police", received_at=None, signature=None),
                    ),
                )
            ),
        ),
        (
            "receipts",
            encode_request(ReceiptsRequest(bulletin_id=bid, signed=True)),
            encode_reply(
                SignedReceiptsReply(
                    bulletin_id=bid,
                    originator="gt-police",
                    envelope_digest=receipt["envelope_digest"],
                    recipients=(
                        SignedReceiptEntry(
                            agency="rc-drugs",
                            received_at=receipt["received_at"],
                            receipt=Receipt.model_validate(receipt),
                        ),
                        SignedReceiptEntry(agency="sv-police", received_at=None, receipt=None),
                    ),
                    next=None,
                )
            ),
        ),
        (
            "withheld",
            encode_request(WithheldRequest()),
            encode_reply(WithheldReply(withheld=1, first_at=NOW - 60, latest_at=NOW - 60)),
        ),
        (
            "recall",
            withdrawal.encode(),
            encode_reply(
                RecallReply(
                    bulletin_id=bid,
                    withdrawn_at=NOW + 601,
                    state="done",
                    removed=("sv-police",),
                    notified=("rc-drugs",),
                    copies_kept=0,
                )
            ),
        ),
        (
            "status",
            encode_request(BulletinRequest(bulletin_id="00000000-0000-4000-8000-000000000000")),
            encode_reply(ErrorReply.of("not_found", "no bulletin of yours has this id")),
        ),
    ]
