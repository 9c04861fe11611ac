"""Routes for the merchant's money: the balance, and the balance
transactions that make it up. A balance transaction is a posted movement of
the merchant's balance with the fees taken on it (engine.ledger.entries):
a charge's carries its processing fee, a dispute's its dispute fee, so
the balance is the sum of their `net`."""

from __future__ import annotations

import time

from quart import Response

from engine import ledger
from engine.intent import PaymentIntent
from gateway import errors, expansions, objects, pages, params
from gateway.calls import ID_CHARS_MAX, Calls
from gateway.openapi import api
from gateway.responses import json_response
from gateway.routing import Routes
from shards.node import NotServed
from store.rows import ApiKeyRow

ROUTES = Routes()


@ROUTES.get("/v1/balance")
@api("Retrieve the balance", objects.BalanceObject)
async def retrieve_balance(calls: Calls, key: ApiKeyRow) -> Response:
    return json_response(objects.balance(calls.node.merchant_funds(key.merchant_id, int(time.time())), key.livemode))


@ROUTES.get("/v1/balance_transactions")
@api("List balance transactions, newest first", objects.ListObject[objects.BalanceTransactionObject], query=params.ListParams)
async def list_balance_transactions(calls: Calls, key: ApiKeyRow) -> Response:
    values = calls.query(params.ListParams)
    expansions.check(values.expand, "list", "balance_transaction")
    now_s = int(time.time())
    transfers = calls.node.merchant_transfers(key.merchant_id)
    if values.payment_intent is not None:
        transfers = [transfer for transfer in transfers if transfer.intent_id == values.payment_intent]
    entries = ledger.entries(transfers)
    if values.type is not None:
        entries = [e for e in entries if objects.BALANCE_TRANSACTION_TYPES.get(e.transfer.code, "adjustment") == values.type]
    return json_response(
        pages.page(
            entries,
            values,
            url="/v1/balance_transactions",
            kind="balance_transaction",
            key=lambda e: (e.transfer.created_s, objects.balance_transaction_id(e.transfer)),
            render=lambda e: objects.balance_entry(e, key.merchant_id, now_s, _intent(calls, e.transfer.intent_id)),
        )
    )


@ROUTES.get("/v1/balance_transactions/<transaction_id>")
@api("Retrieve a balance transaction", objects.BalanceTransactionObject)
async def retrieve_balance_transaction(calls: Calls, key: ApiKeyRow, transaction_id: str) -> Response:
    if len(transaction_id) <= ID_CHARS_MAX and transaction_id.startswith("txn_"):
        for entry in ledger.entries(calls.node.merchant_transfers(key.merchant_id)):
            if objects.balance_transaction_id(entry.transfer) == transaction_id:
                intent = _intent(calls, entry.transfer.intent_id)
                return json_response(objects.balance_entry(entry, key.merchant_id, int(time.time()), intent))
    raise errors.not_found("balance transaction", transaction_id, "id")


def _intent(calls: Calls, intent_id: str) -> PaymentIntent | None:
    """The intent a transfer of this node's ledger belongs to (in memory
    beside it), for naming a capture's charge."""
    try:
        return calls.node.intent(intent_id)
    except NotServed:
        # Handed off since its transfers were read: the hold names the charge.
        return None
