"""An in-memory store with the shape of `store.postgres.Store`, for what it
implements: `journal`, `leases`, `merchants` (keys and payment methods),
`idempotency`, `purge`, `vault_keys` and `customers`, with the same method names and
promises.

Only for tests and the deterministic simulation: it performs no I/O, so a
whole node (actors, network calls, faults, crashes) can run under trio's
MockClock and replay exactly from a seed. It keeps the two properties the
real store gives the actors: a batch is all or nothing, and a journal
position is written once. Everything else is the minimum the node touches.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import trio

from store.batch import Batch, BatchWriter
from store.errors import Fenced, JournalConflict, StoreUnavailable
from store.leases import ClusterView, Lease, Member
from store.customers import CustomerChange, CustomerQuery, Record, Refusal, changed, owned
from store.rows import ApiKeyRow, AttachmentRow, CustomerRow, EventRow, IdempotencyRow, JournalRow, PaymentMethodRow
from store.vault_keys import ACTIVE, LEGACY_VERSION, RETIRED, RETIRING, KeyVersionRetired, KeyVersionRow, Rotated, WrapNew, key_version_of


class MemoryTables:
    """What the memory store holds, shared by its domains; tests read and
    seed it directly."""

    def __init__(self) -> None:
        self.journal: dict[int, list[JournalRow]] = {}
        self.events: list[EventRow] = []
        self.payment_methods: dict[str, PaymentMethodRow] = {}
        self.idempotency: dict[tuple[str, str], IdempotencyRow] = {}
        self.api_keys: dict[bytes, ApiKeyRow] = {}
        self.customers: dict[str, CustomerRow] = {}
        # payment method id -> its attachment to a customer
        self.attachments: dict[str, AttachmentRow] = {}
        # partition -> (owner, epoch) of its lease, for fenced batches.
        self.leases: dict[int, tuple[str, int]] = {}
        # Card key versions, as migrate leaves them: version 0 (cards sealed
        # before versions) retiring; and when each began retiring, by trio's clock.
        self.key_versions: dict[int, KeyVersionRow] = {
            LEGACY_VERSION: KeyVersionRow(LEGACY_VERSION, RETIRING, None, int(time.time()), int(time.time()))
        }
        self.retiring_at: dict[int, float] = {LEGACY_VERSION: -math.inf}
        # Set to make the next calls fail, as a database outage would.
        self.unavailable = False

    def usable(self, version: int) -> bool:
        """What the foreign key of payment_methods checks: the version
        exists and is not retired."""
        row = self.key_versions.get(version)
        return row is not None and row.state != RETIRED

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


class _LeaseRow(msgspec.Struct):
    owner: str | None = None
    epoch: int = 0
    # By trio's clock; -inf: released ('epoch' in PostgreSQL).
    expires_at: float = -math.inf


class _NodeRow(msgspec.Struct):
    url: str | None
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    leaving: bool = False
    mailbox_depth: int = 0


class MemoryLeases:
    """The partition leases, the cluster's nodes and the worker leases with
    the semantics of store/leases.py, judged by trio's clock (the MockClock
    in a simulation) where PostgreSQL uses its own. Each call is one round
    trip: a checkpoint, then no yield while it reads and writes. The
    (owner, epoch) of every owned lease is kept in `tables.leases`, which is
    what a fenced append checks."""

    def __init__(self, tables: MemoryTables) -> None:
        self._tables = tables
        self._partitions: dict[int, _LeaseRow] = {}
        self._nodes: dict[str, _NodeRow] = {}
        # name -> (owner, expires_at)
        self._workers: dict[str, tuple[str, float]] = {}
        # What nodes sign forwarded requests with: nothing here is reachable
        # from outside the process, so a fixed one does.
        self.secret = bytes(32)

    def add_partitions(self, count: int) -> None:
        """A free lease row for each partition that has none (as migrate makes them)."""
        for partition in range(count):
            self._partitions.setdefault(partition, _LeaseRow())

    async def join(self, node_id: str, url: str | None, ttl_s: float, *, host: str = "", pid: int = 0, gone: int | None = None) -> Member | None:
        await self._tables.io()
        now = trio.current_time()
        row = self._nodes.get(node_id)
        if row is not None and not (row.heartbeat_at < now - ttl_s or row.leaving or (row.host == host and row.pid == gone)):
            return self._member(node_id, row, now)
        self._nodes[node_id] = _NodeRow(url, host, pid, started_at=now, heartbeat_at=now)
        return None

    async def heartbeat(
        self, node_id: str, url: str | None, held: dict[int, int], ttl_s: float, *, mailbox_depth: int = 0, leaving: bool = False
    ) -> ClusterView:
        await self._tables.io()
        now = trio.current_time()
        row = self._nodes.get(node_id)
        if row is not None:
            row.heartbeat_at, row.url, row.leaving, row.mailbox_depth = now, url, leaving, mailbox_depth
        renewed = {}
        for partition, epoch in sorted(held.items()):
            lease = self._partitions.get(partition)
            if lease is not None and lease.owner == node_id and lease.epoch == epoch:
                lease.expires_at = now + ttl_s
                renewed[partition] = epoch
        return ClusterView(self._leases(now), self._members(now), renewed)

    async def acquire(self, node_id: str, partitions: Sequence[int], ttl_s: float, *, dead: Sequence[str] = ()) -> dict[int, int]:
        await self._tables.io()
        now = trio.current_time()
        taken = {}
        for partition in sorted(set(partitions)):
            lease = self._partitions.get(partition)
            if lease is not None and (lease.owner in (None, node_id, *dead) or lease.expires_at < now):
                lease.owner, lease.epoch, lease.expires_at = node_id, lease.epoch + 1, now + ttl_s
                self._tables.leases[partition] = (node_id, lease.epoch)
                taken[partition] = lease.epoch
        return taken

    async def release(self, node_id: str, held: dict[int, int]) -> int:
        await self._tables.io()
        released = 0
        for partition, epoch in sorted(held.items()):
            lease = self._partitions.get(partition)
            if lease is not None and lease.owner == node_id and lease.epoch == epoch:
                self._free(partition)
                released += 1
        return released

    async def leave(self, node_id: str) -> None:
        await self._tables.io()
        for partition in [p for p, lease in self._partitions.items() if lease.owner == node_id]:
            self._free(partition)
        self._nodes.pop(node_id, None)

    async def view(self) -> ClusterView:
        await self._tables.io()
        now = trio.current_time()
        return ClusterView(self._leases(now), self._members(now), {})

    async def take_worker(self, name: str, owner: str, ttl_s: float) -> bool:
        await self._tables.io()
        now = trio.current_time()
        holder = self._workers.get(name)
        if holder is not None and holder[0] != owner and holder[1] >= now:
            return False
        self._workers[name] = (owner, now + ttl_s)
        return True

    async def release_worker(self, name: str, owner: str) -> None:
        await self._tables.io()
        if self._workers.get(name, ("", 0.0))[0] == owner:
            del self._workers[name]

    async def cluster_secret(self) -> bytes:
        await self._tables.io()
        return self.secret

    def _free(self, partition: int) -> None:
        lease = self._partitions[partition]
        lease.owner, lease.expires_at = None, -math.inf
        self._tables.leases.pop(partition, None)

    def _leases(self, now: float) -> list[Lease]:
        # Clamped as the SQL clamps a released lease's 'epoch' expiry.
        return [Lease(p, lease.owner, lease.epoch, max(lease.expires_at - now, -1e9)) for p, lease in sorted(self._partitions.items())]

    def _members(self, now: float) -> list[Member]:
        return [self._member(node_id, row, now) for node_id, row in sorted(self._nodes.items())]

    @staticmethod
    def _member(node_id: str, row: _NodeRow, now: float) -> Member:
        return Member(node_id, row.url, now - row.heartbeat_at, row.leaving, row.mailbox_depth, row.started_at, row.host, row.pid)


class MemoryMerchants:
    """Keys and payment methods; merchants themselves are not kept."""

    def __init__(self, tables: MemoryTables) -> None:
        self._tables = tables

    async def find_api_key(self, key_hash: bytes) -> ApiKeyRow | None:
        await self._tables.io()
        return self._tables.api_keys.get(key_hash)

    async def insert_payment_method(self, row: PaymentMethodRow, idempotency: IdempotencyRow | None = None) -> None:
        await self._tables.io()
        if not self._tables.usable(key_version_of(row.sealed_number)):
            raise KeyVersionRetired(f"card key version {key_version_of(row.sealed_number)} is retired")
        self._tables.payment_methods[row.id] = row

    async def get_payment_method(self, payment_method_id: str) -> PaymentMethodRow | None:
        await self._tables.io()
        return self._tables.payment_methods.get(payment_method_id)


class MemoryCustomers:
    """Customers and their saved payment methods with the semantics of
    store/customers.py (every call one round trip, no yield within it)."""

    def __init__(self, tables: MemoryTables) -> None:
        self._tables = tables

    def _record(self, idempotency: IdempotencyRow | None) -> None:
        # As IDEMPOTENCY_UPSERT: a first record, or the answer to a started one.
        if idempotency is not None:
            name = (idempotency.merchant_id, idempotency.key)
            existing = self._tables.idempotency.get(name)
            if existing is None or (existing.status_code is None and existing.fingerprint == idempotency.fingerprint):
                self._tables.idempotency[name] = idempotency

    async def insert_customer(self, row: CustomerRow, idempotency: IdempotencyRow | None = None) -> None:
        await self._tables.io()
        assert row.id not in self._tables.customers, row.id
        self._record(idempotency)
        self._tables.customers[row.id] = row

    async def get_customer(self, customer_id: str) -> CustomerRow | None:
        await self._tables.io()
        return self._tables.customers.get(customer_id)

    async def find_customer(self, merchant_id: str, livemode: bool, customer_id: str) -> CustomerRow | None:
        return owned(await self.get_customer(customer_id), merchant_id, livemode)

    async def update_customer(
        self, merchant_id: str, livemode: bool, customer_id: str, change: CustomerChange, record: Record | None = None
    ) -> tuple[Refusal | None, CustomerRow | None]:
        await self._tables.io()
        row = owned(self._tables.customers.get(customer_id), merchant_id, livemode)
        if row is None:
            return Refusal.customer_missing, None
        if change.default_payment_method:
            attached = self._tables.attachments.get(change.default_payment_method)
            if attached is None or attached.customer_id != customer_id or attached.detached_s is not None:
                return Refusal.default_not_attached, None
        row = changed(row, change)
        self._tables.customers[row.id] = row
        self._record(None if record is None else record(row))
        return None, row

    async def delete_customer(
        self, merchant_id: str, livemode: bool, customer_id: str, at_s: int, record: Record | None = None
    ) -> CustomerRow | None:
        await self._tables.io()
        row = owned(self._tables.customers.get(customer_id), merchant_id, livemode)
        if row is None:
            return None
        row = msgspec.structs.replace(row, deleted=True, default_payment_method=None)
        self._tables.customers[row.id] = row
        for method_id, attached in list(self._tables.attachments.items()):
            if attached.customer_id == customer_id and attached.detached_s is None:
                self._tables.attachments[method_id] = msgspec.structs.replace(attached, detached_s=at_s)
        self._record(None if record is None else record(row))
        return row

    async def list_customers(self, query: CustomerQuery) -> tuple[list[CustomerRow], bool]:
        await self._tables.io()
        rows = [
            row
            for row in self._tables.customers.values()
            if owned(row, query.merchant_id, query.livemode) is not None and (query.email is None or row.email == query.email)
        ]
        return _page(rows, query, lambda row: (row.created_s, row.id))

    async def attach_payment_method(
        self, merchant_id: str, livemode: bool, payment_method_id: str, customer_id: str, at_s: int, record: Record | None = None
    ) -> tuple[Refusal | None, AttachmentRow | None]:
        await self._tables.io()
        if owned(self._tables.customers.get(customer_id), merchant_id, livemode) is None:
            return Refusal.customer_missing, None
        row = self._tables.attachments.get(payment_method_id)
        if row is not None and row.detached_s is not None:
            return Refusal.detached, row
        if row is not None and row.customer_id != customer_id:
            return Refusal.attached_elsewhere, row
        if row is None:
            row = AttachmentRow(payment_method_id, customer_id, merchant_id, livemode, at_s)
            self._tables.attachments[payment_method_id] = row
        self._record(None if record is None else record(row))
        return None, row

    async def detach_payment_method(
        self, payment_method_id: str, at_s: int, record: Record | None = None
    ) -> tuple[Refusal | None, AttachmentRow | None]:
        await self._tables.io()
        row = self._tables.attachments.get(payment_method_id)
        if row is None or row.detached_s is not None:
            return Refusal.not_attached, row
        row = msgspec.structs.replace(row, detached_s=at_s)
        self._tables.attachments[payment_method_id] = row
        customer = self._tables.customers.get(row.customer_id)
        if customer is not None and customer.default_payment_method == payment_method_id:
            self._tables.customers[customer.id] = msgspec.structs.replace(customer, default_payment_method=None)
        self._record(None if record is None else record(row))
        return None, row

    async def attachment(self, payment_method_id: str) -> AttachmentRow | None:
        await self._tables.io()
        return self._tables.attachments.get(payment_method_id)

    async def customer_payment_methods(self, customer_id: str, query: CustomerQuery) -> tuple[list[PaymentMethodRow], bool]:
        await self._tables.io()
        methods = self._tables.payment_methods
        rows = [
            methods[row.payment_method_id]
            for row in self._tables.attachments.values()
            if row.customer_id == customer_id and row.detached_s is None and row.payment_method_id in methods
        ]
        return _page(rows, query, lambda row: (row.created_s, row.id))


def _page(rows: list[Any], query: CustomerQuery, key: Callable[[Any], tuple[int, str]]) -> tuple[list[Any], bool]:
    """A keyset page as store/customers.py makes it in SQL."""
    chosen = [
        row
        for row in rows
        if (query.created_from_s is None or key(row)[0] >= query.created_from_s)
        and (query.created_until_s is None or key(row)[0] <= query.created_until_s)
        and (query.after is None or key(row) < query.after)
        and (query.before is None or key(row) > query.before)
    ]
    before = query.before is not None
    chosen.sort(key=key, reverse=not before)
    has_more = len(chosen) > query.limit
    chosen = chosen[: query.limit]
    return (chosen[::-1] if before else chosen), has_more


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


class MemoryVaultKeys:
    """The card key versions with the semantics of store/vault_keys.py; the
    retiring time is judged by trio's clock, where PostgreSQL uses its own."""

    def __init__(self, tables: MemoryTables) -> None:
        self._tables = tables

    async def ready(self) -> bool:
        await self._tables.io()
        return True

    async def live(self) -> list[KeyVersionRow]:
        await self._tables.io()
        return [row for _, row in sorted(self._tables.key_versions.items()) if row.state != RETIRED]

    async def status(self) -> list[KeyVersionRow]:
        await self._tables.io()
        counts: dict[int, int] = {}
        for method in self._tables.payment_methods.values():
            version = key_version_of(method.sealed_number)
            counts[version] = counts.get(version, 0) + 1
        return [msgspec.structs.replace(row, cards=counts.get(version, 0)) for version, row in sorted(self._tables.key_versions.items())]

    async def ensure_active(self, wrap: WrapNew, live_max: int) -> Rotated:
        return await self._make_active(wrap, False, live_max)

    async def rotate(self, wrap: WrapNew, live_max: int) -> Rotated:
        return await self._make_active(wrap, True, live_max)

    async def _make_active(self, wrap: WrapNew, rotate: bool, live_max: int) -> Rotated:
        await self._tables.io()
        versions = self._tables.key_versions
        active = next((version for version, row in versions.items() if row.state == ACTIVE), None)
        live = sum(row.state != RETIRED for row in versions.values())
        if (active is not None and not rotate) or live >= live_max:
            return Rotated(active, False, live)
        version, now_s = max(versions) + 1, int(time.time())
        if active is not None:
            versions[active] = msgspec.structs.replace(versions[active], state=RETIRING, retiring_s=now_s)
            self._tables.retiring_at[active] = trio.current_time()
        versions[version] = KeyVersionRow(version, ACTIVE, wrap(version), now_s)
        return Rotated(version, True, live + 1)

    async def legacy_sample(self) -> tuple[str, bytes] | None:
        await self._tables.io()
        return next(((row.id, row.sealed_number) for row in self._sorted() if key_version_of(row.sealed_number) == LEGACY_VERSION), None)

    async def cards_under(self, version: int, rows_max: int) -> list[tuple[str, bytes]]:
        await self._tables.io()
        return [(row.id, row.sealed_number) for row in self._sorted() if key_version_of(row.sealed_number) == version][:rows_max]

    async def replace_sealed(self, rows: Sequence[tuple[str, bytes, bytes]]) -> int:
        await self._tables.io()
        methods = self._tables.payment_methods
        if not all(self._tables.usable(key_version_of(new)) for _, _, new in rows):
            raise KeyVersionRetired("the version the cards were re-wrapped under was retired meanwhile")
        replaced = 0
        for payment_method_id, old, new in rows:
            row = methods.get(payment_method_id)
            if row is not None and row.sealed_number == old:
                methods[payment_method_id] = msgspec.structs.replace(row, sealed_number=new)
                replaced += 1
        return replaced

    async def retire(self, version: int, retiring_for_s: float) -> bool:
        await self._tables.io()
        row = self._tables.key_versions.get(version)
        if row is None or row.state != RETIRING or self._tables.retiring_at[version] > trio.current_time() - retiring_for_s:
            return False
        if any(key_version_of(method.sealed_number) == version for method in self._tables.payment_methods.values()):
            return False
        self._tables.key_versions[version] = msgspec.structs.replace(row, state=RETIRED, wrapped_key=None, retired_s=int(time.time()))
        return True

    def _sorted(self) -> list[PaymentMethodRow]:
        return [row for _, row in sorted(self._tables.payment_methods.items())]


class MemoryStore:
    def __init__(self) -> None:
        self.tables = MemoryTables()
        self.journal = MemoryJournal(self.tables)
        self.leases = MemoryLeases(self.tables)
        self.merchants = MemoryMerchants(self.tables)
        self.idempotency = MemoryIdempotencyKeys(self.tables)
        self.purge = MemoryPurge(self.tables)
        self.vault_keys = MemoryVaultKeys(self.tables)
        self.customers = MemoryCustomers(self.tables)
        self.partitions: int | None = None

    async def migrate(self, partitions: int) -> int:
        """As `Store.migrate`: the first call fixes the partition count,
        which every call returns, and makes the partitions' lease rows."""
        await self.tables.io()
        if self.partitions is None:
            self.partitions = partitions
        self.leases.add_partitions(self.partitions)
        return self.partitions

    def snapshot(self) -> bytes:
        """The whole journal, encoded: two runs of one seed must produce the same bytes."""
        journal = self.tables.journal
        return msgspec.json.encode({str(p): [(r.seq, r.kind, r.body) for r in rows] for p, rows in sorted(journal.items())})
