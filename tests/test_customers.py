"""Customers and saved payment methods over HTTP (issue 15): create,
retrieve, update, delete and list customers; attach, detach and list a
customer's payment methods with Stripe's rules; intents for a customer,
setup_future_usage and off-session confirms. Every answer is also checked
against Stripe's spec by tests/conftest.py."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx
import msgspec
import pytest

from tests.conftest import NodeProcess
from tests.helpers import wait_until

VISA = {"type": "card", "card[number]": "4242424242424242", "card[exp_month]": "12", "card[exp_year]": "2040"}
# Stripe's 3-D Secure 2 test card: every payment asks for authentication
# (4000002500003155 would not once set up by a SetupIntent).
THREE_D_SECURE = {**VISA, "card[number]": "4000000000003220"}


@pytest.fixture
def http(node: NodeProcess, fresh_merchant: dict):
    with httpx.Client(base_url=node.url, auth=(fresh_merchant["secret_key"], ""), timeout=30) as client:
        yield client


@pytest.fixture
def other(node: NodeProcess, merchant_keys: dict):
    """Another merchant's client."""
    with httpx.Client(base_url=node.url, auth=(merchant_keys["secret_key"], ""), timeout=30) as client:
        yield client


def ok(answer: httpx.Response) -> dict:
    assert answer.status_code == 200, answer.text
    return answer.json()


def refused(answer: httpx.Response, status: int = 400) -> dict:
    assert answer.status_code == status, answer.text
    return answer.json()["error"]


def card(http: httpx.Client, fields: dict = VISA) -> str:
    return ok(http.post("/v1/payment_methods", data=fields))["id"]


def test_a_customer_is_created_retrieved_updated_and_deleted(http: httpx.Client) -> None:
    made = ok(http.post("/v1/customers", data={
        "email": "ada@shop.test", "name": "Ada", "phone": "+15550100", "description": "first", "metadata[tier]": "gold", "metadata[src]": "web",
    }))
    assert made["id"].startswith("cus_") and made["object"] == "customer" and made["livemode"] is False
    assert (made["email"], made["name"], made["phone"], made["description"]) == ("ada@shop.test", "Ada", "+15550100", "first")
    assert made["metadata"] == {"tier": "gold", "src": "web"}
    assert made["invoice_settings"]["default_payment_method"] is None
    assert abs(made["created"] - time.time()) < 60
    assert ok(http.get(f"/v1/customers/{made['id']}")) == made

    changed = ok(http.post(f"/v1/customers/{made['id']}", data={"email": "", "name": "Ada L.", "metadata[src]": "", "metadata[vip]": "yes"}))
    assert (changed["email"], changed["name"], changed["phone"]) == (None, "Ada L.", "+15550100")
    assert changed["metadata"] == {"tier": "gold", "vip": "yes"}
    cleared = ok(http.post(f"/v1/customers/{made['id']}", data={"metadata": ""}))
    assert cleared["metadata"] == {} and cleared["name"] == "Ada L."

    deleted = ok(http.delete(f"/v1/customers/{made['id']}"))
    assert deleted == {"id": made["id"], "object": "customer", "deleted": True}
    # Stripe still answers a retrieve, as deleted; anything else is a 404.
    assert ok(http.get(f"/v1/customers/{made['id']}")) == deleted
    assert refused(http.post(f"/v1/customers/{made['id']}", data={"name": "x"}), 404)["code"] == "resource_missing"
    assert refused(http.delete(f"/v1/customers/{made['id']}"), 404)["message"] == f"No such customer: '{made['id']}'"


