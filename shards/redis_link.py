"""The one module that knows redis-py (an asyncio library) exists.

For now the node only checks at start that the event-stream server answers;
the outbox relay and consumers of later issues will live behind this module.
"""

from __future__ import annotations

import redis.asyncio
import redis.exceptions
import trio_asyncio

from shards.store import StoreUnavailable


async def ping(url: str) -> None:
    """Raise StoreUnavailable unless the Redis (or Valkey) server at `url` answers."""

    async def run() -> None:
        client = redis.asyncio.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
        try:
            await client.ping()
        finally:
            await client.aclose()

    try:
        await trio_asyncio.aio_as_trio(run)()
    except (OSError, redis.exceptions.RedisError) as error:
        raise StoreUnavailable(f"cannot reach the event stream server: {type(error).__name__}") from error
