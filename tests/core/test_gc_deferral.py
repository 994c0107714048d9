"""A directory rebuild holds off the cyclic garbage collector and leaves it as it found
it, whatever other builds run at the same time on other threads; a long-running process
settles its heap (``settle_heap``: collect, then freeze) outside builds only."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterator

import pytest

from broker.directory.service import _collections_deferred, settle_heap


@pytest.fixture
def thawed() -> Iterator[None]:
    """Whatever a test froze is thawed after it (the rest of the session collects)."""
    assert gc.get_freeze_count() == 0
    try:
        yield
    finally:
        gc.unfreeze()


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


def test_settling_collects_frozen_cycles_then_freezes_the_rest(thawed: None) -> None:
    kept = _Node()
    dropped = _Node()
    gone = weakref.ref(dropped)
    gc.freeze()  # as an earlier settle left them
    del dropped
    settle_heap()
    assert gone() is None  # thawed and collected, not left frozen for ever
    assert gc.get_freeze_count() > 0
    assert kept.me is kept


def test_no_settling_during_a_build(thawed: None) -> None:
    with _collections_deferred():
        settle_heap()
    assert gc.get_freeze_count() == 0


def test_the_collector_is_off_during_a_build_and_back_on_after() -> None:
    assert gc.isenabled()
    with _collections_deferred():
        assert not gc.isenabled()
        with _collections_deferred():  # a second build at once
            assert not gc.isenabled()
        assert not gc.isenabled()  # the first one still builds
    assert gc.isenabled()


def test_a_collector_someone_turned_off_stays_off() -> None:
    gc.disable()
    try:
        with _collections_deferred():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_build_that_fails_turns_it_back_on() -> None:
    with pytest.raises(RuntimeError), _collections_deferred():
        raise RuntimeError("the registry went away")
    assert gc.isenabled()


def test_builds_on_many_threads_leave_it_on() -> None:
    start = threading.Barrier(8)

    def build() -> None:
        start.wait()
        for _ in range(200):
            with _collections_deferred():
                pass

    threads = [threading.Thread(target=build) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert gc.isenabled()
