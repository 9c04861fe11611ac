"""Routes for refunds: create (a command on the refunded intent), retrieve,
list, update (metadata) and cancel. A refund lives inside its intent."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from quart import Response

from engine import charges, ids
from engine import intent as machine
from engine.results import Result
from gateway import errors, expansions, objects, ownership, params
from gateway.calls import ID_CHARS_MAX, Calls
from gateway.errors import ApiError
from gateway.lists import cluster_page, created_s
from gateway.openapi import api
from gateway.responses import json_response, raw_response, render
from gateway.routing import Routes
from shards.actor import Outcome
from store.rows import ApiKeyRow

ROUTES = Routes()


def _refunded_intent(calls: Calls, key: ApiKeyRow, values: params.CreateRefund) -> str:
    """The id of the caller's intent a refund names, by itself or by its
    charge (which must be the intent's successful one); raises the 400."""
    if (values.payment_intent is None) == (values.charge is None):
        raise errors.invalid_request("Pass either payment_intent or charge, one of the two.", param="charge", code="parameter_missing")
    if values.charge is not None:
        found = expansions.find_charge(calls.node, values.charge, key)
        if found is None:
            raise errors.invalid_request(f"No such charge: '{values.charge[:64]}'", param="charge", code="resource_missing")
        if not charges.is_successful(*found):
            raise errors.invalid_request(
                f"Charge {ids.charge_id(found[1].id)} did not succeed, so it has nothing to refund.", param="charge", code="charge_not_refundable"
            )
        return found[0].id
    intent_id = values.payment_intent
    assert intent_id is not None
    try:
        ownership.intent(calls.node, intent_id, key)
    except ApiError:
        raise errors.invalid_request(f"No such payment_intent: '{intent_id[:64]}'", param="payment_intent", code="resource_missing") from None
    return intent_id


@ROUTES.post("/v1/refunds")
@api("Refund a PaymentIntent, named by itself or by its charge", objects.RefundObject, body=params.CreateRefund)
async def create_refund(calls: Calls, key: ApiKeyRow) -> Response:
    node = calls.node
    body = await calls.read_body()
    values = params.convert(body, params.CreateRefund)
    paths = expansions.check(values.expand, "refund")
    intent_id = _refunded_intent(calls, key, values)
    refund_id = node.new_id("re", node.partition_of_intent(intent_id))
    command = machine.CreateRefund(
        intent_id=intent_id,
        merchant_id=key.merchant_id,
        livemode=key.livemode,
        refund_id=refund_id,
        at_s=created_s(refund_id, "re"),
        amount=values.amount,
        reason=values.reason,
        metadata=values.metadata,
    )
    render_outcome = render_refund(refund_id)
    async with expansions.replays_expanded(node, key, paths), calls.idempotent(key, body, render_outcome) as claim:
        return await expansions.run(calls, key, command, claim, render_outcome, paths)


@ROUTES.get("/v1/refunds/<refund_id>")
@api("Retrieve a refund", objects.RefundObject, query=params.RetrieveParams)
async def retrieve_refund(calls: Calls, key: ApiKeyRow, refund_id: str) -> Response:
    answer = ownership.child_object(key, refund_id, "refund", calls.node.refund, objects.refund)
    return await expanded(calls, key, answer, "refund")


@ROUTES.get("/v1/refunds")
@api("List refunds, newest first", objects.ListObject[objects.RefundObject], query=params.ListParams)
async def list_refunds(calls: Calls, key: ApiKeyRow) -> Response:
    return await child_page(calls, key, "refunds", "/v1/refunds", "refund", objects.refund)


async def expanded(calls: Calls, key: ApiKeyRow, answer: Response, kind: str) -> Response:
    """A retrieval's answer with the query's `expand[]` applied."""
    paths = expansions.check(calls.query(params.RetrieveParams).expand, kind)
    if not paths:
        return answer
    body = await answer.get_data()
    return raw_response(*await expansions.expanded_answer(calls.node, key, answer.status_code, body, paths))


async def child_page(calls: Calls, key: ApiKeyRow, attribute: str, url: str, kind: str, render_child: Callable[..., Any]) -> Response:
    """A list page of the refunds or disputes of the caller's intents, over
    the whole cluster, expanded as the query asks."""
    values = calls.query(params.ListParams)
    intents = calls.node.merchant_intents(key.merchant_id, key.livemode)
    if values.payment_intent is not None:
        intents = [parent for parent in intents if parent.id == values.payment_intent]
    pairs = [(parent, item) for parent in intents for item in getattr(parent, attribute)]
    return json_response(
        await cluster_page(
            calls.forwarder, pairs, values, url=url, kind=kind, key=lambda pair: (pair[1].created_s, pair[1].id),
            render=lambda pair: render_child(*pair), expansion=expansions.Expansion(calls.node, key),
        )
    )


def render_refund(refund_id: str) -> Callable[[Outcome], tuple[int, bytes]]:
    """How to render the outcome of creating refund `refund_id`: the refund,
    or the error the outcome stands for."""

    def body_of(outcome: Outcome) -> dict[str, Any]:
        if outcome.result is not Result.ok:
            raise errors.from_result(outcome.result, outcome.param)
        assert outcome.intent is not None
        refund = outcome.intent.refund(refund_id)
        assert refund is not None
        return objects.refund(outcome.intent, refund)

    return lambda outcome: render(lambda: body_of(outcome))


def _owned_refund(calls: Calls, key: ApiKeyRow, refund_id: str) -> tuple[machine.PaymentIntent, machine.Refund]:
    """The caller's refund `refund_id` with its intent; raises the 404."""
    found = calls.node.refund(refund_id) if len(refund_id) <= ID_CHARS_MAX else None
    if found is None or found[0].merchant_id != key.merchant_id or found[0].livemode != key.livemode:
        raise errors.not_found("refund", refund_id, "refund")
    return found


@ROUTES.post("/v1/refunds/<refund_id>")
@api("Update a refund's metadata", objects.RefundObject, body=params.UpdateRefund)
async def update_refund(calls: Calls, key: ApiKeyRow, refund_id: str) -> Response:
    node = calls.node
    intent, _ = _owned_refund(calls, key, refund_id)
    body = await calls.read_body()
    values = params.convert(body, params.UpdateRefund)
    paths = expansions.check(values.expand, "refund")
    command = machine.UpdateRefund(
        intent_id=intent.id,
        merchant_id=key.merchant_id,
        livemode=key.livemode,
        refund_id=refund_id,
        at_s=int(time.time()),
        metadata=values.metadata,
    )
    render_outcome = render_refund(refund_id)
    async with expansions.replays_expanded(node, key, paths), calls.idempotent(key, body, render_outcome) as claim:
        return await expansions.run(calls, key, command, claim, render_outcome, paths)


@ROUTES.post("/v1/refunds/<refund_id>/cancel")
@api("Cancel a refund: Stripe allows it only while a refund requires_action, which a card refund never does", objects.RefundObject, body=params.CancelRefund)
async def cancel_refund(calls: Calls, key: ApiKeyRow, refund_id: str) -> Response:
    _, refund = _owned_refund(calls, key, refund_id)
    params.convert(await calls.read_body(), params.CancelRefund)
    # Only a refund waiting for the customer's action (bank details for
    # some payment methods) can be canceled; a card refund never waits.
    raise errors.invalid_request(
        f"Only a refund with status requires_action can be canceled; refund {refund.id} has status {refund.status}.",
        param="refund",
    )
