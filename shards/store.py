"""The journal store: the one module that knows asyncpg (and so asyncio) exists.

Everything here is called from trio. Each public method makes exactly one
bridged call through trio-asyncio, doing all of its database round trips on
the asyncio side, because a bridged call costs far more than a native await
(DESIGN section 3: bridge per batch, not per row).

Library errors are translated at this edge into `StoreUnavailable` (the
database cannot be reached or refused the transaction; the caller may retry
and must not acknowledge anything) or `JournalConflict` (someone else wrote
the same journal position: a second writer for a partition, which is a bug).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg
import msgspec
import structlog
import trio_asyncio

from engine.ledger import Transfer

log = structlog.get_logger("shards.store")

SCHEMA_VERSION = 1

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS settings (
    key text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE IF NOT EXISTS merchants (
    id text PRIMARY KEY,
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now()
);
-- Fee terms per merchant: a percentage in basis points plus a fixed part.
ALTER TABLE merchants ADD COLUMN IF NOT EXISTS fee_basis_points integer NOT NULL DEFAULT 290
    CHECK (fee_basis_points BETWEEN 0 AND 10000);
ALTER TABLE merchants ADD COLUMN IF NOT EXISTS fee_fixed_minor integer NOT NULL DEFAULT 30
    CHECK (fee_fixed_minor BETWEEN 0 AND 100000);
-- Rate limits (a token bucket per key) and request signing, per merchant.
ALTER TABLE merchants ADD COLUMN IF NOT EXISTS rate_limit_per_s integer NOT NULL DEFAULT 100
    CHECK (rate_limit_per_s BETWEEN 1 AND 100000);
ALTER TABLE merchants ADD COLUMN IF NOT EXISTS rate_limit_burst integer NOT NULL DEFAULT 200
    CHECK (rate_limit_burst BETWEEN 1 AND 1000000);
ALTER TABLE merchants ADD COLUMN IF NOT EXISTS signing_secret_sealed bytea;
ALTER TABLE merchants ADD COLUMN IF NOT EXISTS require_signed_requests boolean NOT NULL DEFAULT false;
CREATE TABLE IF NOT EXISTS api_keys (
    key_hash bytea PRIMARY KEY,
    merchant_id text NOT NULL REFERENCES merchants (id),
    kind text NOT NULL CHECK (kind IN ('secret', 'publishable')),
    livemode boolean NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz
);
CREATE TABLE IF NOT EXISTS payment_methods (
    id text PRIMARY KEY,
    merchant_id text NOT NULL REFERENCES merchants (id),
    livemode boolean NOT NULL,
    brand text NOT NULL,
    last4 char(4) NOT NULL,
    exp_month smallint NOT NULL,
    exp_year smallint NOT NULL,
    fingerprint text NOT NULL,
    sealed_number bytea NOT NULL,
    created_s bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS journal (
    partition smallint NOT NULL,
    seq bigint NOT NULL,
    entity_id text NOT NULL,
    kind text NOT NULL,
    body jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (partition, seq)
);
CREATE INDEX IF NOT EXISTS journal_entity ON journal (entity_id);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    merchant_id text NOT NULL,
    key text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    fingerprint bytea NOT NULL,
    status_code smallint,          -- NULL while the first request is still running
    body bytea,
    object_id text,                -- what the request acts on, for a record left running by a crash
    expires_at_s bigint NOT NULL,
    PRIMARY KEY (merchant_id, key)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_expiry ON idempotency_keys (expires_at_s);
CREATE TABLE IF NOT EXISTS postings (
    id text PRIMARY KEY,
    partition smallint NOT NULL,
    journal_seq bigint NOT NULL,
    intent_id text NOT NULL,
    debit_account_id text NOT NULL,
    credit_account_id text NOT NULL,
    amount bigint NOT NULL CHECK (amount >= 0),
    currency text NOT NULL,
    kind text NOT NULL,
    code text NOT NULL,
    pending_id text,
    created_s bigint NOT NULL,
    available_on_s bigint
);
-- Stripe-shaped events, written in the same transaction as the journal rows
-- they come from. Those past a partition's outbox cursor are the outbox: the
-- relay publishes them to the partition's stream, then moves the cursor.
CREATE TABLE IF NOT EXISTS events (
    id text PRIMARY KEY,
    partition smallint NOT NULL,
    seq bigint NOT NULL,           -- the journal row that led to it
    idx smallint NOT NULL,         -- its place among that row's events
    merchant_id text NOT NULL,
    livemode boolean NOT NULL,
    type text NOT NULL,
    intent_id text NOT NULL,
    object_id text NOT NULL,       -- what data.object shows: the intent, a refund, a dispute
    created_s bigint NOT NULL,
    intent bytea NOT NULL,         -- the intent as this event left it (msgspec JSON)
    UNIQUE (partition, seq, idx)
);
CREATE INDEX IF NOT EXISTS events_merchant ON events (merchant_id, livemode, created_s DESC, id DESC);
CREATE INDEX IF NOT EXISTS events_created ON events (created_s);
CREATE TABLE IF NOT EXISTS outbox_cursor (
    partition smallint PRIMARY KEY,
    seq bigint NOT NULL,
    idx smallint NOT NULL
);
-- How far the webhook ingest has queued each partition's events. The relay
-- starts again from here after a restart or a Redis failure, so entries a
-- Redis restart lost are published again (the ingest ignores repeats).
CREATE TABLE IF NOT EXISTS stream_queued (
    partition smallint PRIMARY KEY,
    seq bigint NOT NULL,
    idx smallint NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    id text PRIMARY KEY,
    merchant_id text NOT NULL REFERENCES merchants (id),
    livemode boolean NOT NULL,
    url text NOT NULL,
    enabled_events text[] NOT NULL,
    description text,
    metadata jsonb NOT NULL DEFAULT '{}',
    status text NOT NULL DEFAULT 'enabled' CHECK (status IN ('enabled', 'disabled')),
    secret_sealed bytea NOT NULL,
    created_s bigint NOT NULL,
    deleted boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS webhook_endpoints_merchant ON webhook_endpoints (merchant_id, livemode, created_s DESC);
-- One row per (endpoint, event): pending until delivered or given up on (dead).
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    endpoint_id text NOT NULL,
    event_id text NOT NULL,
    partition smallint NOT NULL,
    seq bigint NOT NULL,
    idx smallint NOT NULL,
    intent_id text NOT NULL,
    status text NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_ms bigint NOT NULL,
    updated_s bigint NOT NULL,
    PRIMARY KEY (endpoint_id, event_id)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_pending ON webhook_deliveries (endpoint_id, partition, seq, idx)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_event ON webhook_deliveries (event_id);
-- Every try, kept for the merchant and the operator.
CREATE TABLE IF NOT EXISTS webhook_attempts (
    endpoint_id text NOT NULL,
    event_id text NOT NULL,
    attempt integer NOT NULL,
    at_ms bigint NOT NULL,
    status_code integer,
    latency_ms integer NOT NULL,
    error text,
    PRIMARY KEY (endpoint_id, event_id, attempt)
);
"""

