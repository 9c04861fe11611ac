"""Customers, and the payment methods saved to them.

A customer is a row of its own (no card data: a saved card is a payment
method, linked by a row of `customer_payment_methods`). Stripe's rules for
saved methods hold here, in the transaction that changes them:

- a payment method is attached to one customer at most; attaching it to
  another is refused, attaching it again to the same one changes nothing;
- a detached payment method keeps its row, marked detached, and is never
  attached again;
- deleting a customer detaches its payment methods;
- a customer's default payment method is one attached to it; detaching that
  method clears the default.

Refusals are values (`Refusal`), never exceptions; every write may carry the
idempotency record of the request that made it, written in its transaction.
Each public method is one bridged call and raises StoreUnavailable when the
database is away.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import asyncpg
import msgspec

from store.database import Database
from store.idempotency import IDEMPOTENCY_UPSERT
from store.rows import AttachmentRow, CustomerRow, IdempotencyRow, PaymentMethodRow

CUSTOMER_COLUMNS = tuple(CustomerRow.__struct_fields__)
CUSTOMER_SELECT = "SELECT " + ", ".join(CUSTOMER_COLUMNS) + " FROM customers"
ATTACHMENT_COLUMNS = tuple(AttachmentRow.__struct_fields__)
ATTACHMENT_SELECT = "SELECT " + ", ".join(ATTACHMENT_COLUMNS) + " FROM customer_payment_methods"
PAYMENT_METHOD_COLUMNS = tuple(PaymentMethodRow.__struct_fields__)

# The idempotency record of a write, made from what the write produced.
Record = Callable[[Any], IdempotencyRow]


class Refusal(enum.StrEnum):
    """Why a change to customers or their payment methods was not made."""

    customer_missing = "customer_missing"
    # Attached (and not detached) to another customer.
    attached_elsewhere = "attached_elsewhere"
    # Detached once: never attached or used again.
    detached = "detached"
    not_attached = "not_attached"
    # invoice_settings.default_payment_method names a method not attached to the customer.
    default_not_attached = "default_not_attached"


class CustomerChange(msgspec.Struct, frozen=True):
    """Stripe's update of a customer: None leaves a field as it is, "" clears
    a text field (and the default payment method); `metadata` merges into
    the customer's, a key sent empty is removed; `clear_metadata` (Stripe's
    `metadata=""`) removes every key first."""

    email: str | None = None
    name: str | None = None
    description: str | None = None
    phone: str | None = None
    metadata: dict[str, str] = {}
    clear_metadata: bool = False
    default_payment_method: str | None = None


class CustomerQuery(msgspec.Struct, frozen=True):
    """One page of a merchant's customers, newest first. `after` (a
    starting_after cursor's (created_s, id)) takes older ones, `before` (an
    ending_before cursor's) the newest `limit` among those newer."""

    merchant_id: str
    livemode: bool
    limit: int
    email: str | None = None
    created_from_s: int | None = None  # inclusive
    created_until_s: int | None = None  # inclusive
    after: tuple[int, str] | None = None
    before: tuple[int, str] | None = None


def changed(row: CustomerRow, change: CustomerChange) -> CustomerRow:
    """`row` as `change` leaves it (pure; both stores use it)."""

    def text(old: str | None, new: str | None) -> str | None:
        return old if new is None else (new or None)

    metadata = {} if change.clear_metadata else dict(row.metadata)
    metadata.update(change.metadata)
    return msgspec.structs.replace(
        row,
        email=text(row.email, change.email),
        name=text(row.name, change.name),
        description=text(row.description, change.description),
        phone=text(row.phone, change.phone),
        metadata={key: value for key, value in metadata.items() if value != ""},
        default_payment_method=text(row.default_payment_method, change.default_payment_method),
    )


def owned(row: CustomerRow | None, merchant_id: str, livemode: bool) -> CustomerRow | None:
    """`row` if it is a live customer of this merchant in this mode."""
    if row is None or row.deleted or row.merchant_id != merchant_id or row.livemode != livemode:
        return None
    return row


