"""The outbox relay (workers/outbox.py): one relay publishes every partition's
events to that partition's stream in order, with one query, one Redis round
trip and at most one cursor write a pass; after Redis was away it starts
again from what the webhook ingest has queued.

On the real clock: the store is a real PostgreSQL and Redis (see
tests/helpers.py).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import trio

from store.postgres import Store
from store.redis_link import RedisLink
from store.rows import EventRow
from tests.conftest import REDIS_URL
from tests.helpers import wait_until_async
from tests.test_workers import closed_port
from workers.errors import WorkerErrors
from workers.outbox import OutboxRelay, RelayBounds, run_outbox_relay

PARTITIONS = [0, 1, 2, 3]
INTENT = b'{"id":"pi_test","status":"succeeded"}'


def event(partition: int, seq: int, idx: int) -> EventRow:
    return EventRow(
        f"evt_{partition}_{seq}_{idx}", partition, seq, idx, "acct_relay", False, "payment_intent.succeeded",
        f"pi_{partition}_{seq}", f"pi_{partition}_{seq}", 1_700_000_000 + seq, INTENT,
    )


async def commit(store: Store, partition: int, positions: list[tuple[int, int]]) -> None:
    """Write a partition's events as one commit would (no journal rows needed)."""
    await store.journal.append(partition, [], events=[event(partition, seq, idx) for seq, idx in positions])


async def open_redis() -> RedisLink:
    """A link whose streams no other test or run has touched (a Redis that
    starts empty, as after a restart)."""
    return await RedisLink.open(REDIS_URL, prefix=f"test-outbox-relay:{os.getpid()}:{os.urandom(4).hex()}:")


async def streams(redis: RedisLink) -> dict[int, list[tuple[int, int]]]:
    """Each partition's stream, entry by entry, as (seq, idx) of the event,
    read through a consumer group of its own (from the streams' start)."""
    group = f"check-{os.urandom(4).hex()}"
    await redis.ensure_group(PARTITIONS, group)
    entries = await redis.read_group(group, "test", PARTITIONS, pending=False, count=10_000, block_ms=1)
    partition_of = {redis.stream_key(partition): partition for partition in PARTITIONS}
    found: dict[int, list[tuple[int, int]]] = {partition: [] for partition in PARTITIONS}
    for entry in entries:
        assert entry.event.partition == partition_of[entry.stream], "each event on its own partition's stream"
        assert entry.event.intent == b"", "the intent snapshot stays in PostgreSQL"
        found[entry.event.partition].append((entry.event.seq, entry.event.idx))
    return found


async def wait_for_async(check: Callable[[], Awaitable[Any]], expected: Any, what: str, timeout_s: float = 10.0) -> None:
    """Poll `check` until it returns `expected`; fail showing the last answer."""
    found = None
    with trio.move_on_after(timeout_s):
        while (found := await check()) != expected:
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out waiting for {what}: {found!r}, expected {expected!r}")


# ------------------------------------------------------------------ the store


async def test_the_outbox_of_several_partitions_is_read_in_one_query_after_each_cursor(store: Store) -> None:
    await commit(store, 0, [(1, 0), (1, 1), (2, 0), (3, 0)])
    await commit(store, 1, [(1, 0), (2, 0)])
    await commit(store, 2, [(4, 0)])
    rows = await store.events.outbox_after({0: (1, 0), 1: (0, -1), 2: (4, 0), 3: (0, -1)}, 2)
    # At most two of each partition, strictly after its cursor; no intent.
    assert [(row.partition, row.seq, row.idx) for row in rows] == [(0, 1, 1), (0, 2, 0), (1, 1, 0), (1, 2, 0)]
    assert {row.intent for row in rows} == {b""}
    assert rows[0] == msgspec.structs.replace(event(0, 1, 1), intent=b"")
    stored = await store.events.get("evt_0_1_1")
    assert stored is not None and stored.intent == INTENT


async def test_the_outbox_cursors_move_in_one_statement_and_never_back(store: Store) -> None:
    assert await store.events.outbox_cursors(PARTITIONS) == {0: (0, -1), 1: (0, -1), 2: (0, -1), 3: (0, -1)}
    await store.events.move_outbox_cursors({0: (5, 0), 1: (2, 1)})
    await store.events.move_outbox_cursors({0: (4, 9), 1: (3, 0), 2: (1, 0)})
    assert await store.events.outbox_cursors(PARTITIONS) == {0: (5, 0), 1: (3, 0), 2: (1, 0), 3: (0, -1)}
    await store.webhooks.add_deliveries([], {1: (2, 0)})
    assert await store.events.queued_cursors(PARTITIONS) == {0: (0, -1), 1: (2, 0), 2: (0, -1), 3: (0, -1)}


# ------------------------------------------------------------------ the relay