# Tables of the audit archive (shards/audit.py), created with the rest.
AUDIT_SCHEMA_SQL = """
-- Every entry of the archive's manifest, as the exact line the archive holds,
-- so that rewriting both a segment and the manifest is still caught.
CREATE TABLE IF NOT EXISTS audit_manifest (
    sequence bigint PRIMARY KEY CHECK (sequence >= 1),
    partition smallint NOT NULL,
    first_seq bigint NOT NULL CHECK (first_seq >= 1),
    last_seq bigint NOT NULL CHECK (last_seq >= first_seq),
    sha256 text NOT NULL,
    prev_hash text NOT NULL,
    hash text NOT NULL UNIQUE,
    entry text NOT NULL,
    mirrored_at timestamptz NOT NULL DEFAULT now()
);
-- How far each partition's journal is archived. Moved in the transaction
-- that mirrors the entry, which is written only once the segment and the
-- manifest line are durable in the archive.
CREATE TABLE IF NOT EXISTS audit_positions (
    partition smallint PRIMARY KEY,
    seq bigint NOT NULL,
    sequence bigint NOT NULL       -- the manifest entry that took it there
);
-- One exporter at a time, whichever node it runs on.
CREATE TABLE IF NOT EXISTS audit_lease (
    name text PRIMARY KEY,
    holder text NOT NULL,
    expires_at timestamptz NOT NULL
);
"""


class JournalRecord(msgspec.Struct, frozen=True):
    """A journal row as the audit archive keeps it: the body as PostgreSQL
    prints the jsonb, the time as microseconds since the epoch."""

    partition: int
    seq: int
    entity_id: str
    kind: str
    body: str
    recorded_at_us: int


class AuditEntryRow(msgspec.Struct, frozen=True):
    """One manifest entry for the database mirror; `entry` is its exact line."""

    sequence: int
    partition: int
    first_seq: int
    last_seq: int
    sha256: str
    prev_hash: str
    hash: str
    entry: str


class AuditState(msgspec.Struct, frozen=True):
    partitions: int
    positions: dict[int, int]      # partition -> last archived journal seq
    head_sequence: int             # 0 before the first export
    head_entry: str | None


AUDIT_JOURNAL_SELECT = (
    "SELECT partition, seq, entity_id, kind, body::text AS body,"
    " (extract(epoch FROM recorded_at) * 1000000)::bigint AS recorded_at_us FROM journal"
)
AUDIT_LEASE_NAME = "export"


# A record is written once when its request starts and completed once; it is
# never overwritten after that, whatever a confused caller sends.
IDEMPOTENCY_UPSERT = """
INSERT INTO idempotency_keys (merchant_id, key, fingerprint, status_code, body, object_id, expires_at_s)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (merchant_id, key) DO UPDATE
    SET status_code = EXCLUDED.status_code, body = EXCLUDED.body
    WHERE idempotency_keys.status_code IS NULL AND idempotency_keys.fingerprint = EXCLUDED.fingerprint
"""

# Batches in one statement (one round trip, one implicit transaction, one
# fsync): each table's rows arrive as parallel arrays and are inserted by
# data-modifying CTEs, which PostgreSQL runs as one atomic statement. The
# batches may come from several partitions (a node's group commit).
APPEND_SQL = """
WITH journal_rows AS (
    INSERT INTO journal (partition, seq, entity_id, kind, body)
    SELECT partition, seq, entity_id, kind, body::jsonb
    FROM unnest($1::smallint[], $2::bigint[], $3::text[], $4::text[], $5::text[]) AS r (partition, seq, entity_id, kind, body)
), posting_rows AS (
    INSERT INTO postings (id, partition, journal_seq, intent_id, debit_account_id, credit_account_id, amount,
                          currency, kind, code, pending_id, created_s, available_on_s)
    SELECT * FROM unnest($6::text[], $7::smallint[], $8::bigint[], $9::text[], $10::text[], $11::text[], $12::bigint[],
                         $13::text[], $14::text[], $15::text[], $16::text[], $17::bigint[], $18::bigint[])
), event_rows AS (
    INSERT INTO events (id, partition, seq, idx, merchant_id, livemode, type, intent_id, object_id, created_s, intent)
    SELECT * FROM unnest($19::text[], $20::smallint[], $21::bigint[], $22::smallint[], $23::text[], $24::boolean[],
                         $25::text[], $26::text[], $27::text[], $28::bigint[], $29::bytea[])
)
INSERT INTO idempotency_keys (merchant_id, key, fingerprint, status_code, body, object_id, expires_at_s)
SELECT * FROM unnest($30::text[], $31::text[], $32::bytea[], $33::smallint[], $34::bytea[], $35::text[], $36::bigint[])
ON CONFLICT (merchant_id, key) DO UPDATE
    SET status_code = EXCLUDED.status_code, body = EXCLUDED.body
    WHERE idempotency_keys.status_code IS NULL AND idempotency_keys.fingerprint = EXCLUDED.fingerprint
"""


