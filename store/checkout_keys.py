"""The checkout's encryption keys: the key pairs browsers encrypt card data
to (shards/checkout_keys.py makes and uses them; gateway/checkout.py serves
the public half).

One row a key: its id, the public key (DER, SubjectPublicKeyInfo) and the
private key sealed by the vault, never in clear. The newest row is the one
browsers are given; every row still opens what was encrypted to it. Every
node of a cluster reads the same rows, so a page that fetched the key from
one node may send its card to another.

The table is this module's own, made at first use (`CREATE TABLE IF NOT
EXISTS`): the schema's migration does not know it.
"""

from __future__ import annotations

import asyncpg
import msgspec

from store.database import Database

_CREATE = (
    "CREATE TABLE IF NOT EXISTS checkout_encryption_keys ("
    " id text PRIMARY KEY,"
    " public_key bytea NOT NULL,"
    " private_key_sealed bytea NOT NULL,"
    " created_at timestamptz NOT NULL DEFAULT now())"
)
_SELECT = "SELECT id, public_key, private_key_sealed FROM checkout_encryption_keys"


class EncryptionKeyRow(msgspec.Struct, frozen=True):
    id: str
    public_key: bytes
    private_key_sealed: bytes


async def _create_table(connection: asyncpg.Connection) -> None:
    # Two nodes starting at once may both create it: one waits for the other.
    await connection.execute("SELECT pg_advisory_xact_lock(727276)")
    await connection.execute(_CREATE)


async def _newest(connection: asyncpg.Connection) -> EncryptionKeyRow | None:
    row = await connection.fetchrow(_SELECT + " ORDER BY created_at DESC, id DESC LIMIT 1")
    return None if row is None else EncryptionKeyRow(**dict(row))


async def _find(connection: asyncpg.Connection, key_id: str) -> EncryptionKeyRow | None:
    row = await connection.fetchrow(_SELECT + " WHERE id = $1", key_id)
    return None if row is None else EncryptionKeyRow(**dict(row))


async def _insert(connection: asyncpg.Connection, row: EncryptionKeyRow) -> None:
    await connection.execute(
        "INSERT INTO checkout_encryption_keys (id, public_key, private_key_sealed) VALUES ($1, $2, $3)",
        row.id,
        row.public_key,
        row.private_key_sealed,
    )


class EncryptionKeys:
    """The table over one database. Each method is one bridged call and
    raises StoreUnavailable when the database is away."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._created = False

    async def _ensure_table(self) -> None:
        if not self._created:
            await self._database.call(_create_table, transaction=True)
            self._created = True

    async def newest(self) -> EncryptionKeyRow | None:
        """The key browsers are given now, if one was made."""
        await self._ensure_table()
        return await self._database.call(_newest)

    async def find(self, key_id: str) -> EncryptionKeyRow | None:
        await self._ensure_table()
        return await self._database.call(_find, key_id)

    async def insert(self, row: EncryptionKeyRow) -> None:
        await self._ensure_table()
        await self._database.call(_insert, row)