async def test_one_relay_publishes_every_partitions_events_in_order_and_moves_their_cursors_forward(store: Store) -> None:
    # Commits in no particular order across partitions; inside each, the
    # stream must follow (seq, idx) whatever order the rows were written in.
    await commit(store, 2, [(7, 1), (7, 0)])
    await commit(store, 0, [(3, 2), (1, 0), (2, 0), (1, 1), (3, 0), (3, 1)])
    await commit(store, 1, [(1, 0), (2, 0), (3, 0), (4, 0)])
    await commit(store, 3, [(1, 0), (2, 0)])
    # Partition 3's published cursor is ahead of its outbox (an earlier relay
    # got further before Redis lost its stream): it must not move back.
    await store.events.move_outbox_cursors({3: (50, 0)})
    redis = await open_redis()
    # Two events of a partition a pass: partition 0 takes three passes.
    bounds = RelayBounds(batch_max=2, idle_s=60, gather_s=0.01, cursor_every_s=0)
    seen: list[dict[int, tuple[int, int]]] = []

    async def watch_cursors() -> None:
        while True:
            seen.append(await store.events.outbox_cursors(PARTITIONS))
            await trio.sleep(0.01)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_cursors)
            relay: OutboxRelay = await nursery.start(run_outbox_relay, store, redis, PARTITIONS, bounds)
            await wait_until_async(lambda: relay.published_total == 14, 10, "the outbox to be published")
            expected = {0: (3, 2), 1: (4, 0), 2: (7, 1), 3: (50, 0)}
            await wait_for_async(lambda: store.events.outbox_cursors(PARTITIONS), expected, "the cursors")
            assert await streams(redis) == {
                0: [(1, 0), (1, 1), (2, 0), (3, 0), (3, 1), (3, 2)],
                1: [(1, 0), (2, 0), (3, 0), (4, 0)],
                2: [(7, 0), (7, 1)],
                3: [(1, 0), (2, 0)],
            }
            # Idle for a minute unless woken: the wake after a commit sends it.
            await commit(store, 1, [(5, 0)])
            relay.wake()
            await wait_until_async(lambda: relay.published_total == 15, 10, "the woken relay to publish")
            await wait_for_async(lambda: store.events.outbox_cursors(PARTITIONS), {**expected, 1: (5, 0)}, "partition 1's cursor")
            assert (await streams(redis))[1] == [(1, 0), (2, 0), (3, 0), (4, 0), (5, 0)]
            nursery.cancel_scope.cancel()
    finally:
        await redis.close()
    assert relay.errors.total == 0
    for partition in PARTITIONS:
        moves = [cursors[partition] for cursors in seen]
        assert moves == sorted(moves), f"partition {partition}'s cursor went back: {moves}"
    assert {cursors[3] for cursors in seen} == {(50, 0)}


async def test_after_redis_was_away_the_relay_starts_again_from_what_the_ingest_queued(store: Store) -> None:
    await commit(store, 0, [(1, 0), (2, 0), (3, 0), (4, 0)])
    await commit(store, 1, [(1, 0)])
    # The ingest had queued partition 0 up to (2, 0) when the node started.
    await store.webhooks.add_deliveries([], {0: (2, 0)})
    first = await open_redis()
    unreachable = await RedisLink.open(f"redis://127.0.0.1:{closed_port()}/0")
    restarted = await open_redis()
    errors = WorkerErrors("outbox_relay")
    bounds = RelayBounds(idle_s=60, retry_s=0.05, gather_s=0.01, cursor_every_s=0)
    try:
        async with trio.open_nursery() as nursery:
            relay: OutboxRelay = await nursery.start(functools.partial(run_outbox_relay, store, first, PARTITIONS, bounds, errors=errors))
            await wait_until_async(lambda: relay.published_total == 3, 10, "the first publish")
            assert await streams(first) == {0: [(3, 0), (4, 0)], 1: [(1, 0)], 2: [], 3: []}
            # The ingest queues (3, 0); then Redis goes away while an event
            # is committed, and comes back empty.
            await store.webhooks.add_deliveries([], {0: (3, 0)})
            relay.redis = unreachable
            await commit(store, 0, [(5, 0)])
            relay.wake()
            await wait_until_async(lambda: errors.counts["outbox_relay_waiting"] >= 2, 10, "the relay to wait for Redis")
            assert relay.published_total == 3
            relay.redis = restarted
            await wait_until_async(lambda: relay.published_total == 6, 10, "the publish after Redis came back")
            # From the ingest's (3, 0), not the relay's own (4, 0): what the
            # lost stream held but the ingest never queued goes out again.
            assert await streams(restarted) == {0: [(4, 0), (5, 0)], 1: [(1, 0)], 2: [], 3: []}
            assert await streams(first) == {0: [(3, 0), (4, 0)], 1: [(1, 0)], 2: [], 3: []}
            await wait_for_async(lambda: store.events.outbox_cursors(PARTITIONS), {0: (5, 0), 1: (1, 0), 2: (0, -1), 3: (0, -1)}, "the cursors")
            nursery.cancel_scope.cancel()
    finally:
        for redis in (first, unreachable, restarted):
            await redis.close()
    assert set(errors.counts) == {"outbox_relay_waiting"}
    assert {entry[2]["waiting_for"] for entry in errors.recent} == {"redis"}
