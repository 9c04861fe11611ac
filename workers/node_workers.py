"""The workers every node runs beside its actors, stopped with the node:
reconciliation, the settlement check, the idempotency purge, and, when the
node runs with Redis, its event workers (workers/events.py)."""

from __future__ import annotations

import functools
from typing import Any

import msgspec
import trio

from shards.node import Node
from workers.errors import WorkerErrors
from workers.events import EventWorkers, run_event_workers
from workers.purge import PurgeBounds, run_idempotency_purge
from workers.reconciliation import ReconcileBounds, run_reconciliation
from workers.settlement import SettlementBounds, run_settlement_check


class NodeWorkerBounds(msgspec.Struct, frozen=True):
    reconciliation: ReconcileBounds = ReconcileBounds()
    settlement: SettlementBounds = SettlementBounds()
    purge: PurgeBounds = PurgeBounds()


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
    on; this raises only for a bug."""
    errors = {name: WorkerErrors(name) for name in ("reconciliation", "settlement_check", "idempotency_purge")}
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(run_reconciliation, node, bounds.reconciliation, errors=errors["reconciliation"]))
        await nursery.start(functools.partial(run_settlement_check, node, bounds.settlement, errors=errors["settlement_check"]))
        await nursery.start(functools.partial(run_idempotency_purge, node.store, bounds.purge, errors=errors["idempotency_purge"]))
        if events is not None:
            await nursery.start(run_event_workers, events, node.shards)
            errors.update(events.errors)
        task_status.started(errors)
        await node.wait_stop_requested()
        nursery.cancel_scope.cancel()

