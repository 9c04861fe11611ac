"""Routes for disputes: retrieve, list, update (the merchant's evidence and
metadata) and close (the merchant accepts the loss). A dispute lives inside
the intent it disputes, so an update or a close is a command on that intent
(engine/disputes.py), journaled and idempotent like any other. In a cluster,
lists cover every node (gateway/lists.py; a cursor naming another node's
dispute is not placed yet), and a dispute another node holds is found by
asking the others; a change to it is then forwarded to its owner."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import msgspec
from quart import Response

from engine import ids
from engine import intent as machine
from engine.results import Result
from gateway import errors, expansions, objects, ownership, params
from gateway.calls import ID_CHARS_MAX, Calls
from gateway.errors import ApiError
from gateway.forwarding import forwarded_from
from gateway.openapi import api
from gateway.responses import raw_response, render
from gateway.routes.refunds import child_page, expanded
from gateway.routing import Routes
from shards.actor import Outcome
from shards.node import NotServed
from store.rows import ApiKeyRow

ROUTES = Routes()

# What a dispute id the network gives looks like: safe to put in a lookup's path.
DISPUTE_ID = re.compile(r"dp_[A-Za-z0-9]{1,64}")


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


@ROUTES.post("/v1/disputes/<dispute_id>")
@api(
    "Update a dispute: stage or submit evidence (submit defaults to true when evidence is given), change its metadata",
    objects.DisputeObject,
    body=params.UpdateDispute,
)
async def update_dispute(calls: Calls, key: ApiKeyRow, dispute_id: str) -> Response:
    intent_id = await _disputed_intent(calls, key, dispute_id)
    body = await calls.read_body()
    values = params.convert(body, params.UpdateDispute)
    paths = expansions.check(values.expand, "dispute")
    evidence: dict[str, str] = {}
    if values.evidence is not None:
        evidence = {field: text for field, text in msgspec.structs.asdict(values.evidence).items() if text is not None}
    # As Stripe: evidence sent is submitted unless submit=false; a call
    # with metadata alone submits nothing unless it says submit=true.
    submit = values.submit if values.submit is not None else bool(evidence)
    command = machine.UpdateDispute(
        intent_id=intent_id,
        merchant_id=key.merchant_id,
        livemode=key.livemode,
        dispute_id=dispute_id,
        at_s=int(time.time()),
        evidence=evidence,
        metadata=values.metadata,
        submit=submit,
    )
    render_outcome = _render_dispute(dispute_id)
    async with expansions.replays_expanded(calls.node, key, paths), calls.idempotent(key, body, render_outcome) as claim:
        return await expansions.run(calls, key, command, claim, render_outcome, paths)


@ROUTES.post("/v1/disputes/<dispute_id>/close")
@api("Close a dispute: the merchant accepts it, and it is lost", objects.DisputeObject, body=params.ExpandParams)
async def close_dispute(calls: Calls, key: ApiKeyRow, dispute_id: str) -> Response:
    intent_id = await _disputed_intent(calls, key, dispute_id)
    body = await calls.read_body()
    values = params.convert(body, params.ExpandParams)
    paths = expansions.check(values.expand, "dispute")
    command = machine.CloseDispute(
        intent_id=intent_id, merchant_id=key.merchant_id, livemode=key.livemode, dispute_id=dispute_id, at_s=int(time.time())
    )
    render_outcome = _render_dispute(dispute_id)
    async with expansions.replays_expanded(calls.node, key, paths), calls.idempotent(key, body, render_outcome) as claim:
        return await expansions.run(calls, key, command, claim, render_outcome, paths)


async def _disputed_intent(calls: Calls, key: ApiKeyRow, dispute_id: str) -> str:
    """The id of the caller's intent that holds dispute `dispute_id`. In a
    cluster, a dispute this node does not hold is looked up on the others
    and the request forwarded to the owner of its intent (NotServed).
    Raises the 404 otherwise."""
    node = calls.node
    found = node.dispute(dispute_id) if len(dispute_id) <= ID_CHARS_MAX else None
    if found is not None and found[0].merchant_id == key.merchant_id and found[0].livemode == key.livemode:
        return found[0].id
    if found is None and node.membership is not None and forwarded_from(node) is None and DISPUTE_ID.fullmatch(dispute_id):
        for answer in await calls.forwarder.peer_answers(f"/v1/disputes/{dispute_id}"):
            if answer.status_code != 200:
                continue
            intent_id = str(answer.json().get("payment_intent", ""))
            partition = ids.partition_of(intent_id, "pi")
            if partition is not None:
                raise NotServed(partition)
    raise errors.not_found("dispute", dispute_id, "dispute")


def _render_dispute(dispute_id: str) -> Callable[[Outcome], tuple[int, bytes]]:
    """How to render the outcome of a command on dispute `dispute_id`: the
    dispute, or the error the outcome stands for."""

    def body_of(outcome: Outcome) -> Any:
        if outcome.result is not Result.ok:
            raise errors.from_result(outcome.result, outcome.param)
        assert outcome.intent is not None
        item = outcome.intent.dispute(dispute_id)
        assert item is not None
        return objects.dispute(outcome.intent, item)

    return lambda outcome: render(lambda: body_of(outcome))