class Batch(msgspec.Struct, frozen=True):
    """What one actor turn writes: its journal rows (with their postings),
    the events they raise and the idempotency records they settle."""

    partition: int
    rows: Sequence[JournalRow]
    idempotency: Sequence[IdempotencyRow] = ()
    events: Sequence[EventRow] = ()


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows to one list per column (what unnest takes back apart)."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows)]


def append_arguments(batches: Sequence[Batch]) -> list[Any]:
    journal = _columns(
        [(batch.partition, row.seq, row.entity_id, row.kind, row.body.decode()) for batch in batches for row in batch.rows], 5
    )
    postings = _columns(
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
    raised = _columns(
        [
            (e.id, e.partition, e.seq, e.idx, e.merchant_id, e.livemode, e.type, e.intent_id, e.object_id, e.created_s, e.intent)
            for batch in batches
            for e in batch.events
        ],
        11,
    )
    # One row per key: a statement may not upsert the same row twice.
    latest = {(row.merchant_id, row.key): msgspec.structs.astuple(row) for batch in batches for row in batch.idempotency}
    keys = _columns(list(latest.values()), 7)
    return [*journal, *postings, *raised, *keys]


POSTING_COLUMNS = (
    "id", "partition", "journal_seq", "intent_id", "debit_account_id", "credit_account_id", "amount",
    "currency", "kind", "code", "pending_id", "created_s", "available_on_s",
)


class StoreError(Exception):
    """Base of the store's own exceptions."""


class StoreUnavailable(StoreError):
    """The database could not be reached or did not commit. Nothing was acknowledged."""


class JournalConflict(StoreError):
    """A journal position was already taken: two writers for one partition."""


class SchemaMismatch(StoreError):
    """The database was created with settings this node cannot serve."""


class PaymentMethodRow(msgspec.Struct, frozen=True):
    id: str
    merchant_id: str
    livemode: bool
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    fingerprint: str
    sealed_number: bytes
    created_s: int


class MerchantTerms(msgspec.Struct, frozen=True):
    """What an operator sets for a merchant when creating it."""

    fee_basis_points: int = 290
    fee_fixed_minor: int = 30
    rate_limit_per_s: int = 100
    rate_limit_burst: int = 200
    signing_secret_sealed: bytes | None = None
    require_signed_requests: bool = False


class ApiKeyRow(MerchantTerms, frozen=True, kw_only=True):
    """A working key, with the terms of the merchant it belongs to."""

    merchant_id: str
    kind: str
    livemode: bool
    expires_at_s: int | None = None


class IdempotencyRow(msgspec.Struct, frozen=True):
    """The first response to a request made with an idempotency key, or the
    mark that it started (status_code None) while its answer is awaited."""

    merchant_id: str
    key: str
    fingerprint: bytes
    status_code: int | None
    body: bytes | None
    object_id: str | None
    expires_at_s: int


class JournalRow(msgspec.Struct, frozen=True):
    seq: int
    entity_id: str
    kind: str
    body: bytes
    # Ledger transfers the event makes; written to `postings` in the same
    # transaction so SQL can check the books without decoding events.
    transfers: tuple[Transfer, ...] = ()


class EventRow(msgspec.Struct, frozen=True):
    """A Stripe-shaped event as stored: the intent snapshot is rendered into
    `data.object` by the gateway, on read and on delivery."""

    id: str
    partition: int
    seq: int
    idx: int
    merchant_id: str
    livemode: bool
    type: str
    intent_id: str
    object_id: str
    created_s: int
    intent: bytes


EVENT_COLUMNS = tuple(EventRow.__struct_fields__)
EVENT_SELECT = "SELECT " + ", ".join(EVENT_COLUMNS) + " FROM events"


class EventQuery(msgspec.Struct, frozen=True):
    merchant_id: str
    livemode: bool
    since_s: int
    limit: int
    types: tuple[str, ...] = ()  # SQL LIKE patterns
    after: tuple[int, str] | None = None  # (created_s, id) of the last row seen
    before: tuple[int, str] | None = None
    until_s: int | None = None
    # True: only events delivered to every endpoint; False: only those still
    # pending or given up on somewhere (the dead-letter list is among them).
    delivery_success: bool | None = None


class WebhookEndpointRow(msgspec.Struct, frozen=True):
    id: str
    merchant_id: str
    livemode: bool
    url: str
    enabled_events: tuple[str, ...]
    description: str | None
    metadata: dict[str, str]
    status: str
    secret_sealed: bytes
    created_s: int


WEBHOOK_ENDPOINT_COLUMNS = tuple(WebhookEndpointRow.__struct_fields__)
WEBHOOK_ENDPOINT_SELECT = "SELECT " + ", ".join(WEBHOOK_ENDPOINT_COLUMNS) + " FROM webhook_endpoints"


def _endpoint_values(row: WebhookEndpointRow) -> tuple[Any, ...]:
    values = list(msgspec.structs.astuple(row))
    values[4] = list(row.enabled_events)
    values[6] = msgspec.json.encode(row.metadata).decode()
    return tuple(values)


def _endpoint_row(record: Any) -> WebhookEndpointRow:
    values = dict(record)
    values["enabled_events"] = tuple(values["enabled_events"])
    values["metadata"] = msgspec.json.decode(values["metadata"])
    return WebhookEndpointRow(**values)


class DeliveryRow(msgspec.Struct, frozen=True):
    """One event on its way to one endpoint."""

    endpoint_id: str
    event_id: str
    partition: int
    seq: int
    idx: int
    intent_id: str
    status: str  # pending, delivered, dead
    attempts: int
    next_attempt_ms: int
    updated_s: int


DELIVERY_COLUMNS = tuple(DeliveryRow.__struct_fields__)
DELIVERY_SELECT = "SELECT " + ", ".join(DELIVERY_COLUMNS) + " FROM webhook_deliveries"


class DeliveryAttemptRow(msgspec.Struct, frozen=True):
    endpoint_id: str
    event_id: str
    attempt: int
    at_ms: int
    status_code: int | None
    latency_ms: int
    error: str | None


T = TypeVar("T")

_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    # A connection broken mid-operation (a restart of the server) can be
    # left in a state asyncpg refuses to use; treat it as an outage.
    asyncpg.exceptions.InternalClientError,
)