def test_customers_list_newest_first_with_cursors_and_filters(http: httpx.Client) -> None:
    made = [ok(http.post("/v1/customers", data={"email": f"list{i % 2}@shop.test"}))["id"] for i in range(5)]
    gone = ok(http.post("/v1/customers", data={"email": "list0@shop.test"}))["id"]
    ok(http.delete(f"/v1/customers/{gone}"))
    newest = list(reversed(made))

    first = ok(http.get("/v1/customers", params={"limit": 2}))
    assert first["object"] == "list" and first["url"] == "/v1/customers" and first["has_more"] is True
    assert [c["id"] for c in first["data"]] == newest[:2]
    second = ok(http.get("/v1/customers", params={"limit": 2, "starting_after": newest[1]}))
    assert [c["id"] for c in second["data"]] == newest[2:4] and second["has_more"] is True
    back = ok(http.get("/v1/customers", params={"limit": 2, "ending_before": newest[2]}))
    assert [c["id"] for c in back["data"]] == newest[:2] and back["has_more"] is False
    everything = ok(http.get("/v1/customers", params={"limit": 100}))
    assert [c["id"] for c in everything["data"]] == newest and gone not in [c["id"] for c in everything["data"]]

    evens = ok(http.get("/v1/customers", params={"email": "list0@shop.test"}))
    assert [c["id"] for c in evens["data"]] == [newest[0], newest[2], newest[4]]
    created = ok(http.get(f"/v1/customers/{made[0]}"))["created"]
    assert ok(http.get("/v1/customers", params={"created[lt]": created}))["data"] == []
    assert len(ok(http.get("/v1/customers", params={"created[gte]": created}))["data"]) == 5

    assert refused(http.get("/v1/customers", params={"starting_after": "cus_nope"}))["param"] == "starting_after"
    assert refused(http.get("/v1/customers", params={"limit": 101}))["param"] == "limit"
    assert refused(http.get("/v1/customers", params={"starting_after": newest[0], "ending_before": newest[1]}))["param"] == "ending_before"


def test_another_merchant_s_customer_is_no_such_customer(http: httpx.Client, other: httpx.Client) -> None:
    mine = ok(http.post("/v1/customers", data={"name": "Mine"}))["id"]
    for answer in (other.get(f"/v1/customers/{mine}"), other.post(f"/v1/customers/{mine}", data={"name": "x"}), other.delete(f"/v1/customers/{mine}")):
        error = refused(answer, 404)
        assert (error["code"], error["message"]) == ("resource_missing", f"No such customer: '{mine}'")
    assert mine not in [c["id"] for c in ok(other.get("/v1/customers", params={"limit": 100}))["data"]]
    assert refused(other.get(f"/v1/customers/{mine}/payment_methods"), 404)["code"] == "resource_missing"
    # Nor may another merchant's intent or payment method name it.
    error = refused(other.post("/v1/payment_intents", data={"amount": "1000", "currency": "usd", "customer": mine}))
    assert (error["param"], error["code"]) == ("customer", "resource_missing")
    theirs = card(other)
    error = refused(other.post(f"/v1/payment_methods/{theirs}/attach", data={"customer": mine}))
    assert (error["param"], error["message"]) == ("customer", f"No such customer: '{mine}'")
    assert refused(http.post(f"/v1/payment_methods/{theirs}/attach", data={"customer": mine}), 404)["param"] == "payment_method"
    assert ok(http.get(f"/v1/customers/{mine}"))["name"] == "Mine"


def test_a_customer_create_and_update_replay_under_their_idempotency_key(http: httpx.Client) -> None:
    first = http.post("/v1/customers", data={"email": "same@shop.test"}, headers={"Idempotency-Key": "cus-1"})
    again = http.post("/v1/customers", data={"email": "same@shop.test"}, headers={"Idempotency-Key": "cus-1"})
    assert first.status_code == again.status_code == 200 and first.json() == again.json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert len(ok(http.get("/v1/customers", params={"email": "same@shop.test"}))["data"]) == 1
    error = refused(http.post("/v1/customers", data={"email": "other@shop.test"}, headers={"Idempotency-Key": "cus-1"}))
    assert error["type"] == "idempotency_error"
    url = f"/v1/customers/{first.json()['id']}"
    updated = http.post(url, data={"metadata[n]": "1"}, headers={"Idempotency-Key": "cus-2"})
    ok(http.post(url, data={"metadata[n]": "2"}))
    replayed = http.post(url, data={"metadata[n]": "1"}, headers={"Idempotency-Key": "cus-2"})
    assert replayed.json() == updated.json() and replayed.json()["metadata"] == {"n": "1"}
    assert ok(http.get(url))["metadata"] == {"n": "2"}
    method = card(http)
    attach = f"/v1/payment_methods/{method}/attach"
    attached = http.post(attach, data={"customer": first.json()["id"]}, headers={"Idempotency-Key": "attach-1"})
    ok(http.post(f"/v1/payment_methods/{method}/detach"))
    again = http.post(attach, data={"customer": first.json()["id"]}, headers={"Idempotency-Key": "attach-1"})
    assert again.json() == attached.json() and again.headers.get("Idempotent-Replayed") == "true"
    assert ok(http.get(f"/v1/payment_methods/{method}"))["customer"] is None


