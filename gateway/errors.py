"""Stripe-shaped errors.

Every error response is `{"error": {"type", "code", "message", "param", ...}}`
with Stripe's status codes. Messages never contain a card number: they are
built from parameter names and fixed text, never from submitted values.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from engine.results import Result

# Anything that could be a card number (12 to 19 digits, maybe spaced or
# dashed) is cut out of every message and param, whatever the code above
# put there: a belt to the braces of never formatting submitted values.
_DIGIT_RUN = re.compile(r"\d(?:[ -]?\d){11,18}")


def redact(text: str) -> str:
    return _DIGIT_RUN.sub("[redacted]", text)


# The codes we answer with that Stripe documents on its error-codes page,
# each at DOC_URL_BASE + the code with dashes. Codes of our own (a signature
# check, body_invalid, ...) have no page there, so they get no doc_url.
STRIPE_DOCUMENTED_CODES = frozenset(
    {
        "amount_too_large",
        "amount_too_small",
        "card_declined",
        "charge_already_refunded",
        "charge_disputed",
        "expired_card",
        "idempotency_key_in_use",
        "incorrect_cvc",
        "incorrect_number",
        "parameter_invalid_integer",
        "parameter_missing",
        "parameter_unknown",
        "payment_intent_unexpected_state",
        "processing_error",
        "rate_limit",
        "resource_missing",
        "url_invalid",
    }
)
DOC_URL_BASE = "https://stripe.com/docs/error-codes/"


def doc_url(code: str | None) -> str | None:
    """Where Stripe documents `code`, or None when it does not."""
    if code not in STRIPE_DOCUMENTED_CODES:
        return None
    return DOC_URL_BASE + code.replace("_", "-")


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        decline_code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        message = redact(message)
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.code = code
        self.param = None if param is None else redact(param)
        self.decline_code = decline_code
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        """Stripe's error object. A card error about the intent it carries
        (extra["payment_intent"]) also names that error's charge and payment
        method, as the intent's last_payment_error does."""
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        for name in ("code", "param", "decline_code"):
            value = getattr(self, name)
            if value is not None:
                error[name] = value
        if (url := doc_url(self.code)) is not None:
            error["doc_url"] = url
        error.update(self.extra)
        shown = getattr(error.get("payment_intent"), "last_payment_error", None)
        if self.type == "card_error" and shown is not None and (shown.code, shown.message) == (self.code, self.message):
            for name in ("charge", "payment_method"):
                value = getattr(shown, name)
                if value is not msgspec.UNSET:
                    error.setdefault(name, value)
        return {"error": error}


def invalid_request(message: str, *, param: str | None = None, code: str | None = None, status: int = 400) -> ApiError:
    return ApiError(status, "invalid_request_error", message, code=code, param=param)


def not_found(kind: str, object_id: str, param: str) -> ApiError:
    # Bounded: ids in messages are cut short so a huge id cannot echo back.
    return invalid_request(f"No such {kind}: '{object_id[:64]}'", param=param, code="resource_missing", status=404)


def unavailable(message: str) -> ApiError:
    return ApiError(503, "api_error", message, code="service_unavailable", headers={"Retry-After": "1"})


def idempotency_key_reused() -> ApiError:
    """An Idempotency-Key sent again with other parameters than the first time."""
    return ApiError(
        400,
        "idempotency_error",
        "Keys for idempotent requests can only be used with the same parameters they were first used with.",
        code="idempotency_key_reused",
    )


def card_error(code: str, message: str, *, param: str | None = None, decline_code: str | None = None) -> ApiError:
    return ApiError(402, "card_error", message, code=code, param=param, decline_code=decline_code)


