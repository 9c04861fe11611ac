"""The published OpenAPI document describes the API as it behaves.

schemathesis generates requests from /openapi.json and checks every answer:
never a 5xx, and never a response that contradicts the document.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.app import published_document
from tests.conftest import NodeProcess, create_merchant_keys

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="session")
def fuzz_merchant(node: NodeProcess) -> dict:
    # Its own merchant, with room for the generated load under its rate limit,
    # and one object of each kind so list responses have data to check.
    keys = create_merchant_keys(node, "Schema fuzzing", "--rate-limit-per-s", "100000", "--rate-limit-burst", "1000000")
    with httpx.Client(base_url=node.url, auth=(keys["secret_key"], "")) as client:
        paid = client.post("/v1/payment_intents", data={"amount": "5000", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"})
        assert client.post("/v1/refunds", data={"payment_intent": paid.json()["id"], "amount": "100"}).status_code == 200
        assert client.post("/simulator/disputes", data={"payment_intent": paid.json()["id"]}).status_code == 200
        declined = client.post("/v1/payment_intents", data={"amount": "5000", "currency": "usd", "payment_method": "pm_card_chargeDeclined", "confirm": "true"})
        assert declined.status_code == 402
        challenged = client.post(
            "/v1/payment_intents",
            data={"amount": "5000", "currency": "eur", "payment_method": "pm_card_threeDSecure2Required", "confirm": "true", "return_url": "https://x.test"},
        )
        assert challenged.json()["status"] == "requires_action"
    return keys


def test_the_document_is_openapi_3_1_and_lists_the_routes(node: NodeProcess) -> None:
    document = httpx.get(node.url + "/openapi.json").json()
    assert document["openapi"] == "3.1.0"
    assert {"/v1/payment_intents", "/v1/payment_intents/{intent_id}/confirm", "/v1/refunds", "/v1/balance"} <= set(document["paths"])
    create = document["paths"]["/v1/payment_intents"]["post"]
    body = create["requestBody"]["content"]["application/json"]["schema"]
    schema = document["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert set(schema["required"]) == {"amount", "currency"}
    assert schema["additionalProperties"] is False


# The same document the node serves (checked below), made without a node so
# that pytest can collect one test per operation.
schema = schemathesis.openapi.from_dict(published_document())


def test_the_node_serves_the_published_document(node: NodeProcess) -> None:
    assert httpx.get(node.url + "/openapi.json").json() == published_document()


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_every_answer_conforms_to_the_document(case, node: NodeProcess, fuzz_merchant: dict) -> None:
    case.call_and_validate(
        base_url=node.url,
        headers={"Authorization": f"Bearer {fuzz_merchant['secret_key']}"},
        checks=CHECKS,
        timeout=30,
    )
