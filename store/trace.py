"""Reading one payment's story back (`payments trace`): its journal rows,
the events they raised, and the webhook deliveries and tries of those
events. Read only; every query is bounded and goes through an index."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from store.database import Database
from store.events import EVENT_SELECT
from store.rows import DeliveryAttemptRow, EventRow

ROWS_MAX = 10_000


class TracedRow(msgspec.Struct, frozen=True):
    """A journal row as written: where, when, what, and the request behind it."""

    partition: int
    seq: int
    entity_id: str
    kind: str
    body: bytes
    recorded_at: datetime
    request_id: str | None


class TracedDelivery(msgspec.Struct, frozen=True):
    endpoint_id: str
    event_id: str
    status: str
    attempts: int


async def _journal_of(connection: asyncpg.Connection, entity_id: str) -> list[TracedRow]:
    rows = await connection.fetch(
        "SELECT partition, seq, entity_id, kind, body::text, recorded_at, request_id FROM journal"
        " WHERE entity_id = $1 ORDER BY partition, seq LIMIT $2",
        entity_id,
        ROWS_MAX,
    )
    return [TracedRow(row[0], row[1], row[2], row[3], row[4].encode(), row[5], row[6]) for row in rows]


async def _entities_of_request(connection: asyncpg.Connection, request_id: str) -> list[str]:
    rows = await connection.fetch(
        "SELECT DISTINCT entity_id FROM journal WHERE request_id = $1 LIMIT $2", request_id, ROWS_MAX
    )
    return sorted(row[0] for row in rows)


async def _events_of_rows(connection: asyncpg.Connection, partition: int, seqs: Sequence[int]) -> list[EventRow]:
    rows = await connection.fetch(
        EVENT_SELECT + " WHERE partition = $1 AND seq = ANY($2::bigint[]) ORDER BY seq, idx", partition, list(seqs)
    )
    return [EventRow(*row) for row in rows]


async def _deliveries_of(connection: asyncpg.Connection, event_ids: Sequence[str]) -> tuple[list[TracedDelivery], list[DeliveryAttemptRow]]:
    deliveries = await connection.fetch(
        "SELECT endpoint_id, event_id, status, attempts FROM webhook_deliveries WHERE event_id = ANY($1::text[])"
        " ORDER BY event_id, endpoint_id LIMIT $2",
        list(event_ids),
        ROWS_MAX,
    )
    attempts = await connection.fetch(
        "SELECT endpoint_id, event_id, attempt, at_ms, status_code, latency_ms, error FROM webhook_attempts"
        " WHERE event_id = ANY($1::text[]) ORDER BY at_ms, attempt LIMIT $2",
        list(event_ids),
        ROWS_MAX,
    )
    return [TracedDelivery(*row) for row in deliveries], [DeliveryAttemptRow(*row) for row in attempts]


class Trace:
    """Each method is one bridged call; StoreUnavailable when the database is away."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def journal_of(self, entity_id: str) -> list[TracedRow]:
        """The journal rows of one intent, in order (at most ROWS_MAX)."""
        return await self._database.call(_journal_of, entity_id)

    async def entities_of_request(self, request_id: str) -> list[str]:
        """The intents a request changed."""
        return await self._database.call(_entities_of_request, request_id)

    async def events_of_rows(self, partition: int, seqs: Sequence[int]) -> list[EventRow]:
        """The events these journal rows raised, in order."""
        return await self._database.call(_events_of_rows, partition, seqs)

    async def deliveries_of(self, event_ids: Sequence[str]) -> tuple[list[TracedDelivery], list[DeliveryAttemptRow]]:
        """The webhook deliveries of these events and every try at them, in time order."""
        return await self._database.call(_deliveries_of, event_ids)


def body_fields(body: bytes) -> dict[str, Any]:
    """A journal body as JSON fields (the engine's event, tagged by type)."""
    decoded = msgspec.json.decode(body)
    return decoded if isinstance(decoded, dict) else {}
