"""The webhook ingest: from the partitions' streams to delivery rows.

It reads the streams in the consumer group `webhooks`, turns each event
into one delivery row per matching endpoint (durable in PostgreSQL), and
only then acknowledges the stream entries. A crash in between re-reads the
entries, and the rows are keyed by (endpoint, event), so nothing is queued
twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import trio

from store.errors import RedisUnavailable, StoreUnavailable
from store.postgres import Store
from store.redis_link import RedisLink
from workers.errors import WorkerErrors
from workers.webhook_endpoints import EndpointCache, new_deliveries, now_ms

GROUP = "webhooks"


class IngestBounds(msgspec.Struct, frozen=True):
    # Stream entries read per call at most.
    count: int = 1000
    # How long one read waits for entries.
    block_ms: int = 200
    # After a database or Redis error, wait this long before reading again.
    retry_s: float = 0.5
    # After queueing fewer than `count`, wait this long so that the next
    # read takes many relay passes' entries at once (a pass is three
    # bridged round trips).
    gather_s: float = 0.05


class WebhookIngest:
    def __init__(
        self,
        store: Store,
        redis: RedisLink,
        partitions: list[int],
        endpoints: EndpointCache,
        on_queued: Callable[[set[str]], None],
        bounds: IngestBounds,
        errors: WorkerErrors,
        consumer: str,
    ) -> None:
        self.store = store
        self.redis = redis
        self.partitions = partitions
        self.endpoints = endpoints
        self.on_queued = on_queued
        self.bounds = bounds
        self.errors = errors
        self.consumer = consumer
        self.ingested_total = 0

    async def serve(self) -> None:
        bounds = self.bounds
        ready = False
        pending = True  # first what this consumer read before a crash but never acknowledged
        while True:
            try:
                if not ready:
                    await self.redis.ensure_group(self.partitions, GROUP)
                    ready = True
                entries = await self.redis.read_group(
                    GROUP, self.consumer, self.partitions, pending=pending, count=bounds.count, block_ms=bounds.block_ms
                )
                if pending and not entries:
                    pending = False
                    continue
                if entries:
                    await self._queue(entries)
                if len(entries) < bounds.count:
                    await trio.sleep(bounds.gather_s)
            except (StoreUnavailable, RedisUnavailable) as error:
                self.errors.record("webhook_ingest_waiting", waiting_for=error.service, error=str(error))
                # Redis may have restarted empty: make the groups again.
                ready = False
                pending = True
                await trio.sleep(bounds.retry_s)

    async def _queue(self, entries: list[Any]) -> None:
        await self.endpoints.refresh()
        stamp = now_ms()
        rows = [row for entry in entries for row in new_deliveries(entry.event, self.endpoints.matching(entry.event), stamp)]
        queued: dict[int, tuple[int, int]] = {}
        for entry in entries:
            event = entry.event
            queued[event.partition] = max(queued.get(event.partition, (0, -1)), (event.seq, event.idx))
        await self.store.webhooks.add_deliveries(rows, queued)
        await self.redis.ack(GROUP, entries)
        self.ingested_total += len(entries)
        if rows:
            self.on_queued({row.endpoint_id for row in rows})


async def run_webhook_ingest(
    store: Store,
    redis: RedisLink,
    partitions: list[int],
    endpoints: EndpointCache,
    on_queued: Callable[[set[str]], None],
    bounds: IngestBounds = IngestBounds(),
    *,
    errors: WorkerErrors | None = None,
    consumer: str = "node",
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Queue deliveries for the partitions' events until cancelled, calling
    `on_queued` with the endpoints that got some; the ingest is passed to
    `task_status.started`. A database or Redis error is logged and counted,
    and reading starts again with what was read but not acknowledged."""
    ingest = WebhookIngest(store, redis, partitions, endpoints, on_queued, bounds, errors or WorkerErrors("webhook_ingest"), consumer)
    task_status.started(ingest)
    await ingest.serve()
