"""Events: what the journal records of an intent, and their codec.

Every event is a frozen msgspec Struct in the tagged union `Event`. The tag
is the class name and the fields are encoded in the order they are declared,
so rows already in the journal decode as long as neither changes: rename or
reorder nothing here. An event carries the status it leads to and the ledger
transfers it makes, so replay never depends on today's tables or fees.
"""

from __future__ import annotations

import msgspec

from engine.ledger import Transfer
from engine.records import (
    Attempt, ChargeDetails, Dispute, DisputeStatus, IncrementRequest, PaymentError, PaymentIntent, Refund, RefundStatus,
)
from engine.status import Status


class IntentCreated(msgspec.Struct, frozen=True, tag=True):
    intent: PaymentIntent


class AttemptStarted(msgspec.Struct, frozen=True, tag=True):
    intent_id: str
    attempt: Attempt
    status: Status
    return_url: str | None = None
    # Given with the confirm; None leaves the intent's as it is.
    setup_future_usage: str | None = None


class AttemptApproved(msgspec.Struct, frozen=True, tag=True):
    intent_id: str
    attempt_id: str
    status: Status
    amount_capturable: int
    amount_received: int
    transfers: tuple[Transfer, ...] = ()


class AttemptDeclined(msgspec.Struct, frozen=True, tag=True):
    intent_id: str
    attempt_id: str
    status: Status
    error: PaymentError | None  # None for captures and voids: nothing for the customer to fix
    # An off-session authorization the network wanted authenticated: the
    # void that closes its challenge, which nobody is there to answer.
    void: Attempt | None = None


class AttemptActionRequired(msgspec.Struct, frozen=True, tag=True):
    intent_id: str
    attempt_id: str
    status: Status
    url: str


class AttemptOutcomeUnknown(msgspec.Struct, frozen=True, tag=True):
    intent_id: str
    attempt_id: str
    status: Status


class AttemptNotSent(msgspec.Struct, frozen=True, tag=True):
    intent_id: str
    attempt_id: str
    status: Status


class IntentCanceled(msgspec.Struct, frozen=True, tag=True):
    intent_id: str
    status: Status
    cancellation_reason: str | None
    canceled_at_s: int
    void: Attempt | None = None
    transfers: tuple[Transfer, ...] = ()
    # An authorization still waiting for 3-D Secure when the intent was canceled.
    abandoned_attempt_id: str | None = None


class RefundCreated(msgspec.Struct, frozen=True, tag=True):
    intent_id: str
    refund: Refund
    transfers: tuple[Transfer, ...] = ()


class RefundUpdated(msgspec.Struct, frozen=True, tag=True):
    intent_id: str
    refund_id: str
    status: RefundStatus
    outcome_unknown: bool = False
    failure_reason: str | None = None
    transfers: tuple[Transfer, ...] = ()


class DisputeOpened(msgspec.Struct, frozen=True, tag=True):
    intent_id: str
    dispute: Dispute
    transfers: tuple[Transfer, ...] = ()


class DisputeClosed(msgspec.Struct, frozen=True, tag=True):
    intent_id: str
    dispute_id: str
    status: DisputeStatus
    transfers: tuple[Transfer, ...] = ()


class IntentUpdated(msgspec.Struct, frozen=True, tag=True):
    """What an update left the intent asking for (every field, not a diff)."""

    intent_id: str
    status: Status
    amount: int
    currency: str
    description: str | None
    metadata: dict[str, str]
    payment_method_id: str | None
    # Rows written before customers existed decode with neither.
    customer_id: str | None = None
    setup_future_usage: str | None = None


class DisputeUpdated(msgspec.Struct, frozen=True, tag=True):
    """What the merchant's update or close left the dispute with (every
    field, not a diff)."""

    intent_id: str
    dispute_id: str
    status: DisputeStatus
    evidence: dict[str, str]
    metadata: dict[str, str]
    submission_count: int
    past_due: bool


class IncrementRequested(msgspec.Struct, frozen=True, tag=True):
    """What an increment (started by the AttemptStarted before it) changes
    besides the amount, kept until the network answers."""

    intent_id: str
    request: IncrementRequest


class ChargeUpdated(msgspec.Struct, frozen=True, tag=True):
    """What the merchant's update left a charge showing (every field)."""

    intent_id: str
    details: ChargeDetails


class RefundMetadataUpdated(msgspec.Struct, frozen=True, tag=True):
    intent_id: str
    refund_id: str
    metadata: dict[str, str]


Event = (
    IntentCreated
    | AttemptStarted
    | AttemptApproved
    | AttemptDeclined
    | AttemptActionRequired
    | AttemptOutcomeUnknown
    | AttemptNotSent
    | IntentCanceled
    | RefundCreated
    | RefundUpdated
    | DisputeOpened
    | DisputeClosed
    | IntentUpdated
    | DisputeUpdated
    | IncrementRequested
    | ChargeUpdated
    | RefundMetadataUpdated
)


def transfers_of(event: Event) -> tuple[Transfer, ...]:
    return getattr(event, "transfers", ())


def entity_id_of(event: Event) -> str:
    return event.intent.id if isinstance(event, IntentCreated) else event.intent_id


event_encoder = msgspec.json.Encoder()
event_decoder = msgspec.json.Decoder(Event)