def _customer(record: Any) -> CustomerRow:
    values = dict(record)
    values["metadata"] = msgspec.json.decode(values["metadata"])
    return CustomerRow(**values)


def _customer_values(row: CustomerRow) -> tuple[Any, ...]:
    values = list(msgspec.structs.astuple(row))
    values[CUSTOMER_COLUMNS.index("metadata")] = msgspec.json.encode(row.metadata).decode()
    return tuple(values)


async def _record(connection: asyncpg.Connection, idempotency: IdempotencyRow | None) -> None:
    if idempotency is not None:
        await connection.execute(IDEMPOTENCY_UPSERT, *msgspec.structs.astuple(idempotency))


async def _insert(connection: asyncpg.Connection, row: CustomerRow, idempotency: IdempotencyRow | None) -> None:
    await _record(connection, idempotency)
    await connection.execute(
        "INSERT INTO customers (" + ", ".join(CUSTOMER_COLUMNS) + ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10, $11)",
        *_customer_values(row),
    )


async def _get(connection: asyncpg.Connection, customer_id: str, lock: str = "") -> CustomerRow | None:
    record = await connection.fetchrow(CUSTOMER_SELECT + " WHERE id = $1" + lock, customer_id)
    return None if record is None else _customer(record)


async def _update(
    connection: asyncpg.Connection, merchant_id: str, livemode: bool, customer_id: str, change: CustomerChange, record: Record | None
) -> tuple[Refusal | None, CustomerRow | None]:
    row = owned(await _get(connection, customer_id, " FOR UPDATE"), merchant_id, livemode)
    if row is None:
        return Refusal.customer_missing, None
    if change.default_payment_method:
        attached = await connection.fetchval(
            "SELECT 1 FROM customer_payment_methods WHERE payment_method_id = $1 AND customer_id = $2 AND detached_s IS NULL",
            change.default_payment_method,
            customer_id,
        )
        if attached is None:
            return Refusal.default_not_attached, None
    row = changed(row, change)
    await connection.execute(
        "UPDATE customers SET email = $2, name = $3, description = $4, phone = $5, metadata = $6::jsonb,"
        " default_payment_method = $7 WHERE id = $1",
        row.id,
        row.email,
        row.name,
        row.description,
        row.phone,
        msgspec.json.encode(row.metadata).decode(),
        row.default_payment_method,
    )
    await _record(connection, None if record is None else record(row))
    return None, row


async def _delete(
    connection: asyncpg.Connection, merchant_id: str, livemode: bool, customer_id: str, at_s: int, record: Record | None
) -> CustomerRow | None:
    row = owned(await _get(connection, customer_id, " FOR UPDATE"), merchant_id, livemode)
    if row is None:
        return None
    await connection.execute("UPDATE customers SET deleted = true, default_payment_method = NULL WHERE id = $1", customer_id)
    await connection.execute(
        "UPDATE customer_payment_methods SET detached_s = $2 WHERE customer_id = $1 AND detached_s IS NULL", customer_id, at_s
    )
    row = msgspec.structs.replace(row, deleted=True, default_payment_method=None)
    await _record(connection, None if record is None else record(row))
    return row


def _page_clauses(query: CustomerQuery | None, args: list[Any], columns: tuple[str, str]) -> list[str]:
    """The WHERE clauses of a keyset page over (created, id) `columns`."""
    clauses = []
    created, identity = columns
    if query is None:
        return clauses
    if query.created_from_s is not None:
        args.append(query.created_from_s)
        clauses.append(f"{created} >= ${len(args)}")
    if query.created_until_s is not None:
        args.append(query.created_until_s)
        clauses.append(f"{created} <= ${len(args)}")
    for cursor, operator in ((query.after, "<"), (query.before, ">")):
        if cursor is not None:
            args.extend(cursor)
            clauses.append(f"({created}, {identity}) {operator} (${len(args) - 1}, ${len(args)})")
    return clauses


