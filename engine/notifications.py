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
- a charge raises Stripe's `charge.*` events about itself (data.object is
  the charge, named by its attempt): `charge.succeeded` when an
  authorization or charge is approved, `charge.failed` when one is declined
  (a declined capture is not: the charge is unchanged), `charge.captured`
  when a capture of it succeeds, `charge.refunded` for a refund and when a
  cancel releases its hold (`charge.expired` instead when the hold ran out),
  `charge.updated` when the merchant updates it;
- disputes raise `charge.dispute.created` with `charge.dispute.funds_withdrawn`
  (the amount and fee leave the balance at once), `charge.dispute.updated`
  when the merchant stages or submits evidence or changes its metadata,
  and `charge.dispute.closed` (with `charge.dispute.funds_reinstated` when
  won) when the issuer decides or the merchant accepts it;
- an increment of an authorization raises `amount_capturable_updated` when
  approved, and nothing while in flight or when declined.
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
    "charge.succeeded",
    "charge.failed",
    "charge.captured",
    "charge.expired",
    "charge.updated",
    "charge.refunded",
    "refund.created",
    "refund.updated",
    "refund.failed",
    "charge.dispute.created",
    "charge.dispute.updated",
    "charge.dispute.closed",
    "charge.dispute.funds_withdrawn",
    "charge.dispute.funds_reinstated",
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
    "charge.succeeded": "charge",
    "charge.failed": "charge",
    "charge.captured": "charge",
    "charge.expired": "charge",
    "charge.updated": "charge",
    "charge.refunded": "charge",
    "refund.created": "refund",
    "refund.updated": "refund",
    "refund.failed": "refund",
    "charge.dispute.created": "dispute",
    "charge.dispute.updated": "dispute",
    "charge.dispute.closed": "dispute",
    "charge.dispute.funds_withdrawn": "dispute",
    "charge.dispute.funds_reinstated": "dispute",
}

CHARGE_KINDS = (machine.AttemptKind.authorize, machine.AttemptKind.charge)


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
    elif isinstance(event, machine.AttemptApproved):
        raised.extend(_approved_charge(after, event.attempt_id))
    elif isinstance(event, machine.AttemptDeclined) and event.error is not None:
        attempt = after.attempt(event.attempt_id)
        if attempt is not None and attempt.kind in CHARGE_KINDS:
            raised.append(("charge.failed", attempt.id))
        raised.append(("payment_intent.payment_failed", after.id))
    elif isinstance(event, machine.IntentCanceled) and event.transfers and event.void is not None and event.void.parent_id is not None:
        # A hold released: Stripe counts the uncaptured amount refunded.
        expired = event.cancellation_reason == "automatic"
        raised.append(("charge.expired" if expired else "charge.refunded", event.void.parent_id))
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
        raised.append(("charge.dispute.funds_withdrawn", event.dispute.id))
    elif isinstance(event, machine.ChargeUpdated):
        raised.append(("charge.updated", event.details.attempt_id))
    elif isinstance(event, machine.DisputeUpdated):
        raised.append(("charge.dispute.updated", event.dispute_id))
    elif isinstance(event, machine.DisputeClosed):
        raised.append(("charge.dispute.closed", event.dispute_id))
        if event.status is machine.DisputeStatus.won:
            raised.append(("charge.dispute.funds_reinstated", event.dispute_id))
    entered = after.status if before is None or before.status is not after.status else None
    if _increment_in_flight_or_declined(event, after):
        # An increment passes through processing and, declined, comes back
        # to requires_capture with nothing changed: Stripe raises neither.
        entered = None
    status_event = None if entered is None else STATUS_EVENTS.get(entered)
    if status_event is not None:
        raised.append((status_event, after.id))
    return raised


def _approved_charge(after: PaymentIntent, attempt_id: str) -> list[tuple[str, str]]:
    """`charge.succeeded` for an approved authorization or charge,
    `charge.captured` (about the authorization) for an approved capture; a
    void's approval raises nothing (its cancel did)."""
    attempt = after.attempt(attempt_id)
    if attempt is None:
        return []
    if attempt.kind in CHARGE_KINDS:
        return [("charge.succeeded", attempt.id)]
    if attempt.kind is machine.AttemptKind.capture and attempt.parent_id is not None:
        return [("charge.captured", attempt.parent_id)]
    return []
