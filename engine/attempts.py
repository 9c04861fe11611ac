"""Deciding the commands that move the intent itself: create, confirm,
capture, cancel, expiry, and the network's answers to its attempts.

Each `decide_x` runs its ladder against the intent as it is and returns a
`Decision`; none changes anything. The moves allowed are `TRANSITIONS` in
`engine.status`; the special cases listed there are decided here. Answers
to a refund's network call are `engine.refunds`.
"""

from __future__ import annotations

import hashlib

from engine import ids, ledger
from engine.commands import (
    CancelIntent,
    CaptureIntent,
    CaptureMethod,
    ConfirmIntent,
    CreateIntent,
    ExpireAuthorization,
    RecordActionRequired,
    RecordApproval,
    RecordDecline,
    RecordNotSent,
    RecordUnknownOutcome,
)
from engine.decisions import Decision, Effect, network_call, refuse
from engine.events import (
    AttemptActionRequired,
    AttemptApproved,
    AttemptDeclined,
    AttemptNotSent,
    AttemptOutcomeUnknown,
    AttemptStarted,
    Event,
    IntentCanceled,
    IntentCreated,
)
from engine.increments import increment_approval
from engine.ledger import Transfer
from engine.postings import ledger_capture, ledger_fee, ledger_hold, ledger_release_hold, ledger_single
from engine.records import OPEN_ATTEMPT, Attempt, AttemptKind, AttemptStatus, PaymentError, PaymentIntent
from engine.results import Result
from engine.shapes import CANCELLATION_REASONS, check_create_shape
from engine.status import TRANSITIONS, Status
from engine.urls import return_url_allowed


def decide_create(existing: PaymentIntent | None, command: CreateIntent) -> Decision:
    """Creates the intent and, with `confirm`, confirms it in the same decision;
    refused on a malformed shape, an id already taken, or a confirm without a
    payment method."""
    refusal = check_create_shape(
        command.amount, command.currency, command.metadata, command.description, command.return_url, command.livemode
    )
    if refusal is not None:
        return refusal
    if existing is not None:
        # Ids carry 80 random bits, so this is a bug in the shell, but a
        # refusal is cheaper than an assert that takes the partition down.
        return refuse(Result.intent_exists, "intent")
    if command.confirm and command.payment_method_id is None:
        return refuse(Result.payment_method_required, "payment_method")
    status = Status.requires_payment_method
    if command.payment_method_id is not None:
        status = Status.requires_confirmation
    intent = PaymentIntent(
        id=command.intent_id,
        merchant_id=command.merchant_id,
        livemode=command.livemode,
        amount=command.amount,
        currency=command.currency,
        capture_method=command.capture_method,
        status=status,
        created_s=command.at_s,
        client_secret=command.client_secret,
        description=command.description,
        metadata=command.metadata,
        payment_method_id=command.payment_method_id,
        fee_basis_points=command.fee_basis_points,
        fee_fixed_minor=command.fee_fixed_minor,
        settlement_delay_s=command.settlement_delay_s,
        dispute_fee_minor=command.dispute_fee_minor,
        customer_id=command.customer_id,
        setup_future_usage=command.setup_future_usage,
    )
    created = IntentCreated(intent=intent)
    if not command.confirm:
        return Decision(result=Result.ok, events=(created,))
    confirm = ConfirmIntent(
        intent_id=command.intent_id,
        merchant_id=command.merchant_id,
        livemode=command.livemode,
        attempt_id=command.attempt_id,
        at_s=command.at_s,
        return_url=command.return_url,
        card=command.card,
        off_session=command.off_session,
    )
    confirmed = decide_confirm(intent, confirm)
    assert confirmed.result is Result.ok, confirmed
    return Decision(result=Result.ok, events=(created, *confirmed.events), effects=confirmed.effects)


def _start(
    intent: PaymentIntent, attempt: Attempt, target: Status, return_url: str | None = None, setup_future_usage: str | None = None
) -> Decision:
    started = AttemptStarted(
        intent_id=intent.id, attempt=attempt, status=target, return_url=return_url, setup_future_usage=setup_future_usage
    )
    return Decision(result=Result.ok, events=(started,), effects=(network_call(intent, attempt),))


