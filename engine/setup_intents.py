"""The SetupIntent state machine: saving a card for later payments.

Theory of operation
-------------------
A SetupIntent collects a payment method and checks it with the card network
without moving money: the check is a zero-amount authorization (a card
verification), sent under a reference of its own (`setatt_...`), one per
confirm. It moves through Stripe's statuses:

    requires_payment_method -> requires_confirmation -> processing
        -> succeeded | requires_action | requires_payment_method

`TRANSITIONS[status][move]` is the whole table; any pair not in it is
refused with `setup_intent_unexpected_state` and changes nothing. Every
decision here is pure: it takes the SetupIntent as stored and returns the
SetupIntent to store (or a refusal); the shell (shards/setup_intents.py)
stores it with a compare-and-set on its `version`, so two confirms racing on
one SetupIntent cannot both reach the network: only one moves it to
`processing`.

Special cases:
- a confirm needs a payment method, on the SetupIntent or given with it;
- `processing` holds the reference of the check in flight. With no answer
  (a timeout) it stays there until the network is asked by that reference;
  when the payment method could not be read (the network was never called)
  it goes back to `requires_confirmation`;
- a check that needs 3-D Secure leaves the SetupIntent `requires_action`
  with the challenge's URL; the answer to the challenge is read from the
  network by the same reference, and approves or declines the check;
- a decline takes the payment method off the SetupIntent, as Stripe does,
  and keeps the error in `last_setup_error`;
- cancel is allowed from `requires_payment_method`, `requires_confirmation`
  and `requires_action` (Stripe's list); `succeeded` and `canceled` are final.
"""

from __future__ import annotations

import enum

import msgspec

from engine.results import Result
from engine.shapes import DESCRIPTION_CHARS_MAX, check_metadata, check_text

# Stripe's reasons for canceling a SetupIntent.
CANCELLATION_REASONS = frozenset({"abandoned", "duplicate", "requested_by_customer"})
USAGES = frozenset({"off_session", "on_session"})
# The card check asks for no money; the network still names a currency.
CHECK_AMOUNT_MINOR = 0
CHECK_CURRENCY = "usd"
# The network's code for a check that waits for the cardholder's 3-D Secure.
AUTHENTICATION_REQUIRED = "authentication_required"


class SetupStatus(enum.StrEnum):
    requires_payment_method = "requires_payment_method"
    requires_confirmation = "requires_confirmation"
    requires_action = "requires_action"
    processing = "processing"
    canceled = "canceled"
    succeeded = "succeeded"


class Move(enum.StrEnum):
    set_payment_method = "set_payment_method"
    confirm = "confirm"
    approved = "approved"
    action_required = "action_required"
    declined = "declined"
    not_sent = "not_sent"
    cancel = "cancel"


TRANSITIONS: dict[SetupStatus, dict[Move, SetupStatus]] = {
    SetupStatus.requires_payment_method: {
        Move.set_payment_method: SetupStatus.requires_confirmation,
        Move.confirm: SetupStatus.processing,
        Move.cancel: SetupStatus.canceled,
    },
    SetupStatus.requires_confirmation: {
        Move.set_payment_method: SetupStatus.requires_confirmation,
        Move.confirm: SetupStatus.processing,
        Move.cancel: SetupStatus.canceled,
    },
    SetupStatus.processing: {
        Move.approved: SetupStatus.succeeded,
        Move.action_required: SetupStatus.requires_action,
        Move.declined: SetupStatus.requires_payment_method,
        # The network was never called: the customer may confirm again.
        Move.not_sent: SetupStatus.requires_confirmation,
    },
    SetupStatus.requires_action: {
        Move.approved: SetupStatus.succeeded,
        Move.declined: SetupStatus.requires_payment_method,
        Move.cancel: SetupStatus.canceled,
    },
    SetupStatus.succeeded: {},
    SetupStatus.canceled: {},
}


class SetupError(msgspec.Struct, frozen=True):
    """Why the last check failed: Stripe's card error, and the payment
    method it was about."""

    code: str
    message: str
    decline_code: str | None
    payment_method_id: str


class SetupIntent(msgspec.Struct, frozen=True):
    """A SetupIntent as stored. `version` grows with every stored change
    (the compare-and-set of the shell); `reference` is the latest check's
    network reference, `next_action_url` where its challenge waits."""

    id: str
    merchant_id: str
    livemode: bool
    status: SetupStatus
    client_secret: str
    usage: str
    created_s: int
    customer_id: str | None = None
    payment_method_id: str | None = None
    description: str | None = None
    metadata: dict[str, str] = {}
    return_url: str | None = None
    reference: str | None = None
    next_action_url: str | None = None
    last_setup_error: SetupError | None = None
    cancellation_reason: str | None = None
    # When the latest check was sent: a check still `processing` long after
    # is asked about by reference (sooner, the question could overtake it).
    checked_at_s: int | None = None
    version: int = 0


class Refusal(msgspec.Struct, frozen=True):
    result: Result
    param: str | None = None