def test_bad_customer_input_is_a_clear_400(http: httpx.Client, node: NodeProcess, fresh_merchant: dict) -> None:
    assert refused(http.post("/v1/customers", data={"email": "a" * 513}))["param"] == "email"
    assert refused(http.post("/v1/customers", data={"phone": "1" * 21}))["param"] == "phone"
    assert refused(http.post("/v1/customers", data={"metadata": "x"}))["param"] == "metadata"
    assert refused(http.post("/v1/customers", data={f"metadata[k{i}]": "v" for i in range(51)}))["param"] == "metadata"
    assert refused(http.post("/v1/customers", data={"coupon": "x"}))["param"] == "coupon"
    assert refused(http.post("/v1/customers", data={"payment_method": "pm_nope"}))["param"] == "payment_method"
    made = ok(http.post("/v1/customers", data={f"metadata[k{i}]": "v" for i in range(50)}))
    # Merged past Stripe's 50 keys.
    assert refused(http.post(f"/v1/customers/{made['id']}", data={"metadata[one_more]": "v"}))["param"] == "metadata"
    assert refused(http.get("/v1/customers/cus_nope"), 404)["message"] == "No such customer: 'cus_nope'"
    assert refused(http.get(f"/v1/customers/{made['id']}", params={"expand[]": "email"}))["message"] == "This property cannot be expanded (email)."
    publishable = httpx.post(node.url + "/v1/customers", auth=(fresh_merchant["publishable_key"], ""), timeout=30)
    assert publishable.status_code == 401


def test_payment_methods_attach_to_one_customer_and_detach_for_good(http: httpx.Client) -> None:
    alice = ok(http.post("/v1/customers", data={"name": "Alice"}))["id"]
    bob = ok(http.post("/v1/customers", data={"name": "Bob"}))["id"]
    first, second = card(http), card(http)
    assert ok(http.get(f"/v1/payment_methods/{first}"))["customer"] is None

    attached = ok(http.post(f"/v1/payment_methods/{first}/attach", data={"customer": alice}))
    assert (attached["id"], attached["customer"]) == (first, alice)
    assert ok(http.post(f"/v1/payment_methods/{first}/attach", data={"customer": alice}))["customer"] == alice
    error = refused(http.post(f"/v1/payment_methods/{first}/attach", data={"customer": bob}))
    assert (error["code"], error["message"]) == ("payment_method_unexpected_state", "The payment method you provided has already been attached to a customer.")
    ok(http.post(f"/v1/payment_methods/{second}/attach", data={"customer": alice}))
    assert ok(http.get(f"/v1/payment_methods/{first}"))["customer"] == alice

    listed = ok(http.get(f"/v1/customers/{alice}/payment_methods"))
    assert listed["url"] == f"/v1/customers/{alice}/payment_methods" and [pm["id"] for pm in listed["data"]] == [second, first]
    assert all(pm["customer"] == alice for pm in listed["data"])
    page = ok(http.get("/v1/payment_methods", params={"customer": alice, "type": "card", "limit": 1}))
    assert [pm["id"] for pm in page["data"]] == [second] and page["has_more"] is True
    after = ok(http.get("/v1/payment_methods", params={"customer": alice, "type": "card", "starting_after": second}))
    assert [pm["id"] for pm in after["data"]] == [first] and after["has_more"] is False
    assert ok(http.get("/v1/payment_methods", params={"customer": bob}))["data"] == []
    assert refused(http.get("/v1/payment_methods"))["param"] == "customer"

    detached = ok(http.post(f"/v1/payment_methods/{first}/detach"))
    assert (detached["id"], detached["customer"]) == (first, None)
    assert ok(http.get(f"/v1/payment_methods/{first}"))["customer"] is None
    assert refused(http.post(f"/v1/payment_methods/{first}/detach"))["code"] == "payment_method_unexpected_state"
    # Detached once: never saved again, to anyone.
    for customer in (alice, bob):
        error = refused(http.post(f"/v1/payment_methods/{first}/attach", data={"customer": customer}))
        assert error["message"].startswith("This PaymentMethod was previously used without being attached to a Customer or was detached")
    assert [pm["id"] for pm in ok(http.get(f"/v1/customers/{alice}/payment_methods"))["data"]] == [second]
    assert ok(http.get(f"/v1/customers/{alice}/payment_methods/{second}"))["customer"] == alice
    for customer, method in ((alice, first), (bob, second)):
        assert refused(http.get(f"/v1/customers/{customer}/payment_methods/{method}"), 404)["code"] == "resource_missing"
    error = refused(http.post(f"/v1/payment_methods/{card(http)}/attach", data={"customer": "cus_nope"}))
    assert (error["param"], error["code"]) == ("customer", "resource_missing")
    assert refused(http.post(f"/v1/payment_methods/{first}/attach"))["param"] == "customer"


