"""Bodies say one thing: no repeated JSON keys, no integers written as floats.

Two holes from the security review. A JSON body giving `amount` twice was read
last-key-wins, so `{"amount": 2000, "amount": 99999999}` charged 99,999,999
while anything reading the first key saw 2000 (a form body repeating a key
was already refused). And lax conversion read `amount=1e3`, `1000.0` or the
JSON number `1e3` as 1000. Now a repeated key at any depth is a 400 naming it,
and every value the schema reads as an integer must be written as one: an
optional `-` and ASCII digits, without leading zeros, as JSON writes integers.
"""

import json
import re
from typing import Any, Literal

import httpx
import msgspec
import msgspec.inspect
import pytest

from gateway import params
from gateway.errors import ApiError
from gateway.forms import KEY_CHARS_MAX, BodyError, decode_form, decode_json

CARD_NUMBER = "4242424242424242"


# ------------------------------------------------------------------ JSON: repeated keys


def refused_duplicate(body: bytes) -> BodyError:
    with pytest.raises(BodyError, match=r"^The parameter '.*' is given more than once\.$") as caught:
        decode_json(body)
    assert caught.value.code == "parameter_invalid"
    return caught.value


def test_json_duplicate_amount_is_refused_not_last_key_wins():
    error = refused_duplicate(b'{"amount": 2000, "amount": 99999999, "currency": "usd"}')
    assert error.param == "amount"
    assert error.message == "The parameter 'amount' is given more than once."
    assert "99999999" not in error.message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"amount": 1000, "metadata": {"order": "1", "order": "2"}}', "metadata[order]"),
        (b'{"type": "card", "card": {"exp_month": 12, "exp_year": 2030, "exp_month": 1}}', "card[exp_month]"),
        (b'{"a": {"b": {"c": {"d": 1, "d": 2}}}}', "a[b][c][d]"),
        # The repeated key holds an object: still refused, named at its own level.
        (b'{"card": {"number": "1"}, "card": {"number": "2"}}', "card"),
    ],
    ids=["metadata", "card", "at-the-depth-bound", "object-valued"],
)
def test_json_duplicate_key_nested_is_refused_naming_it(body, param):
    assert refused_duplicate(body).param == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"items": [{"price": "x"}, {"price": "y", "price": "z"}]}', "items[1][price]"),
        (b'{"items": [[{"a": 1, "a": 2}]]}', "items[0][0][a]"),
    ],
)
def test_json_duplicate_key_in_an_array_of_objects_is_refused(body, param):
    assert refused_duplicate(body).param == param


def test_json_duplicate_key_is_found_among_colons_in_strings():
    # Colons inside strings (URLs, times) take the body off the fast path;
    # the repeated key must be found all the same.
    body = b'{"return_url": "https://shop.test:8443/done", "amount": 1, "description": "at 12:00", "amount": 2}'
    assert refused_duplicate(body).param == "amount"


def test_json_duplicate_key_written_with_an_escape_is_refused():
    # "\u0061" is "a": the same key however it is spelled.
    assert refused_duplicate(b'{"a": 1, "\\u0061": 2}').param == "a"


def test_json_duplicate_key_that_looks_like_a_card_number_is_not_echoed():
    error = refused_duplicate(f'{{"metadata": {{"{CARD_NUMBER}": "x", "{CARD_NUMBER}": "y"}}}}'.encode())
    assert CARD_NUMBER not in error.message
    assert CARD_NUMBER not in (error.param or "")


def test_json_duplicate_key_name_is_cut_short_in_the_error():
    key = "k" * 10_000
    error = refused_duplicate(f'{{"{key}": 1, "{key}": 2}}'.encode())
    assert error.param == "k" * KEY_CHARS_MAX
    assert len(error.message) < KEY_CHARS_MAX + 50


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": {"x": 1}, "b": {"x": 1}}',
        b'{"items": [{"price": "x"}, {"price": "y"}]}',
        b'{"a": "amount", "amount": "a"}',
        b'{"return_url": "https://shop.test:8443/a:b", "description": "\\"amount\\": 1"}',
    ],
    ids=["same-key-in-sibling-objects", "same-key-in-array-items", "key-as-a-value", "colons-in-strings"],
)
def test_json_same_key_in_different_objects_is_accepted(body):
    assert decode_json(body) == json.loads(body)


