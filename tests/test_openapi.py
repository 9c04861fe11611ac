"""The published OpenAPI document describes the API as it behaves.

schemathesis generates requests from /openapi.json and checks every answer:
never a 5xx, and never a response that contradicts the document.
"""

from __future__ import annotations

import re

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

from engine.disputes import EVIDENCE_TEXT_FIELDS
from gateway.app import create_app, published_document
from gateway.routes import unsupported
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


def _served_v1_operations() -> set[tuple[str, str]]:
    """Every (method, path) the app routes under /v1/ and serves: the URL
    map, less the routes that only say a Stripe call is not served here."""
    unserved = {(method, rule) for method, rule, _, _ in unsupported.ROUTES.views}
    served = set()
    for rule in create_app(None).url_map.iter_rules():  # type: ignore[arg-type]
        if not rule.rule.startswith("/v1/"):
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            if (method, rule.rule) not in unserved:
                served.add((method, re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)))
    return served


def test_every_served_v1_route_is_in_the_document_with_its_form_body() -> None:
    document = published_document()
    served = _served_v1_operations()
    # The map is not empty by accident, and holds what issue 15 added.
    assert {("POST", "/v1/disputes/{dispute_id}"), ("POST", "/v1/disputes/{dispute_id}/close"), ("GET", "/v1/balance_transactions/{transaction_id}")} <= served
    documented = {(method.upper(), path) for path, operations in document["paths"].items() for method in operations}
    assert served - documented == set()
    # Nothing unserved is published.
    assert {operation for operation in documented if operation[1].startswith("/v1/")} <= served
    schemas = document["components"]["schemas"]
    for method, path in sorted(served):
        if method != "POST":
            continue
        body = document["paths"][path]["post"].get("requestBody")
        assert body is not None, f"POST {path} documents no body"
        form = body["content"]["application/x-www-form-urlencoded"]
        assert body["content"]["application/json"]["schema"] == form["schema"]
        schema = schemas[form["schema"]["$ref"].rsplit("/", 1)[1]]
        assert schema["type"] == "object" and schema["additionalProperties"] is False, (path, schema)
        # Every object or array field is written in brackets, as Stripe's SDKs do.
        for name, field in schema.get("properties", {}).items():
            nested = _nested(field, schemas)
            assert (name in form.get("encoding", {})) == nested, (path, name)
            if nested:
                assert form["encoding"][name] == {"style": "deepObject", "explode": True}


def _nested(field: dict, schemas: dict) -> bool:
    if "$ref" in field:
        return _nested(schemas[field["$ref"].rsplit("/", 1)[1]], schemas)
    if "anyOf" in field:
        return any(_nested(member, schemas) for member in field["anyOf"])
    return field.get("type") in ("object", "array")


def test_the_dispute_update_s_form_body_is_the_params_struct() -> None:
    document = published_document()
    form = document["paths"]["/v1/disputes/{dispute_id}"]["post"]["requestBody"]["content"]["application/x-www-form-urlencoded"]
    schema = document["components"]["schemas"][form["schema"]["$ref"].rsplit("/", 1)[1]]
    assert set(schema["properties"]) == {"evidence", "metadata", "submit", "expand"}
    evidence = schema["properties"]["evidence"]["anyOf"][0]["$ref"].rsplit("/", 1)[1]
    fields = document["components"]["schemas"][evidence]["properties"]
    assert set(fields) == set(EVIDENCE_TEXT_FIELDS)
    assert fields["uncategorized_text"]["anyOf"][0]["maxLength"] == 20_000
