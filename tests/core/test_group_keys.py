"""Community group keys (ADR 18), pure: epoch keys and their wraps, bulletins sealed under
them, and the relay's check of a cover.

The two properties of issue 16 point 4, at the level of the keys and of the relay's check:
- an agency the policy denies never holds a key that opens the bulletin: ``check_cover``
  refuses a group any of whose members is not permitted (or not addressed), and a group at
  anything but its current epoch;
- a removed member cannot open a bulletin sealed after its removal, even holding every
  earlier epoch key and the envelope: the new epoch's key is wrapped only to the members
  that remain, and no earlier key opens a wrap made under it.
"""

from __future__ import annotations

import json

import pytest

from broker.relay.cover import addressed, check_cover
from broker.store.groups import CurrentEpoch, EpochMembers
from schemas.canonical import b64e
from schemas.errors import DecryptionError, EnvelopeError, SignatureError
from schemas.groups import (
    EpochKey,
    epoch_statement,
    members_digest,
    new_epoch_key,
    sign_epoch,
    unwrap_epoch_key,
    verify_epoch,
    wrap_epoch_key,
)
from schemas.sealing import encode_envelope, open_envelope, parse_envelope, seal
from tests.core.envelope_kit import CONTENT, LABELS, NOW, R1, R2, R3, A, Agency, C, M

KEM = "MLKEM768-X25519"
MANAGER = R3


def _epoch(group: str, epoch: int, members: list[Agency]) -> tuple[EpochKey, dict[str, object]]:
    """A new epoch as its manager makes it: key, signed statement, one wrap per member."""
    key = new_epoch_key(group, epoch)
    st = epoch_statement(key, manager=MANAGER.id, members=[m.id for m in members], issued_at=NOW)
    signed = sign_epoch(st, MANAGER.sign)
    wraps = {m.id: wrap_epoch_key(key, st, m.id, m.pub(KEM)) for m in members}
    return key, {"signed": signed, "wraps": wraps}


def _held(agency: Agency, made: dict[str, object]) -> EpochKey:
    """What a member recovers from its wrap, after checking the manager's signature."""
    signed = made["signed"]
    st = verify_epoch(signed, MANAGER.verify_key)  # type: ignore[arg-type]
    return unwrap_epoch_key(st, made["wraps"][agency.id], agency.id, agency.enc[KEM])  # type: ignore[index]


def _seal(individual: list[Agency], groups: list[EpochKey], covered: list[Agency], **more):  # type: ignore[no-untyped-def]
    return seal(
        content=CONTENT,
        labels=LABELS,
        originator=A.id,
        signing_key=A.sign,
        recipients={r.id: r.pub(KEM) for r in individual},
        now=NOW,
        groups=groups,
        covered=[c.id for c in covered],
        **more,
    )


def test_a_member_opens_a_bulletin_sealed_under_its_group_key() -> None:
    key, made = _epoch("SICA", 1, [R1, R2, MANAGER])
    env = parse_envelope(encode_envelope(_seal([], [key], [R1, R2, MANAGER])))
    assert env.wraps == ()
    assert env.groups is not None
    assert len(env.groups) == 1
    for member in (R1, R2, MANAGER):
        inner = open_envelope(
            env,
            recipient=member.id,
            key=member.enc[KEM],
            sender_key=A.verify_key,
            epoch_keys=[_held(member, made)],
        )
        assert inner.content == CONTENT


def test_small_audiences_keep_one_wrap_each_and_no_group_section() -> None:
    env = _seal([R1, R2], [], [])
    assert env.groups is None
    assert [w.recipient for w in env.wraps] == sorted([R1.id, R2.id])
    assert b'"groups"' not in encode_envelope(env)


def test_individual_wraps_and_groups_together() -> None:
    key, made = _epoch("SICA", 1, [R2, MANAGER])
    env = _seal([R1], [key], [R2, MANAGER])
    assert env.header.recipients == tuple(sorted([R1.id, R2.id, MANAGER.id]))
    assert open_envelope(env, recipient=R1.id, key=R1.enc[KEM], sender_key=A.verify_key)
    assert open_envelope(
        env, recipient=R2.id, key=None, sender_key=A.verify_key, epoch_keys=[_held(R2, made)]
    )