def test_a_default_payment_method_is_one_of_the_customer_s_and_goes_with_it(http: httpx.Client) -> None:
    method = card(http)
    customer = ok(http.post("/v1/customers", data={"payment_method": method, "invoice_settings[default_payment_method]": method}))
    assert customer["invoice_settings"]["default_payment_method"] == method
    assert ok(http.get(f"/v1/payment_methods/{method}"))["customer"] == customer["id"]
    expanded = ok(http.get(f"/v1/customers/{customer['id']}", params={"expand[]": "invoice_settings.default_payment_method"}))
    assert expanded["invoice_settings"]["default_payment_method"]["id"] == method
    # The same card cannot be saved to a second customer as it is made.
    error = refused(http.post("/v1/customers", data={"payment_method": method}))
    assert error["code"] == "payment_method_unexpected_state"

    loose = card(http)
    error = refused(http.post(f"/v1/customers/{customer['id']}", data={"invoice_settings[default_payment_method]": loose}))
    assert error["param"] == "invoice_settings[default_payment_method]"
    assert error["message"] == f"The customer does not have a payment method with the ID {loose}. The payment method must be attached to the customer."
    ok(http.post(f"/v1/payment_methods/{loose}/attach", data={"customer": customer["id"]}))
    assert ok(http.post(f"/v1/customers/{customer['id']}", data={"invoice_settings[default_payment_method]": loose}))["invoice_settings"]["default_payment_method"] == loose
    ok(http.post(f"/v1/payment_methods/{loose}/detach"))
    assert ok(http.get(f"/v1/customers/{customer['id']}"))["invoice_settings"]["default_payment_method"] is None

    ok(http.delete(f"/v1/customers/{customer['id']}"))
    assert ok(http.get(f"/v1/payment_methods/{method}"))["customer"] is None
    error = refused(http.post(f"/v1/payment_methods/{method}/attach", data={"customer": ok(http.post("/v1/customers"))["id"]}))
    assert error["code"] == "payment_method_unexpected_state"


def test_an_intent_names_its_customer_and_saves_its_card_with_setup_future_usage(http: httpx.Client) -> None:
    customer = ok(http.post("/v1/customers", data={"email": "buyer@shop.test"}))["id"]
    method = card(http)
    paid = ok(http.post("/v1/payment_intents", data={
        "amount": "2500", "currency": "usd", "customer": customer, "payment_method": method, "setup_future_usage": "off_session", "confirm": "true",
    }))
    assert (paid["status"], paid["customer"], paid["setup_future_usage"]) == ("succeeded", customer, "off_session")
    assert ok(http.get(f"/v1/payment_intents/{paid['id']}"))["customer"] == customer
    assert ok(http.get(f"/v1/payment_methods/{method}"))["customer"] == customer
    assert [pm["id"] for pm in ok(http.get(f"/v1/customers/{customer}/payment_methods"))["data"]] == [method]
    expanded = ok(http.get(f"/v1/payment_intents/{paid['id']}", params={"expand[]": ["payment_method", "customer"]}))
    assert expanded["payment_method"]["customer"] == customer
    assert (expanded["customer"]["id"], expanded["customer"]["email"]) == (customer, "buyer@shop.test")

    # Without setup_future_usage nothing is saved; the intent still shows its customer.
    once = card(http)
    plain = ok(http.post("/v1/payment_intents", data={"amount": "900", "currency": "usd", "customer": customer, "payment_method": once, "confirm": "true"}))
    assert plain["customer"] == customer and "setup_future_usage" in plain and plain["setup_future_usage"] is None
    assert ok(http.get(f"/v1/payment_methods/{once}"))["customer"] is None

    # A declined card is not saved.
    declined = card(http, {**VISA, "card[number]": "4000000000000002"})
    error = refused(http.post("/v1/payment_intents", data={
        "amount": "900", "currency": "usd", "customer": customer, "payment_method": declined, "setup_future_usage": "on_session", "confirm": "true",
    }), 402)
    assert error["code"] == "card_declined"
    assert ok(http.get(f"/v1/payment_methods/{declined}"))["customer"] is None


