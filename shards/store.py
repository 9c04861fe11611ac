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
"""


# A record is written once when its request starts and completed once; it is
# never overwritten after that, whatever a confused caller sends.
IDEMPOTENCY_UPSERT = """
INSERT INTO idempotency_keys (merchant_id, key, fingerprint, status_code, body, object_id, expires_at_s)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (merchant_id, key) DO UPDATE
    SET status_code = EXCLUDED.status_code, body = EXCLUDED.body
    WHERE idempotency_keys.status_code IS NULL AND idempotency_keys.fingerprint = EXCLUDED.fingerprint
"""

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
                await connection.execute(SCHEMA_SQL)
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

    async def append(self, partition: int, rows: Sequence[JournalRow], idempotency: Sequence[IdempotencyRow] = ()) -> None:
        """Write one batch of journal rows, their postings and the idempotency
        records of the requests behind them, in one transaction (one fsync)."""
        records = [(partition, row.seq, row.entity_id, row.kind, row.body.decode()) for row in rows]
        postings = [
            (
                transfer.id, partition, row.seq, transfer.intent_id, transfer.debit_account_id,
                transfer.credit_account_id, transfer.amount, transfer.currency, str(transfer.kind),
                transfer.code, transfer.pending_id, transfer.created_s, transfer.available_on_s,
            )
            for row in rows
            for transfer in row.transfers
        ]

        async def run() -> None:
            async with self._connection() as connection, connection.transaction():
                await connection.copy_records_to_table(
                    "journal",
                    records=records,
                    columns=("partition", "seq", "entity_id", "kind", "body"),
                )
                if postings:
                    await connection.copy_records_to_table("postings", records=postings, columns=POSTING_COLUMNS)
                if idempotency:
                    await connection.executemany(IDEMPOTENCY_UPSERT, [msgspec.structs.astuple(row) for row in idempotency])

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
