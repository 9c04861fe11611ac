"""Search: `GET /v1/payment_intents/search` and `GET /v1/charges/search`,
in Stripe's query language (gateway/search_query.py).

Results run newest first (by creation, then id, as lists do) and come in
pages of `limit`; `next_page` is an opaque cursor naming the last object
shown, so the next page starts after it wherever it lives. Unlike Stripe's
index, which lags its writes by up to a minute, search reads what the
partitions hold now: an intent is found the moment its create answered.

Over several nodes, as the lists do (gateway/lists.py): the receiving node
searches its own partitions, asks each live peer the same request (a signed
request, answered from the peer's partitions alone), and takes the same
window over all the answers.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import msgspec
from quart import Response

from engine import charges, ids
from engine.intent import Attempt, AttemptStatus, PaymentIntent
from gateway import errors, expansions, objects, params, search_query
from gateway.calls import Calls
from gateway.forwarding import forwarded_from
from gateway.lists import peer_refusal
from gateway.openapi import api
from gateway.responses import json_response
from gateway.routing import Routes
from store.rows import ApiKeyRow

ROUTES = Routes()

T = TypeVar("T")
# A cursor is "page_" and the base64 of "created:id" of the last object shown.
PAGE_PREFIX = "page_"


def intent_lookup(intent: PaymentIntent) -> search_query.Lookup:
    """An intent's fields, as search reads them."""

    def lookup(field: str, key: str | None) -> str | int | bool | None:
        if field == "metadata":
            assert key is not None
            return intent.metadata.get(key)
        return {
            "amount": intent.amount,
            "created": intent.created_s,
            "currency": intent.currency,
            "customer": intent.customer_id,
            "status": str(intent.status),
        }[field]

    return lookup


def charge_lookup(intent: PaymentIntent, attempt: Attempt) -> search_query.Lookup:
    """A charge's fields (engine.charges), as search reads them."""

    def lookup(field: str, key: str | None) -> str | int | bool | None:
        if field == "metadata":
            assert key is not None
            return charges.details(intent, attempt).metadata.get(key)
        if field == "refunded":
            return attempt.status is AttemptStatus.succeeded and charges.amount_refunded(intent, attempt) >= attempt.amount
        status = {AttemptStatus.succeeded: "succeeded", AttemptStatus.failed: "failed"}.get(attempt.status, "pending")
        return {
            "amount": attempt.amount,
            "created": objects.charge_created_s(attempt),
            "currency": intent.currency,
            "customer": intent.customer_id,
            "disputed": charges.is_disputed(intent, attempt),
            "payment_intent": intent.id,
            "status": status,
        }[field]

    return lookup


def page_cursor(created_s: int, object_id: str) -> str:
    return PAGE_PREFIX + base64.urlsafe_b64encode(f"{created_s}:{object_id}".encode()).decode().rstrip("=")


def page_position(page: str | None) -> tuple[int, str] | None:
    """The (created, id) a `page` cursor starts after; raises Stripe's 400
    for one this server did not make."""
    if page is None:
        return None
    refusal = errors.invalid_request("Invalid page: it must be a next_page value from an earlier search.", param="page")
    if not page.startswith(PAGE_PREFIX):
        raise refusal
    encoded = page.removeprefix(PAGE_PREFIX)
    try:
        created, separator, object_id = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise refusal from None
    # isascii too: str.isdigit takes superscripts and other digits int() cannot read.
    if not separator or not (created.isascii() and created.isdigit()) or len(created) > 12 or not object_id:
        raise refusal
    return int(created), object_id


def parsed_query(values: params.SearchParams, fields: Mapping[str, search_query.FieldType], resource: str) -> search_query.Query:
    try:
        return search_query.parse(values.query, fields, resource)
    except search_query.QueryError as error:
        raise errors.invalid_request(str(error), param="query") from None


