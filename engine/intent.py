"""The PaymentIntent state machine: `decide` and `evolve`, and the face the
rest of the code imports (`from engine import intent as machine`).

`decide` checks a command against an intent and returns a `Decision`: a
refusal that changes nothing, or events to journal and effects to start.
`evolve` applies one journaled event, live and on replay. The theory of
operation and the table of moves are in `engine.status`. The parts:

    engine.status     Status and TRANSITIONS, the intent's table
    engine.commands   the commands (tagged union `Command`), CaptureMethod
    engine.records    PaymentIntent, Attempt, Refund, Dispute and their statuses
    engine.events     the events (tagged union `Event`) and the journal codec
    engine.decisions  Decision and the NetworkCall effect
    engine.shapes     shape checks: amount, currency, metadata, description
    engine.postings   the ledger transfers events carry
    engine.attempts   create, confirm, capture, cancel, expiry, network answers
    engine.refunds    REFUND_TRANSITIONS and the refund decisions
    engine.disputes   DISPUTE_TRANSITIONS and the dispute decisions

Every name other packages use is re-exported here (`__all__`), with the
same objects, so msgspec tags and encodings do not depend on which module
a name is imported from.
"""

from __future__ import annotations

import msgspec

from engine.attempts import decide_answer, decide_cancel, decide_capture, decide_confirm, decide_create, decide_expire
from engine.commands import (
    ANSWERS, CancelIntent, CaptureIntent, CaptureMethod, Command, ConfirmIntent, CreateIntent, CreateRefund,
    ExpireAuthorization, RecordActionRequired, RecordApproval, RecordDecline, RecordDisputeClosed,
    RecordDisputeOpened, RecordNotSent, RecordRefundFailure, RecordUnknownOutcome, UpdateIntent,
    UpdateDispute, CloseDispute, CardSummary,
)
from engine.amendments import decide_charge_update, decide_refund_update
from engine.commands import IncrementAuthorization, UpdateCharge, UpdateRefund
from engine.decisions import Decision, Effect, NetworkCall, refuse
from engine.events import ChargeUpdated, IncrementRequested, RefundMetadataUpdated
from engine.increments import INCREMENTS_PER_INTENT_MAX, decide_increment, evolve_increment_answer, is_increment_answer
from engine.records import ChargeDetails, IncrementRequest
from engine.disputes import (
    DISPUTE_TRANSITIONS, decide_dispute_close, decide_dispute_closed, decide_dispute_opened, decide_dispute_update,
)
from engine.events import (
    AttemptActionRequired, AttemptApproved, AttemptDeclined, AttemptNotSent, AttemptOutcomeUnknown, AttemptStarted,
    DisputeClosed, DisputeOpened, Event, IntentCanceled, IntentCreated, IntentUpdated, RefundCreated, RefundUpdated, entity_id_of,
    event_decoder, event_encoder, transfers_of, DisputeUpdated,
)
from engine.postings import ledger_release_hold, ledger_single
from engine.records import (
    OPEN_ATTEMPT, Attempt, AttemptKind, AttemptStatus, Dispute, DisputeStatus, PaymentError, PaymentIntent, Refund,
    RefundStatus, OPEN_DISPUTE,
)
from engine.refunds import (
    REFUND_TRANSITIONS, REFUNDS_PER_INTENT_MAX, decide_refund, decide_refund_answer, decide_refund_failure,
)
from engine.results import Result
from engine.shapes import (
    CANCELLATION_REASONS, DESCRIPTION_CHARS_MAX, METADATA_KEY_CHARS_MAX, METADATA_KEYS_MAX, METADATA_VALUE_CHARS_MAX,
    REFUND_REASONS, check_create_shape, check_metadata, check_text,
)
from engine.status import TRANSITIONS, Status
from engine.updates import decide_update

