"""The asyncio bridge: asyncpg and redis-py run on an event loop of their
own, on a thread of its own, and trio hands them whole operations.

Both client libraries are asyncio code. They used to run on trio-asyncio's
loop, which emulates asyncio inside trio: every asyncio callback, timer and
socket wait went through trio's scheduler, and one `SELECT 1` cost about
0.55 ms of CPU on this project's machine (tests/bridge figures in
docs/performance.md). On a plain event loop (uvloop when installed) on its
own thread the same call costs 0.15-0.3 ms, handoffs included.

`AsyncioThread.run(function, *args)` is called from trio: the coroutine
`function(*args)` is created and awaited on the bridge's loop, and the trio
task sleeps until it is done. If the trio task is cancelled, the asyncio
task is cancelled too (asyncpg connections interrupted that way are
terminated by their callers, never reused half-way through). Results and
exceptions come back as they are; translating library errors is the job of
the two adapters (store/database.py, store/redis_link.py), which are the
only users of this module.

One loop serves the whole process (`shared()`), started on first use and
started again in a process forked from one that had it (the thread does not
survive a fork). It is a daemon thread; at exit its loop is stopped.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
import trio

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio works too
    uvloop = None

log = structlog.get_logger("store.bridge")

T = TypeVar("T")

# How long exit waits for the loop's thread to stop.
_STOP_WAIT_S = 2.0


def _log_unretrieved_error(loop: Any, context: dict[str, Any]) -> None:
    error = context.get("exception")
    log.error(
        "asyncio_error_unhandled",
        message=str(context.get("message", ""))[:500],
        error=type(error).__name__ if error is not None else None,
        detail=str(error)[:500] if error is not None else None,
    )


async def _awaited(function: Callable[..., Awaitable[T]], args: tuple[Any, ...]) -> T:
    # Made and awaited on the bridge's loop: an awaitable that binds to the
    # running loop when made (asyncpg's pool does) binds to this one.
    return await function(*args)


class AsyncioThread:
    """An asyncio event loop running forever on a daemon thread."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()
        self.loop.set_exception_handler(_log_unretrieved_error)
        self._thread = threading.Thread(target=self._serve, name="asyncio-bridge", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(_STOP_WAIT_S)

    async def run(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        """`await function(*args)` on the bridge's loop; from trio."""
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def finished(_: concurrent.futures.Future[T]) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass  # the trio run that asked has ended; nobody waits

        future = asyncio.run_coroutine_threadsafe(_awaited(function, args), self.loop)
        future.add_done_callback(finished)
        try:
            await done.wait()
        except BaseException:
            future.cancel()
            raise
        return future.result()


_shared: AsyncioThread | None = None
_shared_pid = 0
_shared_lock = threading.Lock()


def shared() -> AsyncioThread:
    """The process's bridge, started on first use."""
    global _shared, _shared_pid
    with _shared_lock:
        if _shared is None or _shared_pid != os.getpid():
            _shared = AsyncioThread()
            _shared_pid = os.getpid()
            atexit.register(_shared.stop)
        return _shared
