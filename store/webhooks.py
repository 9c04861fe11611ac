"""Webhooks: merchants' endpoints, one delivery row per (endpoint, event),
and every attempt at one, kept for the merchant and the operator."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec

from store.database import Database
from store.rows import DeliveryAttemptRow, DeliveryRow, WebhookEndpointRow

WEBHOOK_ENDPOINT_COLUMNS = tuple(WebhookEndpointRow.__struct_fields__)
WEBHOOK_ENDPOINT_SELECT = "SELECT " + ", ".join(WEBHOOK_ENDPOINT_COLUMNS) + " FROM webhook_endpoints"
DELIVERY_COLUMNS = tuple(DeliveryRow.__struct_fields__)
DELIVERY_SELECT = "SELECT " + ", ".join(DELIVERY_COLUMNS) + " FROM webhook_deliveries"


def _endpoint_values(row: WebhookEndpointRow) -> tuple[Any, ...]:
    values = list(msgspec.structs.astuple(row))
    values[4] = list(row.enabled_events)
    values[6] = msgspec.json.encode(row.metadata).decode()
    return tuple(values)


def _endpoint_row(record: Any) -> WebhookEndpointRow:
    values = dict(record)
    values["enabled_events"] = tuple(values["enabled_events"])
    values["metadata"] = msgspec.json.decode(values["metadata"])
    return WebhookEndpointRow(**values)


# ---------------------------------------------------------------- endpoints


async def _insert_endpoint(connection: asyncpg.Connection, row: WebhookEndpointRow) -> bool:
    status = await connection.execute(
        "INSERT INTO webhook_endpoints (" + ", ".join(WEBHOOK_ENDPOINT_COLUMNS) + ")"
        " VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
        *_endpoint_values(row),
    )
    return status.endswith(" 1")


async def _endpoints(connection: asyncpg.Connection, where: str, args: list[Any]) -> list[WebhookEndpointRow]:
    return [_endpoint_row(row) for row in await connection.fetch(WEBHOOK_ENDPOINT_SELECT + where, *args)]


async def _update_endpoint(connection: asyncpg.Connection, row: WebhookEndpointRow) -> None:
    await connection.execute(
        "UPDATE webhook_endpoints SET url = $4, enabled_events = $5, description = $6,"
        " metadata = $7::jsonb, status = $8 WHERE id = $1 AND merchant_id = $2 AND livemode = $3",
        row.id,
        row.merchant_id,
        row.livemode,
        row.url,
        list(row.enabled_events),
        row.description,
        msgspec.json.encode(row.metadata).decode(),
        row.status,
    )


async def _delete_endpoint(connection: asyncpg.Connection, endpoint_id: str) -> None:
    await connection.execute("UPDATE webhook_endpoints SET deleted = true WHERE id = $1", endpoint_id)
    await connection.execute(
        "UPDATE webhook_deliveries SET status = 'dead' WHERE endpoint_id = $1 AND status = 'pending'",
        endpoint_id,
    )


# --------------------------------------------------------------- deliveries


async def _add_deliveries(
    connection: asyncpg.Connection, rows: Sequence[DeliveryRow], queued: dict[int, tuple[int, int]] | None
) -> None:
    if rows:
        await connection.executemany(
            "INSERT INTO webhook_deliveries (" + ", ".join(DELIVERY_COLUMNS) + ")"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
            [msgspec.structs.astuple(row) for row in rows],
        )
    if queued:
        await connection.executemany(
            "INSERT INTO stream_queued (partition, seq, idx) VALUES ($1, $2, $3)"
            " ON CONFLICT (partition) DO UPDATE SET seq = EXCLUDED.seq, idx = EXCLUDED.idx"
            " WHERE (stream_queued.seq, stream_queued.idx) < (EXCLUDED.seq, EXCLUDED.idx)",
            [(partition, *position) for partition, position in queued.items()],
        )


async def _deliveries(connection: asyncpg.Connection, where: str, args: list[Any]) -> list[DeliveryRow]:
    return [DeliveryRow(*row) for row in await connection.fetch(DELIVERY_SELECT + where, *args)]


async def _endpoints_with_pending(connection: asyncpg.Connection, rows_max: int) -> list[str]:
    rows = await connection.fetch("SELECT DISTINCT endpoint_id FROM webhook_deliveries WHERE status = 'pending' LIMIT $1", rows_max)
    return [row["endpoint_id"] for row in rows]


async def _count_waiting(connection: asyncpg.Connection, rows_max: int) -> dict[str, int]:
    # Each over its partial index, and bounded.
    counts = {}
    for status in ("pending", "dead"):
        counts[status] = await connection.fetchval(
            f"SELECT count(*) FROM (SELECT 1 FROM webhook_deliveries WHERE status = '{status}' LIMIT $1) AS waiting", rows_max
        )
    return counts


async def _record_attempt(connection: asyncpg.Connection, delivery: DeliveryRow, attempt: DeliveryAttemptRow) -> None:
    await connection.execute(
        "INSERT INTO webhook_attempts (endpoint_id, event_id, attempt, at_ms, status_code, latency_ms, error)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        *msgspec.structs.astuple(attempt),
    )
    await connection.execute(
        "UPDATE webhook_deliveries SET status = $3, attempts = $4, next_attempt_ms = $5, updated_s = $6"
        " WHERE endpoint_id = $1 AND event_id = $2",
        delivery.endpoint_id,
        delivery.event_id,
        delivery.status,
        delivery.attempts,
        delivery.next_attempt_ms,
        delivery.updated_s,
    )


async def _retry_dead(connection: asyncpg.Connection, event_id: str, now_ms: int) -> list[str]:
    rows = await connection.fetch(
        "UPDATE webhook_deliveries d SET status = 'pending', attempts = 0, next_attempt_ms = $2::bigint,"
        " updated_s = $2::bigint / 1000 FROM webhook_endpoints e"
        " WHERE d.event_id = $1 AND d.status = 'dead' AND e.id = d.endpoint_id AND NOT e.deleted"
        " RETURNING d.endpoint_id",
        event_id,
        now_ms,
    )
    return [row["endpoint_id"] for row in rows]


async def _attempts_of_event(connection: asyncpg.Connection, event_id: str, rows_max: int) -> list[DeliveryAttemptRow]:
    rows = await connection.fetch(
        "SELECT endpoint_id, event_id, attempt, at_ms, status_code, latency_ms, error FROM webhook_attempts"
        " WHERE event_id = $1 ORDER BY endpoint_id, attempt LIMIT $2",
        event_id,
        rows_max,
    )
    return [DeliveryAttemptRow(*row) for row in rows]


class Webhooks:
    """Endpoints, deliveries and attempts. Each method is one bridged call
    and raises StoreUnavailable when the database is away."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def insert_endpoint(self, row: WebhookEndpointRow) -> bool:
        """False when the id is taken (by a deleted endpoint, say)."""
        return await self._database.call(_insert_endpoint, row)

    async def get_endpoint(self, endpoint_id: str) -> WebhookEndpointRow | None:
        """An endpoint that is not deleted, by id, or None."""
        found = await self._database.call(_endpoints, " WHERE id = $1 AND NOT deleted", [endpoint_id])
        return found[0] if found else None

    async def list_endpoints(
        self, merchant_id: str | None, livemode: bool | None = None, rows_max: int = 10_000
    ) -> list[WebhookEndpointRow]:
        """Endpoints of one merchant (newest first), or every live endpoint
        of every merchant when `merchant_id` is None (for the dispatcher)."""
        if merchant_id is None:
            where, args = " WHERE NOT deleted ORDER BY created_s DESC, id DESC LIMIT $1", [rows_max]
        else:
            where = " WHERE NOT deleted AND merchant_id = $1 AND livemode = $2 ORDER BY created_s DESC, id DESC LIMIT $3"
            args = [merchant_id, livemode, rows_max]
        return await self._database.call(_endpoints, where, args)

    async def update_endpoint(self, row: WebhookEndpointRow) -> None:
        """Change an endpoint's url, events, description, metadata and status."""
        await self._database.call(_update_endpoint, row)

    async def delete_endpoint(self, endpoint_id: str) -> None:
        """Mark an endpoint deleted and give up on what it still had pending."""
        await self._database.call(_delete_endpoint, endpoint_id, transaction=True)

    async def add_deliveries(self, rows: Sequence[DeliveryRow], queued: dict[int, tuple[int, int]] | None = None) -> None:
        """Queue deliveries (one already queued for (endpoint, event) stays as
        it is) and, in the same transaction, record how far each partition's
        stream is now queued."""
        if not rows and not queued:
            return
        await self._database.call(_add_deliveries, rows, queued, transaction=True)

    async def pending_deliveries(self, endpoint_id: str, rows_max: int) -> list[DeliveryRow]:
        """An endpoint's pending deliveries in stream order (partition, seq, idx)."""
        where = " WHERE endpoint_id = $1 AND status = 'pending' ORDER BY partition, seq, idx LIMIT $2"
        return await self._database.call(_deliveries, where, [endpoint_id, rows_max])

    async def endpoints_with_pending(self, rows_max: int = 10_000) -> list[str]:
        """Ids of endpoints that have a pending delivery."""
        return await self._database.call(_endpoints_with_pending, rows_max)

    async def count_waiting(self, rows_max: int = 1_000_000) -> dict[str, int]:
        """Deliveries waiting for their first or next try (`pending`) and
        given up on (`dead`), each counted up to `rows_max`."""
        return await self._database.call(_count_waiting, rows_max)

    async def record_attempt(self, delivery: DeliveryRow, attempt: DeliveryAttemptRow) -> None:
        """Log one try and move its delivery on (delivered, rescheduled or dead), together."""
        await self._database.call(_record_attempt, delivery, attempt, transaction=True)

    async def retry_dead(self, event_id: str, now_ms: int) -> list[str]:
        """Send a given-up event again: its dead deliveries become pending,
        with a fresh schedule. Returns the endpoints it goes to."""
        return await self._database.call(_retry_dead, event_id, now_ms)

    async def deliveries_of_event(self, event_id: str) -> list[DeliveryRow]:
        """Every delivery of an event, by endpoint."""
        return await self._database.call(_deliveries, " WHERE event_id = $1 ORDER BY endpoint_id", [event_id])

    async def attempts_of_event(self, event_id: str, rows_max: int = 1000) -> list[DeliveryAttemptRow]:
        """The tries at delivering an event, by endpoint and attempt."""
        return await self._database.call(_attempts_of_event, event_id, rows_max)

    async def dead_deliveries(self, rows_max: int = 1000) -> list[DeliveryRow]:
        """The dead-letter list, newest first."""
        return await self._database.call(_deliveries, " WHERE status = 'dead' ORDER BY updated_s DESC LIMIT $1", [rows_max])