# The public face, by the module that defines each name. decide and evolve
# are defined here; the decide_x functions they dispatch to are not public.
__all__ = [
    "decide", "evolve",
    # engine.status
    "TRANSITIONS", "Status",
    # engine.commands
    "ANSWERS", "CancelIntent", "CaptureIntent", "CaptureMethod", "Command", "ConfirmIntent", "CreateIntent",
    "CreateRefund", "ExpireAuthorization", "RecordActionRequired", "RecordApproval", "RecordDecline",
    "RecordDisputeClosed", "RecordDisputeOpened", "RecordNotSent", "RecordRefundFailure", "RecordUnknownOutcome",
    "UpdateIntent", "UpdateDispute", "CloseDispute", "CardSummary",
    # engine.records
    "OPEN_ATTEMPT", "Attempt", "AttemptKind", "AttemptStatus", "Dispute", "DisputeStatus", "PaymentError",
    "PaymentIntent", "Refund", "RefundStatus", "OPEN_DISPUTE",
    # engine.events
    "AttemptActionRequired", "AttemptApproved", "AttemptDeclined", "AttemptNotSent", "AttemptOutcomeUnknown",
    "AttemptStarted",
    "DisputeClosed", "DisputeOpened", "Event", "IntentCanceled", "IntentCreated", "IntentUpdated", "RefundCreated",
    "RefundUpdated", "entity_id_of", "event_decoder", "event_encoder", "transfers_of", "DisputeUpdated",
    # engine.decisions
    "Decision", "Effect", "NetworkCall", "refuse",
    # increments and amendments (engine.commands, engine.events, engine.records, engine.increments)
    "IncrementAuthorization", "UpdateCharge", "UpdateRefund", "ChargeUpdated", "IncrementRequested", "RefundMetadataUpdated",
    "ChargeDetails", "IncrementRequest", "INCREMENTS_PER_INTENT_MAX",
    # engine.shapes
    "CANCELLATION_REASONS", "DESCRIPTION_CHARS_MAX", "METADATA_KEY_CHARS_MAX", "METADATA_KEYS_MAX",
    "METADATA_VALUE_CHARS_MAX", "REFUND_REASONS", "check_create_shape", "check_metadata", "check_text",
    # engine.postings
    "ledger_release_hold", "ledger_single",
    # engine.refunds
    "REFUND_TRANSITIONS", "REFUNDS_PER_INTENT_MAX",
    # engine.disputes
    "DISPUTE_TRANSITIONS",
    # engine.results
    "Result",
]


def decide(intent: PaymentIntent | None, command: Command) -> Decision:
    """Check `command` against `intent` (None when there is none yet).

    Returns a refusal that changes nothing, or the events to journal and the
    effects to start once they are durable.
    """
    if isinstance(command, CreateIntent):
        return decide_create(intent, command)
    if intent is None:
        return refuse(Result.intent_missing, "intent")
    # A network answer names an attempt or a refund by its reference.
    if isinstance(command, ANSWERS) and intent.refund(command.attempt_id) is not None:
        return decide_refund_answer(intent, command)
    if isinstance(command, RecordRefundFailure):
        return decide_refund_failure(intent, command)
    if isinstance(command, RecordDisputeOpened):
        return decide_dispute_opened(intent, command)
    if isinstance(command, RecordDisputeClosed):
        return decide_dispute_closed(intent, command)
    if isinstance(command, ANSWERS):
        return decide_answer(intent, command)
    if isinstance(command, ExpireAuthorization):
        return decide_expire(intent, command)
    # Client commands: lookups first, then status, then amounts.
    if intent.merchant_id != command.merchant_id or intent.livemode != command.livemode:
        return refuse(Result.intent_missing, "intent")
    if isinstance(command, ConfirmIntent):
        return decide_confirm(intent, command)
    if isinstance(command, CaptureIntent):
        return decide_capture(intent, command)
    if isinstance(command, CancelIntent):
        return decide_cancel(intent, command)
    if isinstance(command, UpdateIntent):
        return decide_update(intent, command)
    if isinstance(command, UpdateDispute):
        return decide_dispute_update(intent, command)
    if isinstance(command, CloseDispute):
        return decide_dispute_close(intent, command)
    if isinstance(command, IncrementAuthorization):
        return decide_increment(intent, command)
    if isinstance(command, UpdateCharge):
        return decide_charge_update(intent, command)
    if isinstance(command, UpdateRefund):
        return decide_refund_update(intent, command)
    assert isinstance(command, CreateRefund), command
    return decide_refund(intent, command)


def _with_attempt_status(intent: PaymentIntent, attempt_id: str, status: AttemptStatus) -> tuple[Attempt, ...]:
    return tuple(
        msgspec.structs.replace(attempt, status=status) if attempt.id == attempt_id else attempt
        for attempt in intent.attempts
    )


def _is_void(intent: PaymentIntent, attempt_id: str) -> bool:
    attempt = intent.attempt(attempt_id)
    return attempt is not None and attempt.kind is AttemptKind.void


