"""Stripe's search query language (gateway/search_query.py), parsed and
matched without a node: tables of (query, expected) and random queries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.search_query import (
    CHARGE_FIELDS,
    CLAUSES_MAX,
    PAYMENT_INTENT_FIELDS,
    Clause,
    Query,
    QueryError,
    matches,
    parse,
)


def pi(text: str) -> Query:
    return parse(text, PAYMENT_INTENT_FIELDS, "payment intents")


def lookup_of(values: dict, metadata: dict | None = None):
    def lookup(field, key):
        if field == "metadata":
            return (metadata or {}).get(key)
        return values.get(field)

    return lookup


INTENT = lookup_of(
    {"status": "succeeded", "amount": 2000, "created": 1_700_000_000, "currency": "usd", "customer": None},
    {"order_id": "6735", "Kind": "Gift"},
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('status:"succeeded"', Query((Clause("status", ":", "succeeded"),))),
        ("status:'succeeded'", Query((Clause("status", ":", "succeeded"),))),
        ("amount>1000", Query((Clause("amount", ">", 1000),))),
        ('amount>="1000"', Query((Clause("amount", ">=", 1000),))),
        ("amount<=-1", Query((Clause("amount", "<=", -1),))),
        ("amount=1000", Query((Clause("amount", ":", 1000),))),
        ("created<1700000000", Query((Clause("created", "<", 1_700_000_000),))),
        ('metadata["order_id"]:"6735"', Query((Clause("metadata", ":", "6735", key="order_id"),))),
        ("metadata['order_id']:'6735'", Query((Clause("metadata", ":", "6735", key="order_id"),))),
        ('-currency:"usd"', Query((Clause("currency", ":", "usd", negated=True),))),
        ("customer:null", Query((Clause("customer", ":", None),))),
        ('metadata["gone"]:null', Query((Clause("metadata", ":", None, key="gone"),))),
        ('status:"a" amount>1', Query((Clause("status", ":", "a"), Clause("amount", ">", 1)))),
        ('status:"a" AND amount>1', Query((Clause("status", ":", "a"), Clause("amount", ">", 1)))),
        ('status:"a" and amount>1', Query((Clause("status", ":", "a"), Clause("amount", ">", 1)))),
        ('status:"a" OR status:"b"', Query((Clause("status", ":", "a"), Clause("status", ":", "b")), any_of=True)),
        ('status:"a" or status:"b" Or status:"c"', Query(tuple(Clause("status", ":", v) for v in "abc"), any_of=True)),
        ('  status:"a"   ', Query((Clause("status", ":", "a"),))),
        ('status:"say \\"hi\\" \\\\ bye"', Query((Clause("status", ":", 'say "hi" \\ bye'),))),
        ("status:'it\\'s'", Query((Clause("status", ":", "it's"),))),
        ('status:"AND"', Query((Clause("status", ":", "AND"),))),
        ('status:"with space"', Query((Clause("status", ":", "with space"),))),
    ],
)
def test_a_query_reads_as_its_clauses(text: str, expected: Query) -> None:
    assert pi(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"^The search query is empty\."),
        ("   ", r"^The search query is empty\."),
        ('email:"a@b.c"', r"^Field `email` is not a search field of payment intents\. The fields are: amount, created, currency, customer, metadata, status\.$"),
        ('status:"a" AND amount>1 OR amount<5', r"^A search query cannot combine AND and OR"),
        ('status:"a" amount>1 OR amount<5', r"^A search query cannot combine AND and OR"),
        ("status:succeeded", r"^Quote the value of field `status`"),
        ("amount>abc", r"^Field `amount` takes a whole number"),
        ("amount>1.5", r"^Field `amount` takes a whole number"),
        ("amount>1234567890123456", r"^Field `amount` takes a whole number"),
        ('status:"a"status:"b"', r"^Separate the clauses"),
        ('status>"a"', r"^Field `status` cannot be compared with >"),
        ('metadata["k"]>"1"', r"^Field `metadata` cannot be compared with >"),
        ('status~"abc"', r"^Field `status` does not support substring matching"),
        ('status="a"', r"^Use : to match field `status`"),
        ("status:", r"^Field `status` has no value after :"),
        ("status: 'a'", r"^Field `status` has no value after :"),
        ('status:"open', r"^The search query has a quoted value with no closing quote\.$"),
        ('status:"a" AND', r"^AND must be followed by a space and another clause"),
        ('status:"a" OR ', r"^OR must be followed by a space and another clause"),
        ('metadata:"x"', r'^Name the metadata key as metadata\["key"\]'),
        ('metadata[order]:"x"', r'^Name the metadata key as metadata\["key"\]'),
        ('metadata["a":"x"', r'^Close the metadata key with "\]"'),
        ('metadata[""]:"x"', r"^A metadata key in a search query cannot be empty\.$"),
        ("amount:null", r"^Field `amount` is never empty"),
        ("status:null", r"^Field `status` is never empty"),
        ('status"a"', r"^Expected an operator"),
        (':"a"', r"^A search clause must start with a field name"),
        ("(status:'a')", r"^A search clause must start with a field name"),
        (" AND ".join(["amount>1"] * (CLAUSES_MAX + 1)), rf"^A search query may have at most {CLAUSES_MAX} clauses\.$"),
        ("x" * 5001, r"^The search query is longer than 5000 characters\.$"),
    ],
)
def test_a_query_that_cannot_be_read_says_why(text: str, message: str) -> None:
    with pytest.raises(QueryError, match=message):
        pi(text)


def test_ten_clauses_are_allowed() -> None:
    assert len(pi(" AND ".join(["amount>1"] * CLAUSES_MAX)).clauses) == CLAUSES_MAX


def test_charges_have_their_own_fields() -> None:
    query = parse('payment_intent:"pi_1" refunded:true disputed:"false"', CHARGE_FIELDS, "charges")
    assert query == Query((Clause("payment_intent", ":", "pi_1"), Clause("refunded", ":", True), Clause("disputed", ":", False)))
    with pytest.raises(QueryError, match=r"^Field `refunded` takes true or false"):
        parse("refunded:yes", CHARGE_FIELDS, "charges")
    with pytest.raises(QueryError, match=r"^Field `payment_intent` is not a search field of payment intents"):
        pi('payment_intent:"pi_1"')


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('status:"succeeded"', True),
        ('status:"SUCCEEDED"', True),  # string fields ignore case
        ('status:"canceled"', False),
        ('-status:"canceled"', True),
        ("amount:2000", True),
        ("amount>2000", False),
        ("amount>=2000", True),
        ("amount<2001", True),
        ("amount<=1999", False),
        ("created>1699999999 AND created<1700000001", True),
        ('currency:"usd" AND amount>5000', False),
        ('currency:"eur" OR amount>1000', True),
        ('currency:"eur" OR amount>5000', False),
        ('metadata["order_id"]:"6735"', True),
        ('metadata["order_id"]:"6736"', False),
        ('metadata["kind"]:"Gift"', False),  # metadata keys are exact
        ('metadata["Kind"]:"gift"', False),  # and so are their values
        ('metadata["Kind"]:"Gift"', True),
        ('metadata["missing"]:null', True),
        ('-metadata["order_id"]:null', True),
        ('metadata["order_id"]:null', False),
        ("customer:null", True),
        ('customer:"cus_1"', False),
        ('-customer:"cus_1"', True),
    ],
)
def test_a_query_matches_what_it_says(text: str, expected: bool) -> None:
    assert matches(pi(text), INTENT) is expected


def test_a_number_never_matches_a_missing_value() -> None:
    assert not matches(pi("amount>1"), lookup_of({}))
    assert matches(pi("-amount>1"), lookup_of({}))


VALUES = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)


@given(value=VALUES, key=st.text(alphabet="abcdefghij_0123456789", min_size=1, max_size=20), negated=st.booleans())
def test_any_string_survives_quoting(value: str, key: str, negated: bool) -> None:
    """A value quoted and escaped as Stripe's SDK users write it reads back
    as itself, and matches exactly the metadata that holds it."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    text = f'{"-" if negated else ""}metadata["{key}"]:"{escaped}"'
    query = pi(text)
    assert query == Query((Clause("metadata", ":", value, key=key, negated=negated),))
    holds = lookup_of({}, {key: value})
    assert matches(query, holds) is not negated
    assert matches(query, lookup_of({}, {key: value + "x"})) is negated


