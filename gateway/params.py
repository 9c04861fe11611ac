"""Typed request parameters, converted from decoded bodies with msgspec.

Form bodies carry only strings, so conversion is lax (`"1000"` -> 1000,
`"true"` -> True); JSON bodies convert the same way. Lax conversion would also
read `"1e3"`, `"1000.0"` and the JSON number `1e3` as 1000, so every value the
schema reads as an integer is first checked to be written as one.
Unknown parameters are refused, as Stripe does. Conversion errors become
Stripe errors that name the parameter in Stripe's bracket notation
(`card[number]`) and never echo the submitted value.
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import msgspec.inspect

from engine.disputes import EVIDENCE_TEXT_FIELDS
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
    expand: list[str] = []
    customer: str | None = None
    setup_future_usage: Literal["off_session", "on_session"] | None = None
    # Only with confirm=true. Stripe's "one_off" and "recurring" mean true.
    off_session: bool | Literal["one_off", "recurring"] | None = None


class UpdatePaymentIntent(msgspec.Struct, forbid_unknown_fields=True):
    """Stripe's update: what is not sent stays as it is; `description=""`
    clears it; a `metadata` key sent empty is removed."""

    amount: int | None = None
    currency: str | None = None
    description: str | None = None
    metadata: dict[str, str] = {}
    payment_method: str | None = None
    expand: list[str] = []
    customer: str | None = None
    # "" clears it.
    setup_future_usage: Literal["", "off_session", "on_session"] | None = None


class ConfirmPaymentIntent(msgspec.Struct, forbid_unknown_fields=True):
    payment_method: str | None = None
    return_url: str | None = None
    # Required with a publishable key: it proves the browser was handed this intent.
    client_secret: str | None = None
    expand: list[str] = []
    off_session: bool | Literal["one_off", "recurring"] | None = None
    setup_future_usage: Literal["off_session", "on_session"] | None = None


class RetrieveParams(msgspec.Struct, forbid_unknown_fields=True):
    """The query of a retrieval: which fields to expand (gateway/expansions.py)."""

    expand: list[str] = []


class RetrievePaymentIntent(msgspec.Struct, forbid_unknown_fields=True):
    expand: list[str] = []
    # Stripe.js sends it; a secret key may see the intent without it.
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
    """`values` (from decode_form or decode_json) as an instance of the Struct `schema`.

    Raises ApiError (400 invalid_request_error) naming the first offending
    parameter: a NUL character, an integer not written as one
    (`parameter_invalid_integer`), or a missing, unknown or mistyped parameter.
    """
    nul = find_nul(values)
    if nul is not None:
        raise invalid_request(f"Invalid string for parameter {nul}: NUL characters are not allowed.", param=nul, code="parameter_invalid")
    # Before msgspec, which would read "1e3" and 1000.0 as 1000, and whose
    # own errors for `int | CreatedFilter | None` or "1e400" could not say
    # that an integer was expected.
    loose = _first_loose_integer(values, _type_info(schema), "")
    if loose is not None:
        raise _invalid_integer(loose)
    try:
        return msgspec.convert(values, schema, strict=False)
    except msgspec.ValidationError as error:
        raise _to_api_error(str(error)) from None


# An integer as JSON writes one: ASCII digits, an optional leading minus, no
# leading zeros (msgspec already refused "007"), no plus, exponent, point,
# spaces or underscores.
_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)")

# The kinds of type _first_loose_integer walks into. An int anywhere else (in
# a tuple, a set, a union with str) would escape the check; a test keeps
# every schema here to these, with unions of at most one scalar member.
WALKED_TYPES = (
    msgspec.inspect.IntType,
    msgspec.inspect.UnionType,
    msgspec.inspect.StructType,
    msgspec.inspect.DictType,
    msgspec.inspect.ListType,
)


@functools.cache
def _type_info(schema: type) -> msgspec.inspect.Type:
    return msgspec.inspect.type_info(schema)


def _written_as_integer(raw: Any) -> bool:
    # `type(...) is int` leaves out bool (a JSON true) and float (a JSON
    # 1000.0 or 1e3): JSON integers decode to int, form values are strings.
    return type(raw) is int or (isinstance(raw, str) and _INTEGER.fullmatch(raw) is not None)


def _first_loose_integer(raw: Any, info: msgspec.inspect.Type, path: str) -> str | None:
    """The bracket name of the first value in `raw` that the type `info` would
    read as an int but that was not written as an integer, or None.

    A value of the wrong shape for a container (a string where an object
    belongs) is left for msgspec to report. Values of a dict are named by the
    dict, as msgspec's own errors are, so a submitted key is never echoed.
    """
    if isinstance(info, msgspec.inspect.IntType):
        return None if _written_as_integer(raw) else path
    if isinstance(info, msgspec.inspect.UnionType):
        member = _union_member(info, raw)
        return None if member is None else _first_loose_integer(raw, member, path)
    if isinstance(info, msgspec.inspect.StructType) and isinstance(raw, dict):
        for field in info.fields:
            if field.encode_name in raw:
                name = f"{path}[{field.encode_name}]" if path else field.encode_name
                found = _first_loose_integer(raw[field.encode_name], field.type, name)
                if found is not None:
                    return found
        return None
    if isinstance(info, msgspec.inspect.DictType) and isinstance(raw, dict):
        for key, value in raw.items():
            for part, part_info in ((key, info.key_type), (value, info.value_type)):
                found = _first_loose_integer(part, part_info, path)
                if found is not None:
                    return found
        return None
    if isinstance(info, msgspec.inspect.ListType) and isinstance(raw, list):
        for index, item in enumerate(raw):
            found = _first_loose_integer(item, info.item_type, f"{path}[{index}]")
            if found is not None:
                return found
        return None
    return None


_CONTAINER_TYPES = (msgspec.inspect.StructType, msgspec.inspect.DictType, msgspec.inspect.ListType, msgspec.inspect.NoneType)


def _union_member(info: msgspec.inspect.UnionType, raw: Any) -> msgspec.inspect.Type | None:
    """The member of the union that `raw` must be read as, told by its shape:
    an object is the Struct or dict member (`created[gte]=...`), an array the
    list member, and any other non-null value the one scalar member
    (`created=1700000000`). None for a null, and if the shape does not
    decide it."""
    # Lax conversion reads the form value "null" as None for an optional
    # parameter; that is not an integer badly written, so it stays allowed.
    if raw is None or (raw == "null" and any(isinstance(member, msgspec.inspect.NoneType) for member in info.types)):
        return None
    if isinstance(raw, dict):
        wanted: tuple[type, ...] = (msgspec.inspect.StructType, msgspec.inspect.DictType)
    elif isinstance(raw, list):
        wanted = (msgspec.inspect.ListType,)
    else:
        scalars = [member for member in info.types if not isinstance(member, _CONTAINER_TYPES)]
        return scalars[0] if len(scalars) == 1 else None
    return next((member for member in info.types if isinstance(member, wanted)), None)


def _invalid_integer(param: str | None) -> ApiError:
    return invalid_request(f"Invalid integer for parameter {param}.", param=param, code="parameter_invalid_integer")


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
    # An optional parameter (`int | None`) is reported as `int | null`; what
    # was wrong is the same as for a required one.
    kind = expected.group(1).removesuffix(" | null") if expected else None
    if kind == "int":
        return _invalid_integer(param)
    if kind == "bool":
        return invalid_request(f"Invalid boolean for parameter {param}.", param=param, code="parameter_invalid")
    if kind is not None and kind.startswith("str"):
        return invalid_request(f"Invalid string for parameter {param}.", param=param, code="parameter_invalid")
    if kind == "object":
        return invalid_request(f"Invalid object for parameter {param}.", param=param, code="parameter_invalid")
    if kind == "array":
        return invalid_request(f"Invalid array for parameter {param}.", param=param, code="parameter_invalid")
    # Literal choices and anything else: name the param, keep msgspec's words out.
    return invalid_request(f"Invalid value for parameter {param}.", param=param, code="parameter_invalid")


class CaptureParams(msgspec.Struct, forbid_unknown_fields=True):
    amount_to_capture: int | None = None
    expand: list[str] = []


class CaptureCharge(msgspec.Struct, forbid_unknown_fields=True):
    """A charge's capture: `amount` is the intent's `amount_to_capture`."""

    amount: int | None = None
    expand: list[str] = []


class CancelParams(msgspec.Struct, forbid_unknown_fields=True):
    cancellation_reason: Literal["duplicate", "fraudulent", "requested_by_customer", "abandoned"] | None = None
    expand: list[str] = []


class CreateRefund(msgspec.Struct, forbid_unknown_fields=True):
    # One of the two: the intent, or its charge (`ch_...`).
    payment_intent: str | None = None
    charge: str | None = None
    amount: int | None = None
    reason: Literal["duplicate", "fraudulent", "requested_by_customer"] | None = None
    metadata: dict[str, str] = {}
    expand: list[str] = []


# A unix time a `created` filter may name: PostgreSQL keeps times as bigint,
# which a larger one (or gt + 1 of the largest) would overflow in a query.
Timestamp = Annotated[int, msgspec.Meta(ge=-(2**53), le=2**53)]


class CreatedFilter(msgspec.Struct, forbid_unknown_fields=True):
    gt: Timestamp | None = None
    gte: Timestamp | None = None
    lt: Timestamp | None = None
    lte: Timestamp | None = None


class ListParams(msgspec.Struct, forbid_unknown_fields=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 10
    starting_after: str | None = None
    ending_before: str | None = None
    created: Timestamp | CreatedFilter | None = None
    # Only on /v1/refunds, /v1/charges and /v1/balance_transactions: narrows to one intent.
    payment_intent: str | None = None
    type: str | None = None
    expand: list[str] = []


class IncrementAuthorizationParams(msgspec.Struct, forbid_unknown_fields=True):
    """`amount` is the new total, above what is authorized now."""

    amount: int
    description: str | None = None
    metadata: dict[str, str] = {}
    expand: list[str] = []


class UpdateRefund(msgspec.Struct, forbid_unknown_fields=True):
    metadata: dict[str, str] = {}
    expand: list[str] = []


class CancelRefund(msgspec.Struct, forbid_unknown_fields=True):
    expand: list[str] = []


class FraudDetails(msgspec.Struct, forbid_unknown_fields=True):
    user_report: Literal["fraudulent", "safe"]


ShippingText = Annotated[str, msgspec.Meta(max_length=5000)]


class ShippingAddressParams(msgspec.Struct, forbid_unknown_fields=True):
    city: ShippingText | None = None
    country: ShippingText | None = None
    line1: ShippingText | None = None
    line2: ShippingText | None = None
    postal_code: ShippingText | None = None
    state: ShippingText | None = None


class ShippingParams(msgspec.Struct, forbid_unknown_fields=True):
    name: ShippingText
    address: ShippingAddressParams
    carrier: ShippingText | None = None
    phone: ShippingText | None = None
    tracking_number: ShippingText | None = None


class UpdateCharge(msgspec.Struct, forbid_unknown_fields=True):
    """Stripe's update of a charge: what is not sent stays; an empty string
    clears a text field; a metadata key sent empty is removed."""

    description: str | None = None
    metadata: dict[str, str] = {}
    receipt_email: str | None = None
    fraud_details: FraudDetails | None = None
    shipping: ShippingParams | None = None
    expand: list[str] = []


class SearchParams(msgspec.Struct, forbid_unknown_fields=True):
    """A search: Stripe's query language (gateway/search_query.py), a page
    size, and the opaque cursor of the page to answer."""

    # Stripe allows 5,000 characters; here the request line must fit the
    # node's 16 KiB bound on a request's head (gateway/listener.py) even when
    # every character takes four bytes, percent-encoded.
    query: Annotated[str, msgspec.Meta(max_length=1000)]
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 10
    page: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    expand: list[str] = []


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
    created: Timestamp | CreatedFilter | None = None
    # One type, or a family with a trailing `*` (`payment_intent.*`).
    type: str | None = None
    types: list[str] | None = None
    delivery_success: bool | None = None


class NoParams(msgspec.Struct, forbid_unknown_fields=True):
    pass


# Stripe's text evidence fields, each with its length limit (the file
# fields would name Files API objects, which are not served).
DisputeEvidenceParams = msgspec.defstruct(
    "DisputeEvidenceParams",
    [(field, Annotated[str, msgspec.Meta(max_length=chars_max)] | None, None) for field, chars_max in EVIDENCE_TEXT_FIELDS.items()],
    forbid_unknown_fields=True,
    module=__name__,
)


class UpdateDispute(msgspec.Struct, forbid_unknown_fields=True):
    """Stripe's dispute update: evidence is merged into what is staged and,
    unless `submit` is false, submitted; metadata merges as everywhere."""

    evidence: DisputeEvidenceParams | None = None  # type: ignore[valid-type]
    metadata: dict[str, str] = {}
    submit: bool | None = None
    expand: list[str] = []


class ExpandParams(msgspec.Struct, forbid_unknown_fields=True):
    """A call whose body takes nothing but `expand` (a dispute's close)."""

    expand: list[str] = []


class SimulateDispute(msgspec.Struct, forbid_unknown_fields=True):
    payment_intent: str


class CloseDispute(msgspec.Struct, forbid_unknown_fields=True):
    # Without one, the issuer decides by the merchant's submitted evidence.
    outcome: Literal["won", "lost"] | None = None


# ---------------------------------------------------------------- customers
# Stripe's bounds on a customer's text fields.
Email = Annotated[str, msgspec.Meta(max_length=512)]
Name = Annotated[str, msgspec.Meta(max_length=256)]
Phone = Annotated[str, msgspec.Meta(max_length=20)]
Description = Annotated[str, msgspec.Meta(max_length=5000)]


class CustomerInvoiceSettingsParams(msgspec.Struct, forbid_unknown_fields=True):
    # "" clears it (on an update).
    default_payment_method: str | None = None


class CreateCustomer(msgspec.Struct, forbid_unknown_fields=True):
    email: Email | None = None
    name: Name | None = None
    phone: Phone | None = None
    description: Description | None = None
    metadata: dict[str, str] | Literal[""] = {}
    # Attached to the customer as it is made.
    payment_method: str | None = None
    invoice_settings: CustomerInvoiceSettingsParams | None = None
    expand: list[str] = []


class UpdateCustomer(msgspec.Struct, forbid_unknown_fields=True):
    """Stripe's update: what is not sent stays; "" clears a text field; a
    metadata key sent empty is removed, `metadata=""` removes them all."""

    email: Email | None = None
    name: Name | None = None
    phone: Phone | None = None
    description: Description | None = None
    metadata: dict[str, str] | Literal[""] = {}
    invoice_settings: CustomerInvoiceSettingsParams | None = None
    expand: list[str] = []


class CustomerListParams(msgspec.Struct, forbid_unknown_fields=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 10
    starting_after: str | None = None
    ending_before: str | None = None
    created: Timestamp | CreatedFilter | None = None
    email: Email | None = None
    expand: list[str] = []


class PaymentMethodListParams(msgspec.Struct, forbid_unknown_fields=True):
    """GET /v1/payment_methods (`customer` required, as Stripe has it for a
    secret key) and GET /v1/customers/{id}/payment_methods."""

    customer: str | None = None
    type: Literal["card"] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 10
    starting_after: str | None = None
    ending_before: str | None = None
    expand: list[str] = []


class AttachPaymentMethod(msgspec.Struct, forbid_unknown_fields=True):
    customer: str
    expand: list[str] = []


class DetachPaymentMethod(msgspec.Struct, forbid_unknown_fields=True):
    expand: list[str] = []



# ------------------------------------------------------------ SetupIntents


class CreateSetupIntent(msgspec.Struct, forbid_unknown_fields=True):
    customer: str | None = None
    payment_method: str | None = None
    payment_method_types: list[Literal["card"]] = msgspec.field(default_factory=lambda: ["card"])
    usage: Literal["off_session", "on_session"] = "off_session"
    description: str | None = None
    metadata: dict[str, str] = {}
    confirm: bool = False
    return_url: str | None = None
    expand: list[str] = []


class UpdateSetupIntent(msgspec.Struct, forbid_unknown_fields=True):
    """Stripe's update: what is not sent stays; `description=""` clears it;
    a `metadata` key sent empty is removed."""

    customer: str | None = None
    payment_method: str | None = None
    payment_method_types: list[Literal["card"]] | None = None
    description: str | None = None
    metadata: dict[str, str] = {}
    expand: list[str] = []


class ConfirmSetupIntent(msgspec.Struct, forbid_unknown_fields=True):
    payment_method: str | None = None
    return_url: str | None = None
    # Required with a publishable key: it proves the browser was handed this SetupIntent.
    client_secret: str | None = None
    expand: list[str] = []


class CancelSetupIntent(msgspec.Struct, forbid_unknown_fields=True):
    cancellation_reason: Literal["abandoned", "duplicate", "requested_by_customer"] | None = None
    expand: list[str] = []


class RetrieveSetupIntent(msgspec.Struct, forbid_unknown_fields=True):
    expand: list[str] = []
    # Stripe.js sends it; a secret key may see the SetupIntent without it.
    client_secret: str | None = None


class ListSetupIntents(msgspec.Struct, forbid_unknown_fields=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 10
    starting_after: str | None = None
    ending_before: str | None = None
    created: Timestamp | CreatedFilter | None = None
    customer: str | None = None
    payment_method: str | None = None
    expand: list[str] = []
