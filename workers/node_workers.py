"""The workers every node runs beside its actors, stopped with the node:
reconciliation, the settlement check, the idempotency purge, the card
re-wrap job, and, when the node runs with Redis, its event workers
(workers/events.py).

Reconciliation and the settlement check look at the partitions this node
serves, so in a cluster each partition is covered by its owner. The event
workers, the purge and the re-wrap job cover every partition: in a cluster
they run once, on whichever node holds their worker lease (`run_leased`),
and move to another node when that one stops or goes silent.

Before any of them starts, the node proves its master key opens the
database's card key versions (shards/vault.py): a node given the wrong key
stops here, before it serves a request.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import structlog
import trio

from shards.cluster import Membership
from shards.node import Node
from store.errors import StoreUnavailable
from workers.card_rewrap import RewrapBounds, run_card_rewrap
from workers.errors import WorkerErrors
from workers.events import EventWorkers, run_event_workers
from workers.purge import PurgeBounds, run_idempotency_purge
from workers.reconciliation import ReconcileBounds, run_reconciliation
from workers.settlement import SettlementBounds, run_settlement_check

log = structlog.get_logger("workers.node_workers")

Worker = Callable[..., Awaitable[None]]


class NodeWorkerBounds(msgspec.Struct, frozen=True):
    reconciliation: ReconcileBounds = ReconcileBounds()
    settlement: SettlementBounds = SettlementBounds()
    purge: PurgeBounds = PurgeBounds()
    card_rewrap: RewrapBounds = RewrapBounds()


async def run_node_workers(
    node: Node,
    events: EventWorkers | None = None,
    bounds: NodeWorkerBounds = NodeWorkerBounds(),
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the node's workers until the node is asked to stop
    (`Node.stop_accepting`) or this is cancelled; their error counters, by
    worker, are passed to `task_status.started`. `events` is the object the
    node was given as `events`. Workers log and count their errors and go
    on; this raises only for a bug, and at start VaultKeyError when the
    master key does not open the card key versions (StoreUnavailable when
    they cannot be read)."""
    await node.payment_methods.keys.open()
    errors = {name: WorkerErrors(name) for name in ("reconciliation", "settlement_check", "idempotency_purge", "card_rewrap")}
    purge = functools.partial(run_idempotency_purge, node.store, bounds.purge, errors=errors["idempotency_purge"])
    rewrap = functools.partial(run_card_rewrap, node.payment_methods.keys, bounds.card_rewrap, errors=errors["card_rewrap"])
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(run_reconciliation, node, bounds.reconciliation, errors=errors["reconciliation"]))
        await nursery.start(functools.partial(run_settlement_check, node, bounds.settlement, errors=errors["settlement_check"]))
        await nursery.start(_once(node, "idempotency_purge", purge))
        await nursery.start(_once(node, "card_rewrap", rewrap))
        if events is not None:
            every_partition = range(node.config.partitions) if node.membership is not None else sorted(node.shards)
            await nursery.start(_once(node, "events", functools.partial(run_event_workers, events, every_partition)))
            errors.update(events.errors)
        task_status.started(errors)
        await node.wait_stop_requested()
        nursery.cancel_scope.cancel()


def _once(node: Node, name: str, worker: Worker) -> Worker:
    """The worker itself on a node with fixed partitions; in a cluster, the
    worker run under its lease."""
    if node.membership is None:
        return worker
    return functools.partial(run_leased, node.membership, name, worker)


async def run_leased(membership: Membership, name: str, worker: Worker, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Run `worker` only while this node holds the worker lease `name`,
    renewing it every third of the lease TTL; stop it when the lease cannot
    be renewed in time, and take it again when it is free. Until cancelled."""
    leases, node_id, ttl_s = membership.leases, membership.node_id, membership.config.lease_ttl_s
    task_status.started()
    try:
        while True:
            if await _take(membership, name):
                log.info("worker_lease_taken", worker=name)
                async with trio.open_nursery() as nursery:
                    await nursery.start(worker)
                    await _keep(membership, name)
                    nursery.cancel_scope.cancel()
                log.warning("worker_lease_lost", worker=name)
            await trio.sleep(membership.config.heartbeat_s)
    finally:
        with trio.CancelScope(shield=True):
            try:
                await leases.release_worker(name, node_id)
            except StoreUnavailable as error:
                log.warning("worker_lease_not_released", worker=name, error=str(error), ttl_s=ttl_s)


async def _take(membership: Membership, name: str) -> bool:
    try:
        return await membership.leases.take_worker(name, membership.node_id, membership.config.lease_ttl_s)
    except StoreUnavailable:
        return False


async def _keep(membership: Membership, name: str) -> None:
    """Renew the worker lease until it is lost, or nearly expired unrenewed."""
    renewed_at = trio.current_time()
    while True:
        await trio.sleep(membership.config.heartbeat_s)
        started = trio.current_time()
        try:
            if not await membership.leases.take_worker(name, membership.node_id, membership.config.lease_ttl_s):
                return
            renewed_at = started
        except StoreUnavailable:
            if trio.current_time() - renewed_at > membership.config.lease_ttl_s * 0.8:
                return