def _order(before: bool, columns: tuple[str, str], limit: int) -> str:
    # Toward the newer end for ending_before (reversed afterwards).
    direction = "ASC" if before else "DESC"
    return f" ORDER BY {columns[0]} {direction}, {columns[1]} {direction} LIMIT {int(limit) + 1}"


def _window(rows: list[Any], limit: int, before: bool) -> tuple[list[Any], bool]:
    """(the page newest first, whether there is more past it)."""
    has_more = len(rows) > limit
    rows = rows[:limit]
    return (rows[::-1] if before else rows), has_more


async def _list(connection: asyncpg.Connection, query: CustomerQuery) -> tuple[list[CustomerRow], bool]:
    args: list[Any] = [query.merchant_id, query.livemode]
    clauses = ["merchant_id = $1", "livemode = $2", "NOT deleted"]
    if query.email is not None:
        args.append(query.email)
        clauses.append(f"email = ${len(args)}")
    clauses += _page_clauses(query, args, ("created_s", "id"))
    sql = CUSTOMER_SELECT + " WHERE " + " AND ".join(clauses) + _order(query.before is not None, ("created_s", "id"), query.limit)
    rows = [_customer(record) for record in await connection.fetch(sql, *args)]
    return _window(rows, query.limit, query.before is not None)


async def _attach(
    connection: asyncpg.Connection, row: AttachmentRow, record: Record | None
) -> tuple[Refusal | None, AttachmentRow | None]:
    # FOR SHARE: a delete of the customer waits for this attach, or this
    # attach sees it deleted.
    customer = owned(await _get(connection, row.customer_id, " FOR SHARE"), row.merchant_id, row.livemode)
    if customer is None:
        return Refusal.customer_missing, None
    inserted = await connection.fetchval(
        "INSERT INTO customer_payment_methods (" + ", ".join(ATTACHMENT_COLUMNS) + ") VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (payment_method_id) DO NOTHING RETURNING 1",
        *msgspec.structs.astuple(row),
    )
    if inserted is None:
        existing = await _attachment(connection, row.payment_method_id, " FOR UPDATE")
        assert existing is not None, row.payment_method_id
        if existing.detached_s is not None:
            return Refusal.detached, existing
        if existing.customer_id != row.customer_id:
            return Refusal.attached_elsewhere, existing
        row = existing
    await _record(connection, None if record is None else record(row))
    return None, row


async def _detach(
    connection: asyncpg.Connection, payment_method_id: str, at_s: int, record: Record | None
) -> tuple[Refusal | None, AttachmentRow | None]:
    existing = await _attachment(connection, payment_method_id, " FOR UPDATE")
    if existing is None or existing.detached_s is not None:
        return Refusal.not_attached, existing
    await connection.execute("UPDATE customer_payment_methods SET detached_s = $2 WHERE payment_method_id = $1", payment_method_id, at_s)
    await connection.execute(
        "UPDATE customers SET default_payment_method = NULL WHERE id = $1 AND default_payment_method = $2",
        existing.customer_id,
        payment_method_id,
    )
    row = msgspec.structs.replace(existing, detached_s=at_s)
    await _record(connection, None if record is None else record(row))
    return None, row


async def _attachment(connection: asyncpg.Connection, payment_method_id: str, lock: str = "") -> AttachmentRow | None:
    record = await connection.fetchrow(ATTACHMENT_SELECT + " WHERE payment_method_id = $1" + lock, payment_method_id)
    return None if record is None else AttachmentRow(**dict(record))