def _log_unretrieved_error(loop: Any, context: dict[str, Any]) -> None:
    error = context.get("exception")
    log.error(
        "asyncio_error_unhandled",
        message=str(context.get("message", ""))[:500],
        error=type(error).__name__ if error is not None else None,
        detail=str(error)[:500] if error is not None else None,
    )


async def _no_reset(connection: asyncpg.Connection) -> None:
    return None


class Store:
    """A pool of connections to one database, used from trio."""

    def __init__(self, pool: asyncpg.Pool, loop: Any) -> None:
        self._pool = pool
        self._loop = loop

    @classmethod
    async def open(cls, dsn: str, *, connections_max: int = 20) -> Store:
        """Connect. Must be called inside `trio_asyncio.open_loop()`."""
        loop = trio_asyncio.current_loop.get()
        if loop is None:
            raise RuntimeError("Store.open needs a running trio_asyncio loop")
        # An exception on a future nobody awaited (asyncpg's connection set-up
        # leaves some behind) reaches the loop's exception handler, which
        # trio-asyncio makes fatal to the whole process. Log those instead.
        loop.set_exception_handler(_log_unretrieved_error)
        create = functools.partial(
            asyncpg.create_pool,
            dsn,
            # Open every connection up front: actors commit concurrently, and
            # opening connections under load only adds latency.
            min_size=connections_max,
            max_size=connections_max,
            command_timeout=30,
            # The server-side statement cache is per connection; keep it.
            statement_cache_size=256,
            # No session state is ever set (only transaction-scoped locks),
            # so a released connection needs no RESET ALL round trip; an
            # open transaction is still rolled back by asyncpg itself.
            reset=_no_reset,
        )
        try:
            pool = await trio_asyncio.aio_as_trio(create, loop=loop)()
        except _UNAVAILABLE as error:
            raise StoreUnavailable(f"cannot connect to the database: {type(error).__name__}") from error
        return cls(pool, loop)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection (asyncio side). One that failed is terminated
        rather than returned, so the pool opens a fresh one instead of handing
        out a connection stuck half-way through an operation."""
        async with self._pool.acquire() as connection:
            try:
                yield connection
            except BaseException:
                connection.terminate()
                raise

    async def close(self) -> None:
        await self._call(self._pool.close)

    async def _call(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        try:
            return await trio_asyncio.aio_as_trio(function, loop=self._loop)(*args)
        except asyncpg.exceptions.UniqueViolationError as error:
            if error.table_name in ("journal", "postings"):
                raise JournalConflict(str(error)) from error
            raise
        except _UNAVAILABLE as error:
            raise StoreUnavailable(f"database unavailable: {type(error).__name__}") from error

    # ------------------------------------------------------------ schema

    async def migrate(self, partitions: int) -> int:
        """Create the schema; fix the partition count on first use.

        Returns the partition count the database was created with, which wins
        over `partitions` (ids already issued encode it).
        """

        async def run() -> int:
            async with self._connection() as connection, connection.transaction():
                await connection.execute("SELECT pg_advisory_xact_lock(727274)")
                await connection.execute(SCHEMA_SQL + AUDIT_SCHEMA_SQL)
                await connection.execute(
                    "INSERT INTO settings (key, value) VALUES ('schema_version', $1),"
                    " ('partitions', $2) ON CONFLICT (key) DO NOTHING",
                    str(SCHEMA_VERSION),
                    str(partitions),
                )
                rows = await connection.fetch("SELECT key, value FROM settings")
            settings = {row["key"]: row["value"] for row in rows}
            if int(settings["schema_version"]) != SCHEMA_VERSION:
                raise SchemaMismatch(f"database schema version {settings['schema_version']}, code {SCHEMA_VERSION}")
            return int(settings["partitions"])

        return await self._call(run)

    # ----------------------------------------------------------- journal

    async def append(
        self,
        partition: int,
        rows: Sequence[JournalRow],
        idempotency: Sequence[IdempotencyRow] = (),
        events: Sequence[EventRow] = (),
    ) -> None:
        """Write one batch of journal rows, their postings, the events they
        raise (the outbox) and the idempotency records of the requests behind
        them, in one transaction (one fsync)."""
        await self.append_many([Batch(partition, rows, idempotency, events)])

    async def append_many(self, batches: Sequence[Batch]) -> None:
        """Write the batches of several partitions at once: all or none."""
        arguments = append_arguments(batches)

        async def run() -> None:
            async with self._connection() as connection:
                await connection.execute(APPEND_SQL, *arguments)

        await self._call(run)

    async def journal_position(self, partition: int) -> int:
        """The last sequence number written to a partition's journal (0 if none)."""

        async def run() -> int:
            async with self._connection() as connection:
                return await connection.fetchval("SELECT coalesce(max(seq), 0) FROM journal WHERE partition = $1", partition)

        return await self._call(run)

    async def load_journal(self, partition: int) -> list[JournalRow]:
        async def run() -> list[JournalRow]:
            async with self._connection() as connection:
                rows = await connection.fetch(
                    "SELECT seq, entity_id, kind, body::text AS body FROM journal"
                    " WHERE partition = $1 ORDER BY seq",
                    partition,
                )
            return [JournalRow(row["seq"], row["entity_id"], row["kind"], row["body"].encode()) for row in rows]

        return await self._call(run)

    # ------------------------------------------- events, outbox, webhooks

    async def outbox_cursor(self, partition: int) -> tuple[int, int]:
        """The (seq, idx) of the last event of a partition known to be on the stream."""

        async def run() -> tuple[int, int]:
            async with self._connection() as connection:
                row = await connection.fetchrow("SELECT seq, idx FROM outbox_cursor WHERE partition = $1", partition)
            return (0, -1) if row is None else (row["seq"], row["idx"])

        return await self._call(run)

    async def move_outbox_cursor(self, partition: int, cursor: tuple[int, int]) -> None:
        async def run() -> None:
            async with self._connection() as connection:
                await connection.execute(
                    "INSERT INTO outbox_cursor (partition, seq, idx) VALUES ($1, $2, $3)"
                    " ON CONFLICT (partition) DO UPDATE SET seq = EXCLUDED.seq, idx = EXCLUDED.idx"
                    " WHERE (outbox_cursor.seq, outbox_cursor.idx) < (EXCLUDED.seq, EXCLUDED.idx)",
                    partition,
                    *cursor,
                )

        await self._call(run)

    async def outbox_after(self, partition: int, cursor: tuple[int, int], rows_max: int) -> list[EventRow]:
        """The outbox: a partition's events after `cursor`, in journal order."""

        async def run() -> list[EventRow]:
            async with self._connection() as connection:
                rows = await connection.fetch(
                    EVENT_SELECT + " WHERE partition = $1 AND (seq, idx) > ($2, $3) ORDER BY seq, idx LIMIT $4",
                    partition,
                    cursor[0],
                    cursor[1],
                    rows_max,
                )
            return [EventRow(*row) for row in rows]

        return await self._call(run)

    async def get_event(self, event_id: str) -> EventRow | None:
        async def run() -> EventRow | None:
            async with self._connection() as connection:
                row = await connection.fetchrow(EVENT_SELECT + " WHERE id = $1", event_id)
            return None if row is None else EventRow(*row)

        return await self._call(run)

    async def get_events(self, event_ids: Sequence[str]) -> list[EventRow]:
        async def run() -> list[EventRow]:
            async with self._connection() as connection:
                rows = await connection.fetch(EVENT_SELECT + " WHERE id = ANY($1::text[])", list(event_ids))
            return [EventRow(*row) for row in rows]

        return await self._call(run)

    async def list_events(self, query: EventQuery) -> list[EventRow]:
        """A merchant's events, newest first, by (created, id) keyset paging."""
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

        async def run() -> list[EventRow]:
            async with self._connection() as connection:
                rows = await connection.fetch(sql, *args)
            found = [EventRow(*row) for row in rows]
            return found if order == "DESC" else found[::-1]

        return await self._call(run)

    async def insert_webhook_endpoint(self, row: WebhookEndpointRow) -> bool:
        """False when the id is taken (by a deleted endpoint, say)."""

        async def run() -> bool:
            async with self._connection() as connection:
                status = await connection.execute(
                    "INSERT INTO webhook_endpoints (" + ", ".join(WEBHOOK_ENDPOINT_COLUMNS) + ")"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
                    *_endpoint_values(row),
                )
            return status.endswith(" 1")

        return await self._call(run)

    async def get_webhook_endpoint(self, endpoint_id: str) -> WebhookEndpointRow | None:
        async def run() -> WebhookEndpointRow | None:
            async with self._connection() as connection:
                row = await connection.fetchrow(WEBHOOK_ENDPOINT_SELECT + " WHERE id = $1 AND NOT deleted", endpoint_id)
            return None if row is None else _endpoint_row(row)

        return await self._call(run)

    async def list_webhook_endpoints(
        self, merchant_id: str | None, livemode: bool | None = None, rows_max: int = 10_000
    ) -> list[WebhookEndpointRow]:
        """Endpoints of one merchant (newest first), or every live endpoint
        of every merchant when `merchant_id` is None (for the dispatcher)."""

        async def run() -> list[WebhookEndpointRow]:
            async with self._connection() as connection:
                if merchant_id is None:
                    rows = await connection.fetch(
                        WEBHOOK_ENDPOINT_SELECT + " WHERE NOT deleted ORDER BY created_s DESC, id DESC LIMIT $1", rows_max
                    )
                else:
                    rows = await connection.fetch(
                        WEBHOOK_ENDPOINT_SELECT + " WHERE NOT deleted AND merchant_id = $1 AND livemode = $2"
                        " ORDER BY created_s DESC, id DESC LIMIT $3",
                        merchant_id,
                        livemode,
                        rows_max,
                    )
            return [_endpoint_row(row) for row in rows]

        return await self._call(run)

    async def update_webhook_endpoint(self, row: WebhookEndpointRow) -> None:
        async def run() -> None:
            async with self._connection() as connection:
                await connection.execute(
                    "UPDATE webhook_endpoints SET url = $4, enabled_events = $5, description = $6,"
                    " metadata = $7::jsonb, status = $8 WHERE id = $1 AND merchant_id = $2 AND livemode = $3",
                    row.id,
                    row.merchant_id,
                    row.livemode,
                    row.url,
                    list(row.enabled_events),
                    row.description,
                    msgspec.json.encode(row.metadata).decode(),
                    row.status,
                )

        await self._call(run)

    async def delete_webhook_endpoint(self, endpoint_id: str) -> None:
        """Mark an endpoint deleted and give up on what it still had pending."""

        async def run() -> None:
            async with self._connection() as connection, connection.transaction():
                await connection.execute("UPDATE webhook_endpoints SET deleted = true WHERE id = $1", endpoint_id)
                await connection.execute(
                    "UPDATE webhook_deliveries SET status = 'dead' WHERE endpoint_id = $1 AND status = 'pending'",
                    endpoint_id,
                )

        await self._call(run)

    async def add_deliveries(self, rows: Sequence[DeliveryRow], queued: dict[int, tuple[int, int]] | None = None) -> None:
        """Queue deliveries (one already queued for (endpoint, event) stays as
        it is) and, in the same transaction, record how far each partition's
        stream is now queued."""
        if not rows and not queued:
            return

        async def run() -> None:
            async with self._connection() as connection, connection.transaction():
                if rows:
                    await connection.executemany(
                        "INSERT INTO webhook_deliveries (" + ", ".join(DELIVERY_COLUMNS) + ")"
                        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
                        [msgspec.structs.astuple(row) for row in rows],
                    )
                if queued:
                    await connection.executemany(
                        "INSERT INTO stream_queued (partition, seq, idx) VALUES ($1, $2, $3)"
                        " ON CONFLICT (partition) DO UPDATE SET seq = EXCLUDED.seq, idx = EXCLUDED.idx"
                        " WHERE (stream_queued.seq, stream_queued.idx) < (EXCLUDED.seq, EXCLUDED.idx)",
                        [(partition, *position) for partition, position in queued.items()],
                    )

        await self._call(run)

    async def queued_cursor(self, partition: int) -> tuple[int, int]:
        """How far the webhook ingest has queued a partition's events."""

        async def run() -> tuple[int, int]:
            async with self._connection() as connection:
                row = await connection.fetchrow("SELECT seq, idx FROM stream_queued WHERE partition = $1", partition)
            return (0, -1) if row is None else (row["seq"], row["idx"])

        return await self._call(run)

    async def pending_deliveries(self, endpoint_id: str, rows_max: int) -> list[DeliveryRow]:
        """An endpoint's pending deliveries in stream order (partition, seq, idx)."""

        async def run() -> list[DeliveryRow]:
            async with self._connection() as connection:
                rows = await connection.fetch(
                    DELIVERY_SELECT + " WHERE endpoint_id = $1 AND status = 'pending'"
                    " ORDER BY partition, seq, idx LIMIT $2",
                    endpoint_id,
                    rows_max,
                )
            return [DeliveryRow(*row) for row in rows]

        return await self._call(run)

    async def endpoints_with_pending(self, rows_max: int = 10_000) -> list[str]:
        async def run() -> list[str]:
            async with self._connection() as connection:
                rows = await connection.fetch(
                    "SELECT DISTINCT endpoint_id FROM webhook_deliveries WHERE status = 'pending' LIMIT $1", rows_max
                )
            return [row["endpoint_id"] for row in rows]

        return await self._call(run)

    async def record_delivery_attempt(self, delivery: DeliveryRow, attempt: DeliveryAttemptRow) -> None:
        """Log one try and move its delivery on (delivered, rescheduled or dead), together."""

        async def run() -> None:
            async with self._connection() as connection, connection.transaction():
                await connection.execute(
                    "INSERT INTO webhook_attempts (endpoint_id, event_id, attempt, at_ms, status_code, latency_ms, error)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                    *msgspec.structs.astuple(attempt),
                )
                await connection.execute(
                    "UPDATE webhook_deliveries SET status = $3, attempts = $4, next_attempt_ms = $5, updated_s = $6"
                    " WHERE endpoint_id = $1 AND event_id = $2",
                    delivery.endpoint_id,
                    delivery.event_id,
                    delivery.status,
                    delivery.attempts,
                    delivery.next_attempt_ms,
                    delivery.updated_s,
                )

        await self._call(run)

    async def retry_dead_deliveries(self, event_id: str, now_ms: int) -> list[str]:
        """Send a given-up event again: its dead deliveries become pending,
        with a fresh schedule. Returns the endpoints it goes to."""

        async def run() -> list[str]:
            async with self._connection() as connection:
                rows = await connection.fetch(
                    "UPDATE webhook_deliveries d SET status = 'pending', attempts = 0, next_attempt_ms = $2::bigint,"
                    " updated_s = $2::bigint / 1000 FROM webhook_endpoints e"
                    " WHERE d.event_id = $1 AND d.status = 'dead' AND e.id = d.endpoint_id AND NOT e.deleted"
                    " RETURNING d.endpoint_id",
                    event_id,
                    now_ms,
                )
            return [row["endpoint_id"] for row in rows]

        return await self._call(run)

    async def deliveries_of_event(self, event_id: str) -> list[DeliveryRow]:
        async def run() -> list[DeliveryRow]:
            async with self._connection() as connection:
                rows = await connection.fetch(DELIVERY_SELECT + " WHERE event_id = $1 ORDER BY endpoint_id", event_id)
            return [DeliveryRow(*row) for row in rows]

        return await self._call(run)

    async def delivery_attempts(self, event_id: str, rows_max: int = 1000) -> list[DeliveryAttemptRow]:
        async def run() -> list[DeliveryAttemptRow]:
            async with self._connection() as connection:
                rows = await connection.fetch(
                    "SELECT endpoint_id, event_id, attempt, at_ms, status_code, latency_ms, error FROM webhook_attempts"
                    " WHERE event_id = $1 ORDER BY endpoint_id, attempt LIMIT $2",
                    event_id,
                    rows_max,
                )
            return [DeliveryAttemptRow(*row) for row in rows]

        return await self._call(run)

    async def dead_deliveries(self, rows_max: int = 1000) -> list[DeliveryRow]:
        """The dead-letter list, newest first."""

        async def run() -> list[DeliveryRow]:
            async with self._connection() as connection:
                rows = await connection.fetch(
                    DELIVERY_SELECT + " WHERE status = 'dead' ORDER BY updated_s DESC LIMIT $1", rows_max
                )
            return [DeliveryRow(*row) for row in rows]

        return await self._call(run)

    # ------------------------------------------------ merchants and keys

    async def create_merchant(
        self, merchant_id: str, name: str, keys: Sequence[tuple[bytes, str, bool]], terms: MerchantTerms = MerchantTerms()
    ) -> None:
        """Insert a merchant and its keys, given as (key_hash, kind, livemode)."""

        async def run() -> None:
            async with self._connection() as connection, connection.transaction():
                await connection.execute(
                    "INSERT INTO merchants (id, name, fee_basis_points, fee_fixed_minor, rate_limit_per_s,"
                    " rate_limit_burst, signing_secret_sealed, require_signed_requests)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    merchant_id,
                    name,
                    *msgspec.structs.astuple(terms),
                )
                await connection.executemany(
                    "INSERT INTO api_keys (key_hash, merchant_id, kind, livemode) VALUES ($1, $2, $3, $4)",
                    [(key_hash, merchant_id, kind, livemode) for key_hash, kind, livemode in keys],
                )

        await self._call(run)

    async def roll_secret_key(
        self, merchant_id: str, grace_s: int, make_key: Callable[[bool], tuple[str, bytes]]
    ) -> str | None:
        """Add a new secret key, made by `make_key(livemode)` as (key, hash);
        the merchant's other secret keys stop working after `grace_s` (sooner
        if they were already due to). None when there is no such merchant."""

        async def run() -> str | None:
            async with self._connection() as connection, connection.transaction():
                # Lock the merchant so two rolls at once cannot both keep
                # their key alive past the other's grace period.
                merchant = await connection.fetchrow(
                    "SELECT m.id, (SELECT bool_or(k.livemode) FROM api_keys k WHERE k.merchant_id = m.id) AS livemode"
                    " FROM merchants m WHERE m.id = $1 FOR UPDATE",
                    merchant_id,
                )
                if merchant is None:
                    return None
                secret_key, key_hash = make_key(merchant["livemode"])
                await connection.execute(
                    "UPDATE api_keys SET expires_at = LEAST(coalesce(expires_at, 'infinity'), now() + make_interval(secs => $2))"
                    " WHERE merchant_id = $1 AND kind = 'secret'",
                    merchant_id,
                    grace_s,
                )
                await connection.execute(
                    "INSERT INTO api_keys (key_hash, merchant_id, kind, livemode) VALUES ($1, $2, 'secret', $3)",
                    key_hash,
                    merchant_id,
                    merchant["livemode"],
                )
            return secret_key

        return await self._call(run)

    async def find_api_key(self, key_hash: bytes) -> ApiKeyRow | None:
        async def run() -> ApiKeyRow | None:
            async with self._connection() as connection:
                row = await connection.fetchrow(
                    "SELECT k.merchant_id, k.kind, k.livemode, m.fee_basis_points, m.fee_fixed_minor,"
                    " m.rate_limit_per_s, m.rate_limit_burst, m.signing_secret_sealed, m.require_signed_requests,"
                    " extract(epoch FROM k.expires_at)::bigint AS expires_at_s"
                    " FROM api_keys k JOIN merchants m ON m.id = k.merchant_id"
                    " WHERE k.key_hash = $1 AND (k.expires_at IS NULL OR k.expires_at > now())",
                    key_hash,
                )
            return None if row is None else ApiKeyRow(**dict(row))

        return await self._call(run)

    # --------------------------------------------------- payment methods

    async def find_idempotency(self, merchant_id: str, key: str, now_s: int) -> IdempotencyRow | None:
        async def run() -> IdempotencyRow | None:
            async with self._connection() as connection:
                row = await connection.fetchrow(
                    "SELECT merchant_id, key, fingerprint, status_code, body, object_id, expires_at_s"
                    " FROM idempotency_keys WHERE merchant_id = $1 AND key = $2 AND expires_at_s > $3",
                    merchant_id,
                    key,
                    now_s,
                )
            return None if row is None else IdempotencyRow(**dict(row))

        return await self._call(run)

    async def idempotency_records(self, rows_max: int = 1_000_000) -> list[IdempotencyRow]:
        """Every idempotency record (for the invariant checks), bounded."""

        async def run() -> list[IdempotencyRow]:
            async with self._connection() as connection:
                rows = await connection.fetch(
                    "SELECT merchant_id, key, fingerprint, status_code, body, object_id, expires_at_s"
                    " FROM idempotency_keys LIMIT $1",
                    rows_max,
                )
            return [IdempotencyRow(**dict(row)) for row in rows]

        return await self._call(run)

    async def purge_idempotency(self, now_s: int, rows_max: int = 10_000) -> int:
        """Forget expired idempotency records, a bounded number at a time."""

        async def run() -> int:
            async with self._connection() as connection:
                result = await connection.execute(
                    "DELETE FROM idempotency_keys WHERE ctid IN (SELECT ctid FROM idempotency_keys"
                    " WHERE expires_at_s <= $1 LIMIT $2)",
                    now_s,
                    rows_max,
                )
            return int(result.split()[-1])

        return await self._call(run)

    async def idempotency_fingerprints_after(self, after: tuple[str, str], rows_max: int) -> list[tuple[str, str, bytes]]:
        """(merchant_id, key, fingerprint) of at most `rows_max` records that
        come after `after` in key order, in that order: pages through the table
        on its primary key, expired records included."""

        async def run() -> list[tuple[str, str, bytes]]:
            async with self._connection() as connection:
                rows = await connection.fetch(
                    "SELECT merchant_id, key, fingerprint FROM idempotency_keys"
                    " WHERE (merchant_id, key) > ($1, $2) ORDER BY merchant_id, key LIMIT $3",
                    after[0],
                    after[1],
                    rows_max,
                )
            return [(row["merchant_id"], row["key"], row["fingerprint"]) for row in rows]

        return await self._call(run)

    async def replace_idempotency_fingerprints(self, rows: Sequence[tuple[str, str, bytes, bytes]]) -> int:
        """For each (merchant_id, key, old, new): set the record's fingerprint
        to `new` if it still is `old`, all in one statement. Returns how many
        were replaced."""

        async def run() -> int:
            async with self._connection() as connection:
                result = await connection.execute(
                    "UPDATE idempotency_keys AS i SET fingerprint = r.new"
                    " FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bytea[]) AS r (merchant_id, key, old, new)"
                    " WHERE i.merchant_id = r.merchant_id AND i.key = r.key AND i.fingerprint = r.old",
                    *_columns(list(rows), 4),
                )
            return int(result.split()[-1])

        return await self._call(run)

    async def insert_payment_method(self, row: PaymentMethodRow, idempotency: IdempotencyRow | None = None) -> None:
        async def run() -> None:
            async with self._connection() as connection, connection.transaction():
                if idempotency is not None:
                    await connection.execute(IDEMPOTENCY_UPSERT, *msgspec.structs.astuple(idempotency))
                await connection.execute(
                    "INSERT INTO payment_methods (id, merchant_id, livemode, brand, last4, exp_month,"
                    " exp_year, fingerprint, sealed_number, created_s)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    *msgspec.structs.astuple(row),
                )

        await self._call(run)

    async def get_payment_method(self, payment_method_id: str) -> PaymentMethodRow | None:
        async def run() -> PaymentMethodRow | None:
            async with self._connection() as connection:
                row = await connection.fetchrow(
                    "SELECT id, merchant_id, livemode, brand, last4, exp_month, exp_year, fingerprint,"
                    " sealed_number, created_s FROM payment_methods WHERE id = $1",
                    payment_method_id,
                )
            return None if row is None else PaymentMethodRow(**dict(row))

        return await self._call(run)

    # ----------------------------------------------------- audit archive

    async def audit_state(self) -> AuditState:
        """The partition count, the archived position of each partition and
        the mirror's last manifest entry."""

        async def run() -> AuditState | None:
            async with self._connection() as connection:
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

        state = await self._call(run)
        if state is None:
            raise SchemaMismatch("the database has no audit tables yet: run `payments migrate` (or start a node) first")
        return state

    async def audit_take_lease(self, holder: str, ttl_s: int) -> bool:
        """Take or renew the export lease; False while another holder has it."""

        async def run() -> bool:
            async with self._connection() as connection:
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

        return await self._call(run)

    async def audit_release_lease(self, holder: str) -> None:
        async def run() -> None:
            async with self._connection() as connection:
                await connection.execute("DELETE FROM audit_lease WHERE name = $1 AND holder = $2", AUDIT_LEASE_NAME, holder)

        await self._call(run)

    async def audit_read(self, partition: int, after_seq: int, rows_max: int, events_max: int) -> tuple[list[JournalRecord], list[EventRow]]:
        """Up to `rows_max` journal rows of a partition after `after_seq`, in
        order, with the events they raised (at most `events_max`)."""

        async def run() -> tuple[list[JournalRecord], list[EventRow]]:
            async with self._connection() as connection, connection.transaction(isolation="repeatable_read", readonly=True):
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

        return await self._call(run)

    async def audit_rows(self, partition: int, seqs: Sequence[int]) -> tuple[list[JournalRecord], list[EventRow]]:
        """The journal rows of a partition at `seqs`, and the events they
        raised that are still kept, to compare with the archive."""

        async def run() -> tuple[list[JournalRecord], list[EventRow]]:
            async with self._connection() as connection:
                rows = await connection.fetch(
                    AUDIT_JOURNAL_SELECT + " WHERE partition = $1 AND seq = ANY($2::bigint[]) ORDER BY seq", partition, list(seqs)
                )
                events = await connection.fetch(
                    EVENT_SELECT + " WHERE partition = $1 AND seq = ANY($2::bigint[]) ORDER BY seq, idx", partition, list(seqs)
                )
            return [JournalRecord(**dict(row)) for row in rows], [EventRow(*row) for row in events]

        return await self._call(run)

    async def audit_mirror(self, after_sequence: int, rows_max: int) -> list[str]:
        """The mirrored manifest lines after `after_sequence`, in order."""

        async def run() -> list[str]:
            async with self._connection() as connection:
                rows = await connection.fetch(
                    "SELECT entry FROM audit_manifest WHERE sequence > $1 ORDER BY sequence LIMIT $2", after_sequence, rows_max
                )
            return [row["entry"] for row in rows]

        return await self._call(run)

    async def audit_commit(self, entries: Sequence[AuditEntryRow], holder: str | None) -> str | None:
        """Mirror manifest entries and move the archived positions, in one
        transaction. Each entry must follow the mirror's head (next sequence,
        prev_hash = the head's hash) and its partition's position (first_seq
        = position + 1); with a `holder`, the export lease must be theirs.
        Returns None when written, otherwise why nothing was."""

        async def run() -> str | None:
            try:
                async with self._connection() as connection, connection.transaction():
                    if holder is not None:
                        current = await connection.fetchval(
                            "SELECT holder FROM audit_lease WHERE name = $1 AND expires_at > now() FOR UPDATE", AUDIT_LEASE_NAME
                        )
                        if current != holder:
                            return "the export lease expired or another exporter holds it"
                    head = await connection.fetchrow("SELECT sequence, hash FROM audit_manifest ORDER BY sequence DESC LIMIT 1")
                    sequence, previous = (0, None) if head is None else (head["sequence"], head["hash"])
                    positions = {row["partition"]: row["seq"] for row in await connection.fetch("SELECT partition, seq FROM audit_positions")}
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
            except asyncpg.exceptions.UniqueViolationError:
                return "another exporter mirrored an entry at the same time"
            return None

        return await self._call(run)

    async def audit_prune(self, events_before_s: int, deliveries_before_s: int, attempts_before_ms: int, rows_max: int) -> tuple[int, int, int]:
        """Delete one batch (at most `rows_max` rows a table) of what the hot
        tables no longer need: events created before `events_before_s` that
        are archived, queued for webhooks and not awaiting a delivery;
        finished (delivered or dead) deliveries last touched before
        `deliveries_before_s`; attempts before `attempts_before_ms` whose
        delivery is finished. Returns the rows deleted from events,
        webhook_deliveries and webhook_attempts."""

        async def run() -> tuple[int, int, int]:
            async with self._connection() as connection, connection.transaction():
                events = await connection.execute(
                    "DELETE FROM events WHERE ctid IN (SELECT e.ctid FROM events e"
                    " JOIN audit_positions a ON a.partition = e.partition AND e.seq <= a.seq"
                    " JOIN stream_queued q ON q.partition = e.partition AND (e.seq, e.idx) <= (q.seq, q.idx)"
                    " WHERE e.created_s < $1"
                    " AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id AND d.status = 'pending')"
                    " LIMIT $2)",
                    events_before_s,
                    rows_max,
                )
                attempts = await connection.execute(
                    "DELETE FROM webhook_attempts WHERE ctid IN (SELECT t.ctid FROM webhook_attempts t WHERE t.at_ms < $1"
                    " AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.endpoint_id = t.endpoint_id"
                    " AND d.event_id = t.event_id AND d.status = 'pending') LIMIT $2)",
                    attempts_before_ms,
                    rows_max,
                )
                deliveries = await connection.execute(
                    "DELETE FROM webhook_deliveries WHERE ctid IN (SELECT ctid FROM webhook_deliveries"
                    " WHERE status IN ('delivered', 'dead') AND updated_s < $1 LIMIT $2)",
                    deliveries_before_s,
                    rows_max,
                )
            return int(events.split()[-1]), int(deliveries.split()[-1]), int(attempts.split()[-1])

        return await self._call(run)
