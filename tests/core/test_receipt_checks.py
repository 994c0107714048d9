"""The originator's own check of its receipts (``clients.receipt_checks``), with real
keys: each way a broker (or a thief) could pass off a receipt, and what the check says."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from clients.receipt_checks import check_receipts, keys_named
from schemas.canonical import b64e
from schemas.directory import AgencyRecord, SigningKeyRecord
from schemas.ids import AgencyId, BulletinId
from schemas.keys import SigningKey
from schemas.receipt import Receipt, sign_receipt
from schemas.receipt_requests import SignedReceiptEntry, SignedReceiptsReply

NOW = 1_780_000_000
BID = str(uuid.uuid4())
GT = "gt-police"
DIGEST = "ab" * 32  # what gt-police published
KEYS = {a: SigningKey.generate() for a in ("hn-police", "sv-police")}
STOLEN = SigningKey.generate()  # hn-police's old key, revoked at NOW


def record(agency: str) -> AgencyRecord:
    keys = [
        SigningKeyRecord(
            kid=KEYS[agency].verify_key.kid,
            public=b64e(KEYS[agency].verify_key.public),
            created_at=1,
        )
    ]
    if agency == "hn-police":
        keys.append(
            SigningKeyRecord(
                kid=STOLEN.verify_key.kid,
                public=b64e(STOLEN.verify_key.public),
                created_at=0,
                revoked_at=NOW,
            )
        )
    return AgencyRecord(
        id=agency, name=agency, state=agency[:2].upper(), sector="police", status="active",
        signing_keys=tuple(keys),
    )  # fmt: skip


RECORDS = {a: record(a) for a in KEYS}


def receipt(recipient: str = "hn-police", *, key: SigningKey | None = None, **kw: Any) -> Receipt:
    return sign_receipt(
        bulletin_id=BulletinId(kw.get("bulletin_id", BID)),
        originator=AgencyId(kw.get("originator", GT)),
        recipient=AgencyId(recipient),
        envelope_digest=kw.get("digest", DIGEST),
        received_at=kw.get("received_at", NOW + 5),
        key=key or KEYS[recipient],
    )


def answer(*entries: SignedReceiptEntry, digest: str = DIGEST) -> SignedReceiptsReply:
    return SignedReceiptsReply(
        bulletin_id=BID, originator=GT, envelope_digest=digest, recipients=entries, next=None
    )


def entry(
    r: Receipt | None, agency: str = "hn-police", at: int | None = None
) -> SignedReceiptEntry:
    return SignedReceiptEntry(
        agency=agency, received_at=at if at is not None or r is None else r.received_at, receipt=r
    )


def checked(e: SignedReceiptEntry, *, published: str | None = DIGEST) -> tuple[str, str | None]:
    (only,) = check_receipts(
        [answer(e)], bulletin_id=BID, originator=GT, records=RECORDS, envelope_digest=published
    ).recipients
    return only.state, only.reason


GOOD = receipt()
CASES = [
    ("a good receipt", entry(GOOD), ("verified", None)),
    ("none yet", entry(None), ("not_received", None)),
    ("recorded, but the broker shows none signed", entry(None, at=NOW + 5),
     ("failed", "no_signed_receipt")),
    ("tampered signature", entry(GOOD.model_copy(update={"sig": receipt(digest="cd" * 32).sig})),
     ("failed", "signature_invalid")),
    ("the broker moved its time", entry(GOOD.model_copy(update={"received_at": NOW + 1})),
     ("failed", "signature_invalid")),
    ("the broker lists another time than signed", entry(GOOD, at=NOW + 9),
     ("failed", "receipt_mismatch")),
    ("another envelope's digest", entry(receipt(digest="cd" * 32)),
     ("failed", "digest_mismatch")),
    ("another bulletin's receipt", entry(receipt(bulletin_id=str(uuid.uuid4()))),
     ("failed", "receipt_mismatch")),
    ("another originator's bulletin", entry(receipt(originator="bz-police")),
     ("failed", "receipt_mismatch")),
    ("sv-police's receipt listed as hn-police's", entry(receipt("sv-police")),
     ("failed", "recipient_mismatch")),
    ("signed by sv-police's key, naming it", entry(receipt("hn-police", key=KEYS["sv-police"])),
     ("failed", "key_not_bound_to_sender")),
    ("a key the directory does not know", entry(receipt(key=SigningKey.generate())),
     ("failed", "key_not_bound_to_sender")),
    ("a key revoked before the time it claims", entry(receipt(key=STOLEN, received_at=NOW)),
     ("failed", "key_revoked")),
    ("a key revoked since: it stands", entry(receipt(key=STOLEN, received_at=NOW - 1)),
     ("verified", None)),
]  # fmt: skip


@pytest.mark.parametrize(("case", "e", "want"), CASES, ids=[c[0] for c in CASES])
def test_each_receipt_is_checked_by_the_originator(
    case: str, e: SignedReceiptEntry, want: tuple[str, str | None]
) -> None:
    assert checked(e) == want


def test_a_key_revoked_since_is_reported_with_the_receipt() -> None:
    r = receipt(key=STOLEN, received_at=NOW - 1)
    (only,) = check_receipts(
        [answer(entry(r))], bulletin_id=BID, originator=GT, records=RECORDS
    ).recipients
    assert (only.kid, only.key_revoked_at) == (STOLEN.verify_key.kid, NOW)


def test_without_the_publishers_digest_the_brokers_is_checked_and_said() -> None:
    other = "cd" * 32  # the broker recorded (and the receipts name) another envelope
    forged = answer(entry(receipt(digest=other)), digest=other)
    mine = check_receipts([forged], bulletin_id=BID, originator=GT, records=RECORDS,
                          envelope_digest=DIGEST)  # fmt: skip
    theirs = check_receipts([forged], bulletin_id=BID, originator=GT, records=RECORDS)
    assert [r.reason for r in mine.failed] == ["digest_mismatch"]
    assert (mine.digest_from, mine.envelope_digest, mine.broker_digest) == (
        "publisher",
        DIGEST,
        other,
    )
    assert theirs.failed == ()
    assert (theirs.digest_from, theirs.envelope_digest) == ("broker", other)


def test_a_recipient_listed_twice_across_pages_fails_the_second_time() -> None:
    first = answer(entry(GOOD)).model_copy(update={"next": "hn-police"})
    again = answer(entry(GOOD), entry(receipt("sv-police"), agency="sv-police"))
    checks = check_receipts([first, again], bulletin_id=BID, originator=GT, records=RECORDS)
    assert [(r.agency, r.state, r.reason) for r in checks.recipients] == [
        ("hn-police", "verified", None),
        ("hn-police", "failed", "listed_twice"),
        ("sv-police", "verified", None),
    ]


def test_the_records_asked_for_are_those_named_by_receipts() -> None:
    pages = [answer(entry(GOOD), entry(None, agency="sv-police"))]
    assert keys_named(pages) == {"hn-police": KEYS["hn-police"].verify_key.kid}
