"""Which signed directory records the SDK may seal for (``clients.directory_cache``,
ADR 14): only records signed by the pinned key, for agencies asked for, no older than any
serial heard of; updated record by record from signed change lists; older answers refused.
Times and connection epochs are passed in."""

from __future__ import annotations

from typing import Any

import pytest

from clients.directory_cache import DirectoryCache
from schemas.canonical import b64e
from schemas.directory import (
    AgencyRecord,
    DirectoryChanges,
    DirectoryExcerpt,
    EncryptionKeyRecord,
    SignedChanges,
    SignedExcerpt,
    SigningKeyRecord,
    directory_serial,
    directory_version,
    sign_changes,
    sign_excerpt,
)
from schemas.errors import EnvelopeError, SignatureError
from schemas.keys import SigningKey
from tests.core.envelope_kit import DIRECTORY_KEY, NOW, R1, R2, R3, Agency, make_agency

PINNED = DIRECTORY_KEY.verify_key
FORGER = SigningKey.generate()
TTL = 60.0
INTERVAL = 5
EPOCH = 0
DIGEST = "d" * 32


def v(serial: int, digest: str = DIGEST) -> str:
    return directory_version(serial, digest)


def record(ag: Agency, *, status: str = "active", kem_of: Agency | None = None) -> AgencyRecord:
    pub = (kem_of or ag).pub("X25519")
    vk = ag.verify_key
    fields: dict[str, Any] = {
        "id": ag.id,
        "name": "Agency",
        "state": "CR",
        "sector": "police",
        "status": status,
        "signing_keys": (SigningKeyRecord(kid=vk.kid, public=b64e(vk.public), created_at=1),),
        "encryption_key": EncryptionKeyRecord(
            kid=pub.kid, kem="X25519", public=b64e(pub.public), created_at=1
        ),
    }
    return AgencyRecord(**fields)


def excerpt(version: str, *records: AgencyRecord, key: SigningKey = DIRECTORY_KEY) -> SignedExcerpt:
    return sign_excerpt(
        DirectoryExcerpt(v=1, directory_version=version, issued_at=NOW, agencies=records), key
    )


def changes(
    since: str, version: str, changed: tuple[str, ...] | None, key: SigningKey = DIRECTORY_KEY
) -> SignedChanges:
    return sign_changes(
        DirectoryChanges(
            v=1, since=since, directory_version=version, issued_at=NOW, changed=changed
        ),
        key,
    )


def cache_with(version: str, *agencies: Agency, now: float = 0) -> DirectoryCache:
    """A cache that heard ``version`` announced at ``now`` and holds ``agencies`` at it."""
    cache = DirectoryCache(PINNED, unheard_ttl_s=TTL)
    cache.heard(version, interval_s=INTERVAL, now=now, epoch=EPOCH)
    cache.add_excerpt(
        excerpt(version, *(record(a) for a in agencies)), asked=[a.id for a in agencies], now=now
    )
    return cache


def usable(cache: DirectoryCache, ag: Agency, now: float = 1, **kw: Any) -> AgencyRecord | None:
    return cache.usable(ag.id, now=now, epoch=EPOCH, **kw)


# ---------------------------------------------------------------------- versions
@pytest.mark.parametrize(
    ("version", "serial"),
    [
        (v(0), 0),
        (v(7), 7),
        (v(2**40), 2**40),
        ("a" * 32, None),  # a broker before ADR 14
        ("0123456789abcdef", None),
        ("A" * 48, None),
        ("g" * 48, None),
    ],
)
def test_a_version_names_its_serial(version: str, serial: int | None) -> None:
    assert directory_serial(version) == serial


@pytest.mark.parametrize(("serial", "digest"), [(-1, DIGEST), (16**16, DIGEST), (1, "d" * 31)])
def test_a_version_is_made_of_a_serial_and_a_digest_only(serial: int, digest: str) -> None:
    with pytest.raises(ValueError, match=r"serial|digest"):
        directory_version(serial, digest)


