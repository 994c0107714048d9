"""Recall, correction and expiry as tables (ADR 15): the signed withdrawal
(``schemas.withdrawal``), the relay's checks on it and whom it reaches
(``broker.relay.recall``), the SDK's checks before the application is told
(``clients.withdrawals``), the correction link and the expiry in the envelope and on
opening (``clients.opening``). Real keys, no NATS, no database, no clock."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from broker.relay.queries import NotFound
from broker.relay.recall import (
    NOT_YOURS,
    CopyFate,
    check_withdrawal,
    copy_recipient,
    notice_msg_id,
    notice_precedence,
    split_recipients,
)
from broker.store.registry import BulletinRow
from clients.opening import open_delivery
from clients.withdrawals import check_delivered_withdrawal
from schemas.canonical import b64e
from schemas.directory import SigningKeyRecord
from schemas.envelope import Header
from schemas.errors import EnvelopeError, IstmoError, SignatureError
from schemas.ids import AgencyId, BulletinId
from schemas.keys import SigningKey
from schemas.keystore import new_keystore
from schemas.labels import Precedence
from schemas.natskeys import new_user_seed
from schemas.sealing import encode_envelope, parse_envelope, seal, verify_envelope
from schemas.withdrawal import (
    MAX_REASON_CHARS,
    Withdrawal,
    encode_withdrawal,
    parse_withdrawal,
    sign_withdrawal,
)
from tests.core.envelope_kit import CONTENT, LABELS, NOW, R1, A, agency_record, as_json, seal_for

BID = "0b1e5a8c-1111-4222-8333-444455556666"
GT, SV = "gt-police", "sv-police"
SKEWED = "timestamp_out_of_window"
GT_KEY, GT_OLD, SV_KEY = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()


RECORDS = {
    GT: agency_record(GT, (GT_OLD, NOW - 3600), (GT_KEY, None)),
    SV: agency_record(SV, (SV_KEY, None)),
}


def _withdrawal(
    originator: str = GT, key: SigningKey = GT_KEY, *, issued_at: int = NOW, reason: str = "wrong"
) -> Withdrawal:
    return sign_withdrawal(
        bulletin_id=BulletinId(BID),
        originator=AgencyId(originator),
        reason=reason,
        issued_at=issued_at,
        key=key,
    )


def _bulletin(originator: str = GT) -> BulletinRow:
    return BulletinRow(
        id=BID,
        originator=originator,
        labels="{}",
        envelope_digest="0" * 64,
        ingest_seq=1,
        created_at=NOW,
        accepted_at=NOW,
        recipients=f"{SV},hn-police",
        policy_version="p",
        directory_version="d",
    )


# --------------------------------------------------------------------------- the object


def test_a_withdrawal_round_trips_and_any_change_breaks_its_signature() -> None:
    w = _withdrawal()
    raw = encode_withdrawal(w)
    assert parse_withdrawal(raw) == w
    doc = json.loads(raw)
    for field, value in (("reason", "changed"), ("bulletin_id", BID.replace("1111", "2222"))):
        forged = parse_withdrawal(json.dumps({**doc, field: value}).encode())
        with pytest.raises(IstmoError):
            check_delivered_withdrawal(
                forged, signer=RECORDS[GT].signing_keys[1], handed=False, handed_originator=None
            )


@pytest.mark.parametrize(
    "reason",
    ["", "x" * (MAX_REASON_CHARS + 1), "two\nlines", "\x1b[2Jwiped", "bell\x07", "c1\x85"],
    ids=["empty", "too-long", "line-break", "ansi-escape", "bel", "c1-control"],
)
def test_a_reason_is_one_short_printable_line(reason: str) -> None:
    with pytest.raises(ValidationError):
        _withdrawal(reason=reason)
    # ... and a forged one on the wire is refused by the parser, naming no value.
    doc = json.loads(encode_withdrawal(_withdrawal()))
    with pytest.raises(EnvelopeError) as caught:
        parse_withdrawal(json.dumps({**doc, "reason": reason}).encode())
    assert reason not in str(caught.value) or not reason


def test_a_reason_may_be_any_language() -> None:
    assert _withdrawal(reason="Información errónea: lancha equivocada ✔").reason.endswith("✔")


# --------------------------------------------------------------------------- the relay


def _check(w: Withdrawal, *, caller: str = GT, bulletin: BulletinRow | None = None) -> None:
    check_withdrawal(
        w,
        caller=caller,
        bulletin=_bulletin() if bulletin is None else bulletin,
        records=RECORDS,
        now=NOW,
        max_skew_s=120,
    )


def test_the_originators_own_current_signature_passes() -> None:
    _check(_withdrawal())


@pytest.mark.parametrize(
    ("make", "caller", "bulletin", "error", "code"),
    [
        # 1. The withdrawal names the caller.
        (lambda: _withdrawal(SV, SV_KEY), GT, None, EnvelopeError, "originator_mismatch"),
        # 2. Signed by a current key of the caller's.
        (lambda: _withdrawal(key=GT_OLD), GT, None, SignatureError, "key_not_current"),
        (lambda: _withdrawal(key=SV_KEY), GT, None, SignatureError, "key_not_current"),
        # 4. Made now.
        (
            lambda: _withdrawal(issued_at=NOW - 121),
            GT,
            None,
            EnvelopeError,
            "timestamp_out_of_window",
        ),
        (
            lambda: _withdrawal(issued_at=NOW + 121),
            GT,
            None,
            EnvelopeError,
            "timestamp_out_of_window",
        ),
        # 5. Another agency's bulletin: its own valid withdrawal, "not found".
        (lambda: _withdrawal(SV, SV_KEY), SV, _bulletin(GT), NotFound, "not_found"),
    ],
    ids=["names-another", "revoked-key", "anothers-key", "stale", "future", "not-the-originator"],
)
def test_a_withdrawal_is_refused(
    make: Any, caller: str, bulletin: BulletinRow | None, error: type[IstmoError], code: str
) -> None:
    with pytest.raises(error) as caught:
        _check(make(), caller=caller, bulletin=bulletin)
    assert caught.value.code == code


def test_a_forged_signature_is_refused() -> None:
    w = _withdrawal()
    forged = w.model_copy(update={"reason": "something else"})
    with pytest.raises(SignatureError) as caught:
        _check(forged)
    assert caught.value.code == "signature_invalid"


def test_unknown_and_another_agencys_bulletin_get_the_same_answer() -> None:
    answers = []
    for bulletin in (None, _bulletin(SV)):
        with pytest.raises(NotFound) as caught:
            check_withdrawal(
                _withdrawal(), caller=GT, bulletin=bulletin, records=RECORDS, now=NOW, max_skew_s=9
            )
        answers.append((caught.value.code, str(caught.value)))
    assert answers == [("not_found", NOT_YOURS)] * 2
    assert BID not in NOT_YOURS


# --------------------------------------------------------------------------- whom it reaches


@pytest.mark.parametrize(
    ("fate", "receipted", "told"),
    [
        (CopyFate(seq=10, removed=True, delivered_to=9), False, False),  # queued: removed
        (CopyFate(seq=10, removed=True, delivered_to=None), False, False),  # no consumer
        (CopyFate(seq=10, removed=True, delivered_to=10), False, True),  # handed out
        (CopyFate(seq=10, removed=True, delivered_to=25), False, True),  # maybe handed out
        (CopyFate(seq=10, removed=True, delivered_to=9), True, True),  # its receipt says so
        (CopyFate(seq=10, removed=False, delivered_to=9), False, True),  # stream kept it
        (CopyFate(seq=None, removed=False, delivered_to=None), False, True),  # gone already
        (None, False, True),  # not found at all (expired, or an earlier pass)
    ],
    ids=[
        "undelivered",
        "no-consumer",
        "delivered",
        "consumer-moved-past",
        "receipted",
        "kept",
        "gone",
        "not-found",
    ],
)
def test_only_a_recipient_that_surely_never_had_it_goes_untold(
    fate: CopyFate | None, receipted: bool, told: bool
) -> None:
    fates = {} if fate is None else {SV: fate}
    removed, notified = split_recipients([SV, "bz-police"], fates, {SV} if receipted else set())
    assert "bz-police" in notified  # nothing found for it: told
    assert (SV in notified, SV in removed) == (told, not told)


def test_the_notice_goes_ahead_of_routine_and_priority_backlogs() -> None:
    assert notice_precedence(Precedence.ROUTINE) == Precedence.IMMEDIATE
    assert notice_precedence(Precedence.PRIORITY) == Precedence.IMMEDIATE
    assert notice_precedence(Precedence.IMMEDIATE) == Precedence.IMMEDIATE
    assert notice_precedence(Precedence.FLASH) == Precedence.FLASH


@pytest.mark.parametrize(
    ("msg_id", "recipient"),
    [
        (f"{BID}:{SV}", SV),
        (f"{BID}:{SV}:r42", SV),  # re-stored by reconcile
        (notice_msg_id(BID, SV), None),  # the withdrawal itself is no copy
        (f"{BID}:", None),
        (f"{BID}:{SV}:x", None),
        (f"other:{SV}", None),
        ("", None),
    ],
)
def test_a_copy_is_known_by_its_dedupe_id(msg_id: str, recipient: str | None) -> None:
    assert copy_recipient(msg_id, BID) == recipient


# --------------------------------------------------------------------------- the SDK


def _signer(key: SigningKey, revoked_at: int | None = None) -> SigningKeyRecord:
    return SigningKeyRecord(
        kid=key.verify_key.kid,
        public=b64e(key.verify_key.public),
        created_at=NOW - 86400,
        revoked_at=revoked_at,
    )


def test_the_sdk_tells_the_application_with_whether_it_had_it() -> None:
    w = _withdrawal(reason="wrong boat")
    had = check_delivered_withdrawal(w, signer=_signer(GT_KEY), handed=True, handed_originator=GT)
    assert (had.id, had.originator, had.reason, had.withdrawn_at, had.had_it) == (
        BID,
        GT,
        "wrong boat",
        NOW,
        True,
    )
    assert had.to_json()["withdrawn_at"] == "2026-01-01T00:00:00Z"
    never = check_delivered_withdrawal(
        w, signer=_signer(GT_KEY), handed=False, handed_originator=None
    )
    assert never.had_it is False


@pytest.mark.parametrize(
    ("signer", "handed_originator", "code"),
    [
        (None, GT, "signature_invalid"),  # the directory does not list the key
        (_signer(GT_KEY, revoked_at=NOW), GT, "key_revoked"),
        (_signer(SV_KEY), GT, "key_not_bound_to_sender"),  # another key than it names
        (_signer(GT_KEY), SV, "originator_mismatch"),  # the bulletin handed was SV's
        (_signer(GT_KEY), None, "originator_mismatch"),  # handed before ADR 15: unknown
    ],
    ids=["unknown-key", "revoked", "wrong-key", "another-originators-bulletin", "unknown"],
)
def test_the_sdk_refuses_a_withdrawal_it_cannot_trust(
    signer: SigningKeyRecord | None, handed_originator: str | None, code: str
) -> None:
    with pytest.raises(SignatureError) as caught:
        check_delivered_withdrawal(
            _withdrawal(), signer=signer, handed=True, handed_originator=handed_originator
        )
    assert caught.value.code == code


def test_a_forged_withdrawal_is_refused_by_the_sdk() -> None:
    """The broker (or anyone on the way) cannot write one: a withdrawal signed by a key
    that is not the originator's fails, however it is dressed."""
    mallory = SigningKey.generate()
    forged = _withdrawal(key=mallory).model_copy(update={"kid": GT_KEY.verify_key.kid})
    with pytest.raises(SignatureError) as caught:
        check_delivered_withdrawal(
            forged, signer=_signer(GT_KEY), handed=True, handed_originator=GT
        )
    assert caught.value.code == "signature_invalid"


