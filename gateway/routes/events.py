"""Routes for events: retrieve, list and retry. Events are read from
PostgreSQL, where they are kept 30 days; older ones are answered as missing.
"""

from __future__ import annotations

import time
from typing import Any

from quart import Response

from engine import ids
from gateway import errors, objects, params
from gateway.calls import ID_CHARS_MAX, Calls
from gateway.openapi import api
from gateway.responses import json_response
from gateway.routing import Routes
from shards.node import Node
from store.rows import ApiKeyRow, EventQuery

EVENTS_KEPT_S = 30 * 86_400
EVENT_TYPES_PER_QUERY_MAX = 20

ROUTES = Routes()


@ROUTES.get("/v1/events/<event_id>")
@api("Retrieve an event (kept 30 days)", objects.EventObject)
async def get_event(calls: Calls, key: ApiKeyRow, event_id: str) -> Response:
    row = await _owned_event(calls.node, event_id, key)
    return json_response(objects.event(row))


@ROUTES.get("/v1/events")
@api("List events, newest first (the last 30 days)", objects.ListObject[objects.EventObject], query=params.EventListParams)
async def list_events(calls: Calls, key: ApiKeyRow) -> Response:
    node = calls.node
    values = calls.query(params.EventListParams)
    if values.starting_after is not None and values.ending_before is not None:
        raise errors.invalid_request("Pass starting_after or ending_before, not both.", param="ending_before")
    now_s = int(time.time())
    since_s, until_s = _created_bounds(values.created, now_s)
    after = before = None
    if values.starting_after is not None:
        cursor = await _owned_event(node, values.starting_after, key, "starting_after")
        after = (cursor.created_s, cursor.id)
    elif values.ending_before is not None:
        cursor = await _owned_event(node, values.ending_before, key, "ending_before")
        before = (cursor.created_s, cursor.id)
    query = EventQuery(
        merchant_id=key.merchant_id,
        livemode=key.livemode,
        since_s=since_s,
        limit=values.limit + 1,
        types=_type_patterns(values),
        after=after,
        before=before,
        until_s=until_s,
        delivery_success=values.delivery_success,
    )
    rows = await node.store.events.matching(query)
    has_more = len(rows) > values.limit
    rows = rows[1:] if before is not None and has_more else rows[: values.limit]
    page = objects.ListObject(url="/v1/events", has_more=has_more, data=[objects.event(row) for row in rows])
    return json_response(page)


@ROUTES.post("/v1/events/<event_id>/retry")
@api("Send an event again to its endpoints (the dead-letter list's retry)", objects.RetriedEvent, body=params.NoParams)
async def retry_event(calls: Calls, key: ApiKeyRow, event_id: str) -> Response:
    node = calls.node
    params.convert(await calls.read_body(), params.NoParams)
    row = await _owned_event(node, event_id, key)
    if node.events is None:
        raise errors.unavailable("Events are not served by this node right now. Retry shortly.")
    endpoints = await node.events.retry(row)
    return json_response(objects.RetriedEvent(id=row.id, endpoints=endpoints))


async def _owned_event(node: Node, event_id: str, key: ApiKeyRow, param: str | None = None) -> Any:
    """The caller's event of the last 30 days. Otherwise raises a 404, or,
    for an event named by the list parameter `param`, a 400 naming it."""
    row = None
    if len(event_id) <= ID_CHARS_MAX and ids.parse_id(event_id, "evt") is not None:
        row = await node.store.events.get(event_id)
    if row is None or row.merchant_id != key.merchant_id or row.livemode != key.livemode or row.created_s < time.time() - EVENTS_KEPT_S:
        if param is not None:
            raise errors.invalid_request(f"No such event: '{event_id[:64]}'", param=param, code="resource_missing")
        raise errors.not_found("event", event_id, "id")
    return row


def _type_patterns(values: params.EventListParams) -> tuple[str, ...]:
    """SQL LIKE patterns for the type filter (`payment_intent.*` -> `payment_intent.%`)."""
    wanted = ([values.type] if values.type is not None else []) + list(values.types or [])
    if len(wanted) > EVENT_TYPES_PER_QUERY_MAX:
        raise errors.invalid_request(f"At most {EVENT_TYPES_PER_QUERY_MAX} types.", param="types", code="parameter_invalid")
    patterns = []
    for value in wanted:
        if len(value) > 100 or not value.replace(".", "").replace("_", "").replace("*", "").isalnum():
            raise errors.invalid_request("Invalid event type.", param="type", code="parameter_invalid")
        patterns.append(value.replace("*", "%"))
    return tuple(patterns)


def _created_bounds(created: int | params.CreatedFilter | None, now_s: int) -> tuple[int, int | None]:
    """(since_s, until_s) of a `created` filter, never older than events are kept."""
    since = now_s - EVENTS_KEPT_S
    if created is None:
        return since, None
    if isinstance(created, int):
        return max(since, created), created
    low = max(x for x in (since, created.gte, None if created.gt is None else created.gt + 1) if x is not None)
    highs = [x for x in (created.lte, None if created.lt is None else created.lt - 1) if x is not None]
    return low, min(highs) if highs else None
