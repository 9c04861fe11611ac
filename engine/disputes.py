"""Disputes: their own small state machine beside the intent's.

Theory of operation
-------------------
The network reports that a cardholder disputes a charge, and later how the
issuer decided. A dispute opens only while the intent's table allows
`RecordDisputeOpened` (the intent has `succeeded`), one at a time, for no
more than may still go back to the cardholder. It does not move the intent.
The issuer decides it once: `DISPUTE_TRANSITIONS` takes it from
`needs_response` to `won` or `lost`, and from there nowhere.

The disputed amount leaves the merchant's balance at once, with the dispute
fee; winning returns the amount, never the fee.
"""

from __future__ import annotations

from engine.commands import RecordDisputeClosed, RecordDisputeOpened
from engine.decisions import Decision, refuse
from engine.events import DisputeClosed, DisputeOpened
from engine.ledger import Transfer
from engine.postings import ledger_fee, ledger_single
from engine.records import Dispute, DisputeStatus, PaymentIntent
from engine.results import Result
from engine.status import TRANSITIONS

# A dispute's own moves: the issuer decides it once.
DISPUTE_TRANSITIONS: dict[DisputeStatus, dict[type, tuple[DisputeStatus, ...]]] = {
    DisputeStatus.needs_response: {RecordDisputeClosed: (DisputeStatus.won, DisputeStatus.lost)},
    DisputeStatus.won: {},
    DisputeStatus.lost: {},
}


def decide_dispute_opened(intent: PaymentIntent, command: RecordDisputeOpened) -> Decision:
    """Opens the dispute the network reports, taking its amount and the
    dispute fee out of the merchant's balance; refused when the dispute is
    known already, the intent has not succeeded, another dispute is open, or
    the amount is more than may still go back."""
    if intent.dispute(command.dispute_id) is not None:
        return refuse(Result.attempt_not_pending, "dispute")
    if TRANSITIONS[intent.status].get(RecordDisputeOpened) is None:
        return refuse(Result.intent_unexpected_state)
    if intent.has_open_dispute():
        return refuse(Result.intent_disputed, "dispute")
    if not 1 <= command.amount <= intent.amount_returnable:
        # The network's figure disagrees with ours: refuse and let
        # reconciliation report it rather than move money we cannot explain.
        return refuse(Result.amount_exceeds_refundable, "amount")
    dispute = Dispute(
        id=command.dispute_id,
        intent_id=intent.id,
        amount=command.amount,
        status=DisputeStatus.needs_response,
        created_s=command.at_s,
    )
    transfers = [ledger_single(intent, f"{dispute.id}:dispute", "dispute", command.amount, command.at_s, to_merchant=False)]
    fee = intent.dispute_fee_minor
    if fee > 0:
        transfers.append(ledger_fee(intent, f"{dispute.id}:dispute_fee", "dispute_fee", fee, command.at_s))
    return Decision(result=Result.ok, events=(DisputeOpened(intent.id, dispute, tuple(transfers)),))


def decide_dispute_closed(intent: PaymentIntent, command: RecordDisputeClosed) -> Decision:
    """Records the issuer's decision, once; a win gives the disputed amount
    back to the merchant's balance, never the fee."""
    dispute = intent.dispute(command.dispute_id)
    if dispute is None or RecordDisputeClosed not in DISPUTE_TRANSITIONS[dispute.status]:
        return refuse(Result.attempt_not_pending, "dispute")
    status = DisputeStatus.won if command.won else DisputeStatus.lost
    transfers: tuple[Transfer, ...] = ()
    if command.won:
        transfers = (ledger_single(intent, f"{dispute.id}:dispute_won", "dispute_won", dispute.amount, command.at_s),)
    return Decision(result=Result.ok, events=(DisputeClosed(intent.id, dispute.id, status, transfers),))
