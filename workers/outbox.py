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

One relay serves all the partitions of a node's event workers, because a
bridged round trip costs far more CPU than the rows it carries: a pass is
one query for every partition's next events, one Redis pipeline for all of
them, and at most once a second one statement moving every cursor that
moved. Each partition's events still go to its own stream in order.

The relay is woken by an actor after each commit that wrote events, and
otherwise looks again every `idle_s`, so events committed by an earlier
process (before a crash) go out as soon as the node is back.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import msgspec
import trio

from shards.metrics import Metrics
from store.errors import RedisUnavailable, StoreUnavailable
from store.postgres import Store
from store.redis_link import RedisLink
from workers.errors import WorkerErrors


class RelayBounds(msgspec.Struct, frozen=True):
    # Events of one partition published per pass at most (a pass takes up
    # to this many from each partition, so no partition waits behind
    # another's backlog).
    batch_max: int = 1000
    # With nothing to publish, look again this often even if not woken.
    idle_s: float = 1.0
    # After a database or Redis error, wait this long before starting again.
    retry_s: float = 0.5
    # After publishing, wait this long so that the next query takes the
    # events of many commits at once: a pass is two bridged round trips
    # (PostgreSQL, Redis), each 0.2-0.5 ms of a node's CPU; events are
    # never on a payment's path, so 0.1 s more before a webhook is the
    # cheaper side.
    gather_s: float = 0.1
    # The published cursors are for operators (restarts use the ingest's),
    # so they are written at most this often.
    cursor_every_s: float = 1.0


class TrimBounds(msgspec.Struct, frozen=True):
    every_s: float = 10.0


class OutboxRelay:
    """The relay of a node's partitions; their actors call `wake` after a
    commit that wrote events."""

    def __init__(
        self,
        store: Store,
        redis: RedisLink,
        partitions: list[int],
        bounds: RelayBounds,
        errors: WorkerErrors,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.redis = redis
        self.partitions = partitions
        self.bounds = bounds
        self.errors = errors
        # Published cursors not yet written to PostgreSQL, by partition.
        self._unwritten: dict[int, tuple[int, int]] = {}
        self._cursors_written_at = float("-inf")
        self.published_total = 0
        self._wake = trio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def serve(self) -> None:
        cursors: dict[int, tuple[int, int]] | None = None
        while True:
            try:
                if cursors is None:
                    cursors = await self.store.events.queued_cursors(self.partitions)
                await self._publish_after(cursors)
                await self._write_cursors()
            except (StoreUnavailable, RedisUnavailable) as error:
                self.errors.record("outbox_relay_waiting", waiting_for=error.service, error=str(error))
                cursors = None
                await trio.sleep(self.bounds.retry_s)

    async def _publish_after(self, cursors: dict[int, tuple[int, int]]) -> None:
        """Publish what follows each partition's cursor and move `cursors`
        past it, or wait to be woken when nothing follows any."""
        bounds = self.bounds
        self._wake = trio.Event()
        rows = await self.store.events.outbox_after(cursors, bounds.batch_max)
        if not rows:
            with trio.move_on_after(bounds.idle_s):
                await self._wake.wait()
            return
        await self.redis.publish_events(rows)
        if self.metrics is not None:
            self.metrics.outbox_published.inc(len(rows))
            self.metrics.outbox_lag.set(max(0.0, time.time() - min(row.created_s for row in rows)))
        # Rows come in (partition, seq, idx) order: each partition's last is its new cursor.
        moved = {row.partition: (row.seq, row.idx) for row in rows}
        cursors.update(moved)
        for partition, cursor in moved.items():
            # After an error the relay starts again behind what it published.
            self._unwritten[partition] = max(self._unwritten.get(partition, cursor), cursor)
        self.published_total += len(rows)
        if max(Counter(row.partition for row in rows).values()) < bounds.batch_max:
            await trio.sleep(bounds.gather_s)

    async def _write_cursors(self) -> None:
        """Write the published cursors that moved, when `cursor_every_s`
        has passed since the last write."""
        if not self._unwritten or trio.current_time() - self._cursors_written_at < self.bounds.cursor_every_s:
            return
        await self.store.events.move_outbox_cursors(self._unwritten)
        self._unwritten = {}
        self._cursors_written_at = trio.current_time()


async def run_outbox_relay(
    store: Store,
    redis: RedisLink,
    partitions: list[int],
    bounds: RelayBounds = RelayBounds(),
    *,
    errors: WorkerErrors | None = None,
    metrics: Metrics | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Relay the outbox of `partitions` until cancelled; the relay (to wake)
    is passed to `task_status.started`. A database or Redis error is logged
    and counted, and the relay starts again from the ingest's cursors."""
    relay = OutboxRelay(store, redis, partitions, bounds, errors or WorkerErrors("outbox_relay"), metrics)
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
