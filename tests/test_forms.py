"""Request bodies decode to plain dicts, and every bound is enforced while decoding.

`decode_form` reads Stripe's bracket notation; `decode_json` reads a JSON
object. Both are pure, so these tests need no server.
"""

import json

import pytest

from gateway.forms import ARRAY_ITEMS_MAX, DEPTH_MAX, FIELDS_MAX, BodyError, decode_form, decode_json


# ------------------------------------------------------------------ form: shapes


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"amount=1000&currency=usd", {"amount": "1000", "currency": "usd"}),
        (b"card[number]=4242424242424242", {"card": {"number": "4242424242424242"}}),
        (b"metadata[a]=1&metadata[b]=2", {"metadata": {"a": "1", "b": "2"}}),
        (b"expand[]=a&expand[]=b", {"expand": ["a", "b"]}),
        (b"items[0][price]=x", {"items": [{"price": "x"}]}),
        (
            b"items[0][price]=x&items[0][quantity]=2&items[1][price]=y",
            {"items": [{"price": "x", "quantity": "2"}, {"price": "y"}]},
        ),
        (b"items[0]=a&items[1]=b", {"items": ["a", "b"]}),
        (b"a[b][c][d]=1", {"a": {"b": {"c": {"d": "1"}}}}),  # exactly DEPTH_MAX names
        (b"card%5Bnumber%5D=42", {"card": {"number": "42"}}),  # brackets may be percent-encoded
        (b"description=a+b%26c", {"description": "a b&c"}),
        (b"", {}),
    ],
)
def test_decode_form_nests_brackets(body, expected):
    assert decode_form(body) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"description=", {"description": ""}),
        (b"description", {"description": ""}),
        (b"metadata[a]=", {"metadata": {"a": ""}}),
        (b"expand[]=", {"expand": [""]}),
    ],
)
def test_decode_form_keeps_blank_values(body, expected):
    assert decode_form(body) == expected


def test_decode_form_values_stay_strings():
    assert decode_form(b"amount=1000&confirm=true") == {"amount": "1000", "confirm": "true"}


# ------------------------------------------------------------------ form: refusals


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        (b"amount=1&amount=2", r"The parameter 'amount' is given more than once\.", "amount"),
        (b"metadata[a]=1&metadata[a]=2", r"The parameter 'metadata\[a\]' is given more than once\.", "metadata[a]"),
        (b"card[number][x]=1&card[number]=2", r"The parameter 'card\[number\]' is given more than once\.", "card[number]"),
    ],
)
def test_decode_form_refuses_a_duplicate_key(body, message, param):
    with pytest.raises(BodyError, match=rf"^{message}$") as caught:
        decode_form(body)
    assert caught.value.param == param
    assert caught.value.code == "parameter_invalid"


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        (b"card[number]=1&card[number][x]=1", r"The parameter 'card\[number\]\[x\]' mixes a value and a nested object\.", "card"),
        (b"metadata=1&metadata[a]=1", r"The parameter 'metadata\[a\]' mixes a value and a nested object\.", "metadata"),
        (b"expand[]=a&expand[x]=b", r"The parameter 'expand\[x\]' mixes a value and a nested object\.", "expand"),
        (b"metadata[x]=a&metadata[]=b", r"The parameter 'metadata\[\]' mixes a value and a nested object\.", "metadata"),
        (b"items[0]=a&items[0][price]=x", r"The parameter 'items\[0\]\[price\]' mixes a value and a nested object\.", "items"),
        (b"items[0]=a&items[x]=b", r"The parameter 'items\[x\]' mixes a value and a nested object\.", "items"),
    ],
)
def test_decode_form_refuses_mixing_a_value_and_a_nested_object(body, message, param):
    with pytest.raises(BodyError, match=rf"^{message}$") as caught:
        decode_form(body)
    assert caught.value.param == param


def test_decode_form_refuses_a_duplicate_array_index():
    with pytest.raises(BodyError, match=r"^The parameter 'items\[0\]' is given more than once\.$") as caught:
        decode_form(b"items[0]=a&items[0]=b")
    assert caught.value.param in ("items", "items[0]")


def test_decode_form_refuses_a_value_over_a_nested_array_item():
    with pytest.raises(BodyError, match=r"^The parameter 'items\[0\]' mixes a value and a nested object\.$") as caught:
        decode_form(b"items[0][price]=x&items[0]=a")
    assert caught.value.param == "items"


@pytest.mark.parametrize(
    "body",
    [
        b"items[1]=x",  # gap: index 0 was never given
        b"items[0]=a&items[2]=c",
        b"items[0][0]=a&items[0][x]=b",
    ],
)
def test_decode_form_refuses_a_bad_array_index(body):
    with pytest.raises(BodyError, match=r"^Invalid array index in 'items\[\w\](\[\w\])?'\.$") as caught:
        decode_form(body)
    assert caught.value.param == "items"


def test_decode_form_bounds_array_length():
    at_bound = "&".join(["expand[]=x"] * ARRAY_ITEMS_MAX).encode()
    assert len(decode_form(at_bound)["expand"]) == ARRAY_ITEMS_MAX
    with pytest.raises(BodyError, match=r"^Invalid array index in 'expand\[\]'\.$"):
        decode_form(at_bound + b"&expand[]=x")


