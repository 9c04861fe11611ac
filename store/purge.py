"""Purge: what the hot tables no longer need, deleted in bounded batches so
that no single statement holds locks for long."""

from __future__ import annotations

import asyncpg

from store.database import Database, rows_affected


async def _idempotency_records(connection: asyncpg.Connection, now_s: int, rows_max: int) -> int:
    status = await connection.execute(
        "DELETE FROM idempotency_keys WHERE ctid IN (SELECT ctid FROM idempotency_keys"
        " WHERE expires_at_s <= $1 LIMIT $2)",
        now_s,
        rows_max,
    )
    return rows_affected(status)


async def _archived_rows(
    connection: asyncpg.Connection, events_before_s: int, deliveries_before_s: int, attempts_before_ms: int, rows_max: int
) -> tuple[int, int, int]:
    events = await connection.execute(
        "DELETE FROM events WHERE ctid IN (SELECT e.ctid FROM events e"
        " JOIN audit_positions a ON a.partition = e.partition AND e.seq <= a.seq"
        " JOIN stream_queued q ON q.partition = e.partition AND (e.seq, e.idx) <= (q.seq, q.idx)"
        " WHERE e.created_s < $1"
        " AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id AND d.status = 'pending')"
        " LIMIT $2)",
        events_before_s,
        rows_max,
    )
    attempts = await connection.execute(
        "DELETE FROM webhook_attempts WHERE ctid IN (SELECT t.ctid FROM webhook_attempts t WHERE t.at_ms < $1"
        " AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.endpoint_id = t.endpoint_id"
        " AND d.event_id = t.event_id AND d.status = 'pending') LIMIT $2)",
        attempts_before_ms,
        rows_max,
    )
    deliveries = await connection.execute(
        "DELETE FROM webhook_deliveries WHERE ctid IN (SELECT ctid FROM webhook_deliveries"
        " WHERE status IN ('delivered', 'dead') AND updated_s < $1 LIMIT $2)",
        deliveries_before_s,
        rows_max,
    )
    return rows_affected(events), rows_affected(deliveries), rows_affected(attempts)


class Purge:
    """Deletes in bounded batches. Each method is one bridged call and
    raises StoreUnavailable when the database is away."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def idempotency_records(self, now_s: int, rows_max: int = 10_000) -> int:
        """Forget at most `rows_max` idempotency records expired by `now_s`;
        returns how many were."""
        return await self._database.call(_idempotency_records, now_s, rows_max)

    async def archived_rows(
        self, events_before_s: int, deliveries_before_s: int, attempts_before_ms: int, rows_max: int
    ) -> tuple[int, int, int]:
        """Delete one batch (at most `rows_max` rows a table) of what the hot
        tables no longer need: events created before `events_before_s` that
        are archived, queued for webhooks and not awaiting a delivery;
        finished (delivered or dead) deliveries last touched before
        `deliveries_before_s`; attempts before `attempts_before_ms` whose
        delivery is finished. Returns the rows deleted from events,
        webhook_deliveries and webhook_attempts, in one transaction."""
        return await self._database.call(
            _archived_rows, events_before_s, deliveries_before_s, attempts_before_ms, rows_max, transaction=True
        )
