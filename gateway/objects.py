"""Stripe-shaped objects, as msgspec Structs rendered from engine state and
store rows. These types are also what /openapi.json describes, so the
published schema and the bytes on the wire come from one definition."""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

import msgspec

from engine import ledger
from engine.intent import Dispute, PaymentIntent, Refund
from engine.ledger import Transfer
from engine import notifications
from store.rows import EventRow, PaymentMethodRow, WebhookEndpointRow

T = TypeVar("T")


class CardDetails(msgspec.Struct):
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    fingerprint: str


class BillingDetails(msgspec.Struct, frozen=True):
    address: None = None
    email: None = None
    name: None = None
    phone: None = None


class PaymentMethodObject(msgspec.Struct):
    id: str
    created: int
    livemode: bool
    card: CardDetails
    object: Literal["payment_method"] = "payment_method"
    type: Literal["card"] = "card"
    metadata: dict[str, str] = {}
    billing_details: BillingDetails = BillingDetails()


class PaymentMethodReference(msgspec.Struct):
    id: str
    object: Literal["payment_method"] = "payment_method"


class PaymentErrorObject(msgspec.Struct):
    code: str
    decline_code: str | None
    message: str
    payment_method: PaymentMethodReference
    type: Literal["card_error"] = "card_error"


class RedirectToUrl(msgspec.Struct):
    url: str
    return_url: str | None


class NextAction(msgspec.Struct):
    redirect_to_url: RedirectToUrl
    type: Literal["redirect_to_url"] = "redirect_to_url"


class PaymentIntentObject(msgspec.Struct, tag_field="object", tag="payment_intent"):
    id: str
    amount: int
    amount_capturable: int
    amount_received: int
    capture_method: Literal["automatic", "manual"]
    client_secret: str
    created: int
    currency: str
    description: str | None
    last_payment_error: PaymentErrorObject | None
    latest_charge: str | None
    livemode: bool
    metadata: dict[str, str]
    next_action: NextAction | None
    payment_method: str | None
    status: Literal[
        "requires_payment_method",
        "requires_confirmation",
        "requires_action",
        "processing",
        "requires_capture",
        "canceled",
        "succeeded",
    ]
    cancellation_reason: str | None
    canceled_at: int | None
    confirmation_method: Literal["automatic"] = "automatic"
    payment_method_types: list[str] = msgspec.field(default_factory=lambda: ["card"])


class RefundObject(msgspec.Struct, tag_field="object", tag="refund"):
    id: str
    amount: int
    currency: str
    payment_intent: str
    charge: str | None
    created: int
    reason: str | None
    status: Literal["pending", "succeeded", "failed"]
    failure_reason: str | None
    metadata: dict[str, str]


class DisputeObject(msgspec.Struct, tag_field="object", tag="dispute"):
    id: str
    amount: int
    currency: str
    payment_intent: str
    charge: str | None
    created: int
    status: Literal["needs_response", "won", "lost"]
    livemode: bool


class BalanceAmount(msgspec.Struct):
    amount: int
    currency: str
    source_types: dict[str, int]


class BalanceObject(msgspec.Struct):
    livemode: bool
    available: list[BalanceAmount]
    pending: list[BalanceAmount]
    object: Literal["balance"] = "balance"


class BalanceTransactionObject(msgspec.Struct):
    id: str
    amount: int
    fee: int
    net: int
    currency: str
    type: str
    source: str
    created: int
    available_on: int
    status: Literal["available", "pending"]
    reporting_category: str
    object: Literal["balance_transaction"] = "balance_transaction"


class ChargeObject(msgspec.Struct, tag_field="object", tag="charge"):
    id: str
    amount: int
    amount_captured: int
    amount_refunded: int
    captured: bool
    refunded: bool
    currency: str
    payment_intent: str
    payment_method: str
    created: int
    livemode: bool
    status: Literal["succeeded", "pending", "failed"]


