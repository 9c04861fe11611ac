"""Commands: what the shell asks of an intent.

Every command is a frozen msgspec Struct in the tagged union `Command`; the
tag is the class name, so a command keeps its encoding wherever it is
defined. The shell supplies every id and the time: the core has neither a
clock nor randomness. Which command is allowed in which status is the table
in `engine.status`; what each one does is decided in `engine.attempts`,
`engine.refunds` and `engine.disputes`.
"""

from __future__ import annotations

import enum

import msgspec


# Here rather than with the intent's records because a create names it:
# commands sit below the status table, which is keyed by command types.
class CaptureMethod(enum.StrEnum):
    automatic = "automatic"
    manual = "manual"


class CardSummary(msgspec.Struct, frozen=True, gc=False):
    """What a charge shows of its card (Stripe's payment_method_details.card),
    taken from the payment method when the attempt is made, so an event
    about the charge renders it without reading the payment method again.
    Never the card number. Here beside CaptureMethod: a confirm names it."""

    brand: str
    last4: str
    exp_month: int
    exp_year: int
    fingerprint: str
    funding: str = "unknown"


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
    # The card of `payment_method_id`, for the attempt a confirm opens.
    card: CardSummary | None = None
    # The customer the intent is for (checked to exist by the shell), and
    # whether its payment method is saved to that customer on success.
    customer_id: str | None = None
    setup_future_usage: str | None = None  # "off_session", "on_session"
    # Confirmed while the cardholder is away: a card that asks for 3-D
    # Secure is declined (authentication_required) instead of challenged.
    off_session: bool = False


class ConfirmIntent(msgspec.Struct, frozen=True, tag=True):
    intent_id: str
    merchant_id: str
    livemode: bool
    attempt_id: str
    at_s: int
    payment_method_id: str | None = None
    return_url: str | None = None
    # The card of the payment method the attempt uses (the one named here,
    # else the intent's); None when the shell did not read it.
    card: CardSummary | None = None
    off_session: bool = False
    # Set on the intent with the confirm; None leaves it as it is.
    setup_future_usage: str | None = None


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


class UpdateIntent(msgspec.Struct, frozen=True, tag=True):
    """Change what an intent asks for, as Stripe's update does. None leaves a
    field as it is; an empty `description` clears it; `metadata` is merged
    into the intent's, an empty value removing its key. The amount, the
    currency and the payment method change only before a confirm."""

    intent_id: str
    merchant_id: str
    livemode: bool
    at_s: int
    amount: int | None = None
    currency: str | None = None
    description: str | None = None
    metadata: dict[str, str] = {}
    payment_method_id: str | None = None
    # Before a confirm only, like the payment method; "" clears
    # setup_future_usage. None leaves either as it is.
    customer_id: str | None = None
    setup_future_usage: str | None = None


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


class RecordNotSent(msgspec.Struct, frozen=True, tag=True):
    """The network was never called for this attempt: what it needed (the
    payment method) could not be read. Nothing happened anywhere, so the
    attempt is closed without a decline and the intent can be confirmed
    again."""

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
    # Stripe's category of the dispute (engine.disputes.DISPUTE_REASONS);
    # None when the network names none.
    reason: str | None = None


class RecordDisputeClosed(msgspec.Struct, frozen=True, tag=True):
    intent_id: str
    dispute_id: str
    won: bool
    at_s: int


class UpdateDispute(msgspec.Struct, frozen=True, tag=True):
    """The merchant's answer to a dispute, as Stripe's update: `evidence`
    fields are merged into what is staged (an empty value removes one),
    `metadata` merged as everywhere; with `submit` the evidence goes to the
    issuer and the dispute is under review."""

    intent_id: str
    merchant_id: str
    livemode: bool
    dispute_id: str
    at_s: int
    evidence: dict[str, str] = {}
    metadata: dict[str, str] = {}
    submit: bool = True


class CloseDispute(msgspec.Struct, frozen=True, tag=True):
    """The merchant accepts a dispute: it is lost, for good."""

    intent_id: str
    merchant_id: str
    livemode: bool
    dispute_id: str
    at_s: int


class IncrementAuthorization(msgspec.Struct, frozen=True, tag=True):
    """Raise the intent's held authorization to `amount` (the new total,
    above what is held); `description` and `metadata` apply if the network
    approves (engine.increments)."""

    intent_id: str
    merchant_id: str
    livemode: bool
    attempt_id: str
    at_s: int
    amount: int
    description: str | None = None
    metadata: dict[str, str] = {}


class ShippingAddress(msgspec.Struct, frozen=True, gc=False):
    city: str | None = None
    country: str | None = None
    line1: str | None = None
    line2: str | None = None
    postal_code: str | None = None
    state: str | None = None


class Shipping(msgspec.Struct, frozen=True, gc=False):
    """Where a charge's goods go (Stripe's `shipping`). Here beside the
    commands, as CardSummary is: an update of a charge names it."""

    name: str
    address: ShippingAddress = ShippingAddress()
    carrier: str | None = None
    phone: str | None = None
    tracking_number: str | None = None


class UpdateCharge(msgspec.Struct, frozen=True, tag=True):
    """Stripe's update of a charge (the attempt `attempt_id`): None leaves a
    field as it is, an empty string clears it, metadata merges
    (engine.amendments)."""

    intent_id: str
    merchant_id: str
    livemode: bool
    attempt_id: str
    at_s: int
    description: str | None = None
    metadata: dict[str, str] = {}
    receipt_email: str | None = None
    fraud_user_report: str | None = None
    shipping: Shipping | None = None


class UpdateRefund(msgspec.Struct, frozen=True, tag=True):
    """Stripe's update of a refund: its metadata, merged."""

    intent_id: str
    merchant_id: str
    livemode: bool
    refund_id: str
    at_s: int
    metadata: dict[str, str] = {}


Command = (
    CreateIntent
    | ConfirmIntent
    | CaptureIntent
    | CancelIntent
    | UpdateIntent
    | ExpireAuthorization
    | CreateRefund
    | RecordApproval
    | RecordDecline
    | RecordActionRequired
    | RecordUnknownOutcome
    | RecordNotSent
    | RecordRefundFailure
    | RecordDisputeOpened
    | RecordDisputeClosed
    | IncrementAuthorization
    | UpdateCharge
    | UpdateRefund
    | UpdateDispute
    | CloseDispute
)
# The network's answers to one attempt or refund, named by its reference.
ANSWERS = (RecordApproval, RecordDecline, RecordActionRequired, RecordUnknownOutcome, RecordNotSent)
