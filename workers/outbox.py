"""The outbox relay: from the events table to the partitions' streams.

Actors write events in the same transaction as the journal rows that raise
them; nothing else is needed for them to be safe. The relay then copies each
partition's events, in order, to that partition's Redis stream and only
afterwards moves the partition's cursor in PostgreSQL. A crash between the
two publishes some events twice, never zero times: consumers deduplicate by
event id (webhook deliveries are keyed by endpoint and event).

Redis keeps nothing on disk here, so the stream itself may lose entries (a
restart of Redis, or of this node between publish and ingest). The relay
therefore starts, and starts again after any Redis error, from what the
webhook ingest has durably queued (`stream_queued`), not from its own
cursor: entries that might be lost are published again, and the ingest
ignores the ones it already has. The published cursor is kept for
operators: how far the relay got (written at most once a second).

The relay is woken by its actor after each commit that wrote events, and
otherwise looks again every `idle_s`, so events committed by an earlier
process (before a crash) go out as soon as the node is back.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import trio

from shards.metrics import Metrics
from store.errors import RedisUnavailable, StoreUnavailable
from store.postgres import Store
from store.redis_link import RedisLink
from workers.errors import WorkerErrors


class RelayBounds(msgspec.Struct, frozen=True):
    # Events published per pass at most.
    batch_max: int = 1000
    # With nothing to publish, look again this often even if not woken.
    idle_s: float = 1.0
    # After a database or Redis error, wait this long before starting again.
    retry_s: float = 0.5
    # After publishing, wait this long so that the next query takes the
    # events of many commits at once: a pass is two bridged round trips
    # (PostgreSQL, Redis) per partition, which at 0.02 s cost about a tenth
    # of a node's CPU at 150 payments/s; events are never on a payment's
    # path, so 0.1 s more before a webhook is the cheaper side.
    gather_s: float = 0.1
    # The published cursor is for operators (restarts use the ingest's),
    # so it is written at most this often.
    cursor_every_s: float = 1.0


class TrimBounds(msgspec.Struct, frozen=True):
    every_s: float = 10.0


class OutboxRelay:
    """One partition's relay; its actor calls `wake` after a commit that
    wrote events."""

    def __init__(
        self, store: Store, redis: RedisLink, partition: int, bounds: RelayBounds, errors: WorkerErrors, metrics: Metrics | None = None
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.redis = redis
        self.partition = partition
        self.bounds = bounds
        self.errors = errors
        self._cursor_written_at = float("-inf")
        self.published_total = 0
        self._wake = trio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def serve(self) -> None:
        cursor: tuple[int, int] | None = None
        while True:
            try:
                if cursor is None:
                    cursor = await self.store.events.queued_cursor(self.partition)
                cursor = await self._publish_after(cursor)
            except (StoreUnavailable, RedisUnavailable) as error:
                self.errors.record("outbox_relay_waiting", partition=self.partition, waiting_for=error.service, error=str(error))
                cursor = None
                await trio.sleep(self.bounds.retry_s)

    async def _publish_after(self, cursor: tuple[int, int]) -> tuple[int, int]:
        """Publish what follows `cursor`, or wait to be woken when nothing does."""
        bounds = self.bounds
        self._wake = trio.Event()
        rows = await self.store.events.outbox_after(self.partition, cursor, bounds.batch_max)
        if not rows:
            with trio.move_on_after(bounds.idle_s):
                await self._wake.wait()
            return cursor
        await self.redis.publish_events(self.partition, rows)
        if self.metrics is not None:
            self.metrics.outbox_published.inc(len(rows))
            self.metrics.outbox_lag.set(max(0.0, time.time() - rows[0].created_s))
        cursor = (rows[-1].seq, rows[-1].idx)
        if trio.current_time() - self._cursor_written_at >= bounds.cursor_every_s:
            await self.store.events.move_outbox_cursor(self.partition, cursor)
            self._cursor_written_at = trio.current_time()
        self.published_total += len(rows)
        if len(rows) < bounds.batch_max:
            await trio.sleep(bounds.gather_s)
        return cursor


async def run_outbox_relay(
    store: Store,
    redis: RedisLink,
    partition: int,
    bounds: RelayBounds = RelayBounds(),
    *,
    errors: WorkerErrors | None = None,
    metrics: Metrics | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Relay one partition's outbox until cancelled; the relay (to wake) is
    passed to `task_status.started`. A database or Redis error is logged and
    counted, and the relay starts again from the ingest's cursor."""
    relay = OutboxRelay(store, redis, partition, bounds, errors or WorkerErrors("outbox_relay"), metrics)
    task_status.started(relay)
    await relay.serve()


async def run_stream_trimming(
    redis: RedisLink,
    partitions: list[int],
    bounds: TrimBounds = TrimBounds(),
    *,
    errors: WorkerErrors | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep each stream to what some consumer group has not yet acknowledged,
    every `every_s`, until cancelled. A Redis error ends that pass (logged
    and counted)."""
    errors = errors or WorkerErrors("stream_trimming")
    task_status.started()
    while True:
        await trio.sleep(bounds.every_s)
        for partition in partitions:
            try:
                await redis.trim_consumed(partition)
            except RedisUnavailable as error:
                errors.record("stream_trim_skipped", partition=partition, waiting_for=error.service, error=str(error))
                break