def evolve(intent: PaymentIntent | None, event: Event) -> PaymentIntent:
    """Apply one journaled event. Pure; used both live and on replay."""
    if isinstance(event, IntentCreated):
        assert intent is None, event
        return event.intent
    assert intent is not None and intent.id == event.intent_id, event
    replace = msgspec.structs.replace
    if isinstance(event, AttemptStarted):
        payment_method_id = event.attempt.payment_method_id if event.attempt.kind is not AttemptKind.capture else intent.payment_method_id
        return replace(
            intent,
            status=event.status,
            payment_method_id=payment_method_id,
            attempts=(*intent.attempts, event.attempt),
            return_url=event.return_url if event.return_url is not None else intent.return_url,
            setup_future_usage=event.setup_future_usage if event.setup_future_usage is not None else intent.setup_future_usage,
        )
    if isinstance(event, (AttemptApproved, AttemptDeclined)) and is_increment_answer(intent, event):
        return evolve_increment_answer(intent, event)
    if isinstance(event, AttemptApproved) and _is_void(intent, event.attempt_id):
        # A void only closes itself: the intent was settled when it was asked
        # for (canceled, or declined off session) and may have moved on since
        # (confirmed again, waiting for 3-D Secure).
        return replace(intent, attempts=_with_attempt_status(intent, event.attempt_id, AttemptStatus.succeeded))
    if isinstance(event, AttemptApproved):
        return replace(
            intent,
            status=event.status,
            amount_capturable=event.amount_capturable,
            amount_received=event.amount_received,
            last_payment_error=None if event.status is not Status.canceled else intent.last_payment_error,
            attempts=_with_attempt_status(intent, event.attempt_id, AttemptStatus.succeeded),
            next_action_url=None,
        )
    if isinstance(event, AttemptDeclined):
        attempts = _with_attempt_status(intent, event.attempt_id, AttemptStatus.failed)
        if event.void is not None:
            attempts = (*attempts, event.void)
        if event.error is None:
            return replace(intent, status=event.status, attempts=attempts)
        # As Stripe does, a declined payment method leaves the intent: it is
        # kept only on last_payment_error, so a retry must name a method.
        return replace(
            intent,
            status=event.status,
            payment_method_id=None,
            last_payment_error=event.error,
            attempts=attempts,
            next_action_url=None,
        )
    if isinstance(event, AttemptActionRequired):
        return replace(intent, status=event.status, next_action_url=event.url)
    if isinstance(event, AttemptNotSent):
        # The payment method stays: nothing was wrong with it.
        return replace(
            intent,
            status=event.status,
            attempts=_with_attempt_status(intent, event.attempt_id, AttemptStatus.not_sent),
        )
    if isinstance(event, AttemptOutcomeUnknown):
        return replace(
            intent,
            status=event.status,
            attempts=_with_attempt_status(intent, event.attempt_id, AttemptStatus.unknown),
        )
    if isinstance(event, IntentCanceled):
        attempts = intent.attempts
        if event.abandoned_attempt_id is not None:
            attempts = _with_attempt_status(intent, event.abandoned_attempt_id, AttemptStatus.failed)
        if event.void is not None:
            attempts = (*attempts, event.void)
        return replace(
            intent,
            next_action_url=None,
            status=event.status,
            cancellation_reason=event.cancellation_reason,
            canceled_at_s=event.canceled_at_s,
            amount_capturable=0,
            attempts=attempts,
        )
    if isinstance(event, IntentUpdated):
        return replace(
            intent,
            status=event.status,
            amount=event.amount,
            currency=event.currency,
            description=event.description,
            metadata=event.metadata,
            payment_method_id=event.payment_method_id,
            customer_id=event.customer_id,
            setup_future_usage=event.setup_future_usage,
        )
    return _evolve_attached(intent, event)


def _evolve_attached(intent: PaymentIntent, event: Event) -> PaymentIntent:
    """Apply an event about what hangs off an intent (its refunds,
    disputes, an increment's request, a charge's details), not its status."""
    replace = msgspec.structs.replace
    if isinstance(event, RefundCreated):
        return replace(intent, refunds=(*intent.refunds, event.refund))
    if isinstance(event, DisputeOpened):
        return replace(intent, disputes=(*intent.disputes, event.dispute))
    if isinstance(event, DisputeClosed):
        disputes = tuple(
            replace(dispute, status=event.status) if dispute.id == event.dispute_id else dispute for dispute in intent.disputes
        )
        return replace(intent, disputes=disputes)
    if isinstance(event, DisputeUpdated):
        disputes = tuple(
            replace(
                dispute,
                status=event.status,
                evidence=event.evidence,
                metadata=event.metadata,
                submission_count=event.submission_count,
                past_due=event.past_due,
            )
            if dispute.id == event.dispute_id
            else dispute
            for dispute in intent.disputes
        )
        return replace(intent, disputes=disputes)
    if isinstance(event, IncrementRequested):
        return replace(intent, increment_request=event.request)
    if isinstance(event, ChargeUpdated):
        kept = tuple(details for details in intent.charge_details if details.attempt_id != event.details.attempt_id)
        return replace(intent, charge_details=(*kept, event.details))
    if isinstance(event, RefundMetadataUpdated):
        refunds = tuple(replace(refund, metadata=event.metadata) if refund.id == event.refund_id else refund for refund in intent.refunds)
        return replace(intent, refunds=refunds)
    assert isinstance(event, RefundUpdated), event
    refunds = tuple(
        replace(refund, status=event.status, outcome_unknown=event.outcome_unknown, failure_reason=event.failure_reason)
        if refund.id == event.refund_id
        else refund
        for refund in intent.refunds
    )
    return replace(intent, refunds=refunds)
