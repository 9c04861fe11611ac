"""Deciding an update of an intent (Stripe's `POST /v1/payment_intents/{id}`).

What the intent asks for may change until it is confirmed: the amount, the
currency, the payment method, the customer and setup_future_usage (an empty
one clears it) are refused once an attempt has started
(the intent is then processing, waiting for 3-D Secure, held or done). The
description and the metadata may change at any time. A payment method given
to an intent that had none makes it ready to confirm, as Stripe does.
"""

from __future__ import annotations

from engine.commands import UpdateIntent
from engine.decisions import Decision, refuse
from engine.events import IntentUpdated
from engine.records import PaymentIntent
from engine.results import Result
from engine.shapes import check_create_shape
from engine.status import Status

# Where the amount, the currency and the payment method may still change.
OPEN_FOR_CHANGES = (Status.requires_payment_method, Status.requires_confirmation)


def decide_update(intent: PaymentIntent, command: UpdateIntent) -> Decision:
    changes = [
        name
        for name, value in (
            ("amount", command.amount),
            ("currency", command.currency),
            ("payment_method", command.payment_method_id),
            ("customer", command.customer_id),
            ("setup_future_usage", command.setup_future_usage),
        )
        if value is not None
    ]
    if changes and intent.status not in OPEN_FOR_CHANGES:
        return refuse(Result.intent_unexpected_state, changes[0])
    amount = intent.amount if command.amount is None else command.amount
    currency = intent.currency if command.currency is None else command.currency
    metadata = {key: value for key, value in {**intent.metadata, **command.metadata}.items() if value != ""}
    description = intent.description if command.description is None else (command.description or None)
    refusal = check_create_shape(amount, currency, metadata, description)
    if refusal is not None:
        return refusal
    payment_method_id = command.payment_method_id or intent.payment_method_id
    status = intent.status
    if status is Status.requires_payment_method and payment_method_id is not None:
        status = Status.requires_confirmation
    updated = IntentUpdated(
        intent_id=intent.id,
        status=status,
        amount=amount,
        currency=currency,
        description=description,
        metadata=metadata,
        payment_method_id=payment_method_id,
        customer_id=command.customer_id or intent.customer_id,
        setup_future_usage=intent.setup_future_usage if command.setup_future_usage is None else (command.setup_future_usage or None),
    )
    return Decision(result=Result.ok, events=(updated,))