# ---------------------------------------------------------------------- using records
def test_a_record_is_used_while_no_change_is_heard_of() -> None:
    cache = cache_with(v(3), R1)
    cache.heard(v(3), interval_s=INTERVAL, now=10, epoch=EPOCH)
    assert usable(cache, R1, now=11) == record(R1)
    cache.heard(v(3, "e" * 32), interval_s=INTERVAL, now=20, epoch=EPOCH)  # a subscription
    assert usable(cache, R1, now=21) == record(R1)  # records are the same at one serial
    assert usable(cache, R2) is None  # never fetched


@pytest.mark.parametrize(
    ("heard", "floor", "fetched", "used"),
    [
        pytest.param(None, None, None, True, id="nothing-newer"),
        pytest.param(4, None, None, False, id="announced-newer"),
        pytest.param(2, None, None, True, id="announced-older-is-ignored"),
        pytest.param(None, 4, None, False, id="answer-decided-newer"),
        pytest.param(None, 3, None, True, id="answer-decided-at-it"),
        pytest.param(None, None, 4, False, id="another-record-fetched-newer"),
    ],
)
def test_a_record_older_than_any_serial_heard_of_is_not_used(
    heard: int | None, floor: int | None, fetched: int | None, used: bool
) -> None:
    cache = cache_with(v(3), R1)
    if heard is not None:
        cache.heard(v(heard), interval_s=INTERVAL, now=1, epoch=EPOCH)
    if fetched is not None:
        cache.add_excerpt(excerpt(v(fetched), record(R2)), asked=[R2.id], now=1)
    got = usable(cache, R1, floor=None if floor is None else v(floor))
    assert (got is not None) == used


@pytest.mark.parametrize(
    ("now", "epoch", "used"),
    [
        pytest.param(14, EPOCH, True, id="live"),
        pytest.param(16, EPOCH, True, id="silent-but-young"),
        pytest.param(61, EPOCH, False, id="silent-and-old"),
        pytest.param(61, EPOCH + 1, False, id="reconnected-and-old"),
        pytest.param(30, -1, True, id="disconnected-but-young"),
    ],
)
def test_without_announcements_a_record_is_used_for_the_ttl_only(
    now: float, epoch: int, used: bool
) -> None:
    cache = cache_with(v(3), R1)  # heard at 0: live until 15
    assert (cache.usable(R1.id, now=now, epoch=epoch) is not None) == used


def test_a_live_cache_uses_a_record_however_old() -> None:
    cache = cache_with(v(3), R1)
    cache.heard(v(3), interval_s=INTERVAL, now=1000, epoch=EPOCH)
    assert usable(cache, R1, now=1001) is not None
    cache.lost()  # a malformed announcement: back to the TTL, which has passed
    assert usable(cache, R1, now=1002) is None


def test_a_record_from_a_broker_without_serials_lasts_the_ttl() -> None:
    cache = DirectoryCache(PINNED, unheard_ttl_s=TTL)
    cache.heard("a" * 32, interval_s=INTERVAL, now=0, epoch=EPOCH)
    cache.add_excerpt(excerpt("a" * 32, record(R1)), asked=[R1.id], now=0)
    assert usable(cache, R1, now=59) is not None
    assert usable(cache, R1, now=60) is None
    assert cache.outdated_since([R1.id], now=60, epoch=EPOCH) is None  # nothing to ask since


def test_the_least_recently_used_record_goes_first() -> None:
    cache = DirectoryCache(PINNED, max_records=2)
    cache.add_excerpt(excerpt(v(1), record(R1), record(R2)), asked=[R1.id, R2.id], now=0)
    assert usable(cache, R1) is not None
    cache.add_excerpt(excerpt(v(1), record(R3)), asked=[R3.id], now=0)
    assert [cache.held(a.id) is not None for a in (R1, R2, R3)] == [True, False, True]


