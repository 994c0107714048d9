"""The relay's checks on a signed receipt (``broker.relay.receipts``), with real keys."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from broker.relay.receipts import (
    IncomingReceipt,
    ReceiptVerdict,
    attributed,
    check_receipt,
    judge_batch,
    read_batch,
    read_receipt,
)
from broker.store.registry import BulletinRow, ReceiptRow
from schemas.canonical import b64e, canonical_json
from schemas.directory import AgencyRecord, SigningKeyRecord
from schemas.errors import EnvelopeError
from schemas.ids import AgencyId, BulletinId
from schemas.keys import SigningKey
from schemas.receipt import Receipt, sign_receipt, verify_receipt
from schemas.subjects import gated_subject

NOW = 1_780_000_000
BID = str(uuid.uuid4())
DIGEST = "ab" * 32
HN_KEY = SigningKey.generate()
BULLETIN = BulletinRow(
    id=BID,
    originator="gt-police",
    labels="{}",
    envelope_digest=DIGEST,
    ingest_seq=1,
    created_at=NOW,
    accepted_at=NOW,
    recipients="hn-police,sv-police",
    policy_version="p",
    directory_version="d",
)
RECORDS = {
    "hn-police": AgencyRecord(
        id="hn-police",
        name="Honduras: Police",
        state="HN",
        sector="police",
        status="active",
        signing_keys=(
            SigningKeyRecord(
                kid=HN_KEY.verify_key.kid, public=b64e(HN_KEY.verify_key.public), created_at=1
            ),
        ),
    )
}


def receipt(recipient: str = "hn-police", key: SigningKey = HN_KEY, **kw: Any) -> Receipt:
    return sign_receipt(
        bulletin_id=BulletinId(kw.get("bulletin_id", BID)),
        originator=AgencyId(kw.get("originator", "gt-police")),
        recipient=AgencyId(recipient),
        envelope_digest=kw.get("digest", DIGEST),
        received_at=NOW,
        key=key,
    )


def read_and_check(r: Receipt, *, sender: str = "hn-police", **kw: Any) -> None:
    raw = canonical_json(r.model_dump(mode="json"))
    who, parsed = read_receipt(raw, subject=gated_subject("receipt", sender))
    check_receipt(
        parsed,
        sender=who,
        bulletin=kw.get("bulletin", BULLETIN),
        routed=kw.get("routed", {"hn-police", "sv-police"}),
        records=kw.get("records", RECORDS),
        stored_at=kw.get("stored_at", NOW),
    )


def test_a_good_receipt_passes() -> None:
    read_and_check(receipt())


CASES: list[tuple[str, Any, dict[str, Any], str]] = [
    ("another-agencys-receipt", lambda: receipt("sv-police"), {}, "originator_mismatch"),
    ("no-such-bulletin", receipt, {"bulletin": None}, "unknown_bulletin"),
    ("not-routed-to-it", receipt, {"routed": {"sv-police"}}, "unknown_bulletin"),
    (
        "not-addressed-to-it",
        receipt,
        {"bulletin": BULLETIN.model_copy(update={"recipients": "sv-police"})},
        "unknown_bulletin",
    ),
    ("wrong-digest", lambda: receipt(digest="0" * 64), {}, "receipt_mismatch"),
    ("wrong-originator", lambda: receipt(originator="sv-police"), {}, "receipt_mismatch"),
    (
        "unregistered-key",
        lambda: receipt(key=SigningKey.generate()),
        {},
        "key_not_bound_to_sender",
    ),
]


@pytest.mark.parametrize(("name", "make", "kw", "code"), CASES, ids=[c[0] for c in CASES])
def test_a_receipt_is_refused_with_its_code(
    name: str, make: Any, kw: dict[str, Any], code: str
) -> None:
    with pytest.raises(EnvelopeError) as err:
        read_and_check(make(), **kw)
    assert err.value.code == code


def test_a_forged_signature_does_not_verify() -> None:
    r = receipt()
    forged = r.model_copy(update={"received_at": NOW + 1})
    with pytest.raises(EnvelopeError) as err:
        read_and_check(forged)
    assert err.value.code == "signature_invalid"


def test_a_receipt_on_another_subject_is_refused() -> None:
    with pytest.raises(EnvelopeError):
        read_receipt(b"{}", subject="istmo.gated.ingest.hn-police")


# ---------------------------------------------------------------------- a batch
SUBJECT = gated_subject("receipt", "hn-police")
OTHER = BULLETIN.model_copy(update={"id": str(uuid.uuid4()), "recipients": "hn-police"})


def incoming(seq: int, raw: bytes, subject: str = SUBJECT) -> IncomingReceipt:
    return IncomingReceipt(seq=seq, subject=subject, raw=raw, stored_at=NOW)


def wire(r: Receipt) -> bytes:
    return canonical_json(r.model_dump(mode="json"))


def judge(batch: list[IncomingReceipt]) -> list[ReceiptVerdict]:
    return judge_batch(
        batch,
        read_batch(batch),
        bulletins={BID: BULLETIN, OTHER.id: OTHER},
        routed={BID: {"hn-police", "sv-police"}, OTHER.id: {"hn-police"}},
        records=RECORDS,
        at=NOW * 1000 + 7,
    )


def test_a_forged_receipt_in_a_batch_is_refused_and_the_good_ones_around_it_pass() -> None:
    forged = receipt(bulletin_id=OTHER.id).model_copy(update={"received_at": NOW + 1})
    batch = [
        incoming(10, wire(receipt())),
        incoming(11, wire(forged)),
        incoming(12, b'{"v":1}'),
        incoming(13, wire(receipt(bulletin_id=OTHER.id))),
    ]
    verdicts = judge(batch)
    assert [v.accepted for v in verdicts] == [True, False, False, True]
    assert [v.seq for v in verdicts] == [10, 11, 12, 13]
    assert [(v.event.type, v.event.reason) for v in verdicts] == [
        ("bulletin.received", None),
        ("receipt.rejected", "signature_invalid"),
        ("receipt.rejected", "malformed"),
        ("bulletin.received", None),
    ]
    assert verdicts[1].event.event_id == "receipt:11:rejected"
    assert verdicts[1].event.actor == "hn-police"
    assert verdicts[0].row == {
        "bulletin_id": BID,
        "recipient": "hn-police",
        "received_at": NOW,
        "recorded_at": NOW,
        "signature": receipt().sig,
        "kid": HN_KEY.verify_key.kid,  # kept since migration 0010: the originator verifies it
    }
    assert verdicts[3].row is not None
    assert verdicts[3].row["bulletin_id"] == OTHER.id


def test_a_receipt_for_a_bulletin_the_batch_did_not_find_is_refused() -> None:
    stray = receipt(bulletin_id=str(uuid.uuid4()))
    (verdict,) = judge([incoming(5, wire(stray))])
    assert not verdict.accepted
    assert verdict.event.reason == "unknown_bulletin"


def test_a_receipt_on_a_subject_naming_no_agency_is_refused_as_unknown() -> None:
    (verdict,) = judge([incoming(6, wire(receipt()), subject="istmo.gated.ingest.hn-police")])
    assert not verdict.accepted
    assert verdict.event.actor == "unknown"


def test_a_receipt_twice_in_one_batch_gets_the_same_row_and_event() -> None:
    first, second = judge([incoming(1, wire(receipt())), incoming(2, wire(receipt()))])
    assert first.accepted
    assert second.accepted
    assert first.row == second.row
    assert first.event.event_id == second.event.event_id


def revoked_at(when: int) -> dict[str, AgencyRecord]:
    """The directory with hn-police's key revoked from ``when``."""
    hn = RECORDS["hn-police"]
    key = hn.signing_keys[0].model_copy(update={"revoked_at": when})
    return {"hn-police": hn.model_copy(update={"signing_keys": (key,)})}


