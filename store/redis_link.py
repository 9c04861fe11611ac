"""The Redis link: the other asyncio bridge, and the one module that knows
redis-py (an asyncio library) exists.

Redis (or Valkey) holds what may be lost without harm to money: rate-limit
buckets, the nonces of signed requests, and the event streams (one per
partition), which the outbox in PostgreSQL can always fill again. Each
public method makes one bridged call, and every library error becomes
`RedisUnavailable`, so callers decide for themselves whether to fail open or
closed. It is not a `StoreError`: a Redis outage is never reported as the
database's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import redis.asyncio
import redis.exceptions
import trio_asyncio

from store.errors import RedisUnavailable
from store.rows import EventRow

# A token bucket refilled continuously at `rate` tokens a second up to
# `burst`, kept as a hash {tokens, at_ms}; one call takes up to `wanted`
# whole tokens (all there are, when fewer). The server's clock is used so
# that nodes with skewed clocks share one bucket fairly. Tokens are counted
# in thousandths to stay in integers.
TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2]) * 1000
local wanted = tonumber(ARGV[3])
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at_ms')
local tokens = tonumber(state[1]) or burst
local at_ms = tonumber(state[2]) or now_ms
tokens = math.min(burst, tokens + math.max(0, now_ms - at_ms) * rate)
local granted = math.min(wanted, math.floor(tokens / 1000))
tokens = tokens - granted * 1000
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at_ms', now_ms)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate) + 1000)
local wait_ms = 0
if granted == 0 then
    wait_ms = math.ceil((1000 - tokens) / rate)
end
return {granted, math.floor(tokens / 1000), wait_ms, math.ceil((burst - tokens) / rate)}
"""


class Bucket(msgspec.Struct, frozen=True):
    """The answer to one request's rate limit."""

    allowed: bool
    remaining: int
    retry_after_ms: int
    full_in_ms: int


class Grant(msgspec.Struct, frozen=True):
    """Tokens taken from a bucket in one call: `granted` (0 when none was
    there), what is left, when the next token comes, when it is full."""

    granted: int
    remaining: int
    retry_after_ms: int
    full_in_ms: int


class StreamEntry(msgspec.Struct, frozen=True):
    stream: str
    entry_id: str
    event: EventRow


_event_encoder = msgspec.msgpack.Encoder()
_event_decoder = msgspec.msgpack.Decoder(EventRow)


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
        """Return once Redis answers; RedisUnavailable when it does not."""
        await self._call(self._client.ping)

    async def take_tokens(self, name: str, rate_per_s: int, burst: int, wanted: int) -> Grant:
        """Take up to `wanted` tokens from the bucket `name`."""

        async def run() -> list[int]:
            return await self._bucket_script(keys=[self._prefix + "bucket:" + name], args=[rate_per_s, burst, wanted])

        granted, remaining, retry_after_ms, full_in_ms = await self._call(run)
        return Grant(int(granted), int(remaining), int(retry_after_ms), int(full_in_ms))

    async def remember_once(self, name: str, ttl_s: int) -> bool:
        """Store `name` for `ttl_s`; False when it was already there."""

        async def run() -> bool:
            return bool(await self._client.set(self._prefix + name, b"1", nx=True, ex=ttl_s))

        return await self._call(run)

    # ------------------------------------------------------ event streams

    def stream_key(self, partition: int) -> str:
        return f"{self._prefix}events:{partition}"

    async def publish_events(self, rows: Sequence[EventRow]) -> None:
        """Append events, of any partitions, each to its partition's stream
        in the order given, in one round trip. Rows come as the outbox reads
        them, without the intent snapshot (it stays in PostgreSQL): entries
        stay small."""

        async def run() -> None:
            async with self._client.pipeline(transaction=False) as pipe:
                for row in rows:
                    pipe.xadd(self.stream_key(row.partition), {b"e": _event_encoder.encode(row)})
                await pipe.execute()

        await self._call(run)

    async def ensure_group(self, partitions: list[int], group: str) -> None:
        """Create a consumer group on each partition's stream (from its start)."""

        async def run() -> None:
            for partition in partitions:
                try:
                    await self._client.xgroup_create(self.stream_key(partition), group, id="0", mkstream=True)
                except redis.exceptions.ResponseError as error:
                    if "BUSYGROUP" not in str(error):
                        raise

        await self._call(run)

    async def read_group(
        self, group: str, consumer: str, partitions: list[int], *, pending: bool, count: int, block_ms: int
    ) -> list[StreamEntry]:
        """Entries for this consumer: its own unacknowledged ones when
        `pending`, else new ones (waiting up to `block_ms`)."""
        streams = {self.stream_key(partition): "0" if pending else ">" for partition in partitions}

        async def run() -> Any:
            return await self._client.xreadgroup(group, consumer, streams, count=count, block=None if pending else block_ms)

        replies = await self._call(run) or []
        entries = []
        for stream, messages in replies:
            for entry_id, fields in messages:
                if fields and b"e" in fields:
                    entries.append(StreamEntry(stream.decode(), entry_id.decode(), _event_decoder.decode(fields[b"e"])))
        return entries

    async def ack(self, group: str, entries: list[StreamEntry]) -> None:
        """Acknowledge entries for `group`, all streams in one round trip."""
        by_stream: dict[str, list[str]] = {}
        for entry in entries:
            by_stream.setdefault(entry.stream, []).append(entry.entry_id)

        async def run() -> None:
            async with self._client.pipeline(transaction=False) as pipe:
                for stream, entry_ids in by_stream.items():
                    pipe.xack(stream, group, *entry_ids)
                await pipe.execute()

        await self._call(run)

    async def trim_consumed(self, partition: int) -> int:
        """Drop the entries every consumer group has read and acknowledged.
        A stream with no group yet is left alone. Returns entries dropped."""
        key = self.stream_key(partition)

        async def run() -> int:
            groups = await self._client.xinfo_groups(key)
            if not groups:
                return 0
            keep_from: list[tuple[int, int]] = []
            for group in groups:
                last = group["last-delivered-id"]
                keep_from.append(_after(last.decode() if isinstance(last, bytes) else last))
                if group["pending"]:
                    summary = await self._client.xpending(key, group["name"])
                    oldest = summary["min"]
                    # None when the last pending entry was acknowledged meanwhile.
                    if oldest is not None:
                        keep_from.append(_parse_id(oldest.decode() if isinstance(oldest, bytes) else oldest))
            low = min(keep_from)
            return int(await self._client.xtrim(key, minid=f"{low[0]}-{low[1]}", approximate=False))

        return await self._call(run)

    async def close(self) -> None:
        """Close the client's connections."""
        await self._call(self._client.aclose)


def _parse_id(entry_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def _after(entry_id: str) -> tuple[int, int]:
    """The smallest id after `entry_id`."""
    milliseconds, sequence = _parse_id(entry_id)
    return milliseconds, sequence + 1