# --------------------------------------------------------------------------- correction, expiry


def test_a_correction_signs_its_link_and_an_envelope_without_one_is_unchanged() -> None:
    fix = seal_for("X25519", supersedes=BulletinId(BID))
    assert fix.header.supersedes == BID
    verify_envelope(parse_envelope(encode_envelope(fix)), A.verify_key)
    moved = json.loads(encode_envelope(fix))
    moved["header"]["supersedes"] = BID.replace("1111", "2222")
    with pytest.raises(SignatureError):
        verify_envelope(parse_envelope(as_json(moved)), A.verify_key)
    plain = seal_for("X25519")
    assert "supersedes" not in json.loads(encode_envelope(plain))["header"]


def test_a_bulletin_cannot_supersede_itself() -> None:
    env = seal_for("X25519")
    doc = env.header.model_dump(mode="json", exclude_none=True)
    with pytest.raises(ValidationError):
        Header.model_validate({**doc, "supersedes": env.header.bulletin_id}, strict=False)


def test_the_sdk_hands_over_expiry_and_link_and_refuses_an_expired_bulletin() -> None:
    keystore, _, key = new_keystore(
        agency=R1.id, nats_seed=new_user_seed(), directory_key=GT_KEY.verify_key, now=NOW
    )
    env = seal(
        content=CONTENT,
        labels=LABELS,
        originator=A.id,
        signing_key=A.sign,
        recipients={R1.id: key.public_key},
        now=NOW,
        expires_at=NOW + 60,
        supersedes=BulletinId(BID),
    )
    sender = _signer(A.sign)
    got = open_delivery(env, sender_key=sender, keystore=keystore, agency=R1.id, now=NOW + 59)
    assert (got.expires_at, got.supersedes) == (NOW + 60, BID)
    assert got.to_json()["expires_at"] == "2026-01-01T00:01:00Z"
    assert got.to_json()["supersedes"] == BID
    with pytest.raises(EnvelopeError) as caught:
        open_delivery(env, sender_key=sender, keystore=keystore, agency=R1.id, now=NOW + 60)
    assert caught.value.code == "expired"
