"""The PaymentIntent state machine, with its refunds and ledger transfers.

Theory of operation
-------------------
An intent moves through Stripe's statuses. A command is first *decided*:
checked against the intent as it is now, in a fixed order (shape, then
lookups, then status, then amounts), and either refused with a `Result` code
or turned into events plus effects. Events are then *applied* with `evolve`,
which is also what the journal replays on recovery. Events carry the status
they lead to and the ledger transfers they make, so replaying an old journal
never depends on today's table or today's fee policy.

`TRANSITIONS[status][command type]` is the whole table of allowed moves of an
intent; any pair not in it is refused with `intent_unexpected_state` and
changes nothing.

The double-charge protocol (DESIGN section 5) lives here as data: a confirm
or a capture opens an attempt in status `pending` and asks for a `NetworkCall`
effect; the intent is `processing` until the network's answer (or the lack of
one) is recorded. `processing` accepts no confirm, capture or cancel, so an
intent never has two open money-moving attempts.

Special cases (kept here, next to the table):
- an approval leads to `succeeded` for a charge (automatic capture) or a
  capture, but to `requires_capture` for an authorization (manual capture);
- a declined capture returns to `requires_capture`: the authorization holds;
- confirming needs a payment method, on the intent or given with the confirm;
  a decline takes the declined method off the intent, as Stripe does;
- cancel from `requires_capture` (and expiry) releases the hold in the
  ledger at once and asks the network to void it; the void's answer changes
  nothing on the intent, which is final;
- an authorization that needs 3-D Secure leaves its attempt open while the
  intent is `requires_action`; the network's final answer for that same
  attempt comes after the cardholder's challenge. A cancel meanwhile
  abandons the attempt and asks the network to void it;
- disputes, like refunds, do not move the intent; each has its own table,
  `DISPUTE_TRANSITIONS`;
- refunds do not move the intent, which stays `succeeded`. Each refund is its
  own network operation (its id is the reference) with a small table of its
  own, `REFUND_TRANSITIONS`. Several may be in flight at once; together they
  never exceed what was received.
"""

from __future__ import annotations

import enum

import msgspec

from engine import ledger, money
from engine.urls import return_url_allowed
from engine.ledger import Transfer, TransferKind
from engine.results import Result

METADATA_KEYS_MAX = 50
METADATA_KEY_CHARS_MAX = 40
METADATA_VALUE_CHARS_MAX = 500
DESCRIPTION_CHARS_MAX = 1000
REFUNDS_PER_INTENT_MAX = 100

CANCELLATION_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer", "abandoned"})
REFUND_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer"})


class Status(enum.StrEnum):
    requires_payment_method = "requires_payment_method"
    requires_confirmation = "requires_confirmation"
    requires_action = "requires_action"
    processing = "processing"
    requires_capture = "requires_capture"
    canceled = "canceled"
    succeeded = "succeeded"


class CaptureMethod(enum.StrEnum):
    automatic = "automatic"
    manual = "manual"


class AttemptKind(enum.StrEnum):
    authorize = "authorize"  # hold only (manual capture)
    charge = "charge"  # authorize and capture in one exchange (automatic capture)
    capture = "capture"  # capture an earlier authorization
    void = "void"  # release an earlier authorization


class AttemptStatus(enum.StrEnum):
    pending = "pending"
    succeeded = "succeeded"
    failed = "failed"
    unknown = "unknown"


class DisputeStatus(enum.StrEnum):
    needs_response = "needs_response"
    won = "won"
    lost = "lost"


class RefundStatus(enum.StrEnum):
    pending = "pending"
    succeeded = "succeeded"
    failed = "failed"


OPEN_ATTEMPT = (AttemptStatus.pending, AttemptStatus.unknown)


# State kept in memory for every intent is not tracked by the garbage
# collector (gc=False): it holds only strings, numbers and tuples of the
# same, so it can form no cycle, and full collections over hundreds of
# thousands of intents were what stalled actors in long runs.
class PaymentError(msgspec.Struct, frozen=True, gc=False):
    """Why the last attempt failed, shown as `last_payment_error`."""

    code: str
    decline_code: str | None
    message: str
    payment_method_id: str