def test_an_intent_s_customer_and_setup_future_usage_change_before_its_confirm(http: httpx.Client) -> None:
    customer = ok(http.post("/v1/customers"))["id"]
    intent = ok(http.post("/v1/payment_intents", data={"amount": "1200", "currency": "usd"}))
    assert (intent["customer"], intent["setup_future_usage"]) == (None, None)
    updated = ok(http.post(f"/v1/payment_intents/{intent['id']}", data={"customer": customer, "setup_future_usage": "on_session"}))
    assert (updated["customer"], updated["setup_future_usage"]) == (customer, "on_session")
    method = card(http)
    paid = ok(http.post(f"/v1/payment_intents/{intent['id']}/confirm", data={"payment_method": method}))
    assert paid["status"] == "succeeded"
    assert ok(http.get(f"/v1/payment_methods/{method}"))["customer"] == customer
    error = refused(http.post(f"/v1/payment_intents/{intent['id']}", data={"customer": ok(http.post("/v1/customers"))["id"]}))
    assert error["code"] == "payment_intent_unexpected_state" and "succeeded" in error["message"]
    error = refused(http.post(f"/v1/payment_intents/{intent['id']}", data={"customer": "cus_nope"}))
    assert (error["code"], error["param"]) == ("resource_missing", "customer")
    assert refused(http.post("/v1/payment_intents", data={"amount": "100", "currency": "usd", "setup_future_usage": "always"}))["param"] == "setup_future_usage"


def test_a_saved_card_is_for_its_customer_only_and_a_detached_one_for_nobody(http: httpx.Client) -> None:
    alice = ok(http.post("/v1/customers"))["id"]
    bob = ok(http.post("/v1/customers"))["id"]
    method = card(http)
    ok(http.post(f"/v1/payment_methods/{method}/attach", data={"customer": alice}))
    pay = {"amount": "700", "currency": "usd", "payment_method": method, "confirm": "true"}
    error = refused(http.post("/v1/payment_intents", data={**pay, "customer": bob}))
    assert error["param"] == "payment_method" and "belongs to a Customer other than" in error["message"]
    error = refused(http.post("/v1/payment_intents", data={**pay, "off_session": "true"}))
    assert error["param"] == "payment_method" and "you did not provide the customer parameter" in error["message"]
    assert ok(http.post("/v1/payment_intents", data={**pay, "customer": alice}))["status"] == "succeeded"
    ok(http.post(f"/v1/payment_methods/{method}/detach"))
    error = refused(http.post("/v1/payment_intents", data={**pay, "customer": alice}))
    assert error["param"] == "payment_method" and "was detached from a Customer. It may not be used again" in error["message"]
    waiting = ok(http.post("/v1/payment_intents", data={"amount": "700", "currency": "usd", "customer": alice}))
    error = refused(http.post(f"/v1/payment_intents/{waiting['id']}/confirm", data={"payment_method": method}))
    assert error["param"] == "payment_method"
    assert ok(http.get(f"/v1/payment_intents/{waiting['id']}"))["status"] == "requires_payment_method"


def test_off_session_payments_with_a_saved_card(http: httpx.Client) -> None:
    customer = ok(http.post("/v1/customers"))["id"]
    saved = card(http)
    ok(http.post(f"/v1/payment_methods/{saved}/attach", data={"customer": customer}))
    paid = ok(http.post("/v1/payment_intents", data={
        "amount": "1999", "currency": "usd", "customer": customer, "payment_method": saved, "off_session": "true", "confirm": "true",
    }))
    assert (paid["status"], paid["amount_received"]) == ("succeeded", 1999)
    assert refused(http.post("/v1/payment_intents", data={"amount": "100", "currency": "usd", "off_session": "true"}))["param"] == "off_session"
    # Confirming an existing intent off-session (Stripe's "recurring" is true too).
    later = ok(http.post("/v1/payment_intents", data={"amount": "500", "currency": "usd", "customer": customer, "payment_method": saved}))
    assert ok(http.post(f"/v1/payment_intents/{later['id']}/confirm", data={"off_session": "recurring"}))["status"] == "succeeded"


