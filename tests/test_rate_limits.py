"""Rate limits spent from local batches of one bucket in Redis (shards.rate_limits),
against a real Redis."""

from __future__ import annotations

import os

import trio
import trio_asyncio

from shards.rate_limits import RateLimiter
from store.redis_link import RedisLink
from tests.conftest import REDIS_URL


async def _link(name: str) -> RedisLink:
    return await RedisLink.open(REDIS_URL, prefix=f"test-rate-limits:{os.getpid()}:{name}:{trio.current_time()}:")


async def _burst(limiter: RateLimiter, link: RedisLink, name: str, count: int, rate: int, burst: int) -> list[bool]:
    allowed: list[bool] = []

    async def one() -> None:
        allowed.append((await limiter.take(link, name, rate, burst)).allowed)

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
    return allowed


async def test_a_burst_at_once_gets_the_bucket_and_no_more() -> None:
    async with trio_asyncio.open_loop():
        link = await _link("burst")
        limiter = RateLimiter()
        allowed = await _burst(limiter, link, "k", 40, 5, 10)
        # 10 in the bucket, and at 5 a second at most one more refills while
        # the burst runs (it takes well under 200 ms).
        assert 10 <= allowed.count(True) <= 11, allowed
        await link.close()


async def test_a_busy_key_takes_its_tokens_in_batches() -> None:
    async with trio_asyncio.open_loop():
        link = await _link("batches")
        limiter = RateLimiter()
        results = []
        for _ in range(10):
            results += await _burst(limiter, link, "busy", 20, 2_000, 4_000)
        assert all(results)
        # 200 requests, in 10 waves of 20: a batch per wave or so, not one per request.
        assert limiter.batches <= 40, limiter.batches
        await link.close()


async def test_two_nodes_sharing_a_bucket_never_exceed_it() -> None:
    async with trio_asyncio.open_loop():
        link = await _link("shared")
        first, second = RateLimiter(), RateLimiter()
        started = trio.current_time()
        allowed = 0
        for _ in range(5):
            allowed += (await _burst(first, link, "shared", 40, 100, 50)).count(True)
            allowed += (await _burst(second, link, "shared", 40, 100, 50)).count(True)
        elapsed = trio.current_time() - started
        # The burst plus what refilled while the run lasted, whatever batches
        # each node held: tokens one node holds are not the other's.
        assert allowed <= 50 + int(100 * elapsed) + 1, (allowed, elapsed)
        assert allowed >= 50, allowed
        await link.close()


async def test_a_refusal_is_kept_until_its_retry_after_without_asking_redis() -> None:
    async with trio_asyncio.open_loop():
        link = await _link("refused")
        limiter = RateLimiter()
        assert (await limiter.take(link, "k", 1, 1)).allowed
        refused = await limiter.take(link, "k", 1, 1)
        assert not refused.allowed and refused.remaining == 0 and refused.retry_after_ms >= 500
        batches = limiter.batches
        for _ in range(20):
            assert not (await limiter.take(link, "k", 1, 1)).allowed
        assert limiter.batches == batches
        # Once the token is back, the next request asks Redis again and gets it.
        await trio.sleep(refused.retry_after_ms / 1000 + 0.05)
        assert (await limiter.take(link, "k", 1, 1)).allowed
        assert limiter.batches == batches + 1
        await link.close()


async def test_a_steady_key_grows_its_batches_and_drops_what_it_does_not_spend() -> None:
    async with trio_asyncio.open_loop():
        link = await _link("steady")
        limiter = RateLimiter(reserve_s=0.5)
        # One request at a time, as on one keep-alive connection: batches
        # double while they are spent in time.
        for _ in range(100):
            assert (await limiter.take(link, "k", 1_000, 1_000)).allowed
        # 1 + 2 + ... + 32 + 50 tokens: seven batches for 100 requests.
        assert limiter.batches == 7, limiter.batches
        # 50 ms of 1,000 a second is the largest batch.
        assert limiter._reserves["k"].size == 50
        in_hand = limiter._reserves["k"].tokens
        assert in_hand > 0
        batches = limiter.batches
        await trio.sleep(0.6)
        # What was in hand has expired: the next request takes a new, smaller batch.
        assert (await limiter.take(link, "k", 1_000, 1_000)).allowed
        assert limiter.batches == batches + 1
        assert limiter._reserves["k"].size == 25
        await link.close()


async def test_many_keys_are_bounded() -> None:
    async with trio_asyncio.open_loop():
        link = await _link("bounded")
        limiter = RateLimiter(keys_max=50, reserve_s=0.0)
        for index in range(200):
            assert (await limiter.take(link, f"ip:{index}", 10, 10)).allowed
        assert len(limiter._reserves) <= 51
        await link.close()
