"""Routes for events and webhook endpoints.

Events are read from PostgreSQL (they are kept 30 days there); endpoints
are rows of their own. The signing secret of an endpoint is sealed at rest
and shown in the answer to the create call (and to an idempotent replay of
it within the idempotency window), never by a retrieve or a list.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from quart import Response, request
from quart_trio import QuartTrio

from engine import ids, notifications
from engine.intent import check_metadata
from gateway import errors, objects, pages, params
from gateway.errors import ApiError
from gateway.forms import BodyError, decode_form
from gateway.openapi import api
from shards.idempotency import KEY_CHARS_MAX, TTL_S_DEFAULT
from shards.node import Node
from shards.webhooks import EndpointUrlError, check_url
from store.rows import EventQuery, WebhookEndpointRow

EVENTS_KEPT_S = 30 * 86_400
ENDPOINTS_PER_MERCHANT_MAX = 16
DESCRIPTION_CHARS_MAX = 5000
ID_CHARS_MAX = 255

Authenticate = Callable[..., Awaitable[Any]]


def _enabled_events(values: list[str]) -> tuple[str, ...]:
    if not values:
        raise errors.invalid_request("Missing required param: enabled_events.", param="enabled_events", code="parameter_missing")
    if len(values) > len(notifications.EVENT_TYPES) + 1:
        raise errors.invalid_request("Too many enabled_events.", param="enabled_events", code="parameter_invalid")
    for value in values:
        if value != "*" and value not in notifications.EVENT_TYPES:
            raise errors.invalid_request(
                f"Invalid event type in enabled_events: '{value[:64]}'.", param="enabled_events", code="parameter_invalid"
            )
    return tuple(dict.fromkeys(values))


def _url(url: str, livemode: bool, allow_private: bool) -> str:
    try:
        return check_url(url, livemode, allow_private)
    except EndpointUrlError as error:
        raise errors.invalid_request(str(error), param="url", code="url_invalid") from None


def _text(value: str | None, param: str) -> str | None:
    if value is not None and len(value) > DESCRIPTION_CHARS_MAX:
        raise errors.invalid_request(f"{param} must be at most {DESCRIPTION_CHARS_MAX} characters.", param=param, code="parameter_invalid")
    return value


def _metadata(values: dict[str, str]) -> dict[str, str]:
    if not check_metadata(values):
        raise errors.invalid_request("Invalid metadata: at most 50 keys of 40 characters, values of 500.", param="metadata", code="parameter_invalid")
    return values


def _type_patterns(values: params.EventListParams) -> tuple[str, ...]:
    """SQL LIKE patterns for the type filter (`payment_intent.*` -> `payment_intent.%`)."""
    wanted = ([values.type] if values.type is not None else []) + list(values.types or [])
    if len(wanted) > 20:
        raise errors.invalid_request("At most 20 types.", param="types", code="parameter_invalid")
    patterns = []
    for value in wanted:
        if len(value) > 100 or not value.replace(".", "").replace("_", "").replace("*", "").isalnum():
            raise errors.invalid_request("Invalid event type.", param="type", code="parameter_invalid")
        patterns.append(value.replace("*", "%"))
    return tuple(patterns)


def _created_bounds(created: int | params.CreatedFilter | None, now_s: int) -> tuple[int, int | None]:
    since = now_s - EVENTS_KEPT_S
    if created is None:
        return since, None
    if isinstance(created, int):
        return max(since, created), created
    low = max(x for x in (since, created.gte, None if created.gt is None else created.gt + 1) if x is not None)
    highs = [x for x in (created.lte, None if created.lt is None else created.lt - 1) if x is not None]
    return low, min(highs) if highs else None


def register(app: QuartTrio, node: Node, authenticate: Authenticate, read_body: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    def workers() -> Any:
        if node.events is None:
            raise errors.unavailable("Events are not served by this node right now. Retry shortly.")
        return node.events

    def private_allowed() -> bool:
        """Whether this node lets endpoints point at internal addresses
        (`payments up --allow-private-webhooks`); False while it runs no
        event workers."""
        return node.events is not None and node.events.dispatcher.config.allow_private

    def query_params(schema: type) -> Any:
        try:
            values = decode_form(request.query_string)
        except BodyError as error:
            raise errors.invalid_request(error.message, param=error.param, code=error.code) from None
        return params.convert(values, schema)

    async def owned_event(event_id: str, key: Any, param: str | None = None) -> Any:
        row = None
        if len(event_id) <= ID_CHARS_MAX and ids.parse_id(event_id, "evt") is not None:
            row = await node.store.events.get(event_id)
        if row is None or row.merchant_id != key.merchant_id or row.livemode != key.livemode or row.created_s < time.time() - EVENTS_KEPT_S:
            if param is not None:
                raise errors.invalid_request(f"No such event: '{event_id[:64]}'", param=param, code="resource_missing")
            raise errors.not_found("event", event_id, "id")
        return row

    async def owned_endpoint(endpoint_id: str, key: Any) -> WebhookEndpointRow:
        row = None
        if len(endpoint_id) <= ID_CHARS_MAX and ids.parse_id(endpoint_id, "we") is not None:
            row = await node.store.webhooks.get_endpoint(endpoint_id)
        if row is None or row.merchant_id != key.merchant_id or row.livemode != key.livemode:
            raise errors.not_found("webhook_endpoint", endpoint_id, "id")
        return row

    # -------------------------------------------------------------- events

    @app.get("/v1/events/<event_id>")
    @api("Retrieve an event (kept 30 days)", objects.EventObject)
    async def get_event(event_id: str) -> Response:
        key = await authenticate()
        row = await owned_event(event_id, key)
        return _json(objects.event(row))

    @app.get("/v1/events")
    @api("List events, newest first (the last 30 days)", objects.ListObject[objects.EventObject], query=params.EventListParams)
    async def list_events() -> Response:
        key = await authenticate()
        values = query_params(params.EventListParams)
        if values.starting_after is not None and values.ending_before is not None:
            raise errors.invalid_request("Pass starting_after or ending_before, not both.", param="ending_before")
        now_s = int(time.time())
        since_s, until_s = _created_bounds(values.created, now_s)
        after = before = None
        if values.starting_after is not None:
            cursor = await owned_event(values.starting_after, key, "starting_after")
            after = (cursor.created_s, cursor.id)
        elif values.ending_before is not None:
            cursor = await owned_event(values.ending_before, key, "ending_before")
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
        return _json(page)

    @app.post("/v1/events/<event_id>/retry")
    @api("Send an event again to its endpoints (the dead-letter list's retry)", objects.RetriedEvent, body=params.NoParams)
    async def retry_event(event_id: str) -> Response:
        key = await authenticate()
        params.convert(await read_body(), params.NoParams)
        row = await owned_event(event_id, key)
        endpoints = await workers().retry(row)
        return _json(objects.RetriedEvent(id=row.id, endpoints=endpoints))

    # ----------------------------------------------------------- endpoints

    @app.post("/v1/webhook_endpoints")
    @api("Create a webhook endpoint; its secret is in this answer only", objects.WebhookEndpointObject, body=params.CreateWebhookEndpoint)
    async def create_endpoint() -> Response:
        key = await authenticate()
        values = params.convert(await read_body(), params.CreateWebhookEndpoint)
        url = _url(values.url, key.livemode, private_allowed())
        enabled = _enabled_events(values.enabled_events)
        description = _text(values.description, "description")
        metadata = _metadata(values.metadata)
        now_s = int(time.time())
        idempotency_key = request.headers.get("Idempotency-Key")
        if idempotency_key is not None and not 1 <= len(idempotency_key) <= KEY_CHARS_MAX:
            raise errors.invalid_request(
                f"Idempotency keys are 1 to {KEY_CHARS_MAX} characters long.", code="idempotency_key_invalid"
            )
        if idempotency_key is None:
            endpoint_id = node.new_id("we")
        else:
            # The same key makes the same endpoint: a retried create finds it.
            digest = hashlib.sha256(f"{key.merchant_id}\x00{key.livemode}\x00{idempotency_key}".encode()).digest()
            endpoint_id = ids.make_id("we", 0, 0, digest[: ids.RANDOM_BYTES])
            existing = await node.store.webhooks.get_endpoint(endpoint_id)
            if existing is not None:
                same = (existing.url, existing.enabled_events, existing.description, existing.metadata) == (url, enabled, description, metadata)
                if not same:
                    raise ApiError(
                        400,
                        "idempotency_error",
                        "Keys for idempotent requests can only be used with the same parameters they were first used with.",
                        code="idempotency_key_reused",
                    )
                shown = node.vault.unseal(existing.secret_sealed, existing.id) if existing.created_s > now_s - TTL_S_DEFAULT else None
                return _json(objects.webhook_endpoint(existing, shown), {"Idempotent-Replayed": "true"})
        if len(await node.store.webhooks.list_endpoints(key.merchant_id, key.livemode, ENDPOINTS_PER_MERCHANT_MAX)) >= ENDPOINTS_PER_MERCHANT_MAX:
            raise errors.invalid_request(
                f"You have reached the maximum of {ENDPOINTS_PER_MERCHANT_MAX} webhook endpoints.", code="webhook_endpoints_limit"
            )
        secret = "whsec_" + base64.b32encode(node.random_bytes(30)).decode().lower()
        row = WebhookEndpointRow(
            id=endpoint_id,
            merchant_id=key.merchant_id,
            livemode=key.livemode,
            url=url,
            enabled_events=enabled,
            description=description,
            metadata=metadata,
            status="enabled",
            secret_sealed=node.vault.seal(secret, endpoint_id),
            created_s=now_s,
        )
        if not await node.store.webhooks.insert_endpoint(row):
            raise ApiError(400, "idempotency_error", "This idempotency key was already used.", code="idempotency_key_reused")
        if node.events is not None:
            node.events.endpoints_changed()
        return _json(objects.webhook_endpoint(row, secret))

    @app.get("/v1/webhook_endpoints/<endpoint_id>")
    @api("Retrieve a webhook endpoint", objects.WebhookEndpointObject)
    async def get_endpoint(endpoint_id: str) -> Response:
        key = await authenticate()
        return _json(objects.webhook_endpoint(await owned_endpoint(endpoint_id, key)))

    @app.get("/v1/webhook_endpoints")
    @api("List webhook endpoints, newest first", objects.ListObject[objects.WebhookEndpointObject], query=params.ListParams)
    async def list_endpoints() -> Response:
        key = await authenticate()
        values = query_params(params.ListParams)
        rows = await node.store.webhooks.list_endpoints(key.merchant_id, key.livemode, ENDPOINTS_PER_MERCHANT_MAX * 4)
        body = pages.page(
            rows,
            values,
            url="/v1/webhook_endpoints",
            kind="webhook_endpoint",
            key=lambda row: (row.created_s, row.id),
            render=lambda row: objects.webhook_endpoint(row),
        )
        return _json(body)

    @app.post("/v1/webhook_endpoints/<endpoint_id>")
    @api("Update a webhook endpoint", objects.WebhookEndpointObject, body=params.UpdateWebhookEndpoint)
    async def update_endpoint(endpoint_id: str) -> Response:
        key = await authenticate()
        row = await owned_endpoint(endpoint_id, key)
        values = params.convert(await read_body(), params.UpdateWebhookEndpoint)
        changes: dict[str, Any] = {}
        if values.url is not None:
            changes["url"] = _url(values.url, key.livemode, private_allowed())
        if values.enabled_events is not None:
            changes["enabled_events"] = _enabled_events(values.enabled_events)
        if values.description is not None:
            changes["description"] = _text(values.description, "description")
        if values.metadata is not None:
            changes["metadata"] = _metadata({**row.metadata, **values.metadata})
        if values.disabled is not None:
            changes["status"] = "disabled" if values.disabled else "enabled"
        row = msgspec.structs.replace(row, **changes)
        await node.store.webhooks.update_endpoint(row)
        if node.events is not None:
            node.events.endpoints_changed()
            if row.status == "enabled":
                node.events.dispatcher.wake([row.id])
        return _json(objects.webhook_endpoint(row))

    @app.delete("/v1/webhook_endpoints/<endpoint_id>")
    @api("Delete a webhook endpoint", objects.DeletedObject)
    async def delete_endpoint(endpoint_id: str) -> Response:
        key = await authenticate()
        row = await owned_endpoint(endpoint_id, key)
        await node.store.webhooks.delete_endpoint(row.id)
        if node.events is not None:
            node.events.endpoints_changed()
        return _json(objects.DeletedObject(id=row.id, deleted=True, object="webhook_endpoint"))


_encoder = msgspec.json.Encoder()


def _json(body: Any, headers: dict[str, str] | None = None) -> Response:
    response = Response(_encoder.encode(body), status=200, content_type="application/json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response
