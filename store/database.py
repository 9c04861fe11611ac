"""The one asyncio bridge for asyncpg: the only module that knows asyncio exists.

Everything here is called from trio. `Database.call` runs one query function
`query(connection, *args)` on the asyncio side, on one pooled connection, in
one bridged call through trio-asyncio: a function does all of its round
trips there, because a bridged call costs far more than a native await
(DESIGN section 3: bridge per batch, not per row). The domain modules
(journal, merchants, idempotency, events, webhooks, audit, purge) are plain
`async def` query functions over a connection, each public method one call.

Library errors are translated at this edge into `StoreUnavailable` (the
database cannot be reached or refused the transaction; the caller may retry
and must not acknowledge anything) or `JournalConflict` (someone else wrote
the same journal position: a second writer for a partition, which is a bug).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, TypeVarTuple

import asyncpg
import structlog
import trio_asyncio

from store.errors import JournalConflict, StoreUnavailable

log = structlog.get_logger("store.database")

T = TypeVar("T")
Arguments = TypeVarTuple("Arguments")

_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    # A connection broken mid-operation (a restart of the server) can be
    # left in a state asyncpg refuses to use; treat it as an outage.
    asyncpg.exceptions.InternalClientError,
)

# Tables whose unique keys are journal positions: a second row there is a
# second writer for a partition, not a caller's mistake.
_JOURNAL_TABLES = ("journal", "postings")


def columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows to one list per column (what unnest takes back apart)."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows)]


def rows_affected(status: str) -> int:
    """The row count of a command status such as "DELETE 3"."""
    return int(status.split()[-1])


def _log_unretrieved_error(loop: Any, context: dict[str, Any]) -> None:
    error = context.get("exception")
    log.error(
        "asyncio_error_unhandled",
        message=str(context.get("message", ""))[:500],
        error=type(error).__name__ if error is not None else None,
        detail=str(error)[:500] if error is not None else None,
    )


async def _no_reset(connection: asyncpg.Connection) -> None:
    return None


class Database:
    """A pool of connections to one database, used from trio."""

    def __init__(self, pool: asyncpg.Pool, loop: Any) -> None:
        self._pool = pool
        self._loop = loop

    @classmethod
    async def open(cls, dsn: str, *, connections_max: int = 20) -> Database:
        """Connect. Must be called inside `trio_asyncio.open_loop()`; raises
        RuntimeError outside one, StoreUnavailable when the database cannot
        be reached."""
        loop = trio_asyncio.current_loop.get()
        if loop is None:
            raise RuntimeError("the store needs a running trio_asyncio loop")
        # An exception on a future nobody awaited (asyncpg's connection set-up
        # leaves some behind) reaches the loop's exception handler, which
        # trio-asyncio makes fatal to the whole process. Log those instead.
        loop.set_exception_handler(_log_unretrieved_error)
        create = functools.partial(
            asyncpg.create_pool,
            dsn,
            # Open every connection up front: actors commit concurrently, and
            # opening connections under load only adds latency.
            min_size=connections_max,
            max_size=connections_max,
            command_timeout=30,
            # The server-side statement cache is per connection; keep it.
            statement_cache_size=256,
            # No session state is ever set (only transaction-scoped locks),
            # so a released connection needs no RESET ALL round trip; an
            # open transaction is still rolled back by asyncpg itself.
            reset=_no_reset,
        )
        try:
            pool = await trio_asyncio.aio_as_trio(create, loop=loop)()
        except _UNAVAILABLE as error:
            raise StoreUnavailable(f"cannot connect to the database: {type(error).__name__}") from error
        return cls(pool, loop)

    async def close(self) -> None:
        """Close every connection; StoreUnavailable if that fails."""
        await self._bridge(self._pool.close)

    async def call(
        self,
        query: Callable[[asyncpg.Connection, *Arguments], Awaitable[T]],
        *args: *Arguments,
        transaction: bool = False,
    ) -> T:
        """`await query(connection, *args)` on one pooled connection, inside
        one transaction when `transaction`, in one bridged call; returns what
        it returns. Raises StoreUnavailable when the database cannot be
        reached or did not commit, JournalConflict when a journal position
        was taken; any other error of the query (a bug) as it is."""
        return await self._bridge(self._run, query, args, transaction)

    async def _run(self, query: Callable[..., Awaitable[T]], args: tuple[Any, ...], transaction: bool) -> T:
        """(asyncio side) A connection that failed is terminated rather than
        returned, so the pool opens a fresh one instead of handing out a
        connection stuck half-way through an operation."""
        async with self._pool.acquire() as connection:
            try:
                if not transaction:
                    return await query(connection, *args)
                async with connection.transaction():
                    return await query(connection, *args)
            except BaseException:
                connection.terminate()
                raise

    async def _bridge(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        try:
            return await trio_asyncio.aio_as_trio(function, loop=self._loop)(*args)
        except asyncpg.exceptions.UniqueViolationError as error:
            if error.table_name in _JOURNAL_TABLES:
                raise JournalConflict(str(error)) from error
            raise
        except _UNAVAILABLE as error:
            raise StoreUnavailable(f"database unavailable: {type(error).__name__}") from error
