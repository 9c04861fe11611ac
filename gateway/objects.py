"""Stripe-shaped objects, as msgspec Structs rendered from engine state and
store rows. These types are also what /openapi.json describes, so the
published schema and the bytes on the wire come from one definition.

They follow Stripe's published OpenAPI description at API_VERSION (the
tests check every answer against it, tests/stripe_spec.py): required fields
are always there, and a field Stripe leaves out when it has no value (a
refund's failure_reason, an endpoint's secret after its creation, an error's
decline_code) is `msgspec.UNSET`, which is left out, never sent as null.
"""

from __future__ import annotations

import time
from typing import Any, Generic, Literal, TypeVar

import msgspec
from msgspec import UNSET, UnsetType

from engine import charges, disputes, ids, ledger
from engine.intent import Dispute, PaymentIntent, Refund
from engine.ledger import Transfer
from engine import notifications
from engine.postings import ledger_fee, ledger_single
from engine.commands import CardSummary
from engine.records import Attempt, AttemptKind, AttemptStatus, PaymentError
from gateway.errors import doc_url
from store.rows import CustomerRow, EventRow, PaymentMethodRow, WebhookEndpointRow

T = TypeVar("T")

# The one API version every object is rendered as: Stripe's published
# description of it is what the objects follow. Events and webhook endpoints
# name it, and every answer carries it in its Stripe-Version header.
API_VERSION = "2023-08-16"


class CardDetails(msgspec.Struct):
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    fingerprint: str
    # Credit, debit or prepaid is known from the card's BIN, which the vault
    # does not look up: Stripe's own word for "not known" until it does.
    funding: Literal["credit", "debit", "prepaid", "unknown"] = "unknown"


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
    customer: str | None = None


class PaymentMethodInError(msgspec.Struct):
    """The payment method a payment error names, from what the intent
    knows of it: its id, whose time is its creation's (engine/ids.py), and
    its mode. Its card's details are in the vault, not in the intent."""

    id: str
    created: int
    livemode: bool
    object: Literal["payment_method"] = "payment_method"
    type: Literal["card"] = "card"
    metadata: dict[str, str] = {}
    billing_details: BillingDetails = BillingDetails()
    customer: str | None = None


class PaymentErrorObject(msgspec.Struct):
    code: str
    message: str
    decline_code: str | UnsetType = UNSET
    # The failed charge.
    charge: str | UnsetType = UNSET
    doc_url: str | UnsetType = UNSET
    payment_method: PaymentMethodInError | UnsetType = UNSET
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
    # Expandable to the Charge and the PaymentMethod.
    latest_charge: str | ChargeObject | None
    livemode: bool
    metadata: dict[str, str]
    next_action: NextAction | None
    payment_method: str | PaymentMethodObject | None
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
    # The customer it is for; expandable to the customer.
    customer: str | CustomerObject | None = None
    setup_future_usage: Literal["off_session", "on_session"] | None = None
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
    metadata: dict[str, str]
    failure_reason: str | UnsetType = UNSET


class DisputeEvidence(msgspec.Struct, frozen=True):
    """What the merchant has staged or submitted to fight a dispute
    (POST /v1/disputes/{id}); Stripe sends every field, null when not given.
    The file fields stay null: there is no Files API here."""

    access_activity_log: str | None = None
    billing_address: str | None = None
    cancellation_policy: str | None = None
    cancellation_policy_disclosure: str | None = None
    cancellation_rebuttal: str | None = None
    customer_communication: str | None = None
    customer_email_address: str | None = None
    customer_name: str | None = None
    customer_purchase_ip: str | None = None
    customer_signature: str | None = None
    duplicate_charge_documentation: str | None = None
    duplicate_charge_explanation: str | None = None
    duplicate_charge_id: str | None = None
    product_description: str | None = None
    receipt: str | None = None
    refund_policy: str | None = None
    refund_policy_disclosure: str | None = None
    refund_refusal_explanation: str | None = None
    service_date: str | None = None
    service_documentation: str | None = None
    shipping_address: str | None = None
    shipping_carrier: str | None = None
    shipping_date: str | None = None
    shipping_documentation: str | None = None
    shipping_tracking_number: str | None = None
    uncategorized_file: str | None = None
    uncategorized_text: str | None = None


