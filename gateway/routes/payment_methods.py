"""Routes for card payment methods: create (with a publishable key too),
retrieve, and save to a customer or take off it (attach, detach, the list of
a customer's: gateway/routes/customers.py has the customer's side). The card
number is checked here and never logged; the node keeps
it sealed at rest."""

from __future__ import annotations

import time

import structlog
from quart import Response

from engine import cards
from gateway import errors, objects, params
from gateway.calls import ID_CHARS_MAX, Calls
from gateway.routes import customers
from gateway.openapi import api
from gateway.responses import json_response, raw_response, render
from gateway.routing import Routes
from shards.node import Node
from store.rows import ApiKeyRow, PaymentMethodRow

log = structlog.get_logger("gateway")

ROUTES = Routes()


@ROUTES.post("/v1/payment_methods")
@api("Create a card payment method", objects.PaymentMethodObject, body=params.CreatePaymentMethod, publishable=True)
async def create_payment_method(calls: Calls, key: ApiKeyRow) -> Response:
    body = await calls.read_body()
    card = params.convert(body, params.CreatePaymentMethod).card
    number, exp_year = checked_card(card)
    async with calls.idempotent(key, body, render_payment_method) as claim:
        row = await calls.node.create_payment_method(
            key.merchant_id, key.livemode, number, card.exp_month, exp_year, cards.brand_of(number), claim
        )
        log.info("payment_method_created", payment_method_id=row.id, brand=row.brand, last4=row.last4)
        return raw_response(*render_payment_method(row))


@ROUTES.get("/v1/payment_methods/<payment_method_id>")
@api("Retrieve a payment method", objects.PaymentMethodObject)
async def retrieve_payment_method(calls: Calls, key: ApiKeyRow, payment_method_id: str) -> Response:
    row = await calls.node.payment_method(payment_method_id) if len(payment_method_id) <= ID_CHARS_MAX else None
    if row is None or row.merchant_id != key.merchant_id or row.livemode != key.livemode:
        raise errors.not_found("payment_method", payment_method_id, "payment_method")
    return json_response(await customers.shown_payment_method(calls.node, row))


@ROUTES.get("/v1/payment_methods")
@api("List a customer's payment methods, newest first", objects.ListObject[objects.PaymentMethodObject], query=params.PaymentMethodListParams)
async def list_payment_methods(calls: Calls, key: ApiKeyRow) -> Response:
    values = calls.query(params.PaymentMethodListParams)
    if values.customer is None:
        # Payment methods not saved to a customer are not listed (Stripe's
        # list without a customer is for Treasury, not served).
        raise errors.invalid_request("Missing required param: customer.", param="customer", code="parameter_missing")
    return json_response(await customers.payment_method_page(calls.node, key, values.customer, values, "/v1/payment_methods"))


@ROUTES.post("/v1/payment_methods/<payment_method_id>/attach")
@api("Save a payment method to a customer", objects.PaymentMethodObject, body=params.AttachPaymentMethod)
async def attach_payment_method(calls: Calls, key: ApiKeyRow, payment_method_id: str) -> Response:
    node = calls.node
    row = await _owned(node, payment_method_id, key)
    body = await calls.read_body()
    values = params.convert(body, params.AttachPaymentMethod)
    _expand_nothing(values.expand)
    customer_id = values.customer[:ID_CHARS_MAX]
    async with calls.idempotent(key, body, render_payment_method) as claim:
        refusal, _ = await node.store.customers.attach_payment_method(
            key.merchant_id, key.livemode, row.id, customer_id, int(time.time()),
            None if claim is None else (lambda attached: claim.completed(objects.payment_method(row, attached.customer_id), row.id)),
        )
        if refusal is not None:
            raise customers.attach_refused(refusal, "payment_method", customer_id)
        log.info("payment_method_attached", payment_method_id=row.id, customer_id=customer_id)
        return json_response(objects.payment_method(row, customer_id))


@ROUTES.post("/v1/payment_methods/<payment_method_id>/detach")
@api("Take a payment method off its customer, for good", objects.PaymentMethodObject, body=params.DetachPaymentMethod)
async def detach_payment_method(calls: Calls, key: ApiKeyRow, payment_method_id: str) -> Response:
    node = calls.node
    row = await _owned(node, payment_method_id, key)
    body = await calls.read_body()
    _expand_nothing(params.convert(body, params.DetachPaymentMethod).expand)
    async with calls.idempotent(key, body, render_payment_method) as claim:
        refusal, _ = await node.store.customers.detach_payment_method(
            row.id, int(time.time()), None if claim is None else (lambda _: claim.completed(objects.payment_method(row), row.id))
        )
        if refusal is not None:
            raise customers.attach_refused(refusal, "payment_method")
        log.info("payment_method_detached", payment_method_id=row.id)
        return json_response(objects.payment_method(row))


async def _owned(node: Node, payment_method_id: str, key: ApiKeyRow) -> PaymentMethodRow:
    """The caller's payment method; raises a 404 otherwise."""
    row = await node.payment_method(payment_method_id) if len(payment_method_id) <= ID_CHARS_MAX else None
    if row is None or row.merchant_id != key.merchant_id or row.livemode != key.livemode:
        raise errors.not_found("payment_method", payment_method_id, "payment_method")
    return row


def _expand_nothing(paths: list[str]) -> None:
    """A payment method's only expandable field, `customer`, stays an id here."""
    for path in paths:
        if path != "customer":
            raise errors.invalid_request(f"This property cannot be expanded ({path[:200]}).")


def render_payment_method(shown: PaymentMethodRow | objects.PaymentMethodObject) -> tuple[int, bytes]:
    """(status, JSON) of a created (or attached, detached) payment method,
    as stored for replays."""
    return render(lambda: objects.payment_method(shown) if isinstance(shown, PaymentMethodRow) else shown)


def checked_card(card: params.CardParams) -> tuple[str, int]:
    """(number without spaces, four-digit expiry year) of a card that could
    be real; raises the card_error Stripe gives for the first thing wrong."""
    number = card.number.replace(" ", "")
    if not cards.luhn_valid(number):
        raise errors.card_error("incorrect_number", "Your card number is incorrect.", param="card[number]")
    if not 1 <= card.exp_month <= 12:
        raise errors.card_error("invalid_expiry_month", "Your card's expiration month is invalid.", param="card[exp_month]")
    exp_year = card.exp_year + 2000 if 0 <= card.exp_year < 100 else card.exp_year
    today = time.gmtime()
    if not today.tm_year <= exp_year <= today.tm_year + 50:
        raise errors.card_error("invalid_expiry_year", "Your card's expiration year is invalid.", param="card[exp_year]")
    if exp_year == today.tm_year and card.exp_month < today.tm_mon:
        raise errors.card_error("invalid_expiry_month", "Your card's expiration month is invalid.", param="card[exp_month]")
    if card.cvc is not None and not (card.cvc.isdigit() and 3 <= len(card.cvc) <= 4):
        raise errors.card_error("invalid_cvc", "Your card's security code is invalid.", param="card[cvc]")
    return number, exp_year
