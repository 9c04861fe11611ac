"""Customers, saved cards and off-session payments through the official
`stripe` SDK, as an integration runs them against Stripe (issue 15): a
customer, a card saved to it, a payment that saves another card with
setup_future_usage, off-session payments with the saved card, the 3-D
Secure card declined off session, detach and delete."""

from __future__ import annotations

import pytest
import stripe

from tests.conftest import NodeProcess

CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2040, "cvc": "123"}
# Stripe's 3-D Secure 2 test card: every payment asks for authentication.
THREE_D_SECURE_CARD = {**CARD, "number": "4000000000003220"}


@pytest.fixture
def client(node: NodeProcess, fresh_merchant: dict) -> stripe.StripeClient:
    return stripe.StripeClient(fresh_merchant["secret_key"], base_addresses={"api": node.url}, max_network_retries=0)


def test_a_customer_saves_cards_and_pays_off_session(client: stripe.StripeClient) -> None:
    customer = client.v1.customers.create(params={"email": "jenny@shop.test", "name": "Jenny Rosen", "metadata": {"account": "42"}})
    assert customer.id.startswith("cus_") and customer.email == "jenny@shop.test" and customer.metadata.to_dict() == {"account": "42"}

    card = client.v1.payment_methods.create(params={"type": "card", "card": CARD})
    attached = client.v1.payment_methods.attach(card.id, params={"customer": customer.id})
    assert attached.customer == customer.id
    updated = client.v1.customers.update(customer.id, params={"invoice_settings": {"default_payment_method": card.id}})
    assert updated.invoice_settings.default_payment_method == card.id

    # A payment that saves its card for later, off-session use.
    second = client.v1.payment_methods.create(params={"type": "card", "card": CARD})
    first_payment = client.v1.payment_intents.create(params={
        "amount": 2000, "currency": "usd", "customer": customer.id, "payment_method": second.id,
        "setup_future_usage": "off_session", "confirm": True,
    })
    assert (first_payment.status, first_payment.customer, first_payment.setup_future_usage) == ("succeeded", customer.id, "off_session")
    saved = client.v1.customers.payment_methods.list(customer.id, params={"type": "card"})
    assert {method.id for method in saved.data} == {card.id, second.id}
    assert client.v1.payment_methods.retrieve(second.id).customer == customer.id

    # Later, with nobody at the checkout: the saved card is charged off session.
    later = client.v1.payment_intents.create(params={
        "amount": 1500, "currency": "usd", "customer": customer.id, "payment_method": second.id, "off_session": True, "confirm": True,
    })
    assert (later.status, later.amount_received, later.customer) == ("succeeded", 1500, customer.id)
    listed = client.v1.payment_methods.list(params={"customer": customer.id, "type": "card"})
    assert [method.id for method in listed.data] == [method.id for method in saved.data]

    # A card that wants 3-D Secure cannot be authenticated off session.
    strict = client.v1.payment_methods.create(params={"type": "card", "card": THREE_D_SECURE_CARD})
    client.v1.payment_methods.attach(strict.id, params={"customer": customer.id})
    with pytest.raises(stripe.CardError) as declined:
        client.v1.payment_intents.create(params={
            "amount": 1500, "currency": "usd", "customer": customer.id, "payment_method": strict.id, "off_session": True, "confirm": True,
        })
    assert declined.value.code == "authentication_required"
    assert declined.value.http_status == 402
    error = declined.value.json_body["error"]
    assert error["decline_code"] == "authentication_required"
    intent = client.v1.payment_intents.retrieve(error["payment_intent"]["id"])
    assert intent.status == "requires_payment_method" and intent.last_payment_error is not None
    assert (intent.last_payment_error.code, intent.last_payment_error.payment_method.id) == ("authentication_required", strict.id)

    # The saved card comes off the customer for good; the customer goes.
    detached = client.v1.payment_methods.detach(card.id)
    assert detached.customer is None
    assert client.v1.customers.retrieve(customer.id).invoice_settings.default_payment_method is None
    with pytest.raises(stripe.InvalidRequestError, match="may not be used again"):
        client.v1.payment_methods.attach(card.id, params={"customer": customer.id})
    found = client.v1.customers.list(params={"email": "jenny@shop.test"})
    assert [item.id for item in found.data] == [customer.id]
    deleted = client.v1.customers.delete(customer.id)
    assert deleted.deleted is True and deleted.id == customer.id
    assert client.v1.customers.retrieve(customer.id).to_dict() == {"id": customer.id, "object": "customer", "deleted": True}
    assert client.v1.customers.list(params={"email": "jenny@shop.test"}).data == []
    assert client.v1.payment_methods.retrieve(second.id).customer is None


def test_the_sdk_hears_no_such_customer(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError, match="No such customer: 'cus_missing'") as missing:
        client.v1.customers.retrieve("cus_missing")
    assert missing.value.http_status == 404 and missing.value.code == "resource_missing"
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.payment_intents.create(params={"amount": 1000, "currency": "usd", "customer": "cus_missing"})
    assert refused.value.param == "customer"
