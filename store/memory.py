"""An in-memory store with the shape of `store.postgres.Store`, for what it
implements: `journal`, `merchants` (keys and payment methods), `idempotency`
and `purge`, with the same method names and promises.

Only for tests and the deterministic simulation: it performs no I/O, so a
whole node (actors, network calls, faults, crashes) can run under trio's
MockClock and replay exactly from a seed. It keeps the two properties the
real store gives the actors: a batch is all or nothing, and a journal
position is written once. Everything else is the minimum the node touches.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import trio

from store.batch import Batch, BatchWriter
from store.errors import Fenced, JournalConflict, StoreUnavailable
from store.rows import ApiKeyRow, EventRow, IdempotencyRow, JournalRow, PaymentMethodRow


class MemoryTables:
    """What the memory store holds, shared by its domains; tests read and
    seed it directly."""

    def __init__(self) -> None:
        self.journal: dict[int, list[JournalRow]] = {}
        self.events: list[EventRow] = []
        self.payment_methods: dict[str, PaymentMethodRow] = {}
        self.idempotency: dict[tuple[str, str], IdempotencyRow] = {}
        self.api_keys: dict[bytes, ApiKeyRow] = {}
        # partition -> (owner, epoch) of its lease, for fenced batches.
        self.leases: dict[int, tuple[str, int]] = {}
        # Set to make the next calls fail, as a database outage would.
        self.unavailable = False

    async def io(self) -> None:
        """A checkpoint, as a real round trip would be; StoreUnavailable
        while `unavailable` is set."""
        await trio.lowlevel.checkpoint()
        if self.unavailable:
            raise StoreUnavailable("memory store made unavailable")


class MemoryJournal(BatchWriter):
    def __init__(self, tables: MemoryTables) -> None:
        self._tables = tables

    async def append_many(self, batches: Sequence[Batch]) -> None:
        """All or none, as the database does: every batch is checked before
        any is written, and nothing yields in between. Raises JournalConflict
        when a batch does not start right after its partition's last row,
        Fenced when a batch's lease is not the partition's any more."""
        tables = self._tables
        await tables.io()
        stale = frozenset(b.partition for b in batches if b.fence is not None and tables.leases.get(b.partition) != b.fence)
        if stale:
            raise Fenced(stale)
        for batch in batches:
            journal = tables.journal.get(batch.partition, [])
            expected = journal[-1].seq + 1 if journal else 1
            if batch.rows and batch.rows[0].seq != expected:
                raise JournalConflict(f"partition {batch.partition}: seq {batch.rows[0].seq}, expected {expected}")
        for batch in batches:
            tables.journal.setdefault(batch.partition, []).extend(batch.rows)
            tables.events.extend(batch.events)
            for row in batch.idempotency:
                existing = tables.idempotency.get((row.merchant_id, row.key))
                if existing is None or (existing.status_code is None and existing.fingerprint == row.fingerprint):
                    tables.idempotency[(row.merchant_id, row.key)] = row

    async def position(self, partition: int) -> int:
        await self._tables.io()
        journal = self._tables.journal.get(partition, [])
        return journal[-1].seq if journal else 0

    async def load(self, partition: int) -> list[JournalRow]:
        await self._tables.io()
        return list(self._tables.journal.get(partition, []))


class MemoryMerchants:
    """Keys and payment methods; merchants themselves are not kept."""

    def __init__(self, tables: MemoryTables) -> None:
        self._tables = tables

    async def find_api_key(self, key_hash: bytes) -> ApiKeyRow | None:
        await self._tables.io()
        return self._tables.api_keys.get(key_hash)

    async def insert_payment_method(self, row: PaymentMethodRow, idempotency: IdempotencyRow | None = None) -> None:
        await self._tables.io()
        self._tables.payment_methods[row.id] = row

    async def get_payment_method(self, payment_method_id: str) -> PaymentMethodRow | None:
        await self._tables.io()
        return self._tables.payment_methods.get(payment_method_id)


class MemoryIdempotencyKeys:
    def __init__(self, tables: MemoryTables) -> None:
        self._tables = tables

    async def find(self, merchant_id: str, key: str, now_s: int) -> IdempotencyRow | None:
        await self._tables.io()
        row = self._tables.idempotency.get((merchant_id, key))
        return row if row is not None and row.expires_at_s > now_s else None

    async def records(self, rows_max: int = 1_000_000) -> list[IdempotencyRow]:
        await self._tables.io()
        return list(self._tables.idempotency.values())[:rows_max]

    async def fingerprints_after(self, after: tuple[str, str], rows_max: int) -> list[tuple[str, str, bytes]]:
        await self._tables.io()
        records = self._tables.idempotency
        names = sorted(name for name in records if name > after)[:rows_max]
        return [(*name, records[name].fingerprint) for name in names]

    async def replace_fingerprints(self, rows: Sequence[tuple[str, str, bytes, bytes]]) -> int:
        await self._tables.io()
        records = self._tables.idempotency
        replaced = 0
        for merchant_id, key, old, new in rows:
            row = records.get((merchant_id, key))
            if row is not None and row.fingerprint == old:
                records[(merchant_id, key)] = msgspec.structs.replace(row, fingerprint=new)
                replaced += 1
        return replaced


class MemoryPurge:
    def __init__(self, tables: MemoryTables) -> None:
        self._tables = tables

    async def idempotency_records(self, now_s: int, rows_max: int = 10_000) -> int:
        await self._tables.io()
        records = self._tables.idempotency
        expired = [name for name, row in records.items() if row.expires_at_s <= now_s][:rows_max]
        for name in expired:
            del records[name]
        return len(expired)


class MemoryStore:
    def __init__(self) -> None:
        self.tables = MemoryTables()
        self.journal = MemoryJournal(self.tables)
        self.merchants = MemoryMerchants(self.tables)
        self.idempotency = MemoryIdempotencyKeys(self.tables)
        self.purge = MemoryPurge(self.tables)

    async def migrate(self, partitions: int) -> int:
        await self.tables.io()
        return partitions

    def snapshot(self) -> bytes:
        """The whole journal, encoded: two runs of one seed must produce the same bytes."""
        journal = self.tables.journal
        return msgspec.json.encode({str(p): [(r.seq, r.kind, r.body) for r in rows] for p, rows in sorted(journal.items())})