class Attempt(msgspec.Struct, frozen=True, gc=False):
    """One exchange with a card network. Its id is the network reference."""

    id: str
    kind: AttemptKind
    payment_method_id: str
    amount: int
    status: AttemptStatus
    created_s: int
    parent_id: str | None = None  # the authorization a capture or void acts on


class Refund(msgspec.Struct, frozen=True, gc=False):
    """A refund; its id is also its network reference."""

    id: str
    intent_id: str
    amount: int
    status: RefundStatus
    created_s: int
    reason: str | None = None
    metadata: dict[str, str] = {}
    failure_reason: str | None = None
    # True while the network has not answered (pending), for reconciliation.
    outcome_unknown: bool = False


class Dispute(msgspec.Struct, frozen=True, gc=False):
    """A cardholder's dispute of the charge; its id is the network's reference."""

    id: str
    intent_id: str
    amount: int
    status: DisputeStatus
    created_s: int


class PaymentIntent(msgspec.Struct, frozen=True, gc=False):
    id: str
    merchant_id: str
    livemode: bool
    amount: int
    currency: str
    capture_method: CaptureMethod
    status: Status
    created_s: int
    client_secret: str
    description: str | None = None
    metadata: dict[str, str] = {}
    payment_method_id: str | None = None
    amount_capturable: int = 0
    amount_received: int = 0
    last_payment_error: PaymentError | None = None
    attempts: tuple[Attempt, ...] = ()
    refunds: tuple[Refund, ...] = ()
    disputes: tuple[Dispute, ...] = ()
    cancellation_reason: str | None = None
    canceled_at_s: int | None = None
    # 3-D Secure: where the cardholder goes to authenticate, and where they
    # are sent back afterwards.
    next_action_url: str | None = None
    return_url: str | None = None
    # Fixed at creation from the merchant's terms, so replay never depends on
    # today's settings.
    fee_basis_points: int = 290
    fee_fixed_minor: int = 30
    settlement_delay_s: int = 2 * 86_400
    dispute_fee_minor: int = 1500

    def open_attempt(self) -> Attempt | None:
        """The money-moving attempt not yet known to be final, if any."""
        for attempt in self.attempts:
            if attempt.kind is not AttemptKind.void and attempt.status in OPEN_ATTEMPT:
                return attempt
        return None

    def attempt(self, attempt_id: str) -> Attempt | None:
        for attempt in self.attempts:
            if attempt.id == attempt_id:
                return attempt
        return None

    def dispute(self, dispute_id: str) -> Dispute | None:
        for dispute in self.disputes:
            if dispute.id == dispute_id:
                return dispute
        return None

    def refund(self, refund_id: str) -> Refund | None:
        for refund in self.refunds:
            if refund.id == refund_id:
                return refund
        return None

    def authorization(self) -> Attempt | None:
        """The successful authorization or charge: Stripe's latest charge."""
        for attempt in reversed(self.attempts):
            if attempt.kind in (AttemptKind.authorize, AttemptKind.charge) and attempt.status is AttemptStatus.succeeded:
                return attempt
        return None

    @property
    def amount_refunded(self) -> int:
        return sum(refund.amount for refund in self.refunds if refund.status is not RefundStatus.failed)

    @property
    def amount_returnable(self) -> int:
        """What may still go back to the cardholder: received, less refunds
        that have not failed and disputes that were not won."""
        disputed = sum(dispute.amount for dispute in self.disputes if dispute.status is not DisputeStatus.won)
        return self.amount_received - self.amount_refunded - disputed


# ---------------------------------------------------------------- commands
# The shell supplies every id and the time: the core has neither a clock nor
# randomness.


class CreateIntent(msgspec.Struct, frozen=True, tag=True):
    """Create an intent; with `confirm` it is confirmed in the same step."""

    intent_id: str
    merchant_id: str
    livemode: bool
    amount: int
    currency: str
    capture_method: CaptureMethod
    client_secret: str
    at_s: int
    attempt_id: str
    payment_method_id: str | None = None
    confirm: bool = False
    description: str | None = None
    metadata: dict[str, str] = {}
    return_url: str | None = None
    fee_basis_points: int = 290
    fee_fixed_minor: int = 30
    settlement_delay_s: int = 2 * 86_400
    dispute_fee_minor: int = 1500