def test_a_removed_member_holding_every_earlier_key_cannot_open_a_later_bulletin() -> None:
    """R1 was a member of epochs 1 and 2, then was suspended: epoch 3 is made without it. It
    captured the envelope sealed under epoch 3 and holds the keys of epochs 1 and 2."""
    k1, m1 = _epoch("SICA", 1, [R1, R2, MANAGER])
    k2, m2 = _epoch("SICA", 2, [R1, R2, MANAGER])
    k3, m3 = _epoch("SICA", 3, [R2, MANAGER])
    earlier = [_held(R1, m1), _held(R1, m2)]
    assert R1.id not in m3["wraps"]  # type: ignore[operator]
    env = _seal([], [k3], [R2, MANAGER])
    with pytest.raises(DecryptionError) as no:
        open_envelope(
            env, recipient=R2.id, key=R1.enc[KEM], sender_key=A.verify_key, epoch_keys=earlier
        )
    assert no.value.code == "no_group_key"
    # Relabelling an earlier key as epoch 3's does not help: the wrap is bound to its key.
    forged = [EpochKey("SICA", 3, k3.kid, k.key) for k in earlier]
    with pytest.raises(DecryptionError) as bad:
        open_envelope(env, recipient=R2.id, key=None, sender_key=A.verify_key, epoch_keys=forged)
    assert bad.value.code == "wrap_invalid"
    # Nor does any other member's wrap of epoch 3, to its own encryption key.
    st3 = verify_epoch(m3["signed"], MANAGER.verify_key)  # type: ignore[arg-type]
    for other in m3["wraps"].values():  # type: ignore[attr-defined]
        with pytest.raises(DecryptionError):
            unwrap_epoch_key(st3, other.model_copy(update={"agency": R1.id}), R1.id, R1.enc[KEM])
    # The members that remain open it.
    assert open_envelope(
        env, recipient=R2.id, key=None, sender_key=A.verify_key, epoch_keys=[_held(R2, m3)]
    )
    del k1, k2


def test_an_epoch_key_the_broker_made_up_is_refused_by_the_signed_commitment() -> None:
    """HPKE's base mode does not say who sealed a wrap: a broker could wrap a key of its own
    to a member. The member checks it against the commitment its manager signed."""
    key, made = _epoch("SICA", 1, [R1, MANAGER])
    st = verify_epoch(made["signed"], MANAGER.verify_key)  # type: ignore[arg-type]
    fake = wrap_epoch_key(new_epoch_key("SICA", 1), st, R1.id, R1.pub(KEM))
    with pytest.raises(DecryptionError) as no:
        unwrap_epoch_key(st, fake, R1.id, R1.enc[KEM])
    assert no.value.code == "key_commitment_mismatch"
    assert _held(R1, made).key == key.key


def test_a_statement_signed_by_anyone_but_the_manager_is_refused() -> None:
    key = new_epoch_key("SICA", 1)
    st = epoch_statement(key, manager=MANAGER.id, members=[R1.id, MANAGER.id], issued_at=NOW)
    with pytest.raises(SignatureError):
        verify_epoch(sign_epoch(st, M.sign), MANAGER.verify_key)
    forged = sign_epoch(st, MANAGER.sign).model_copy(update={"sig": b64e(bytes(64))})
    with pytest.raises(SignatureError):
        verify_epoch(forged, MANAGER.verify_key)


def test_group_wraps_are_signed_by_the_originator() -> None:
    key, _ = _epoch("SICA", 1, [R1, MANAGER])
    env = _seal([], [key], [R1, MANAGER])
    other, _ = _epoch("SICA", 1, [R1, MANAGER])
    swapped = env.model_copy(update={"groups": (_seal([], [other], [R1, MANAGER]).groups or ())})
    with pytest.raises(SignatureError):
        open_envelope(
            swapped, recipient=R1.id, key=None, sender_key=A.verify_key, epoch_keys=[other]
        )


# ---------------------------------------------------------------------------- the cover
def _current(key: EpochKey, members: list[Agency]) -> CurrentEpoch:
    return CurrentEpoch(key.group, key.epoch, key.kid, frozenset(m.id for m in members), "r", "")


K1, _ = _epoch("SICA", 1, [R1, R2, MANAGER])
K2, _ = _epoch("SICA", 2, [R1, R2, MANAGER])
ALL3 = {R1.id, R2.id, MANAGER.id}


