"""What a publishable key (`pk_`, the one a merchant puts in its pages) may
do, with Stripe.js's rules: create a card payment method, and retrieve or
confirm one PaymentIntent while presenting that intent's `client_secret`.
Everything else is refused with a Stripe-shaped 401 (the wrong intent's
secret: a 404, as if the intent did not exist), never a 500.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest

from gateway.app import create_app
from gateway.calls import PUBLISHABLE_REFUSED
from tests.conftest import NodeProcess, create_merchant_keys

CARD = {"type": "card", "card[number]": "4242424242424242", "card[exp_month]": "2", "card[exp_year]": "2041", "card[cvc]": "123"}


class Shop:
    """One merchant's clients: its server's (secret key) and its page's (publishable key)."""

    def __init__(self, node: NodeProcess, keys: dict) -> None:
        self.server = httpx.Client(base_url=node.url, auth=(keys["secret_key"], ""))
        self.page = httpx.Client(base_url=node.url, auth=(keys["publishable_key"], ""))

    def intent(self, amount: int = 2500) -> dict:
        created = self.server.post("/v1/payment_intents", data={"amount": str(amount), "currency": "usd"})
        assert created.status_code == 200, created.text
        return created.json()

    def card(self) -> str:
        method = self.page.post("/v1/payment_methods", data=CARD)
        assert method.status_code == 200, method.text
        return method.json()["id"]


@pytest.fixture
def shop(node: NodeProcess, fresh_merchant: dict) -> Iterator[Shop]:
    yield Shop(node, fresh_merchant)


def assert_publishable_refused(answer: httpx.Response) -> None:
    assert answer.status_code == 401, answer.text
    assert answer.json()["error"] == {"type": "invalid_request_error", "message": PUBLISHABLE_REFUSED}


def assert_no_such_intent(answer: httpx.Response, intent_id: str) -> None:
    assert answer.status_code == 404, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["message"]) == ("resource_missing", f"No such payment_intent: '{intent_id}'")


def test_a_page_creates_a_card_payment_method_and_sees_only_what_stripe_shows(shop: Shop) -> None:
    method = shop.page.post("/v1/payment_methods", data=CARD)
    assert method.status_code == 200
    body = method.json()
    assert body["card"]["last4"] == "4242" and body["card"]["brand"] == "visa"
    assert "4242424242424242" not in method.text


def test_a_page_retrieves_an_intent_with_its_client_secret(shop: Shop) -> None:
    intent = shop.intent()
    answer = shop.page.get(f"/v1/payment_intents/{intent['id']}", params={"client_secret": intent["client_secret"]})
    assert answer.status_code == 200, answer.text
    assert (answer.json()["id"], answer.json()["status"], answer.json()["amount"]) == (intent["id"], "requires_payment_method", 2500)


def test_a_page_cannot_retrieve_an_intent_without_its_client_secret(shop: Shop) -> None:
    intent = shop.intent()
    assert_publishable_refused(shop.page.get(f"/v1/payment_intents/{intent['id']}"))


def test_another_intents_client_secret_is_refused_for_retrieve_and_confirm(shop: Shop) -> None:
    mine, other = shop.intent(), shop.intent(700)
    method = shop.card()
    retrieved = shop.page.get(f"/v1/payment_intents/{mine['id']}", params={"client_secret": other["client_secret"]})
    assert_no_such_intent(retrieved, mine["id"])
    confirmed = shop.page.post(
        f"/v1/payment_intents/{mine['id']}/confirm", data={"payment_method": method, "client_secret": other["client_secret"]}
    )
    assert_no_such_intent(confirmed, mine["id"])
    # Neither moved: the refused confirm charged nothing.
    for intent in (mine, other):
        assert shop.server.get(f"/v1/payment_intents/{intent['id']}").json()["status"] == "requires_payment_method"


def test_a_client_secret_altered_by_one_character_is_refused(shop: Shop) -> None:
    intent = shop.intent()
    altered = intent["client_secret"][:-1] + ("A" if intent["client_secret"][-1] != "A" else "B")
    answer = shop.page.get(f"/v1/payment_intents/{intent['id']}", params={"client_secret": altered})
    assert_no_such_intent(answer, intent["id"])


