"""When the SDK uses a resolve answer again (``clients.resolve_cache``, ADR 0009): only
while announcements keep coming on the same connection with the answer's versions, the
answer is young enough and the bulletin has not expired. Times are passed in."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from clients.resolve_cache import (
    DEFAULT_MAX_AGE_S,
    LIVE_INTERVALS,
    Recipients,
    ResolveCache,
    Versions,
)
from schemas.agency import Announcement
from schemas.envelope import parse_model
from schemas.errors import EnvelopeError
from schemas.ids import AgencyId
from schemas.keys import EncryptionKey

V1 = Versions("a" * 32, "1111222233334444")
V2 = Versions("b" * 32, "1111222233334444")  # the directory changed
P2 = Versions("a" * 32, "5555666677778888")  # the policy changed
KEY = EncryptionKey.generate().public_key
HN: Recipients = {AgencyId("hn-police"): KEY}
REQ = b'{"labels":{"topic":"drug-trafficking"}}'
OTHER = b'{"labels":{"topic":"arms-trafficking"}}'
INTERVAL = 5
EPOCH = 0


def announcement(v: Versions = V1, interval_s: int = INTERVAL) -> Announcement:
    return Announcement(
        directory_version=v.directory, policy_version=v.policy, interval_s=interval_s
    )


def live_cache(max_age_s: float = DEFAULT_MAX_AGE_S) -> ResolveCache:
    """A cache that heard V1 at t=0 on connection EPOCH and kept HN for REQ at t=0."""
    cache = ResolveCache(max_age_s=max_age_s)
    cache.heard(announcement(), now=0, epoch=EPOCH)
    kept = cache.put(REQ, HN, V1, expires_at=None, ticket=cache.ticket(), now=0, epoch=EPOCH)
    assert kept
    return cache


def test_an_answer_is_used_again_while_nothing_changed() -> None:
    cache = live_cache()
    cache.heard(announcement(), now=4, epoch=EPOCH)  # the same versions again: kept
    got = cache.get(REQ, now=5, wall_now=100, epoch=EPOCH)
    assert got == HN
    assert got is not None
    got.clear()  # the caller's copy
    assert cache.get(REQ, now=6, wall_now=100, epoch=EPOCH) == HN
    assert (cache.hits, cache.misses) == (2, 0)
    assert cache.get(OTHER, now=6, wall_now=100, epoch=EPOCH) is None
    assert cache.misses == 1


@dataclass(frozen=True)
class Later:
    """What happens after the answer was kept, then the lookup at ``now``."""

    heard: tuple[tuple[float, Versions, int], ...] = ()  # (when, versions, epoch)
    now: float = 1
    epoch: int = EPOCH
    lost: bool = False


@pytest.mark.parametrize(
    "later",
    [
        pytest.param(Later(heard=((0.5, V2, EPOCH),)), id="directory-changed"),
        pytest.param(Later(heard=((0.5, P2, EPOCH),)), id="policy-changed"),
        # A lagging relay announces the old versions after the new: still dropped.
        pytest.param(Later(heard=((0.5, V2, EPOCH), (0.6, V1, EPOCH))), id="changed-and-back"),
        pytest.param(Later(epoch=1), id="reconnected"),
        pytest.param(Later(heard=((0.5, V1, 1),), epoch=1), id="reconnected-and-heard"),
        pytest.param(Later(epoch=-1), id="disconnected"),
        pytest.param(Later(now=LIVE_INTERVALS * INTERVAL), id="announcements-stopped"),
        pytest.param(Later(lost=True), id="malformed-announcement"),
    ],
)
def test_an_answer_is_not_used_once_it_may_be_out_of_date(later: Later) -> None:
    cache = live_cache()
    for when, versions, epoch in later.heard:
        cache.heard(announcement(versions), now=when, epoch=epoch)
    if later.lost:
        cache.lost()
    assert cache.get(REQ, now=later.now, wall_now=100, epoch=later.epoch) is None
    assert len(cache) == 0
    # Nor does it come back when the old versions are announced again.
    cache.heard(announcement(V1), now=later.now, epoch=later.epoch)
    assert cache.get(REQ, now=later.now, wall_now=100, epoch=later.epoch) is None


def test_live_until_the_third_interval_without_an_announcement() -> None:
    cache = live_cache()
    last = LIVE_INTERVALS * INTERVAL
    assert cache.get(REQ, now=last - 0.01, wall_now=100, epoch=EPOCH) == HN
    assert cache.get(REQ, now=last, wall_now=100, epoch=EPOCH) is None


def test_an_answer_is_used_for_max_age_s_at_most() -> None:
    cache = live_cache(max_age_s=10)
    for t in (4, 8):  # announcements keep it live
        cache.heard(announcement(), now=t, epoch=EPOCH)
    assert cache.get(REQ, now=9.9, wall_now=100, epoch=EPOCH) == HN
    assert cache.get(REQ, now=10, wall_now=100, epoch=EPOCH) is None


def test_an_expired_bulletins_answer_is_not_used() -> None:
    cache = live_cache()
    key = b'{"expires_at":150,"labels":{"topic":"drug-trafficking"}}'
    assert cache.put(key, HN, V1, expires_at=150, ticket=cache.ticket(), now=0, epoch=EPOCH)
    assert cache.get(key, now=1, wall_now=149, epoch=EPOCH) == HN
    assert cache.get(key, now=1, wall_now=150, epoch=EPOCH) is None
    assert cache.get(REQ, now=1, wall_now=150, epoch=EPOCH) == HN  # no expiry: unaffected


@pytest.mark.parametrize(
    ("before_put", "versions", "epoch"),
    [
        pytest.param(None, V1, EPOCH, id="kept"),
        pytest.param(None, V2, EPOCH, id="answered-under-other-versions"),
        pytest.param((V2, EPOCH), V2, EPOCH, id="announced-while-in-flight"),
        pytest.param((V1, 1), V1, 1, id="reconnected-while-in-flight"),
        pytest.param(None, V1, 1, id="other-connection"),
    ],
)
def test_an_answer_in_flight_across_a_change_is_not_kept(
    before_put: tuple[Versions, int] | None, versions: Versions, epoch: int
) -> None:
    cache = ResolveCache()
    cache.heard(announcement(), now=0, epoch=EPOCH)
    ticket = cache.ticket()  # then the request goes out
    if before_put is not None:
        cache.heard(announcement(before_put[0]), now=0.5, epoch=before_put[1])
    kept = cache.put(REQ, HN, versions, expires_at=None, ticket=ticket, now=1, epoch=epoch)
    assert kept is (before_put is None and versions == V1 and epoch == EPOCH)
    assert len(cache) == int(kept)


def test_nothing_is_kept_before_an_announcement_is_heard() -> None:
    cache = ResolveCache()
    assert cache.versions is None
    assert not cache.put(REQ, HN, V1, expires_at=None, ticket=cache.ticket(), now=0, epoch=0)
    assert cache.get(REQ, now=0, wall_now=0, epoch=0) is None


def test_at_most_max_entries_the_least_recently_used_goes() -> None:
    cache = ResolveCache(max_entries=2)
    cache.heard(announcement(), now=0, epoch=EPOCH)
    for key in (b"1", b"2"):
        assert cache.put(key, HN, V1, expires_at=None, ticket=cache.ticket(), now=0, epoch=EPOCH)
    assert cache.get(b"1", now=0, wall_now=0, epoch=EPOCH) == HN  # 2 is now the oldest
    assert cache.put(b"3", HN, V1, expires_at=None, ticket=cache.ticket(), now=0, epoch=EPOCH)
    assert len(cache) == 2
    assert cache.get(b"2", now=0, wall_now=0, epoch=EPOCH) is None
    assert cache.get(b"1", now=0, wall_now=0, epoch=EPOCH) == HN
    assert cache.get(b"3", now=0, wall_now=0, epoch=EPOCH) == HN


@pytest.mark.parametrize(("max_entries", "max_age_s"), [(0, 60.0), (256, 0.0), (256, -1.0)])
def test_bounds_must_be_positive(max_entries: int, max_age_s: float) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        ResolveCache(max_entries=max_entries, max_age_s=max_age_s)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"directory_version":"x","policy_version":"p","interval_s":5}', id="ver"),
        pytest.param(
            b'{"directory_version":"' + b"a" * 32 + b'","policy_version":"p","interval_s":0}',
            id="interval-0",
        ),
        pytest.param(
            b'{"directory_version":"' + b"a" * 32 + b'","policy_version":"p","interval_s":301}',
            id="interval-too-long",
        ),
        pytest.param(
            b'{"agencies":["hn-police"],"directory_version":"'
            + b"a" * 32
            + b'","policy_version":"p","interval_s":5}',
            id="extra-field",
        ),
    ],
)
def test_an_announcement_is_three_bounded_fields(raw: bytes) -> None:
    with pytest.raises(EnvelopeError):
        parse_model(Announcement, raw, max_bytes=1024, what="announcement")
