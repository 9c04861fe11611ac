"""Result codes: every way a command can be refused by the core.

A refusal is something a client can cause, so it is a value, never an
exception. The gateway maps each code to a Stripe error (status, type, code);
nothing here knows about HTTP.
"""

from __future__ import annotations

import enum


class Result(enum.StrEnum):
    ok = "ok"
    # shape: the command itself is malformed
    amount_out_of_range = "amount_out_of_range"
    amount_too_small = "amount_too_small"
    cancellation_reason_invalid = "cancellation_reason_invalid"
    refund_reason_invalid = "refund_reason_invalid"
    currency_unknown = "currency_unknown"
    metadata_invalid = "metadata_invalid"
    evidence_invalid = "evidence_invalid"
    return_url_invalid = "return_url_invalid"
    email_invalid = "email_invalid"
    fraud_report_invalid = "fraud_report_invalid"
    shipping_invalid = "shipping_invalid"
    # lookups: the command names something that is not there for this caller
    intent_missing = "intent_missing"
    intent_exists = "intent_exists"
    charge_missing = "charge_missing"
    refund_missing = "refund_missing"
    dispute_missing = "dispute_missing"
    # state: the intent is not in a status that allows the command
    intent_unexpected_state = "intent_unexpected_state"
    payment_method_required = "payment_method_required"
    intent_not_refundable = "intent_not_refundable"
    intent_disputed = "intent_disputed"
    dispute_not_open = "dispute_not_open"
    # amounts: checked last, against the intent's current figures
    amount_exceeds_capturable = "amount_exceeds_capturable"
    amount_exceeds_refundable = "amount_exceeds_refundable"
    intent_fully_refunded = "intent_fully_refunded"
    refunds_too_many = "refunds_too_many"
    increment_amount_invalid = "increment_amount_invalid"
    increments_too_many = "increments_too_many"
    # network answers that no longer match an open attempt
    attempt_not_pending = "attempt_not_pending"
