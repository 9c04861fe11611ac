"""Which Stripe events a journaled change raises, and about which object.

A merchant hears of an intent's moves through events named as Stripe names
them. This is a pure function of the intent before an event, the event and
the intent after it; the actor calls it while deciding a batch, so the
events are written in the same transaction as the change (the outbox).

Rules:
- an intent entering a status raises that status's event (`processing`,
  `requires_action`, `succeeded`, `canceled`; `requires_capture` raises
  `amount_capturable_updated`, as in Stripe);
- a failed authorization raises `payment_intent.payment_failed`; a declined
  capture does not (the authorization still holds, nothing changed for the
  merchant);
- a new refund raises `refund.created` and `charge.refunded`; a refund
  reaching a final status raises `refund.updated`, and `refund.failed` too
  when it failed; an unknown outcome raises nothing (it is not a status);
- disputes raise `charge.dispute.created` and `charge.dispute.closed`.
"""

from __future__ import annotations

from engine import intent as machine
from engine.intent import PaymentIntent, Status

# The types a webhook endpoint may subscribe to, besides "*".
EVENT_TYPES = (
    "payment_intent.created",
    "payment_intent.requires_action",
    "payment_intent.amount_capturable_updated",
    "payment_intent.processing",
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.canceled",
    "charge.refunded",
    "refund.created",
    "refund.updated",
    "refund.failed",
    "charge.dispute.created",
    "charge.dispute.closed",
)

STATUS_EVENTS = {
    Status.processing: "payment_intent.processing",
    Status.requires_action: "payment_intent.requires_action",
    Status.requires_capture: "payment_intent.amount_capturable_updated",
    Status.succeeded: "payment_intent.succeeded",
    Status.canceled: "payment_intent.canceled",
}

# What data.object of an event type shows.
OBJECT_KINDS = {
    "charge.refunded": "charge",
    "refund.created": "refund",
    "refund.updated": "refund",
    "refund.failed": "refund",
    "charge.dispute.created": "dispute",
    "charge.dispute.closed": "dispute",
}


def object_kind(event_type: str) -> str:
    """'payment_intent', 'charge', 'refund' or 'dispute'."""
    return OBJECT_KINDS.get(event_type, "payment_intent")


def _increment_in_flight_or_declined(event: machine.Event, after: PaymentIntent) -> bool:
    if isinstance(event, machine.AttemptStarted):
        return event.attempt.kind is machine.AttemptKind.increment
    if isinstance(event, machine.AttemptDeclined):
        attempt = after.attempt(event.attempt_id)
        return attempt is not None and attempt.kind is machine.AttemptKind.increment
    return False


def notices(before: PaymentIntent | None, event: machine.Event, after: PaymentIntent) -> list[tuple[str, str]]:
    """The (event type, object id) pairs one journaled event raises, in order."""
    raised: list[tuple[str, str]] = []
    if isinstance(event, machine.IntentCreated):
        raised.append(("payment_intent.created", after.id))
    elif isinstance(event, machine.AttemptDeclined) and event.error is not None:
        raised.append(("payment_intent.payment_failed", after.id))
    elif isinstance(event, machine.RefundCreated):
        raised.append(("refund.created", event.refund.id))
        charge = after.authorization()
        if charge is not None:
            raised.append(("charge.refunded", charge.id))
    elif isinstance(event, machine.RefundUpdated):
        previous = None if before is None else before.refund(event.refund_id)
        if previous is not None and previous.status is not event.status:
            raised.append(("refund.updated", event.refund_id))
            if event.status is machine.RefundStatus.failed:
                raised.append(("refund.failed", event.refund_id))
    elif isinstance(event, machine.DisputeOpened):
        raised.append(("charge.dispute.created", event.dispute.id))
    elif isinstance(event, machine.DisputeClosed):
        raised.append(("charge.dispute.closed", event.dispute_id))
    entered = after.status if before is None or before.status is not after.status else None
    if _increment_in_flight_or_declined(event, after):
        # An increment passes through processing and, declined, comes back
        # to requires_capture with nothing changed: Stripe raises neither.
        entered = None
    status_event = None if entered is None else STATUS_EVENTS.get(entered)
    if status_event is not None:
        raised.append((status_event, after.id))
    return raised
