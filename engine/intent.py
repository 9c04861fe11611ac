"""The PaymentIntent state machine.

Theory of operation
-------------------
An intent moves through Stripe's statuses. A command (create, confirm, or a
card network's answer) is first *decided*: checked against the intent as it is
now, in a fixed order (shape, then lookups, then status), and either refused
with a `Result` code or turned into events plus effects. Events are then
*applied* with `evolve`, which is what the journal replays on recovery.

`TRANSITIONS[status][command type]` is the whole table of allowed moves; any
pair not in it is refused with `intent_unexpected_state` and changes nothing.
Events carry the status they lead to, so replaying an old journal never
depends on today's table.

The double-charge protocol (DESIGN section 5) lives here as data: a confirm
opens an attempt in status `pending` and asks for an `AuthorizeAttempt`
effect; the intent is `processing` until the network's answer (or the lack of
one) is recorded. While an attempt is open the intent is `processing`, and
`processing` accepts no confirm, so an intent never has two open attempts.

Special cases (kept here, next to the table):
- an approval leads to `succeeded` for automatic capture, but to
  `requires_capture` for manual capture (the network only authorized);
- confirming from `requires_payment_method` needs a payment method, either
  already on the intent or given with the confirm; a decline takes the
  declined method off the intent, so a retry has to name one.
"""

from __future__ import annotations

import enum

import msgspec

from engine import money
from engine.results import Result

METADATA_KEYS_MAX = 50
METADATA_KEY_CHARS_MAX = 40
METADATA_VALUE_CHARS_MAX = 500
DESCRIPTION_CHARS_MAX = 1000


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


class AttemptStatus(enum.StrEnum):
    pending = "pending"
    succeeded = "succeeded"
    failed = "failed"
    unknown = "unknown"


class PaymentError(msgspec.Struct, frozen=True):
    """Why the last attempt failed, shown as `last_payment_error`."""

    code: str
    decline_code: str | None
    message: str
    payment_method_id: str


class Attempt(msgspec.Struct, frozen=True):
    """One exchange with a card network. Its id is the network reference."""

    id: str
    payment_method_id: str
    capture: bool
    status: AttemptStatus
    created_s: int


class PaymentIntent(msgspec.Struct, frozen=True):
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

    def open_attempt(self) -> Attempt | None:
        for attempt in self.attempts:
            if attempt.status in (AttemptStatus.pending, AttemptStatus.unknown):
                return attempt
        return None


# ---------------------------------------------------------------- commands


class CreateIntent(msgspec.Struct, frozen=True, tag=True):
    """Create an intent; with `confirm` it is confirmed in the same step.

    The shell supplies every id and the time: the core has neither a clock
    nor randomness.
    """

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


class ConfirmIntent(msgspec.Struct, frozen=True, tag=True):
    intent_id: str
    merchant_id: str
    livemode: bool
    attempt_id: str
    at_s: int
    payment_method_id: str | None = None


class RecordApproval(msgspec.Struct, frozen=True, tag=True):
    intent_id: str
    attempt_id: str
    at_s: int


class RecordDecline(msgspec.Struct, frozen=True, tag=True):
    intent_id: str
    attempt_id: str
    at_s: int
    code: str
    decline_code: str | None
    message: str


class RecordUnknownOutcome(msgspec.Struct, frozen=True, tag=True):
    """No answer came (timeout, reset, or our own crash while pending)."""

    intent_id: str
    attempt_id: str
    at_s: int


Command = CreateIntent | ConfirmIntent | RecordApproval | RecordDecline | RecordUnknownOutcome

# ------------------------------------------------------------------ events


class IntentCreated(msgspec.Struct, frozen=True, tag=True):
    intent: PaymentIntent


class AttemptStarted(msgspec.Struct, frozen=True, tag=True):
    intent_id: str
    attempt: Attempt
    status: Status


class AttemptApproved(msgspec.Struct, frozen=True, tag=True):
    intent_id: str
    attempt_id: str
    status: Status
    amount_capturable: int
    amount_received: int


class AttemptDeclined(msgspec.Struct, frozen=True, tag=True):
    intent_id: str
    attempt_id: str
    status: Status
    error: PaymentError


class AttemptOutcomeUnknown(msgspec.Struct, frozen=True, tag=True):
    intent_id: str
    attempt_id: str
    status: Status


Event = IntentCreated | AttemptStarted | AttemptApproved | AttemptDeclined | AttemptOutcomeUnknown

# ----------------------------------------------------------------- effects


class AuthorizeAttempt(msgspec.Struct, frozen=True, tag=True):
    """Ask the card network to authorize (and, with `capture`, capture) under
    the reference `attempt_id`. The attempt is already journaled as pending."""

    intent_id: str
    attempt_id: str
    payment_method_id: str
    amount: int
    currency: str
    capture: bool


Effect = AuthorizeAttempt


class Decision(msgspec.Struct, frozen=True):
    result: Result
    events: tuple[Event, ...] = ()
    effects: tuple[Effect, ...] = ()
    param: str | None = None


# ------------------------------------------------------------------- table

