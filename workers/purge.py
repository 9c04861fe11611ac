"""The idempotency purge: records past their lifetime (24 h, as Stripe's)
are deleted now and then; a retry after that runs as a new request."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import structlog
import trio

from store.errors import StoreUnavailable
from store.postgres import Store
from workers.errors import WorkerErrors

log = structlog.get_logger("workers.purge")


class PurgeBounds(msgspec.Struct, frozen=True):
    every_s: float = 600.0


async def run_idempotency_purge(
    store: Store,
    bounds: PurgeBounds = PurgeBounds(),
    *,
    errors: WorkerErrors | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Purge expired idempotency records now, then every `every_s`, until
    cancelled; the counter is passed to `task_status.started`. A database
    error is logged and counted, and tried again next time."""
    errors = errors or WorkerErrors("idempotency_purge")
    task_status.started(errors)
    while True:
        try:
            purged = await store.purge.idempotency_records(int(time.time()))
        except StoreUnavailable as error:
            errors.record("idempotency_purge_failed", error=str(error))
        else:
            if purged:
                log.info("idempotency_keys_purged", count=purged)
        await trio.sleep(bounds.every_s)