def moved(setup: SetupIntent, move: Move) -> SetupStatus | None:
    """The status `move` leads to from the SetupIntent's, None when the
    table does not allow it."""
    return TRANSITIONS[setup.status].get(move)


def check_shape(metadata: dict[str, str], description: str | None) -> Refusal | None:
    """The checks of what a create or update sends, which need no state."""
    if not check_metadata(metadata):
        return Refusal(Result.metadata_invalid, "metadata")
    if not check_text(description, DESCRIPTION_CHARS_MAX):
        return Refusal(Result.metadata_invalid, "description")
    return None


def merged_metadata(before: dict[str, str], sent: dict[str, str]) -> dict[str, str]:
    """Stripe's metadata update: keys merge, a key sent empty is removed."""
    merged = {**before, **sent}
    return {key: value for key, value in merged.items() if value != ""}


def decide_update(
    setup: SetupIntent,
    *,
    payment_method_id: str | None,
    customer_id: str | None,
    description: str | None,
    metadata: dict[str, str],
) -> SetupIntent | Refusal:
    """An update: description and metadata at any time; the payment method
    and the customer only before a confirm (`requires_payment_method` or
    `requires_confirmation`)."""
    changed = setup
    if payment_method_id is not None or customer_id is not None:
        if setup.status not in (SetupStatus.requires_payment_method, SetupStatus.requires_confirmation):
            return Refusal(Result.intent_unexpected_state)
    if payment_method_id is not None:
        status = moved(setup, Move.set_payment_method)
        assert status is not None
        changed = msgspec.structs.replace(changed, payment_method_id=payment_method_id, status=status)
    if customer_id is not None:
        changed = msgspec.structs.replace(changed, customer_id=customer_id)
    if description is not None:
        changed = msgspec.structs.replace(changed, description=description or None)
    if metadata:
        combined = merged_metadata(setup.metadata, metadata)
        if not check_metadata(combined):
            return Refusal(Result.metadata_invalid, "metadata")
        changed = msgspec.structs.replace(changed, metadata=combined)
    return changed


def decide_confirm(
    setup: SetupIntent, *, payment_method_id: str | None, return_url: str | None, reference: str, at_s: int
) -> SetupIntent | Refusal:
    """A confirm: the SetupIntent goes `processing` with the check's
    reference, before the network is called."""
    status = moved(setup, Move.confirm)
    if status is None:
        return Refusal(Result.intent_unexpected_state)
    method = payment_method_id if payment_method_id is not None else setup.payment_method_id
    if method is None:
        return Refusal(Result.payment_method_required, "payment_method")
    return msgspec.structs.replace(
        setup,
        status=status,
        payment_method_id=method,
        return_url=return_url if return_url is not None else setup.return_url,
        reference=reference,
        next_action_url=None,
        checked_at_s=at_s,
    )


def decide_cancel(setup: SetupIntent, cancellation_reason: str | None) -> SetupIntent | Refusal:
    status = moved(setup, Move.cancel)
    if status is None:
        return Refusal(Result.intent_unexpected_state)
    if cancellation_reason is not None and cancellation_reason not in CANCELLATION_REASONS:
        return Refusal(Result.cancellation_reason_invalid, "cancellation_reason")
    return msgspec.structs.replace(setup, status=status, cancellation_reason=cancellation_reason, next_action_url=None)


def decide_answer(
    setup: SetupIntent,
    reference: str,
    *,
    approved: bool,
    code: str | None,
    decline_code: str | None,
    message: str,
    challenge_url: str | None = None,
) -> SetupIntent | None:
    """The network's answer to the check `reference`: approved, a 3-D
    Secure challenge (`code` AUTHENTICATION_REQUIRED, at `challenge_url`),
    or a decline. None when it changes nothing: the answer is about an
    older check, or the SetupIntent has moved on (canceled meanwhile)."""
    if setup.reference != reference:
        return None
    if approved:
        move = Move.approved
    elif code == AUTHENTICATION_REQUIRED:
        move = Move.action_required
    else:
        move = Move.declined
    status = moved(setup, move)
    if status is None:
        return None
    if move is Move.approved:
        return msgspec.structs.replace(setup, status=status, next_action_url=None, last_setup_error=None)
    if move is Move.action_required:
        assert challenge_url is not None, reference
        return msgspec.structs.replace(setup, status=status, next_action_url=challenge_url)
    assert setup.payment_method_id is not None, setup.id
    error = SetupError(code=code or "card_declined", message=message, decline_code=decline_code, payment_method_id=setup.payment_method_id)
    return msgspec.structs.replace(setup, status=status, payment_method_id=None, next_action_url=None, last_setup_error=error)


def decide_not_sent(setup: SetupIntent, reference: str) -> SetupIntent | None:
    """The check was never sent (its payment method could not be read):
    back to `requires_confirmation`, the customer may confirm again."""
    if setup.reference != reference:
        return None
    status = moved(setup, Move.not_sent)
    return None if status is None else msgspec.structs.replace(setup, status=status)
