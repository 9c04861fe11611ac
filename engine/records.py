"""What the engine keeps for an intent: the PaymentIntent with its attempts,
refunds and disputes, as frozen msgspec Structs, and the statuses of each part.

These are plain data with lookups; they change only by `evolve` applying an
event. The intent's own statuses and their table are in `engine.status`.
"""

from __future__ import annotations

import enum

import msgspec

from engine.commands import CaptureMethod, CardSummary, Shipping
from engine.status import Status


class AttemptKind(enum.StrEnum):
    authorize = "authorize"  # hold only (manual capture)
    charge = "charge"  # authorize and capture in one exchange (automatic capture)
    capture = "capture"  # capture an earlier authorization
    void = "void"  # release an earlier authorization
    increment = "increment"  # raise an earlier authorization to a new total (engine.increments)


class AttemptStatus(enum.StrEnum):
    pending = "pending"
    succeeded = "succeeded"
    failed = "failed"
    unknown = "unknown"
    # Closed without reaching the network (its payment method could not be
    # read): not a decline, and not an operation the network knows.
    not_sent = "not_sent"


class DisputeStatus(enum.StrEnum):
    needs_response = "needs_response"
    won = "won"
    lost = "lost"
    # The merchant submitted evidence; the issuer decides.
    under_review = "under_review"


class RefundStatus(enum.StrEnum):
    pending = "pending"
    succeeded = "succeeded"
    failed = "failed"


OPEN_ATTEMPT = (AttemptStatus.pending, AttemptStatus.unknown)
# A dispute waiting for the issuer's decision, answered or not.
OPEN_DISPUTE = (DisputeStatus.needs_response, DisputeStatus.under_review)


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
    # What the charge shows of its card; authorizations and charges only,
    # and None for those made before attempts carried it.
    card: CardSummary | None = None
    # Made while the cardholder was away: no 3-D Secure challenge possible.
    off_session: bool = False


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
    # The merchant's side (engine.disputes): evidence staged or submitted,
    # by Stripe's field names; how often it was submitted, and whether the
    # last submission came after `due_by_s`. None for disputes journaled
    # before there was a deadline: their deadline is derived from created_s.
    metadata: dict[str, str] = {}
    evidence: dict[str, str] = {}
    submission_count: int = 0
    past_due: bool = False
    due_by_s: int | None = None
    # Stripe's category (engine.disputes.DISPUTE_REASONS); None when the
    # network named none (as for every dispute journaled before): Stripe's
    # catch-all "general".
    reason: str | None = None


class ChargeDetails(msgspec.Struct, frozen=True, gc=False):
    """What a charge shows of its own once the merchant updated it
    (engine.amendments); before that it shows its intent's."""

    attempt_id: str
    description: str | None = None
    metadata: dict[str, str] = {}
    receipt_email: str | None = None
    fraud_user_report: str | None = None
    shipping: Shipping | None = None


class IncrementRequest(msgspec.Struct, frozen=True, gc=False):
    """What an increment in flight changes besides the amount if approved."""

    attempt_id: str
    description: str | None = None
    metadata: dict[str, str] = {}


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
    # The customer it is for (`cus_...`), and whether its payment method is
    # saved to that customer once it succeeds ("off_session", "on_session").
    customer_id: str | None = None
    setup_future_usage: str | None = None
    # Charges the merchant updated (engine.amendments), by attempt id; and
    # what an increment still waiting for the network changes if approved.
    charge_details: tuple[ChargeDetails, ...] = ()
    increment_request: IncrementRequest | None = None

    def open_attempt(self) -> Attempt | None:
        """The money-moving attempt not yet known to be final, if any."""
        for attempt in self.attempts:
            if attempt.kind is not AttemptKind.void and attempt.status in OPEN_ATTEMPT:
                return attempt
        return None

    def attempt(self, attempt_id: str) -> Attempt | None:
        return next((attempt for attempt in self.attempts if attempt.id == attempt_id), None)

    def dispute(self, dispute_id: str) -> Dispute | None:
        return next((dispute for dispute in self.disputes if dispute.id == dispute_id), None)

    def refund(self, refund_id: str) -> Refund | None:
        return next((refund for refund in self.refunds if refund.id == refund_id), None)

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

    def has_open_dispute(self) -> bool:
        """Whether a dispute waits for the issuer's decision."""
        return any(dispute.status in OPEN_DISPUTE for dispute in self.disputes)