def test_off_session_a_card_that_wants_3ds_is_declined_authentication_required(http: httpx.Client) -> None:
    customer = ok(http.post("/v1/customers"))["id"]
    strict = card(http, THREE_D_SECURE)
    ok(http.post(f"/v1/payment_methods/{strict}/attach", data={"customer": customer}))
    # On session it asks the cardholder.
    on_session = ok(http.post("/v1/payment_intents", data={
        "amount": "3000", "currency": "usd", "customer": customer, "payment_method": strict, "confirm": "true", "return_url": "https://shop.test/back",
    }))
    assert on_session["status"] == "requires_action" and on_session["next_action"]["type"] == "redirect_to_url"

    answer = http.post("/v1/payment_intents", data={
        "amount": "3000", "currency": "usd", "customer": customer, "payment_method": strict, "confirm": "true", "off_session": "true",
    })
    error = refused(answer, 402)
    assert (error["type"], error["code"], error["decline_code"]) == ("card_error", "authentication_required", "authentication_required")
    assert error["message"] == "Your card was declined. This transaction requires authentication."
    intent = error["payment_intent"]
    assert (intent["status"], intent["customer"], intent["next_action"]) == ("requires_payment_method", customer, None)
    assert intent["last_payment_error"]["code"] == "authentication_required"
    assert intent["last_payment_error"]["payment_method"]["id"] == strict
    assert ok(http.get(f"/v1/payment_intents/{intent['id']}"))["status"] == "requires_payment_method"
    # The customer comes back and pays on session with a card that needs nothing.
    other_card = card(http)
    retried = ok(http.post(f"/v1/payment_intents/{intent['id']}/confirm", data={"payment_method": other_card}))
    assert retried["status"] == "succeeded"


def _attempt_ids(database_url: str, intent_id: str) -> list[str]:
    """The intent's attempts as its journal has them, oldest first."""

    async def read() -> list[str]:
        connection = await asyncpg.connect(database_url)
        try:
            rows = await connection.fetch(
                "SELECT body FROM journal WHERE entity_id = $1 AND kind = 'AttemptStarted' ORDER BY partition, seq", intent_id
            )
        finally:
            await connection.close()
        return [msgspec.json.decode(row["body"])["attempt"]["id"] for row in rows]

    return asyncio.run(read())


def test_off_session_the_challenge_the_network_opened_is_voided(http: httpx.Client, node: NodeProcess) -> None:
    customer = ok(http.post("/v1/customers"))["id"]
    strict = card(http, THREE_D_SECURE)
    ok(http.post(f"/v1/payment_methods/{strict}/attach", data={"customer": customer}))
    pay = {"amount": "800", "currency": "usd", "customer": customer, "payment_method": strict, "confirm": "true"}
    on_session = ok(http.post("/v1/payment_intents", data=pay))
    page_url = on_session["next_action"]["redirect_to_url"]["url"]
    (on_reference,) = _attempt_ids(node.database_url, on_session["id"])
    assert on_reference in page_url and httpx.get(page_url, timeout=30).status_code == 200  # waiting for the cardholder

    intent_id = refused(http.post("/v1/payment_intents", data={**pay, "off_session": "true"}), 402)["payment_intent"]["id"]
    (off_reference,) = _attempt_ids(node.database_url, intent_id)
    off_page = page_url.replace(on_reference, off_reference)
    # Nobody can complete the off-session challenge: the void closed it.
    wait_until(lambda: httpx.get(off_page, timeout=30).status_code == 404, 10, "the off-session challenge to be voided")
    assert httpx.post(off_page, data={"result": "pass"}, timeout=30).status_code == 404
    assert ok(http.get(f"/v1/payment_intents/{intent_id}"))["status"] == "requires_payment_method"


