"""Routes for disputes: retrieve and list. A dispute lives inside the intent
it disputes; the API only reads them. In a cluster, lists cover every node
(gateway/lists.py; a cursor naming another node's dispute is not placed
yet), and a dispute another node holds is found by asking the others."""

from __future__ import annotations

from quart import Response

from gateway import objects, ownership, params
from gateway.calls import Calls
from gateway.errors import ApiError
from gateway.forwarding import forwarded_from
from gateway.openapi import api
from gateway.responses import raw_response
from gateway.routes.refunds import child_page, expanded
from gateway.routing import Routes
from store.rows import ApiKeyRow

ROUTES = Routes()


@ROUTES.get("/v1/disputes/<dispute_id>")
@api("Retrieve a dispute", objects.DisputeObject, query=params.RetrieveParams)
async def retrieve_dispute(calls: Calls, key: ApiKeyRow, dispute_id: str) -> Response:
    try:
        answer = ownership.child_object(key, dispute_id, "dispute", calls.node.dispute, objects.dispute)
        return await expanded(calls, key, answer, "dispute")
    except ApiError as missing:
        # Dispute ids come from the network and name no partition: in a
        # cluster, the node holding it is found by asking every one.
        if missing.status != 404 or calls.node.membership is None or forwarded_from(calls.node) is not None:
            raise
        for answer in await calls.forwarder.peer_answers():
            if answer.status_code == 200:
                return raw_response(200, answer.content)
        raise


@ROUTES.get("/v1/disputes")
@api("List disputes, newest first", objects.ListObject[objects.DisputeObject], query=params.ListParams)
async def list_disputes(calls: Calls, key: ApiKeyRow) -> Response:
    return await child_page(calls, key, "disputes", "/v1/disputes", "dispute", objects.dispute)