def test_decode_form_refuses_nesting_deeper_than_the_bound():
    assert DEPTH_MAX == 4
    with pytest.raises(BodyError, match=r"^The parameter is nested too deeply\.$") as caught:
        decode_form(b"a[b][c][d][e]=1")
    assert caught.value.param == "a[b][c][d][e]"


@pytest.mark.parametrize(
    "key",
    ["card[number", "card]number[", "[number]", "card[number]x", "a[]]", "a[[b]]"],
)
def test_decode_form_refuses_a_malformed_name(key):
    with pytest.raises(BodyError, match=r"^Invalid parameter name: .*\.$") as caught:
        decode_form(f"{key}=1".encode())
    assert caught.value.param == key


def test_decode_form_refuses_an_empty_name():
    with pytest.raises(BodyError, match=r"^Invalid parameter name: ''\.$") as caught:
        decode_form(b"=1")
    assert caught.value.param == ""


def test_decode_form_cuts_an_overlong_name_short_in_the_error():
    key = "k" * 10_000
    with pytest.raises(BodyError, match=r"^Invalid parameter name: 'k{200}'\.$") as caught:
        decode_form(f"{key}=1".encode())
    assert caught.value.param == "k" * 200
    assert len(caught.value.message) < 300


def test_decode_form_bounds_the_field_count():
    assert FIELDS_MAX == 256
    at_bound = "&".join(f"k{i}=v" for i in range(FIELDS_MAX)).encode()
    assert len(decode_form(at_bound)) == FIELDS_MAX
    with pytest.raises(BodyError, match=r"^Too many parameters: at most 256 are allowed\.$") as caught:
        decode_form(at_bound + b"&one=more")
    assert caught.value.code == "body_invalid"


@pytest.mark.parametrize("body", [b"description=\xff\xfe", b"\xc3\x28=1", b"a=\xed\xa0\x80"])
def test_decode_form_refuses_invalid_utf8(body):
    with pytest.raises(BodyError, match=r"^The request body is not valid UTF-8\.$") as caught:
        decode_form(body)
    assert caught.value.code == "body_invalid"


def test_decode_form_error_does_not_echo_a_card_number_typed_into_a_name():
    with pytest.raises(BodyError, match=r"^Invalid parameter name: 'card\[number\]\[redacted\]'\.$") as caught:
        decode_form(b"card[number]4242424242424242")
    assert "4242424242424242" not in caught.value.message
    assert "4242424242424242" not in (caught.value.param or "")


# ------------------------------------------------------------------ JSON


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"amount": 1000, "currency": "usd"}', {"amount": 1000, "currency": "usd"}),
        (b'{"card": {"number": "4242"}}', {"card": {"number": "4242"}}),
        (b'{"expand": ["a", "b"]}', {"expand": ["a", "b"]}),
        (b'{"metadata": {"a": ""}}', {"metadata": {"a": ""}}),
        (b"{}", {}),
        (b"", {}),
        (b"  \n", {}),
    ],
)
def test_decode_json_reads_an_object(body, expected):
    assert decode_json(body) == expected


@pytest.mark.parametrize("body", [b"[]", b'["amount"]', b'"amount"', b"1000", b"null", b"true"])
def test_decode_json_refuses_a_non_object(body):
    with pytest.raises(BodyError, match=r"^Invalid JSON body: expected an object at the top level\.$") as caught:
        decode_json(body)
    assert caught.value.code == "body_invalid"
    assert caught.value.param is None


@pytest.mark.parametrize(
    "body",
    [b'{"amount": 1', b"{amount: 1}", b"{'amount': 1}", b'{"amount": NaN}', b'{"a": 1}}', b"amount=1", b'{"amount": 1e400}'],
)
def test_decode_json_refuses_malformed_json(body):
    with pytest.raises(BodyError, match=r"^Invalid JSON body: the request body could not be parsed\.$") as caught:
        decode_json(body)
    assert caught.value.code == "body_invalid"


def test_decode_json_bounds_depth():
    # Containers count as levels, leaves do not, as in the form decoder:
    # {"a": {"b": 1}} is two levels deep, like the name a[b].
    assert decode_json(b'{"a": {"b": {"c": {"d": 1}}}}') == {"a": {"b": {"c": {"d": 1}}}}
    assert decode_json(b'{"a": [[[1]]]}') == {"a": [[[1]]]}
    assert decode_json(b'{"a": [[[]]]}') == {"a": [[[]]]}
    for body in [b'{"a": {"b": {"c": {"d": {"e": 1}}}}}', b'{"a": [[[[1]]]]}', b'{"a": [[[{"b": 1}]]]}']:
        with pytest.raises(BodyError, match=r"^The request body is nested too deeply\.$") as caught:
            decode_json(body)
        assert caught.value.code == "body_invalid"


def test_decode_json_refuses_hostile_nesting():
    body = b'{"a": ' + b"[" * 1_000 + b"]" * 1_000 + b"}"
    with pytest.raises(BodyError, match=r"^(The request body is nested too deeply|Invalid JSON body: .*)\.$"):
        decode_json(body)


def test_form_and_json_accept_the_same_nesting():
    assert decode_json(json.dumps(decode_form(b"a[b][c][d]=1")).encode()) == {"a": {"b": {"c": {"d": "1"}}}}


def test_decode_json_refuses_invalid_utf8():
    with pytest.raises(BodyError, match=r"^Invalid JSON body: the request body could not be parsed\.$"):
        decode_json(b'{"description": "\xff"}')