# ---------------------------------------------------------------------- excerpts
def test_an_agency_asked_for_and_not_listed_is_dropped() -> None:
    cache = cache_with(v(3), R1, R2)
    cache.add_excerpt(excerpt(v(4), record(R1)), asked=[R1.id, R2.id], now=1)
    assert cache.held(R2.id) is None
    assert cache.held(R1.id) is not None


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        pytest.param(excerpt(v(3), record(R1), key=FORGER), "directory_untrusted", id="forged"),
        pytest.param(
            excerpt(v(3), record(R1)).model_copy(update={"sig": b64e(bytes(64))}),
            "directory_untrusted",
            id="bad-signature",
        ),
        pytest.param(excerpt(v(3), record(R2)), "directory_mismatch", id="not-asked"),
        pytest.param(
            excerpt(v(3), record(R1), record(R2)), "directory_mismatch", id="one-too-many"
        ),
        pytest.param(excerpt(v(2), record(R1)), "directory_downgrade", id="older-serial"),
        pytest.param(excerpt("a" * 32, record(R1)), "directory_downgrade", id="no-serial"),
    ],
)
def test_an_excerpt_is_refused_whole(answer: SignedExcerpt, code: str) -> None:
    cache = cache_with(v(3), R3)
    changed = record(R1, kem_of=R2)  # what an attacker would want sealed for
    cache.add_excerpt(excerpt(v(3), changed), asked=[R1.id], now=0)
    with pytest.raises(SignatureError) as refused:
        cache.add_excerpt(answer, asked=[R1.id], now=1)
    assert refused.value.code == code
    assert refused.value.hint
    held = cache.held(R1.id)
    assert held is not None
    assert held.record == changed  # untouched
    assert cache.newest == 3


def test_a_forged_excerpt_says_so_clearly() -> None:
    cache = DirectoryCache(PINNED)
    with pytest.raises(SignatureError, match="not signed by the directory key pinned"):
        cache.add_excerpt(excerpt(v(1), record(R1), key=FORGER), asked=[R1.id], now=0)
    assert len(cache) == 0


def test_an_excerpt_as_new_as_the_newest_is_taken() -> None:
    cache = cache_with(v(3), R1)
    cache.add_excerpt(excerpt(v(3, "e" * 32), record(R2)), asked=[R2.id], now=1)
    assert usable(cache, R2) is not None
    assert usable(cache, R1) is not None


# ---------------------------------------------------------------------- change lists
def test_a_change_list_keeps_the_unchanged_and_drops_the_changed() -> None:
    cache = cache_with(v(3), R1, R2, R3)
    cache.heard(v(5), interval_s=INTERVAL, now=2, epoch=EPOCH)  # something changed
    assert [usable(cache, a, now=2) for a in (R1, R2, R3)] == [None, None, None]
    assert cache.outdated_since([R1.id, R2.id], now=2, epoch=EPOCH) == v(3)
    cache.add_changes(changes(v(3), v(5), (R2.id,)), now=3)
    assert usable(cache, R1, now=3) == record(R1)
    assert usable(cache, R3, now=3) == record(R3)
    assert cache.held(R2.id) is None  # to be fetched again
    held = cache.held(R1.id)
    assert held is not None
    assert (held.version, held.confirmed_at) == (v(5), 3)


def test_a_change_list_that_cannot_say_drops_everything_older() -> None:
    cache = cache_with(v(3), R1, R2)
    cache.add_excerpt(excerpt(v(6), record(R3)), asked=[R3.id], now=1)
    cache.add_changes(changes(v(3), v(6), None), now=2)
    assert [cache.held(a.id) is not None for a in (R1, R2, R3)] == [False, False, True]


