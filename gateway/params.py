"""Typed request parameters, converted from decoded bodies with msgspec.

Form bodies carry only strings, so conversion is lax (`"1000"` -> 1000,
`"true"` -> True); JSON bodies convert the same way. Unknown parameters are
refused, as Stripe does. Conversion errors become Stripe errors that name the
parameter in Stripe's bracket notation (`card[number]`) and never echo the
submitted value.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from gateway.errors import ApiError, invalid_request

T = TypeVar("T")


class CardParams(msgspec.Struct, forbid_unknown_fields=True):
    number: str
    exp_month: int
    exp_year: int
    cvc: str | None = None


class CreatePaymentMethod(msgspec.Struct, forbid_unknown_fields=True):
    type: Literal["card"]
    card: CardParams


class CreatePaymentIntent(msgspec.Struct, forbid_unknown_fields=True):
    amount: int
    currency: str
    payment_method: str | None = None
    confirm: bool = False
    capture_method: Literal["automatic", "manual"] = "automatic"
    description: str | None = None
    metadata: dict[str, str] = {}
    return_url: str | None = None
    payment_method_types: list[Literal["card"]] = msgspec.field(default_factory=lambda: ["card"])


class ConfirmPaymentIntent(msgspec.Struct, forbid_unknown_fields=True):
    payment_method: str | None = None
    return_url: str | None = None
    # Required with a publishable key: it proves the browser was handed this intent.
    client_secret: str | None = None


_MISSING = re.compile(r"^Object missing required field `([^`]+)`(?: - at `\$(.*)`)?$")
_UNKNOWN = re.compile(r"^Object contains unknown field `([^`]+)`(?: - at `\$(.*)`)?$")
_AT = re.compile(r" - at `\$(.*)`$")
_EXPECTED = re.compile(r"^Expected `([^`]+)`")


def bracket_path(path: str, field: str | None = None) -> str:
    """`.card.number` -> `card[number]`; `.items[0]` -> `items[0]`;
    `.metadata[...]` (a value of a dict) -> `metadata`."""
    parts = [part for part in re.split(r"\.|\[(\d+)\]|\[\.\.\.\]", path) if part]
    if field is not None:
        parts.append(field)
    if not parts:
        return ""
    return parts[0] + "".join(f"[{part}]" for part in parts[1:])


def find_nul(value: Any, path: str = "") -> str | None:
    """The bracket name of the first key or string holding a NUL character.

    PostgreSQL cannot store NUL in text, and no Stripe parameter needs one.
    """
    if isinstance(value, str):
        return path if "\x00" in value else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        name = f"{path}[{key}]" if path else str(key)
        if "\x00" in str(key):
            return path or "body"
        found = find_nul(child, name)
        if found is not None:
            return found
    return None


def convert(values: dict[str, Any], schema: type[T]) -> T:
    nul = find_nul(values)
    if nul is not None:
        raise invalid_request(f"Invalid string for parameter {nul}: NUL characters are not allowed.", param=nul, code="parameter_invalid")
    try:
        return msgspec.convert(values, schema, strict=False)
    except msgspec.ValidationError as error:
        raise _to_api_error(str(error)) from None


def _to_api_error(text: str) -> ApiError:
    match = _MISSING.match(text)
    if match:
        param = bracket_path(match.group(2) or "", match.group(1))
        return invalid_request(f"Missing required param: {param}.", param=param, code="parameter_missing")
    match = _UNKNOWN.match(text)
    if match:
        param = bracket_path(match.group(2) or "", match.group(1))
        return invalid_request(f"Received unknown parameter: {param[:100]}", param=param[:100], code="parameter_unknown")
    at = _AT.search(text)
    param = bracket_path(at.group(1)) if at else None
    expected = _EXPECTED.match(text)
    if expected and expected.group(1) == "int":
        return invalid_request(f"Invalid integer for parameter {param}.", param=param, code="parameter_invalid_integer")
    if expected and expected.group(1) == "bool":
        return invalid_request(f"Invalid boolean for parameter {param}.", param=param, code="parameter_invalid")
    if expected and expected.group(1).startswith("str"):
        return invalid_request(f"Invalid string for parameter {param}.", param=param, code="parameter_invalid")
    if expected and expected.group(1) == "object":
        return invalid_request(f"Invalid object for parameter {param}.", param=param, code="parameter_invalid")
    if expected and expected.group(1) == "array":
        return invalid_request(f"Invalid array for parameter {param}.", param=param, code="parameter_invalid")
    # Literal choices and anything else: name the param, keep msgspec's words out.
    return invalid_request(f"Invalid value for parameter {param}.", param=param, code="parameter_invalid")


class CaptureParams(msgspec.Struct, forbid_unknown_fields=True):
    amount_to_capture: int | None = None


class CancelParams(msgspec.Struct, forbid_unknown_fields=True):
    cancellation_reason: Literal["duplicate", "fraudulent", "requested_by_customer", "abandoned"] | None = None


class CreateRefund(msgspec.Struct, forbid_unknown_fields=True):
    payment_intent: str
    amount: int | None = None
    reason: Literal["duplicate", "fraudulent", "requested_by_customer"] | None = None
    metadata: dict[str, str] = {}


class CreatedFilter(msgspec.Struct, forbid_unknown_fields=True):
    gt: int | None = None
    gte: int | None = None
    lt: int | None = None
    lte: int | None = None


class ListParams(msgspec.Struct, forbid_unknown_fields=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 10
    starting_after: str | None = None
    ending_before: str | None = None
    created: int | CreatedFilter | None = None
    # Only on /v1/refunds and /v1/balance_transactions: narrows to one intent.
    payment_intent: str | None = None
    type: str | None = None


class CreateWebhookEndpoint(msgspec.Struct, forbid_unknown_fields=True):
    url: str
    enabled_events: list[str]
    description: str | None = None
    metadata: dict[str, str] = {}
    api_version: str | None = None


class UpdateWebhookEndpoint(msgspec.Struct, forbid_unknown_fields=True):
    url: str | None = None
    enabled_events: list[str] | None = None
    description: str | None = None
    metadata: dict[str, str] | None = None
    disabled: bool | None = None


class EventListParams(msgspec.Struct, forbid_unknown_fields=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 10
    starting_after: str | None = None
    ending_before: str | None = None
    created: int | CreatedFilter | None = None
    # One type, or a family with a trailing `*` (`payment_intent.*`).
    type: str | None = None
    types: list[str] | None = None
    delivery_success: bool | None = None


class NoParams(msgspec.Struct, forbid_unknown_fields=True):
    pass


class SimulateDispute(msgspec.Struct, forbid_unknown_fields=True):
    payment_intent: str


class CloseDispute(msgspec.Struct, forbid_unknown_fields=True):
    outcome: Literal["won", "lost"]
