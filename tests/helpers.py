"""Helpers for tests: waiting for a condition, and pinning SDK error texts.

A fixed sleep is too long on a fast machine and too short on a loaded one.
These poll instead, return as soon as the condition holds, and fail with
what was awaited when it never does. `wait_until` blocks (for tests that
drive node processes over HTTP); `wait_until_async` is for trio code in the
test's own process, on the real clock or on a mock one alike.

Which clock: trio code that waits on nothing real runs under the
`autojump_clock` fixture, so its timeouts and sleeps take no time. Code that
waits on a real PostgreSQL or Redis (through trio-asyncio) or a real socket
stays on the real clock: the autojump moves time on as soon as every task
waits, so a deadline (a reply timeout, a call timeout) would run out while
the server is still working. Such tests poll with `wait_until_async`; one
that must let a cooldown pass may run on `trio.testing.MockClock(rate=1)`
and `jump` it while nothing is in flight.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TypeVar

import trio

T = TypeVar("T")
What = str | Callable[[], str]


def wait_until(condition: Callable[[], T], timeout_s: float = 30.0, what: What = "the condition", *, interval_s: float = 0.05) -> T:
    """Call `condition` until it returns something truthy, and return that.
    Raises AssertionError naming `what` if it is still falsy after `timeout_s`
    (`what` may be a function, to describe the state at that moment)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {_describe(what)}")
        time.sleep(interval_s)


async def wait_until_async(condition: Callable[[], T], timeout_s: float = 30.0, what: What = "the condition", *, interval_s: float = 0.01) -> T:
    """`wait_until` for trio: `condition` (a plain function) is checked every
    `interval_s` of trio's clock. Raises AssertionError naming `what` if it is
    still falsy after `timeout_s`."""
    try:
        with trio.fail_after(timeout_s):
            while not (value := condition()):
                await trio.sleep(interval_s)
    except trio.TooSlowError:
        raise AssertionError(f"timed out after {timeout_s} s waiting for {_describe(what)}") from None
    return value


def _describe(what: What) -> str:
    return what if isinstance(what, str) else what()


def sdk_error(message: str) -> str:
    """The anchored pattern of a stripe SDK error raised on our answer: the SDK
    puts the response's request id before the message we sent."""
    return rf"^Request req_[\w-]+: {re.escape(message)}$"