class ConfirmIntent(msgspec.Struct, frozen=True, tag=True):
    intent_id: str
    merchant_id: str
    livemode: bool
    attempt_id: str
    at_s: int
    payment_method_id: str | None = None
    return_url: str | None = None


class CaptureIntent(msgspec.Struct, frozen=True, tag=True):
    intent_id: str
    merchant_id: str
    livemode: bool
    attempt_id: str
    at_s: int
    amount_to_capture: int | None = None


class CancelIntent(msgspec.Struct, frozen=True, tag=True):
    intent_id: str
    merchant_id: str
    livemode: bool
    attempt_id: str  # used for the void when there is a hold to release
    at_s: int
    cancellation_reason: str | None = None


class ExpireAuthorization(msgspec.Struct, frozen=True, tag=True):
    """Sent by the shell when an uncaptured authorization reaches its age limit."""

    intent_id: str
    attempt_id: str
    at_s: int


class CreateRefund(msgspec.Struct, frozen=True, tag=True):
    intent_id: str
    merchant_id: str
    livemode: bool
    refund_id: str
    at_s: int
    amount: int | None = None
    reason: str | None = None
    metadata: dict[str, str] = {}


class RecordApproval(msgspec.Struct, frozen=True, tag=True):
    intent_id: str
    attempt_id: str  # an attempt id, or a refund id
    at_s: int


class RecordDecline(msgspec.Struct, frozen=True, tag=True):
    intent_id: str
    attempt_id: str
    at_s: int
    code: str
    decline_code: str | None
    message: str


class RecordActionRequired(msgspec.Struct, frozen=True, tag=True):
    """The network wants the cardholder to authenticate (3-D Secure) at `url`
    before it answers; its final answer comes later for the same attempt."""

    intent_id: str
    attempt_id: str
    at_s: int
    url: str


class RecordUnknownOutcome(msgspec.Struct, frozen=True, tag=True):
    """No answer came (timeout, reset, or our own crash while pending)."""

    intent_id: str
    attempt_id: str
    at_s: int


class RecordRefundFailure(msgspec.Struct, frozen=True, tag=True):
    """The network reports that a refund it had accepted failed afterwards."""

    intent_id: str
    refund_id: str
    at_s: int
    failure_reason: str


class RecordDisputeOpened(msgspec.Struct, frozen=True, tag=True):
    """The network reports that the cardholder disputes the charge."""

    intent_id: str
    dispute_id: str
    amount: int
    at_s: int


class RecordDisputeClosed(msgspec.Struct, frozen=True, tag=True):
    intent_id: str
    dispute_id: str
    won: bool
    at_s: int


Command = (
    CreateIntent
    | ConfirmIntent
    | CaptureIntent
    | CancelIntent
    | ExpireAuthorization
    | CreateRefund
    | RecordApproval
    | RecordDecline
    | RecordActionRequired
    | RecordUnknownOutcome
    | RecordRefundFailure
    | RecordDisputeOpened
    | RecordDisputeClosed
)
ANSWERS = (RecordApproval, RecordDecline, RecordActionRequired, RecordUnknownOutcome)

# ------------------------------------------------------------------ events


class IntentCreated(msgspec.Struct, frozen=True, tag=True):
    intent: PaymentIntent


class AttemptStarted(msgspec.Struct, frozen=True, tag=True):
    intent_id: str
    attempt: Attempt
    status: Status
    return_url: str | None = None


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


class AttemptActionRequired(msgspec.Struct, frozen=True, tag=True):
    intent_id: str
    attempt_id: str
    status: Status
    url: str


class AttemptOutcomeUnknown(msgspec.Struct, frozen=True, tag=True):
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


