"""Charges as Stripe shows them, `expand[]`, and refunds by charge (issue 15).

A charge is one of an intent's card attempts that reached the network; its
id is the attempt's with `ch_` (engine/ids.py). Every answer here is also
checked against Stripe's spec by tests/conftest.py.
"""

from __future__ import annotations

import httpx
import pytest
import stripe

from engine import ids
from tests.conftest import NodeProcess
from tests.helpers import sdk_error, wait_until

PAY = {"amount": "5000", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"}
HOLD = {**PAY, "capture_method": "manual"}
DECLINE = {**PAY, "payment_method": "pm_card_chargeDeclined"}


@pytest.fixture
def merchant(node: NodeProcess, fresh_merchant: dict) -> dict:
    return {"url": node.url, **fresh_merchant}


@pytest.fixture
def http(merchant: dict):
    with httpx.Client(base_url=merchant["url"], auth=(merchant["secret_key"], ""), timeout=30) as client:
        yield client


def ok(answer: httpx.Response) -> dict:
    assert answer.status_code == 200, answer.text
    return answer.json()


def refused(answer: httpx.Response, status: int = 400) -> dict:
    assert answer.status_code == status, answer.text
    return answer.json()["error"]


# ------------------------------------------------------------------ charges


def test_a_payment_has_one_charge_named_ch_with_what_stripe_shows(http: httpx.Client) -> None:
    intent = ok(http.post("/v1/payment_intents", data=PAY))
    charge_id = intent["latest_charge"]
    assert charge_id.startswith("ch_") and ids.attempt_id_of_charge(charge_id) is not None
    charge = ok(http.get(f"/v1/charges/{charge_id}"))
    assert (charge["id"], charge["object"], charge["payment_intent"], charge["payment_method"]) == (
        charge_id,
        "charge",
        intent["id"],
        intent["payment_method"],
    )
    assert (charge["amount"], charge["amount_captured"], charge["amount_refunded"], charge["currency"]) == (5000, 5000, 0, "usd")
    assert (charge["status"], charge["paid"], charge["captured"], charge["refunded"], charge["disputed"]) == ("succeeded", True, True, False, False)
    assert charge["outcome"]["type"] == "authorized" and charge["outcome"]["network_status"] == "approved_by_network"
    card = charge["payment_method_details"]["card"]
    assert charge["payment_method_details"]["type"] == "card"
    assert (card["brand"], card["last4"], card["funding"], card["exp_month"]) == ("visa", "4242", "unknown", 12)
    assert charge["balance_transaction"].startswith("txn_")
    assert charge["billing_details"] == {"address": None, "email": None, "name": None, "phone": None}
    # The id of the attempt behind it (what latest_charge said before) finds the same charge.
    assert ok(http.get(f"/v1/charges/{ids.attempt_id_of_charge(charge_id)}"))["id"] == charge_id


def test_a_decline_is_a_failed_charge_named_by_the_error(http: httpx.Client) -> None:
    error = refused(http.post("/v1/payment_intents", data=DECLINE), 402)
    intent = error["payment_intent"]
    assert error["charge"] == intent["latest_charge"] == intent["last_payment_error"]["charge"]
    charge = ok(http.get(f"/v1/charges/{error['charge']}"))
    assert (charge["status"], charge["paid"], charge["captured"], charge["amount_captured"]) == ("failed", False, False, 0)
    assert (charge["failure_code"], charge["outcome"]["type"], charge["outcome"]["reason"]) == ("card_declined", "issuer_declined", "generic_decline")
    assert charge["balance_transaction"] is None
    # A second try with a good card is the latest charge; the failed one stays listed.
    paid = ok(http.post(f"/v1/payment_intents/{intent['id']}/confirm", data={"payment_method": "pm_card_visa"}))
    assert paid["latest_charge"] != error["charge"]
    listed = ok(http.get("/v1/charges", params={"payment_intent": intent["id"]}))
    assert [(item["id"], item["status"]) for item in listed["data"]] == [(paid["latest_charge"], "succeeded"), (error["charge"], "failed")]


def test_capture_a_charge_captures_its_intent_and_releases_the_rest(http: httpx.Client) -> None:
    held = ok(http.post("/v1/payment_intents", data=HOLD))
    charge = ok(http.get(f"/v1/charges/{held['latest_charge']}"))
    assert (charge["status"], charge["paid"], charge["captured"], charge["amount_captured"], charge["balance_transaction"]) == (
        "succeeded",
        True,
        False,
        0,
        None,
    )
    too_much = refused(http.post(f"/v1/charges/{charge['id']}/capture", data={"amount": "6000"}))
    assert (too_much["code"], too_much["param"]) == ("amount_too_large", "amount")
    captured = ok(http.post(f"/v1/charges/{charge['id']}/capture", data={"amount": "3000"}))
    # Stripe counts the released rest of a partial capture as refunded.
    assert (captured["id"], captured["captured"], captured["amount_captured"], captured["amount_refunded"], captured["refunded"]) == (
        charge["id"],
        True,
        3000,
        2000,
        False,
    )
    assert captured["balance_transaction"].startswith("txn_")
    intent = ok(http.get(f"/v1/payment_intents/{held['id']}"))
    assert (intent["status"], intent["amount_received"], intent["latest_charge"]) == ("succeeded", 3000, charge["id"])
    again = refused(http.post(f"/v1/charges/{charge['id']}/capture"))
    assert again["code"] == "charge_already_captured" and again["message"] == f"Charge {charge['id']} has already been captured."


def test_a_canceled_authorization_is_a_charge_refunded_in_full(http: httpx.Client) -> None:
    held = ok(http.post("/v1/payment_intents", data=HOLD))
    ok(http.post(f"/v1/payment_intents/{held['id']}/cancel"))
    charge = ok(http.get(f"/v1/charges/{held['latest_charge']}"))
    assert (charge["captured"], charge["amount_refunded"], charge["refunded"], charge["status"]) == (False, 5000, True, "succeeded")
    expired = refused(http.post(f"/v1/charges/{charge['id']}/capture"))
    assert expired["code"] == "charge_expired_for_capture"


def test_no_charge_before_a_confirm_nor_for_another_merchant(http: httpx.Client, node: NodeProcess, merchant_keys: dict) -> None:
    created = ok(http.post("/v1/payment_intents", data={"amount": "1000", "currency": "usd"}))
    assert created["latest_charge"] is None
    paid = ok(http.post("/v1/payment_intents", data=PAY))
    with httpx.Client(base_url=node.url, auth=(merchant_keys["secret_key"], ""), timeout=30) as other:
        missing = refused(other.get(f"/v1/charges/{paid['latest_charge']}"), 404)
        assert other.get("/v1/charges", params={"payment_intent": paid["id"]}).json()["data"] == []
    assert missing == {
        "type": "invalid_request_error",
        "message": f"No such charge: '{paid['latest_charge']}'",
        "param": "id",
        "code": "resource_missing",
        "doc_url": "https://stripe.com/docs/error-codes/resource-missing",
    }
    for unknown in ("ch_nothing", "pi_" + paid["latest_charge"][3:], "x" * 300):
        assert refused(http.get(f"/v1/charges/{unknown}"), 404)["code"] == "resource_missing"


def test_charges_list_newest_first_in_pages(http: httpx.Client) -> None:
    made = [ok(http.post("/v1/payment_intents", data=PAY))["latest_charge"] for _ in range(3)]
    first = ok(http.get("/v1/charges", params={"limit": 2}))
    assert (first["object"], first["url"], first["has_more"]) == ("list", "/v1/charges", True)
    assert [item["id"] for item in first["data"]] == made[::-1][:2]
    rest = ok(http.get("/v1/charges", params={"limit": 2, "starting_after": first["data"][-1]["id"]}))
    assert ([item["id"] for item in rest["data"]], rest["has_more"]) == ([made[0]], False)
    back = ok(http.get("/v1/charges", params={"limit": 2, "ending_before": made[0]}))
    assert [item["id"] for item in back["data"]] == made[::-1][:2]
    assert all(item["payment_method_details"]["card"]["last4"] == "4242" for item in first["data"])


# ------------------------------------------------------------------ refunds by charge


def test_refund_by_charge_refunds_its_intent(http: httpx.Client) -> None:
    paid = ok(http.post("/v1/payment_intents", data=PAY))
    refund = ok(http.post("/v1/refunds", data={"charge": paid["latest_charge"], "amount": "1500"}))
    assert (refund["charge"], refund["payment_intent"], refund["amount"], refund["status"]) == (paid["latest_charge"], paid["id"], 1500, "succeeded")
    charge = ok(http.get(f"/v1/charges/{paid['latest_charge']}", params={"expand[]": "refunds"}))
    assert (charge["amount_refunded"], charge["refunded"]) == (1500, False)
    assert [item["id"] for item in charge["refunds"]["data"]] == [refund["id"]]
    ok(http.post("/v1/refunds", data={"charge": paid["latest_charge"]}))
    assert ok(http.get(f"/v1/charges/{paid['latest_charge']}"))["refunded"] is True
    event = wait_until(lambda: http.get("/v1/events", params={"type": "charge.refunded"}).json()["data"], 10, "charge.refunded")[0]
    assert event["data"]["object"]["id"] == paid["latest_charge"]


def test_refund_by_charge_is_refused_for_a_failed_or_unknown_charge(http: httpx.Client) -> None:
    declined = refused(http.post("/v1/payment_intents", data=DECLINE), 402)
    failed = refused(http.post("/v1/refunds", data={"charge": declined["charge"]}))
    assert (failed["code"], failed["param"]) == ("charge_not_refundable", "charge")
    unknown = refused(http.post("/v1/refunds", data={"charge": "ch_nothing"}))
    assert (unknown["code"], unknown["message"]) == ("resource_missing", "No such charge: 'ch_nothing'")
    neither = refused(http.post("/v1/refunds", data={"amount": "100"}))
    assert neither["message"] == "Pass either payment_intent or charge, one of the two."


# ------------------------------------------------------------------ expand[]


def test_expand_on_retrieve_shows_the_charge_its_balance_transaction_and_the_payment_method(http: httpx.Client) -> None:
    paid = ok(http.post("/v1/payment_intents", data=PAY))
    plain = ok(http.get(f"/v1/payment_intents/{paid['id']}"))
    expanded = ok(
        http.get(
            f"/v1/payment_intents/{paid['id']}",
            params=[("expand[]", "latest_charge.balance_transaction"), ("expand[]", "payment_method"), ("expand[]", "customer")],
        )
    )
    charge = expanded["latest_charge"]
    assert charge["id"] == plain["latest_charge"] and charge["object"] == "charge"
    transaction = charge["balance_transaction"]
    assert (transaction["object"], transaction["amount"], transaction["type"], transaction["source"]) == ("balance_transaction", 5000, "charge", charge["id"])
    listed = ok(http.get("/v1/balance_transactions", params={"payment_intent": paid["id"], "limit": 100}))["data"]
    assert transaction in listed
    method = expanded["payment_method"]
    assert (method["id"], method["object"], method["card"]["last4"]) == (plain["payment_method"], "payment_method", "4242")
    assert {name: value for name, value in expanded.items() if name not in ("latest_charge", "payment_method")} == {
        name: value for name, value in plain.items() if name not in ("latest_charge", "payment_method")
    }
    # And from the charge back to its intent.
    back = ok(http.get(f"/v1/charges/{charge['id']}", params={"expand[]": "payment_intent.latest_charge"}))
    assert back["payment_intent"]["id"] == paid["id"] and back["payment_intent"]["latest_charge"]["id"] == charge["id"]


def test_expand_on_create_confirm_capture_and_lists(http: httpx.Client) -> None:
    created = ok(http.post("/v1/payment_intents", data={**HOLD, "expand[]": "latest_charge"}))
    assert created["latest_charge"]["object"] == "charge" and created["latest_charge"]["captured"] is False
    captured = ok(http.post(f"/v1/payment_intents/{created['id']}/capture", data={"expand[0]": "latest_charge.balance_transaction"}))
    assert captured["latest_charge"]["balance_transaction"]["amount"] == 5000
    later = ok(http.post("/v1/payment_intents", data={"amount": "700", "currency": "eur"}))
    confirmed = ok(http.post(f"/v1/payment_intents/{later['id']}/confirm", data={"payment_method": "pm_card_visa", "expand[]": "payment_method"}))
    assert confirmed["payment_method"]["object"] == "payment_method"
    page = ok(http.get("/v1/payment_intents", params={"limit": 2, "expand[]": "data.latest_charge"}))
    assert [item["latest_charge"]["id"] for item in page["data"]] == [confirmed["latest_charge"], captured["latest_charge"]["id"]]
    charges = ok(http.get("/v1/charges", params={"limit": 1, "expand[]": "data.balance_transaction"}))
    assert charges["data"][0]["balance_transaction"]["object"] == "balance_transaction"
    refunds = ok(http.get("/v1/refunds", params={"expand[]": "data.charge"}))
    assert refunds["data"] == []
    refund = ok(http.post("/v1/refunds", data={"payment_intent": later["id"], "expand[]": "charge"}))
    assert refund["charge"]["id"] == confirmed["latest_charge"] and refund["charge"]["amount_refunded"] == 700


def test_expand_of_what_cannot_be_expanded_is_stripe_s_400_and_changes_nothing(http: httpx.Client) -> None:
    later = ok(http.post("/v1/payment_intents", data={"amount": "700", "currency": "eur", "payment_method": "pm_card_visa"}))
    cases = [
        ("amount", "This property cannot be expanded (amount)."),
        ("latest_charge.amount", "This property cannot be expanded (latest_charge.amount)."),
        ("latest_charge.payment_intent.latest_charge.payment_intent.latest_charge", "You cannot expand more than 4 levels of a property."),
        ("data.latest_charge", "This property cannot be expanded (data)."),
    ]
    for path, message in cases:
        error = refused(http.post(f"/v1/payment_intents/{later['id']}/confirm", data={"expand[]": path}))
        assert (error["type"], error["message"]) == ("invalid_request_error", message)
        assert refused(http.get(f"/v1/payment_intents/{later['id']}", params={"expand[]": path}))["message"] == message
    assert ok(http.get(f"/v1/payment_intents/{later['id']}"))["status"] == "requires_confirmation"
    listed = refused(http.get("/v1/payment_intents", params={"expand[]": "latest_charge"}))
    assert listed["message"] == "This property cannot be expanded (latest_charge)."
    assert refused(http.get("/v1/webhook_endpoints", params={"expand[]": "data.url"}))["message"] == "This property cannot be expanded (data.url)."


def test_a_replay_is_expanded_like_the_first_answer(http: httpx.Client) -> None:
    body = {**PAY, "expand[]": "latest_charge"}
    first = http.post("/v1/payment_intents", data=body, headers={"Idempotency-Key": "expand-replay"})
    again = http.post("/v1/payment_intents", data=body, headers={"Idempotency-Key": "expand-replay"})
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert ok(first) == ok(again) and ok(again)["latest_charge"]["object"] == "charge"


# ------------------------------------------------------------------ the official SDK


def test_the_stripe_sdk_pays_expands_lists_charges_and_refunds_by_charge(merchant: dict) -> None:
    client = stripe.StripeClient(merchant["secret_key"], base_addresses={"api": merchant["url"]}, max_network_retries=0)
    paid = client.v1.payment_intents.create(params={"amount": 4200, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True})
    intent = client.v1.payment_intents.retrieve(paid.id, params={"expand": ["latest_charge.balance_transaction"]})
    charge = intent.latest_charge
    assert isinstance(charge, stripe.Charge) and isinstance(charge.balance_transaction, stripe.BalanceTransaction)
    assert (charge.id, charge.amount, charge.balance_transaction.amount) == (paid.latest_charge, 4200, 4200)
    listed = client.v1.charges.list(params={"payment_intent": paid.id})
    assert [item.id for item in listed.data] == [paid.latest_charge]
    assert client.v1.charges.retrieve(paid.latest_charge).payment_method_details.card.last4 == "4242"
    refund = client.v1.refunds.create(params={"charge": paid.latest_charge, "amount": 200})
    assert (refund.charge, refund.payment_intent, refund.amount) == (paid.latest_charge, paid.id, 200)
    assert client.v1.charges.retrieve(paid.latest_charge).amount_refunded == 200
    with pytest.raises(stripe.InvalidRequestError, match=sdk_error("This property cannot be expanded (latest_charge.metadata).")):
        client.v1.payment_intents.retrieve(paid.id, params={"expand": ["latest_charge.metadata"]})
    held = client.v1.payment_intents.create(
        params={"amount": 1000, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True, "capture_method": "manual"}
    )
    captured = client.v1.charges.capture(held.latest_charge, params={"amount": 600})
    assert (captured.captured, captured.amount_captured, captured.amount_refunded) == (True, 600, 400)


def test_no_charge_while_3d_secure_waits_nor_after_it_is_abandoned(http: httpx.Client) -> None:
    challenged = ok(
        http.post(
            "/v1/payment_intents",
            data={**PAY, "payment_method": "pm_card_threeDSecure2Required", "return_url": "https://shop.test/back"},
        )
    )
    assert (challenged["status"], challenged["latest_charge"]) == ("requires_action", None)
    canceled = ok(http.post(f"/v1/payment_intents/{challenged['id']}/cancel"))
    assert (canceled["status"], canceled["latest_charge"]) == ("canceled", None)
    assert ok(http.get("/v1/charges", params={"payment_intent": challenged["id"]}))["data"] == []
