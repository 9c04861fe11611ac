"""Saving a card for later with the official `stripe` SDK, as an integration
does it: a customer, a SetupIntent on a card that needs 3-D Secure, the
cardholder's challenge on the simulator's page, the card saved to the
customer, then a payment off session with it."""

from __future__ import annotations

import httpx
import pytest
import stripe

from tests.conftest import NodeProcess
from tests.helpers import sdk_error

# Stripe's test card that needs 3-D Secure once, then not for later payments.
AUTHENTICATE_ONCE = "4000002500003155"


def sdk(node: NodeProcess, keys: dict) -> stripe.StripeClient:
    return stripe.StripeClient(keys["secret_key"], base_addresses={"api": node.url}, max_network_retries=0)


def test_a_card_set_up_with_three_d_secure_pays_off_session(node: NodeProcess, fresh_merchant: dict) -> None:
    client = sdk(node, fresh_merchant)
    customer = client.v1.customers.create(params={"email": "saver@shop.test", "name": "Ada Saver"})
    card = client.v1.payment_methods.create(params={"type": "card", "card": {"number": AUTHENTICATE_ONCE, "exp_month": 11, "exp_year": 2041}})
    setup = client.v1.setup_intents.create(
        params={
            "customer": customer.id,
            "payment_method": card.id,
            "usage": "off_session",
            "confirm": True,
            "return_url": "https://shop.test/card-saved",
            "metadata": {"plan": "monthly"},
        }
    )
    assert setup.object == "setup_intent" and setup.id.startswith("seti_")
    assert (setup.status, setup.customer, setup.payment_method) == ("requires_action", customer.id, card.id)
    assert setup.next_action.type == "redirect_to_url"
    url = setup.next_action.redirect_to_url.url
    assert setup.next_action.redirect_to_url.return_url == "https://shop.test/card-saved"
    # Nothing is saved while the cardholder has not answered.
    assert client.v1.customers.payment_methods.list(customer.id).data == []

    page = httpx.get(url, timeout=30)
    assert page.status_code == 200 and "Complete authentication" in page.text
    answered = httpx.post(url, data={"result": "pass"}, timeout=30)
    assert answered.status_code == 303
    assert answered.headers["location"] == f"https://shop.test/card-saved?setup_intent={setup.id}"

    done = client.v1.setup_intents.retrieve(setup.id)
    assert (done.status, done.payment_method, done.next_action, done.last_setup_error) == ("succeeded", card.id, None, None)
    assert [saved.id for saved in client.v1.customers.payment_methods.list(customer.id).data] == [card.id]
    with pytest.raises(stripe.InvalidRequestError, match=sdk_error("This SetupIntent's status is succeeded, which does not allow this action.")) as again:
        client.v1.setup_intents.confirm(setup.id)
    assert again.value.code == "setup_intent_unexpected_state"

    payment = client.v1.payment_intents.create(
        params={"amount": 4200, "currency": "usd", "customer": customer.id, "payment_method": card.id, "off_session": True, "confirm": True}
    )
    assert (payment.status, payment.amount_received, payment.payment_method) == ("succeeded", 4200, card.id)

    # The issuer remembers that card only: the same number with another
    # expiry is another card, which still needs its holder.
    other = client.v1.payment_methods.create(params={"type": "card", "card": {"number": AUTHENTICATE_ONCE, "exp_month": 10, "exp_year": 2041}})
    challenged = client.v1.payment_intents.create(
        params={"amount": 4200, "currency": "usd", "payment_method": other.id, "confirm": True, "return_url": "https://shop.test/paid"}
    )
    assert challenged.status == "requires_action"

    listed = client.v1.setup_intents.list(params={"customer": customer.id})
    assert [item.id for item in listed.data] == [setup.id]


def test_a_declined_card_is_not_saved(node: NodeProcess, fresh_merchant: dict) -> None:
    client = sdk(node, fresh_merchant)
    customer = client.v1.customers.create(params={"email": "declined@shop.test"})
    setup = client.v1.setup_intents.create(params={"customer": customer.id})
    assert setup.status == "requires_payment_method"
    with pytest.raises(stripe.CardError, match=sdk_error("Your card was declined.")) as declined:
        client.v1.setup_intents.confirm(setup.id, params={"payment_method": "pm_card_chargeDeclinedInsufficientFunds"})
    assert (declined.value.code, declined.value.http_status) == ("card_declined", 402)
    assert declined.value.error.setup_intent.status == "requires_payment_method"
    assert client.v1.customers.payment_methods.list(customer.id).data == []
    saved = client.v1.setup_intents.confirm(setup.id, params={"payment_method": "pm_card_visa"})
    assert saved.status == "succeeded"
    assert [method.id for method in client.v1.customers.payment_methods.list(customer.id).data] == [saved.payment_method]
    canceled = client.v1.setup_intents.cancel(client.v1.setup_intents.create().id, params={"cancellation_reason": "duplicate"})
    assert (canceled.status, canceled.cancellation_reason) == ("canceled", "duplicate")