@pytest.mark.parametrize(
    ("case", "env", "allowed", "epochs", "code"),
    [
        (
            "current epoch, all permitted",
            _seal([], [K2], [R1, R2, MANAGER]),
            ALL3,
            {"SICA": _current(K2, [R1, R2, MANAGER])},
            None,
        ),
        ("no groups: nothing to check", _seal([R1], [], []), set(), {}, None),
        (
            "a stale epoch",
            _seal([], [K1], [R1, R2, MANAGER]),
            ALL3,
            {"SICA": _current(K2, [R1, R2, MANAGER])},
            "stale_group_epoch",
        ),
        (
            "a group without a current epoch",
            _seal([], [K2], [R1, R2, MANAGER]),
            ALL3,
            {},
            "unknown_group",
        ),
        (
            "a member the policy denies",
            _seal([R1], [K2], [R2, MANAGER]),
            {R1.id, MANAGER.id},
            {"SICA": _current(K2, [R1, R2, MANAGER])},
            "group_member_denied",
        ),
        (
            "a member not addressed",
            _seal([], [K2], [R2, MANAGER]),
            ALL3 | {C.id},
            {"SICA": _current(K2, [R1, R2, MANAGER])},
            "group_member_denied",
        ),
        (
            "a recipient nobody covers",
            _seal([], [K2], [R1, R2, MANAGER, C]),
            ALL3 | {C.id},
            {"SICA": _current(K2, [R1, R2, MANAGER])},
            "uncovered_recipient",
        ),
    ],
)
def test_the_relay_checks_every_group_of_a_cover(  # type: ignore[no-untyped-def]
    case, env, allowed, epochs, code
) -> None:
    if code is None:
        check_cover(env, allowed=allowed, epochs=epochs)
        return
    with pytest.raises(EnvelopeError) as refused:
        check_cover(env, allowed=allowed, epochs=epochs)
    assert refused.value.code == code, case


# ------------------------------------------------- addressed by epoch (ADR 37)
def _seal_epochs(individual: list[Agency], groups: list[tuple[EpochKey, list[Agency]]]):  # type: ignore[no-untyped-def]
    members = {k.group: [m.id for m in ms] for k, ms in groups}
    return _seal(individual, [k for k, _ in groups], [], members=members)


def _members(key: EpochKey, members: list[Agency]) -> dict[tuple[str, int], EpochMembers]:
    ids = [m.id for m in members]
    return {(key.group, key.epoch): EpochMembers(frozenset(ids), len(ids), members_digest(ids))}


def test_an_epoch_addressed_whole_names_no_member_and_each_member_opens_it() -> None:
    key, made = _epoch("SICA", 1, [R1, R2, MANAGER])
    env = parse_envelope(encode_envelope(_seal_epochs([C], [(key, [R1, R2, MANAGER])])))
    assert env.header.recipients == (C.id,)
    assert env.header.audience is not None
    (aud,) = env.header.audience
    assert (aud.group, aud.epoch, aud.member_count) == ("SICA", 1, 3)
    assert aud.members_digest == members_digest([R1.id, R2.id, MANAGER.id])
    assert R1.id.encode() not in encode_envelope(env)  # members are not listed
    for member in (R1, R2, MANAGER):
        inner = open_envelope(
            env, recipient=member.id, key=None, sender_key=A.verify_key,
            epoch_keys=[_held(member, made)],
        )  # fmt: skip
        assert inner.content == CONTENT
        assert inner.audience == env.header.audience
    assert open_envelope(env, recipient=C.id, key=C.enc[KEM], sender_key=A.verify_key)
    # Not a member: no key opens it; the originator is never addressed by an epoch.
    with pytest.raises(DecryptionError) as outside:
        open_envelope(env, recipient=M.id, key=M.enc[KEM], sender_key=A.verify_key)
    assert outside.value.code == "no_group_key"
    with pytest.raises(DecryptionError) as own:
        open_envelope(
            env, recipient=A.id, key=None, sender_key=A.verify_key,
            epoch_keys=[_held(R1, made)],
        )  # fmt: skip
    assert own.value.code == "not_a_recipient"


def test_an_epoch_addressed_whole_stays_small_for_thousands() -> None:
    """The size no longer grows with the audience: 3,500 members, one group wrap."""
    many = [f"agency-{i:05d}" for i in range(3_500)]
    key = new_epoch_key("ALL", 7)
    env = seal(
        content=CONTENT, labels=LABELS, originator=A.id, signing_key=A.sign,
        recipients={}, now=NOW, groups=[key], members={"ALL": many},
    )  # fmt: skip
    raw = encode_envelope(env)
    assert len(raw) < 4_000
    inner = open_envelope(env, recipient=many[9], key=None, sender_key=A.verify_key,
                          epoch_keys=[key])  # fmt: skip
    assert inner.recipients == ()