@given(
    amounts=st.lists(st.integers(min_value=-(10**12), max_value=10**12), min_size=1, max_size=CLAUSES_MAX),
    operators=st.lists(st.sampled_from([">", "<", ">=", "<=", ":"]), min_size=CLAUSES_MAX, max_size=CLAUSES_MAX),
    any_of=st.booleans(),
    actual=st.integers(min_value=-(10**12), max_value=10**12),
)
def test_numeric_clauses_combine_as_and_or_or(amounts: list[int], operators: list[str], any_of: bool, actual: int) -> None:
    clauses = [f"amount{operator}{amount}" for amount, operator in zip(amounts, operators)]
    query = pi((" OR " if any_of else " AND ").join(clauses))
    assert query.any_of is (any_of and len(clauses) > 1)
    compare = {">": int.__gt__, "<": int.__lt__, ">=": int.__ge__, "<=": int.__le__, ":": int.__eq__}
    each = [compare[operator](actual, amount) for amount, operator in zip(amounts, operators)]
    assert matches(query, lookup_of({"amount": actual})) is (any(each) if query.any_of else all(each))


@given(text=st.text(max_size=200))
def test_any_text_parses_or_says_why(text: str) -> None:
    """Whatever a caller sends, the parser answers a query or a QueryError,
    never another exception."""
    try:
        query = pi(text)
    except QueryError as error:
        assert str(error)
    else:
        assert 1 <= len(query.clauses) <= CLAUSES_MAX