Event = (
    IntentCreated
    | AttemptStarted
    | AttemptApproved
    | AttemptDeclined
    | AttemptActionRequired
    | AttemptOutcomeUnknown
    | IntentCanceled
    | RefundCreated
    | RefundUpdated
    | DisputeOpened
    | DisputeClosed
)

# ----------------------------------------------------------------- effects


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


# ------------------------------------------------------------------- table

TRANSITIONS: dict[Status, dict[type, Status]] = {
    Status.requires_payment_method: {ConfirmIntent: Status.processing, CancelIntent: Status.canceled},
    Status.requires_confirmation: {ConfirmIntent: Status.processing, CancelIntent: Status.canceled},
    Status.requires_action: {
        RecordApproval: Status.succeeded,  # or requires_capture, as from processing
        RecordDecline: Status.requires_payment_method,
        # After a restart nobody is waiting on the challenge's answer any
        # more: the attempt becomes unknown for reconciliation to resolve.
        RecordUnknownOutcome: Status.requires_action,
        CancelIntent: Status.canceled,
    },
    Status.processing: {
        RecordApproval: Status.succeeded,  # or requires_capture: see the docstring
        RecordDecline: Status.requires_payment_method,  # or requires_capture for a capture
        RecordActionRequired: Status.requires_action,
        RecordUnknownOutcome: Status.processing,
    },
    Status.requires_capture: {
        CaptureIntent: Status.processing,
        CancelIntent: Status.canceled,
        ExpireAuthorization: Status.canceled,
    },
    Status.canceled: {},
    Status.succeeded: {
        CreateRefund: Status.succeeded,
        RecordDisputeOpened: Status.succeeded,
    },
}

# A dispute's own moves: the issuer decides it once.
DISPUTE_TRANSITIONS: dict[DisputeStatus, dict[type, tuple[DisputeStatus, ...]]] = {
    DisputeStatus.needs_response: {RecordDisputeClosed: (DisputeStatus.won, DisputeStatus.lost)},
    DisputeStatus.won: {},
    DisputeStatus.lost: {},
}

# A refund's own moves: the answer to its network call, then possibly a late
# failure reported by the network.
REFUND_TRANSITIONS: dict[RefundStatus, dict[type, RefundStatus]] = {
    RefundStatus.pending: {
        RecordApproval: RefundStatus.succeeded,
        RecordDecline: RefundStatus.failed,
        RecordUnknownOutcome: RefundStatus.pending,
    },
    RefundStatus.succeeded: {RecordRefundFailure: RefundStatus.failed},
    RefundStatus.failed: {},
}


def refuse(result: Result, param: str | None = None) -> Decision:
    return Decision(result=result, param=param)


def check_metadata(metadata: dict[str, str]) -> bool:
    if len(metadata) > METADATA_KEYS_MAX:
        return False
    return all(
        0 < len(key) <= METADATA_KEY_CHARS_MAX
        and len(value) <= METADATA_VALUE_CHARS_MAX
        and "\x00" not in key
        and "\x00" not in value
        for key, value in metadata.items()
    )


def check_text(text: str | None, chars_max: int) -> bool:
    # The journal is PostgreSQL text, which cannot hold NUL.
    return text is None or (len(text) <= chars_max and "\x00" not in text)


def decide(intent: PaymentIntent | None, command: Command) -> Decision:
    """Check `command` against `intent` (None when there is none yet).

    Returns a refusal that changes nothing, or the events to journal and the
    effects to start once they are durable.
    """
    if isinstance(command, CreateIntent):
        return _decide_create(intent, command)
    if intent is None:
        return refuse(Result.intent_missing, "intent")
    if isinstance(command, ANSWERS) and intent.refund(command.attempt_id) is not None:
        return _decide_refund_answer(intent, command)
    if isinstance(command, RecordRefundFailure):
        return _decide_refund_failure(intent, command)
    if isinstance(command, RecordDisputeOpened):
        return _decide_dispute_opened(intent, command)
    if isinstance(command, RecordDisputeClosed):
        return _decide_dispute_closed(intent, command)
    if isinstance(command, ANSWERS):
        return _decide_answer(intent, command)
    if isinstance(command, ExpireAuthorization):
        return _decide_expire(intent, command)
    # Client commands: lookups first, then status, then amounts.
    if intent.merchant_id != command.merchant_id or intent.livemode != command.livemode:
        return refuse(Result.intent_missing, "intent")
    if isinstance(command, ConfirmIntent):
        return _decide_confirm(intent, command)
    if isinstance(command, CaptureIntent):
        return _decide_capture(intent, command)
    if isinstance(command, CancelIntent):
        return _decide_cancel(intent, command)
    assert isinstance(command, CreateRefund), command
    return _decide_refund(intent, command)