def test_json_valid_body_decodes_as_before():
    # Floats, bools, nulls, big integers and nesting come back as msgspec reads them.
    body = (
        b'{"amount": 1000, "f": 10.5, "e": 1e3, "t": true, "n": null, "big": 10000000000000000000000000000000000000000,'
        b' "s": "1e3", "metadata": {"order": "7"}, "expand": ["a", "b"], "url": "https://x.test/"}'
    )
    decoded = decode_json(body)
    assert decoded == msgspec.json.decode(body)
    assert (type(decoded["amount"]), type(decoded["f"]), type(decoded["e"]), decoded["t"], decoded["n"]) == (int, float, float, True, None)


def test_json_depth_is_checked_before_duplicates():
    with pytest.raises(BodyError, match=r"^The request body is nested too deeply\.$") as caught:
        decode_json(b'{"a": {"b": {"c": {"d": {"e": 1, "e": 2}}}}}')
    assert caught.value.code == "body_invalid"


def test_json_hostile_nesting_with_duplicates_is_still_body_invalid():
    body = b'{"a": 1, "a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(BodyError, match=r"^(The request body is nested too deeply|Invalid JSON body: .*)\.$") as caught:
        decode_json(body)
    assert caught.value.code == "body_invalid"


# ------------------------------------------------------------------ integers written as integers

CARD = {"type": "card", "card": {"number": CARD_NUMBER, "exp_month": "12", "exp_year": "2030"}}

# (schema, values with the integer under test replaced by VALUE, bracket param)
INTEGER_FIELDS = [
    pytest.param(params.CreatePaymentIntent, {"amount": "VALUE", "currency": "usd"}, "amount", id="amount"),
    pytest.param(params.CreatePaymentMethod, {**CARD, "card": {**CARD["card"], "exp_month": "VALUE"}}, "card[exp_month]", id="exp_month"),
    pytest.param(params.CaptureParams, {"amount_to_capture": "VALUE"}, "amount_to_capture", id="amount_to_capture"),
    pytest.param(params.CreateRefund, {"payment_intent": "pi_1", "amount": "VALUE"}, "amount", id="refund-amount"),
    pytest.param(params.ListParams, {"limit": "VALUE"}, "limit", id="limit"),
    pytest.param(params.ListParams, {"created": "VALUE"}, "created", id="created"),
    pytest.param(params.ListParams, {"created": {"gte": "VALUE"}}, "created[gte]", id="created[gte]"),
    pytest.param(params.EventListParams, {"created": {"lt": "VALUE"}}, "created[lt]", id="events-created[lt]"),
]


def put(values: Any, value: Any) -> Any:
    """`values` with the placeholder "VALUE" replaced by `value`."""
    if isinstance(values, dict):
        return {key: put(child, value) for key, child in values.items()}
    return value if values == "VALUE" else values


def value_at(converted: Any, param: str) -> Any:
    """The converted value a bracket param (`card[exp_month]`) names."""
    for part in param.replace("]", "").split("["):
        converted = getattr(converted, part)
    return converted


def refused_integer(values: dict[str, Any], schema: type, param: str) -> ApiError:
    with pytest.raises(ApiError, match=rf"^Invalid integer for parameter {re.escape(param)}\.$") as caught:
        params.convert(values, schema)
    assert (caught.value.status, caught.value.type, caught.value.code, caught.value.param) == (
        400, "invalid_request_error", "parameter_invalid_integer", param
    )
    return caught.value


@pytest.mark.parametrize(
    "written",
    ["1e3", "1E3", "1000.0", "10.", "1_000", " 1000", "1000 ", "1000\n", "+1000", "0x10", "007", "-", "", "１０００", "1e400"],
)
@pytest.mark.parametrize(("schema", "values", "param"), INTEGER_FIELDS)
def test_form_integer_written_as_exponent_or_decimal_is_refused(schema, values, param, written):
    error = refused_integer(put(values, written), schema, param)
    assert written.strip() == "" or written.strip() not in error.message


@pytest.mark.parametrize("number", [1e3, 1000.0, 2.5, 5.0, float(10**20)], ids=["1e3", "1000.0", "2.5", "5.0", "1e20"])
@pytest.mark.parametrize(("schema", "values", "param"), INTEGER_FIELDS)
def test_json_number_with_a_point_or_exponent_for_an_integer_is_refused(schema, values, param, number):
    refused_integer(put(values, number), schema, param)


@pytest.mark.parametrize("written", ["1e3", "1000.0", "2.5"])
@pytest.mark.parametrize(("schema", "values", "param"), INTEGER_FIELDS)
def test_json_body_with_a_float_for_an_integer_is_refused_end_to_end(schema, values, param, written):
    # Through decode_json as the gateway does: the number arrives as JSON text.
    body = json.dumps(put(values, "@@")).replace('"@@"', written).encode()
    refused_integer(decode_json(body), schema, param)


