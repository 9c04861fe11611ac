"""Card numbers: checksum, brand, and what a test card does when charged.

Everything here is pure. The card network simulator and the gateway both ask
these functions, so a test card behaves the same wherever it is seen.

A card number is sensitive: no function here puts one into an exception
message, and callers should pass on only `last4` and `brand_of`.
"""

import msgspec

CARD_NUMBER_LENGTH_MIN = 12
CARD_NUMBER_LENGTH_MAX = 19


def _is_ascii_digits(text: str) -> bool:
    # str.isdigit alone accepts characters such as "²" and Arabic-Indic
    # digits, which int() would then read as numbers.
    return text.isascii() and text.isdigit()


def luhn_valid(number: str) -> bool:
    """True iff `number` is 12 to 19 ASCII digits with a correct Luhn check digit."""
    if not _is_ascii_digits(number):
        return False
    if not CARD_NUMBER_LENGTH_MIN <= len(number) <= CARD_NUMBER_LENGTH_MAX:
        return False
    total = 0
    # Walking from the check digit leftwards, every second digit is doubled;
    # a doubled digit above 9 contributes the sum of its two digits (= d - 9).
    for position, character in enumerate(reversed(number)):
        digit = ord(character) - ord("0")
        if position % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


# Issuer prefix ranges, checked in order; the first match wins. Mastercard's
# 2-series (2221..2720) needs four digits, the older 51..55 needs two.
_BRAND_PREFIX_RANGES: tuple[tuple[int, int, int, str], ...] = (
    # (prefix length, first prefix, last prefix, brand)
    (1, 4, 4, "visa"),
    (2, 51, 55, "mastercard"),
    (4, 2221, 2720, "mastercard"),
    (2, 34, 34, "amex"),
    (2, 37, 37, "amex"),
)


def brand_of(number: str) -> str:
    """The card brand by prefix: "visa", "mastercard", "amex" or "unknown"."""
    if not _is_ascii_digits(number):
        return "unknown"
    for prefix_length, prefix_first, prefix_last, brand in _BRAND_PREFIX_RANGES:
        if len(number) < prefix_length:
            continue
        if prefix_first <= int(number[:prefix_length]) <= prefix_last:
            return brand
    return "unknown"


def last4(number: str) -> str:
    """The last four characters of a card number.

    Raises ValueError when there are fewer than four; the message does not
    repeat the input.
    """
    if len(number) < 4:
        raise ValueError("card number has fewer than four digits")
    return number[-4:]


# Stripe's test PaymentMethod ids and the card each one stands for.
TEST_PAYMENT_METHODS: dict[str, str] = {
    "pm_card_visa": "4242424242424242",
    "pm_card_mastercard": "5555555555554444",
    "pm_card_amex": "378282246310005",
    "pm_card_chargeDeclined": "4000000000000002",
    "pm_card_chargeDeclinedInsufficientFunds": "4000000000009995",
    "pm_card_threeDSecure2Required": "4000000000003220",
    "pm_card_createDispute": "4000000000000259",
}


class CardOutcome(msgspec.Struct, frozen=True):
    """What the issuer says to an authorization.

    `code` is Stripe's error code (card_declined, expired_card, ...) and
    `decline_code` the finer reason; both are None when approved.
    """

    approved: bool
    code: str | None
    decline_code: str | None


APPROVED = CardOutcome(approved=True, code=None, decline_code=None)
INCORRECT_NUMBER = CardOutcome(
    approved=False, code="incorrect_number", decline_code="incorrect_number"
)
EXPIRED_CARD = CardOutcome(approved=False, code="expired_card", decline_code="expired_card")

# Stripe's test cards that always fail, with the error code and decline code
# its test mode returns for them (Stripe docs, "Testing": declined payments).
TEST_CARD_OUTCOMES: dict[str, CardOutcome] = {
    "4000000000000002": CardOutcome(
        approved=False, code="card_declined", decline_code="generic_decline"
    ),
    "4000000000009995": CardOutcome(
        approved=False, code="card_declined", decline_code="insufficient_funds"
    ),
    "4000000000000069": EXPIRED_CARD,
    "4000000000000127": CardOutcome(
        approved=False, code="incorrect_cvc", decline_code="incorrect_cvc"
    ),
    "4000000000000119": CardOutcome(
        approved=False, code="processing_error", decline_code="processing_error"
    ),
}


# Stripe's test card whose authorizations and refunds are approved, but whose
# refunds then fail asynchronously (Stripe docs, "Testing": refunds). It is
# not in TEST_CARD_OUTCOMES because its authorization is an ordinary approval;
# only the card network needs to know, at refund time.
REFUND_FAILS_LATER = "4000000000005126"

# Stripe's test card whose charges succeed and are then disputed by the
# cardholder as fraudulent, for their full amount (Stripe docs, "Testing":
# disputes). Its authorization is an ordinary approval; only the card
# network needs to know, once the charge is captured.
DISPUTED_LATER = "4000000000000259"
DISPUTED_LATER_REASON = "fraudulent"

# A card of ours (Stripe publishes none for this): its authorizations are
# approved, but the issuer declines every incremental authorization of them
# (card_declined, insufficient_funds), so a declined increment can be tried.
INCREMENT_DECLINED = "4000000000006223"

# Cards whose authorization needs the cardholder to pass a 3-D Secure
# challenge first (Stripe's test cards for "authentication required").
THREE_D_SECURE_REQUIRED = frozenset({"4000002500003155", "4000000000003220"})


def outcome_for(
    number: str, exp_month: int, exp_year: int, today_year: int, today_month: int
) -> CardOutcome:
    """Decide an authorization for a card, as Stripe's test mode would.

    Checks in order: the checksum, then the fixed test-card outcomes, then
    expiry (a card is good through the end of its expiry month). The caller
    passes today so that the function stays pure and testable.
    """
    if not luhn_valid(number):
        return INCORRECT_NUMBER
    fixed_outcome = TEST_CARD_OUTCOMES.get(number)
    if fixed_outcome is not None:
        return fixed_outcome
    if (exp_year, exp_month) < (today_year, today_month):
        return EXPIRED_CARD
    return APPROVED