def from_result(result: Result, param: str | None, *, amount: object = None, status: str | None = None) -> ApiError:
    """Map an engine refusal to the Stripe error a client expects."""
    if result is Result.amount_out_of_range:
        if isinstance(amount, int) and amount > 99_999_999:
            return invalid_request("Amount must be no more than 99,999,999.", param="amount", code="amount_too_large")
        return invalid_request(
            "This value must be greater than or equal to 1.", param="amount", code="parameter_invalid_integer"
        )
    if result is Result.currency_unknown:
        return invalid_request("Invalid currency: not an ISO 4217 currency code.", param="currency", code="parameter_invalid")
    if result is Result.metadata_invalid:
        return invalid_request(
            "Metadata may have up to 50 keys, each at most 40 characters, with values of at most 500 characters;"
            " descriptions at most 1000 characters.",
            param=param,
            code="parameter_invalid",
        )
    if result is Result.return_url_invalid:
        return invalid_request(
            "Invalid return_url: it must be an absolute https URL of at most 2048 characters"
            " (http only to a local address in test mode).",
            param="return_url",
            code="url_invalid",
        )
    if result is Result.payment_method_required:
        return invalid_request(
            "You cannot confirm this PaymentIntent because it's missing a payment method.",
            param="payment_method",
            code="payment_intent_unexpected_state",
        )
    if result is Result.intent_unexpected_state:
        return invalid_request(
            f"This PaymentIntent's status is {status}, which does not allow this action.",
            code="payment_intent_unexpected_state",
        )
    if result is Result.amount_too_small:
        return invalid_request("Amount must be at least the minimum charge amount for this currency.", param="amount", code="amount_too_small")
    if result in (Result.cancellation_reason_invalid, Result.refund_reason_invalid):
        return invalid_request(f"Invalid value for parameter {param}.", param=param, code="parameter_invalid")
    if result is Result.amount_exceeds_capturable:
        return invalid_request(
            "The amount to capture must be at least 1 and no more than the amount capturable.",
            param="amount_to_capture",
            code="amount_too_large",
        )
    if result is Result.intent_not_refundable:
        return invalid_request(
            "This PaymentIntent does not have a successful charge to refund.", param="payment_intent", code="charge_not_refundable"
        )
    if result is Result.intent_disputed:
        return invalid_request("This charge is disputed; it cannot be refunded while the dispute is open.", param="payment_intent", code="charge_disputed")
    if result is Result.intent_fully_refunded:
        return invalid_request("This charge has already been refunded in full.", param="payment_intent", code="charge_already_refunded")
    if result is Result.amount_exceeds_refundable:
        return invalid_request(
            "The refund amount must be at least 1 and no more than the amount not yet refunded.", param="amount", code="amount_too_large"
        )
    if result is Result.refunds_too_many:
        return invalid_request("This charge has reached the limit of refunds.", param="payment_intent", code="refund_limit_reached")
    if result is Result.intent_missing:
        return invalid_request("No such payment_intent.", param="intent", code="resource_missing", status=404)
    if result is Result.increment_amount_invalid:
        return invalid_request(
            "The amount of an incremental authorization is the new total, which must be greater than the amount authorized now.",
            param="amount",
            code="amount_too_small",
        )
    if result is Result.increments_too_many:
        return invalid_request("This PaymentIntent has reached the limit of 10 incremental authorization attempts.", param="amount")
    if result is Result.charge_missing:
        return invalid_request("No such charge.", param="id", code="resource_missing", status=404)
    if result is Result.refund_missing:
        return invalid_request("No such refund.", param="id", code="resource_missing", status=404)
    if result is Result.email_invalid:
        return invalid_request("Invalid email address: it must be name@domain, at most 800 characters.", param=param, code="email_invalid")
    if result is Result.shipping_invalid:
        return invalid_request("Invalid shipping: a name is required, and each field is at most 5000 characters.", param=param, code="parameter_invalid")
    if result is Result.fraud_report_invalid:
        return invalid_request("Invalid value for parameter fraud_details[user_report]: fraudulent or safe.", param=param, code="parameter_invalid")
    if result is Result.evidence_invalid:
        return invalid_request(
            "Invalid evidence: only Stripe's text evidence fields, each within its length limit, at most 150,000 characters in all.",
            param=param,
            code="parameter_invalid",
        )
    if result is Result.dispute_missing:
        return invalid_request("No such dispute.", param="dispute", code="resource_missing", status=404)
    if result is Result.dispute_not_open:
        if param == "evidence":
            return invalid_request(
                "This dispute no longer takes evidence: it was already submitted or the dispute is closed. Only its metadata may change.",
                param="evidence",
                code="dispute_not_open",
            )
        return invalid_request("This dispute is already under review or closed; only a dispute that needs a response can be closed.", code="dispute_not_open")
    raise AssertionError(f"no client-facing mapping for {result}")
