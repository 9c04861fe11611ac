"""SetupIntents as Stripe shows them (`setup_intent`, API version
2023-08-16), rendered from the stored SetupIntent, and the answer a
request's outcome makes (the same bytes are stored for idempotent replays).

Fields for what is not served here (Connect, mandates, automatic payment
methods, setup attempts) are sent as Stripe sends them when unset: null.
`latest_attempt` is null too: SetupAttempts are not served.
"""

from __future__ import annotations

from typing import Literal

import msgspec
from msgspec import UNSET, UnsetType

from engine import ids
from engine.results import Result
from engine.setup_intents import Refusal, SetupIntent
from gateway import errors
from gateway.errors import ApiError
from gateway.objects import PaymentMethodInError, PaymentMethodObject
from gateway.responses import render
from shards.setup_intents import SetupOutcome


class SetupRedirectToUrl(msgspec.Struct):
    url: str
    return_url: str | None


class SetupNextAction(msgspec.Struct):
    redirect_to_url: SetupRedirectToUrl
    type: Literal["redirect_to_url"] = "redirect_to_url"


class SetupErrorObject(msgspec.Struct):
    code: str
    message: str
    decline_code: str | UnsetType = UNSET
    doc_url: str | UnsetType = UNSET
    payment_method: PaymentMethodInError | UnsetType = UNSET
    type: Literal["card_error"] = "card_error"


class SetupIntentObject(msgspec.Struct, tag_field="object", tag="setup_intent"):
    id: str
    client_secret: str
    created: int
    # Expandable to the Customer; never expanded here.
    customer: str | None
    description: str | None
    last_setup_error: SetupErrorObject | None
    livemode: bool
    metadata: dict[str, str]
    next_action: SetupNextAction | None
    # Expandable to the PaymentMethod.
    payment_method: str | PaymentMethodObject | None
    status: Literal["requires_payment_method", "requires_confirmation", "requires_action", "processing", "canceled", "succeeded"]
    usage: str
    cancellation_reason: Literal["abandoned", "duplicate", "requested_by_customer"] | None
    # SetupAttempts are not served, so none is named.
    latest_attempt: None = None
    payment_method_types: list[str] = msgspec.field(default_factory=lambda: ["card"])
    application: None = None
    automatic_payment_methods: None = None
    flow_directions: None = None
    mandate: None = None
    on_behalf_of: None = None
    payment_method_options: None = None
    single_use_mandate: None = None


def setup_error(setup: SetupIntent) -> SetupErrorObject | None:
    error = setup.last_setup_error
    if error is None:
        return None
    parsed = ids.parse_id(error.payment_method_id, "pm")
    method = UNSET if parsed is None else PaymentMethodInError(id=error.payment_method_id, created=parsed[0] // 1000, livemode=setup.livemode)
    return SetupErrorObject(
        code=error.code,
        message=error.message,
        decline_code=UNSET if error.decline_code is None else error.decline_code,
        doc_url=errors.doc_url(error.code) or UNSET,
        payment_method=method,
    )


def setup_intent(setup: SetupIntent) -> SetupIntentObject:
    next_action = None
    if setup.next_action_url is not None:
        next_action = SetupNextAction(SetupRedirectToUrl(setup.next_action_url, setup.return_url))
    return SetupIntentObject(
        id=setup.id,
        client_secret=setup.client_secret,
        created=setup.created_s,
        customer=setup.customer_id,
        description=setup.description,
        last_setup_error=setup_error(setup),
        livemode=setup.livemode,
        metadata=setup.metadata,
        next_action=next_action,
        payment_method=setup.payment_method_id,
        status=str(setup.status),  # type: ignore[arg-type]
        usage=setup.usage,
        cancellation_reason=setup.cancellation_reason,  # type: ignore[arg-type]
    )


def unexpected_state(setup: SetupIntent | None) -> ApiError:
    status = "unknown" if setup is None else str(setup.status)
    error = errors.invalid_request(
        f"This SetupIntent's status is {status}, which does not allow this action.", code="setup_intent_unexpected_state"
    )
    if setup is not None:
        error.extra["setup_intent"] = setup_intent(setup)
    return error


def refusal_error(refusal: Refusal, setup: SetupIntent | None, setup_intent_id: str) -> ApiError:
    """The Stripe error a refused change of a SetupIntent is answered with."""
    if refusal.result is Result.intent_missing:
        return errors.not_found("setup_intent", setup_intent_id, "intent")
    if refusal.result is Result.intent_unexpected_state:
        return unexpected_state(setup)
    if refusal.result is Result.payment_method_required:
        error = errors.invalid_request(
            "You cannot confirm this SetupIntent because it's missing a payment method. Update it with a payment method"
            " or pass one with the confirm.",
            param="payment_method",
            code="setup_intent_unexpected_state",
        )
        if setup is not None:
            error.extra["setup_intent"] = setup_intent(setup)
        return error
    return errors.from_result(refusal.result, refusal.param)


def outcome_body(outcome: SetupOutcome) -> SetupIntentObject:
    """The SetupIntent an outcome shows; raises the error it stands for:
    Stripe's card error for this request's declined check, a 503 for a
    check that could not be sent (nothing happened; a retry may)."""
    setup = outcome.setup_intent
    if outcome.not_sent:
        raise errors.unavailable("The card could not be checked just now; nothing was done. Retry shortly.")
    if outcome.declined and setup.last_setup_error is not None:
        failure = setup.last_setup_error
        error = errors.card_error(failure.code, failure.message, decline_code=failure.decline_code)
        shown = setup_intent(setup)
        error.extra["setup_intent"] = shown
        assert shown.last_setup_error is not None
        if shown.last_setup_error.payment_method is not UNSET:
            error.extra["payment_method"] = shown.last_setup_error.payment_method
        raise error
    return setup_intent(setup)


def render_outcome(outcome: SetupOutcome) -> tuple[int, bytes]:
    """(status, JSON) of a request's outcome, as answered and stored."""
    return render(lambda: msgspec.to_builtins(outcome_body(outcome)))