def check_create_shape(
    amount: int,
    currency: str,
    metadata: dict[str, str],
    description: str | None,
    return_url: str | None = None,
    livemode: bool = False,
) -> Decision | None:
    """The shape checks of a create, which need no state: the gateway runs
    them before a request counts as executed (so a refusal stores no
    idempotency record), and decide runs them again."""
    if not money.amount_in_range(amount):
        return refuse(Result.amount_out_of_range, "amount")
    if not money.is_currency(currency):
        return refuse(Result.currency_unknown, "currency")
    if amount < money.minimum_charge_minor(currency):
        return refuse(Result.amount_too_small, "amount")
    if not check_metadata(metadata):
        return refuse(Result.metadata_invalid, "metadata")
    if not check_text(description, DESCRIPTION_CHARS_MAX):
        return refuse(Result.metadata_invalid, "description")
    if return_url is not None and not return_url_allowed(return_url, livemode):
        return refuse(Result.return_url_invalid, "return_url")
    return None


def _decide_create(existing: PaymentIntent | None, command: CreateIntent) -> Decision:
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
    )
    confirmed = _decide_confirm(intent, confirm)
    assert confirmed.result is Result.ok, confirmed
    return Decision(result=Result.ok, events=(created, *confirmed.events), effects=confirmed.effects)


def _start(intent: PaymentIntent, attempt: Attempt, target: Status, return_url: str | None = None) -> Decision:
    effect = NetworkCall(
        intent_id=intent.id,
        attempt_id=attempt.id,
        kind=str(attempt.kind),
        payment_method_id=attempt.payment_method_id,
        amount=attempt.amount,
        currency=intent.currency,
        parent_id=attempt.parent_id,
    )
    started = AttemptStarted(intent_id=intent.id, attempt=attempt, status=target, return_url=return_url)
    return Decision(result=Result.ok, events=(started,), effects=(effect,))


def _decide_confirm(intent: PaymentIntent, command: ConfirmIntent) -> Decision:
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
    )
    if command.return_url is not None and not return_url_allowed(command.return_url, command.livemode):
        return refuse(Result.return_url_invalid, "return_url")
    return _start(intent, attempt, target, command.return_url)


def _decide_capture(intent: PaymentIntent, command: CaptureIntent) -> Decision:
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


def _cancel(intent: PaymentIntent, target: Status, reason: str | None, attempt_id: str, at_s: int) -> Decision:
    void = None
    transfers: tuple[Transfer, ...] = ()
    effects: tuple[Effect, ...] = ()
    authorization = intent.authorization()
    if intent.status is Status.requires_capture:
        assert authorization is not None, intent
        void = Attempt(
            id=attempt_id,
            kind=AttemptKind.void,
            payment_method_id=authorization.payment_method_id,
            amount=intent.amount_capturable,
            status=AttemptStatus.pending,
            created_s=at_s,
            parent_id=authorization.id,
        )
        transfers = (ledger_release_hold(intent, authorization.id, at_s),)
        effects = (
            NetworkCall(
                intent_id=intent.id,
                attempt_id=void.id,
                kind=str(AttemptKind.void),
                payment_method_id=void.payment_method_id,
                amount=void.amount,
                currency=intent.currency,
                parent_id=authorization.id,
            ),
        )
    abandoned = intent.open_attempt() if intent.status is Status.requires_action else None
    if abandoned is not None:
        # Nothing is held yet, but the network must not finish this
        # authorization if the cardholder answers the challenge later.
        void = Attempt(
            id=attempt_id,
            kind=AttemptKind.void,
            payment_method_id=abandoned.payment_method_id,
            amount=0,
            status=AttemptStatus.pending,
            created_s=at_s,
            parent_id=abandoned.id,
        )
        effects = (
            NetworkCall(
                intent_id=intent.id,
                attempt_id=void.id,
                kind=str(AttemptKind.void),
                payment_method_id=void.payment_method_id,
                amount=0,
                currency=intent.currency,
                parent_id=abandoned.id,
            ),
        )
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


