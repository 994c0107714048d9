"""The tests' one way of waiting (``tests.waiting``): it returns what it waited for, and
fails naming what it awaited and the last value seen."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from tests.waiting import eventually, eventually_sync


def test_returns_the_first_value_that_holds() -> None:
    counter = itertools.count()
    assert eventually_sync(lambda: next(counter), until=lambda n: n >= 3, what="3", interval=0) == 3
    assert eventually_sync(lambda: next(counter), what="a true value", interval=0) == 4


async def test_awaits_a_coroutine_condition() -> None:
    counter = itertools.count()

    async def rows() -> list[int]:
        return list(range(next(counter)))

    assert await eventually(rows, until=lambda r: len(r) == 2, what="2 rows", interval=0) == [0, 1]


async def test_times_out_naming_what_and_the_last_value() -> None:
    counter = itertools.count(start=1)
    kw: dict[str, Any] = {"what": "a negative count", "timeout": 0.05, "interval": 0.01}
    message = r"after 0\.05 s waiting for a negative count; last seen: [1-9]"
    with pytest.raises(AssertionError, match=message):
        eventually_sync(lambda: next(counter), until=lambda n: n < 0, **kw)
    with pytest.raises(AssertionError, match=message):
        await eventually(lambda: next(counter), until=lambda n: n < 0, **kw)
    with pytest.raises(AssertionError, match=r"last seen: [1-9]\d*\n\.\.\.x{2000}$"):
        eventually_sync(
            lambda: next(counter), until=lambda n: n < 0, context=lambda: "x" * 3000, **kw
        )


def refused() -> str:
    raise ConnectionRefusedError("nothing listens yet")


async def test_ignores_only_the_exceptions_named() -> None:
    attempts = itertools.count()

    def up_on_the_third_try() -> str:
        return refused() if next(attempts) < 2 else "up"

    assert await eventually(up_on_the_third_try, what="up", interval=0, ignoring=(OSError,)) == "up"
    with pytest.raises(AssertionError, match="last seen: ConnectionRefusedError"):
        eventually_sync(refused, what="never", timeout=0.02, interval=0.01, ignoring=(OSError,))
    with pytest.raises(ConnectionRefusedError):
        eventually_sync(refused, what="never", ignoring=(ValueError,))