@pytest.mark.parametrize(
    ("case", "change"),
    [
        ("another member count", lambda a: a.model_copy(update={"member_count": 4})),
        ("another digest", lambda a: a.model_copy(update={"members_digest": "0" * 64})),
        ("another epoch", lambda a: a.model_copy(update={"epoch": 2})),
    ],
)
def test_the_audience_is_signed(case, change) -> None:  # type: ignore[no-untyped-def]
    key, made = _epoch("SICA", 1, [R1, R2, MANAGER])
    env = _seal_epochs([], [(key, [R1, R2, MANAGER])])
    assert env.header.audience is not None
    header = env.header.model_copy(update={"audience": (change(env.header.audience[0]),)})
    with pytest.raises(SignatureError):
        open_envelope(
            env.model_copy(update={"header": header}), recipient=R1.id, key=None,
            sender_key=A.verify_key, epoch_keys=[_held(R1, made)],
        )  # fmt: skip


def test_an_audience_without_its_group_wrap_or_sorted_is_malformed() -> None:
    key, _ = _epoch("SICA", 1, [R1, MANAGER])
    other, _ = _epoch("CARICOM", 1, [R2, MANAGER])
    doc = json.loads(encode_envelope(_seal_epochs([], [(key, [R1, MANAGER])])))
    bad = dict(doc, groups=None)
    del bad["groups"]
    with pytest.raises(EnvelopeError):
        parse_envelope(json.dumps(bad).encode())
    both = _seal_epochs([], [(key, [R1, MANAGER]), (other, [R2, MANAGER])])
    doc = json.loads(encode_envelope(both))
    doc["header"]["audience"].reverse()
    with pytest.raises(EnvelopeError):
        parse_envelope(json.dumps(doc).encode())
    with pytest.raises(ValueError, match="members"):
        seal(
            content=CONTENT, labels=LABELS, originator=A.id, signing_key=A.sign,
            recipients={}, now=NOW, groups=[key], members={"OTHER": [R1.id]},
        )  # fmt: skip


def test_an_audience_addresses_no_more_than_one_bulletin_may() -> None:
    """Two epochs of 6,000 members each: 12,000 agencies, over MAX_RECIPIENTS."""
    groups = [(new_epoch_key(g, 1), [f"{g.lower()}-{i:05d}" for i in range(6_000)])
              for g in ("CARIB", "ISTMO")]  # fmt: skip
    env = seal(
        content=CONTENT, labels=LABELS, originator=A.id, signing_key=A.sign, recipients={},
        now=NOW, groups=[k for k, _ in groups], members={k.group: m for k, m in groups},
    )  # fmt: skip
    record = {
        (k.group, k.epoch): EpochMembers(frozenset(m), len(m), members_digest(m)) for k, m in groups
    }
    with pytest.raises(EnvelopeError) as refused:
        addressed(env.header, record)
    assert refused.value.code == "too_many_recipients"
    one = dict(list(record.items())[:1])  # one epoch alone: 6,000, within the bound
    with pytest.raises(EnvelopeError) as other:
        addressed(env.header, one)
    assert other.value.code == "unknown_group"  # the second is not recorded


AK, _ = _epoch("SICA", 3, [R1, R2, MANAGER])
BY_EPOCH = _seal_epochs([C], [(AK, [R1, R2, MANAGER])])


@pytest.mark.parametrize(
    ("case", "members", "allowed", "code"),
    [
        ("as recorded, all permitted", _members(AK, [R1, R2, MANAGER]), ALL3 | {C.id}, None),
        ("never current", {}, ALL3 | {C.id}, "unknown_group"),
        ("recorded with another member", _members(AK, [R1, R2, MANAGER, M]), ALL3 | {C.id},
         "audience_mismatch"),
        ("recorded with one fewer", _members(AK, [R1, MANAGER]), ALL3 | {C.id},
         "audience_mismatch"),
        ("a member the policy denies", _members(AK, [R1, R2, MANAGER]), {R1.id, MANAGER.id, C.id},
         "group_member_denied"),
    ],
)  # fmt: skip
def test_the_relay_expands_an_epoch_from_its_record(case, members, allowed, code) -> None:  # type: ignore[no-untyped-def]
    epochs = {"SICA": _current(AK, [R1, R2, MANAGER])}

    def judge() -> tuple[str, ...]:
        to = addressed(BY_EPOCH.header, members)
        check_cover(BY_EPOCH, allowed=allowed, epochs=epochs, to=frozenset(to))
        return to

    if code is None:
        assert judge() == tuple(sorted({C.id, R1.id, R2.id, MANAGER.id}))  # not the originator
        return
    with pytest.raises(EnvelopeError) as refused:
        judge()
    assert refused.value.code == code, case
