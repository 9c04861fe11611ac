"""The audit archive's side of the database (the archive itself is
workers/audit/): the journal as the archive keeps it, the mirror of the
archive's manifest, each partition's archived position and the export lease."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import msgspec

from store.database import Database
from store.errors import SchemaMismatch
from store.events import EVENT_SELECT
from store.rows import AuditEntryRow, AuditState, EventRow, JournalRecord

AUDIT_JOURNAL_SELECT = (
    "SELECT partition, seq, entity_id, kind, body::text AS body,"
    " (extract(epoch FROM recorded_at) * 1000000)::bigint AS recorded_at_us FROM journal"
)
AUDIT_LEASE_NAME = "export"


async def _state(connection: asyncpg.Connection) -> AuditState | None:
    try:
        # One snapshot, so the positions are those the head entry left.
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            partitions = await connection.fetchval("SELECT value FROM settings WHERE key = 'partitions'")
            positions = await connection.fetch("SELECT partition, seq FROM audit_positions")
            head = await connection.fetchrow("SELECT sequence, entry FROM audit_manifest ORDER BY sequence DESC LIMIT 1")
    except asyncpg.exceptions.UndefinedTableError:
        # Not raised here: an error inside would cost the connection.
        return None
    return AuditState(
        partitions=int(partitions or 0),
        positions={row["partition"]: row["seq"] for row in positions},
        head_sequence=0 if head is None else head["sequence"],
        head_entry=None if head is None else head["entry"],
    )


async def _take_lease(connection: asyncpg.Connection, holder: str, ttl_s: int) -> bool:
    taken = await connection.fetchval(
        "INSERT INTO audit_lease (name, holder, expires_at) VALUES ($1, $2, now() + make_interval(secs => $3))"
        " ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at"
        " WHERE audit_lease.holder = EXCLUDED.holder OR audit_lease.expires_at < now()"
        " RETURNING holder",
        AUDIT_LEASE_NAME,
        holder,
        float(ttl_s),
    )
    return taken is not None


async def _release_lease(connection: asyncpg.Connection, holder: str) -> None:
    await connection.execute("DELETE FROM audit_lease WHERE name = $1 AND holder = $2", AUDIT_LEASE_NAME, holder)


async def _read(
    connection: asyncpg.Connection, partition: int, after_seq: int, rows_max: int, events_max: int
) -> tuple[list[JournalRecord], list[EventRow]]:
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        rows = await connection.fetch(
            AUDIT_JOURNAL_SELECT + " WHERE partition = $1 AND seq > $2 ORDER BY seq LIMIT $3", partition, after_seq, rows_max
        )
        if not rows:
            return [], []
        events = await connection.fetch(
            EVENT_SELECT + " WHERE partition = $1 AND seq > $2 AND seq <= $3 ORDER BY seq, idx LIMIT $4",
            partition,
            after_seq,
            rows[-1]["seq"],
            events_max,
        )
    return [JournalRecord(**dict(row)) for row in rows], [EventRow(*row) for row in events]


async def _rows(connection: asyncpg.Connection, partition: int, seqs: list[int]) -> tuple[list[JournalRecord], list[EventRow]]:
    rows = await connection.fetch(
        AUDIT_JOURNAL_SELECT + " WHERE partition = $1 AND seq = ANY($2::bigint[]) ORDER BY seq", partition, seqs
    )
    events = await connection.fetch(
        EVENT_SELECT + " WHERE partition = $1 AND seq = ANY($2::bigint[]) ORDER BY seq, idx", partition, seqs
    )
    return [JournalRecord(**dict(row)) for row in rows], [EventRow(*row) for row in events]


async def _mirror(connection: asyncpg.Connection, after_sequence: int, rows_max: int) -> list[str]:
    rows = await connection.fetch(
        "SELECT entry FROM audit_manifest WHERE sequence > $1 ORDER BY sequence LIMIT $2", after_sequence, rows_max
    )
    return [row["entry"] for row in rows]


def _refusal(entries: Sequence[AuditEntryRow], sequence: int, previous: str | None, positions: dict[int, int]) -> str | None:
    """Why `entries` cannot follow a mirror whose head is (`sequence`,
    `previous` hash) with these archived positions, or None when they can.
    `positions` is moved on past the entries as they are checked."""
    for entry in entries:
        if entry.sequence != sequence + 1 or (previous is not None and entry.prev_hash != previous):
            return f"entry {entry.sequence} does not follow the mirror's last entry {sequence}"
        if entry.first_seq != positions.get(entry.partition, 0) + 1:
            return (
                f"entry {entry.sequence} starts partition {entry.partition} at {entry.first_seq},"
                f" but it is archived to {positions.get(entry.partition, 0)}"
            )
        sequence, previous = entry.sequence, entry.hash
        positions[entry.partition] = entry.last_seq
    return None


async def _commit_in_transaction(connection: asyncpg.Connection, entries: Sequence[AuditEntryRow], holder: str | None) -> str | None:
    if holder is not None:
        current = await connection.fetchval(
            "SELECT holder FROM audit_lease WHERE name = $1 AND expires_at > now() FOR UPDATE", AUDIT_LEASE_NAME
        )
        if current != holder:
            return "the export lease expired or another exporter holds it"
    head = await connection.fetchrow("SELECT sequence, hash FROM audit_manifest ORDER BY sequence DESC LIMIT 1")
    sequence, previous = (0, None) if head is None else (head["sequence"], head["hash"])
    positions = {row["partition"]: row["seq"] for row in await connection.fetch("SELECT partition, seq FROM audit_positions")}
    refusal = _refusal(entries, sequence, previous, positions)
    if refusal is not None:
        return refusal
    await connection.executemany(
        "INSERT INTO audit_manifest (sequence, partition, first_seq, last_seq, sha256, prev_hash, hash, entry)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        [msgspec.structs.astuple(entry) for entry in entries],
    )
    await connection.executemany(
        "INSERT INTO audit_positions (partition, seq, sequence) VALUES ($1, $2, $3)"
        " ON CONFLICT (partition) DO UPDATE SET seq = EXCLUDED.seq, sequence = EXCLUDED.sequence",
        [(entry.partition, entry.last_seq, entry.sequence) for entry in entries],
    )
    return None


async def _commit(connection: asyncpg.Connection, entries: Sequence[AuditEntryRow], holder: str | None) -> str | None:
    try:
        async with connection.transaction():
            return await _commit_in_transaction(connection, entries, holder)
    except asyncpg.exceptions.UniqueViolationError:
        return "another exporter mirrored an entry at the same time"


class Audit:
    """The audit tables. Each method is one bridged call and raises
    StoreUnavailable when the database is away."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def state(self) -> AuditState:
        """The partition count, the archived position of each partition and
        the mirror's last manifest entry. Raises SchemaMismatch when the
        database has no audit tables yet."""
        state = await self._database.call(_state)
        if state is None:
            raise SchemaMismatch("the database has no audit tables yet: run `payments migrate` (or start a node) first")
        return state

    async def take_lease(self, holder: str, ttl_s: int) -> bool:
        """Take or renew the export lease; False while another holder has it."""
        return await self._database.call(_take_lease, holder, ttl_s)

    async def release_lease(self, holder: str) -> None:
        """Give the export lease up, if `holder` has it."""
        await self._database.call(_release_lease, holder)

    async def read(self, partition: int, after_seq: int, rows_max: int, events_max: int) -> tuple[list[JournalRecord], list[EventRow]]:
        """Up to `rows_max` journal rows of a partition after `after_seq`, in
        order, with the events they raised (at most `events_max`)."""
        return await self._database.call(_read, partition, after_seq, rows_max, events_max)

    async def rows(self, partition: int, seqs: Sequence[int]) -> tuple[list[JournalRecord], list[EventRow]]:
        """The journal rows of a partition at `seqs`, and the events they
        raised that are still kept, to compare with the archive."""
        return await self._database.call(_rows, partition, list(seqs))

    async def mirror(self, after_sequence: int, rows_max: int) -> list[str]:
        """The mirrored manifest lines after `after_sequence`, in order."""
        return await self._database.call(_mirror, after_sequence, rows_max)

    async def commit(self, entries: Sequence[AuditEntryRow], holder: str | None) -> str | None:
        """Mirror manifest entries and move the archived positions, in one
        transaction. Each entry must follow the mirror's head (next sequence,
        prev_hash = the head's hash) and its partition's position (first_seq
        = position + 1); with a `holder`, the export lease must be theirs.
        Returns None when written, otherwise why nothing was."""
        return await self._database.call(_commit, entries, holder)
