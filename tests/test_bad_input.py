"""Bad input gets a Stripe-style 4xx naming the param; never a 500.

Spec (from the issue): unknown or mistyped parameters, zero, negative or
oversized amounts, unknown currency, malformed JSON or form, and bodies over a
bound get `{"error": {"type": "invalid_request_error", "code", "message",
"param"}}`. Every response carries a `Request-Id`, is JSON, never a traceback,
and never echoes a card number.
"""

import time
from typing import Any

import httpx
import pytest

CARD_NUMBER = "4242424242424242"
CARD_NUMBER_LUHN_INVALID = "4242424242424241"
YEAR = time.gmtime().tm_year
BODY_BYTES_MAX = 64 * 1024

INTENT = {"amount": 1000, "currency": "usd"}
CARD = {"type": "card", "card": {"number": CARD_NUMBER, "exp_month": 12, "exp_year": YEAR + 2, "cvc": "123"}}

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


# ------------------------------------------------------------------ helpers


@pytest.fixture
def client(node):
    # One client per test: a refused oversized body can leave a pooled connection unusable.
    with httpx.Client(base_url=node.url, auth=(node.secret_key, ""), timeout=30) as opened:
        yield opened


@pytest.fixture(scope="module")
def intent_id(node):
    """An unconfirmed intent without a payment method: a valid target for confirm."""
    response = httpx.post(f"{node.url}/v1/payment_intents", data=INTENT, auth=(node.secret_key, ""), timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def route_path(route: str, intent_id: str) -> str:
    return {
        "intents": "/v1/payment_intents",
        "confirm": f"/v1/payment_intents/{intent_id}/confirm",
        "methods": "/v1/payment_methods",
    }[route]


def form_pairs(values: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Flatten nested values into Stripe's bracket notation, as the SDKs do."""
    pairs: list[tuple[str, str]] = []
    for key, value in values.items():
        name = f"{prefix}[{key}]" if prefix else key
        if isinstance(value, dict):
            pairs.extend(form_pairs(value, name))
        elif isinstance(value, bool):
            pairs.append((name, "true" if value else "false"))
        else:
            pairs.append((name, str(value)))
    return pairs


def send(client: httpx.Client, path: str, encoding: str, values: dict[str, Any]) -> httpx.Response:
    if encoding == "json":
        return client.post(path, json=values)
    return client.post(path, data=dict(form_pairs(values)))


def post_raw(client: httpx.Client, path: str, body: bytes, content_type: str) -> httpx.Response:
    return client.post(path, content=body, headers={"Content-Type": content_type})


def assert_well_formed(response: httpx.Response) -> None:
    """What every response promises, success or error."""
    assert response.headers.get("Request-Id", "").startswith("req_")
    assert response.headers["Content-Type"].startswith("application/json")
    assert "Traceback" not in response.text
    assert "<html" not in response.text.lower()
    assert CARD_NUMBER not in response.text
    assert CARD_NUMBER_LUHN_INVALID not in response.text


def assert_error(
    response: httpx.Response,
    status: int,
    type_: str = "invalid_request_error",
    *,
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert_well_formed(response)
    error = response.json()["error"]
    assert error["type"] == type_
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


# ------------------------------------------------------------------ parameter table
#
# (route, values, status, type, param, code), each sent form-encoded and as JSON.

PARAMETER_CASES = [
    # -- create payment intent
    pytest.param("intents", {**INTENT, "foo": "1"}, 400, "invalid_request_error", "foo", "parameter_unknown", id="unknown"),
    pytest.param("intents", {"currency": "usd"}, 400, "invalid_request_error", "amount", "parameter_missing", id="missing-amount"),
    pytest.param("intents", {"amount": 1000}, 400, "invalid_request_error", "currency", "parameter_missing", id="missing-currency"),
    pytest.param("intents", {**INTENT, "amount": "abc"}, 400, "invalid_request_error", "amount", "parameter_invalid_integer", id="amount-abc"),
    pytest.param("intents", {**INTENT, "amount": 10.5}, 400, "invalid_request_error", "amount", "parameter_invalid_integer", id="amount-10.5"),
    pytest.param("intents", {**INTENT, "amount": ""}, 400, "invalid_request_error", "amount", "parameter_invalid_integer", id="amount-blank"),
    pytest.param("intents", {**INTENT, "amount": 0}, 400, "invalid_request_error", "amount", "parameter_invalid_integer", id="amount-0"),
    pytest.param("intents", {**INTENT, "amount": -5}, 400, "invalid_request_error", "amount", "parameter_invalid_integer", id="amount-negative"),
    pytest.param("intents", {**INTENT, "amount": 100_000_000}, 400, "invalid_request_error", "amount", "amount_too_large", id="amount-too-large"),
    pytest.param("intents", {**INTENT, "amount": 10**40}, 400, "invalid_request_error", "amount", "amount_too_large", id="amount-huge"),
    pytest.param("intents", {**INTENT, "currency": "xyz"}, 400, "invalid_request_error", "currency", None, id="currency-unknown"),
    pytest.param("intents", {**INTENT, "currency": ""}, 400, "invalid_request_error", "currency", None, id="currency-blank"),
    pytest.param("intents", {**INTENT, "capture_method": "sometimes"}, 400, "invalid_request_error", "capture_method", None, id="capture-method"),
    pytest.param("intents", {**INTENT, "confirm": "maybe"}, 400, "invalid_request_error", "confirm", None, id="confirm-maybe"),
    pytest.param(
        "intents", {**INTENT, "metadata": {f"k{i}": "v" for i in range(51)}}, 400, "invalid_request_error", "metadata", None,
        id="metadata-51-keys",
    ),
    pytest.param("intents", {**INTENT, "metadata": {"k" * 41: "v"}}, 400, "invalid_request_error", "metadata", None, id="metadata-key-41"),
    pytest.param("intents", {**INTENT, "metadata": {"k": "v" * 501}}, 400, "invalid_request_error", "metadata", None, id="metadata-value-501"),
    pytest.param("intents", {**INTENT, "metadata": "v"}, 400, "invalid_request_error", "metadata", None, id="metadata-not-object"),
    pytest.param("intents", {**INTENT, "description": "d" * 1001}, 400, "invalid_request_error", "description", None, id="description-1001"),
    pytest.param(
        "intents", {**INTENT, "payment_method": "pm_nope"}, 400, "invalid_request_error", "payment_method", "resource_missing",
        id="payment-method-missing",
    ),
    # -- confirm payment intent
    pytest.param("confirm", {"foo": "1"}, 400, "invalid_request_error", "foo", "parameter_unknown", id="confirm-unknown"),
    pytest.param("confirm", {"payment_method": "pm_nope"}, 400, "invalid_request_error", "payment_method", "resource_missing", id="confirm-pm-missing"),
    pytest.param("confirm", {"payment_method": "pm_" + "x" * 300}, 400, "invalid_request_error", "payment_method", "resource_missing", id="confirm-pm-long"),
    # -- create payment method
    pytest.param("methods", {**CARD, "foo": "1"}, 400, "invalid_request_error", "foo", "parameter_unknown", id="pm-unknown"),
    pytest.param(
        "methods", {**CARD, "card": {**CARD["card"], "foo": "x"}}, 400, "invalid_request_error", "card[foo]", "parameter_unknown",
        id="pm-card-foo",
    ),
    pytest.param(
        "methods", {"type": "card", "card": {"exp_month": 12, "exp_year": YEAR + 2}}, 400, "invalid_request_error", "card[number]",
        "parameter_missing", id="pm-missing-number",
    ),
    pytest.param("methods", {"card": CARD["card"]}, 400, "invalid_request_error", "type", "parameter_missing", id="pm-missing-type"),
    pytest.param("methods", {**CARD, "type": "sepa"}, 400, "invalid_request_error", "type", None, id="pm-type-unknown"),
    pytest.param("methods", {"type": "card", "card": CARD_NUMBER}, 400, "invalid_request_error", "card", None, id="pm-card-not-object"),
    pytest.param(
        "methods", {**CARD, "card": {**CARD["card"], "exp_month": "abc"}}, 400, "invalid_request_error", "card[exp_month]",
        "parameter_invalid_integer", id="pm-exp-month-abc",
    ),
    pytest.param(
        "methods", {**CARD, "card": {**CARD["card"], "number": CARD_NUMBER_LUHN_INVALID}}, 402, "card_error", "card[number]",
        "incorrect_number", id="pm-luhn-invalid",
    ),
    pytest.param(
        "methods", {**CARD, "card": {**CARD["card"], "number": "4242 4242 4242 424x"}}, 402, "card_error", "card[number]",
        "incorrect_number", id="pm-number-not-digits",
    ),
    pytest.param(
        "methods", {**CARD, "card": {**CARD["card"], "exp_month": 13}}, 402, "card_error", "card[exp_month]",
        "invalid_expiry_month", id="pm-exp-month-13",
    ),
    pytest.param(
        "methods", {**CARD, "card": {**CARD["card"], "exp_month": 0}}, 402, "card_error", "card[exp_month]",
        "invalid_expiry_month", id="pm-exp-month-0",
    ),
    pytest.param(
        "methods", {**CARD, "card": {**CARD["card"], "exp_year": YEAR - 1}}, 402, "card_error", "card[exp_year]",
        "invalid_expiry_year", id="pm-exp-year-past",
    ),
    pytest.param(
        "methods", {**CARD, "card": {**CARD["card"], "exp_year": 10**30}}, 402, "card_error", "card[exp_year]",
        "invalid_expiry_year", id="pm-exp-year-huge",
    ),
    pytest.param(
        "methods", {**CARD, "card": {**CARD["card"], "cvc": "12a"}}, 402, "card_error", "card[cvc]", "invalid_cvc", id="pm-cvc-12a",
    ),
    pytest.param(
        "methods", {**CARD, "card": {**CARD["card"], "cvc": "12"}}, 402, "card_error", "card[cvc]", "invalid_cvc", id="pm-cvc-short",
    ),
]


@pytest.mark.parametrize("encoding", ["form", "json"])
@pytest.mark.parametrize(("route", "values", "status", "type_", "param", "code"), PARAMETER_CASES)
def test_bad_parameter_is_refused_naming_it(client, intent_id, encoding, route, values, status, type_, param, code):
    response = send(client, route_path(route, intent_id), encoding, values)
    assert_error(response, status, type_, param=param, code=code)


@pytest.mark.parametrize(
    ("values", "param"),
    [
        ({**INTENT, "amount": True}, "amount"),
        ({**INTENT, "amount": None}, "amount"),
        ({**INTENT, "currency": 840}, "currency"),
        ({**INTENT, "metadata": ["a"]}, "metadata"),
        ({**CARD, "card": {**CARD["card"], "number": int(CARD_NUMBER)}}, "card[number]"),
    ],
    ids=["amount-bool", "amount-null", "currency-number", "metadata-array", "card-number-as-number"],
)
def test_json_value_of_the_wrong_type_is_refused_naming_it(client, values, param):
    path = "/v1/payment_methods" if "card" in values else "/v1/payment_intents"
    assert_error(client.post(path, json=values), 400, param=param)


def test_json_metadata_value_that_is_not_a_string_names_metadata(client):
    error = assert_error(client.post("/v1/payment_intents", json={**INTENT, "metadata": {"a": 1}}), 400)
    assert error["param"] in ("metadata", "metadata[a]")


@pytest.mark.parametrize("encoding", ["form", "json"])
@pytest.mark.parametrize(
    ("amount", "currency"),
    # 1 minor unit is below the USD minimum; KWD has no published minimum.
    [(50, "usd"), (99_999_999, "usd"), (1, "kwd"), (50, "jpy")],
)
def test_amount_at_the_bounds_is_accepted(client, encoding, amount, currency):
    response = send(client, "/v1/payment_intents", encoding, {**INTENT, "amount": amount, "currency": currency})
    assert response.status_code == 200, response.text
    assert_well_formed(response)
    assert (response.json()["amount"], response.json()["currency"]) == (amount, currency)


@pytest.mark.parametrize(("amount", "currency"), [(49, "usd"), (1, "usd"), (29, "gbp"), (49, "jpy")])
def test_amount_below_the_currency_minimum_is_too_small(client, amount, currency):
    response = client.post("/v1/payment_intents", data={**INTENT, "amount": amount, "currency": currency})
    assert_error(response, 400, param="amount", code="amount_too_small")


@pytest.mark.parametrize("encoding", ["form", "json"])
def test_metadata_at_the_bounds_is_accepted(client, encoding):
    metadata = {f"{i:02d}" + "k" * 38: "v" * 500 for i in range(50)}
    response = send(client, "/v1/payment_intents", encoding, {**INTENT, "metadata": metadata, "description": "d" * 1000})
    assert response.status_code == 200, response.text
    assert response.json()["metadata"] == metadata


def test_card_number_is_not_echoed_when_refused(client):
    response = client.post("/v1/payment_methods", data=dict(form_pairs({**CARD, "card": {**CARD["card"], "number": CARD_NUMBER_LUHN_INVALID}})))
    error = assert_error(response, 402, "card_error", param="card[number]", code="incorrect_number")
    assert error["message"] == "Your card number is incorrect."
    assert CARD_NUMBER_LUHN_INVALID not in response.text
    assert CARD_NUMBER_LUHN_INVALID[-4:] + '"' not in response.text


# ------------------------------------------------------------------ body table
#
# Raw bodies: (route, body, content type, status, param, code).

FIELDS_TOO_MANY = "&".join(f"metadata[k{i}]=v" for i in range(257)).encode()
BODY_TOO_LARGE = b"amount=1000&currency=usd&description=" + b"x" * BODY_BYTES_MAX

BODY_CASES = [
    pytest.param("intents", b'{"amount": 1000, "currency": "usd"', JSON, 400, None, "body_invalid", id="json-truncated"),
    pytest.param("intents", b"{amount: 1000}", JSON, 400, None, "body_invalid", id="json-unquoted"),
    pytest.param("intents", b"amount=1000&currency=usd", JSON, 400, None, "body_invalid", id="form-labelled-json"),
    pytest.param("intents", b"[1000, \"usd\"]", JSON, 400, None, "body_invalid", id="json-array"),
    pytest.param("intents", b"null", JSON, 400, None, "body_invalid", id="json-null"),
    pytest.param("intents", b'"amount"', JSON, 400, None, "body_invalid", id="json-string"),
    pytest.param("intents", b'{"amount": 1000, "currency": "usd", "metadata": {"a": {"b": {"c": {"d": "e"}}}}}', JSON, 400, None, "body_invalid", id="json-too-deep"),
    pytest.param("confirm", b"[]", JSON, 400, None, "body_invalid", id="confirm-json-array"),
    pytest.param("confirm", b"{", JSON, 400, None, "body_invalid", id="confirm-json-truncated"),
    pytest.param("methods", b'{"type": "card", "card": ', JSON, 400, None, "body_invalid", id="pm-json-truncated"),
    pytest.param(
        "methods", b"type=card&card[number]=" + CARD_NUMBER.encode() + b"&card[number][x]=1", FORM, 400, "card", "parameter_invalid",
        id="form-mixes-value-and-object",
    ),
    pytest.param("intents", b"amount=1000&amount=2000&currency=usd", FORM, 400, "amount", "parameter_invalid", id="form-duplicate"),
    pytest.param("intents", b"amount=1000&currency=usd&metadata[a][b][c][d]=1", FORM, 400, "metadata[a][b][c][d]", None, id="form-too-deep"),
    pytest.param("intents", b"amount=1000&currency=usd&metadata[a=1", FORM, 400, "metadata[a", None, id="form-bad-name"),
    pytest.param("intents", FIELDS_TOO_MANY, FORM, 400, None, "body_invalid", id="form-too-many-fields"),
    pytest.param("intents", b"amount=1000&currency=usd&description=\xff\xfe", FORM, 400, None, "body_invalid", id="form-invalid-utf8"),
    pytest.param("methods", b"type=card&card[\xc3\x28]=1", FORM, 400, None, "body_invalid", id="pm-form-invalid-utf8"),
    pytest.param("intents", BODY_TOO_LARGE, FORM, 400, None, "request_too_large", id="form-too-large"),
    pytest.param(
        "intents", b'{"description": "' + b"x" * BODY_BYTES_MAX + b'"}', JSON, 400, None, "request_too_large", id="json-too-large",
    ),
    pytest.param("confirm", BODY_TOO_LARGE, FORM, 400, None, "request_too_large", id="confirm-too-large"),
    pytest.param("methods", BODY_TOO_LARGE, FORM, 400, None, "request_too_large", id="pm-too-large"),
    pytest.param(
        "intents", b'{"amount": 1000, "currency": "usd", "description": "\xff"}', JSON, 400, None, "body_invalid",
        id="json-invalid-utf8",
    ),
    pytest.param(
        "intents", b'{"metadata": ' + b"[" * 1000 + b"]" * 1000 + b"}", JSON, 400, None, "body_invalid", id="json-hostile-nesting",
    ),
]


@pytest.mark.parametrize(("route", "body", "content_type", "status", "param", "code"), BODY_CASES)
def test_unreadable_body_is_refused(client, intent_id, route, body, content_type, status, param, code):
    response = post_raw(client, route_path(route, intent_id), body, content_type)
    assert_error(response, status, param=param, code=code)


def test_body_over_the_bound_without_a_length_is_refused(client):
    def chunks():
        yield b"amount=1000&currency=usd&description="
        for _ in range(BODY_BYTES_MAX // 1024 + 1):
            yield b"x" * 1024

    response = client.post("/v1/payment_intents", content=chunks(), headers={"Content-Type": FORM})
    assert_error(response, 400, code="request_too_large")


def test_body_at_the_bound_is_read(client):
    head = b"amount=1000&currency=usd&description="
    # A description this long is refused by the engine (param description), not by the body bound.
    body = head + b"x" * (BODY_BYTES_MAX - len(head))
    assert len(body) == BODY_BYTES_MAX
    assert_error(post_raw(client, "/v1/payment_intents", body, FORM), 400, param="description")


@pytest.mark.parametrize(
    "content_type",
    ["application/json; charset=utf-8", "Application/JSON"],
)
def test_json_content_type_variants_are_read_as_json(client, content_type):
    response = post_raw(client, "/v1/payment_intents", b'{"amount": 1000, "currency": "usd"}', content_type)
    assert response.status_code == 200, response.text
    assert response.json()["amount"] == 1000


# ------------------------------------------------------------------ no 5xx, whatever the body

SWEEP_BODIES = [
    (b"", FORM),
    (b"", JSON),
    (b"{}", JSON),
    (b"{", JSON),
    (b"[]", JSON),
    (b"null", JSON),
    (b"1e400", JSON),
    (b'{"amount": 1e400}', JSON),
    (b'{"amount": 1e300, "currency": "usd"}', JSON),
    (b'{"amount": "1000", "currency": ["usd"]}', JSON),
    (b'{"card": {"number": {"a": 1}}}', JSON),
    (b'{"metadata": {"a": {"b": {"c": 1}}}}', JSON),
    (b'{"payment_method": 12}', JSON),
    (b"amount=1000", JSON),
    (b'{"amount": 1000}', FORM),
    (b"amount=abc&currency=usd", FORM),
    (b"amount=-5&currency=usd", FORM),
    (b"amount=100000000&currency=usd", FORM),
    (b"amount=1000&currency=xyz", FORM),
    (b"amount=%ZZ&currency=usd", FORM),
    (b"amount=1000;currency=usd", FORM),
    (b"=&=&&&", FORM),
    (b"[]=1", FORM),
    (b"a[]]=1", FORM),
    (b"items[5]=1", FORM),
    (b"items[99999999999999999999999]=1", FORM),
    (b"expand[]=a&expand[x]=b", FORM),
    (b"card[number]=1&card[number][x]=1", FORM),
    (b"card[number][x]=1&card[number]=1", FORM),
    (b"metadata[a][b][c][d][e]=1", FORM),
    (b"k" * 5000 + b"=1", FORM),
    (b"payment_method=" + b"p" * 5000, FORM),
    (b"payment_method=pm_%27%3B--", FORM),
    (b"type=card&card=1", FORM),
    (b"type=card&card[exp_month]=99999999999999999999&card[exp_year]=-1&card[number]=1", FORM),
    (b"description=\xff", FORM),
    (FIELDS_TOO_MANY, FORM),
    (BODY_TOO_LARGE, FORM),
    (b"amount=abc&currency=usd", "multipart/form-data; boundary=x"),
    (b"amount=abc&currency=usd", "text/plain"),
    (b"\x00\x01\x02", "application/octet-stream"),
    pytest.param(
        b'{"description": "\xff"}', JSON,
    ),
    pytest.param(
        b'{"a": ' + b"[" * 1000 + b"]" * 1000 + b"}", JSON,
    ),
    # Bodies carrying a NUL character are left out on purpose: on the create
    # route they kill the node (see test_nul_character_is_refused_not_fatal),
    # which would take the shared session node down with them.
]


@pytest.mark.parametrize("route", ["intents", "confirm", "methods"])
@pytest.mark.parametrize(("body", "content_type"), SWEEP_BODIES)
def test_no_bad_body_gets_a_5xx(client, intent_id, route, body, content_type):
    response = post_raw(client, route_path(route, intent_id), body, content_type)
    assert 400 <= response.status_code < 500, response.text
    assert_well_formed(response)
    assert response.json()["error"]["type"] in ("invalid_request_error", "card_error")


# ------------------------------------------------------------------ routes, methods, auth


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/nope"), ("GET", "/"), ("GET", "/v1/payment_intents/pi_x/nope")],
)
def test_unknown_route_is_a_stripe_404(client, method, path):
    # Stripe's words, then where this server lists its routes (a Stripe
    # resource that is not served here says so: test_stripe_conformance.py).
    error = assert_error(client.request(method, path), 404)
    assert error["message"] == f"Unrecognized request URL ({method}: {path}). This server's routes are listed at /openapi.json."


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/v1/payment_intents"),
        ("DELETE", "/v1/payment_methods"),
        ("PUT", "/v1/payment_intents/pi_x/confirm"),
        ("GET", "/v1/payment_intents/pi_x/confirm"),
    ],
)
def test_wrong_method_is_a_stripe_405(client, method, path):
    error = assert_error(client.request(method, path), 405)
    assert error["message"] == f"The method {method} is not allowed for {path}."


@pytest.mark.parametrize("route", ["intents", "confirm", "methods"])
def test_missing_auth_is_401(node, intent_id, route):
    response = httpx.post(node.url + route_path(route, intent_id), data=INTENT, timeout=30)
    error = assert_error(response, 401)
    assert "API key" in error["message"]


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer garbage",
        "Bearer sk_test_" + "x" * 40,
        "Bearer " + "x" * 5000,
        "Basic !!!not-base64",
        "Basic Zm9vOg==",  # "foo:"
        "Bearer",
        "Token sk_test_abc",
    ],
    ids=["garbage", "unknown-key", "overlong", "basic-not-base64", "basic-unknown", "bearer-empty", "other-scheme"],
)
def test_bad_credentials_are_401(node, intent_id, authorization):
    response = httpx.post(
        node.url + "/v1/payment_intents", data=INTENT, headers={"Authorization": authorization}, timeout=30
    )
    error = assert_error(response, 401)
    assert "x" * 40 not in error["message"]  # a key is shown masked, never whole


