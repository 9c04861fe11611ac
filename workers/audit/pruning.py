"""Prune: what the hot tables no longer need, deleted in bounded batches;
never the journal (see workers/audit/__init__.py)."""

from __future__ import annotations

import time

import msgspec
import structlog
import trio

from store.postgres import Store
from workers.audit.formats import DAY_S, EVENTS_SERVED_DAYS, PRUNE_BATCH_ROWS, PRUNE_BATCHES_MAX, RETENTION_DAYS_MAX

log = structlog.get_logger("workers.audit")



class PruneReport(msgspec.Struct):
    events: int = 0
    webhook_deliveries: int = 0
    webhook_attempts: int = 0
    batches: int = 0
    complete: bool = False

    def summary(self) -> str:
        return (
            f"deleted {self.events} events, {self.webhook_deliveries} webhook deliveries, {self.webhook_attempts}"
            f" webhook attempts in {self.batches} batch(es)" + ("" if self.complete else "; more remain (run again)")
        )


async def prune(
    store: Store,
    retention_days: int,
    *,
    batch_rows: int = PRUNE_BATCH_ROWS,
    batches_max: int = PRUNE_BATCHES_MAX,
    now_s: int | None = None,
) -> PruneReport:
    """Delete from the hot tables what is older than the retention and no
    longer needed (see the module docstring), `batch_rows` rows a table per
    transaction, at most `batches_max` transactions. Never the journal."""
    if not 1 <= retention_days <= RETENTION_DAYS_MAX:
        raise ValueError(f"retention_days must be from 1 to {RETENTION_DAYS_MAX}")
    now_s = int(time.time()) if now_s is None else now_s
    events_before_s = now_s - max(retention_days, EVENTS_SERVED_DAYS) * DAY_S
    before_s = now_s - retention_days * DAY_S
    report = PruneReport()
    while report.batches < batches_max:
        events, deliveries, attempts = await store.purge.archived_rows(events_before_s, before_s, before_s * 1000, batch_rows)
        report.batches += 1
        report.events += events
        report.webhook_deliveries += deliveries
        report.webhook_attempts += attempts
        if max(events, deliveries, attempts) < batch_rows:
            report.complete = True
            break
        # Let the node's other tasks run between batches.
        await trio.lowlevel.checkpoint()
    if report.events or report.webhook_deliveries or report.webhook_attempts:
        log.info(
            "audit_hot_tables_pruned", events=report.events, webhook_deliveries=report.webhook_deliveries,
            webhook_attempts=report.webhook_attempts, complete=report.complete,
        )
    return report

