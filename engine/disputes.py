"""Disputes: their own small state machine beside the intent's.

Theory of operation
-------------------
The network reports that a cardholder disputes a charge, and later how the
issuer decided. A dispute opens only while the intent's table allows
`RecordDisputeOpened` (the intent has `succeeded`), one at a time, for no
more than may still go back to the cardholder. It does not move the intent.
The issuer decides it once: `DISPUTE_TRANSITIONS` takes it from
`needs_response` (or `under_review`) to `won` or `lost`, and from there
nowhere.

The merchant answers while it `needs_response`, by Stripe's update: evidence
is staged (`UpdateDispute` with submit false stays in `needs_response`) or
submitted (it goes `under_review`: evidence is submitted once). Or the
merchant accepts it (`CloseDispute`): it is `lost` at once. Metadata may
change in any status (the special case of `UpdateDispute` in the table:
outside `needs_response` it carries metadata only).

The disputed amount leaves the merchant's balance at once, with the dispute
fee; winning returns the amount, never the fee. Closing moves no money: it
was taken when the dispute opened.
"""

from __future__ import annotations

from engine.commands import CloseDispute, RecordDisputeClosed, RecordDisputeOpened, UpdateDispute
from engine.decisions import Decision, refuse
from engine.events import DisputeClosed, DisputeOpened, DisputeUpdated
from engine.ledger import Transfer
from engine.postings import ledger_fee, ledger_single
from engine.records import Dispute, DisputeStatus, PaymentIntent
from engine.results import Result
from engine.shapes import check_metadata, check_text
from engine.status import TRANSITIONS

# A dispute's own moves: the merchant answers it (stages evidence, submits
# it, or accepts the loss), the issuer decides it once.
DISPUTE_TRANSITIONS: dict[DisputeStatus, dict[type, tuple[DisputeStatus, ...]]] = {
    DisputeStatus.needs_response: {
        UpdateDispute: (DisputeStatus.needs_response, DisputeStatus.under_review),
        CloseDispute: (DisputeStatus.lost,),
        RecordDisputeClosed: (DisputeStatus.won, DisputeStatus.lost),
    },
    DisputeStatus.under_review: {
        UpdateDispute: (DisputeStatus.under_review,),
        RecordDisputeClosed: (DisputeStatus.won, DisputeStatus.lost),
    },
    DisputeStatus.won: {UpdateDispute: (DisputeStatus.won,)},
    DisputeStatus.lost: {UpdateDispute: (DisputeStatus.lost,)},
}

# How long the merchant has to answer, from the dispute's opening (card
# networks give 7 to 21 days; the shortest, so no answer is late).
RESPONSE_WINDOW_S = 7 * 86_400

# Stripe's text fields of dispute evidence, with their length limits; the
# file fields need Stripe's Files API, which is not served here.
EVIDENCE_TEXT_FIELDS: dict[str, int] = {
    "access_activity_log": 20_000,
    "billing_address": 5_000,
    "cancellation_policy_disclosure": 20_000,
    "cancellation_rebuttal": 20_000,
    "customer_email_address": 5_000,
    "customer_name": 5_000,
    "customer_purchase_ip": 5_000,
    "duplicate_charge_explanation": 20_000,
    "duplicate_charge_id": 5_000,
    "product_description": 20_000,
    "refund_policy_disclosure": 20_000,
    "refund_refusal_explanation": 20_000,
    "service_date": 5_000,
    "shipping_address": 5_000,
    "shipping_carrier": 5_000,
    "shipping_date": 5_000,
    "shipping_tracking_number": 5_000,
    "uncategorized_text": 20_000,
}
# Stripe's limit on all evidence fields together.
EVIDENCE_CHARS_MAX = 150_000


# Stripe's dispute categories (a dispute's `reason`).
DISPUTE_REASONS = frozenset({
    "bank_cannot_process", "check_returned", "credit_not_processed", "customer_initiated", "debit_not_authorized",
    "duplicate", "fraudulent", "general", "incorrect_account_details", "insufficient_funds", "product_not_received",
    "product_unacceptable", "subscription_canceled", "unrecognized",
})


def due_by_s(dispute: Dispute) -> int:
    """When the merchant's answer is due."""
    return dispute.due_by_s if dispute.due_by_s is not None else dispute.created_s + RESPONSE_WINDOW_S