class DisputeEvidenceDetails(msgspec.Struct, frozen=True):
    due_by: int | None = None
    has_evidence: bool = False
    past_due: bool = False
    submission_count: int = 0


class BalanceAmount(msgspec.Struct):
    amount: int
    currency: str
    source_types: dict[str, int]


class BalanceObject(msgspec.Struct):
    livemode: bool
    available: list[BalanceAmount]
    pending: list[BalanceAmount]
    object: Literal["balance"] = "balance"


class FeeDetail(msgspec.Struct):
    amount: int
    currency: str
    type: Literal["application_fee", "stripe_fee", "tax"]
    description: str | None = None
    application: str | None = None


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
    # The fees taken on this movement (the ledger's fee transfers beside it).
    fee_details: list[FeeDetail] = []
    description: str | None = None


class DisputeObject(msgspec.Struct, tag_field="object", tag="dispute"):
    id: str
    amount: int
    currency: str
    payment_intent: str
    charge: str
    created: int
    status: Literal["needs_response", "under_review", "won", "lost"]
    livemode: bool
    balance_transactions: list[BalanceTransactionObject]
    is_charge_refundable: bool
    metadata: dict[str, str] = {}
    # The network's category, or Stripe's catch-all when it names none.
    reason: str = "general"
    evidence: DisputeEvidence = DisputeEvidence()
    evidence_details: DisputeEvidenceDetails = DisputeEvidenceDetails()


class ChargeOutcome(msgspec.Struct):
    """Whether the network took the payment, and why not. There is no fraud
    screening here, so no risk was assessed."""

    type: Literal["authorized", "issuer_declined"]
    network_status: Literal["approved_by_network", "declined_by_network"]
    reason: str | None
    seller_message: str
    risk_level: Literal["not_assessed"] = "not_assessed"


class ChargeCardDetails(msgspec.Struct):
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    fingerprint: str
    network: str
    funding: Literal["credit", "debit", "prepaid", "unknown"] = "unknown"


class ChargePaymentMethodDetails(msgspec.Struct):
    card: ChargeCardDetails
    type: Literal["card"] = "card"


class ChargeAddress(msgspec.Struct):
    city: str | None = None
    country: str | None = None
    line1: str | None = None
    line2: str | None = None
    postal_code: str | None = None
    state: str | None = None


class ChargeShipping(msgspec.Struct):
    name: str
    address: ChargeAddress
    carrier: str | None = None
    phone: str | None = None
    tracking_number: str | None = None


class ChargeFraudDetails(msgspec.Struct):
    user_report: Literal["fraudulent", "safe"] | UnsetType = UNSET


class ChargeObject(msgspec.Struct, tag_field="object", tag="charge"):
    id: str
    amount: int
    amount_captured: int
    amount_refunded: int
    # The ledger's transaction of the captured money; expandable.
    balance_transaction: str | BalanceTransactionObject | None
    captured: bool
    refunded: bool
    currency: str
    description: str | None
    failure_code: str | None
    failure_message: str | None
    # Expandable to the PaymentIntent.
    payment_intent: str | PaymentIntentObject
    payment_method: str
    # From the payment method as it is now (None when it cannot be read).
    payment_method_details: ChargePaymentMethodDetails | None
    created: int
    livemode: bool
    outcome: ChargeOutcome | None
    status: Literal["succeeded", "pending", "failed"]
    paid: bool
    disputed: bool
    receipt_email: str | None = None
    shipping: ChargeShipping | None = None
    metadata: dict[str, str] = {}
    billing_details: BillingDetails = BillingDetails()
    # Its intent's customer (`cus_...`), if any.
    customer: str | None = None
    # What the merchant reported of its fraud (POST /v1/charges/{id}).
    fraud_details: ChargeFraudDetails = msgspec.field(default_factory=lambda: ChargeFraudDetails())


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
    api_version: str = API_VERSION
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
    secret: str | UnsetType = UNSET
    api_version: str | None = API_VERSION
    application: str | None = None
    object: Literal["webhook_endpoint"] = "webhook_endpoint"