@pytest.mark.parametrize(("schema", "values", "param"), INTEGER_FIELDS)
def test_json_body_with_an_integer_or_a_digit_string_converts(schema, values, param):
    for written in ("5", '"5"'):
        body = json.dumps(put(values, "@@")).replace('"@@"', written).encode()
        assert value_at(params.convert(decode_json(body), schema), param) == 5


def test_integer_error_does_not_echo_a_card_number_written_as_a_float():
    error = refused_integer({"amount": CARD_NUMBER + ".0", "currency": "usd"}, params.CreatePaymentIntent, "amount")
    assert CARD_NUMBER not in error.message


@pytest.mark.parametrize("written", ["1000", 1000, "5", 5, "0", 0, "-0", "-5", -5, "99", 10**30, str(10**30)])
@pytest.mark.parametrize(("schema", "values", "param"), INTEGER_FIELDS)
def test_integer_written_as_integer_is_accepted(schema, values, param, written):
    # The schema allows any integer here except limit (1..100); range and
    # sign rules for amounts are the gateway's, after conversion.
    if param == "limit" and not 1 <= int(written) <= 100:
        # Well written, but outside limit's bounds: refused for its range.
        refused_integer(put(values, written), schema, param)
        return
    if param.startswith("created") and abs(int(written)) > 2**53:
        # Past what PostgreSQL's bigint times can be compared with.
        refused_integer(put(values, written), schema, param)
        return
    assert value_at(params.convert(put(values, written), schema), param) == int(written)


def test_negative_amount_converts_and_is_left_to_the_gateway():
    assert params.convert({"amount": "-5", "currency": "usd"}, params.CreatePaymentIntent).amount == -5


def test_created_as_a_timestamp_or_a_filter_still_converts():
    assert params.convert(decode_form(b"created=1700000000"), params.ListParams).created == 1700000000
    assert params.convert(decode_form(b"created[gte]=1700000000&created[lt]=1800000000"), params.ListParams).created == params.CreatedFilter(
        gte=1700000000, lt=1800000000
    )
    assert params.convert({"created": {"gte": 1700000000}}, params.ListParams).created == params.CreatedFilter(gte=1700000000)


def test_optional_integer_left_out_or_null_still_converts():
    assert params.convert({}, params.CaptureParams).amount_to_capture is None
    assert params.convert({"amount_to_capture": None}, params.CaptureParams).amount_to_capture is None
    # Lax conversion has always read the form value "null" as None here.
    assert params.convert(decode_form(b"amount_to_capture=null"), params.CaptureParams).amount_to_capture is None
    assert params.convert(decode_form(b"created=null"), params.ListParams).created is None


def test_null_string_for_a_required_integer_is_still_refused():
    refused_integer({"amount": "null", "currency": "usd"}, params.CreatePaymentIntent, "amount")


def test_bools_and_strings_still_convert_laxly():
    # Only integers are held to their spelling: "1e3" is a fine description or metadata value.
    values = decode_form(b"amount=1000&currency=usd&confirm=true&description=1e3&metadata[order]=1000.0")
    converted = params.convert(values, params.CreatePaymentIntent)
    assert (converted.confirm, converted.description, converted.metadata) == (True, "1e3", {"order": "1000.0"})
    assert params.convert({"amount": 1, "currency": "usd", "confirm": "false"}, params.CreatePaymentIntent).confirm is False
    assert params.convert(decode_form(b"delivery_success=false&limit=3"), params.EventListParams).delivery_success is False
    assert params.convert({"disabled": True}, params.UpdateWebhookEndpoint).disabled is True


def test_optional_integer_of_the_wrong_type_is_an_invalid_integer():
    # msgspec reports `int | None` as `int | null`; it is still an integer param.
    refused_integer({"amount_to_capture": "abc"}, params.CaptureParams, "amount_to_capture")


def holds_int(info: msgspec.inspect.Type) -> bool:
    if isinstance(info, msgspec.inspect.IntType):
        return True
    if isinstance(info, msgspec.inspect.LiteralType):
        return any(type(value) is int for value in info.values)
    children = [getattr(info, name) for name in ("item_type", "key_type", "value_type") if hasattr(info, name)]
    children += list(getattr(info, "types", ())) + list(getattr(info, "item_types", ()))
    children += [field.type for field in getattr(info, "fields", ())]
    return any(holds_int(child) for child in children)