def decide_confirm(intent: PaymentIntent, command: ConfirmIntent) -> Decision:
    """Opens a charge (automatic capture) or an authorization (manual) of the
    whole amount and asks the network for it; refused where the table allows
    no confirm, without a payment method, or with a return_url not allowed."""
    target = TRANSITIONS[intent.status].get(ConfirmIntent)
    if target is None:
        return refuse(Result.intent_unexpected_state)
    payment_method_id = command.payment_method_id or intent.payment_method_id
    if payment_method_id is None:
        return refuse(Result.payment_method_required, "payment_method")
    assert intent.open_attempt() is None, intent
    automatic = intent.capture_method is CaptureMethod.automatic
    attempt = Attempt(
        id=command.attempt_id,
        kind=AttemptKind.charge if automatic else AttemptKind.authorize,
        payment_method_id=payment_method_id,
        amount=intent.amount,
        status=AttemptStatus.pending,
        created_s=command.at_s,
        card=command.card,
        off_session=command.off_session,
    )
    if command.return_url is not None and not return_url_allowed(command.return_url, command.livemode):
        return refuse(Result.return_url_invalid, "return_url")
    return _start(intent, attempt, target, command.return_url, command.setup_future_usage)


def decide_capture(intent: PaymentIntent, command: CaptureIntent) -> Decision:
    """Opens a capture of `amount_to_capture` (by default all that is
    capturable) against the authorization; refused where the table allows no
    capture or for an amount outside 1..amount_capturable."""
    target = TRANSITIONS[intent.status].get(CaptureIntent)
    if target is None:
        return refuse(Result.intent_unexpected_state)
    amount = intent.amount_capturable if command.amount_to_capture is None else command.amount_to_capture
    if not (isinstance(amount, int) and 1 <= amount <= intent.amount_capturable):
        return refuse(Result.amount_exceeds_capturable, "amount_to_capture")
    authorization = intent.authorization()
    assert authorization is not None and intent.open_attempt() is None, intent
    attempt = Attempt(
        id=command.attempt_id,
        kind=AttemptKind.capture,
        payment_method_id=authorization.payment_method_id,
        amount=amount,
        status=AttemptStatus.pending,
        created_s=command.at_s,
        parent_id=authorization.id,
    )
    return _start(intent, attempt, target)


def _void(parent: Attempt, amount: int, attempt_id: str, at_s: int) -> Attempt:
    return Attempt(
        id=attempt_id,
        kind=AttemptKind.void,
        payment_method_id=parent.payment_method_id,
        amount=amount,
        status=AttemptStatus.pending,
        created_s=at_s,
        parent_id=parent.id,
    )


def _cancel(intent: PaymentIntent, target: Status, reason: str | None, attempt_id: str, at_s: int) -> Decision:
    void = None
    transfers: tuple[Transfer, ...] = ()
    effects: tuple[Effect, ...] = ()
    if intent.status is Status.requires_capture:
        authorization = intent.authorization()
        assert authorization is not None, intent
        void = _void(authorization, intent.amount_capturable, attempt_id, at_s)
        transfers = (ledger_release_hold(intent, authorization.id, at_s),)
        effects = (network_call(intent, void),)
    abandoned = intent.open_attempt() if intent.status is Status.requires_action else None
    if abandoned is not None:
        # Nothing is held yet, but the network must not finish this
        # authorization if the cardholder answers the challenge later.
        void = _void(abandoned, 0, attempt_id, at_s)
        effects = (network_call(intent, void),)
    event = IntentCanceled(
        intent_id=intent.id,
        status=target,
        cancellation_reason=reason,
        canceled_at_s=at_s,
        void=void,
        transfers=transfers,
        abandoned_attempt_id=None if abandoned is None else abandoned.id,
    )
    return Decision(result=Result.ok, events=(event,), effects=effects)