def _check_evidence(evidence: dict[str, str]) -> bool:
    return (
        all(field in EVIDENCE_TEXT_FIELDS and check_text(text, EVIDENCE_TEXT_FIELDS[field]) for field, text in evidence.items())
        and sum(len(text) for text in evidence.values()) <= EVIDENCE_CHARS_MAX
    )


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
        due_by_s=command.at_s + RESPONSE_WINDOW_S,
        reason=command.reason if command.reason in DISPUTE_REASONS else None,
    )
    transfers = [ledger_single(intent, f"{dispute.id}:dispute", "dispute", command.amount, command.at_s, to_merchant=False)]
    fee = intent.dispute_fee_minor
    if fee > 0:
        transfers.append(ledger_fee(intent, f"{dispute.id}:dispute_fee", "dispute_fee", fee, command.at_s))
    return Decision(result=Result.ok, events=(DisputeOpened(intent.id, dispute, tuple(transfers)),))


def decide_dispute_closed(intent: PaymentIntent, command: RecordDisputeClosed) -> Decision:
    """Records the issuer's decision, once, whether or not the merchant
    answered; a win gives the disputed amount back to the merchant's
    balance, never the fee."""
    dispute = intent.dispute(command.dispute_id)
    if dispute is None or RecordDisputeClosed not in DISPUTE_TRANSITIONS[dispute.status]:
        return refuse(Result.attempt_not_pending, "dispute")
    status = DisputeStatus.won if command.won else DisputeStatus.lost
    transfers: tuple[Transfer, ...] = ()
    if command.won:
        transfers = (ledger_single(intent, f"{dispute.id}:dispute_won", "dispute_won", dispute.amount, command.at_s),)
    return Decision(result=Result.ok, events=(DisputeClosed(intent.id, dispute.id, status, transfers),))


def decide_dispute_update(intent: PaymentIntent, command: UpdateDispute) -> Decision:
    """The merchant's update of a dispute: evidence merged into what is
    staged (an empty value removes a field) and, with `submit`, submitted,
    which puts it under review; metadata merged, in any status. Refused on
    evidence fields or metadata out of shape, an unknown dispute, or
    evidence for a dispute no longer waiting for it."""
    if not _check_evidence(command.evidence):
        return refuse(Result.evidence_invalid, "evidence")
    if not check_metadata(command.metadata):
        return refuse(Result.metadata_invalid, "metadata")
    dispute = intent.dispute(command.dispute_id)
    if dispute is None:
        return refuse(Result.dispute_missing, "dispute")
    targets = DISPUTE_TRANSITIONS[dispute.status].get(UpdateDispute, ())
    answering = bool(command.evidence) or command.submit
    if not targets or (answering and dispute.status is not DisputeStatus.needs_response):
        # Special case: once submitted, decided or accepted, a dispute takes
        # no more evidence; only its metadata may change.
        return refuse(Result.dispute_not_open, "evidence")
    evidence = {field: text for field, text in {**dispute.evidence, **command.evidence}.items() if text != ""}
    metadata = {key: value for key, value in {**dispute.metadata, **command.metadata}.items() if value != ""}
    if not _check_evidence(evidence):
        return refuse(Result.evidence_invalid, "evidence")
    if not check_metadata(metadata):
        return refuse(Result.metadata_invalid, "metadata")
    status, submission_count, past_due = dispute.status, dispute.submission_count, dispute.past_due
    if command.submit:
        status = DisputeStatus.under_review
        submission_count += 1
        past_due = command.at_s > due_by_s(dispute)
    assert status in targets, (dispute.status, status)
    updated = DisputeUpdated(
        intent_id=intent.id,
        dispute_id=dispute.id,
        status=status,
        evidence=evidence,
        metadata=metadata,
        submission_count=submission_count,
        past_due=past_due,
    )
    return Decision(result=Result.ok, events=(updated,))


def decide_dispute_close(intent: PaymentIntent, command: CloseDispute) -> Decision:
    """The merchant accepts the dispute: lost, for good, moving no money
    (it left when the dispute opened). Refused for an unknown dispute or one
    no longer waiting for an answer."""
    dispute = intent.dispute(command.dispute_id)
    if dispute is None:
        return refuse(Result.dispute_missing, "dispute")
    if CloseDispute not in DISPUTE_TRANSITIONS[dispute.status]:
        return refuse(Result.dispute_not_open, "dispute")
    return Decision(result=Result.ok, events=(DisputeClosed(intent.id, dispute.id, DisputeStatus.lost),))