TRANSITIONS: dict[Status, dict[type, Status]] = {
    Status.requires_payment_method: {ConfirmIntent: Status.processing},
    Status.requires_confirmation: {ConfirmIntent: Status.processing},
    Status.requires_action: {},
    Status.processing: {
        RecordApproval: Status.succeeded,  # or requires_capture: see docstring
        RecordDecline: Status.requires_payment_method,
        RecordUnknownOutcome: Status.processing,
    },
    Status.requires_capture: {},
    Status.canceled: {},
    Status.succeeded: {},
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
    if isinstance(command, ConfirmIntent):
        return _decide_confirm(intent, command)
    return _decide_answer(intent, command)


def _decide_create(existing: PaymentIntent | None, command: CreateIntent) -> Decision:
    if not money.amount_in_range(command.amount):
        return refuse(Result.amount_out_of_range, "amount")
    if not money.is_currency(command.currency):
        return refuse(Result.currency_unknown, "currency")
    if not check_metadata(command.metadata):
        return refuse(Result.metadata_invalid, "metadata")
    if not check_text(command.description, DESCRIPTION_CHARS_MAX):
        return refuse(Result.metadata_invalid, "description")
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
    )
    confirmed = _decide_confirm(intent, confirm)
    assert confirmed.result is Result.ok, confirmed
    return Decision(result=Result.ok, events=(created, *confirmed.events), effects=confirmed.effects)


def _decide_confirm(intent: PaymentIntent, command: ConfirmIntent) -> Decision:
    if intent.merchant_id != command.merchant_id or intent.livemode != command.livemode:
        return refuse(Result.intent_missing, "intent")
    target = TRANSITIONS[intent.status].get(ConfirmIntent)
    if target is None:
        return refuse(Result.intent_unexpected_state)
    payment_method_id = command.payment_method_id or intent.payment_method_id
    if payment_method_id is None:
        return refuse(Result.payment_method_required, "payment_method")
    assert intent.open_attempt() is None, intent
    capture = intent.capture_method is CaptureMethod.automatic
    attempt = Attempt(
        id=command.attempt_id,
        payment_method_id=payment_method_id,
        capture=capture,
        status=AttemptStatus.pending,
        created_s=command.at_s,
    )
    effect = AuthorizeAttempt(
        intent_id=intent.id,
        attempt_id=attempt.id,
        payment_method_id=payment_method_id,
        amount=intent.amount,
        currency=intent.currency,
        capture=capture,
    )
    started = AttemptStarted(intent_id=intent.id, attempt=attempt, status=target)
    return Decision(result=Result.ok, events=(started,), effects=(effect,))


def _decide_answer(
    intent: PaymentIntent, command: RecordApproval | RecordDecline | RecordUnknownOutcome
) -> Decision:
    attempt = intent.open_attempt()
    if attempt is None or attempt.id != command.attempt_id:
        return refuse(Result.attempt_not_pending, "attempt")
    target = TRANSITIONS[intent.status].get(type(command))
    if target is None:
        return refuse(Result.intent_unexpected_state)
    event: Event
    if isinstance(command, RecordApproval):
        if attempt.capture:
            event = AttemptApproved(
                intent_id=intent.id,
                attempt_id=attempt.id,
                status=target,
                amount_capturable=0,
                amount_received=intent.amount,
            )
        else:
            event = AttemptApproved(
                intent_id=intent.id,
                attempt_id=attempt.id,
                status=Status.requires_capture,
                amount_capturable=intent.amount,
                amount_received=0,
            )
    elif isinstance(command, RecordDecline):
        error = PaymentError(
            code=command.code,
            decline_code=command.decline_code,
            message=command.message,
            payment_method_id=attempt.payment_method_id,
        )
        event = AttemptDeclined(intent_id=intent.id, attempt_id=attempt.id, status=target, error=error)
    else:
        if attempt.status is AttemptStatus.unknown:
            return refuse(Result.attempt_not_pending, "attempt")
        event = AttemptOutcomeUnknown(intent_id=intent.id, attempt_id=attempt.id, status=target)
    return Decision(result=Result.ok, events=(event,))


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
        return replace(
            intent,
            status=event.status,
            payment_method_id=event.attempt.payment_method_id,
            attempts=(*intent.attempts, event.attempt),
        )
    if isinstance(event, AttemptApproved):
        return replace(
            intent,
            status=event.status,
            amount_capturable=event.amount_capturable,
            amount_received=event.amount_received,
            last_payment_error=None,
            attempts=_with_attempt_status(intent, event.attempt_id, AttemptStatus.succeeded),
        )
    if isinstance(event, AttemptDeclined):
        # As Stripe does, a declined payment method leaves the intent: it is
        # kept only on last_payment_error, so a retry must name a method.
        return replace(
            intent,
            status=event.status,
            payment_method_id=None,
            last_payment_error=event.error,
            attempts=_with_attempt_status(intent, event.attempt_id, AttemptStatus.failed),
        )
    assert isinstance(event, AttemptOutcomeUnknown), event
    return replace(
        intent,
        status=event.status,
        attempts=_with_attempt_status(intent, event.attempt_id, AttemptStatus.unknown),
    )


EVENT_TYPES = (IntentCreated, AttemptStarted, AttemptApproved, AttemptDeclined, AttemptOutcomeUnknown)
event_encoder = msgspec.json.Encoder()
event_decoder = msgspec.json.Decoder(Event)