def int_outside_the_walk(info: msgspec.inspect.Type) -> bool:
    if not holds_int(info):
        return False
    if not isinstance(info, params.WALKED_TYPES):
        return True
    if isinstance(info, msgspec.inspect.UnionType):
        # The walk picks a member by the value's shape: it must be unambiguous.
        kinds = [
            "object" if isinstance(member, msgspec.inspect.StructType | msgspec.inspect.DictType)
            else "array" if isinstance(member, msgspec.inspect.ListType)
            else "null" if isinstance(member, msgspec.inspect.NoneType)
            else "scalar"
            for member in info.types
        ]
        if any(kinds.count(kind) > 1 for kind in ("object", "array", "scalar")):
            return True
        return any(int_outside_the_walk(member) for member in info.types)
    if isinstance(info, msgspec.inspect.StructType):
        return any(int_outside_the_walk(field.type) for field in info.fields)
    if isinstance(info, msgspec.inspect.DictType):
        return int_outside_the_walk(info.key_type) or int_outside_the_walk(info.value_type)
    if isinstance(info, msgspec.inspect.ListType):
        return int_outside_the_walk(info.item_type)
    return False


SCHEMAS = [value for value in vars(params).values() if isinstance(value, type) and issubclass(value, msgspec.Struct)]


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda schema: schema.__name__)
def test_every_integer_in_a_schema_is_where_the_spelling_check_looks(schema):
    # A new schema with an int inside, say, a set or a tuple would escape the
    # check silently; this makes it loud instead.
    assert not int_outside_the_walk(msgspec.inspect.type_info(schema))


def test_schema_check_sees_an_integer_the_walk_would_miss():
    assert int_outside_the_walk(msgspec.inspect.type_info(tuple[int, str]))
    assert int_outside_the_walk(msgspec.inspect.type_info(set[int]))
    assert int_outside_the_walk(msgspec.inspect.type_info(int | str))
    assert int_outside_the_walk(msgspec.inspect.type_info(Literal[1, 2]))
    assert not int_outside_the_walk(msgspec.inspect.type_info(int | list[int] | dict[str, int] | None))
    assert not int_outside_the_walk(msgspec.inspect.type_info(params.ListParams))


# ------------------------------------------------------------------ over HTTP


@pytest.fixture
def merchant_client(node, fresh_merchant):
    """A client for a merchant of the test's own: its intent list starts empty."""
    with httpx.Client(base_url=node.url, auth=(fresh_merchant["secret_key"], ""), timeout=30) as opened:
        assert opened.get("/v1/payment_intents").json()["data"] == []
        yield opened


def assert_refused(response: httpx.Response, param: str, code: str) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    return error


def test_json_duplicate_amount_over_http_is_refused_and_creates_nothing(merchant_client):
    response = merchant_client.post(
        "/v1/payment_intents",
        content=b'{"amount": 2000, "amount": 99999999, "currency": "usd"}',
        headers={"Content-Type": "application/json"},
    )
    error = assert_refused(response, "amount", "parameter_invalid")
    assert error["message"] == "The parameter 'amount' is given more than once."
    assert merchant_client.get("/v1/payment_intents").json()["data"] == []


def test_form_amount_1e3_over_http_is_refused_and_creates_nothing(merchant_client):
    response = merchant_client.post("/v1/payment_intents", data={"amount": "1e3", "currency": "usd"})
    error = assert_refused(response, "amount", "parameter_invalid_integer")
    assert error["message"] == "Invalid integer for parameter amount."
    response = merchant_client.post(
        "/v1/payment_intents", content=b'{"amount": 1e3, "currency": "usd"}', headers={"Content-Type": "application/json"}
    )
    assert_refused(response, "amount", "parameter_invalid_integer")
    assert merchant_client.get("/v1/payment_intents").json()["data"] == []
    # The same amount written as an integer goes through.
    response = merchant_client.post("/v1/payment_intents", data={"amount": "1000", "currency": "usd"})
    assert response.status_code == 200, response.text
    assert response.json()["amount"] == 1000


def test_query_created_gte_1e9_over_http_is_refused(merchant_client):
    response = merchant_client.get("/v1/payment_intents", params={"created[gte]": "1e9"})
    assert_refused(response, "created[gte]", "parameter_invalid_integer")
    for query in ({"created": "1700000000"}, {"created[gte]": "1700000000"}, {"limit": "3"}):
        response = merchant_client.get("/v1/payment_intents", params=query)
        assert response.status_code == 200, response.text