@pytest.mark.parametrize(
    ("name", "revoked", "stored_at", "refused"),
    [
        # The receipt says NOW; JetStream stored it at stored_at.
        ("revoked-long-before", NOW - 3600, NOW, True),
        ("revoked-the-second-it-was-stored", NOW, NOW, True),
        # Signed (it says) before the revocation, stored after: a stolen key backdates.
        ("signed-before-stored-after", NOW + 10, NOW + 60, True),
        # Claims a time after the revocation, though stored before it: refused too.
        ("claims-after-stored-before", NOW - 1, NOW - 5, True),
        ("revoked-after-it-was-stored", NOW + 60, NOW, False),
    ],
)
def test_a_receipt_signed_by_a_revoked_key_is_refused(
    name: str, revoked: int, stored_at: int, refused: bool
) -> None:
    check = lambda: read_and_check(  # noqa: E731  # one call, two outcomes
        receipt(), records=revoked_at(revoked), stored_at=stored_at
    )
    if not refused:
        check()
        return
    with pytest.raises(EnvelopeError) as err:
        check()
    assert err.value.code == "key_revoked"


# --- the originator's signed answer: a recorded receipt rebuilt whole ----------------------
OLD_KEY = SigningKey.generate()  # hn-police's key before it rotated
ROTATED = RECORDS["hn-police"].model_copy(
    update={
        "signing_keys": (
            SigningKeyRecord(
                kid=OLD_KEY.verify_key.kid,
                public=b64e(OLD_KEY.verify_key.public),
                created_at=0,
                revoked_at=NOW + 10,
            ),
            *RECORDS["hn-police"].signing_keys,
        )
    }
)


