"""Wait for a condition, not for seconds: ``eventually`` (async) and ``eventually_sync``.

A test that waits for something the system does in its own time (a relay storing, a server
coming up, a line in a log) polls a condition until it holds::

    await eventually(lambda: relay_connected(log), what="the relay to connect")
    rows = eventually_sync(lambda: receipts(bid), until=lambda r: len(r) == 3, what="3 receipts")

A condition is a function (or, for ``eventually``, a coroutine function) returning a value;
the wait is over when that value is true, or, given ``until``, when ``until(value)`` is.
Either way the value is returned, so the test goes on to assert on what it waited for.

The deadline is a safety net against a hang, never what the test asserts: keep it generous
(the suite must pass on a two-core machine with two CPU-bound processes beside it). When it
passes, the test fails naming ``what`` and the last value the condition returned (or the
last exception it raised, of the ``ignoring`` kinds).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["DEFAULT_TIMEOUT_S", "eventually", "eventually_sync"]

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 60.0
_SHOWN_CHARS = 2000  # of the last value, in the failure message


def _shown(value: object) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= _SHOWN_CHARS else "..." + text[-_SHOWN_CHARS:]


def _timed_out(
    what: str, timeout: float, last: object, context: Callable[[], object] | None
) -> AssertionError:
    message = f"timed out after {timeout:g} s waiting for {what}; last seen: {_shown(last)}"
    if context is not None:
        message += f"\n{_shown(context())}"
    return AssertionError(message)


async def eventually(
    condition: Callable[[], T | Awaitable[T]],
    *,
    what: str,
    until: Callable[[T], object] = bool,
    timeout: float = DEFAULT_TIMEOUT_S,
    interval: float = 0.05,
    ignoring: tuple[type[BaseException], ...] = (),
    context: Callable[[], object] | None = None,
) -> T:
    """Call ``condition`` (a function or a coroutine function) every ``interval`` seconds
    until ``until`` holds for the value it returns (by default: until it is true), and
    return that value.

    Args:
        condition: what to check.
        what: what is awaited, for the failure message ("the relay to connect").
        until: when the value is what the test waits for (default: ``bool``).
        timeout: seconds before giving up (a safety net: generous).
        interval: seconds between calls.
        ignoring: exceptions that mean "not yet" (a server not listening yet); any other
            propagates at once.
        context: called on timeout; what it returns ends the message (a log's tail).

    Raises:
        AssertionError: ``timeout`` passed; names ``what`` and the last value seen.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: object = None
    while True:
        try:
            value = condition()
            if inspect.isawaitable(value):
                value = await value
        except ignoring as exc:
            last = exc
        else:
            if until(value):
                return value
            last = value
        if loop.time() >= deadline:
            raise _timed_out(what, timeout, last, context)
        await asyncio.sleep(interval)


def eventually_sync(
    condition: Callable[[], T],
    *,
    what: str,
    until: Callable[[T], object] = bool,
    timeout: float = DEFAULT_TIMEOUT_S,
    interval: float = 0.05,
    ignoring: tuple[type[BaseException], ...] = (),
    context: Callable[[], object] | None = None,
) -> T:
    """``eventually`` for code outside an event loop (it sleeps the thread)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = condition()
        except ignoring as exc:
            last = exc
        else:
            if until(value):
                return value
            last = value
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, last, context)
        time.sleep(interval)
