"""One merchant's integration, end to end with the official `stripe` SDK, as
issue 15 asks: a customer with a saved card charged off session, the
charge's balance transaction through expand, search, the charge list, a
refund by charge, and a dispute answered with evidence and another closed.
Every answer is also held against Stripe's OpenAPI description by conftest."""

from __future__ import annotations

import httpx
import stripe

from tests.conftest import NodeProcess
from tests.helpers import wait_until

CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2040, "cvc": "123"}


def _open_dispute(http: httpx.Client, intent_id: str) -> str:
    """The cardholder disputes the payment at the simulator's issuer; the
    dispute's id once the engine has recorded it."""
    opened = http.post("/simulator/disputes", data={"payment_intent": intent_id})
    assert opened.status_code == 200, opened.text
    dispute_id = opened.json()["id"]
    wait_until(lambda: http.get(f"/v1/disputes/{dispute_id}").status_code == 200, 10, "the dispute recorded")
    return dispute_id


def test_an_integration_runs_its_whole_flow_through_the_stripe_sdk(node: NodeProcess, fresh_merchant: dict) -> None:
    client = stripe.StripeClient(fresh_merchant["secret_key"], base_addresses={"api": node.url}, max_network_retries=0)

    # A customer saves a card while paying, on session.
    customer = client.v1.customers.create(params={"email": "ada@shop.test", "name": "Ada Lovelace"})
    card = client.v1.payment_methods.create(params={"type": "card", "card": CARD})
    first = client.v1.payment_intents.create(params={
        "amount": 4000, "currency": "usd", "customer": customer.id, "payment_method": card.id,
        "setup_future_usage": "off_session", "confirm": True, "metadata": {"order": "A-1"},
    })
    assert (first.status, first.customer) == ("succeeded", customer.id)
    assert [method.id for method in client.v1.customers.payment_methods.list(customer.id).data] == [card.id]

    # Later the shop charges the saved card with nobody at the checkout.
    later = client.v1.payment_intents.create(params={
        "amount": 2500, "currency": "usd", "customer": customer.id, "payment_method": card.id,
        "off_session": True, "confirm": True, "metadata": {"order": "A-2"},
    })
    assert later.status == "succeeded"

    # The charge and what the merchant's balance got from it.
    expanded = client.v1.payment_intents.retrieve(later.id, params={"expand": ["latest_charge.balance_transaction"]})
    charge = expanded.latest_charge
    assert isinstance(charge, stripe.Charge) and charge.id.startswith("ch_")
    assert (charge.amount, charge.paid, charge.captured, charge.customer) == (2500, True, True, customer.id)
    transaction = charge.balance_transaction
    assert isinstance(transaction, stripe.BalanceTransaction) and transaction.id.startswith("txn_")
    assert (transaction.amount, transaction.source, transaction.type) == (2500, charge.id, "charge")
    assert transaction.fee > 0 and transaction.net == transaction.amount - transaction.fee
    assert sum(detail.amount for detail in transaction.fee_details) == transaction.fee

    # Search by the fields integrations use, and the charge list.
    found = client.v1.payment_intents.search(params={"query": f"customer:'{customer.id}' AND status:'succeeded'"})
    assert {intent.id for intent in found.data} == {first.id, later.id}
    by_metadata = client.v1.payment_intents.search(params={"query": "metadata['order']:'A-2'"})
    assert [intent.id for intent in by_metadata.data] == [later.id]
    charges = client.v1.charges.list(params={"payment_intent": later.id})
    assert [item.id for item in charges.data] == [charge.id]

    # A refund by charge.
    refund = client.v1.refunds.create(params={"charge": charge.id, "amount": 1000})
    assert (refund.status, refund.charge, refund.payment_intent) == ("succeeded", charge.id, later.id)
    refunded = client.v1.charges.retrieve(charge.id)
    assert (refunded.amount_refunded, refunded.refunded) == (1000, False)

    # Disputes: one answered with evidence, one accepted as lost.
    another = client.v1.payment_intents.create(params={
        "amount": 1200, "currency": "usd", "customer": customer.id, "payment_method": card.id, "off_session": True, "confirm": True,
    })
    with httpx.Client(base_url=node.url, auth=(fresh_merchant["secret_key"], ""), timeout=30) as http:
        contested_id, accepted_id = _open_dispute(http, first.id), _open_dispute(http, another.id)
    contested = client.v1.disputes.update(contested_id, params={
        "evidence": {"customer_name": "Ada Lovelace", "product_description": "A blue teapot", "shipping_tracking_number": "1Z999"},
        "submit": True,
    })
    assert (contested.status, contested.evidence.product_description) == ("under_review", "A blue teapot")
    assert contested.evidence_details.submission_count == 1 and contested.payment_intent == first.id
    accepted = client.v1.disputes.close(accepted_id)
    assert accepted.status == "lost" and accepted.payment_intent == another.id
    statuses = {item.id: item.status for item in client.v1.disputes.list().data}
    assert statuses == {contested_id: "under_review", accepted_id: "lost"}
