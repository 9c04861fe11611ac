"""Shape checks: the first rung of every ladder, which needs no state.

A command whose fields are malformed (an amount out of range, an unknown
currency, oversized metadata, a reason Stripe does not list) is refused
before anything is looked up. The gateway runs `check_create_shape` itself,
before a request counts as executed, and the deciders run it again; webhook
endpoints reuse `check_metadata`. Which `return_url` is allowed is
`engine.urls`.
"""

from __future__ import annotations

from engine import money
from engine.decisions import Decision, refuse
from engine.results import Result
from engine.urls import return_url_allowed

METADATA_KEYS_MAX = 50
METADATA_KEY_CHARS_MAX = 40
METADATA_VALUE_CHARS_MAX = 500
DESCRIPTION_CHARS_MAX = 1000

CANCELLATION_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer", "abandoned"})
REFUND_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer"})


def check_metadata(metadata: dict[str, str]) -> bool:
    if len(metadata) > METADATA_KEYS_MAX:
        return False
    return all(
        0 < len(key) <= METADATA_KEY_CHARS_MAX
        and len(value) <= METADATA_VALUE_CHARS_MAX
        and "\x00" not in key
        and "\x00" not in value
        for key, value in metadata.items()
    )


def check_text(text: str | None, chars_max: int) -> bool:
    # The journal is PostgreSQL text, which cannot hold NUL.
    return text is None or (len(text) <= chars_max and "\x00" not in text)


def check_create_shape(
    amount: int,
    currency: str,
    metadata: dict[str, str],
    description: str | None,
    return_url: str | None = None,
    livemode: bool = False,
) -> Decision | None:
    """The shape checks of a create, which need no state: the gateway runs
    them before a request counts as executed (so a refusal stores no
    idempotency record), and decide runs them again."""
    if not money.amount_in_range(amount):
        return refuse(Result.amount_out_of_range, "amount")
    if not money.is_currency(currency):
        return refuse(Result.currency_unknown, "currency")
    if amount < money.minimum_charge_minor(currency):
        return refuse(Result.amount_too_small, "amount")
    if not check_metadata(metadata):
        return refuse(Result.metadata_invalid, "metadata")
    if not check_text(description, DESCRIPTION_CHARS_MAX):
        return refuse(Result.metadata_invalid, "description")
    if return_url is not None and not return_url_allowed(return_url, livemode):
        return refuse(Result.return_url_invalid, "return_url")
    return None
