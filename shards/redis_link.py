"""The one module that knows redis-py (an asyncio library) exists.

Redis (or Valkey) holds what may be lost without harm to money: rate-limit
buckets and the nonces of signed requests. Each public method makes one
bridged call, and every library error becomes `RedisUnavailable`, so callers
decide for themselves whether to fail open or closed.
"""

from __future__ import annotations

from typing import Any

import msgspec
import redis.asyncio
import redis.exceptions
import trio_asyncio

from shards.store import StoreUnavailable

# A token bucket refilled continuously at `rate` tokens a second up to
# `burst`, kept as a hash {tokens, at_ms}. The server's clock is used so that
# nodes with skewed clocks share one bucket fairly. Tokens are counted in
# thousandths to stay in integers.
TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2]) * 1000
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at_ms')
local tokens = tonumber(state[1]) or burst
local at_ms = tonumber(state[2]) or now_ms
tokens = math.min(burst, tokens + math.max(0, now_ms - at_ms) * rate)
local allowed = 0
if tokens >= 1000 then
    tokens = tokens - 1000
    allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at_ms', now_ms)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate) + 1000)
local wait_ms = 0
if allowed == 0 then
    wait_ms = math.ceil((1000 - tokens) / rate)
end
return {allowed, math.floor(tokens / 1000), wait_ms, math.ceil((burst - tokens) / rate)}
"""


class RedisUnavailable(StoreUnavailable):
    """Redis could not be reached or did not answer in time."""


class Bucket(msgspec.Struct, frozen=True):
    allowed: bool
    remaining: int
    retry_after_ms: int
    full_in_ms: int


class RedisLink:
    def __init__(self, client: Any, loop: Any, prefix: str) -> None:
        self._client = client
        self._loop = loop
        self._prefix = prefix
        self._bucket_script = client.register_script(TOKEN_BUCKET)

    @classmethod
    async def open(cls, url: str, *, prefix: str = "payments:", timeout_s: float = 0.5) -> RedisLink:
        """Connect lazily; must be called inside `trio_asyncio.open_loop()`."""
        loop = trio_asyncio.current_loop.get()
        client = redis.asyncio.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, max_connections=64
        )
        return cls(client, loop, prefix)

    async def _call(self, function: Any, *args: Any) -> Any:
        try:
            return await trio_asyncio.aio_as_trio(function, loop=self._loop)(*args)
        except (OSError, TimeoutError, redis.exceptions.RedisError) as error:
            raise RedisUnavailable(f"redis unavailable: {type(error).__name__}") from error

    async def ping(self) -> None:
        await self._call(self._client.ping)

    async def take_token(self, name: str, rate_per_s: int, burst: int) -> Bucket:
        """Take one token from the bucket `name`, if there is one."""

        async def run() -> list[int]:
            return await self._bucket_script(keys=[self._prefix + "bucket:" + name], args=[rate_per_s, burst])

        allowed, remaining, retry_after_ms, full_in_ms = await self._call(run)
        return Bucket(bool(allowed), int(remaining), int(retry_after_ms), int(full_in_ms))

    async def remember_once(self, name: str, ttl_s: int) -> bool:
        """Store `name` for `ttl_s`; False when it was already there."""

        async def run() -> bool:
            return bool(await self._client.set(self._prefix + name, b"1", nx=True, ex=ttl_s))

        return await self._call(run)

    async def close(self) -> None:
        await self._call(self._client.aclose)