class CustomerInvoiceSettings(msgspec.Struct):
    # Expandable to the payment method.
    default_payment_method: str | PaymentMethodObject | None = None
    custom_fields: None = None
    footer: None = None
    rendering_options: None = None


class CustomerObject(msgspec.Struct, tag_field="object", tag="customer"):
    """A customer as Stripe shows one, without what needs Billing (balance,
    invoices, tax, discounts), which is there with its empty value."""

    id: str
    created: int
    livemode: bool
    email: str | None
    name: str | None
    description: str | None
    phone: str | None
    metadata: dict[str, str]
    invoice_settings: CustomerInvoiceSettings
    address: None = None
    balance: int = 0
    currency: None = None
    default_source: None = None
    delinquent: bool = False
    discount: None = None
    invoice_prefix: None = None
    next_invoice_sequence: int = 1
    preferred_locales: list[str] = []
    shipping: None = None
    tax_exempt: Literal["none"] = "none"
    test_clock: None = None


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


class SearchResultObject(msgspec.Struct, Generic[T]):
    """A page of search results; `next_page` is the cursor of the next one."""

    url: str
    has_more: bool
    data: list[T]
    next_page: str | None
    object: Literal["search_result"] = "search_result"


class ErrorDetail(msgspec.Struct, omit_defaults=True):
    type: Literal["api_error", "card_error", "idempotency_error", "invalid_request_error"]
    message: str
    code: str | None = None
    param: str | None = None
    decline_code: str | None = None
    doc_url: str | None = None
    charge: str | None = None
    payment_intent: PaymentIntentObject | None = None
    payment_method: PaymentMethodInError | None = None


class ErrorObject(msgspec.Struct):
    error: ErrorDetail


def payment_method(row: PaymentMethodRow, customer_id: str | None = None) -> PaymentMethodObject:
    """A payment method; `customer_id` is the customer it is saved to, if any."""
    card = CardDetails(row.brand, row.last4, row.exp_month, row.exp_year, row.fingerprint)
    return PaymentMethodObject(id=row.id, created=row.created_s, livemode=row.livemode, card=card, customer=customer_id)


def customer(row: CustomerRow) -> CustomerObject:
    return CustomerObject(
        id=row.id,
        created=row.created_s,
        livemode=row.livemode,
        email=row.email,
        name=row.name,
        description=row.description,
        phone=row.phone,
        metadata=row.metadata,
        invoice_settings=CustomerInvoiceSettings(default_payment_method=row.default_payment_method),
    )


def _charge_id(intent: PaymentIntent) -> str | None:
    """The intent's successful charge: the one its refunds and disputes name."""
    authorization = intent.authorization()
    return None if authorization is None else ids.charge_id(authorization.id)


def _latest_charge_id(intent: PaymentIntent) -> str | None:
    latest = charges.latest(intent)
    return None if latest is None else ids.charge_id(latest.id)