def _decide_cancel(intent: PaymentIntent, command: CancelIntent) -> Decision:
    if command.cancellation_reason is not None and command.cancellation_reason not in CANCELLATION_REASONS:
        return refuse(Result.cancellation_reason_invalid, "cancellation_reason")
    target = TRANSITIONS[intent.status].get(CancelIntent)
    if target is None:
        return refuse(Result.intent_unexpected_state)
    return _cancel(intent, target, command.cancellation_reason, command.attempt_id, command.at_s)


def _decide_expire(intent: PaymentIntent, command: ExpireAuthorization) -> Decision:
    target = TRANSITIONS[intent.status].get(ExpireAuthorization)
    if target is None:
        # Captured or canceled in the meantime: nothing to expire.
        return refuse(Result.intent_unexpected_state)
    return _cancel(intent, target, "automatic", command.attempt_id, command.at_s)


def _decide_refund(intent: PaymentIntent, command: CreateRefund) -> Decision:
    if command.reason is not None and command.reason not in REFUND_REASONS:
        return refuse(Result.refund_reason_invalid, "reason")
    if not check_metadata(command.metadata):
        return refuse(Result.metadata_invalid, "metadata")
    if TRANSITIONS[intent.status].get(CreateRefund) is None:
        return refuse(Result.intent_not_refundable, "payment_intent")
    if any(dispute.status is DisputeStatus.needs_response for dispute in intent.disputes):
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
    # The merchant's balance gives the money back as soon as the refund is
    # asked for; a failure later returns it.
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


def _decide_refund_answer(
    intent: PaymentIntent, command: RecordApproval | RecordDecline | RecordUnknownOutcome
) -> Decision:
    refund = intent.refund(command.attempt_id)
    assert refund is not None
    target = REFUND_TRANSITIONS[refund.status].get(type(command))
    if target is None or (isinstance(command, RecordUnknownOutcome) and refund.outcome_unknown):
        return refuse(Result.attempt_not_pending, "attempt")
    transfers: tuple[Transfer, ...] = ()
    failure_reason = None
    if isinstance(command, RecordDecline):
        failure_reason = command.code
        transfers = (ledger_single(intent, f"{refund.id}:refund_failure", "refund_failure", refund.amount, command.at_s),)
    event = RefundUpdated(
        intent_id=intent.id,
        refund_id=refund.id,
        status=target,
        outcome_unknown=isinstance(command, RecordUnknownOutcome),
        failure_reason=failure_reason,
        transfers=transfers,
    )
    return Decision(result=Result.ok, events=(event,))


def _decide_refund_failure(intent: PaymentIntent, command: RecordRefundFailure) -> Decision:
    refund = intent.refund(command.refund_id)
    if refund is None:
        return refuse(Result.attempt_not_pending, "refund")
    target = REFUND_TRANSITIONS[refund.status].get(RecordRefundFailure)
    if target is None:
        return refuse(Result.attempt_not_pending, "refund")
    transfer = ledger_single(intent, f"{refund.id}:refund_failure", "refund_failure", refund.amount, command.at_s)
    event = RefundUpdated(
        intent_id=intent.id,
        refund_id=refund.id,
        status=target,
        failure_reason=command.failure_reason,
        transfers=(transfer,),
    )
    return Decision(result=Result.ok, events=(event,))


