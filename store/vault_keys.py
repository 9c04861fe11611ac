"""Card key versions: the `vault_key_versions` table, and the cards each
version holds.

A version is a random key kept only wrapped by the master key (the wrapping
and everything else about keys is in shards/vault.py; this module never sees
a key in clear). Version 0 stands for the key the master key derived before
versions existed; it has no wrapped key. States go one way: active (new
cards are sealed with it; one version at a time), retiring (its cards are
re-wrapped under the active one), retired (no card uses it; its wrapped key
is deleted).

Which version a card is sealed under is written in the sealed value itself
(`key_version_of`), and PostgreSQL keeps it as a generated column of
`payment_methods`, so the two cannot disagree. That column, with a column
that is always true, is a foreign key to (version, usable) of a version
that is not retired: the database itself refuses to retire a version some
card still uses, and refuses a card sealed under a retired version.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import asyncpg
import msgspec

from store.database import Database, columns, rows_affected
from store.errors import StoreError

# The layout of a sealed card number (shards/vault.py has the whole of it):
# a format byte, then the key version as 4 bytes big-endian, then the rest,
# always SEALED_BYTES long. A value of another length is the format from
# before versions (12 to 19 digits sealed as nonce, ciphertext, tag: 40 to
# 47 bytes): version 0.
SEALED_FORMAT = 1
SEALED_BYTES = 125
HEADER_BYTES = 5
LEGACY_VERSION = 0
VERSION_MAX = 2**31 - 1

# The generated column's expression, the same rule as `key_version_of`.
KEY_VERSION_SQL = (
    f"CASE WHEN octet_length(sealed_number) = {SEALED_BYTES} AND get_byte(sealed_number, 0) = {SEALED_FORMAT}"
    " THEN (get_byte(sealed_number, 1) << 24) | (get_byte(sealed_number, 2) << 16)"
    " | (get_byte(sealed_number, 3) << 8) | get_byte(sealed_number, 4)"
    f" ELSE {LEGACY_VERSION} END"
)

ACTIVE, RETIRING, RETIRED = "active", "retiring", "retired"


def key_version_of(sealed: bytes) -> int:
    """The key version a sealed card number is sealed under (0: the format
    from before versions)."""
    if len(sealed) == SEALED_BYTES and sealed[0] == SEALED_FORMAT:
        return int.from_bytes(sealed[1:HEADER_BYTES], "big")
    return LEGACY_VERSION


class KeyVersionRetired(StoreError):
    """A card sealed under a version that is retired was not stored: seal it
    again under the active version."""


class KeyVersionRow(msgspec.Struct, frozen=True):
    version: int
    state: str
    # None for version 0 (derived, never stored) and once retired.
    wrapped_key: bytes | None
    created_s: int
    retiring_s: int | None = None
    retired_s: int | None = None
    # Cards sealed under it (filled in by `status` only).
    cards: int = 0


class Rotated(msgspec.Struct, frozen=True):
    """What a rotation did: `version` is the active version after it;
    `created` whether it made it (False: refused, or there already was an
    active version when only one was ensured). `live` counts the versions
    not retired after it."""

    version: int | None
    created: bool
    live: int


# Makes the wrapped key of a new version, given its number (the number is
# bound into the wrapping, so a wrapped key moved to another row opens nothing).
WrapNew = Callable[[int], bytes]

_SELECT = (
    "SELECT version, state, wrapped_key, extract(epoch FROM created_at)::bigint AS created_s,"
    " extract(epoch FROM retiring_at)::bigint AS retiring_s, extract(epoch FROM retired_at)::bigint AS retired_s"
    " FROM vault_key_versions"
)


async def _live(connection: asyncpg.Connection) -> list[KeyVersionRow]:
    rows = await connection.fetch(_SELECT + " WHERE state <> 'retired' ORDER BY version")
    return [KeyVersionRow(**dict(row)) for row in rows]


async def _status(connection: asyncpg.Connection) -> list[KeyVersionRow]:
    versions = await connection.fetch(_SELECT + " ORDER BY version")
    counts = dict(await connection.fetch("SELECT key_version, count(*) FROM payment_methods GROUP BY key_version"))
    return [KeyVersionRow(**dict(row), cards=counts.get(row["version"], 0)) for row in versions]


async def _make_active(connection: asyncpg.Connection, wrap: WrapNew, rotate: bool, live_max: int) -> Rotated:
    # One change of versions at a time, whichever node or command makes it.
    await connection.execute("SELECT pg_advisory_xact_lock(727275)")
    active = await connection.fetchval("SELECT version FROM vault_key_versions WHERE state = 'active'")
    live = await connection.fetchval("SELECT count(*) FROM vault_key_versions WHERE state <> 'retired'")
    if (active is not None and not rotate) or live >= live_max:
        return Rotated(active, False, live)
    version = await connection.fetchval("SELECT coalesce(max(version), 0) + 1 FROM vault_key_versions")
    await connection.execute("UPDATE vault_key_versions SET state = 'retiring', retiring_at = now() WHERE state = 'active'")
    await connection.execute("INSERT INTO vault_key_versions (version, state, wrapped_key) VALUES ($1, 'active', $2)", version, wrap(version))
    return Rotated(version, True, live + 1)


async def _legacy_sample(connection: asyncpg.Connection) -> tuple[str, bytes] | None:
    row = await connection.fetchrow(f"SELECT id, sealed_number FROM payment_methods WHERE key_version = {LEGACY_VERSION} LIMIT 1")
    return None if row is None else (row["id"], row["sealed_number"])


async def _cards_under(connection: asyncpg.Connection, version: int, rows_max: int) -> list[tuple[str, bytes]]:
    rows = await connection.fetch(
        "SELECT id, sealed_number FROM payment_methods WHERE key_version = $1 ORDER BY id LIMIT $2", version, rows_max
    )
    return [(row["id"], row["sealed_number"]) for row in rows]


async def _replace_sealed(connection: asyncpg.Connection, rows: list[tuple[str, bytes, bytes]]) -> int:
    try:
        status = await connection.execute(
            "UPDATE payment_methods AS p SET sealed_number = r.new"
            " FROM unnest($1::text[], $2::bytea[], $3::bytea[]) AS r (id, old, new)"
            " WHERE p.id = r.id AND p.sealed_number = r.old",
            *columns(rows, 3),
        )
    except asyncpg.ForeignKeyViolationError as error:
        raise KeyVersionRetired("the version the cards were re-wrapped under was retired meanwhile") from error
    return rows_affected(status)


async def _retire(connection: asyncpg.Connection, version: int, retiring_for_s: float) -> bool:
    try:
        status = await connection.execute(
            "UPDATE vault_key_versions SET state = 'retired', usable = false, wrapped_key = NULL, retired_at = now()"
            " WHERE version = $1 AND state = 'retiring' AND retiring_at <= now() - make_interval(secs => $2)"
            " AND NOT EXISTS (SELECT 1 FROM payment_methods WHERE key_version = $1)",
            version,
            float(retiring_for_s),
        )
    except asyncpg.ForeignKeyViolationError:
        return False  # a card under it was written meanwhile: not yet
    return rows_affected(status) == 1


async def _ready(connection: asyncpg.Connection) -> bool:
    return await connection.fetchval("SELECT to_regclass('vault_key_versions') IS NOT NULL")


class VaultKeys:
    """The key versions of one database. Each method is one bridged call
    and raises StoreUnavailable when the database is away."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def ready(self) -> bool:
        """Whether the database has the table (it is migrated)."""
        return await self._database.call(_ready)

    async def live(self) -> list[KeyVersionRow]:
        """The versions not retired, oldest first."""
        return await self._database.call(_live)

    async def status(self) -> list[KeyVersionRow]:
        """Every version, oldest first, each with the count of its cards."""
        return await self._database.call(_status)

    async def ensure_active(self, wrap: WrapNew, live_max: int) -> Rotated:
        """Make a first active version with `wrap(version)` unless there is
        one (or `live_max` versions are live already)."""
        return await self._database.call(_make_active, wrap, False, live_max, transaction=True)

    async def rotate(self, wrap: WrapNew, live_max: int) -> Rotated:
        """Make a new active version with `wrap(version)`; the active one
        becomes retiring. Refused (created False) when `live_max` versions
        are live already."""
        return await self._database.call(_make_active, wrap, True, live_max, transaction=True)

    async def legacy_sample(self) -> tuple[str, bytes] | None:
        """(id, sealed number) of one card sealed in the format from before
        versions, if any is left."""
        return await self._database.call(_legacy_sample)

    async def cards_under(self, version: int, rows_max: int) -> list[tuple[str, bytes]]:
        """(id, sealed number) of at most `rows_max` cards under `version`."""
        return await self._database.call(_cards_under, version, rows_max)

    async def replace_sealed(self, rows: Sequence[tuple[str, bytes, bytes]]) -> int:
        """For each (id, old, new): the card's sealed number becomes `new` if
        it still is `old`, all in one statement. Returns how many were
        replaced; raises KeyVersionRetired when a `new` is under a retired
        version (then none is)."""
        return await self._database.call(_replace_sealed, list(rows))

    async def retire(self, version: int, retiring_for_s: float) -> bool:
        """Retire `version` (its wrapped key deleted) if it has been retiring
        for `retiring_for_s` by the database's clock and no card uses it.
        Whether it did."""
        return await self._database.call(_retire, version, retiring_for_s)