def _payment_method_in_error(payment_method_id: str, livemode: bool) -> PaymentMethodInError | UnsetType:
    parsed = ids.parse_id(payment_method_id, "pm")
    if parsed is None:
        return UNSET
    return PaymentMethodInError(id=payment_method_id, created=parsed[0] // 1000, livemode=livemode)


def _failed_charge_id(intent: PaymentIntent, payment_method_id: str) -> str | UnsetType:
    """The latest failed authorization with `payment_method_id`: the charge
    a payment error is about."""
    for attempt in reversed(intent.attempts):
        if (
            attempt.kind in (AttemptKind.authorize, AttemptKind.charge)
            and attempt.status is AttemptStatus.failed
            and attempt.payment_method_id == payment_method_id
            and charges.is_charge(intent, attempt)
        ):
            return ids.charge_id(attempt.id)
    return UNSET


def payment_error(intent: PaymentIntent) -> PaymentErrorObject | None:
    """The intent's last payment error, as Stripe's error object."""
    error = intent.last_payment_error
    if error is None:
        return None
    return PaymentErrorObject(
        code=error.code,
        message=error.message,
        decline_code=UNSET if error.decline_code is None else error.decline_code,
        charge=_failed_charge_id(intent, error.payment_method_id),
        doc_url=doc_url(error.code) or UNSET,
        payment_method=_payment_method_in_error(error.payment_method_id, intent.livemode),
    )


def payment_intent(intent: PaymentIntent) -> PaymentIntentObject:
    last_payment_error = payment_error(intent)
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
        latest_charge=_latest_charge_id(intent),
        livemode=intent.livemode,
        metadata=intent.metadata,
        next_action=next_action,
        payment_method=intent.payment_method_id,
        status=str(intent.status),  # type: ignore[arg-type]
        cancellation_reason=intent.cancellation_reason,
        canceled_at=intent.canceled_at_s,
        customer=intent.customer_id,
        setup_future_usage=intent.setup_future_usage,  # type: ignore[arg-type]
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
    failure_reason = UNSET if item.failure_reason is None else item.failure_reason
    return RefundObject(**_about_a_charge(intent, item), reason=item.reason, failure_reason=failure_reason, metadata=item.metadata)


def _dispute_transfers(intent: PaymentIntent, item: Dispute) -> list[ledger.Entry]:
    """The movement of the dispute's opening as a balance transaction: the
    disputed amount out of the merchant's balance with the dispute fee taken
    on it. Made again here exactly as engine.disputes made them (same ids,
    amounts and times); the tests hold them against the balance transactions
    the ledger lists. A won dispute's reversal is not among them: the
    intent does not keep when it was decided, and replaying old journals
    must give the intent they gave."""
    transfers = [ledger_single(intent, f"{item.id}:dispute", "dispute", item.amount, item.created_s, to_merchant=False)]
    if intent.dispute_fee_minor > 0:
        transfers.append(ledger_fee(intent, f"{item.id}:dispute_fee", "dispute_fee", intent.dispute_fee_minor, item.created_s))
    return ledger.entries(transfers)


def dispute(intent: PaymentIntent, item: Dispute) -> DisputeObject:
    about = _about_a_charge(intent, item)
    assert about["charge"] is not None, "a dispute is opened only on a successful charge"
    now_s = int(time.time())
    entries = _dispute_transfers(intent, item)
    due_by = disputes.due_by_s(item)
    return DisputeObject(
        **about,
        livemode=intent.livemode,
        balance_transactions=[balance_entry(entry, intent.merchant_id, now_s, intent) for entry in entries],
        # As engine.refunds decides: no refund while a dispute is open, nor
        # past what may still go back.
        is_charge_refundable=not intent.has_open_dispute() and intent.amount_returnable > 0,
        metadata=item.metadata,
        reason=item.reason or "general",
        evidence=DisputeEvidence(**item.evidence),
        evidence_details=DisputeEvidenceDetails(
            due_by=due_by, has_evidence=bool(item.evidence), past_due=item.past_due, submission_count=item.submission_count
        ),
    )


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
# Stripe's reporting categories, by the ledger's code.
REPORTING_CATEGORIES = {"dispute_won": "dispute_reversal", "dispute_fee": "fee"}
FEE_DESCRIPTIONS = {"fee": "Stripe processing fees", "dispute_fee": "Dispute fee"}


def balance_transaction_id(transfer: Transfer) -> str:
    return "txn_" + transfer.id.replace(":", "_")


def balance_transaction_source(transfer: Transfer, intent: PaymentIntent | None = None) -> str:
    """What a movement is about, as Stripe names it: the charge (`ch_`) for
    a charge or a capture (a capture is named by the authorization it
    captures), the refund for a refund or its failure, the dispute for a
    dispute and its fee or reversal. A transfer's id names its operation
    (engine.postings); a capture's authorization is found in `intent`, or
    else from the hold the capture closes."""
    operation = ledger.operation_of(transfer.id)
    if transfer.pending_id is not None:
        capture = None if intent is None else intent.attempt(operation)
        if capture is not None and capture.parent_id is not None:
            operation = capture.parent_id
        else:
            operation = ledger.operation_of(transfer.pending_id)
    if operation.startswith(ids.ATTEMPT_PREFIX + "_"):
        return ids.charge_id(operation)
    return operation


def _description(transfer: Transfer) -> str | None:
    if transfer.code == "refund":
        return "REFUND FOR CHARGE"
    if transfer.code == "dispute":
        return "Chargeback withdrawal"
    if transfer.code == "dispute_won":
        return "Chargeback reversal"
    return FEE_DESCRIPTIONS.get(transfer.code)


def balance_transaction(
    transfer: Transfer, merchant_id: str, now_s: int, fees: tuple[Transfer, ...] = (), intent: PaymentIntent | None = None
) -> BalanceTransactionObject:
    """A posted movement of the merchant's balance, from the merchant's
    side, with the fees taken on it (`engine.ledger.entries`): `amount` is
    the movement, `fee` what the fees took, `net` what the balance moved.
    `intent`, the transfer's, names a capture's charge for certain."""
    into_merchant = transfer.credit_account_id == ledger.account_id(merchant_id, ledger.MERCHANT_BALANCE)
    amount = transfer.amount if into_merchant else -transfer.amount
    fee = sum(item.amount for item in fees)
    available_on = transfer.available_on_s if transfer.available_on_s is not None else transfer.created_s
    return BalanceTransactionObject(
        id=balance_transaction_id(transfer),
        amount=amount,
        fee=fee,
        net=amount - fee,
        currency=transfer.currency,
        type=BALANCE_TRANSACTION_TYPES.get(transfer.code, "adjustment"),
        source=balance_transaction_source(transfer, intent),
        created=transfer.created_s,
        available_on=available_on,
        status="available" if available_on <= now_s else "pending",
        reporting_category=REPORTING_CATEGORIES.get(transfer.code, transfer.code),
        fee_details=[FeeDetail(item.amount, item.currency, "stripe_fee", FEE_DESCRIPTIONS.get(item.code)) for item in fees],
        description=_description(transfer),
    )


def balance_entry(entry: ledger.Entry, merchant_id: str, now_s: int, intent: PaymentIntent | None = None) -> BalanceTransactionObject:
    return balance_transaction(entry.transfer, merchant_id, now_s, entry.fees, intent)


def charge_transfer_id(intent: PaymentIntent, attempt: Attempt) -> str | None:
    """The ledger transfer that put the charge's captured money in the
    merchant's balance (engine.postings names it after the attempt that
    moved it); None while nothing is captured."""
    if attempt.status is not AttemptStatus.succeeded:
        return None
    if attempt.kind is AttemptKind.charge:
        return f"{attempt.id}:charge"
    capture = charges.capture_of(intent, attempt)
    return None if capture is None else f"{capture.id}:capture"


def _outcome(intent: PaymentIntent, attempt: Attempt) -> ChargeOutcome | None:
    if attempt.status is AttemptStatus.succeeded:
        return ChargeOutcome("authorized", "approved_by_network", None, "Payment complete.")
    if attempt.status is AttemptStatus.failed:
        error = _failure(intent, attempt)
        reason = None if error is None else error.decline_code or error.code
        return ChargeOutcome("issuer_declined", "declined_by_network", reason, "The bank declined the payment.")
    return None


def _failure(intent: PaymentIntent, attempt: Attempt) -> PaymentError | None:
    """The decline of a failed charge, as far as the intent remembers it:
    the last one only (earlier declines keep no error)."""
    error = intent.last_payment_error
    if error is None or _failed_charge_id(intent, error.payment_method_id) != ids.charge_id(attempt.id):
        return None
    return error


def charge_card_details(card: PaymentMethodRow | None) -> ChargePaymentMethodDetails | None:
    if card is None:
        return None
    return ChargePaymentMethodDetails(ChargeCardDetails(card.brand, card.last4, card.exp_month, card.exp_year, card.fingerprint, card.brand))


def card_summary(row: PaymentMethodRow | None) -> CardSummary | None:
    """What an attempt made with this payment method keeps of its card, so
    its charge renders in events without reading the payment method again."""
    if row is None:
        return None
    funding = getattr(row, "funding", None) or "unknown"
    return CardSummary(row.brand, row.last4, row.exp_month, row.exp_year, row.fingerprint, funding)


def _attempt_card_details(attempt: Attempt) -> ChargePaymentMethodDetails | None:
    card = attempt.card
    if card is None:
        return None
    funding: Any = card.funding if card.funding in ("credit", "debit", "prepaid") else "unknown"
    return ChargePaymentMethodDetails(ChargeCardDetails(card.brand, card.last4, card.exp_month, card.exp_year, card.fingerprint, card.brand, funding))


def charge_created_s(attempt: Attempt) -> int:
    """The charge's creation time: its id's second, so a list cursor naming
    it is placed from the id alone (gateway/lists.py), as intents are."""
    parsed = ids.parse_id(attempt.id, "att")
    return attempt.created_s if parsed is None else parsed[0] // 1000


def charge(intent: PaymentIntent, attempt: Attempt, card: PaymentMethodRow | None = None) -> ChargeObject:
    """The charge of an authorization or charge attempt (engine.charges),
    with its captures, refunds and disputes; `card` is its payment method,
    for the card's details."""
    captured = charges.amount_captured(intent, attempt)
    refunded = charges.amount_refunded(intent, attempt)
    transfer_id = charge_transfer_id(intent, attempt)
    failure = _failure(intent, attempt)
    status = {AttemptStatus.succeeded: "succeeded", AttemptStatus.failed: "failed"}.get(attempt.status, "pending")
    # Its intent's description and metadata, or its own once updated.
    shown = charges.details(intent, attempt)
    return ChargeObject(
        id=ids.charge_id(attempt.id),
        amount=attempt.amount,
        amount_captured=captured,
        amount_refunded=refunded,
        balance_transaction=None if transfer_id is None else "txn_" + transfer_id.replace(":", "_"),
        captured=captured > 0,
        refunded=attempt.status is AttemptStatus.succeeded and refunded >= attempt.amount,
        currency=intent.currency,
        description=shown.description,
        failure_code=None if failure is None else failure.code,
        failure_message=None if failure is None else failure.message,
        payment_intent=intent.id,
        payment_method=attempt.payment_method_id,
        payment_method_details=_attempt_card_details(attempt) or charge_card_details(card),
        created=charge_created_s(attempt),
        livemode=intent.livemode,
        outcome=_outcome(intent, attempt),
        status=status,  # type: ignore[arg-type]
        paid=attempt.status is AttemptStatus.succeeded,
        disputed=charges.is_disputed(intent, attempt),
        metadata=shown.metadata,
        receipt_email=shown.receipt_email,
        shipping=None if shown.shipping is None else msgspec.convert(msgspec.to_builtins(shown.shipping), ChargeShipping),
        customer=intent.customer_id,
        fraud_details=ChargeFraudDetails(user_report=UNSET if shown.fraud_user_report is None else shown.fraud_user_report),
    )


_intent_decoder = msgspec.json.Decoder(PaymentIntent)


def event(row: EventRow) -> EventObject:
    """An event with the object it is about, as the event left it."""
    intent = _intent_decoder.decode(row.intent)
    kind = notifications.object_kind(row.type)
    shown: Any = None
    attempt = None if kind != "charge" else intent.attempt(row.object_id)
    if attempt is not None:
        shown = charge(intent, attempt)
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
    """An endpoint; its `secret` only when given (the answer to its creation)."""
    return WebhookEndpointObject(
        id=row.id,
        url=row.url,
        enabled_events=list(row.enabled_events),
        description=row.description,
        metadata=row.metadata,
        status=row.status,  # type: ignore[arg-type]
        created=row.created_s,
        livemode=row.livemode,
        secret=UNSET if secret is None else secret,
    )


_event_encoder = msgspec.json.Encoder()


def render_event(row: EventRow) -> bytes:
    """The JSON body a webhook delivers."""
    return _event_encoder.encode(event(row))