def decide_cancel(intent: PaymentIntent, command: CancelIntent) -> Decision:
    """Cancels the intent, releasing a hold and voiding what the network could
    still complete; refused for a reason Stripe does not list or where the
    table allows no cancel."""
    if command.cancellation_reason is not None and command.cancellation_reason not in CANCELLATION_REASONS:
        return refuse(Result.cancellation_reason_invalid, "cancellation_reason")
    target = TRANSITIONS[intent.status].get(CancelIntent)
    if target is None:
        return refuse(Result.intent_unexpected_state)
    return _cancel(intent, target, command.cancellation_reason, command.attempt_id, command.at_s)


def decide_expire(intent: PaymentIntent, command: ExpireAuthorization) -> Decision:
    """Cancels an authorization that reached its age limit, as a cancel with
    the reason `automatic`."""
    target = TRANSITIONS[intent.status].get(ExpireAuthorization)
    if target is None:
        # Captured or canceled in the meantime: nothing to expire.
        return refuse(Result.intent_unexpected_state)
    return _cancel(intent, target, "automatic", command.attempt_id, command.at_s)


def decide_answer(
    intent: PaymentIntent, command: RecordApproval | RecordDecline | RecordActionRequired | RecordUnknownOutcome | RecordNotSent
) -> Decision:
    """The network's answer to one of the intent's attempts (not a refund's)."""
    attempt = intent.attempt(command.attempt_id)
    if attempt is None or attempt.status not in OPEN_ATTEMPT:
        return refuse(Result.attempt_not_pending, "attempt")
    if isinstance(command, RecordNotSent) and (
        attempt.status is not AttemptStatus.pending or attempt.kind not in (AttemptKind.authorize, AttemptKind.charge)
    ):
        # Only a pending authorization can be known not to have left: once
        # unknown, it may have reached the network, and only reconciliation
        # may close it.
        return refuse(Result.attempt_not_pending, "attempt")
    if isinstance(command, RecordUnknownOutcome) and attempt.status is AttemptStatus.unknown:
        return refuse(Result.attempt_not_pending, "attempt")
    if isinstance(command, RecordActionRequired) and attempt.kind not in (AttemptKind.authorize, AttemptKind.charge):
        # Only an authorization can wait for the cardholder; a capture or a
        # void waiting on 3-D Secure is a confused network. Refusing keeps
        # the attempt open for reconciliation instead of stranding a hold.
        return refuse(Result.attempt_not_pending, "attempt")
    if attempt.kind is AttemptKind.void:
        return _decide_void_answer(intent, attempt, command)
    target = TRANSITIONS[intent.status].get(type(command))
    if target is None:
        return refuse(Result.intent_unexpected_state)
    event: Event
    if isinstance(command, RecordApproval):
        event = _approval(intent, attempt, target, command.at_s)
    elif isinstance(command, RecordDecline):
        event = _decline(intent, attempt, target, command)
    elif isinstance(command, RecordActionRequired) and attempt.off_session:
        return _off_session_unauthenticated(intent, attempt, command.at_s)
    elif isinstance(command, RecordActionRequired):
        event = AttemptActionRequired(intent_id=intent.id, attempt_id=attempt.id, status=target, url=command.url)
    elif isinstance(command, RecordNotSent):
        event = AttemptNotSent(intent_id=intent.id, attempt_id=attempt.id, status=target)
    else:
        event = AttemptOutcomeUnknown(intent_id=intent.id, attempt_id=attempt.id, status=target)
    return Decision(result=Result.ok, events=(event,))


# Stripe's decline of an off-session payment the issuer wants authenticated.
AUTHENTICATION_REQUIRED = "authentication_required"
AUTHENTICATION_REQUIRED_MESSAGE = "Your card was declined. This transaction requires authentication."


def void_id_of(attempt_id: str) -> str:
    """The id of the void that closes `attempt_id`'s unanswered 3-D Secure
    challenge: made from the attempt's id (the core mints no ids of its
    own), in its partition and millisecond, so it routes like the attempt
    and replays the same."""
    parsed = ids.parse_id(attempt_id, ids.ATTEMPT_PREFIX)
    if parsed is None:
        return attempt_id + "_void"  # not a minted id: engine tests only
    created_ms, partition = parsed
    digest = hashlib.sha256(attempt_id.encode() + b"/void").digest()
    return ids.make_id(ids.ATTEMPT_PREFIX, partition, created_ms, digest[: ids.RANDOM_BYTES])