def _decide_dispute_opened(intent: PaymentIntent, command: RecordDisputeOpened) -> Decision:
    """The disputed amount leaves the merchant's balance at once, with the
    dispute fee; winning returns the amount, never the fee."""
    if intent.dispute(command.dispute_id) is not None:
        return refuse(Result.attempt_not_pending, "dispute")
    if TRANSITIONS[intent.status].get(RecordDisputeOpened) is None:
        return refuse(Result.intent_unexpected_state)
    if any(dispute.status is DisputeStatus.needs_response for dispute in intent.disputes):
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
        transfers.append(
            Transfer(
                id=f"{dispute.id}:dispute_fee",
                debit_account_id=ledger.account_id(intent.merchant_id, ledger.MERCHANT_BALANCE),
                credit_account_id=ledger.account_id(intent.merchant_id, ledger.FEES_REVENUE),
                amount=fee,
                currency=intent.currency,
                kind=TransferKind.single,
                code="dispute_fee",
                intent_id=intent.id,
                created_s=command.at_s,
                available_on_s=command.at_s + intent.settlement_delay_s,
            )
        )
    return Decision(result=Result.ok, events=(DisputeOpened(intent.id, dispute, tuple(transfers)),))


def _decide_dispute_closed(intent: PaymentIntent, command: RecordDisputeClosed) -> Decision:
    dispute = intent.dispute(command.dispute_id)
    if dispute is None or RecordDisputeClosed not in DISPUTE_TRANSITIONS[dispute.status]:
        return refuse(Result.attempt_not_pending, "dispute")
    status = DisputeStatus.won if command.won else DisputeStatus.lost
    transfers: tuple[Transfer, ...] = ()
    if command.won:
        transfers = (ledger_single(intent, f"{dispute.id}:dispute_won", "dispute_won", dispute.amount, command.at_s),)
    return Decision(result=Result.ok, events=(DisputeClosed(intent.id, dispute.id, status, transfers),))


def _decide_answer(intent: PaymentIntent, command: RecordApproval | RecordDecline | RecordUnknownOutcome) -> Decision:
    attempt = intent.attempt(command.attempt_id)
    if attempt is None or attempt.status not in OPEN_ATTEMPT:
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
        if attempt.kind is AttemptKind.capture:
            event = AttemptDeclined(intent_id=intent.id, attempt_id=attempt.id, status=Status.requires_capture, error=None)
        else:
            error = PaymentError(
                code=command.code,
                decline_code=command.decline_code,
                message=command.message,
                payment_method_id=attempt.payment_method_id,
            )
            event = AttemptDeclined(intent_id=intent.id, attempt_id=attempt.id, status=target, error=error)
    elif isinstance(command, RecordActionRequired):
        event = AttemptActionRequired(intent_id=intent.id, attempt_id=attempt.id, status=target, url=command.url)
    else:
        event = AttemptOutcomeUnknown(intent_id=intent.id, attempt_id=attempt.id, status=target)
    return Decision(result=Result.ok, events=(event,))


def _approval(intent: PaymentIntent, attempt: Attempt, target: Status, at_s: int) -> AttemptApproved:
    if attempt.kind is AttemptKind.authorize:
        hold = Transfer(
            id=f"{attempt.id}:hold",
            debit_account_id=ledger.account_id(intent.merchant_id, ledger.NETWORK_RECEIVABLE),
            credit_account_id=ledger.account_id(intent.merchant_id, ledger.MERCHANT_BALANCE),
            amount=attempt.amount,
            currency=intent.currency,
            kind=TransferKind.pending,
            code="authorization_hold",
            intent_id=intent.id,
            created_s=at_s,
        )
        return AttemptApproved(
            intent_id=intent.id,
            attempt_id=attempt.id,
            status=Status.requires_capture,
            amount_capturable=attempt.amount,
            amount_received=0,
            transfers=(hold,),
        )
    if attempt.kind is AttemptKind.charge:
        money_in = ledger_single(intent, f"{attempt.id}:charge", "charge", attempt.amount, at_s)
    else:
        assert attempt.kind is AttemptKind.capture and attempt.parent_id is not None, attempt
        money_in = Transfer(
            id=f"{attempt.id}:capture",
            debit_account_id=ledger.account_id(intent.merchant_id, ledger.NETWORK_RECEIVABLE),
            credit_account_id=ledger.account_id(intent.merchant_id, ledger.MERCHANT_BALANCE),
            amount=attempt.amount,
            currency=intent.currency,
            kind=TransferKind.post_pending,
            code="charge",
            intent_id=intent.id,
            created_s=at_s,
            pending_id=f"{attempt.parent_id}:hold",
            available_on_s=at_s + intent.settlement_delay_s,
        )
    fee = ledger.fee_minor(attempt.amount, intent.fee_basis_points, intent.fee_fixed_minor)
    transfers = [money_in]
    if fee:
        transfers.append(
            Transfer(
                id=f"{attempt.id}:fee",
                debit_account_id=ledger.account_id(intent.merchant_id, ledger.MERCHANT_BALANCE),
                credit_account_id=ledger.account_id(intent.merchant_id, ledger.FEES_REVENUE),
                amount=fee,
                currency=intent.currency,
                kind=TransferKind.single,
                code="fee",
                intent_id=intent.id,
                created_s=at_s,
                available_on_s=at_s + intent.settlement_delay_s,
            )
        )
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


