import re

import pytest

from engine import money


@pytest.mark.parametrize(
    ("currency", "exponent_expected"),
    [
        ("usd", 2),
        ("eur", 2),
        ("jpy", 0),
        ("krw", 0),
        ("kwd", 3),
        ("bhd", 3),
        ("jod", 3),
        ("omr", 3),
        ("tnd", 3),
        ("lyd", 3),
        ("iqd", 3),
        ("clf", 4),
        ("uyw", 4),
    ],
)
def test_exponent_of_known_currency(currency, exponent_expected):
    assert money.is_currency(currency)
    assert money.exponent(currency) == exponent_expected


@pytest.mark.parametrize("code", ["xyz", "USD", "Usd", "", "us", "usdd", "xau", "xdr", "xxx"])
def test_unknown_or_miscased_code_is_not_a_currency(code):
    assert not money.is_currency(code)
    with pytest.raises(KeyError, match=f"^{re.escape(repr(code))}$"):  # the table's lookup, naming the code
        money.exponent(code)


def test_table_covers_the_active_list_in_lowercase():
    assert len(money.CURRENCY_EXPONENTS) >= 150
    for code, exponent_value in money.CURRENCY_EXPONENTS.items():
        assert len(code) == 3 and code.isascii() and code.islower(), code
        assert exponent_value in (0, 2, 3, 4), code


@pytest.mark.parametrize(
    ("amount_minor", "in_range_expected"),
    [
        (-1, False),
        (0, False),
        (1, True),
        (99_999_999, True),
        (100_000_000, False),
        (True, False),
        (False, False),
        (1.5, False),
        (1.0, False),
        ("1", False),
        (None, False),
    ],
)
def test_amount_bounds(amount_minor, in_range_expected):
    assert money.amount_in_range(amount_minor) is in_range_expected
