"""GET /v1/balance_transactions/{id} on a real node: the transaction a charge
names, the same as in the list and as expanded, and nobody else's."""

from __future__ import annotations

import httpx

from tests.conftest import NodeProcess, create_merchant_keys

PAY = {"amount": "3000", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"}


def test_a_charges_balance_transaction_is_retrieved_by_its_id(node: NodeProcess, fresh_merchant: dict) -> None:
    auth = (fresh_merchant["secret_key"], "")
    paid = httpx.post(node.url + "/v1/payment_intents", auth=auth, data={**PAY, "expand[]": "latest_charge.balance_transaction"})
    assert paid.status_code == 200, paid.text
    expanded = paid.json()["latest_charge"]["balance_transaction"]
    assert expanded["id"].startswith("txn_")
    fetched = httpx.get(f"{node.url}/v1/balance_transactions/{expanded['id']}", auth=auth)
    assert fetched.status_code == 200, fetched.text
    assert fetched.json() == expanded
    listed = httpx.get(node.url + "/v1/balance_transactions", auth=auth, params={"limit": 100}).json()["data"]
    assert fetched.json() in listed

    other = create_merchant_keys(node, "Other books")
    for who, wanted in (((other["secret_key"], ""), expanded["id"]), (auth, "txn_" + "z" * 20), (auth, "ch_" + "z" * 29)):
        missing = httpx.get(f"{node.url}/v1/balance_transactions/{wanted}", auth=who)
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "resource_missing"
        assert missing.json()["error"]["message"] == f"No such balance transaction: '{wanted}'"