def test_a_change_list_speaks_only_for_what_it_covers() -> None:
    cache = cache_with(v(2), R1)
    cache.add_excerpt(excerpt(v(4), record(R2)), asked=[R2.id], now=0)
    cache.add_changes(changes(v(3), v(6), ()), now=1)  # nothing changed after 3
    r1, r2 = cache.held(R1.id), cache.held(R2.id)
    assert r1 is not None
    assert r2 is not None
    assert r1.version == v(2)  # held from before 3: it may have changed at 3
    assert r2.version == v(6)
    assert usable(cache, R1) is None
    assert usable(cache, R2) is not None


def test_a_change_list_at_the_version_held_confirms_it() -> None:
    cache = cache_with(v(3), R1)
    cache.add_changes(changes(v(3), v(3), ()), now=50)
    assert cache.usable(R1.id, now=100, epoch=-1) is not None  # confirmed at 50: not old


@pytest.mark.parametrize(
    ("answer", "error", "code"),
    [
        pytest.param(
            changes(v(3), v(5), (), key=FORGER), SignatureError, "directory_untrusted", id="forged"
        ),
        pytest.param(changes(v(1), v(2), ()), SignatureError, "directory_downgrade", id="older"),
        pytest.param(changes(v(3), "b" * 32, ()), EnvelopeError, "malformed", id="no-serial"),
    ],
)
def test_a_change_list_is_refused_whole(
    answer: SignedChanges, error: type[Exception], code: str
) -> None:
    cache = cache_with(v(3), R1)
    with pytest.raises(error) as refused:
        cache.add_changes(answer, now=1)
    assert getattr(refused.value, "code", None) == code
    held = cache.held(R1.id)
    assert held is not None
    assert held.version == v(3)
    assert cache.newest == 3


# ---------------------------------------------------------------------- the lifecycle
def test_a_suspension_heard_of_is_never_sealed_for_with_the_old_record() -> None:
    """The resolve-cache promise, for the records: once a change is announced, the record
    from before it is not used until a signed answer says it did not change, or a new copy
    comes, and the new copy says what the directory now says."""
    hn = make_agency("hn-police")
    cache = cache_with(v(3), hn, R1)
    assert usable(cache, hn) is not None
    cache.heard(v(4), interval_s=INTERVAL, now=2, epoch=EPOCH)  # hn suspended at 4
    assert usable(cache, hn, now=2) is None
    # A relay not yet rebuilt answers the change list: still at 3, nothing changed.
    cache.add_changes(changes(v(3), v(3), ()), now=3)
    assert usable(cache, hn, now=3) is None
    # The rebuilt one: hn changed; its new record says suspended.
    cache.add_changes(changes(v(3), v(4), (hn.id,)), now=4)
    assert usable(cache, hn, now=4) is None
    assert usable(cache, R1, now=4) is not None
    cache.add_excerpt(excerpt(v(4), record(hn, status="suspended")), asked=[hn.id], now=5)
    got = usable(cache, hn, now=5)
    assert got is not None
    assert got.status == "suspended"
    # An old excerpt replayed: refused, the suspension stays.
    with pytest.raises(SignatureError, match="older than the serial 4"):
        cache.add_excerpt(excerpt(v(3), record(hn)), asked=[hn.id], now=6)
    assert (got := usable(cache, hn, now=6)) is not None
    assert got.status == "suspended"


def test_a_rotated_key_replaces_the_old_one() -> None:
    cache = cache_with(v(3), R1)
    cache.heard(v(4), interval_s=INTERVAL, now=1, epoch=EPOCH)
    cache.add_changes(changes(v(3), v(4), (R1.id,)), now=2)
    cache.add_excerpt(excerpt(v(4), record(R1, kem_of=R2)), asked=[R1.id], now=2)
    got = usable(cache, R1, now=2)
    assert got is not None
    assert got.encryption_key is not None
    assert got.encryption_key.kid == R2.pub("X25519").kid


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        DirectoryCache(PINNED, max_records=0)
    with pytest.raises(ValueError, match="positive"):
        DirectoryCache(PINNED, unheard_ttl_s=0)
