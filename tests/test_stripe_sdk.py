"""The official `stripe` Python SDK, pointed at a running node, just works."""

from __future__ import annotations

import pytest
import stripe

from tests.conftest import NodeProcess
from tests.helpers import sdk_error


@pytest.fixture
def client(node: NodeProcess) -> stripe.StripeClient:
    return stripe.StripeClient(node.secret_key, base_addresses={"api": node.url}, max_network_retries=0)


def test_raw_card_to_payment_method(client: stripe.StripeClient) -> None:
    method = client.v1.payment_methods.create(
        params={"type": "card", "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2034, "cvc": "123"}}
    )
    assert method.id.startswith("pm_")
    assert method.card is not None
    assert (method.card.brand, method.card.last4, method.card.exp_month, method.card.exp_year) == ("visa", "4242", 12, 2034)
    assert "number" not in method.card and "cvc" not in method.card


def test_create_with_confirm_succeeds(client: stripe.StripeClient) -> None:
    method = client.v1.payment_methods.create(
        params={"type": "card", "card": {"number": "5555555555554444", "exp_month": 1, "exp_year": 2031}}
    )
    intent = client.v1.payment_intents.create(
        params={"amount": 2000, "currency": "usd", "payment_method": method.id, "confirm": True, "metadata": {"order": "A-1"}}
    )
    assert intent.status == "succeeded"
    assert intent.amount_received == 2000
    assert intent.amount_capturable == 0
    assert intent.metadata["order"] == "A-1"
    assert intent.payment_method == method.id


def test_manual_capture_requires_capture(client: stripe.StripeClient) -> None:
    intent = client.v1.payment_intents.create(
        params={"amount": 1500, "currency": "eur", "payment_method": "pm_card_visa", "confirm": True, "capture_method": "manual"}
    )
    assert intent.status == "requires_capture"
    assert intent.amount_capturable == 1500
    assert intent.amount_received == 0


def test_declined_card_raises_card_error(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.CardError, match=sdk_error("Your card was declined.")) as raised:
        client.v1.payment_intents.create(
            params={"amount": 1000, "currency": "usd", "payment_method": "pm_card_chargeDeclined", "confirm": True}
        )
    error = raised.value
    assert error.http_status == 402
    assert error.code == "card_declined"
    assert error.error is not None and error.error.decline_code == "generic_decline"
    failed = error.error.payment_intent
    assert failed is not None and failed.status == "requires_payment_method"
    assert failed.last_payment_error is not None and failed.last_payment_error.code == "card_declined"


def test_insufficient_funds_then_retry_with_another_card(client: stripe.StripeClient) -> None:
    intent = client.v1.payment_intents.create(params={"amount": 700, "currency": "usd"})
    assert intent.status == "requires_payment_method"
    with pytest.raises(stripe.CardError, match=sdk_error("Your card was declined.")) as raised:
        client.v1.payment_intents.confirm(intent.id, params={"payment_method": "pm_card_chargeDeclinedInsufficientFunds"})
    assert raised.value.error is not None and raised.value.error.decline_code == "insufficient_funds"
    declined = client.v1.payment_intents.retrieve(intent.id)
    assert declined.payment_method is None  # the declined card is kept only on last_payment_error
    with pytest.raises(stripe.InvalidRequestError, match=sdk_error("You cannot confirm this PaymentIntent because it's missing a payment method.")) as missing:
        client.v1.payment_intents.confirm(intent.id)
    assert missing.value.error is not None and missing.value.error.param == "payment_method"
    retried = client.v1.payment_intents.confirm(intent.id, params={"payment_method": "pm_card_mastercard"})
    assert retried.status == "succeeded"
    assert retried.last_payment_error is None
    assert retried.amount_received == 700


def test_create_then_confirm_later_and_retrieve_agrees(client: stripe.StripeClient) -> None:
    created = client.v1.payment_intents.create(
        params={"amount": 4321, "currency": "jpy", "payment_method": "pm_card_amex", "description": "later"}
    )
    assert created.status == "requires_confirmation"
    confirmed = client.v1.payment_intents.confirm(created.id)
    assert confirmed.status == "succeeded"
    retrieved = client.v1.payment_intents.retrieve(created.id)
    assert retrieved.to_dict() == confirmed.to_dict()
    assert (retrieved.amount, retrieved.currency, retrieved.description) == (4321, "jpy", "later")


def test_confirm_twice_is_refused(client: stripe.StripeClient) -> None:
    intent = client.v1.payment_intents.create(
        params={"amount": 100, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True}
    )
    with pytest.raises(stripe.InvalidRequestError, match=sdk_error("This PaymentIntent's status is succeeded, which does not allow this action.")) as raised:
        client.v1.payment_intents.confirm(intent.id)
    assert raised.value.http_status == 400
    assert raised.value.code == "payment_intent_unexpected_state"


def test_another_merchants_key_gets_404(client: stripe.StripeClient, node: NodeProcess, merchant_keys: dict) -> None:
    intent = client.v1.payment_intents.create(params={"amount": 999, "currency": "usd", "payment_method": "pm_card_visa"})
    other = stripe.StripeClient(merchant_keys["secret_key"], base_addresses={"api": node.url}, max_network_retries=0)
    with pytest.raises(stripe.InvalidRequestError, match=sdk_error(f"No such payment_intent: '{intent.id}'")) as raised:
        other.v1.payment_intents.retrieve(intent.id)
    assert raised.value.http_status == 404
    assert raised.value.code == "resource_missing"
    with pytest.raises(stripe.InvalidRequestError, match=sdk_error(f"No such payment_intent: '{intent.id}'")) as raised:
        other.v1.payment_intents.confirm(intent.id)
    assert raised.value.http_status == 404
    # The owner still sees it untouched.
    assert client.v1.payment_intents.retrieve(intent.id).status == "requires_confirmation"


def test_bad_key_is_401(node: NodeProcess) -> None:
    bad = stripe.StripeClient("sk_test_not_a_real_key_000000000000", base_addresses={"api": node.url}, max_network_retries=0)
    with pytest.raises(stripe.AuthenticationError, match=sdk_error("Invalid API Key provided: sk_test_********0000")) as raised:
        bad.v1.payment_intents.create(params={"amount": 100, "currency": "usd"})
    assert raised.value.http_status == 401
    assert "not_a_real_key" not in str(raised.value)
