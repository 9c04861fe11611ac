"""SetupIntents: one row each, changed only by compare-and-set.

A SetupIntent is not an intent of a partition's actor: it moves no money and
has no ledger, so it is a row of its own (the whole SetupIntent as msgspec
JSON in `body`, with the columns lists and lookups need beside it). Every
change names the `version` it was decided against and is written only if
the row still has it; so of two confirms racing on one SetupIntent, only one
moves it to `processing` and calls the network. A change may carry the
idempotency record of its request, written in the same transaction:

- a *claim* (the request's first write) is inserted only if the key is
  free, else the whole write is undone and `IdempotencyKeyTaken` raised (a
  request with the same key got there first, on another node);
- a *completion* fills in the record its request claimed earlier.

Each public method is one bridged call and raises StoreUnavailable when the
database is away.
"""

from __future__ import annotations

from typing import Any, Literal

import asyncpg
import msgspec

from engine.setup_intents import SetupIntent
from store import customers
from store.database import Database
from store.idempotency import IDEMPOTENCY_UPSERT
from store.rows import AttachmentRow, IdempotencyRow

SETUP_INTENTS_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS setup_intents (
    id text PRIMARY KEY,
    merchant_id text NOT NULL REFERENCES merchants (id),
    livemode boolean NOT NULL,
    status text NOT NULL CHECK (status IN ('requires_payment_method', 'requires_confirmation',
        'requires_action', 'processing', 'canceled', 'succeeded')),
    customer_id text,
    payment_method_id text,
    -- The network reference of the latest card check (setatt_...).
    reference text,
    created_s bigint NOT NULL,
    version bigint NOT NULL,
    body bytea NOT NULL            -- the SetupIntent (msgspec JSON); no card data
);
CREATE INDEX IF NOT EXISTS setup_intents_merchant ON setup_intents (merchant_id, livemode, created_s DESC, id DESC);
CREATE UNIQUE INDEX IF NOT EXISTS setup_intents_reference ON setup_intents (reference) WHERE reference IS NOT NULL;
"""

IDEMPOTENCY_CLAIM = """
INSERT INTO idempotency_keys (merchant_id, key, fingerprint, status_code, body, object_id, expires_at_s)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (merchant_id, key) DO NOTHING
RETURNING 1
"""

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(SetupIntent)


class IdempotencyKeyTaken(Exception):
    """The request's idempotency key was claimed by another request first:
    nothing was written."""


class SetupQuery(msgspec.Struct, frozen=True):
    """One page of a merchant's SetupIntents, newest first; `after` (a
    starting_after cursor's (created_s, id)) takes older ones, `before` (an
    ending_before cursor's) the newest `limit` of those newer."""

    merchant_id: str
    livemode: bool
    limit: int
    customer_id: str | None = None
    payment_method_id: str | None = None
    created_from_s: int | None = None  # inclusive
    created_until_s: int | None = None  # inclusive
    after: tuple[int, str] | None = None
    before: tuple[int, str] | None = None


class Idempotency(msgspec.Struct, frozen=True):
    """The idempotency record a write carries: `claim` for its request's
    first write, `complete` to fill in the record claimed earlier, `release`
    to drop that claim (the request did nothing: a retry runs it again)."""

    row: IdempotencyRow
    mode: Literal["claim", "complete", "release"]


def _decode(record: Any) -> SetupIntent:
    return _decoder.decode(record["body"])


def _columns(setup: SetupIntent) -> tuple[Any, ...]:
    return (
        setup.id,
        setup.merchant_id,
        setup.livemode,
        str(setup.status),
        setup.customer_id,
        setup.payment_method_id,
        setup.reference,
        setup.created_s,
        setup.version,
        _encoder.encode(setup),
    )


async def _record(connection: asyncpg.Connection, idempotency: Idempotency | None) -> None:
    if idempotency is None:
        return
    row = idempotency.row
    values = msgspec.structs.astuple(row)
    if idempotency.mode == "complete":
        await connection.execute(IDEMPOTENCY_UPSERT, *values)
    elif idempotency.mode == "release":
        await connection.execute(
            "DELETE FROM idempotency_keys WHERE merchant_id = $1 AND key = $2 AND fingerprint = $3 AND status_code IS NULL",
            row.merchant_id,
            row.key,
            row.fingerprint,
        )
    elif await connection.fetchval(IDEMPOTENCY_CLAIM, *values) is None:
        raise IdempotencyKeyTaken(row.key)


