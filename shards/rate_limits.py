"""Rate limits: one token bucket per key in Redis, spent from a local reserve.

Every node takes a key's tokens from the same bucket in Redis (the script in
store.redis_link), so a limit holds however many nodes serve the key. Asking
Redis for every request cost a bridged round trip per request; instead a
node takes a key's tokens in small batches and spends them locally. A batch
doubles while the last one was spent before it expired and halves when
tokens expired unspent (starting from one), and it is at least as large as
the requests waiting for it; it holds at most 50 ms of the key's rate and a
tenth of its burst, so a key with a small limit (under 20 a second) is still
asked one token at a time.

Tokens not spent within `reserve_s` are dropped, never handed back, so the
limit is never exceeded; a key whose traffic slows down loses at most one
batch. A refusal is kept locally until its Retry-After passes, so a client
hammering past its limit costs no round trip per request.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from store.redis_link import Bucket, RedisLink

# What one batch may hold: this much of the key's rate, and this share of
# its burst.
BATCH_RATE_S = 0.05
BATCH_BURST_SHARE = 0.1


class _Reserve:
    __slots__ = ("tokens", "good_until", "denied_until", "remaining", "full_in_ms", "size", "waiting", "fetching")

    def __init__(self) -> None:
        self.tokens = 0
        self.good_until = float("-inf")
        self.denied_until = float("-inf")
        self.remaining = 0
        self.full_in_ms = 0
        # The next batch's size, and the requests waiting for a batch.
        self.size = 1
        self.waiting = 0
        # Set while one request takes a batch, so the others wait for it.
        self.fetching: trio.Event | None = None


class RateLimiter:
    """Takes one token for a key per request; see the module's doc."""

    def __init__(self, *, reserve_s: float = 0.1, keys_max: int = 10_000, clock: Callable[[], float] = trio.current_time) -> None:
        self.reserve_s = reserve_s
        self.keys_max = keys_max
        self._clock = clock
        self._reserves: dict[str, _Reserve] = {}
        # Batches taken from Redis, for tests and operators.
        self.batches = 0

    async def take(self, redis: RedisLink, name: str, rate_per_s: int, burst: int) -> Bucket:
        """One token for `name`, or the refusal. Raises RedisUnavailable
        when a batch was needed and Redis did not answer."""
        reserve = self._reserves.get(name)
        if reserve is None:
            reserve = self._reserves[name] = _Reserve()
            if len(self._reserves) > self.keys_max:
                self._forget_idle()
        while True:
            now = self._clock()
            if now < reserve.denied_until:
                return Bucket(False, 0, _ms(reserve.denied_until - now), reserve.full_in_ms)
            if reserve.tokens > 0 and now < reserve.good_until:
                reserve.tokens -= 1
                return Bucket(True, reserve.remaining + reserve.tokens, 0, reserve.full_in_ms)
            if reserve.fetching is None:
                return await self._take_batch(redis, name, reserve, rate_per_s, burst)
            reserve.waiting += 1
            try:
                await reserve.fetching.wait()
            finally:
                reserve.waiting -= 1

    async def _take_batch(self, redis: RedisLink, name: str, reserve: _Reserve, rate_per_s: int, burst: int) -> Bucket:
        most = max(1, min(int(rate_per_s * BATCH_RATE_S), int(burst * BATCH_BURST_SHARE)))
        if reserve.tokens > 0:
            reserve.size = max(1, reserve.size // 2)
        elif self._clock() < reserve.good_until:
            reserve.size = min(most, reserve.size * 2)
        wanted = min(most, max(reserve.size, reserve.waiting + 1))
        fetched = reserve.fetching = trio.Event()
        try:
            grant = await redis.take_tokens(name, rate_per_s, burst, wanted)
        finally:
            reserve.fetching = None
            fetched.set()
        self.batches += 1
        now = self._clock()
        reserve.remaining = grant.remaining
        reserve.full_in_ms = grant.full_in_ms
        if grant.granted == 0:
            reserve.tokens = 0
            reserve.denied_until = now + grant.retry_after_ms / 1000
            return Bucket(False, 0, grant.retry_after_ms, grant.full_in_ms)
        reserve.tokens = grant.granted - 1
        reserve.good_until = now + self.reserve_s
        return Bucket(True, grant.remaining + reserve.tokens, 0, grant.full_in_ms)

    def _forget_idle(self) -> None:
        """Drop keys with nothing in hand; if that is not enough, the oldest
        half (a key dropped only loses its unspent batch)."""
        now = self._clock()
        for name in [name for name, reserve in self._reserves.items() if reserve.fetching is None and reserve.good_until <= now and reserve.denied_until <= now]:
            del self._reserves[name]
        if len(self._reserves) > self.keys_max:
            for name in list(self._reserves)[: len(self._reserves) // 2]:
                if self._reserves[name].fetching is None:
                    del self._reserves[name]


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000 + 0.999))
