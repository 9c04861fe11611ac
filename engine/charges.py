"""Charges: the intent's card attempts as Stripe shows them.

Stripe's Charge is one try at taking the money from a card: an
authorization (manual capture) or a charge (automatic capture) that went to
the network. Captures and voids are not charges of their own; they act on
the authorization they name (`parent_id`), whose charge they change. So a
charge is read from the intent's attempts, never stored on its own.

Which attempts are charges:
- an authorization or charge that reached the network, whatever its answer
  (succeeded, failed, or not known yet: `pending`);
- not one closed before it left (`not_sent`): the network never saw it;
- not one still waiting for the cardholder's 3-D Secure answer, nor one
  abandoned there (failed by a cancel, with a void of nothing behind it):
  Stripe creates the charge only once authentication is over.

Amounts follow Stripe: an authorization's uncaptured part, once released (a
partial capture, a cancel, an expiry), counts as refunded.
"""

from __future__ import annotations

from engine.records import Attempt, AttemptKind, AttemptStatus, ChargeDetails, PaymentIntent, RefundStatus
from engine.status import Status

CHARGE_KINDS = (AttemptKind.authorize, AttemptKind.charge)


def _children(intent: PaymentIntent, attempt: Attempt, kind: AttemptKind) -> list[Attempt]:
    return [child for child in intent.attempts if child.parent_id == attempt.id and child.kind is kind]


def is_charge(intent: PaymentIntent, attempt: Attempt) -> bool:
    """Whether `attempt` is shown as a charge (see the module's rules)."""
    if attempt.kind not in CHARGE_KINDS or attempt.status is AttemptStatus.not_sent:
        return False
    if attempt.status is AttemptStatus.pending and intent.status is Status.requires_action:
        return False
    return not (attempt.status is AttemptStatus.failed and _children(intent, attempt, AttemptKind.void))


def charges(intent: PaymentIntent) -> list[Attempt]:
    """The intent's charges, oldest first."""
    return [attempt for attempt in intent.attempts if is_charge(intent, attempt)]


def latest(intent: PaymentIntent) -> Attempt | None:
    """Stripe's `latest_charge`: the newest charge, whatever its status."""
    found = charges(intent)
    return found[-1] if found else None


def charge_attempt(intent: PaymentIntent, attempt_id: str) -> Attempt | None:
    """The charge `attempt_id` names, if it is one of the intent's charges."""
    attempt = intent.attempt(attempt_id)
    return attempt if attempt is not None and is_charge(intent, attempt) else None


def is_successful(intent: PaymentIntent, attempt: Attempt) -> bool:
    """Whether this is the intent's successful charge: the one refunds and
    disputes act on."""
    authorization = intent.authorization()
    return authorization is not None and authorization.id == attempt.id


def amount_captured(intent: PaymentIntent, attempt: Attempt) -> int:
    """What of the charge was captured: all of a succeeded automatic charge,
    or the succeeded capture of an authorization."""
    if attempt.status is not AttemptStatus.succeeded:
        return 0
    if attempt.kind is AttemptKind.charge:
        return attempt.amount
    return sum(child.amount for child in _children(intent, attempt, AttemptKind.capture) if child.status is AttemptStatus.succeeded)


def capture_of(intent: PaymentIntent, attempt: Attempt) -> Attempt | None:
    """The succeeded capture of an authorization, if any."""
    return next(
        (child for child in _children(intent, attempt, AttemptKind.capture) if child.status is AttemptStatus.succeeded), None
    )


def amount_released(intent: PaymentIntent, attempt: Attempt) -> int:
    """The uncaptured part of a succeeded authorization once its hold is
    gone (captured in part, canceled or expired); 0 while it still holds."""
    if attempt.kind is not AttemptKind.authorize or attempt.status is not AttemptStatus.succeeded:
        return 0
    captured = amount_captured(intent, attempt)
    closed = captured > 0 or bool(_children(intent, attempt, AttemptKind.void))
    return attempt.amount - captured if closed else 0


def amount_refunded(intent: PaymentIntent, attempt: Attempt) -> int:
    """Refunds of the charge that did not fail, plus its released part."""
    refunded = 0
    if is_successful(intent, attempt):
        refunded = sum(refund.amount for refund in intent.refunds if refund.status is not RefundStatus.failed)
    return refunded + amount_released(intent, attempt)


def is_disputed(intent: PaymentIntent, attempt: Attempt) -> bool:
    return is_successful(intent, attempt) and bool(intent.disputes)


def has_open_dispute(intent: PaymentIntent, attempt: Attempt) -> bool:
    return is_successful(intent, attempt) and intent.has_open_dispute()


def details(intent: PaymentIntent, attempt: Attempt) -> ChargeDetails:
    """What the charge shows of its own: what the merchant last updated on
    it (engine.amendments), else its intent's description and metadata."""
    for updated in intent.charge_details:
        if updated.attempt_id == attempt.id:
            return updated
    return ChargeDetails(attempt_id=attempt.id, description=intent.description, metadata=intent.metadata)
