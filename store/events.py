"""Events: the Stripe-shaped events the journal raises, and the two cursors
over each partition's events: how far the outbox relay has published them
(`outbox_cursor`) and how far the webhook ingest has queued them
(`stream_queued`, moved by store/webhooks.py with the deliveries)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from store.database import Database, columns
from store.rows import EventQuery, EventRow

EVENT_COLUMNS = tuple(EventRow.__struct_fields__)
EVENT_SELECT = "SELECT " + ", ".join(EVENT_COLUMNS) + " FROM events"

# The outbox of several partitions in one statement: for each (partition,
# cursor), its next events by the (partition, seq, idx) index, at most $4 of
# them. The intent snapshot (about 1 KB an event) stays in the table: the
# streams never carry it (store/redis_link.py), so an empty one stands in.
OUTBOX_SQL = f"""
SELECT e.* FROM unnest($1::smallint[], $2::bigint[], $3::smallint[]) AS c (partition, seq, idx)
CROSS JOIN LATERAL (
    SELECT {", ".join("''::bytea AS intent" if column == "intent" else column for column in EVENT_COLUMNS)} FROM events
    WHERE events.partition = c.partition AND (events.seq, events.idx) > (c.seq, c.idx)
    ORDER BY events.seq, events.idx
    LIMIT $4
) AS e
ORDER BY e.partition, e.seq, e.idx
"""


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


async def _cursors(connection: asyncpg.Connection, table: str, partitions: list[int]) -> dict[int, tuple[int, int]]:
    # `table` is one of two names written here, never a caller's text.
    rows = await connection.fetch(f"SELECT partition, seq, idx FROM {table} WHERE partition = ANY($1::smallint[])", partitions)
    found = {row["partition"]: (row["seq"], row["idx"]) for row in rows}
    return {partition: found.get(partition, (0, -1)) for partition in partitions}


def _cursor_columns(cursors: dict[int, tuple[int, int]]) -> list[list[int]]:
    """(partitions, seqs, idxs) of cursors by partition, as unnest takes them."""
    return columns([(partition, *cursor) for partition, cursor in cursors.items()], 3)


async def _move_outbox_cursors(connection: asyncpg.Connection, cursors: dict[int, tuple[int, int]]) -> None:
    partitions, seqs, idxs = _cursor_columns(cursors)
    await connection.execute(
        "INSERT INTO outbox_cursor (partition, seq, idx)"
        " SELECT * FROM unnest($1::smallint[], $2::bigint[], $3::smallint[])"
        " ON CONFLICT (partition) DO UPDATE SET seq = EXCLUDED.seq, idx = EXCLUDED.idx"
        " WHERE (outbox_cursor.seq, outbox_cursor.idx) < (EXCLUDED.seq, EXCLUDED.idx)",
        partitions,
        seqs,
        idxs,
    )


async def _outbox_after(connection: asyncpg.Connection, cursors: dict[int, tuple[int, int]], rows_max: int) -> list[EventRow]:
    partitions, seqs, idxs = _cursor_columns(cursors)
    return [EventRow(*row) for row in await connection.fetch(OUTBOX_SQL, partitions, seqs, idxs, rows_max)]


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

    async def outbox_cursors(self, partitions: list[int]) -> dict[int, tuple[int, int]]:
        """The (seq, idx) of the last event of each partition known to be on
        its stream ((0, -1) for one never published)."""
        return await self._database.call(_cursors, "outbox_cursor", partitions)

    async def move_outbox_cursors(self, cursors: dict[int, tuple[int, int]]) -> None:
        """Move each partition's published cursor forward to the one given
        (never back), all in one statement."""
        await self._database.call(_move_outbox_cursors, cursors)

    async def queued_cursors(self, partitions: list[int]) -> dict[int, tuple[int, int]]:
        """How far the webhook ingest has queued each partition's events
        ((0, -1) for one it has queued nothing of)."""
        return await self._database.call(_cursors, "stream_queued", partitions)

    async def outbox_after(self, cursors: dict[int, tuple[int, int]], rows_max: int) -> list[EventRow]:
        """The outbox: for each partition, up to `rows_max` of its events
        after its cursor, ordered by (partition, seq, idx). Each row's intent
        is empty (b"")."""
        return await self._database.call(_outbox_after, cursors, rows_max)

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