def test_another_merchants_intent_is_refused_even_with_its_client_secret(node: NodeProcess, shop: Shop) -> None:
    stranger = Shop(node, create_merchant_keys(node, "Stranger"))
    theirs = stranger.intent()
    answer = shop.page.get(f"/v1/payment_intents/{theirs['id']}", params={"client_secret": theirs["client_secret"]})
    assert_no_such_intent(answer, theirs["id"])
    confirmed = shop.page.post(
        f"/v1/payment_intents/{theirs['id']}/confirm", data={"payment_method": shop.card(), "client_secret": theirs["client_secret"]}
    )
    assert_no_such_intent(confirmed, theirs["id"])


def test_a_page_confirms_with_the_client_secret_and_then_reads_the_result(shop: Shop) -> None:
    intent = shop.intent()
    path = f"/v1/payment_intents/{intent['id']}"
    confirmed = shop.page.post(path + "/confirm", data={"payment_method": shop.card(), "client_secret": intent["client_secret"]})
    assert confirmed.status_code == 200 and confirmed.json()["status"] == "succeeded", confirmed.text
    assert shop.page.get(path, params={"client_secret": intent["client_secret"]}).json()["status"] == "succeeded"


def test_a_client_secret_opens_no_other_operation_on_its_intent(shop: Shop) -> None:
    intent = shop.intent()
    confirmed = shop.server.post(f"/v1/payment_intents/{intent['id']}/confirm", data={"payment_method": "pm_card_visa"})
    assert confirmed.json()["status"] == "succeeded"
    secret = {"client_secret": intent["client_secret"]}
    path = f"/v1/payment_intents/{intent['id']}"
    assert_publishable_refused(shop.page.post(path + "/capture", data=secret))
    assert_publishable_refused(shop.page.post(path + "/cancel", data=secret))
    assert_publishable_refused(shop.page.post(path + "/capture", params=secret))
    assert_publishable_refused(shop.page.post("/v1/refunds", data={"payment_intent": intent["id"], **secret}))
    assert_publishable_refused(shop.page.get("/v1/payment_intents", params=secret))
    assert_publishable_refused(shop.page.get("/v1/refunds", params={"payment_intent": intent["id"], **secret}))
    assert shop.server.get(path).json()["amount_received"] == 2500
    assert shop.server.get("/v1/refunds", params={"payment_intent": intent["id"]}).json()["data"] == []


# Every route of the API, with its path parameters filled in.
def api_routes() -> list[tuple[str, str]]:
    app = create_app(None)  # type: ignore[arg-type]
    routes = []
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/v1/"):
            routes.extend((method, rule.rule) for method in sorted(rule.methods - {"HEAD", "OPTIONS"}))
    return routes


# The two operations a publishable key is let in for, with a client secret
# where the route takes one.
# What Stripe.js does with a publishable key: make a card, confirm and read
# an intent or a SetupIntent with its client secret.
ALLOWED = {
    ("POST", "/v1/payment_methods"),
    ("POST", "/v1/payment_intents/<intent_id>/confirm"),
    ("GET", "/v1/payment_intents/<intent_id>"),
    ("POST", "/v1/setup_intents/<setup_intent_id>/confirm"),
    ("GET", "/v1/setup_intents/<setup_intent_id>"),
}


def test_every_other_route_refuses_a_publishable_key_with_a_401_never_a_500(shop: Shop) -> None:
    intent = shop.intent()
    confirmed = shop.server.post(f"/v1/payment_intents/{intent['id']}/confirm", data={"payment_method": "pm_card_visa"}).json()
    values = {"intent_id": intent["id"], "payment_method_id": confirmed["payment_method"]}
    routes = api_routes()
    assert ALLOWED <= set(routes) and len(routes) > 15
    for method, rule in routes:
        if (method, rule) in ALLOWED:
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", lambda match: values.get(match.group(1), "x_unknown"), rule)
        answer = shop.page.request(method, path, params={"client_secret": intent["client_secret"]})
        if answer.status_code == 429:
            # Refused keys are rate limited per client too, and the routes
            # outnumber the burst: wait as told and ask again.
            time.sleep(float(answer.headers["Retry-After"]))
            answer = shop.page.request(method, path, params={"client_secret": intent["client_secret"]})
        assert answer.status_code == 401, f"{method} {path}: {answer.status_code} {answer.text[:200]}"
        assert answer.json()["error"]["message"] == PUBLISHABLE_REFUSED, f"{method} {path}"
