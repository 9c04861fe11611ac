"""Stripe-shaped JSON objects rendered from engine state and store rows."""

from __future__ import annotations

from typing import Any

from engine import ledger
from engine.intent import Dispute, PaymentIntent, Refund
from engine.ledger import Transfer
from shards.store import PaymentMethodRow


def payment_method(row: PaymentMethodRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "payment_method",
        "type": "card",
        "created": row.created_s,
        "livemode": row.livemode,
        "metadata": {},
        "billing_details": {"address": None, "email": None, "name": None, "phone": None},
        "card": {
            "brand": row.brand,
            "last4": row.last4,
            "exp_month": row.exp_month,
            "exp_year": row.exp_year,
            "fingerprint": row.fingerprint,
        },
    }


def payment_intent(intent: PaymentIntent) -> dict[str, Any]:
    error = intent.last_payment_error
    authorization = intent.authorization()
    last_payment_error = None
    if error is not None:
        last_payment_error = {
            "type": "card_error",
            "code": error.code,
            "decline_code": error.decline_code,
            "message": error.message,
            "payment_method": {"id": error.payment_method_id, "object": "payment_method"},
        }
    return {
        "id": intent.id,
        "object": "payment_intent",
        "amount": intent.amount,
        "amount_capturable": intent.amount_capturable,
        "amount_received": intent.amount_received,
        "capture_method": str(intent.capture_method),
        "confirmation_method": "automatic",
        "client_secret": intent.client_secret,
        "created": intent.created_s,
        "currency": intent.currency,
        "description": intent.description,
        "last_payment_error": last_payment_error,
        "latest_charge": None if authorization is None else authorization.id,
        "livemode": intent.livemode,
        "metadata": intent.metadata,
        "next_action": None
        if intent.next_action_url is None
        else {"type": "redirect_to_url", "redirect_to_url": {"url": intent.next_action_url, "return_url": intent.return_url}},
        "payment_method": intent.payment_method_id,
        "payment_method_types": ["card"],
        "status": str(intent.status),
        "cancellation_reason": intent.cancellation_reason,
        "canceled_at": intent.canceled_at_s,
    }


def refund(intent: PaymentIntent, item: Refund) -> dict[str, Any]:
    authorization = intent.authorization()
    return {
        "id": item.id,
        "object": "refund",
        "amount": item.amount,
        "currency": intent.currency,
        "payment_intent": intent.id,
        "charge": None if authorization is None else authorization.id,
        "created": item.created_s,
        "reason": item.reason,
        "status": str(item.status),
        "failure_reason": item.failure_reason,
        "metadata": item.metadata,
    }


def dispute(intent: PaymentIntent, item: Dispute) -> dict[str, Any]:
    authorization = intent.authorization()
    return {
        "id": item.id,
        "object": "dispute",
        "amount": item.amount,
        "currency": intent.currency,
        "payment_intent": intent.id,
        "charge": None if authorization is None else authorization.id,
        "created": item.created_s,
        "status": str(item.status),
        "livemode": intent.livemode,
    }


def balance(funds: dict[str, tuple[int, int]], livemode: bool) -> dict[str, Any]:
    currencies = sorted(funds)
    return {
        "object": "balance",
        "livemode": livemode,
        "available": [{"amount": funds[c][0], "currency": c, "source_types": {"card": funds[c][0]}} for c in currencies],
        "pending": [{"amount": funds[c][1], "currency": c, "source_types": {"card": funds[c][1]}} for c in currencies],
    }


BALANCE_TRANSACTION_TYPES = {
    "charge": "charge",
    "fee": "stripe_fee",
    "refund": "refund",
    "refund_failure": "refund_failure",
    "dispute": "adjustment",
    "dispute_fee": "stripe_fee",
    "dispute_won": "adjustment",
}


def balance_transaction_id(transfer: Transfer) -> str:
    return "txn_" + transfer.id.replace(":", "_")


def balance_transaction(transfer: Transfer, merchant_id: str, now_s: int) -> dict[str, Any]:
    """A posted movement of the merchant's balance, from the merchant's side."""
    into_merchant = transfer.credit_account_id == ledger.account_id(merchant_id, ledger.MERCHANT_BALANCE)
    amount = transfer.amount if into_merchant else -transfer.amount
    available_on = transfer.available_on_s if transfer.available_on_s is not None else transfer.created_s
    return {
        "id": balance_transaction_id(transfer),
        "object": "balance_transaction",
        "amount": amount,
        "fee": 0,
        "net": amount,
        "currency": transfer.currency,
        "type": BALANCE_TRANSACTION_TYPES.get(transfer.code, "adjustment"),
        "source": transfer.intent_id,
        "created": transfer.created_s,
        "available_on": available_on,
        "status": "available" if available_on <= now_s else "pending",
        "reporting_category": transfer.code,
    }
