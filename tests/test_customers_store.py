"""store/customers.py against a real PostgreSQL, and the memory store held
to the same promises: Stripe's attach rules decided in the transaction
(two attaches at once to two customers: exactly one wins), a delete that
detaches, the default payment method, keyset pages, and the idempotency
record written with the change."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio_asyncio

from store.customers import CustomerChange, CustomerQuery, Refusal
from store.memory import MemoryStore
from store.postgres import Store
from store.rows import CustomerRow, IdempotencyRow, PaymentMethodRow

MERCHANT = "acct_customers_store"


def customer_row(customer_id: str, created_s: int, email: str | None = None, merchant_id: str = MERCHANT) -> CustomerRow:
    return CustomerRow(customer_id, merchant_id, False, email, None, None, None, {}, None, created_s)


def method_row(payment_method_id: str, created_s: int = 1) -> PaymentMethodRow:
    # b"sealed" reads as the format before key versions (version 0), which
    # is all the foreign key asks; no card is involved here.
    return PaymentMethodRow(payment_method_id, MERCHANT, False, "visa", "4242", 12, 2040, "fp", b"sealed", created_s)


async def _postgres_merchant(store: Any) -> None:
    async def run(connection: Any) -> None:
        await connection.execute("INSERT INTO merchants (id, name) VALUES ($1, 'Shop'), ($2, 'Other')", MERCHANT, MERCHANT + "_other")

    await store.database.call(run)


@pytest.fixture(params=["postgres", "memory"])
async def stores(request: pytest.FixtureRequest, database_url: str) -> Any:
    """The PostgreSQL store (on a fresh database) and the memory store."""
    if request.param == "memory":
        yield MemoryStore()
        return
    async with trio_asyncio.open_loop():
        store = await Store.open(database_url, connections_max=4)
        await store.migrate(4)
        try:
            await _postgres_merchant(store)
            yield store
        finally:
            await store.close()


async def add_methods(store: Any, *payment_method_ids: str) -> None:
    for created_s, payment_method_id in enumerate(payment_method_ids, start=1):
        await store.merchants.insert_payment_method(method_row(payment_method_id, created_s))


async def test_attach_rules_one_customer_detached_for_good(stores: Any) -> None:
    customers = stores.customers
    await customers.insert_customer(customer_row("cus_a", 10))
    await customers.insert_customer(customer_row("cus_b", 11))
    await add_methods(stores, "pm_1", "pm_2")
    refusal, attached = await customers.attach_payment_method(MERCHANT, False, "pm_1", "cus_a", 20)
    assert refusal is None and attached is not None and (attached.customer_id, attached.attached_s, attached.detached_s) == ("cus_a", 20, None)
    # Again to the same customer: the first attachment, unchanged.
    assert await customers.attach_payment_method(MERCHANT, False, "pm_1", "cus_a", 21) == (None, attached)
    refusal, existing = await customers.attach_payment_method(MERCHANT, False, "pm_1", "cus_b", 22)
    assert refusal is Refusal.attached_elsewhere and existing == attached
    assert (await customers.attach_payment_method(MERCHANT, True, "pm_2", "cus_a", 23))[0] is Refusal.customer_missing
    assert (await customers.attach_payment_method(MERCHANT + "_other", False, "pm_2", "cus_a", 23))[0] is Refusal.customer_missing

    refusal, detached = await customers.detach_payment_method("pm_1", 30)
    assert refusal is None and detached is not None and detached.detached_s == 30
    assert (await customers.detach_payment_method("pm_1", 31))[0] is Refusal.not_attached
    assert (await customers.detach_payment_method("pm_2", 31))[0] is Refusal.not_attached
    for customer_id in ("cus_a", "cus_b"):
        assert (await customers.attach_payment_method(MERCHANT, False, "pm_1", customer_id, 32))[0] is Refusal.detached
    assert await customers.attachment("pm_1") == detached


async def test_a_default_is_attached_and_a_delete_detaches(stores: Any) -> None:
    customers = stores.customers
    await customers.insert_customer(customer_row("cus_a", 10))
    await add_methods(stores, "pm_1", "pm_2")
    await customers.attach_payment_method(MERCHANT, False, "pm_1", "cus_a", 20)
    refusal, row = await customers.update_customer(MERCHANT, False, "cus_a", CustomerChange(default_payment_method="pm_2"))
    assert (refusal, row) == (Refusal.default_not_attached, None)
    refusal, row = await customers.update_customer(MERCHANT, False, "cus_a", CustomerChange(default_payment_method="pm_1", email="a@shop.test"))
    assert refusal is None and row is not None and (row.default_payment_method, row.email) == ("pm_1", "a@shop.test")
    await customers.detach_payment_method("pm_1", 21)
    assert (await customers.find_customer(MERCHANT, False, "cus_a")).default_payment_method is None

    await customers.attach_payment_method(MERCHANT, False, "pm_2", "cus_a", 22)
    deleted = await customers.delete_customer(MERCHANT, False, "cus_a", 40)
    assert deleted is not None and deleted.deleted
    assert (await customers.attachment("pm_2")).detached_s == 40
    assert await customers.find_customer(MERCHANT, False, "cus_a") is None
    assert (await customers.get_customer("cus_a")).deleted
    assert await customers.delete_customer(MERCHANT, False, "cus_a", 41) is None
    assert (await customers.update_customer(MERCHANT, False, "cus_a", CustomerChange(name="x")))[0] is Refusal.customer_missing


async def test_pages_run_newest_first_with_cursors_both_ways(stores: Any) -> None:
    customers = stores.customers
    for index in range(5):
        await customers.insert_customer(customer_row(f"cus_{index}", 100 + index // 2, email=f"e{index % 2}@shop.test"))
    await customers.insert_customer(customer_row("cus_other", 100, merchant_id=MERCHANT + "_other"))

    def query(**values: Any) -> CustomerQuery:
        return CustomerQuery(MERCHANT, False, values.pop("limit", 10), **values)

    async def ids(**values: Any) -> tuple[list[str], bool]:
        rows, has_more = await customers.list_customers(query(**values))
        return [row.id for row in rows], has_more

    # Ties in a second are ordered by id, so no cursor skips or repeats.
    assert await ids() == (["cus_4", "cus_3", "cus_2", "cus_1", "cus_0"], False)
    assert await ids(limit=2) == (["cus_4", "cus_3"], True)
    assert await ids(limit=2, after=(101, "cus_3")) == (["cus_2", "cus_1"], True)
    assert await ids(limit=2, after=(100, "cus_1")) == (["cus_0"], False)
    assert await ids(limit=2, before=(100, "cus_1")) == (["cus_3", "cus_2"], True)
    assert await ids(limit=2, before=(101, "cus_3")) == (["cus_4"], False)
    assert await ids(email="e1@shop.test") == (["cus_3", "cus_1"], False)
    assert await ids(created_from_s=101, created_until_s=101) == (["cus_3", "cus_2"], False)

    await add_methods(stores, "pm_1", "pm_2", "pm_3")
    for payment_method_id in ("pm_1", "pm_2", "pm_3"):
        await customers.attach_payment_method(MERCHANT, False, payment_method_id, "cus_0", 50)
    await customers.detach_payment_method("pm_2", 51)
    rows, has_more = await customers.customer_payment_methods("cus_0", query(limit=1))
    assert ([row.id for row in rows], has_more) == (["pm_3"], True)
    rows, has_more = await customers.customer_payment_methods("cus_0", query(after=(3, "pm_3")))
    assert ([row.id for row in rows], has_more) == (["pm_1"], False)


async def test_the_idempotency_record_is_written_with_the_change(stores: Any) -> None:
    customers = stores.customers

    def record(key: str) -> Callable[[Any], IdempotencyRow]:
        return lambda row: IdempotencyRow(MERCHANT, key, b"\x01fingerprint", 200, row.id.encode(), row.id, 10**12)

    row = customer_row("cus_a", 10)
    await customers.insert_customer(row, record("create")(row))
    await customers.update_customer(MERCHANT, False, "cus_a", CustomerChange(name="Ada"), record("update"))
    # A refused change writes no record.
    await customers.update_customer(MERCHANT, False, "cus_a", CustomerChange(default_payment_method="pm_x"), record("refused"))
    found = {key: await stores.idempotency.find(MERCHANT, key, 0) for key in ("create", "update", "refused")}
    assert (found["create"].body, found["update"].body, found["refused"]) == (b"cus_a", b"cus_a", None)


async def test_two_attaches_at_once_to_two_customers_one_wins(stores: Any) -> None:
    customers = stores.customers
    await customers.insert_customer(customer_row("cus_a", 10))
    await customers.insert_customer(customer_row("cus_b", 11))
    await add_methods(stores, "pm_1")
    results: dict[str, Any] = {}

    async def attach(customer_id: str) -> None:
        results[customer_id] = await customers.attach_payment_method(MERCHANT, False, "pm_1", customer_id, 20)

    async with trio.open_nursery() as nursery:
        for customer_id in ("cus_a", "cus_b"):
            nursery.start_soon(attach, customer_id)
    refusals = sorted(str(refusal) for refusal, _ in results.values())
    assert refusals == ["None", "attached_elsewhere"], results
    winner = next(customer_id for customer_id, (refusal, _) in results.items() if refusal is None)
    assert (await customers.attachment("pm_1")).customer_id == winner
