"""The audit archive's worker: export now and then, and prune the hot
tables past the retention."""

from __future__ import annotations

import math
from typing import Any

import msgspec
import structlog
import trio

from store.errors import StoreUnavailable
from store.postgres import Store
from workers.audit.exporting import export
from workers.audit.formats import ArchiveInconsistent, ArchiveUnavailable, ExportBusy
from workers.audit.pruning import prune
from workers.audit.storage import Archive
from workers.errors import WorkerErrors

log = structlog.get_logger("workers.audit")


class ArchiveBounds(msgspec.Struct, frozen=True):
    every_s: float = 300.0
    # Prune what is older than this many days after each export; None: never.
    retention_days: int | None = None


async def run_audit_archive(
    store: Store,
    archive: Archive,
    bounds: ArchiveBounds = ArchiveBounds(),
    *,
    errors: WorkerErrors | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Export every `every_s` seconds (and prune, with `retention_days`)
    until cancelled; the counter is passed to `task_status.started`. An
    unreachable database or archive is logged, counted and tried again next
    time; so is an inconsistent archive, logged as an error, since export
    stays stopped until a person looks. Raises ValueError for an `every_s`
    that is not a positive number, before it starts."""
    if not (math.isfinite(bounds.every_s) and bounds.every_s > 0):
        raise ValueError("every_s must be a positive number of seconds")
    errors = errors or WorkerErrors("audit_archive")
    task_status.started(errors)
    while True:
        try:
            report = await export(store, archive)
            if report.segments or report.adopted:
                log.info(
                    "audit_export_finished", segments=len(report.segments), adopted=report.adopted,
                    journal_rows=report.journal_rows, events=report.event_rows, head_sequence=report.head_sequence,
                )
            if bounds.retention_days is not None:
                await prune(store, bounds.retention_days)
        except ExportBusy:
            log.debug("audit_export_skipped", reason="another exporter holds the lease")
        except (StoreUnavailable, ArchiveUnavailable) as error:
            errors.record("audit_export_postponed", error=str(error))
        except ArchiveInconsistent as error:
            errors.record("audit_archive_inconsistent", level="error", error=str(error), archive=archive.describe())
        await trio.sleep(bounds.every_s)
