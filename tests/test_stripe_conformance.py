"""What we return is what Stripe publishes (issue 15).

tests/conftest.py checks every answer of a node's API the suite receives
against Stripe's description (tests/stripe_spec.py). Here: the checker
itself refuses broken objects (a checker that passes everything would make
that worthless); one run through every kind of object we return, by the
stripe SDK and by plain HTTP, counted by type; the one API version; and the
404s for what is not served.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import stripe

from gateway.objects import API_VERSION
from gateway.routes.unsupported import SERVED
from tests.conftest import NodeProcess
from tests.helpers import sdk_error, wait_until
from tests.stripe_spec import RESPONSES, spec
from tests.test_webhooks import ALLOW_PRIVATE, Capture, add_endpoint

REFUND = {
    "id": "re_1",
    "object": "refund",
    "amount": 500,
    "created": 1_700_000_000,
    "currency": "usd",
    "charge": "ch_1",
    "payment_intent": "pi_1",
    "status": "succeeded",
    "reason": None,
    "metadata": {},
}


def test_the_spec_is_the_api_version_we_render() -> None:
    assert spec().version == API_VERSION == "2023-08-16"


def test_a_well_formed_object_validates() -> None:
    checked = spec().check_object(REFUND)
    assert checked.violations == []
    assert checked.objects == {"refund": 1}


@pytest.mark.parametrize(
    ("change", "violation"),
    [
        ({"amount": None}, "$.amount is null, which the schema does not allow"),
        ({"amount": "500"}, '$.amount is "500", not of type integer'),
        ({"failure_reason": None}, "$.failure_reason is null, which the schema does not allow"),
        ({"reason": "bored"}, "$.reason is \"bored\", not one of ['duplicate', 'expired_uncaptured_charge', 'fraudulent', 'requested_by_customer']"),
        ({"surprise": 1}, "$.surprise is not a field of refund"),
        ({"id": "att_1"}, '$.id is "att_1"; a refund\'s id starts with re_'),
        ({"metadata": {"order": 7}}, "$.metadata.order is 7, not of type string"),
        # An expandable field: an id or the object, nothing else.
        ({"payment_intent": 12}, "$.payment_intent is 12, not of type string"),
    ],
)
def test_a_broken_object_does_not_validate(change: dict[str, Any], violation: str) -> None:
    assert spec().check_object({**REFUND, **change}).violations == [violation]


def test_a_missing_required_field_does_not_validate() -> None:
    broken = {name: value for name, value in REFUND.items() if name != "created"}
    assert spec().check_object(broken).violations == ["$.created is missing; refund requires it"]


def test_an_expanded_field_is_checked_as_the_object_it_is() -> None:
    assert spec().check_object({**REFUND, "charge": {"object": "charge", "id": "ch_1"}}).violations[:2] == [
        "$.charge.amount is missing; charge requires it",
        "$.charge.amount_captured is missing; charge requires it",
    ]


def test_a_list_answer_is_checked_item_by_item_against_its_operation() -> None:
    page = {"object": "list", "url": "/v1/refunds", "has_more": False, "data": [REFUND, {**REFUND, "amount": 1.5}]}
    assert spec().check_response("GET", "/v1/refunds", 200, page).violations == ["$.data[1].amount is 1.5, not of type integer"]
    # The operation fixes the list's url and what its items are.
    assert spec().check_response("GET", "/v1/disputes", 200, page).violations[0] == "$.url is \"/v1/refunds\", which does not match ^/v1/disputes"


def test_an_error_answer_is_checked_as_stripe_s_error_object() -> None:
    assert spec().check_response("GET", "/v1/nope", 404, {"error": {"type": "invalid_request_error", "message": "x"}}).violations == []
    assert spec().check_response("GET", "/v1/refunds/re_1", 404, {"error": {"type": "not_found", "message": "x"}}).violations == [
        "$.error.type is \"not_found\", not one of ['api_error', 'card_error', 'idempotency_error', 'invalid_request_error']"
    ]
    assert spec().check_response("POST", "/v1/refunds", 400, {"message": "x"}).violations == [
        "$.error is missing; error requires it",
        "$.message is not a field of error",
    ]


def test_an_event_s_object_is_checked_as_what_it_says_it_is() -> None:
    event = {
        "id": "evt_1",
        "object": "event",
        "created": 1,
        "livemode": False,
        "pending_webhooks": 0,
        "type": "refund.created",
        "data": {"object": {**REFUND, "status": 3}},
    }
    assert spec().check_object(event).violations == ["$.data.object.status is 3, not of type string"]


def test_a_broken_answer_received_by_a_test_is_caught() -> None:
    """The collector sees what a test's HTTP client receives: a node's
    answer (it has a Request-Id) that does not validate is a violation, which
    conftest turns into the failure of the test that received it."""

    def answer(request: httpx.Request) -> httpx.Response:
        body = {**REFUND, "amount": "a lot"}
        return httpx.Response(200, json=body, headers={"Request-Id": "req_test"})

    with RESPONSES.expecting_violations() as seen, httpx.Client(transport=httpx.MockTransport(answer)) as client:
        client.get("http://node.test/v1/refunds/re_1")
        # Not a node's answer (no Request-Id), and not the API: not checked.
        client.get("http://node.test/healthz")
    assert seen == ['GET /v1/refunds/re_1 -> 200: $.amount is "a lot", not of type integer']


# ------------------------------------------------------------------ against a node


@pytest.fixture
def merchant(node: NodeProcess, fresh_merchant: dict) -> dict:
    return {"url": node.url, **fresh_merchant}


def sdk(merchant: dict) -> stripe.StripeClient:
    return stripe.StripeClient(merchant["secret_key"], base_addresses={"api": merchant["url"]}, max_network_retries=0)


def http(merchant: dict) -> httpx.Client:
    return httpx.Client(base_url=merchant["url"], auth=(merchant["secret_key"], ""), timeout=30)


# Every kind of object we return, each at least once in the tour below.
OBJECT_TYPES = {
    "payment_intent",
    "payment_method",
    "refund",
    "dispute",
    "charge",
    "event",
    "webhook_endpoint",
    "balance",
    "balance_transaction",
    "setup_intent",
    "customer",
}
RESPONSE_KINDS = OBJECT_TYPES - {"balance_transaction"} | {"list", "error"}


def _tour(merchant: dict) -> None:
    """Touch every route with every kind of answer, as an integration would."""
    client = sdk(merchant)
    method = client.v1.payment_methods.create(params={"type": "card", "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2034}})
    client.v1.payment_methods.retrieve(method.id)
    paid = client.v1.payment_intents.create(params={"amount": 5000, "currency": "usd", "payment_method": method.id, "confirm": True})
    held = client.v1.payment_intents.create(
        params={"amount": 3000, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True, "capture_method": "manual"}
    )
    client.v1.payment_intents.capture(held.id, params={"amount_to_capture": 2000})
    client.v1.charges.retrieve(paid.latest_charge, params={"expand": ["balance_transaction", "payment_intent", "refunds"]})
    client.v1.charges.list(params={"payment_intent": held.id, "expand": ["data.balance_transaction"]})
    client.v1.payment_intents.retrieve(paid.id, params={"expand": ["latest_charge", "payment_method"]})
    later = client.v1.payment_intents.create(params={"amount": 1000, "currency": "eur"})
    client.v1.payment_intents.cancel(later.id)
    with pytest.raises(stripe.CardError):
        client.v1.payment_intents.create(params={"amount": 1000, "currency": "usd", "payment_method": "pm_card_chargeDeclined", "confirm": True})
    client.v1.payment_intents.create(
        params={"amount": 1000, "currency": "eur", "payment_method": "pm_card_threeDSecure2Required", "confirm": True, "return_url": "https://shop.test/back"}
    )
    refund = client.v1.refunds.create(params={"payment_intent": paid.id, "amount": 700})
    client.v1.refunds.retrieve(refund.id)
    client.v1.refunds.list()
    client.v1.payment_intents.list(params={"limit": 3})
    saved = client.v1.setup_intents.create(params={"payment_method": "pm_card_visa", "confirm": True})
    client.v1.setup_intents.retrieve(saved.id, params={"expand": ["payment_method"]})
    client.v1.setup_intents.list(params={"limit": 3})
    customer = client.v1.customers.create(params={"email": "tour@shop.test", "payment_method": method.id})
    client.v1.customers.retrieve(customer.id, params={"expand": ["invoice_settings.default_payment_method"]})
    client.v1.customers.update(customer.id, params={"metadata": {"tour": "1"}})
    client.v1.customers.list(params={"limit": 3})
    client.v1.customers.payment_methods.list(customer.id)
    client.v1.payment_intents.create(
        params={"amount": 1200, "currency": "usd", "customer": customer.id, "payment_method": method.id, "off_session": True, "confirm": True}
    )
    client.v1.payment_methods.detach(method.id)
    client.v1.customers.delete(customer.id)
    with http(merchant) as plain:
        opened = plain.post("/simulator/disputes", data={"payment_intent": held.id})
        assert opened.status_code == 200, opened.text
        wait_until(lambda: client.v1.disputes.list().data, 10, "the dispute to be listed", interval_s=0.02)
        client.v1.disputes.retrieve(opened.json()["id"])
        plain.get("/v1/balance_transactions", params={"limit": 100})
        plain.get("/v1/balance")
        endpoint = plain.post("/v1/webhook_endpoints", data={"url": "https://shop.test/hooks", "enabled_events[0]": "*"}).json()
        plain.get(f"/v1/webhook_endpoints/{endpoint['id']}")
        plain.post(f"/v1/webhook_endpoints/{endpoint['id']}", data={"description": "the shop"})
        plain.get("/v1/webhook_endpoints")
        plain.delete(f"/v1/webhook_endpoints/{endpoint['id']}")
        wait_until(lambda: plain.get("/v1/events", params={"type": "charge.dispute.created"}).json()["data"], 10, "the dispute's event")
        events = plain.get("/v1/events", params={"limit": 100}).json()["data"]
        plain.get(f"/v1/events/{events[0]['id']}")
        plain.get("/v1/payment_intents/pi_nothing")
        plain.get("/v1/nothing")


def test_every_kind_of_object_we_return_validates_and_is_counted(merchant: dict) -> None:
    responses_before, objects_before = collections.Counter(RESPONSES.responses), collections.Counter(RESPONSES.objects)
    _tour(merchant)
    responses = RESPONSES.responses - responses_before
    objects = RESPONSES.objects - objects_before
    print("\nvalidated answers by kind:", json.dumps(dict(sorted(responses.items()))))
    print("validated objects by type, nested ones included:", json.dumps(dict(sorted(objects.items()))))
    # Each answer was checked as it arrived (conftest fails the test on a
    # violation); here, that the check saw every kind, through both clients.
    assert RESPONSE_KINDS <= set(responses), RESPONSE_KINDS - set(responses)
    assert OBJECT_TYPES <= set(objects), OBJECT_TYPES - set(objects)
    assert sum(responses.values()) >= len(RESPONSE_KINDS)


@pytest.mark.parametrize("through", ["the stripe SDK", "httpx", "httpx, async"])
async def test_answers_are_checked_whichever_client_received_them(merchant: dict, through: str) -> None:
    """The SDK speaks through requests (or whatever HTTP library it picks):
    a change there must not make the check go quiet."""
    before = RESPONSES.responses["balance"]
    if through == "the stripe SDK":
        sdk(merchant).v1.balance.retrieve()
    elif through == "httpx":
        with http(merchant) as client:
            client.get("/v1/balance")
    else:
        async with httpx.AsyncClient(base_url=merchant["url"], auth=(merchant["secret_key"], "")) as client:
            await client.get("/v1/balance")
    assert RESPONSES.responses["balance"] == before + 1


def test_webhook_deliveries_validate_too(new_node: Callable[..., NodeProcess]) -> None:
    """A delivery is not an answer, so conftest does not see it: its events
    are checked here, one of each kind of object an event carries."""
    node = new_node(None, None, ALLOW_PRIVATE)
    capture = Capture()
    merchant = {"url": node.url, "secret_key": node.secret_key}
    with http(merchant) as client:
        add_endpoint(client, capture.url, ["*"])
        paid = client.post("/v1/payment_intents", data={"amount": "3000", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"}).json()
        client.post("/v1/payment_intents", data={"amount": "3000", "currency": "usd", "payment_method": "pm_card_chargeDeclined", "confirm": "true"})
        assert client.post("/v1/refunds", data={"payment_intent": paid["id"], "amount": "1000"}).status_code == 200
        assert client.post("/simulator/disputes", data={"payment_intent": paid["id"]}).status_code == 200
    wanted = {"payment_intent.succeeded", "payment_intent.payment_failed", "charge.refunded", "refund.created", "charge.dispute.created"}
    wait_until(lambda: wanted <= {json.loads(body)["type"] for _, body in capture.received}, 30, "one delivery of each kind")
    kinds: collections.Counter[str] = collections.Counter()
    for _, body in capture.received:
        checked = spec().check_object(json.loads(body))
        assert checked.violations == [], (json.loads(body)["type"], checked.violations)
        assert json.loads(body)["api_version"] == API_VERSION
        kinds.update(checked.objects)
    assert {"event", "payment_intent", "charge", "refund", "dispute", "balance_transaction", "payment_method"} <= set(kinds), kinds


def test_one_api_version_in_events_endpoints_and_headers(merchant: dict) -> None:
    with http(merchant) as client:
        created = client.post("/v1/payment_intents", data={"amount": "1500", "currency": "usd"}, headers={"Stripe-Version": "2024-06-20"})
        assert created.status_code == 200, created.text
        assert created.headers["Stripe-Version"] == API_VERSION
        pinned = client.get(f"/v1/payment_intents/{created.json()['id']}", headers={"Stripe-Version": API_VERSION})
        assert (pinned.status_code, pinned.headers["Stripe-Version"]) == (200, API_VERSION)
        assert client.get("/v1/nothing").headers["Stripe-Version"] == API_VERSION
        endpoint = client.post("/v1/webhook_endpoints", data={"url": "https://shop.test/hooks", "enabled_events[0]": "*"}).json()
        assert endpoint["api_version"] == API_VERSION and endpoint["secret"].startswith("whsec_")
        assert "secret" not in client.get(f"/v1/webhook_endpoints/{endpoint['id']}").json()
        event = wait_until(lambda: client.get("/v1/events", params={"type": "payment_intent.created"}).json()["data"], 10, "an event")[0]
        assert event["api_version"] == API_VERSION


def test_a_decline_names_its_charge_payment_method_and_doc_url(merchant: dict) -> None:
    with http(merchant) as client:
        declined = client.post(
            "/v1/payment_intents", data={"amount": "1000", "currency": "usd", "payment_method": "pm_card_chargeDeclined", "confirm": "true"}
        )
    assert declined.status_code == 402
    error = declined.json()["error"]
    intent = error["payment_intent"]
    assert error["doc_url"] == "https://stripe.com/docs/error-codes/card-declined"
    assert error["payment_method"]["id"].startswith("pm_") and error["payment_method"]["object"] == "payment_method"
    assert error["payment_method"] == intent["last_payment_error"]["payment_method"]
    assert error["charge"].startswith("ch_") and error["charge"] == intent["last_payment_error"]["charge"] == intent["latest_charge"]
    assert intent["last_payment_error"]["decline_code"] == error["decline_code"] == "generic_decline"


def test_a_refund_without_a_failure_has_no_failure_reason(merchant: dict) -> None:
    client = sdk(merchant)
    paid = client.v1.payment_intents.create(params={"amount": 2000, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True})
    refund = client.v1.refunds.create(params={"payment_intent": paid.id})
    assert refund.status == "succeeded" and "failure_reason" not in refund


def test_a_dispute_s_balance_transactions_are_the_ledger_s(merchant: dict) -> None:
    client = sdk(merchant)
    paid = client.v1.payment_intents.create(params={"amount": 4000, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True})
    with http(merchant) as plain:
        opened = plain.post("/simulator/disputes", data={"payment_intent": paid.id})
        assert opened.status_code == 200, opened.text
        found = wait_until(lambda: (answer := plain.get(f"/v1/disputes/{opened.json()['id']}")).status_code == 200 and answer, 10, "the dispute")
        dispute = found.json()
        listed = plain.get("/v1/balance_transactions", params={"payment_intent": paid.id, "limit": 100}).json()["data"]
    # Made again from the intent when the dispute is rendered, they must be
    # the very transactions the ledger posted.
    shown = {item["id"]: item for item in dispute["balance_transactions"]}
    assert shown == {item["id"]: item for item in listed if item["id"] in shown}
    # The dispute fee rides on the dispute's own transaction (no fee transaction of its own).
    assert [(item["amount"], item["fee"], item["net"], item["type"]) for item in shown.values()] == [(-4000, 1500, -5500, "adjustment")]
    assert (dispute["reason"], dispute["is_charge_refundable"], dispute["evidence_details"]["has_evidence"]) == ("general", False, False)
    # Won, the money is back and may be refunded again.
    with http(merchant) as plain:
        assert plain.post(f"/simulator/disputes/{dispute['id']}/close", data={"outcome": "won"}).status_code == 200
        won = wait_until(lambda: (answer := plain.get(f"/v1/disputes/{dispute['id']}").json())["status"] == "won" and answer, 10, "the win")
    assert won["is_charge_refundable"] is True


def test_an_unknown_url_is_stripe_s_404(merchant: dict) -> None:
    with http(merchant) as client:
        unknown = client.get("/v1/xyz")
        slashed = client.get("/v1/payment_intents/")
    assert unknown.status_code == 404
    assert unknown.json() == {
        "error": {"type": "invalid_request_error", "message": "Unrecognized request URL (GET: /v1/xyz). This server's routes are listed at /openapi.json."}
    }
    assert slashed.json()["error"]["message"].startswith(
        "Unrecognized request URL (GET: /v1/payment_intents/). If you are trying to list objects, remove the trailing slash."
    )


@pytest.mark.parametrize(
    ("method", "path", "what"),
    [
        ("GET", "/v1/plans", "The plans API"),
        ("POST", "/v1/quotes", "The quotes API"),
        ("POST", "/v1/charges", "Creating a charge without a PaymentIntent"),
        ("POST", "/v1/payment_intents/pi_1/apply_customer_balance", "Applying a customer balance"),
        ("GET", "/v1/setup_attempts", "The setup_attempts API"),
        ("POST", "/v1/products", "The products API"),
        ("GET", "/v1/prices", "The prices API"),
        ("POST", "/v1/checkout/sessions", "The checkout/sessions API"),
        ("POST", "/v1/payment_links", "The payment_links API"),
        ("GET", "/v1/payouts", "The payouts API"),
        ("POST", "/v1/tokens", "The tokens API"),
        ("GET", "/v1/invoices/in_1/lines", "The invoices API"),
        ("DELETE", "/v1/subscriptions/sub_1", "The subscriptions API"),
        ("GET", "/v1/account", "The account API"),
        ("POST", "/v1/charges/ch_1/refund", "Refunding through the charge (POST /v1/refunds with charge=)"),
        ("POST", "/v1/charges/ch_1/dispute/close", "Closing a dispute"),
        ("GET", "/v1/balance/history", "The balance history (use /v1/balance_transactions)"),
    ],
)
def test_a_stripe_resource_we_do_not_serve_says_so(merchant: dict, method: str, path: str, what: str) -> None:
    with http(merchant) as client:
        answer = client.request(method, path)
    assert answer.status_code == 404
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and "code" not in error
    assert error["message"].startswith(f"{what} is not supported by this server ({method} {path}). It serves PaymentIntents,")


def test_an_unserved_resource_still_wants_a_key(node: NodeProcess) -> None:
    answer = httpx.get(node.url + "/v1/products", timeout=30)
    assert answer.status_code == 401 and "API key" in answer.json()["error"]["message"]


def test_the_sdk_hears_not_supported_as_an_invalid_request(merchant: dict) -> None:
    client = sdk(merchant)
    message = f"The products API is not supported by this server (POST /v1/products). It serves {SERVED}; /openapi.json lists its routes."
    with pytest.raises(stripe.InvalidRequestError, match=sdk_error(message)):
        client.v1.products.create(params={"name": "A hat"})
    with pytest.raises(stripe.InvalidRequestError, match=r"Applying a customer balance is not supported"):
        client.v1.payment_intents.apply_customer_balance("pi_1")