class EventData(msgspec.Struct):
    object: PaymentIntentObject | ChargeObject | RefundObject | DisputeObject


class EventRequest(msgspec.Struct):
    id: str | None = None
    idempotency_key: str | None = None


class EventObject(msgspec.Struct):
    id: str
    type: str
    created: int
    livemode: bool
    data: EventData
    api_version: str = "2024-06-20"
    pending_webhooks: int = 0
    request: EventRequest = msgspec.field(default_factory=EventRequest)
    object: Literal["event"] = "event"


class WebhookEndpointObject(msgspec.Struct):
    id: str
    url: str
    enabled_events: list[str]
    description: str | None
    metadata: dict[str, str]
    status: Literal["enabled", "disabled"]
    created: int
    livemode: bool
    # Only in the answer to the create call: the secret is not kept readable.
    secret: str | None = None
    api_version: str | None = None
    application: str | None = None
    object: Literal["webhook_endpoint"] = "webhook_endpoint"


class DeletedObject(msgspec.Struct):
    id: str
    deleted: bool
    object: str


class RetriedEvent(msgspec.Struct):
    id: str
    endpoints: list[str]
    object: Literal["event_retry"] = "event_retry"


class ListObject(msgspec.Struct, Generic[T]):
    url: str
    has_more: bool
    data: list[T]
    object: Literal["list"] = "list"


class ErrorDetail(msgspec.Struct, omit_defaults=True):
    type: str
    message: str
    code: str | None = None
    param: str | None = None
    decline_code: str | None = None
    payment_intent: PaymentIntentObject | None = None


class ErrorObject(msgspec.Struct):
    error: ErrorDetail


def payment_method(row: PaymentMethodRow) -> PaymentMethodObject:
    card = CardDetails(row.brand, row.last4, row.exp_month, row.exp_year, row.fingerprint)
    return PaymentMethodObject(id=row.id, created=row.created_s, livemode=row.livemode, card=card)


def _charge_id(intent: PaymentIntent) -> str | None:
    authorization = intent.authorization()
    return None if authorization is None else authorization.id


def payment_intent(intent: PaymentIntent) -> PaymentIntentObject:
    error = intent.last_payment_error
    last_payment_error = None
    if error is not None:
        last_payment_error = PaymentErrorObject(
            error.code, error.decline_code, error.message, PaymentMethodReference(error.payment_method_id)
        )
    next_action = None
    if intent.next_action_url is not None:
        next_action = NextAction(RedirectToUrl(intent.next_action_url, intent.return_url))
    return PaymentIntentObject(
        id=intent.id,
        amount=intent.amount,
        amount_capturable=intent.amount_capturable,
        amount_received=intent.amount_received,
        capture_method=str(intent.capture_method),  # type: ignore[arg-type]
        client_secret=intent.client_secret,
        created=intent.created_s,
        currency=intent.currency,
        description=intent.description,
        last_payment_error=last_payment_error,
        latest_charge=_charge_id(intent),
        livemode=intent.livemode,
        metadata=intent.metadata,
        next_action=next_action,
        payment_method=intent.payment_method_id,
        status=str(intent.status),  # type: ignore[arg-type]
        cancellation_reason=intent.cancellation_reason,
        canceled_at=intent.canceled_at_s,
    )


def _about_a_charge(intent: PaymentIntent, item: Refund | Dispute) -> dict[str, Any]:
    """What a refund and a dispute both say of themselves and their charge."""
    return {
        "id": item.id,
        "amount": item.amount,
        "currency": intent.currency,
        "payment_intent": intent.id,
        "charge": _charge_id(intent),
        "created": item.created_s,
        "status": str(item.status),
    }


def refund(intent: PaymentIntent, item: Refund) -> RefundObject:
    return RefundObject(**_about_a_charge(intent, item), reason=item.reason, failure_reason=item.failure_reason, metadata=item.metadata)


