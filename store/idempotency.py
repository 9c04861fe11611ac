"""Idempotency records: the first response to each request made with an
idempotency key, kept for replay (their purge is in store/purge.py)."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from store.database import Database, columns, rows_affected
from store.rows import IdempotencyRow

# A record is written once when its request starts and completed once; it is
# never overwritten after that, whatever a confused caller sends.
IDEMPOTENCY_UPSERT = """
INSERT INTO idempotency_keys (merchant_id, key, fingerprint, status_code, body, object_id, expires_at_s)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (merchant_id, key) DO UPDATE
    SET status_code = EXCLUDED.status_code, body = EXCLUDED.body
    WHERE idempotency_keys.status_code IS NULL AND idempotency_keys.fingerprint = EXCLUDED.fingerprint
"""

IDEMPOTENCY_SELECT = "SELECT merchant_id, key, fingerprint, status_code, body, object_id, expires_at_s FROM idempotency_keys"


async def _find(connection: asyncpg.Connection, merchant_id: str, key: str, now_s: int) -> IdempotencyRow | None:
    row = await connection.fetchrow(
        IDEMPOTENCY_SELECT + " WHERE merchant_id = $1 AND key = $2 AND expires_at_s > $3", merchant_id, key, now_s
    )
    return None if row is None else IdempotencyRow(**dict(row))


async def _records(connection: asyncpg.Connection, rows_max: int) -> list[IdempotencyRow]:
    rows = await connection.fetch(IDEMPOTENCY_SELECT + " LIMIT $1", rows_max)
    return [IdempotencyRow(**dict(row)) for row in rows]


async def _fingerprints_after(connection: asyncpg.Connection, after: tuple[str, str], rows_max: int) -> list[tuple[str, str, bytes]]:
    rows = await connection.fetch(
        "SELECT merchant_id, key, fingerprint FROM idempotency_keys"
        " WHERE (merchant_id, key) > ($1, $2) ORDER BY merchant_id, key LIMIT $3",
        after[0],
        after[1],
        rows_max,
    )
    return [(row["merchant_id"], row["key"], row["fingerprint"]) for row in rows]


async def _replace_fingerprints(connection: asyncpg.Connection, rows: list[tuple[str, str, bytes, bytes]]) -> int:
    status = await connection.execute(
        "UPDATE idempotency_keys AS i SET fingerprint = r.new"
        " FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bytea[]) AS r (merchant_id, key, old, new)"
        " WHERE i.merchant_id = r.merchant_id AND i.key = r.key AND i.fingerprint = r.old",
        *columns(rows, 4),
    )
    return rows_affected(status)


class IdempotencyKeys:
    """The idempotency_keys table. Each method is one bridged call and
    raises StoreUnavailable when the database is away."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def find(self, merchant_id: str, key: str, now_s: int) -> IdempotencyRow | None:
        """The record of a merchant's key, unless there is none or it expired by `now_s`."""
        return await self._database.call(_find, merchant_id, key, now_s)

    async def records(self, rows_max: int = 1_000_000) -> list[IdempotencyRow]:
        """Every idempotency record (for the invariant checks), bounded."""
        return await self._database.call(_records, rows_max)

    async def fingerprints_after(self, after: tuple[str, str], rows_max: int) -> list[tuple[str, str, bytes]]:
        """(merchant_id, key, fingerprint) of at most `rows_max` records that
        come after `after` in key order, in that order: pages through the table
        on its primary key, expired records included."""
        return await self._database.call(_fingerprints_after, after, rows_max)

    async def replace_fingerprints(self, rows: Sequence[tuple[str, str, bytes, bytes]]) -> int:
        """For each (merchant_id, key, old, new): set the record's fingerprint
        to `new` if it still is `old`, all in one statement. Returns how many
        were replaced."""
        return await self._database.call(_replace_fingerprints, list(rows))
