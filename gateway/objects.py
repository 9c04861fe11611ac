"""Stripe-shaped JSON objects rendered from engine state and store rows."""

from __future__ import annotations

from typing import Any

from engine.intent import PaymentIntent
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
        "latest_charge": None,
        "livemode": intent.livemode,
        "metadata": intent.metadata,
        "next_action": None,
        "payment_method": intent.payment_method_id,
        "payment_method_types": ["card"],
        "status": str(intent.status),
        "cancellation_reason": None,
        "canceled_at": None,
    }
