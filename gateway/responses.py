"""JSON responses, and the rendering of a command's outcome into one.

An outcome is rendered to (status, bytes) once: the same bytes answer the
request and are stored for its idempotent replays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from quart import Response

from engine import intent as machine
from engine.results import Result
from gateway import errors, objects
from gateway.errors import ApiError
from shards.actor import Outcome

_json = msgspec.json.Encoder()


def raw_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> Response:
    """A response of JSON bytes already encoded. A 503 always says when to
    retry (a rendered outcome carries no headers of its own)."""
    response = Response(body, status=status, content_type="application/json")
    if status == 503:
        response.headers["Retry-After"] = "1"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A response of `body` encoded as JSON."""
    return raw_response(status, _json.encode(body), headers)


def error_response(error: ApiError) -> Response:
    """The Stripe-shaped answer to `error`, with its status and headers."""
    return json_response(error.body(), error.status, error.headers)


def render(body: Callable[[], dict[str, Any]]) -> tuple[int, bytes]:
    """(status, JSON) of a response, errors included. The same bytes are
    stored for idempotent replays."""
    try:
        return 200, _json.encode(body())
    except ApiError as error:
        return error.status, _json.encode(error.body())


def render_intent(outcome: Outcome, amount: object = None) -> tuple[int, bytes]:
    """(status, JSON) of the PaymentIntent an outcome shows, or of its error."""
    return render(lambda: intent_body(outcome, amount))


def intent_body(outcome: Outcome, amount: object = None) -> dict[str, Any]:
    """The PaymentIntent a command's outcome shows; raises the ApiError it
    stands for when it is a refusal or a failed attempt."""
    intent = outcome.intent
    if outcome.result is not Result.ok:
        status = None if intent is None else str(intent.status)
        error = errors.from_result(outcome.result, outcome.param, amount=amount, status=status)
        if intent is not None and error.status != 404:
            error.extra["payment_intent"] = objects.payment_intent(intent)
        raise error
    assert intent is not None
    attempt = next((a for a in intent.attempts if a.id == outcome.attempt_id), None)
    if attempt is not None and attempt.status is machine.AttemptStatus.not_sent:
        # A database blip kept the card from being read: not the customer's
        # doing, and nothing was charged. Retrying the same call is right.
        raise errors.unavailable("The payment could not be started just now; nothing was charged. Retry shortly.")
    if attempt is not None and attempt.status is machine.AttemptStatus.failed:
        failure = intent.last_payment_error
        if attempt.kind is machine.AttemptKind.capture or failure is None:
            error = errors.card_error("card_declined", "The card network declined the capture.")
        else:
            error = errors.card_error(failure.code, failure.message, decline_code=failure.decline_code)
        error.extra["payment_intent"] = objects.payment_intent(intent)
        raise error
    return objects.payment_intent(intent)
