"""What deciding a command returns: a result code, the events to journal and
the effects the shell starts once those events are durable."""

from __future__ import annotations

import msgspec

from engine.events import Event
from engine.records import Attempt, PaymentIntent
from engine.results import Result


class NetworkCall(msgspec.Struct, frozen=True, tag=True):
    """Ask the card network to perform `kind` under the reference `attempt_id`.

    The attempt (or refund) is already journaled as pending. For captures,
    voids and refunds, `parent_id` is the authorization they act on.
    """

    intent_id: str
    attempt_id: str
    kind: str  # an AttemptKind, or "refund"
    payment_method_id: str
    amount: int
    currency: str
    parent_id: str | None = None


Effect = NetworkCall


class Decision(msgspec.Struct, frozen=True):
    result: Result
    events: tuple[Event, ...] = ()
    effects: tuple[Effect, ...] = ()
    param: str | None = None


def refuse(result: Result, param: str | None = None) -> Decision:
    return Decision(result=result, param=param)


def network_call(intent: PaymentIntent, attempt: Attempt) -> NetworkCall:
    """The network call that performs `attempt`, with the attempt's id as its reference."""
    return NetworkCall(
        intent_id=intent.id,
        attempt_id=attempt.id,
        kind=str(attempt.kind),
        payment_method_id=attempt.payment_method_id,
        amount=attempt.amount,
        currency=intent.currency,
        parent_id=attempt.parent_id,
    )