@pytest.mark.parametrize(
    ("method", "path", "what"),
    [
        ("GET", "/v1/customers/search", "Searching customers"),
        ("GET", "/v1/customers/cus_1/sources", "A customer's sources"),
        ("POST", "/v1/customers/cus_1/tax_ids", "A customer's tax_ids"),
        ("DELETE", "/v1/customers/cus_1/discount", "A customer's discount"),
        ("GET", "/v1/customers/cus_1/subscriptions/sub_1", "A customer's subscriptions"),
    ],
)
def test_a_customer_s_billing_parts_say_they_are_not_served(http: httpx.Client, method: str, path: str, what: str) -> None:
    error = refused(http.request(method, path), 404)
    assert error["message"].startswith(f"{what} is not supported by this server ({method} {path}).")



def test_a_card_saved_to_a_customer_pays_only_for_that_customer(node: NodeProcess, fresh_merchant: dict, http: httpx.Client) -> None:
    """Stripe refuses a saved card on an intent or SetupIntent that does not
    name its customer, and a detached one anywhere: so whoever learns a saved
    card's id (a browser holding a publishable key and an intent's client
    secret) cannot pay with it."""
    owner = ok(http.post("/v1/customers", data={"email": "owner@shop.test"}))["id"]
    saved = card(http)
    ok(http.post(f"/v1/payment_methods/{saved}/attach", data={"customer": owner}))
    pay = {"amount": "1000", "currency": "usd", "payment_method": saved, "confirm": "true"}

    without = refused(http.post("/v1/payment_intents", data=pay))
    assert without["param"] == "payment_method" and "did not provide the customer parameter" in without["message"]
    # The intent stays open; confirming it with the saved card is refused the same way.
    intent = ok(http.post("/v1/payment_intents", data={"amount": "1000", "currency": "usd"}))
    assert refused(http.post(f"/v1/payment_intents/{intent['id']}/confirm", data={"payment_method": saved}))["param"] == "payment_method"
    browser = httpx.post(
        f"{node.url}/v1/payment_intents/{intent['id']}/confirm",
        data={"payment_method": saved, "client_secret": intent["client_secret"]},
        auth=(fresh_merchant["publishable_key"], ""),
        timeout=30,
    )
    assert refused(browser)["param"] == "payment_method"
    assert refused(http.post(f"/v1/payment_intents/{intent['id']}", data={"payment_method": saved}))["param"] == "payment_method"
    setup = refused(http.post("/v1/setup_intents", data={"payment_method": saved, "confirm": "true"}))
    assert setup["param"] == "payment_method"
    assert ok(http.get(f"/v1/payment_intents/{intent['id']}"))["status"] == "requires_payment_method"

    # With its customer it pays; once detached, never again.
    assert ok(http.post("/v1/payment_intents", data={**pay, "customer": owner}))["status"] == "succeeded"
    ok(http.post(f"/v1/payment_methods/{saved}/detach"))
    assert "may not be used again" in refused(http.post("/v1/payment_intents", data=pay))["message"]


def test_a_confirm_reads_the_attachment_again_unless_create_found_the_card_free(http: httpx.Client) -> None:
    """A confirm soon after its create, with the card the create found
    attached to no one, takes that answer (one round trip less a payment);
    every other confirm looks again: a card detached after the create, or
    another card named at the confirm, is refused as before."""
    owner = ok(http.post("/v1/customers", data={"email": "keeper@shop.test"}))["id"]
    free = card(http)
    intent = ok(http.post("/v1/payment_intents", data={"amount": "1000", "currency": "usd", "payment_method": free}))
    assert ok(http.post(f"/v1/payment_intents/{intent['id']}/confirm"))["status"] == "succeeded"

    saved = card(http)
    ok(http.post(f"/v1/payment_methods/{saved}/attach", data={"customer": owner}))
    with_owner = ok(http.post("/v1/payment_intents", data={"amount": "1000", "currency": "usd", "payment_method": saved, "customer": owner}))
    ok(http.post(f"/v1/payment_methods/{saved}/detach"))
    assert "may not be used again" in refused(http.post(f"/v1/payment_intents/{with_owner['id']}/confirm"))["message"]

    other = card(http)
    ok(http.post(f"/v1/payment_methods/{other}/attach", data={"customer": owner}))
    started = ok(http.post("/v1/payment_intents", data={"amount": "1000", "currency": "usd", "payment_method": card(http)}))
    assert refused(http.post(f"/v1/payment_intents/{started['id']}/confirm", data={"payment_method": other}))["param"] == "payment_method"
