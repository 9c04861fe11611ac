"""POST /v1/payment_intents/{id} on a real node, through the official SDK as
an integration calls it."""

from __future__ import annotations

import httpx
import pytest
import stripe

from tests.conftest import NodeProcess


def client_of(node: NodeProcess, keys: dict) -> stripe.StripeClient:
    return stripe.StripeClient(keys["secret_key"], base_addresses={"api": node.url}, max_network_retries=0)


def test_an_intent_is_updated_before_its_confirm_and_relabelled_after(node: NodeProcess, fresh_merchant: dict) -> None:
    client = client_of(node, fresh_merchant)
    intent = client.v1.payment_intents.create(params={"amount": 2000, "currency": "usd", "metadata": {"order": "7", "gift": "yes"}})
    assert intent.status == "requires_payment_method"
    updated = client.v1.payment_intents.update(
        intent.id, params={"amount": 3300, "payment_method": "pm_card_visa", "description": "order 7, two items", "metadata": {"gift": ""}}
    )
    assert (updated.amount, updated.status, updated.description) == (3300, "requires_confirmation", "order 7, two items")
    assert updated.metadata.to_dict() == {"order": "7"}
    assert updated.payment_method is not None
    paid = client.v1.payment_intents.confirm(intent.id)
    assert (paid.status, paid.amount_received) == ("succeeded", 3300)

    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.payment_intents.update(intent.id, params={"amount": 5000})
    assert refused.value.code == "payment_intent_unexpected_state" and "succeeded" in str(refused.value)
    relabelled = client.v1.payment_intents.update(intent.id, params={"metadata": {"shipped": "yes"}})
    assert relabelled.metadata.to_dict() == {"order": "7", "shipped": "yes"} and relabelled.amount_received == 3300
    assert client.v1.payment_intents.retrieve(intent.id).metadata.to_dict() == {"order": "7", "shipped": "yes"}


def test_an_update_is_idempotent_and_only_the_owner_may_make_it(node: NodeProcess, fresh_merchant: dict, merchant_keys: dict) -> None:
    auth = (fresh_merchant["secret_key"], "")
    intent = httpx.post(node.url + "/v1/payment_intents", auth=auth, data={"amount": "1500", "currency": "usd"}).json()
    url = f"{node.url}/v1/payment_intents/{intent['id']}"
    first = httpx.post(url, auth=auth, data={"amount": "1700"}, headers={"Idempotency-Key": "update-1"})
    again = httpx.post(url, auth=auth, data={"amount": "1700"}, headers={"Idempotency-Key": "update-1"})
    assert first.status_code == again.status_code == 200 and first.json()["amount"] == again.json()["amount"] == 1700
    assert again.headers.get("Idempotent-Replayed") == "true"
    other = httpx.post(url, auth=(merchant_keys["secret_key"], ""), data={"amount": "9999"})
    assert other.status_code == 404 and other.json()["error"]["code"] == "resource_missing"
    publishable = httpx.post(url, auth=(fresh_merchant["publishable_key"], ""), data={"amount": "9999"})
    assert publishable.status_code == 401
    unknown = httpx.post(url, auth=auth, data={"receipt_email": "a@example.com"})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "receipt_email"
    too_small = httpx.post(url, auth=auth, data={"amount": "10"})
    assert too_small.status_code == 400 and too_small.json()["error"]["param"] == "amount"
    assert httpx.get(url, auth=auth).json()["amount"] == 1700