async def _payment_methods(
    connection: asyncpg.Connection, customer_id: str, query: CustomerQuery
) -> tuple[list[PaymentMethodRow], bool]:
    args: list[Any] = [customer_id]
    clauses = ["a.customer_id = $1", "a.detached_s IS NULL"] + _page_clauses(query, args, ("p.created_s", "p.id"))
    sql = (
        "SELECT " + ", ".join("p." + column for column in PAYMENT_METHOD_COLUMNS) + " FROM customer_payment_methods a"
        " JOIN payment_methods p ON p.id = a.payment_method_id WHERE " + " AND ".join(clauses)
        + _order(query.before is not None, ("p.created_s", "p.id"), query.limit)
    )
    rows = [PaymentMethodRow(**dict(record)) for record in await connection.fetch(sql, *args)]
    return _window(rows, query.limit, query.before is not None)


class Customers:
    """Customers and their saved payment methods, in PostgreSQL."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def insert_customer(self, row: CustomerRow, idempotency: IdempotencyRow | None = None) -> None:
        """Store a new customer and, in the same transaction, the idempotency
        record of the request that made it."""
        await self._database.call(_insert, row, idempotency, transaction=True)

    async def get_customer(self, customer_id: str) -> CustomerRow | None:
        """A customer by id, deleted or not, whoever's; None if there is none."""
        return await self._database.call(_get, customer_id)

    async def find_customer(self, merchant_id: str, livemode: bool, customer_id: str) -> CustomerRow | None:
        """The merchant's live (not deleted) customer in this mode, or None."""
        return owned(await self.get_customer(customer_id), merchant_id, livemode)

    async def update_customer(
        self, merchant_id: str, livemode: bool, customer_id: str, change: CustomerChange, record: Record | None = None
    ) -> tuple[Refusal | None, CustomerRow | None]:
        """Apply `change` (see CustomerChange) to the merchant's customer;
        `record(new row)` is the idempotency record stored with it.
        Refused: customer_missing, default_not_attached."""
        return await self._database.call(_update, merchant_id, livemode, customer_id, change, record, transaction=True)

    async def delete_customer(
        self, merchant_id: str, livemode: bool, customer_id: str, at_s: int, record: Record | None = None
    ) -> CustomerRow | None:
        """Mark the merchant's customer deleted and detach its payment
        methods; the row as deleted, None when there was no such customer."""
        return await self._database.call(_delete, merchant_id, livemode, customer_id, at_s, record, transaction=True)

    async def list_customers(self, query: CustomerQuery) -> tuple[list[CustomerRow], bool]:
        """One page of live customers, newest first, and whether more follow."""
        return await self._database.call(_list, query)

    async def attach_payment_method(
        self,
        merchant_id: str,
        livemode: bool,
        payment_method_id: str,
        customer_id: str,
        at_s: int,
        record: Record | None = None,
    ) -> tuple[Refusal | None, AttachmentRow | None]:
        """Save a payment method (which must exist and be the merchant's:
        the caller checks) to the merchant's customer. Attaching it again to
        the same customer returns the first attachment. Refused:
        customer_missing, attached_elsewhere, detached (with the existing
        row)."""
        row = AttachmentRow(payment_method_id, customer_id, merchant_id, livemode, at_s)
        return await self._database.call(_attach, row, record, transaction=True)

    async def detach_payment_method(
        self, payment_method_id: str, at_s: int, record: Record | None = None
    ) -> tuple[Refusal | None, AttachmentRow | None]:
        """Take a payment method off its customer for good (clearing the
        customer's default if it was that). Refused: not_attached (also
        when it was detached already)."""
        return await self._database.call(_detach, payment_method_id, at_s, record, transaction=True)

    async def attachment(self, payment_method_id: str) -> AttachmentRow | None:
        """The payment method's attachment (live or detached), if it ever had one."""
        return await self._database.call(_attachment, payment_method_id)

    async def customer_payment_methods(self, customer_id: str, query: CustomerQuery) -> tuple[list[PaymentMethodRow], bool]:
        """One page of the customer's attached payment methods, newest first
        (`query`'s limit, created bounds and cursors; its merchant and email
        are not read), and whether more follow."""
        return await self._database.call(_payment_methods, customer_id, query)