def test_bad_auth_is_checked_before_the_body(node):
    response = httpx.post(
        node.url + "/v1/payment_intents", content=b"{", headers={"Authorization": "Bearer garbage", "Content-Type": JSON}, timeout=30
    )
    assert_error(response, 401)


@pytest.mark.parametrize(
    "intent_path",
    [
        "pi_" + "a" * 300,
        "pi_" + "a" * 5000,
        "pi_038g0sy8mc001nz6tjzcy0rpw0v7z",  # well formed, but nobody's
        "pi_%00%27%22%3Cscript%3E",
        "%F0%9F%92%B3",
        "pm_card_visa",
    ],
    ids=["long", "very-long", "unknown", "weird-characters", "emoji", "wrong-prefix"],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_bad_intent_id_in_the_url_is_404(client, method, intent_path):
    path = f"/v1/payment_intents/{intent_path}" + ("/confirm" if method == "POST" else "")
    error = assert_error(client.request(method, path), 404, param="intent", code="resource_missing")
    assert len(error["message"]) < 200


def test_confirm_of_an_unknown_intent_is_404_before_its_body_is_read(client):
    response = post_raw(client, "/v1/payment_intents/pi_nope/confirm", b"{", JSON)
    assert_error(response, 404, param="intent", code="resource_missing")


# ------------------------------------------------------------------ card numbers never echoed


def test_card_number_given_as_payment_method_is_not_echoed(client):
    response = client.post("/v1/payment_intents", data={**INTENT, "payment_method": CARD_NUMBER})
    assert_error(response, 400, param="payment_method", code="resource_missing")


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"type": "card", "card": {"number": "' + CARD_NUMBER.encode() + b'", "exp_month": 12}}', FORM),
        (b"type=card&card[number]" + CARD_NUMBER.encode(), FORM),
    ],
    ids=["json-sent-as-form", "form-missing-equals"],
)
def test_card_number_in_a_mangled_body_is_not_echoed(client, body, content_type):
    response = post_raw(client, "/v1/payment_methods", body, content_type)
    assert_error(response, 400)


# ------------------------------------------------------------------ bad input must not kill the node
#
# These use a node of their own: when they fail, the node is gone.


def alive(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"metadata[a]": "x\x00y"}, "metadata[a]"), ({"metadata[a\x00]": "y"}, "metadata"), ({"description": "x\x00y"}, "description")],
    ids=["metadata-value", "metadata-key", "description"],
)
def test_nul_character_is_refused_not_fatal(new_node, extra, param):
    started = new_node()
    try:
        response = httpx.post(
            started.url + "/v1/payment_intents", data={**INTENT, **extra}, auth=(started.secret_key, ""), timeout=30
        )
        assert_error(response, 400, param=param)
    finally:
        assert alive(started.url)