def row_of(r: Receipt, *, kid: bool = True) -> ReceiptRow:
    """The row the relay records of ``r``: with its kid, or (``kid=False``) as a relay
    before migration 0010 recorded it."""
    return ReceiptRow(
        bulletin_id=r.bulletin_id,
        recipient=r.recipient,
        received_at=r.received_at,
        recorded_at=NOW + 1,
        signature=r.sig,
        kid=r.kid if kid else None,
    )


@pytest.mark.parametrize(
    ("case", "signed_with", "kid", "record", "shown"),
    [
        ("recorded with its kid", HN_KEY, True, RECORDS["hn-police"], True),
        ("recorded before kids, current key", HN_KEY, False, RECORDS["hn-police"], True),
        ("recorded before kids, a key rotated away since", OLD_KEY, False, ROTATED, True),
        ("recorded before kids, no key of the recipient verifies", OLD_KEY, False,
         RECORDS["hn-police"], False),
        ("recorded before kids, recipient not in the directory", HN_KEY, False, None, False),
    ],
)  # fmt: skip
def test_a_recorded_receipt_is_shown_whole_or_said_unverifiable(
    case: str, signed_with: SigningKey, kid: bool, record: AgencyRecord | None, shown: bool
) -> None:
    r = receipt(key=signed_with)
    entry = attributed("hn-police", row_of(r, kid=kid), bulletin=BULLETIN, record=record)
    assert entry.agency == "hn-police"
    assert entry.received_at == NOW
    if not shown:
        assert entry.receipt is None  # never a key the broker cannot show signed it
        return
    assert entry.receipt == r  # every field the recipient signed, byte for byte
    verify_receipt(entry.receipt, signed_with.verify_key)


def test_a_recipient_without_a_receipt_is_listed_without_one() -> None:
    entry = attributed("sv-police", None, bulletin=BULLETIN, record=None)
    assert (entry.received_at, entry.receipt) == (None, None)


def test_a_row_edited_by_hand_is_shown_unsigned_not_refused() -> None:
    bad = row_of(receipt()).model_copy(update={"kid": "not-a-kid"})
    entry = attributed("hn-police", bad, bulletin=BULLETIN, record=RECORDS["hn-police"])
    assert (entry.received_at, entry.receipt) == (NOW, None)
