"""Routes for disputes: retrieve and list. A dispute lives inside the intent
it disputes; the API only reads them."""

from __future__ import annotations

from quart import Response

from gateway import objects, ownership, params
from gateway.calls import Calls
from gateway.openapi import api
from gateway.routing import Routes
from store.rows import ApiKeyRow

ROUTES = Routes()


@ROUTES.get("/v1/disputes/<dispute_id>")
@api("Retrieve a dispute", objects.DisputeObject)
async def retrieve_dispute(calls: Calls, key: ApiKeyRow, dispute_id: str) -> Response:
    return ownership.child_object(key, dispute_id, "dispute", calls.node.dispute, objects.dispute)


@ROUTES.get("/v1/disputes")
@api("List disputes, newest first", objects.ListObject[objects.DisputeObject], query=params.ListParams)
async def list_disputes(calls: Calls, key: ApiKeyRow) -> Response:
    return await ownership.child_page(calls, key, "disputes", "/v1/disputes", "dispute", objects.dispute)
