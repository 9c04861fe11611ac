"""A node's event workers: one outbox relay for all their partitions, the
stream trimmer, the webhook ingest and the webhook dispatcher; and what the API
asks of them (send an event again, reload endpoints after a change)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import trio

from shards.metrics import Metrics
from shards.vault import Vault
from store.postgres import Store
from store.redis_link import RedisLink
from store.rows import EventRow
from workers.errors import WorkerErrors
from workers.outbox import OutboxRelay, RelayBounds, TrimBounds, run_outbox_relay, run_stream_trimming
from workers.webhook_delivery import DispatchConfig, Dispatcher, run_webhook_delivery
from workers.webhook_endpoints import EndpointCache, new_deliveries, now_ms
from workers.webhook_ingest import IngestBounds, run_webhook_ingest


class EventWorkers:
    """Made before the node (which hands it to the API as `node.events`),
    run by `run_event_workers` once the node's actors are up."""

    def __init__(
        self,
        store: Store,
        redis: RedisLink,
        vault: Vault,
        render: Callable[[EventRow], bytes],
        config: DispatchConfig = DispatchConfig(),
        *,
        relay: RelayBounds = RelayBounds(),
        trim: TrimBounds = TrimBounds(),
        ingest: IngestBounds = IngestBounds(),
    ) -> None:
        self.store = store
        self.redis = redis
        self.relay_bounds = relay
        self.trim_bounds = trim
        self.ingest_bounds = ingest
        self.errors = {name: WorkerErrors(name) for name in ("outbox_relay", "stream_trimming", "webhook_ingest", "webhook_delivery")}
        self.endpoints = EndpointCache(store)
        self.dispatcher = Dispatcher(store, vault, self.endpoints, render, config, errors=self.errors["webhook_delivery"])
        # The running relay, while `run_event_workers` runs.
        self.relay: OutboxRelay | None = None
        # The node's metrics (shards.metrics); set by the composition root.
        self.metrics: Metrics | None = None

    def endpoints_changed(self) -> None:
        self.endpoints.invalidate()

    def wake(self, partition: int) -> None:
        """A commit wrote events for `partition`: wake the relay, if it runs
        here. The relay serves every partition the workers were given, so
        the pass this starts looks at all of them, `partition` among them."""
        if self.relay is not None:
            self.relay.wake()

    async def retry(self, event: EventRow) -> list[str]:
        """Send an event again to the endpoints that gave up on it, and to
        matching endpoints that never had it. Returns those endpoints.
        Raises StoreUnavailable when the database cannot be reached."""
        await self.endpoints.refresh(force=True)
        stamp = now_ms()
        await self.store.webhooks.add_deliveries(new_deliveries(event, self.endpoints.matching(event), stamp))
        retried = await self.store.webhooks.retry_dead(event.id, stamp)
        queued = {delivery.endpoint_id for delivery in await self.store.webhooks.deliveries_of_event(event.id) if delivery.status == "pending"}
        self.dispatcher.wake(queued)
        return sorted(queued | set(retried))


async def run_event_workers(events: EventWorkers, partitions: Iterable[int], *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Run one relay for `partitions` (an actor here wakes it after a commit
    that wrote events, through `events.wake`; otherwise it looks every
    `idle_s`), the trimmer, the ingest and the dispatcher until cancelled.
    Everything not yet published or delivered when cancelled is in
    PostgreSQL and goes out after the next start, here or on another node."""
    store, redis, errors = events.store, events.redis, events.errors
    partitions = sorted(partitions)
    try:
        async with trio.open_nursery() as nursery:
            events.relay = await nursery.start(
                functools.partial(
                    run_outbox_relay, store, redis, partitions, events.relay_bounds, errors=errors["outbox_relay"], metrics=events.metrics
                )
            )
            await _start_stream_workers(events, partitions, nursery)
            task_status.started()
    finally:
        events.relay = None


async def _start_stream_workers(events: EventWorkers, partitions: list[int], nursery: trio.Nursery) -> None:
    """The trimmer, the webhook ingest and the dispatcher, in `nursery`."""
    store, redis, errors = events.store, events.redis, events.errors
    await nursery.start(functools.partial(run_stream_trimming, redis, partitions, events.trim_bounds, errors=errors["stream_trimming"]))
    ingest = functools.partial(
        run_webhook_ingest, store, redis, partitions, events.endpoints, events.dispatcher.wake, events.ingest_bounds,
        errors=errors["webhook_ingest"],
    )
    await nursery.start(ingest)
    events.dispatcher.metrics = events.metrics
    await nursery.start(run_webhook_delivery, events.dispatcher)