def dispute(intent: PaymentIntent, item: Dispute) -> DisputeObject:
    return DisputeObject(**_about_a_charge(intent, item), livemode=intent.livemode)


def balance(funds: dict[str, tuple[int, int]], livemode: bool) -> BalanceObject:
    currencies = sorted(funds)
    return BalanceObject(
        livemode=livemode,
        available=[BalanceAmount(funds[c][0], c, {"card": funds[c][0]}) for c in currencies],
        pending=[BalanceAmount(funds[c][1], c, {"card": funds[c][1]}) for c in currencies],
    )


BALANCE_TRANSACTION_TYPES = {
    "charge": "charge",
    "fee": "stripe_fee",
    "refund": "refund",
    "refund_failure": "refund_failure",
    "dispute": "adjustment",
    "dispute_fee": "stripe_fee",
    "dispute_won": "adjustment",
}


def balance_transaction_id(transfer: Transfer) -> str:
    return "txn_" + transfer.id.replace(":", "_")


def balance_transaction(transfer: Transfer, merchant_id: str, now_s: int) -> BalanceTransactionObject:
    """A posted movement of the merchant's balance, from the merchant's side."""
    into_merchant = transfer.credit_account_id == ledger.account_id(merchant_id, ledger.MERCHANT_BALANCE)
    amount = transfer.amount if into_merchant else -transfer.amount
    available_on = transfer.available_on_s if transfer.available_on_s is not None else transfer.created_s
    return BalanceTransactionObject(
        id=balance_transaction_id(transfer),
        amount=amount,
        fee=0,
        net=amount,
        currency=transfer.currency,
        type=BALANCE_TRANSACTION_TYPES.get(transfer.code, "adjustment"),
        source=transfer.intent_id,
        created=transfer.created_s,
        available_on=available_on,
        status="available" if available_on <= now_s else "pending",
        reporting_category=transfer.code,
    )


def charge(intent: PaymentIntent) -> ChargeObject | None:
    """The charge: the intent's successful authorization, with its captures and refunds."""
    authorization = intent.authorization()
    if authorization is None:
        return None
    captured = intent.amount_received
    return ChargeObject(
        id=authorization.id,
        amount=authorization.amount,
        amount_captured=captured,
        amount_refunded=intent.amount_refunded,
        captured=captured > 0,
        refunded=captured > 0 and intent.amount_refunded >= captured,
        currency=intent.currency,
        payment_intent=intent.id,
        payment_method=authorization.payment_method_id,
        created=authorization.created_s,
        livemode=intent.livemode,
        status="succeeded",
    )


_intent_decoder = msgspec.json.Decoder(PaymentIntent)


def event(row: EventRow) -> EventObject:
    """An event with the object it is about, as the event left it."""
    intent = _intent_decoder.decode(row.intent)
    kind = notifications.object_kind(row.type)
    shown: Any = None
    if kind == "charge":
        shown = charge(intent)
    elif kind == "refund":
        item = intent.refund(row.object_id)
        shown = None if item is None else refund(intent, item)
    elif kind == "dispute":
        found = intent.dispute(row.object_id)
        shown = None if found is None else dispute(intent, found)
    if shown is None:
        shown = payment_intent(intent)
    return EventObject(
        id=row.id, type=row.type, created=row.created_s, livemode=row.livemode, data=EventData(shown), request=EventRequest(id=row.request_id)
    )


def webhook_endpoint(row: WebhookEndpointRow, secret: str | None = None) -> WebhookEndpointObject:
    return WebhookEndpointObject(
        id=row.id,
        url=row.url,
        enabled_events=list(row.enabled_events),
        description=row.description,
        metadata=row.metadata,
        status=row.status,  # type: ignore[arg-type]
        created=row.created_s,
        livemode=row.livemode,
        secret=secret,
    )


_event_encoder = msgspec.json.Encoder()


def render_event(row: EventRow) -> bytes:
    """The JSON body a webhook delivers."""
    return _event_encoder.encode(event(row))