async def _insert(connection: asyncpg.Connection, setup: SetupIntent, idempotency: Idempotency | None) -> None:
    await _record(connection, idempotency)
    await connection.execute(
        "INSERT INTO setup_intents (id, merchant_id, livemode, status, customer_id, payment_method_id, reference,"
        " created_s, version, body) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        *_columns(setup),
    )


async def _replace(
    connection: asyncpg.Connection,
    setup: SetupIntent,
    expected_version: int,
    idempotency: Idempotency | None,
    attachment: AttachmentRow | None,
) -> tuple[bool, customers.Refusal | None]:
    status = await connection.execute(
        "UPDATE setup_intents SET status = $4, customer_id = $5, payment_method_id = $6, reference = $7, version = $9, body = $10"
        " WHERE id = $1 AND merchant_id = $2 AND livemode = $3 AND created_s = $8 AND version = $11",
        *_columns(setup),
        expected_version,
    )
    if status.split()[-1] == "0":
        return False, None
    refusal = None
    if attachment is not None:
        # The saved card and the SetupIntent's success, together or not at all.
        refusal, _ = await customers._attach(connection, attachment, None)
    await _record(connection, idempotency)
    return True, refusal


async def _get(connection: asyncpg.Connection, setup_intent_id: str) -> SetupIntent | None:
    record = await connection.fetchrow("SELECT body FROM setup_intents WHERE id = $1", setup_intent_id)
    return None if record is None else _decode(record)


async def _by_reference(connection: asyncpg.Connection, reference: str) -> SetupIntent | None:
    record = await connection.fetchrow("SELECT body FROM setup_intents WHERE reference = $1", reference)
    return None if record is None else _decode(record)


async def _list(connection: asyncpg.Connection, query: SetupQuery) -> tuple[list[SetupIntent], bool]:
    args: list[Any] = [query.merchant_id, query.livemode]
    clauses = ["merchant_id = $1", "livemode = $2"]
    for column, value in (("customer_id", query.customer_id), ("payment_method_id", query.payment_method_id)):
        if value is not None:
            args.append(value)
            clauses.append(f"{column} = ${len(args)}")
    if query.created_from_s is not None:
        args.append(query.created_from_s)
        clauses.append(f"created_s >= ${len(args)}")
    if query.created_until_s is not None:
        args.append(query.created_until_s)
        clauses.append(f"created_s <= ${len(args)}")
    for cursor, operator in ((query.after, "<"), (query.before, ">")):
        if cursor is not None:
            args.extend(cursor)
            clauses.append(f"(created_s, id) {operator} (${len(args) - 1}, ${len(args)})")
    # Toward the newer end for ending_before, reversed below.
    direction = "ASC" if query.before is not None else "DESC"
    sql = (
        "SELECT body FROM setup_intents WHERE " + " AND ".join(clauses)
        + f" ORDER BY created_s {direction}, id {direction} LIMIT {int(query.limit) + 1}"
    )
    found = [_decode(record) for record in await connection.fetch(sql, *args)]
    has_more = len(found) > query.limit
    found = found[: query.limit]
    return (found[::-1] if query.before is not None else found), has_more


class SetupIntents:
    """The setup_intents table."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def insert(self, setup: SetupIntent, idempotency: Idempotency | None = None) -> None:
        """Store a new SetupIntent (with its request's idempotency record).
        Raises IdempotencyKeyTaken (nothing written) when a claim finds its
        key taken."""
        await self._database.call(_insert, setup, idempotency, transaction=True)

    async def replace(
        self,
        setup: SetupIntent,
        expected_version: int,
        idempotency: Idempotency | None = None,
        attachment: AttachmentRow | None = None,
    ) -> tuple[bool, customers.Refusal | None]:
        """Write `setup` (whose version must be the next one) if the stored
        row still has `expected_version`; with `attachment`, save its
        payment method to its customer in the same transaction. Returns
        (written, why the attachment was refused); nothing is written when
        the version moved on. Raises IdempotencyKeyTaken as insert does."""
        assert setup.version == expected_version + 1, (setup.id, setup.version, expected_version)
        return await self._database.call(_replace, setup, expected_version, idempotency, attachment, transaction=True)

    async def get(self, setup_intent_id: str) -> SetupIntent | None:
        """A SetupIntent by id, whoever's; None if there is none."""
        return await self._database.call(_get, setup_intent_id)

    async def by_reference(self, reference: str) -> SetupIntent | None:
        """The SetupIntent whose latest card check has this network reference."""
        return await self._database.call(_by_reference, reference)

    async def list(self, query: SetupQuery) -> tuple[list[SetupIntent], bool]:
        """One page, newest first, and whether more follow."""
        return await self._database.call(_list, query)
