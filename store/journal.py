"""The journal: append-only rows per partition, with the postings, events and
idempotency records written in the same statement, and reading it back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec

from store.batch import Batch, BatchWriter
from store.database import Database, columns
from store.errors import Fenced
from store.rows import JournalRow

# Batches in one statement (one round trip, one implicit transaction, one
# fsync): each table's rows arrive as parallel arrays and are inserted by
# data-modifying CTEs, which PostgreSQL runs as one atomic statement. The
# batches may come from several partitions (a node's group commit).
APPEND_SQL = """
WITH fence AS (
    -- The leases the batches were decided under, locked (FOR SHARE) until
    -- this commits, so a takeover waits for this write and then loads it,
    -- or has already moved the epoch and this write finds it changed.
    SELECT coalesce(array_agg(partition), '{}') AS held FROM (
        SELECT l.partition FROM partition_leases AS l
        JOIN unnest($38::smallint[], $39::bigint[]) AS f (partition, epoch)
            ON l.partition = f.partition AND l.epoch = f.epoch AND l.owner = $40
        FOR SHARE OF l
    ) AS fenced
), allowed AS (
    SELECT cardinality(held) = cardinality($38::smallint[]) AS ok FROM fence
), journal_rows AS (
    INSERT INTO journal (partition, seq, entity_id, kind, body, request_id)
    SELECT partition, seq, entity_id, kind, body::jsonb, request_id
    FROM unnest($1::smallint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $41::text[])
        AS r (partition, seq, entity_id, kind, body, request_id)
    WHERE (SELECT ok FROM allowed)
), posting_rows AS (
    INSERT INTO postings (id, partition, journal_seq, intent_id, debit_account_id, credit_account_id, amount,
                          currency, kind, code, pending_id, created_s, available_on_s)
    SELECT * FROM unnest($6::text[], $7::smallint[], $8::bigint[], $9::text[], $10::text[], $11::text[], $12::bigint[],
                         $13::text[], $14::text[], $15::text[], $16::text[], $17::bigint[], $18::bigint[])
    WHERE (SELECT ok FROM allowed)
), event_rows AS (
    INSERT INTO events (id, partition, seq, idx, merchant_id, livemode, type, intent_id, object_id, created_s, intent, request_id)
    SELECT * FROM unnest($19::text[], $20::smallint[], $21::bigint[], $22::smallint[], $23::text[], $24::boolean[],
                         $25::text[], $26::text[], $27::text[], $28::bigint[], $29::bytea[], $30::text[])
    WHERE (SELECT ok FROM allowed)
), key_rows AS (
    INSERT INTO idempotency_keys (merchant_id, key, fingerprint, status_code, body, object_id, expires_at_s)
    SELECT * FROM unnest($31::text[], $32::text[], $33::bytea[], $34::smallint[], $35::bytea[], $36::text[], $37::bigint[])
    WHERE (SELECT ok FROM allowed)
    ON CONFLICT (merchant_id, key) DO UPDATE
        SET status_code = EXCLUDED.status_code, body = EXCLUDED.body
        WHERE idempotency_keys.status_code IS NULL AND idempotency_keys.fingerprint = EXCLUDED.fingerprint
)
SELECT held FROM fence
"""


def append_arguments(batches: Sequence[Batch]) -> list[Any]:
    """The 41 arguments of `APPEND_SQL` for these batches: 37 column arrays,
    then the fenced partitions, their epochs and their owner, then the
    journal rows' request ids."""
    journal = columns(
        [(batch.partition, row.seq, row.entity_id, row.kind, row.body.decode()) for batch in batches for row in batch.rows], 5
    )
    postings = columns(
        [
            (
                transfer.id, batch.partition, row.seq, transfer.intent_id, transfer.debit_account_id,
                transfer.credit_account_id, transfer.amount, transfer.currency, str(transfer.kind), transfer.code,
                transfer.pending_id, transfer.created_s, transfer.available_on_s,
            )
            for batch in batches
            for row in batch.rows
            for transfer in row.transfers
        ],
        13,
    )
    raised = columns(
        [
            (e.id, e.partition, e.seq, e.idx, e.merchant_id, e.livemode, e.type, e.intent_id, e.object_id, e.created_s, e.intent, e.request_id)
            for batch in batches
            for e in batch.events
        ],
        12,
    )
    # One row per key: a statement may not upsert the same row twice.
    latest = {(row.merchant_id, row.key): msgspec.structs.astuple(row) for batch in batches for row in batch.idempotency}
    keys = columns(list(latest.values()), 7)
    fences = {batch.partition: batch.fence for batch in batches if batch.fence is not None}
    owners = {owner for owner, _ in fences.values()}
    assert len(owners) <= 1, "one node's batches are fenced by one owner"
    fenced = columns([(partition, epoch) for partition, (_, epoch) in fences.items()], 2)
    request_ids = [row.request_id for batch in batches for row in batch.rows]
    return [*journal, *postings, *raised, *keys, *fenced, next(iter(owners), ""), request_ids]


async def _append(connection: asyncpg.Connection, arguments: list[Any]) -> frozenset[int]:
    """Write; the fenced partitions whose lease has moved on (then nothing
    was written: every insert is conditional on the fence)."""
    held = await connection.fetchval(APPEND_SQL, *arguments)
    return frozenset(arguments[-4]) - frozenset(held)


async def _position(connection: asyncpg.Connection, partition: int) -> int:
    return await connection.fetchval("SELECT coalesce(max(seq), 0) FROM journal WHERE partition = $1", partition)


async def _load(connection: asyncpg.Connection, partition: int) -> list[JournalRow]:
    rows = await connection.fetch(
        "SELECT seq, entity_id, kind, body::text AS body FROM journal"
        " WHERE partition = $1 ORDER BY seq",
        partition,
    )
    return [JournalRow(row["seq"], row["entity_id"], row["kind"], row["body"].encode()) for row in rows]


class Journal(BatchWriter):
    """The journal of every partition. Each method is one bridged call and
    raises StoreUnavailable when the database is away."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def append_many(self, batches: Sequence[Batch]) -> None:
        """Write the batches of several partitions at once, in one statement
        (one transaction, one fsync): all or none. Raises JournalConflict
        when a position is taken, Fenced when a batch's lease has moved on."""
        stale = await self._database.call(_append, append_arguments(batches))
        if stale:
            raise Fenced(stale)

    async def position(self, partition: int) -> int:
        """The last sequence number written to a partition's journal (0 if none)."""
        return await self._database.call(_position, partition)

    async def load(self, partition: int) -> list[JournalRow]:
        """A partition's journal, in order."""
        return await self._database.call(_load, partition)