# ------------------------------------------------------------- ledger links


def ledger_single(intent: PaymentIntent, transfer_id: str, code: str, amount: int, at_s: int, *, to_merchant: bool = True) -> Transfer:
    """Money between the network and the merchant's balance, in one step."""
    receivable = ledger.account_id(intent.merchant_id, ledger.NETWORK_RECEIVABLE)
    balance = ledger.account_id(intent.merchant_id, ledger.MERCHANT_BALANCE)
    return Transfer(
        id=transfer_id,
        debit_account_id=receivable if to_merchant else balance,
        credit_account_id=balance if to_merchant else receivable,
        amount=amount,
        currency=intent.currency,
        kind=TransferKind.single,
        code=code,
        intent_id=intent.id,
        created_s=at_s,
        # Every movement of a payment settles on the same schedule as its
        # charge, so a refund nets against the charge's pending funds rather
        # than overdrawing the available balance.
        available_on_s=at_s + intent.settlement_delay_s,
    )


def ledger_release_hold(intent: PaymentIntent, authorization_id: str, at_s: int) -> Transfer:
    return Transfer(
        id=f"{authorization_id}:release",
        debit_account_id=ledger.account_id(intent.merchant_id, ledger.NETWORK_RECEIVABLE),
        credit_account_id=ledger.account_id(intent.merchant_id, ledger.MERCHANT_BALANCE),
        amount=0,
        currency=intent.currency,
        kind=TransferKind.void_pending,
        code="authorization_release",
        intent_id=intent.id,
        created_s=at_s,
        pending_id=f"{authorization_id}:hold",
    )


def transfers_of(event: Event) -> tuple[Transfer, ...]:
    return getattr(event, "transfers", ())


# ------------------------------------------------------------------ evolve


def _with_attempt_status(intent: PaymentIntent, attempt_id: str, status: AttemptStatus) -> tuple[Attempt, ...]:
    return tuple(
        msgspec.structs.replace(attempt, status=status) if attempt.id == attempt_id else attempt
        for attempt in intent.attempts
    )


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
        )
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
    if isinstance(event, RefundCreated):
        return replace(intent, refunds=(*intent.refunds, event.refund))
    if isinstance(event, DisputeOpened):
        return replace(intent, disputes=(*intent.disputes, event.dispute))
    if isinstance(event, DisputeClosed):
        disputes = tuple(
            replace(dispute, status=event.status) if dispute.id == event.dispute_id else dispute for dispute in intent.disputes
        )
        return replace(intent, disputes=disputes)
    assert isinstance(event, RefundUpdated), event
    refunds = tuple(
        replace(refund, status=event.status, outcome_unknown=event.outcome_unknown, failure_reason=event.failure_reason)
        if refund.id == event.refund_id
        else refund
        for refund in intent.refunds
    )
    return replace(intent, refunds=refunds)


def entity_id_of(event: Event) -> str:
    return event.intent.id if isinstance(event, IntentCreated) else event.intent_id


event_encoder = msgspec.json.Encoder()
event_decoder = msgspec.json.Decoder(Event)
