"""Refunds: their own small state machine beside the intent's.

Theory of operation
-------------------
A refund is asked for only while the intent's table allows `CreateRefund`
(the intent has `succeeded`) and no dispute is open. It does not move the
intent. Each refund is its own network operation: its id is the reference,
it opens `pending`, and the network's answer moves it by
`REFUND_TRANSITIONS`; a refund that succeeded may still fail later, when the
network says so. Several may be in flight at once; together with disputes
not won they never exceed what was received (`amount_returnable`).

The merchant's balance gives the money back as soon as the refund is asked
for; a failure, at once or later, posts it back.
"""

from __future__ import annotations

from engine.commands import (
    CreateRefund,
    RecordActionRequired,
    RecordApproval,
    RecordDecline,
    RecordRefundFailure,
    RecordUnknownOutcome,
)
from engine.decisions import Decision, NetworkCall, refuse
from engine.events import RefundCreated, RefundUpdated
from engine.ledger import Transfer
from engine.postings import ledger_single
from engine.records import PaymentIntent, Refund, RefundStatus
from engine.results import Result
from engine.shapes import REFUND_REASONS, check_metadata
from engine.status import TRANSITIONS

REFUNDS_PER_INTENT_MAX = 100

# A refund's own moves: the answer to its network call, then possibly a late
# failure reported by the network. That failure may overtake the answer (lost
# or still on its way): the network's last word is the refund's end either way.
REFUND_TRANSITIONS: dict[RefundStatus, dict[type, RefundStatus]] = {
    RefundStatus.pending: {
        RecordApproval: RefundStatus.succeeded,
        RecordDecline: RefundStatus.failed,
        RecordUnknownOutcome: RefundStatus.pending,
        RecordRefundFailure: RefundStatus.failed,
    },
    RefundStatus.succeeded: {RecordRefundFailure: RefundStatus.failed},
    RefundStatus.failed: {},
}


def _failure_posting(intent: PaymentIntent, refund: Refund, at_s: int) -> Transfer:
    return ledger_single(intent, f"{refund.id}:refund_failure", "refund_failure", refund.amount, at_s)


def decide_refund(intent: PaymentIntent, command: CreateRefund) -> Decision:
    """Opens a refund of `amount` (by default all that is still returnable)
    and asks the network for it; refused on a bad reason or metadata, an
    intent not refundable or disputed, an amount not returnable, or one refund
    too many."""
    if command.reason is not None and command.reason not in REFUND_REASONS:
        return refuse(Result.refund_reason_invalid, "reason")
    if not check_metadata(command.metadata):
        return refuse(Result.metadata_invalid, "metadata")
    if TRANSITIONS[intent.status].get(CreateRefund) is None:
        return refuse(Result.intent_not_refundable, "payment_intent")
    if intent.has_open_dispute():
        # As Stripe does: while the issuer decides, the dispute holds the money.
        return refuse(Result.intent_disputed, "payment_intent")
    remaining = intent.amount_returnable
    if remaining <= 0:
        return refuse(Result.intent_fully_refunded, "payment_intent")
    amount = remaining if command.amount is None else command.amount
    if not (isinstance(amount, int) and 1 <= amount <= remaining):
        return refuse(Result.amount_exceeds_refundable, "amount")
    if len(intent.refunds) >= REFUNDS_PER_INTENT_MAX:
        return refuse(Result.refunds_too_many, "payment_intent")
    authorization = intent.authorization()
    assert authorization is not None, intent
    refund = Refund(
        id=command.refund_id,
        intent_id=intent.id,
        amount=amount,
        status=RefundStatus.pending,
        created_s=command.at_s,
        reason=command.reason,
        metadata=command.metadata,
    )
    transfer = ledger_single(intent, f"{refund.id}:refund", "refund", amount, command.at_s, to_merchant=False)
    effect = NetworkCall(
        intent_id=intent.id,
        attempt_id=refund.id,
        kind="refund",
        payment_method_id=authorization.payment_method_id,
        amount=amount,
        currency=intent.currency,
        parent_id=authorization.id,
    )
    return Decision(result=Result.ok, events=(RefundCreated(intent.id, refund, (transfer,)),), effects=(effect,))


def decide_refund_answer(
    intent: PaymentIntent, command: RecordApproval | RecordDecline | RecordActionRequired | RecordUnknownOutcome
) -> Decision:
    """The network's answer to a refund's own call; the caller has checked
    that `command.attempt_id` names one of the intent's refunds."""
    refund = intent.refund(command.attempt_id)
    assert refund is not None
    target = REFUND_TRANSITIONS[refund.status].get(type(command))
    if target is None or (isinstance(command, RecordUnknownOutcome) and refund.outcome_unknown):
        return refuse(Result.attempt_not_pending, "attempt")
    transfers: tuple[Transfer, ...] = ()
    failure_reason = None
    if isinstance(command, RecordDecline):
        failure_reason = command.code
        transfers = (_failure_posting(intent, refund, command.at_s),)
    event = RefundUpdated(
        intent_id=intent.id,
        refund_id=refund.id,
        status=target,
        outcome_unknown=isinstance(command, RecordUnknownOutcome),
        failure_reason=failure_reason,
        transfers=transfers,
    )
    return Decision(result=Result.ok, events=(event,))


def decide_refund_failure(intent: PaymentIntent, command: RecordRefundFailure) -> Decision:
    """Records the network's late failure of a refund that had succeeded (or
    whose answer it overtook), and gives the amount back to the merchant's
    balance."""
    refund = intent.refund(command.refund_id)
    if refund is None:
        return refuse(Result.attempt_not_pending, "refund")
    target = REFUND_TRANSITIONS[refund.status].get(RecordRefundFailure)
    if target is None:
        return refuse(Result.attempt_not_pending, "refund")
    event = RefundUpdated(
        intent_id=intent.id,
        refund_id=refund.id,
        status=target,
        failure_reason=command.failure_reason,
        transfers=(_failure_posting(intent, refund, command.at_s),),
    )
    return Decision(result=Result.ok, events=(event,))
