"""Stripe's routes this server does not serve, answered as such.

An integration written against Stripe calls more of Stripe than we serve. A
call to a Stripe resource we do not have (customers, charges, products, ...)
or to an operation of a served resource we do not have (applying a
customer balance, verifying microdeposits, ...) is answered with a Stripe-shaped 404 that
says so, after the caller's key is checked like any other call. Without
these routes such a call would be read as something else: a 405, or
`/v1/payment_intents/search` as the retrieval of an intent named "search".
None of these routes is published in /openapi.json: they serve nothing.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from quart import Response, request

from gateway import errors
from gateway.calls import Calls
from gateway.routing import Routes
from store.rows import ApiKeyRow

ROUTES = Routes()

# What the server does serve, for the message.
SERVED = "PaymentIntents, Charges, PaymentMethods, Customers, SetupIntents, Refunds, Disputes, Events, Webhook endpoints, the Balance and balance transactions"

# Stripe resources (paths under /v1/) with nothing of them served here.
UNSERVED_RESOURCES = (
    "account",
    "accounts",
    "application_fees",
    "billing_portal/sessions",
    "checkout/sessions",
    "coupons",
    "credit_notes",
    "ephemeral_keys",
    "files",
    "invoiceitems",
    "invoices",
    "mandates",
    "payment_links",
    "payouts",
    "plans",
    "prices",
    "products",
    "promotion_codes",
    "quotes",
    "setup_attempts",
    "sources",
    "subscription_items",
    "subscriptions",
    "tax_rates",
    "tokens",
    "topups",
    "transfers",
)

# Operations Stripe has on resources that are served here, which are not.
UNSERVED_OPERATIONS = (
    ("POST", "/v1/payment_intents/<intent_id>/apply_customer_balance", "Applying a customer balance"),
    ("POST", "/v1/payment_intents/<intent_id>/verify_microdeposits", "Verifying microdeposits"),
    ("POST", "/v1/charges", "Creating a charge without a PaymentIntent"),
    ("POST", "/v1/charges/<charge_id>/refund", "Refunding through the charge (POST /v1/refunds with charge=)"),
    ("GET", "/v1/charges/<charge_id>/refunds", "Listing a charge's refunds (GET /v1/refunds with payment_intent=)"),
    ("POST", "/v1/charges/<charge_id>/refunds", "Refunding through the charge (POST /v1/refunds with charge=)"),
    ("GET", "/v1/charges/<charge_id>/refunds/<refund_id>", "Retrieving a refund through its charge (GET /v1/refunds/{id})"),
    ("GET", "/v1/charges/<charge_id>/dispute", "Retrieving a charge's dispute (GET /v1/disputes)"),
    ("POST", "/v1/charges/<charge_id>/dispute", "Updating a dispute (submitting evidence)"),
    ("POST", "/v1/charges/<charge_id>/dispute/close", "Closing a dispute"),
    ("POST", "/v1/payment_methods/<payment_method_id>", "Updating a PaymentMethod"),
    ("POST", "/v1/setup_intents/<setup_intent_id>/verify_microdeposits", "Verifying microdeposits"),
    ("GET", "/v1/balance/history", "The balance history (use /v1/balance_transactions)"),
    ("GET", "/v1/balance/history/<transaction_id>", "The balance history (use /v1/balance_transactions)"),
    ("GET", "/v1/customers/search", "Searching customers"),
)

# A customer's parts that belong to Billing and the older Sources API, not
# served: without these routes a call to one would be an unknown URL, and
# `/v1/customers/search` the retrieval of a customer named "search".
UNSERVED_CUSTOMER_PARTS = (
    "balance_transactions",
    "bank_accounts",
    "cards",
    "cash_balance",
    "cash_balance_transactions",
    "discount",
    "funding_instructions",
    "sources",
    "subscriptions",
    "tax_ids",
)


def not_supported(what: str) -> errors.ApiError:
    """The answer to a Stripe call this server does not serve."""
    return errors.invalid_request(
        f"{what} is not supported by this server ({request.method} {request.path[:200]}). It serves {SERVED}; /openapi.json lists its routes.",
        status=404,
    )


async def unserved_resource(calls: Calls, key: ApiKeyRow, **path: str) -> Response:
    resource = request.path.removeprefix("/v1/")
    name = next(r for r in sorted(UNSERVED_RESOURCES, key=len, reverse=True) if resource == r or resource.startswith(r + "/"))
    raise not_supported(f"The {name} API")


def _unserved_operation(what: str) -> Callable[..., Awaitable[Response]]:
    async def unserved_operation(calls: Calls, key: ApiKeyRow, **path: str) -> Response:
        raise not_supported(what)

    return unserved_operation


def _endpoint(method: str, rule: str) -> str:
    """A distinct endpoint name for each unserved method and rule."""
    return f"unsupported_{method.lower()}_" + re.sub(r"[^a-z]+", "_", rule.removeprefix("/v1/")).strip("_")


for _resource in UNSERVED_RESOURCES:
    for _rule in (f"/v1/{_resource}", f"/v1/{_resource}/<path:rest>"):
        for _method in ("GET", "POST", "DELETE"):
            ROUTES.route(_method, _rule, endpoint=_endpoint(_method, _rule))(unserved_resource)

for _method, _rule, _what in UNSERVED_OPERATIONS:
    ROUTES.route(_method, _rule, endpoint=_endpoint(_method, _rule))(_unserved_operation(_what))

for _part in UNSERVED_CUSTOMER_PARTS:
    for _rule in (f"/v1/customers/<customer_id>/{_part}", f"/v1/customers/<customer_id>/{_part}/<path:rest>"):
        for _method in ("GET", "POST", "DELETE"):
            ROUTES.route(_method, _rule, endpoint=_endpoint(_method, _rule))(_unserved_operation(f"A customer's {_part}"))
