"""Routes for the merchant's money: the balance, and the balance
transactions that make it up."""

from __future__ import annotations

import time

from quart import Response

from gateway import errors, expansions, objects, pages, params
from gateway.calls import ID_CHARS_MAX, Calls
from gateway.openapi import api
from gateway.responses import json_response
from gateway.routing import Routes
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
    if values.type is not None:
        transfers = [t for t in transfers if objects.BALANCE_TRANSACTION_TYPES.get(t.code, "adjustment") == values.type]
    return json_response(
        pages.page(
            transfers,
            values,
            url="/v1/balance_transactions",
            kind="balance_transaction",
            key=lambda t: (t.created_s, objects.balance_transaction_id(t)),
            render=lambda t: objects.balance_transaction(t, key.merchant_id, now_s),
        )
    )


@ROUTES.get("/v1/balance_transactions/<transaction_id>")
@api("Retrieve a balance transaction", objects.BalanceTransactionObject)
async def retrieve_balance_transaction(calls: Calls, key: ApiKeyRow, transaction_id: str) -> Response:
    if len(transaction_id) <= ID_CHARS_MAX and transaction_id.startswith("txn_"):
        for transfer in calls.node.merchant_transfers(key.merchant_id):
            if objects.balance_transaction_id(transfer) == transaction_id:
                return json_response(objects.balance_transaction(transfer, key.merchant_id, int(time.time())))
    raise errors.not_found("balance transaction", transaction_id, "id")
