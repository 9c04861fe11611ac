"""Routes for webhook endpoints: create, retrieve, list, update and delete.

Endpoints are rows of their own in PostgreSQL. The signing secret of an
endpoint is sealed at rest and shown in the answer to the create call (and
to an idempotent replay of it within the idempotency window), never by a
retrieve or a list.
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

import msgspec
from quart import Response

from engine import ids, notifications
from engine.intent import check_metadata
from gateway import errors, expansions, objects, pages, params
from gateway.calls import ID_CHARS_MAX, Calls
from gateway.errors import ApiError
from gateway.openapi import api
from gateway.responses import json_response
from gateway.routing import Routes
from shards.idempotency import TTL_S_DEFAULT
from shards.node import Node
from shards.webhooks import EndpointUrlError, check_url
from store.rows import ApiKeyRow, WebhookEndpointRow

ENDPOINTS_PER_MERCHANT_MAX = 16
DESCRIPTION_CHARS_MAX = 5000

ROUTES = Routes()


@ROUTES.post("/v1/webhook_endpoints")
@api("Create a webhook endpoint; its secret is in this answer only", objects.WebhookEndpointObject, body=params.CreateWebhookEndpoint)
async def create_endpoint(calls: Calls, key: ApiKeyRow) -> Response:
    node = calls.node
    values = params.convert(await calls.read_body(), params.CreateWebhookEndpoint)
    url = _url(values.url, key.livemode, _private_allowed(node))
    enabled = _enabled_events(values.enabled_events)
    description = _text(values.description, "description")
    metadata = _metadata(values.metadata)
    now_s = int(time.time())
    idempotency_key = calls.idempotency_key()
    if idempotency_key is None:
        endpoint_id = node.new_id("we")
    else:
        # The same key makes the same endpoint: a retried create finds it.
        digest = hashlib.sha256(f"{key.merchant_id}\x00{key.livemode}\x00{idempotency_key}".encode()).digest()
        endpoint_id = ids.make_id("we", 0, 0, digest[: ids.RANDOM_BYTES])
        existing = await node.store.webhooks.get_endpoint(endpoint_id)
        if existing is not None:
            return _replayed(node, existing, (url, enabled, description, metadata), now_s)
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
    return json_response(objects.webhook_endpoint(row, secret))


@ROUTES.get("/v1/webhook_endpoints/<endpoint_id>")
@api("Retrieve a webhook endpoint", objects.WebhookEndpointObject)
async def get_endpoint(calls: Calls, key: ApiKeyRow, endpoint_id: str) -> Response:
    return json_response(objects.webhook_endpoint(await _owned_endpoint(calls.node, endpoint_id, key)))


@ROUTES.get("/v1/webhook_endpoints")
@api("List webhook endpoints, newest first", objects.ListObject[objects.WebhookEndpointObject], query=params.ListParams)
async def list_endpoints(calls: Calls, key: ApiKeyRow) -> Response:
    values = calls.query(params.ListParams)
    expansions.check(values.expand, "list", "webhook_endpoint")
    rows = await calls.node.store.webhooks.list_endpoints(key.merchant_id, key.livemode, ENDPOINTS_PER_MERCHANT_MAX * 4)
    body = pages.page(
        rows,
        values,
        url="/v1/webhook_endpoints",
        kind="webhook_endpoint",
        key=lambda row: (row.created_s, row.id),
        render=lambda row: objects.webhook_endpoint(row),
    )
    return json_response(body)


@ROUTES.post("/v1/webhook_endpoints/<endpoint_id>")
@api("Update a webhook endpoint", objects.WebhookEndpointObject, body=params.UpdateWebhookEndpoint)
async def update_endpoint(calls: Calls, key: ApiKeyRow, endpoint_id: str) -> Response:
    node = calls.node
    row = await _owned_endpoint(node, endpoint_id, key)
    values = params.convert(await calls.read_body(), params.UpdateWebhookEndpoint)
    changes: dict[str, Any] = {}
    if values.url is not None:
        changes["url"] = _url(values.url, key.livemode, _private_allowed(node))
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
    return json_response(objects.webhook_endpoint(row))


@ROUTES.delete("/v1/webhook_endpoints/<endpoint_id>")
@api("Delete a webhook endpoint", objects.DeletedObject)
async def delete_endpoint(calls: Calls, key: ApiKeyRow, endpoint_id: str) -> Response:
    node = calls.node
    row = await _owned_endpoint(node, endpoint_id, key)
    await node.store.webhooks.delete_endpoint(row.id)
    if node.events is not None:
        node.events.endpoints_changed()
    return json_response(objects.DeletedObject(id=row.id, deleted=True, object="webhook_endpoint"))


def _replayed(node: Node, existing: WebhookEndpointRow, wanted: tuple[Any, ...], now_s: int) -> Response:
    """The endpoint an earlier create with the same Idempotency-Key made, with
    its secret while the idempotency window lasts; raises idempotency_error
    when this create asks for another (url, events, description, metadata)."""
    if (existing.url, existing.enabled_events, existing.description, existing.metadata) != wanted:
        raise errors.idempotency_key_reused()
    shown = node.vault.unseal(existing.secret_sealed, existing.id) if existing.created_s > now_s - TTL_S_DEFAULT else None
    return json_response(objects.webhook_endpoint(existing, shown), headers={"Idempotent-Replayed": "true"})


async def _owned_endpoint(node: Node, endpoint_id: str, key: ApiKeyRow) -> WebhookEndpointRow:
    """The caller's endpoint; raises a 404 otherwise."""
    row = None
    if len(endpoint_id) <= ID_CHARS_MAX and ids.parse_id(endpoint_id, "we") is not None:
        row = await node.store.webhooks.get_endpoint(endpoint_id)
    if row is None or row.merchant_id != key.merchant_id or row.livemode != key.livemode:
        raise errors.not_found("webhook_endpoint", endpoint_id, "id")
    return row


def _private_allowed(node: Node) -> bool:
    """Whether this node lets endpoints point at internal addresses
    (`payments up --allow-private-webhooks`); False while it runs no
    event workers."""
    return node.events is not None and node.events.dispatcher.config.allow_private


def _enabled_events(values: list[str]) -> tuple[str, ...]:
    """The event types an endpoint asks for, without repeats; raises a 400
    when there are none or one is unknown."""
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
    """The endpoint's URL, checked; raises a 400 naming `url` otherwise."""
    try:
        return check_url(url, livemode, allow_private)
    except EndpointUrlError as error:
        raise errors.invalid_request(str(error), param="url", code="url_invalid") from None


def _text(value: str | None, param: str) -> str | None:
    """`value` if it is not too long; raises a 400 naming `param` otherwise."""
    if value is not None and len(value) > DESCRIPTION_CHARS_MAX:
        raise errors.invalid_request(f"{param} must be at most {DESCRIPTION_CHARS_MAX} characters.", param=param, code="parameter_invalid")
    return value


def _metadata(values: dict[str, str]) -> dict[str, str]:
    """`values` if they are within Stripe's metadata bounds; raises a 400 otherwise."""
    if not check_metadata(values):
        raise errors.invalid_request("Invalid metadata: at most 50 keys of 40 characters, values of 500.", param="metadata", code="parameter_invalid")
    return values