def local_page(
    items: Iterable[T],
    values: params.SearchParams,
    *,
    url: str,
    key: Callable[[T], tuple[int, str]],
    render: Callable[[T], Any],
) -> dict[str, Any]:
    """This node's page: its matching `items` after the cursor, newest first."""
    after = page_position(values.page)
    keyed = sorted(((key(item), item) for item in items), key=lambda pair: pair[0], reverse=True)
    if after is not None:
        keyed = [pair for pair in keyed if pair[0] < after]
    chosen = keyed[: values.limit]
    has_more = len(keyed) > values.limit
    data = [msgspec.to_builtins(render(item)) for _, item in chosen]
    next_page = page_cursor(*chosen[-1][0]) if has_more and chosen else None
    return {"object": "search_result", "url": url, "has_more": has_more, "data": data, "next_page": next_page}


def merge(pages: Sequence[dict[str, Any]], limit: int) -> dict[str, Any]:
    """One page from the pages several nodes made for the same search."""
    items = sorted((item for one in pages for item in one["data"]), key=lambda item: (item["created"], item["id"]), reverse=True)
    chosen = items[:limit]
    has_more = len(items) > limit or any(one["has_more"] for one in pages)
    next_page = page_cursor(chosen[-1]["created"], chosen[-1]["id"]) if has_more and chosen else None
    return {**pages[0], "has_more": has_more, "data": chosen, "next_page": next_page}


async def cluster_search(calls: Calls, key: ApiKeyRow, values: params.SearchParams, local: dict[str, Any], kind: str) -> dict[str, Any]:
    """`local` with the query's expansions, merged with every peer's page
    for the same request (this node's alone outside a cluster, or when a
    peer asks)."""
    paths = expansions.check(values.expand, "list", kind)
    expansion = expansions.Expansion(calls.node, key)
    item_paths = [path.removeprefix("data.") for path in paths if path.startswith("data.")]
    for item in local["data"]:
        await expansion.apply(item, item_paths)
    node = calls.node
    if node.membership is None or forwarded_from(node) is not None:
        return local
    collected = [local]
    for answer in await calls.forwarder.peer_answers():
        if answer.status_code != 200:
            raise peer_refusal(answer.status_code, answer.content)
        collected.append(msgspec.json.decode(answer.content))
    return merge(collected, values.limit)


@ROUTES.get("/v1/payment_intents/search")
@api("Search PaymentIntents with Stripe's query language, newest first", objects.SearchResultObject[objects.PaymentIntentObject], query=params.SearchParams)
async def search_payment_intents(calls: Calls, key: ApiKeyRow) -> Response:
    values = calls.query(params.SearchParams)
    query = parsed_query(values, search_query.PAYMENT_INTENT_FIELDS, "payment intents")
    intents = calls.node.merchant_intents(key.merchant_id, key.livemode)
    found = (intent for intent in intents if search_query.matches(query, intent_lookup(intent)))
    local = local_page(found, values, url="/v1/payment_intents/search", key=lambda i: (i.created_s, i.id), render=objects.payment_intent)
    return json_response(await cluster_search(calls, key, values, local, "payment_intent"))


@ROUTES.get("/v1/charges/search")
@api("Search charges with Stripe's query language, newest first", objects.SearchResultObject[objects.ChargeObject], query=params.SearchParams)
async def search_charges(calls: Calls, key: ApiKeyRow) -> Response:
    values = calls.query(params.SearchParams)
    query = parsed_query(values, search_query.CHARGE_FIELDS, "charges")
    intents = calls.node.merchant_intents(key.merchant_id, key.livemode)
    found = (
        (intent, attempt)
        for intent in intents
        for attempt in charges.charges(intent)
        if search_query.matches(query, charge_lookup(intent, attempt))
    )
    local = local_page(
        found,
        values,
        url="/v1/charges/search",
        key=lambda pair: (objects.charge_created_s(pair[1]), ids.charge_id(pair[1].id)),
        render=lambda pair: objects.charge(*pair),
    )
    for item in local["data"]:
        row = await calls.node.payment_method(item["payment_method"])
        if row is not None and row.merchant_id == key.merchant_id:
            item["payment_method_details"] = msgspec.to_builtins(objects.charge_card_details(row))
    return json_response(await cluster_search(calls, key, values, local, "charge"))
