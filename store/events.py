"""Events: the Stripe-shaped events the journal raises, and the two cursors
over each partition's events: how far the outbox relay has published them
(`outbox_cursor`) and how far the webhook ingest has queued them
(`stream_queued`, moved by store/webhooks.py with the deliveries)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from store.database import Database
from store.rows import EventQuery, EventRow

EVENT_COLUMNS = tuple(EventRow.__struct_fields__)
EVENT_SELECT = "SELECT " + ", ".join(EVENT_COLUMNS) + " FROM events"


def event_query_sql(query: EventQuery) -> tuple[str, list[Any], bool]:
    """The statement and arguments of a keyset page of a merchant's events,
    and whether it reads them oldest first (paging backwards)."""
    clauses = ["merchant_id = $1", "livemode = $2", "created_s >= $3"]
    args: list[Any] = [query.merchant_id, query.livemode, query.since_s]
    if query.types:
        args.append(list(query.types))
        clauses.append(f"type LIKE ANY(${len(args)}::text[])")
    if query.until_s is not None:
        args.append(query.until_s)
        clauses.append(f"created_s <= ${len(args)}")
    if query.delivery_success is not None:
        undelivered = "EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = events.id AND d.status <> 'delivered')"
        clauses.append(f"NOT {undelivered}" if query.delivery_success else undelivered)
    order = "DESC"
    if query.after is not None:
        args.extend(query.after)
        clauses.append(f"(created_s, id) < (${len(args) - 1}, ${len(args)})")
    elif query.before is not None:
        args.extend(query.before)
        clauses.append(f"(created_s, id) > (${len(args) - 1}, ${len(args)})")
        order = "ASC"
    args.append(query.limit)
    sql = f"{EVENT_SELECT} WHERE {' AND '.join(clauses)} ORDER BY created_s {order}, id {order} LIMIT ${len(args)}"
    return sql, args, order == "ASC"


async def _cursor(connection: asyncpg.Connection, table: str, partition: int) -> tuple[int, int]:
    # `table` is one of two names written here, never a caller's text.
    row = await connection.fetchrow(f"SELECT seq, idx FROM {table} WHERE partition = $1", partition)
    return (0, -1) if row is None else (row["seq"], row["idx"])


async def _move_outbox_cursor(connection: asyncpg.Connection, partition: int, cursor: tuple[int, int]) -> None:
    await connection.execute(
        "INSERT INTO outbox_cursor (partition, seq, idx) VALUES ($1, $2, $3)"
        " ON CONFLICT (partition) DO UPDATE SET seq = EXCLUDED.seq, idx = EXCLUDED.idx"
        " WHERE (outbox_cursor.seq, outbox_cursor.idx) < (EXCLUDED.seq, EXCLUDED.idx)",
        partition,
        *cursor,
    )


async def _outbox_after(connection: asyncpg.Connection, partition: int, cursor: tuple[int, int], rows_max: int) -> list[EventRow]:
    rows = await connection.fetch(
        EVENT_SELECT + " WHERE partition = $1 AND (seq, idx) > ($2, $3) ORDER BY seq, idx LIMIT $4",
        partition,
        cursor[0],
        cursor[1],
        rows_max,
    )
    return [EventRow(*row) for row in rows]


async def _get(connection: asyncpg.Connection, event_id: str) -> EventRow | None:
    row = await connection.fetchrow(EVENT_SELECT + " WHERE id = $1", event_id)
    return None if row is None else EventRow(*row)


async def _fetch(connection: asyncpg.Connection, sql: str, args: list[Any]) -> list[EventRow]:
    return [EventRow(*row) for row in await connection.fetch(sql, *args)]


class Events:
    """The events table and the cursors over it. Each method is one bridged
    call and raises StoreUnavailable when the database is away."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def outbox_cursor(self, partition: int) -> tuple[int, int]:
        """The (seq, idx) of the last event of a partition known to be on the stream."""
        return await self._database.call(_cursor, "outbox_cursor", partition)

    async def move_outbox_cursor(self, partition: int, cursor: tuple[int, int]) -> None:
        """Move a partition's published cursor forward to `cursor` (never back)."""
        await self._database.call(_move_outbox_cursor, partition, cursor)

    async def queued_cursor(self, partition: int) -> tuple[int, int]:
        """How far the webhook ingest has queued a partition's events."""
        return await self._database.call(_cursor, "stream_queued", partition)

    async def outbox_after(self, partition: int, cursor: tuple[int, int], rows_max: int) -> list[EventRow]:
        """The outbox: a partition's events after `cursor`, in journal order."""
        return await self._database.call(_outbox_after, partition, cursor, rows_max)

    async def get(self, event_id: str) -> EventRow | None:
        """An event by id, or None."""
        return await self._database.call(_get, event_id)

    async def get_many(self, event_ids: Sequence[str]) -> list[EventRow]:
        """The events with these ids that exist, in no particular order."""
        return await self._database.call(_fetch, EVENT_SELECT + " WHERE id = ANY($1::text[])", [list(event_ids)])

    async def matching(self, query: EventQuery) -> list[EventRow]:
        """A merchant's events, newest first, by (created, id) keyset paging."""
        sql, args, oldest_first = event_query_sql(query)
        found = await self._database.call(_fetch, sql, args)
        return found[::-1] if oldest_first else found