def _off_session_unauthenticated(intent: PaymentIntent, attempt: Attempt, at_s: int) -> Decision:
    """An off-session authorization the network wants authenticated: the
    cardholder is not there to answer a challenge, so it is declined as
    Stripe declines it (authentication_required, the intent back to
    requires_payment_method), and the challenge the network opened is
    voided so that nothing is ever authorized under it."""
    error = PaymentError(
        code=AUTHENTICATION_REQUIRED,
        decline_code=AUTHENTICATION_REQUIRED,
        message=AUTHENTICATION_REQUIRED_MESSAGE,
        payment_method_id=attempt.payment_method_id,
    )
    void = _void(attempt, 0, void_id_of(attempt.id), at_s)
    declined = AttemptDeclined(
        intent_id=intent.id, attempt_id=attempt.id, status=Status.requires_payment_method, error=error, void=void
    )
    return Decision(result=Result.ok, events=(declined,), effects=(network_call(intent, void),))


def _decline(intent: PaymentIntent, attempt: Attempt, target: Status, command: RecordDecline) -> AttemptDeclined:
    if attempt.kind in (AttemptKind.capture, AttemptKind.increment):
        # The authorization still holds as it was: the merchant may capture
        # (or, after a declined increment, capture what it holds).
        return AttemptDeclined(intent_id=intent.id, attempt_id=attempt.id, status=Status.requires_capture, error=None)
    error = PaymentError(
        code=command.code,
        decline_code=command.decline_code,
        message=command.message,
        payment_method_id=attempt.payment_method_id,
    )
    return AttemptDeclined(intent_id=intent.id, attempt_id=attempt.id, status=target, error=error)


def _approval(intent: PaymentIntent, attempt: Attempt, target: Status, at_s: int) -> AttemptApproved:
    if attempt.kind is AttemptKind.increment:
        return increment_approval(intent, attempt, at_s)
    if attempt.kind is AttemptKind.authorize:
        # Manual capture: the money is only held, and the intent waits for
        # the merchant's capture whatever the table's target says.
        return AttemptApproved(
            intent_id=intent.id,
            attempt_id=attempt.id,
            status=Status.requires_capture,
            amount_capturable=attempt.amount,
            amount_received=0,
            transfers=(ledger_hold(intent, attempt, at_s),),
        )
    if attempt.kind is AttemptKind.charge:
        money_in = ledger_single(intent, f"{attempt.id}:charge", "charge", attempt.amount, at_s)
    else:
        assert attempt.kind is AttemptKind.capture, attempt
        money_in = ledger_capture(intent, attempt, at_s)
    fee = ledger.fee_minor(attempt.amount, intent.fee_basis_points, intent.fee_fixed_minor)
    transfers = [money_in]
    if fee:
        transfers.append(ledger_fee(intent, f"{attempt.id}:fee", "fee", fee, at_s))
    return AttemptApproved(
        intent_id=intent.id,
        attempt_id=attempt.id,
        status=target,
        amount_capturable=0,
        amount_received=attempt.amount,
        transfers=tuple(transfers),
    )


def _decide_void_answer(
    intent: PaymentIntent, attempt: Attempt, command: RecordApproval | RecordDecline | RecordUnknownOutcome
) -> Decision:
    """A void's answer only closes the void: the intent is already canceled
    and its hold already released in the ledger."""
    event: Event
    if isinstance(command, RecordApproval):
        event = AttemptApproved(intent.id, attempt.id, intent.status, intent.amount_capturable, intent.amount_received)
    elif isinstance(command, RecordDecline):
        event = AttemptDeclined(intent_id=intent.id, attempt_id=attempt.id, status=intent.status, error=None)
    else:
        event = AttemptOutcomeUnknown(intent_id=intent.id, attempt_id=attempt.id, status=intent.status)
    return Decision(result=Result.ok, events=(event,))
