import pytest

from engine import cards
from engine.cards import CardOutcome
from simulators.card_network import AuthorizationRequest


@pytest.mark.parametrize(
    "number",
    sorted(set(cards.TEST_PAYMENT_METHODS.values()) | set(cards.TEST_CARD_OUTCOMES)),
)
def test_stripe_test_cards_pass_luhn(number):
    assert cards.luhn_valid(number)


@pytest.mark.parametrize(
    "number",
    [
        "4242424242424241",  # last digit changed
        "4242424242424224",  # two digits swapped
        "4242 4242 4242 4242",
        "424242424242424a",
        "42424242424",  # 11 digits, too short
        "4" + "0" * 18 + "0",  # 20 digits, too long
        "",
        "４２４２４２４２４２４２４２４２",  # full-width digits are not ASCII
    ],
)
def test_luhn_rejects(number):
    assert not cards.luhn_valid(number)


@pytest.mark.parametrize(
    ("number", "brand_expected"),
    [
        ("4242424242424242", "visa"),
        ("5105105105105100", "mastercard"),
        ("5555555555554444", "mastercard"),
        ("5000000000000000", "unknown"),
        ("5600000000000000", "unknown"),
        ("2221000000000009", "mastercard"),
        ("2720990000000000", "mastercard"),
        ("2220990000000000", "unknown"),
        ("2721000000000000", "unknown"),
        ("340000000000009", "amex"),
        ("378282246310005", "amex"),
        ("350000000000000", "unknown"),
        ("6011111111111117", "unknown"),
        ("", "unknown"),
    ],
)
def test_brand_of(number, brand_expected):
    assert cards.brand_of(number) == brand_expected


def test_last4():
    assert cards.last4("4242424242421234") == "1234"


def test_last4_of_short_input_does_not_echo_it():
    with pytest.raises(ValueError, match=r"^card number has fewer than four digits$"):
        cards.last4("424")


def test_test_payment_methods_map_to_their_brands():
    brands = {pm: cards.brand_of(number) for pm, number in cards.TEST_PAYMENT_METHODS.items()}
    assert brands == {
        "pm_card_visa": "visa",
        "pm_card_mastercard": "mastercard",
        "pm_card_amex": "amex",
        "pm_card_chargeDeclined": "visa",
        "pm_card_chargeDeclinedInsufficientFunds": "visa",
        "pm_card_threeDSecure2Required": "visa",
        "pm_card_createDispute": "visa",
    }


TODAY = (2026, 5)  # (year, month)


@pytest.mark.parametrize(
    ("number", "outcome_expected"),
    [
        ("4242424242424242", CardOutcome(True, None, None)),
        ("5555555555554444", CardOutcome(True, None, None)),
        ("378282246310005", CardOutcome(True, None, None)),
        ("4000000000000002", CardOutcome(False, "card_declined", "generic_decline")),
        ("4000000000009995", CardOutcome(False, "card_declined", "insufficient_funds")),
        ("4000000000000069", CardOutcome(False, "expired_card", "expired_card")),
        ("4000000000000127", CardOutcome(False, "incorrect_cvc", "incorrect_cvc")),
        ("4000000000000119", CardOutcome(False, "processing_error", "processing_error")),
        ("4242424242424241", CardOutcome(False, "incorrect_number", "incorrect_number")),
    ],
)
def test_outcome_for_test_cards(number, outcome_expected):
    today_year, today_month = TODAY
    assert cards.outcome_for(number, 12, 2034, today_year, today_month) == outcome_expected


@pytest.mark.parametrize(
    ("exp_year", "exp_month", "approved_expected"),
    [
        (2026, 5, True),  # good through the end of its month
        (2026, 6, True),
        (2027, 1, True),
        (2026, 4, False),
        (2025, 12, False),
    ],
)
def test_outcome_for_expiry(exp_year, exp_month, approved_expected):
    today_year, today_month = TODAY
    outcome = cards.outcome_for("4242424242424242", exp_month, exp_year, today_year, today_month)
    if approved_expected:
        assert outcome == CardOutcome(True, None, None)
    else:
        assert outcome == CardOutcome(False, "expired_card", "expired_card")


def test_incorrect_number_wins_over_expiry():
    outcome = cards.outcome_for("4242424242424241", 1, 2000, *TODAY)
    assert outcome.code == "incorrect_number"


@pytest.mark.parametrize("number", ["4242424242424242", "378282246310005", "987"])
def test_card_number_never_in_request_repr(number):
    request = AuthorizationRequest(
        reference="att_1",
        card_number=number,
        exp_month=12,
        exp_year=2034,
        amount_minor=1999,
        currency="usd",
        capture=True,
    )
    for text in (repr(request), str(request), f"{request}", repr([request])):
        assert number not in text
        assert "att_1" in text
    rich_fields = dict(request.__rich_repr__())
    assert number not in repr(rich_fields)


def test_request_repr_shows_brand_and_last4():
    request = AuthorizationRequest("att_1", "4242424242421234", 12, 2034, 1999, "usd", False)
    assert "visa ****1234" in repr(request)


def test_refund_fails_later_card_is_a_valid_visa_that_approves():
    number = cards.REFUND_FAILS_LATER
    assert number == "4000000000005126"
    assert cards.luhn_valid(number)
    assert cards.brand_of(number) == "visa"
    # Its failure comes only at refund time, from the network; the issuer
    # approves it like any good card.
    assert number not in cards.TEST_CARD_OUTCOMES
    assert cards.outcome_for(number, 12, 2034, *TODAY) == CardOutcome(True, None, None)
