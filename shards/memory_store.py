"""An in-memory journal with the interface of `shards.store.Store`.

Only for the deterministic simulation: it performs no I/O, so a whole node
(actors, network calls, faults, crashes) can run under trio's MockClock and
replay exactly from a seed. It keeps the two properties the real store gives
the actors: a batch is all or nothing, and a journal position is written
once. Everything else (merchants, keys) is the minimum the node touches.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import trio

from shards.store import ApiKeyRow, Batch, EventRow, IdempotencyRow, JournalConflict, JournalRow, PaymentMethodRow, StoreUnavailable


class MemoryStore:
    def __init__(self) -> None:
        self.journal: dict[int, list[JournalRow]] = {}
        self.events: list[EventRow] = []
        self.payment_methods: dict[str, PaymentMethodRow] = {}
        self.idempotency: dict[tuple[str, str], IdempotencyRow] = {}
        self.api_keys: dict[bytes, ApiKeyRow] = {}
        # Set to make the next appends fail, as a database outage would.
        self.unavailable = False

    async def _io(self) -> None:
        # A checkpoint, as a real round trip would be.
        await trio.lowlevel.checkpoint()
        if self.unavailable:
            raise StoreUnavailable("memory store made unavailable")

    async def migrate(self, partitions: int) -> int:
        await self._io()
        return partitions

    async def append(
        self,
        partition: int,
        rows: Sequence[JournalRow],
        idempotency: Sequence[IdempotencyRow] = (),
        events: Sequence[EventRow] = (),
    ) -> None:
        await self.append_many([Batch(partition, rows, idempotency, events)])

    async def append_many(self, batches: Sequence[Batch]) -> None:
        """All or none, as the database does: every batch is checked before
        any is written, and nothing yields in between."""
        await self._io()
        for batch in batches:
            journal = self.journal.get(batch.partition, [])
            expected = journal[-1].seq + 1 if journal else 1
            if batch.rows and batch.rows[0].seq != expected:
                raise JournalConflict(f"partition {batch.partition}: seq {batch.rows[0].seq}, expected {expected}")
        for batch in batches:
            self.journal.setdefault(batch.partition, []).extend(batch.rows)
            self.events.extend(batch.events)
            for row in batch.idempotency:
                existing = self.idempotency.get((row.merchant_id, row.key))
                if existing is None or (existing.status_code is None and existing.fingerprint == row.fingerprint):
                    self.idempotency[(row.merchant_id, row.key)] = row

    async def journal_position(self, partition: int) -> int:
        await self._io()
        journal = self.journal.get(partition, [])
        return journal[-1].seq if journal else 0

    async def load_journal(self, partition: int) -> list[JournalRow]:
        await self._io()
        return list(self.journal.get(partition, []))

    async def insert_payment_method(self, row: PaymentMethodRow, idempotency: IdempotencyRow | None = None) -> None:
        await self._io()
        self.payment_methods[row.id] = row

    async def get_payment_method(self, payment_method_id: str) -> PaymentMethodRow | None:
        await self._io()
        return self.payment_methods.get(payment_method_id)

    async def find_api_key(self, key_hash: bytes) -> ApiKeyRow | None:
        await self._io()
        return self.api_keys.get(key_hash)

    async def find_idempotency(self, merchant_id: str, key: str, now_s: int) -> IdempotencyRow | None:
        await self._io()
        row = self.idempotency.get((merchant_id, key))
        return row if row is not None and row.expires_at_s > now_s else None

    async def purge_idempotency(self, now_s: int, rows_max: int = 10_000) -> int:
        await self._io()
        expired = [name for name, row in self.idempotency.items() if row.expires_at_s <= now_s][:rows_max]
        for name in expired:
            del self.idempotency[name]
        return len(expired)

    async def idempotency_fingerprints_after(self, after: tuple[str, str], rows_max: int) -> list[tuple[str, str, bytes]]:
        await self._io()
        names = sorted(name for name in self.idempotency if name > after)[:rows_max]
        return [(*name, self.idempotency[name].fingerprint) for name in names]

    async def replace_idempotency_fingerprints(self, rows: Sequence[tuple[str, str, bytes, bytes]]) -> int:
        await self._io()
        replaced = 0
        for merchant_id, key, old, new in rows:
            row = self.idempotency.get((merchant_id, key))
            if row is not None and row.fingerprint == old:
                self.idempotency[(merchant_id, key)] = msgspec.structs.replace(row, fingerprint=new)
                replaced += 1
        return replaced

    def snapshot(self) -> bytes:
        """The whole journal, encoded: two runs of one seed must produce the same bytes."""
        return msgspec.json.encode({str(p): [(r.seq, r.kind, r.body) for r in rows] for p, rows in sorted(self.journal.items())})
